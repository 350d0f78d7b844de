//! cargo-fuzz target `config`: the property is `harness::fuzz::check("config", _)`
//! (tests/src/fuzz), which `cargo test` also runs on the committed corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::fuzz::check("config", data));
