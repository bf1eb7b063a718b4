//! Harness for the root-only integration tests.
pub mod fake_nvml;
pub mod harness;
pub mod otlp_receiver;
