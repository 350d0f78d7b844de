//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The eBPF crate needs the nightly toolchain, its own target and
//! `bpf-linker`, so xtask builds it, not this script; `SWARMLB_EBPF_OBJ`
//! may point elsewhere (packaging). Without the object the crate still
//! builds (so `cargo check` and `cargo clippy` work on a fresh checkout)
//! with an empty one in its place: cargo prints a warning, and the binary
//! refuses to load anything, naming `cargo xtask build-ebpf`.
use std::{env, fs, path::PathBuf, process::Command};

/// The commit `swarmlb --version` names: `SWARMLB_COMMIT` (a package built
/// from a tarball sets it), else `git rev-parse --short HEAD`, else
/// "unknown" (no git, no checkout).
fn commit() -> String {
    println!("cargo::rerun-if-env-changed=SWARMLB_COMMIT");
    if let Ok(c) = env::var("SWARMLB_COMMIT") {
        return c;
    }
    let git = |args: &[&str]| {
        Command::new("git").args(args).output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    // A new commit or checkout moves HEAD's reflog: build again then.
    if let Some(log) = git(&["rev-parse", "--path-format=absolute", "--git-path", "logs/HEAD"]) {
        println!("cargo::rerun-if-changed={log}");
    }
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(hash) if !hash.is_empty() => hash,
        _ => "unknown".into(),
    }
}

fn main() {
    println!("cargo::rustc-env=SWARMLB_COMMIT={}", commit());
    println!("cargo::rerun-if-env-changed=SWARMLB_EBPF_OBJ");
    let obj = env::var_os("SWARMLB_EBPF_OBJ").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../lb-ebpf/target/bpfel-unknown-none/release/lb-ebpf")
    });
    // A path that does not exist makes cargo run this script again on
    // every build, so the object is picked up as soon as it is built.
    println!("cargo::rerun-if-changed={}", obj.display());
    let embedded = match obj.canonicalize() {
        Ok(path) => path,
        Err(_) => {
            println!(
                "cargo::warning=the eBPF object {} does not exist: this build of swarmlb cannot load its programs; \
                 build the object with `cargo xtask build-ebpf` (or use `cargo xtask build`, which does both)",
                obj.display()
            );
            let empty = PathBuf::from(env::var("OUT_DIR").unwrap()).join("no-ebpf-object");
            fs::write(&empty, []).expect("writing to OUT_DIR");
            empty
        }
    };
    println!("cargo::rustc-env=SWARMLB_EBPF_OBJ={}", embedded.display());
}
