//! Streaming JSON field scanning.
//!
//! - `scanner`: the generic scanner: selected paths ([`Patterns`]) in, [`Event`]s out, for any
//!   JSON object body fed in arbitrary slices. It knows no API.
//! - The OpenAI front ends (`RequestScan`, `ResponseScan`) live with the field table in
//!   `protocol::openai`.

mod scanner;
#[cfg(test)]
mod tests;

pub use scanner::{
    Event, FieldId, Kind, Mode, Number, PatternError, Patterns, Scalar, ScanError, ScanState,
    Scanner, MAX_DEPTH, STRING_MAX,
};
