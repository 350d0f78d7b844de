//! cargo-fuzz target `packet_model`: the property is `harness::fuzz::check("packet_model", _)`
//! (tests/src/fuzz), which `cargo test` also runs on the committed corpus.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::fuzz::check("packet_model", data));
