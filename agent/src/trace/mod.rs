//! Trace context and the span model.

pub mod span;
