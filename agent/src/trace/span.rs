//! The span model: what enrichment produces and every exporter consumes.
//!
//! A `FinishedSpan` holds only metadata — ids, times, and allow-listed attributes. Payload bytes
//! (prompts, completions, header values outside the allow-list) never reach this type.

use std::borrow::Cow;

/// W3C trace id (16 bytes) and span id (8 bytes).
pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
    Internal,
}

impl SpanKind {
    /// The name used on the debug endpoint (`"server"`, `"client"`, `"internal"`).
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Internal => "internal",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum SpanStatus {
    Unset,
    Ok,
    /// An error, with a short description made only of metadata (never payload text).
    Error(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    I64(i64),
    F64(f64),
    Bool(bool),
    StrArray(Vec<String>),
}

pub type AttrKey = Cow<'static, str>;

#[derive(Clone, Debug, PartialEq)]
pub struct FinishedSpan {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The incoming `traceparent`'s span id, when the request carried one.
    pub parent_span_id: Option<SpanId>,
    /// The incoming `tracestate`, kept as received (it is trace context, not payload).
    pub trace_state: String,
    /// Whether the parent came from another process (always true when there is a parent).
    pub parent_is_remote: bool,
    /// Whether the incoming `traceparent` had the sampled flag set.
    pub sampled: bool,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub status: SpanStatus,
    pub attributes: Vec<(AttrKey, AttrValue)>,
}

impl FinishedSpan {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// Lower-case hex of an id, as the debug endpoint and W3C headers write it.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}
