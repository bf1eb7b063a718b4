//! Trace context and the span model.

pub mod span;
pub mod context;
pub mod build;
