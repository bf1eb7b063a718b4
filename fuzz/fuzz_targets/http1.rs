//! cargo-fuzz target `http1`: the body is `infertap_fuzz::http1::run` (fuzz/src/http1.rs), which
//! `cargo test` also replays on every input under fuzz/regressions/http1/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| infertap_fuzz::http1::run(data));
