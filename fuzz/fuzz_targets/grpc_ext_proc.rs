//! cargo-fuzz target `grpc_ext_proc`: the body is `infertap_fuzz::grpc_ext_proc::run` (fuzz/src/grpc_ext_proc.rs), which
//! `cargo test` also replays on every input under fuzz/regressions/grpc_ext_proc/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| infertap_fuzz::grpc_ext_proc::run(data));
