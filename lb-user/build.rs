//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The eBPF crate needs the nightly toolchain and its own target, so it is
//! built by xtask, not by this build script; `SWARMLB_EBPF_OBJ` may point
//! elsewhere (packaging).
use std::{env, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=SWARMLB_EBPF_OBJ");
    let obj = env::var_os("SWARMLB_EBPF_OBJ").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap())
            .join("../lb-ebpf/target/bpfel-unknown-none/release/lb-ebpf")
    });
    println!("cargo::rerun-if-changed={}", obj.display());
    if !obj.exists() {
        panic!(
            "the eBPF object {} does not exist: build it with `cargo xtask build-ebpf` \
             (or use `cargo xtask build`, which does both)",
            obj.display()
        );
    }
    println!("cargo::rustc-env=SWARMLB_EBPF_OBJ={}", obj.canonicalize().unwrap().display());
}
