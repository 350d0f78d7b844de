//! cargo-fuzz target `swarm_mapping`: the property is `harness::fuzz::check("swarm_mapping", _)`
//! (tests/src/fuzz), which `cargo test` also runs on the committed corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::fuzz::check("swarm_mapping", data));
