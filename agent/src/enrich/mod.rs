//! Enrichment: what the agent learns about a traced process beyond its bytes — the Kubernetes pod
//! and container it runs in (process → pod), and, as they arrive, GPU time series and the
//! correlation of finished exchanges with those samples.
//!
//! Parsers here are pure (text in, values out, no panics on any input); reading /proc and other
//! side inputs happens only at the edges, in small functions named `read_*`.

pub mod cgroup;
