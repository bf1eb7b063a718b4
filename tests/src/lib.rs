//! Harness for the root-only integration tests.
pub mod fake_nvml;
pub mod harness;
pub mod kube_standin;
pub mod otlp_receiver;
pub mod pod_cgroup;
pub mod prometheus;
