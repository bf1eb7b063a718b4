//! cargo-fuzz target `json_scan`: the body is `infertap_fuzz::json_scan::run` (fuzz/src/json_scan.rs), which
//! `cargo test` also replays on every input under fuzz/regressions/json_scan/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| infertap_fuzz::json_scan::run(data));
