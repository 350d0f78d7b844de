//! `cargo xtask fuzz`: coverage-guided fuzzing of the targets in `fuzz/`
//! with cargo-fuzz (libFuzzer), one process per target, and a results
//! file (`bench/results/fuzz.md`) with each target's executions, coverage,
//! corpus and crashes.
//!
//! The targets' properties live in the test harness (`tests/src/fuzz`);
//! `cargo test` replays the committed corpus through them, so CI does not
//! need cargo-fuzz. New inputs the fuzzer finds go into
//! `fuzz/corpus/<target>/`, which is minimized (`cargo fuzz cmin`) after
//! each run so it stays small enough to commit; a crash is written to
//! `fuzz/artifacts/<target>/` and fails the task — keep it under
//! `fuzz/regressions/<target>/` once fixed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// The targets, in the order they run.
pub const TARGETS: [&str; 3] = ["config", "swarm_mapping", "packet_model"];

/// Per target: the largest input libFuzzer makes (a config file; a few
/// Engine API answers; one Ethernet frame, jumbo-free but past the MTU).
fn max_len(target: &str) -> usize {
    match target {
        "swarm_mapping" => 32_768,
        "packet_model" => 2_048,
        _ => 8_192,
    }
}

/// What one run of a target gave.
struct Stats {
    target: String,
    seconds: u64,
    executions: u64,
    exec_per_sec: u64,
    coverage: u64,
    features: u64,
    corpus_files: usize,
    corpus_bytes: u64,
    new_units: u64,
    crash: Option<String>,
}

fn fuzz_dir() -> PathBuf {
    crate::root().join("fuzz")
}

/// Installs cargo-fuzz unless `cargo fuzz` answers already.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        crate::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"])).context("installing cargo-fuzz")?;
    }
    Ok(())
}

/// A `cargo +nightly fuzz …` command in `fuzz/`'s parent, free of the
/// outer (stable) cargo's settings.
fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(crate::root()).args(["+nightly", "fuzz"]);
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTC_WRAPPER", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "CARGO"] {
        cmd.env_remove(var);
    }
    cmd
}

/// The build flags every `cargo fuzz` call shares: release with debug
/// assertions (integer overflow panics); no sanitizer, as the code under
/// test is safe Rust and panics are what the properties report.
const BUILD_FLAGS: [&str; 4] = ["--release", "--debug-assertions", "--sanitizer", "none"];

/// Files and bytes in a directory.
fn dir_size(dir: &Path) -> (usize, u64) {
    let files: Vec<u64> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .collect();
    (files.len(), files.iter().sum())
}

/// The number after `key` in `line` (`cov: 123`), if any.
fn field(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()?.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok()
}

/// Keeps only inputs that add coverage — a greedy set cover of the edges,
/// hit counts ignored, of inputs cut to [`committed_len`] — since the
/// corpus is committed. The seeds (`seed-*`, from `write_seeds`) stay
/// whole whatever the cover says.
fn minimize(target: &str, corpus: &Path) -> Result<()> {
    let seeds: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(corpus)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-")))
        .map(|p| fs::read(&p).map(|b| (p, b)))
        .collect::<Result<_, _>>()?;
    let mut cmin = cargo_fuzz();
    cmin.args(["cmin", target]).args(BUILD_FLAGS).arg("--").args([
        format!("-max_len={}", committed_len(target)),
        "-set_cover_merge=1".into(),
        "-use_counters=0".into(),
    ]);
    let status = cmin.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    if !status.success() {
        bail!("cargo fuzz cmin {target} failed: {status}");
    }
    for entry in fs::read_dir(corpus)?.filter_map(Result::ok) {
        let bytes = fs::read(entry.path())?;
        if seeds.iter().any(|(_, s)| *s == bytes) {
            fs::remove_file(entry.path())?;
        }
    }
    for (path, bytes) in &seeds {
        fs::write(path, bytes)?;
    }
    Ok(())
}

/// Per target: inputs of the committed corpus are cut to this length
/// (Engine API answers to 2000 bytes, which keeps nine tenths of the
/// features in a tenth of the bytes).
fn committed_len(target: &str) -> usize {
    match target {
        "swarm_mapping" => 2_000,
        t => max_len(t),
    }
}

