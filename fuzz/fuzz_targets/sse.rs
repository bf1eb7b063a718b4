//! cargo-fuzz target `sse`: the body is `infertap_fuzz::sse::run` (fuzz/src/sse.rs), which
//! `cargo test` also replays on every input under fuzz/regressions/sse/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| infertap_fuzz::sse::run(data));
