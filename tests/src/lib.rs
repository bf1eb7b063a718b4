//! Harness for the root-only integration tests.
pub mod harness;
pub mod otlp_receiver;
