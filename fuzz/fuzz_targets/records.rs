//! cargo-fuzz target `records`: the body is `infertap_fuzz::records::run` (fuzz/src/records.rs), which
//! `cargo test` also replays on every input under fuzz/regressions/records/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| infertap_fuzz::records::run(data));
