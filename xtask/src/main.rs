//! Project tasks: `cargo xtask <setup|build-ebpf|build|package|run|test|demo|bench|soak|fuzz>`.
//!
//! Every task that needs the toolchain or system packages runs `setup`
//! first, so a fresh machine needs nothing but `cargo xtask …`.

mod fuzz;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "swarmlb project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent): rust-src for
    /// nightly, bpf-linker against nightly's own libLLVM, Debian packages.
    Setup,
    /// Build the XDP programs (nightly, bpfel-unknown-none).
    BuildEbpf,
    /// Build the eBPF object and the `swarmlb` binary (release).
    Build,
    /// Build the Debian package target/package/swarmlb_<version>_<arch>.deb
    /// (binary, systemd units, man pages, completions, docs, examples).
    Package,
    /// Build, then run `swarmlb` with the given arguments (e.g. `run --config examples/swarmlb.toml`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit, model, kernel differential, netns end to end.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Show the isolator at work in a throwaway netns topology.
    Demo,
    /// Measure (not test) swarmlb beside the alternatives; results in bench/results/.
    Bench {
        /// Fewer, shorter rounds (about 2 minutes); results in bench/results/quick/.
        #[arg(long)]
        quick: bool,
        /// Only these sections (comma-separated: xdp, control, e2e, flood, snat).
        #[arg(long)]
        only: Option<String>,
        /// Katran's XDP balancer object (`balancer.bpf.o`, built outside this
        /// repository: bench/results/README.md): the xdp section measures it
        /// beside swarmlb in the same run instead of quoting old figures.
        #[arg(long, value_name = "OBJ")]
        katran: Option<PathBuf>,
        /// The Katran commit the object was built from, for the results.
        #[arg(long, value_name = "COMMIT", requires = "katran")]
        katran_rev: Option<String>,
        /// Only the xdp rows whose path contains one of these texts
        /// (comma-separated; a profiling aid: no packet rates, results in
        /// target/bench-rows/).
        #[arg(long, value_name = "TEXT,…")]
        rows: Option<String>,
    },
    /// Sustained load through backend churn, the design's rules checked;
    /// results in bench/results/soak.md.
    Soak {
        /// How long the load runs.
        #[arg(long, default_value_t = 10)]
        minutes: u32,
    },
    /// Fuzz the config parser, the Swarm mapping and the packet models
    /// (cargo-fuzz); results in bench/results/fuzz.md.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        /// Only this target (config, swarm_mapping, packet_model).
        #[arg(long)]
        target: Option<String>,
    },
}

/// The workspace root (the parent of xtask/).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Runs a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// A `cargo` command for the workspace, on the default (stable) toolchain.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Builds the eBPF crate in `dir` (a workspace of its own) with nightly.
fn build_bpf_crate(dir: &str) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root().join(dir))
        .args(["+nightly", "build", "-Z", "build-std=core", "--target", "bpfel-unknown-none", "--release"]);
    // The outer cargo's settings belong to the host build, not this one.
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTC_WRAPPER", "RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "CARGO"] {
        cmd.env_remove(var);
    }
    run(&mut cmd).with_context(|| format!("building the eBPF programs of {dir}"))
}

fn build_ebpf() -> Result<()> {
    setup::ensure()?;
    build_bpf_crate("lb-ebpf")
}

fn build() -> Result<()> {
    build_ebpf()?;
    run(cargo().args(["build", "--release", "-p", "lb-user", "--bin", "swarmlb"]))
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::ensure(),
        Task::BuildEbpf => build_ebpf(),
        Task::Build => build(),
        Task::Package => package::build().map(drop),
        Task::Run { args } => {
            build()?;
            run(Command::new(root().join("target/release/swarmlb")).args(args))
        }
        Task::Test { args } => {
            // The end-to-end tests run the real `swarmlb` binary; the
            // quick start's test installs the package.
            let deb = package::build()?;
            // Release: the differential fuzz runs over 100k packets and the
            // port scans over 4×65535 ports; debug builds make them crawl.
            run(cargo()
                .args(["test", "--release", "--workspace"])
                .args(args)
                .env("SWARMLB_BIN", root().join("target/release/swarmlb"))
                .env("SWARMLB_DEB", deb))
        }
        Task::Bench { quick, only, katran, katran_rev, rows } => {
            setup::ensure_bench()?;
            build()?;
            // The baselines (XDP_PASS, parse-swap-XDP_TX) and the input
            // restoring wrapper the per-packet costs are measured with.
            build_bpf_crate("bench-ebpf")?;
            let mut cmd = cargo();
            cmd.args(["run", "--release", "-q", "-p", "swarmlb-tests", "--bin", "bench", "--"])
                .env("SWARMLB_BIN", root().join("target/release/swarmlb"));
            if quick {
                cmd.arg("--quick");
            }
            if let Some(only) = only {
                cmd.args(["--only", &only]);
            }
            if let Some(rows) = rows {
                cmd.args(["--rows", &rows]);
            }
            // The bench reads these (tests/src/bin/bench/xdp/katran.rs); it
            // runs from the workspace root, so a relative path is made whole.
            if let Some(obj) = katran {
                let obj = obj.canonicalize().with_context(|| format!("--katran {}", obj.display()))?;
                cmd.env("SWARMLB_BENCH_KATRAN_OBJ", obj);
            }
            if let Some(rev) = katran_rev {
                cmd.env("SWARMLB_BENCH_KATRAN_REV", rev);
            }
            run(&mut cmd)
        }
        Task::Soak { minutes } => {
            build()?;
            run(cargo()
                .args(["run", "--release", "-q", "-p", "swarmlb-tests", "--bin", "soak", "--", "--minutes", &minutes.to_string()])
                .env("SWARMLB_BIN", root().join("target/release/swarmlb")))
        }
        Task::Fuzz { seconds, target } => {
            // lb-user embeds the eBPF object.
            build_ebpf()?;
            fuzz::run(seconds, target.as_deref())
        }
        Task::Demo => {
            build()?;
            run(cargo().args(["run", "--release", "-q", "-p", "swarmlb-tests", "--bin", "demo"]))
        }
    }
}
