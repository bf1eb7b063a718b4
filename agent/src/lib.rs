//! infertap: a zero-code eBPF telemetry agent for LLM inference. See ARCHITECTURE.md.

pub mod app;
pub mod capture;
pub mod config;
pub mod conn;
pub mod driver;
pub mod enrich;
pub mod epp;
pub mod exchange;
pub mod export;
pub mod gpu;
pub mod liveness;
pub mod pipeline;
pub mod probes;
pub mod protocol;
pub mod runtime_poll;
pub mod schema;
pub mod stats;
pub mod trace;