fn run_target(target: &str, max_seconds: u64) -> Result<Stats> {
    let corpus = fuzz_dir().join("corpus").join(target);
    fs::create_dir_all(&corpus)?;
    let log_path = fuzz_dir().join("target").join(format!("fuzz-{target}.log"));
    fs::create_dir_all(log_path.parent().unwrap())?;
    let log = fs::File::create(&log_path)?;
    let dict = fuzz_dir().join("dict").join(format!("{target}.dict"));
    let mut cmd = cargo_fuzz();
    cmd.args(["run", target]).args(BUILD_FLAGS).arg("--").args([
        format!("-max_total_time={max_seconds}"),
        format!("-max_len={}", max_len(target)),
        "-timeout=30".into(),
        "-print_final_stats=1".into(),
    ]);
    if dict.exists() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    println!("fuzzing {target} for {max_seconds} s (log: {})", log_path.display());
    let status = cmd.stdout(log.try_clone()?).stderr(log).status().with_context(|| format!("starting cargo fuzz run {target}"))?;
    let text = fs::read_to_string(&log_path)?;
    let stat = |key: &str| text.lines().find_map(|l| l.strip_prefix(&format!("stat::{key}:")).and_then(|v| v.trim().parse().ok()));
    // The last status line (`#N … cov: C ft: F corp: …`) has the totals.
    let last = text.lines().rev().find(|l| l.starts_with('#') && l.contains(" cov: ")).unwrap_or_default();
    let crash = text
        .lines()
        .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim().to_owned()));
    if !status.success() && crash.is_none() {
        bail!("cargo fuzz run {target} failed ({status}) without a crash artifact: see {}", log_path.display());
    }
    minimize(target, &corpus)?;
    let (corpus_files, corpus_bytes) = dir_size(&corpus);
    let executions: u64 = stat("number_of_executed_units").unwrap_or(0);
    let exec_per_sec = stat("average_exec_per_sec").unwrap_or(0);
    let stats = Stats {
        target: target.to_owned(),
        // How long it really ran (a crash ends the run early).
        seconds: executions.checked_div(exec_per_sec).unwrap_or(0),
        executions,
        exec_per_sec,
        coverage: field(last, "cov:").unwrap_or(0),
        features: field(last, "ft:").unwrap_or(0),
        corpus_files,
        corpus_bytes,
        new_units: stat("new_units_added").unwrap_or(0),
        crash,
    };
    Ok(stats)
}

fn row(s: &Stats) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {} | {} / {} KiB | {} | {} |",
        s.target,
        s.seconds,
        s.executions,
        s.exec_per_sec,
        s.coverage,
        s.features,
        s.corpus_files,
        s.corpus_bytes.div_ceil(1024),
        s.new_units,
        s.crash.as_deref().map_or("0".to_owned(), |p| format!("1: `{p}`")),
    )
}

/// Rewrites the results file: the rows of the targets just run replace
/// their old rows, other targets' rows stay.
fn write_results(runs: &[Stats]) -> Result<PathBuf> {
    let path = crate::root().join("bench/results/fuzz.md");
    let old = fs::read_to_string(&path).unwrap_or_default();
    // Sections after the table (`## …`, written by hand) stay as they are.
    let (table, notes) = old.split_once("\n## ").unwrap_or((&old, ""));
    let mut rows: Vec<(String, String)> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| target") && !l.starts_with("| ---"))
        .filter_map(|l| Some((l.split('|').nth(1)?.trim().to_owned(), l.to_owned())))
        .filter(|(t, _)| TARGETS.contains(&t.as_str()))
        .collect();
    for s in runs {
        rows.retain(|(t, _)| t != &s.target);
        rows.push((s.target.clone(), row(s)));
    }
    rows.sort_by_key(|(t, _)| TARGETS.iter().position(|x| x == t));
    let version = Command::new("cargo").args(["+nightly", "fuzz", "--version"]).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    let mut out = String::from(
        "# Fuzzing results\n\n\
         Written by `cargo xtask fuzz` (one libFuzzer process per target, release build with debug\n\
         assertions, no sanitizer; properties in `tests/src/fuzz`). Each row is the target's latest\n\
         run: executions and rate, edge coverage (`cov`) and features (`ft`) at the end, the corpus\n\
         after the run, inputs added, and crashes.\n\n",
    );
    out += &format!("Tool: {version}; machine: {} CPUs, shared.\n\n", std::thread::available_parallelism().map_or(0, |n| n.get()));
    out += "| target | seconds | executions | exec/s | cov | ft | corpus (files / size) | new inputs | crashes |\n";
    out += "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for (_, r) in rows {
        out += &r;
        out.push('\n');
    }
    if !notes.is_empty() {
        out += "\n## ";
        out += notes;
    }
    fs::write(&path, out)?;
    Ok(path)
}

/// Fuzzes `target` (or every target) for `seconds` each.
pub fn run(seconds: u64, target: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?} (targets: {})", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    ensure_cargo_fuzz()?;
    let mut runs = Vec::new();
    for t in targets {
        let s = run_target(t, seconds)?;
        println!("{}", row(&s));
        runs.push(s);
    }
    let path = write_results(&runs)?;
    println!("results: {}", path.display());
    let crashed: Vec<String> = runs.iter().filter_map(|s| s.crash.as_ref().map(|p| format!("{}: {p}", s.target))).collect();
    if !crashed.is_empty() {
        bail!(
            "the fuzzer found crashes (reproduce with `cargo +nightly fuzz run TARGET ARTIFACT`; once fixed keep the input under fuzz/regressions/TARGET/):\n{}",
            crashed.join("\n")
        );
    }
    Ok(())
}
