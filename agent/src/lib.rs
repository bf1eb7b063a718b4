//! infertap: a zero-code eBPF telemetry agent for LLM inference. See ARCHITECTURE.md.

pub mod export;
pub mod protocol;
pub mod stats;
pub mod trace;
