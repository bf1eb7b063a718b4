//! Trace context and the span model.

pub mod build;
pub mod context;
pub mod fields;
pub mod rpc;
pub mod span;
