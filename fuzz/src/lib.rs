//! The fuzz targets' bodies, one module per target, each `run(data)`: the cargo-fuzz binaries in
//! fuzz_targets/ call them, and the agent's `tests/fuzz_regressions.rs` includes this file to replay
//! every input under fuzz/regressions/<target>/ through them in plain `cargo test` (no cargo-fuzz
//! needed). They use only `infertap`, `infertap-common` and `serde_json`.

pub mod dcgm_text;
pub mod grpc_ext_proc;
pub mod http1;
pub mod http2;
pub mod json_scan;
pub mod records;
pub mod sse;
pub mod tls_sites;
