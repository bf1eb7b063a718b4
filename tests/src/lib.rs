//! Harness for the root-only integration tests.
