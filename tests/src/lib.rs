//! Harness for the root-only integration tests.
pub mod otlp_receiver;
