//! `cargo xtask bench [--quick] [--only xdp,e2e,control,flood,snat] [--rows TEXT,…]`: what swarmlb
//! costs, measured beside the alternatives in the same run. Nothing here
//! passes or fails; it reports.
//!
//! - [`xdp`]: the kernel's time per packet on each XDP path (BPF_PROG_TEST_RUN),
//!   with an XDP_PASS floor and a parse-swap-XDP_TX baseline, and Katran
//!   measured in the same run when `SWARMLB_BENCH_KATRAN_OBJ` names its
//!   object (`cargo xtask bench --katran OBJ --katran-rev COMMIT`).
//! - [`e2e`]: connections through real namespaces, swarmlb's modes beside
//!   no balancer, nftables and HAProxy.
//! - [`control`]: Maglev table builds, Swarm sync latency, agent memory.
//! - [`flood`]: a SYN flood from forged sources against swarmlb, nftables
//!   and HAProxy, with legitimate clients connecting throughout.
//! - [`snat`]: the sustained new-connection rate `nat` carries to one
//!   backend port before SNAT ports run out, per close order, beside the
//!   documented `P / T`.
//!
//! Every section interleaves its subjects round by round (A B C A B C …)
//! and reports medians with min–max ([`report`]). Results go to
//! `bench/results/` (`bench/results/quick/` with `--quick`): one markdown
//! file and PNG charts per section, and `README.md` naming the machine.
//! `--rows` (a profiling aid) keeps only the xdp rows whose path contains
//! one of the texts, and writes to `target/bench-rows/`, never over the
//! committed results.

mod control;
mod e2e;
mod flood;
mod report;
mod snat;
mod xdp;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// What the command line asked for.
pub struct Opts {
    /// Fewer rounds and shorter measurements (about 2 minutes in all).
    pub quick: bool,
    /// Only the xdp rows whose path contains one of these (`--rows`).
    pub rows: Option<Vec<String>>,
}

fn main() -> Result<()> {
    harness::require_root()?;
    let mut quick = false;
    let mut only: Option<Vec<String>> = None;
    let mut rows: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => only = Some(args.next().unwrap_or_default().split(',').map(str::to_owned).collect()),
            "--rows" => rows = Some(args.next().unwrap_or_default().split(',').map(str::to_owned).collect()),
            other => bail!("unknown argument {other:?} (try --quick, --only xdp,e2e,control,flood,snat, --rows TEXT,…)"),
        }
    }
    let opts = Opts { quick, rows };
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == name));
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join(match (&opts.rows, quick) {
        (Some(_), _) => "../target/bench-rows",
        (None, true) => "../bench/results/quick",
        (None, false) => "../bench/results",
    });
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let machine = report::Machine::read();
    let mut sections = Vec::new();
    type Section = fn(&Opts) -> Result<report::Section>;
    let all: [(&str, Section); 5] = [("xdp", xdp::run), ("control", control::run), ("e2e", e2e::run), ("flood", flood::run), ("snat", snat::run)];
    for (name, run) in all {
        if !wanted(name) {
            continue;
        }
        eprintln!("== bench: {name}");
        let t = std::time::Instant::now();
        let section = run(&opts)?;
        eprintln!("== bench: {name} done in {:.0} s", t.elapsed().as_secs_f64());
        section.write(&dir, &machine)?;
        print!("{}", section.markdown);
        sections.push(section);
    }
    report::write_index(&dir, &machine, &sections, &opts, &[xdp::KATRAN_HOWTO])?;
    eprintln!("results in {}", dir.display());
    Ok(())
}
