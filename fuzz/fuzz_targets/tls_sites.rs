//! cargo-fuzz target `tls_sites`: the body is `infertap_fuzz::tls_sites::run` (fuzz/src/tls_sites.rs), which
//! `cargo test` also replays on every input under fuzz/regressions/tls_sites/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| infertap_fuzz::tls_sites::run(data));
