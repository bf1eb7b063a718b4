//! cargo-fuzz target `http2`: the body is `infertap_fuzz::http2::run` (fuzz/src/http2.rs), which
//! `cargo test` also replays on every input under fuzz/regressions/http2/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| infertap_fuzz::http2::run(data));
