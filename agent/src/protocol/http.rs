//! What every HTTP version's parser reports, version-neutral: the events of one connection's
//! messages ([`HttpEvent`]), the heads ([`RequestHead`], [`ResponseHead`]), parse error kinds,
//! and the privacy allow-list of header fields whose values are ever copied. HTTP/1.x
//! (`http1`) emits these from bytes; HTTP/2 streams (`exchange::h2`) from frames.

use super::Direction;

/// [`RequestHead::path`] is cut to this many bytes.
pub const MAX_PATH_BYTES: usize = 2048;
/// A copied header value is cut to this many bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 512;
/// The only header fields whose values are ever copied (lowercase).
pub const ALLOWED_HEADERS: [&str; 14] = [
    "traceparent",
    "tracestate",
    "x-request-id",
    "content-type",
    "host",
    "x-gateway-destination-endpoint",
    "x-gateway-inference-objective",
    "x-gateway-inference-fairness-id",
    "x-gateway-model-name-rewrite",
    "x-slo-ttft-ms",
    "x-slo-tpot-ms",
    "x-prefiller-host-port",
    "x-data-parallel-host-port",
    "x-encoder-hosts-ports",
];

/// What the parser reports, in stream order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpEvent<'a> {
    /// `ts_ns`: of the segment holding the first byte of the request line.
    RequestHead {
        ts_ns: u64,
        head: RequestHead,
    },
    /// De-chunked body bytes, a slice of the segment that carried them.
    RequestBody {
        ts_ns: u64,
        data: &'a [u8],
    },
    RequestBodyGap {
        len: u64,
    },
    /// `ts_ns`: of the segment holding the last byte of the request.
    RequestEnd {
        ts_ns: u64,
    },
    /// A final (non-1xx) response head; `ts_ns`: of its first byte.
    ResponseHead {
        ts_ns: u64,
        head: ResponseHead,
    },
    /// De-chunked body bytes, a slice of the segment that carried them.
    ResponseBody {
        ts_ns: u64,
        data: &'a [u8],
    },
    ResponseBodyGap {
        len: u64,
    },
    /// `ts_ns`: of the segment holding the last byte of the response (of the close for a
    /// response delimited by close).
    ResponseEnd {
        ts_ns: u64,
    },
    /// The connection ended (or a parse error abandoned) with an exchange unfinished.
    Aborted {
        ts_ns: u64,
        request_complete: bool,
        response_started: bool,
    },
    /// Counted by the caller; the parser resynchronises.
    ParseError {
        dir: Direction,
        kind: ParseErrorKind,
    },
    /// The stream is not HTTP/1.x (TLS, HTTP/2 preface, binary): no more events for it.
    NotHttp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path only: no query string or fragment, no scheme or authority (absolute-form);
    /// at most [`MAX_PATH_BYTES`].
    pub path: String,
    pub minor_version: u8,
    /// The Content-Length that frames the body (`None` when chunked or absent).
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// Allow-listed fields only ([`ALLOWED_HEADERS`]), in order of appearance.
    pub headers: Vec<(&'static str, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub minor_version: u8,
    /// The Content-Length field (`None` when absent or overridden by Transfer-Encoding). For a
    /// response to HEAD, or a 204/304, it frames nothing.
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// Allow-listed fields only ([`ALLOWED_HEADERS`]), in order of appearance.
    pub headers: Vec<(&'static str, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParseErrorKind {
    /// No end of head within `http1::MAX_HEAD_BYTES` (also a trailer section that long).
    HeadTooLarge,
    /// More than `http1::MAX_HEADERS` fields.
    TooManyHeaders,
    /// Not a request line / status line where a message must start.
    BadStartLine,
    /// A malformed header field or line ending.
    BadHeader,
    /// An invalid or conflicting Content-Length.
    BadContentLength,
    /// A request Transfer-Encoding whose final coding is not chunked.
    BadTransferEncoding,
    /// A malformed chunk-size line or chunk data not followed by CRLF.
    BadChunk,
    /// A chunk-size line (with its extensions) longer than `http1::MAX_CHUNK_LINE_BYTES`.
    ChunkLineTooLong,
    /// Bytes were lost where the framing cannot survive (a head, a chunk-size line, between
    /// messages).
    Lost,
    /// The connection closed in the middle of a message head.
    Truncated,
}
