//! Protocol decoding: pure functions and state machines from ordered bytes to protocol events.
//!
//! Invariants: nothing here does I/O, allocates without a bound, or panics on any input. Parse
//! failures are values (`HttpEvent::ParseError`, `HttpEvent::NotHttp`) that callers count; the
//! parsers resynchronise at the next plausible message start (a syscall boundary first).
//!
//! - `http`: what every HTTP version's parser reports (events, heads, the header allow-list).
//! - `http1`: HTTP/1.1 requests and responses (keep-alive, pipelining, chunked, Content-Length,
//!   1xx, HEAD, early close), header parsing by `httparse`.
//! - `sse`: WHATWG server-sent-event framing over a response body.
//! - `json_scan`: a streaming JSON scanner picking selected paths out of bodies fed in pieces.
//! - `openai`: the OpenAI field table, its body scans (`RequestScan`, `ResponseScan`), stream
//!   chunks, the operation of a path.
//! - `runtime_metrics`: a model server's own Prometheus gauges and counters (load, KV cache,
//!   preemptions, prefix cache) from the scrapes of its `/metrics` that cross a traced socket.
//! - `http2`: HTTP/2 framing and HPACK (`loona-hpack`); `grpc`: length-prefixed messages;
//!   `ext_proc`: Envoy's external-processing messages (prost, proto subset in `agent/proto`).

pub mod ext_proc;
pub mod form;
pub mod grpc;
pub mod http;
pub mod http1;
pub mod http2;
pub mod json_scan;
pub mod openai;
pub mod runtime_metrics;
pub mod sse;

/// `s` cut to at most `max` bytes at a character boundary: the one bound every kept header value,
/// path and routing value goes through.
pub(crate) fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Which side of an HTTP exchange a byte stream carries. The connection layer maps socket
/// directions to these with the connection's role (a server reads requests, a client writes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Request,
    Response,
}

/// A run of bytes from one syscall (or part of one), in stream order.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    /// CLOCK_MONOTONIC nanoseconds when the syscall that moved these bytes returned.
    pub ts_ns: u64,
    pub data: &'a [u8],
    /// These bytes start a syscall's buffer: a good place to look for a message start when
    /// resynchronising (writers and readers rarely split a message head mid-syscall).
    pub syscall_start: bool,
}
