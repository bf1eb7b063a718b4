//! cargo-fuzz target `dcgm_text`: the body is `infertap_fuzz::dcgm_text::run` (fuzz/src/dcgm_text.rs), which
//! `cargo test` also replays on every input under fuzz/regressions/dcgm_text/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| infertap_fuzz::dcgm_text::run(data));
