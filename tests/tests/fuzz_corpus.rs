//! The fuzz targets' properties (`harness::fuzz`) on every committed input
//! — the corpora under `fuzz/corpus/<target>/` and the crashes kept as
//! regression cases under `fuzz/regressions/<target>/` — and on the seeds
//! built in memory, with plain `cargo test`: CI needs no cargo-fuzz, and
//! a crash once found stays fixed.
//!
//! `cargo test --release -p swarmlb-tests --test fuzz_corpus -- --ignored
//! write_seeds` (re)writes the seeds into the corpora.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use harness::fuzz::{self, seeds, TARGETS};
use rand::{rngs::StdRng, SeedableRng};

/// Runs `target`'s property on each input; fails naming every input that
/// broke it.
fn replay(target: &str, inputs: impl IntoIterator<Item = (String, Vec<u8>)>) -> usize {
    let mut failed = Vec::new();
    let mut n = 0;
    for (name, data) in inputs {
        n += 1;
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| fuzz::check(target, &data))) {
            let why = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            failed.push(format!("{name}: {why}"));
        }
    }
    assert!(failed.is_empty(), "{target}: {} of {n} inputs break the property:\n{}", failed.len(), failed.join("\n"));
    n
}

/// The seeds of each target, built here (the isolator's evasion fixtures
/// and generated packets come from the differential test's generator).
fn seeds_of(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "config" => seeds::configs(),
        "swarm_mapping" => seeds::swarm(),
        "packet_model" => {
            let mut s = seeds::frames();
            s.extend(common::gen::fixtures().into_iter().map(|f| (format!("isolator-{}", f.name), f.frame)));
            let mut rng = StdRng::seed_from_u64(6);
            s.extend((0..48).map(|i| (format!("generated-{i}"), common::gen::packet(&mut rng))));
            s
        }
        other => panic!("no target {other}"),
    }
}

#[test]
fn committed_inputs_hold_the_properties() {
    for target in TARGETS {
        let files = fuzz::committed_inputs(target);
        assert!(!files.is_empty(), "{target}: no committed corpus under {}", fuzz::fuzz_dir().display());
        let inputs = files.iter().map(|p| (p.display().to_string(), std::fs::read(p).unwrap()));
        let n = replay(target, inputs);
        println!("{target}: {n} committed inputs");
    }
}

#[test]
fn seeds_hold_the_properties() {
    for target in TARGETS {
        let n = replay(target, seeds_of(target));
        assert!(n >= 10, "{target}: only {n} seeds");
    }
}

/// Not a test: writes the seeds into `fuzz/corpus/<target>/seed-*`.
#[test]
#[ignore]
fn write_seeds() {
    for target in TARGETS {
        let dir = fuzz::fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds_of(target) {
            let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
}
