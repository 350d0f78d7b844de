//! `cargo xtask setup`: everything the build and the tests need, installed
//! only when missing (a second run does nothing).

use std::{fs, path::{Path, PathBuf}, process::Command};

use anyhow::{bail, Context, Result};

use crate::run;

/// Debian packages the tests and the demo use: docker.io for the Swarm
/// tests' own dockerd nodes, busybox-static for the image they run,
/// keepalived for the failover test's VRRP, systemd for
/// `systemd-analyze`, which checks the unit's sandbox, prometheus for
/// `promtool` and the server that scrapes the agent and runs the alert
/// rules in the observability test, bird2 for the scale-out lab's BGP
/// (edges and router, docs/scale-out.md), dpkg-dev and binutils for
/// `cargo xtask package` (dpkg-shlibdeps, strip), curl and openssl for
/// the quick start's verification commands, which its test runs as
/// written.
const PACKAGES: &[&str] = &[
    "iproute2", "nftables", "nginx", "ethtool", "docker.io", "busybox-static", "keepalived", "systemd", "prometheus", "bird2", "dpkg-dev", "binutils", "curl", "openssl",
];

/// What `cargo xtask bench` adds: the alternatives it compares swarmlb
/// with (HAProxy; nftables is above, conntrack flushes its NAT state
/// between turns), the bulk tool, and the charts' font.
const BENCH_PACKAGES: &[&str] = &["haproxy", "iperf3", "conntrack", "fonts-dejavu-core"];

/// bpf-linker release known to work with aya-ebpf 0.2.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn ensure() -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_packages(PACKAGES)?;
    ensure_bpffs()
}

/// [`ensure`], and what the benchmark needs.
pub fn ensure_bench() -> Result<()> {
    ensure()?;
    ensure_packages(BENCH_PACKAGES)
}

/// Mounts the BPF filesystem at /sys/fs/bpf once, before tests run in
/// parallel: each process mounting it on its own could stack two mounts
/// and hide the first one's pins.
fn ensure_bpffs() -> Result<()> {
    let fs = output(Command::new("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"])).unwrap_or_default();
    if fs == "bpf_fs" {
        return Ok(());
    }
    eprintln!("setup: mounting bpffs at /sys/fs/bpf");
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn nightly_sysroot() -> Result<PathBuf> {
    output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .map(PathBuf::from)
        .context("the nightly toolchain is needed for the eBPF build (rustup toolchain install nightly)")
}

fn ensure_rust_src() -> Result<()> {
    let src = nightly_sysroot()?.join("lib/rustlib/src/rust/library/core");
    if src.exists() {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to nightly");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The nightly's own libLLVM: (major version, library name for `-l dylib=`).
fn nightly_llvm(sysroot: &Path) -> Result<(String, String)> {
    let lib = sysroot.join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // e.g. libLLVM-22-rust-1.97.0-nightly.so
        if let Some(stem) = name.strip_prefix("libLLVM-").and_then(|s| s.strip_suffix(".so")) {
            let major = stem.split('-').next().unwrap_or_default().to_owned();
            if major.chars().all(|c| c.is_ascii_digit()) && !major.is_empty() {
                return Ok((major, format!("LLVM-{stem}")));
            }
        }
    }
    bail!("no libLLVM-<major>-*.so in {}", lib.display())
}

fn ensure_bpf_linker() -> Result<()> {
    // A linker built against an older nightly's libLLVM no longer starts
    // (its rpath library is gone): rebuild in that case too.
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if works {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let (major, libname) = nightly_llvm(&sysroot)?;
    let libdir = sysroot.join("lib");
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} ({libname})");
    let rustflags = format!(
        "-L native={dir} -l dylib={libname} -C link-arg=-Wl,-rpath,{dir}",
        dir = libdir.display()
    );
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "install", "bpf-linker", "--force", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major},no-llvm-linking"))
        .env("RUSTFLAGS", rustflags);
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTC_WRAPPER", "CARGO_TARGET_DIR", "CARGO"] {
        cmd.env_remove(var);
    }
    run(&mut cmd).context("building bpf-linker")
}

fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages {missing:?}");
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
