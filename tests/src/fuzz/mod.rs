//! The properties the fuzz targets check, one `check` per target, in one
//! place: `fuzz/fuzz_targets/*.rs` (cargo-fuzz, libFuzzer) call them on
//! the fuzzer's inputs, and `tests/tests/fuzz_corpus.rs` (plain `cargo
//! test`, so CI needs no cargo-fuzz) calls them on every committed input
//! under `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`.
//!
//! A property fails by panicking, as libFuzzer expects; the message says
//! which invariant broke.
//!
//! - [`config`]: bytes as the config text: a config or a positioned error,
//!   never a panic; a valid config compiles into maps and Maglev tables
//!   that hold their invariants and agree with the reference policy.
//! - [`swarm`]: JSON shaped like `docker node inspect` / `docker service
//!   inspect` answers (and any text as a placement constraint) through the
//!   Swarm mapping; odd data is skipped with a note, the additions stay
//!   within their promises.
//! - [`packet`]: one raw Ethernet frame through the isolator's and the
//!   balancer's models under the differential tests' fixtures: a verdict
//!   for every frame, and every packet the balancer sends is well formed.

pub mod config;
pub mod packet;
pub mod seeds;
pub mod swarm;

use std::path::{Path, PathBuf};

/// The fuzz targets, by the name of their corpus directory.
pub const TARGETS: [&str; 3] = ["config", "swarm_mapping", "packet_model"];

/// Runs target `target`'s property on `data`.
pub fn check(target: &str, data: &[u8]) {
    match target {
        "config" => config::check(data),
        "swarm_mapping" => swarm::check(data),
        "packet_model" => packet::check(data),
        other => panic!("no fuzz target {other:?} (targets: {TARGETS:?})"),
    }
}

/// The `fuzz/` directory of the repository.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every committed input of `target`: its corpus and the crashes kept as
/// regression cases, sorted by path.
pub fn committed_inputs(target: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["corpus", "regressions"]
        .iter()
        .filter_map(|d| std::fs::read_dir(fuzz_dir().join(d).join(target)).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}
