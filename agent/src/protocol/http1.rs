//! HTTP/1.x message framing for one TCP connection, from the bytes of both directions.
//!
//! Owns: finding and parsing request and response heads (with `httparse`, a head buffered across
//! segments up to [`MAX_HEAD_BYTES`]), body framing (Content-Length, chunked with extensions and
//! trailers, read-until-close, no body for HEAD/1xx/204/304), keep-alive and pipelining
//! (responses matched to requests first in, first out), `Expect: 100-continue` and other 1xx
//! responses (skipped), upgrades (101, CONNECT: the connection becomes opaque), byte gaps, and
//! resynchronisation after a parse error or a mid-stream attach (at the next syscall-start
//! segment that begins with a plausible request or status line).
//!
//! Must never: do I/O; copy a header value that is not on [`ALLOWED_HEADERS`] (privacy
//! invariant: `authorization`, `cookie`, `api-key` and every other header stay out of every
//! output); copy a body (bodies go out as slices of the caller's segments); hold more than
//! [`MAX_HEAD_BYTES`] per direction; panic on any input.
//!
//! # Which exchange an event belongs to
//! Events carry no exchange id; the caller matches them with a queue of open exchanges:
//! - `RequestHead` opens an exchange at the back; `RequestBody*`/`RequestEnd` belong to the
//!   exchange of the most recent `RequestHead`.
//! - `ResponseHead` belongs to the oldest exchange without a response head;
//!   `ResponseBody*`/`ResponseEnd` to the exchange of the most recent `ResponseHead`.
//! - An exchange is finished once it has both `RequestEnd` and `ResponseEnd`.
//! - `Aborted` finishes the oldest unfinished exchange. When a parse error or a gap abandons an
//!   exchange, every unfinished exchange is aborted (oldest first), because matching after the
//!   loss would be a guess; later events of those messages are not emitted.
//!
//! # Pipelining bound
//! At most [`MAX_PIPELINED`] exchanges are open at once. A request beyond them is *shed*: it is
//! framed (its body skipped) but not reported, and the response it gets is framed but not
//! reported either (matched, first in first out, as a shed request's). Once one request of a
//! connection is shed, later ones are shed too until every shed request has had its response
//! (so reported exchanges always precede shed ones in the queue). A shed HEAD or CONNECT is not
//! remembered: its response is framed as a GET's (a wrong guess ends in a parse error and a
//! resynchronisation, as any other framing error). [`Http1Conn::take_shed`] counts them. Each
//! event finds its exchange in constant time (sequence numbers are consecutive in the queue).
//!
//! After `NotHttp`, a 101 response or a 2xx response to CONNECT the parser emits nothing more,
//! not even `Aborted` at close: the caller drops what it holds for the connection.

use std::collections::VecDeque;

use super::http::{
    HttpEvent, ParseErrorKind, RequestHead, ResponseHead, ALLOWED_HEADERS, MAX_HEADER_VALUE_BYTES,
    MAX_PATH_BYTES,
};
use super::{cut, Direction, Segment};

/// The largest message head (start line, fields, blank line) the parser buffers.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header fields `httparse` may return for one head; more is [`ParseErrorKind::TooManyHeaders`].
pub const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (with extensions) or trailer section line.
pub const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;
/// Methods accepted when resynchronising (a stricter test than "a token", so that body bytes at
/// a syscall boundary are not taken for a request).
const KNOWN_METHODS: [&[u8]; 9] = [
    b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];
const MAX_METHOD_BYTES: usize = 32;
/// Exchanges open at once on one connection (pipelined requests waiting for their responses);
/// more are shed (see the module's "Pipelining bound").
pub const MAX_PIPELINED: usize = 64;

/// One exchange the caller has been told about and that has not finished.
#[derive(Clone, Copy, Debug)]
struct Exchange {
    seq: u64,
    head_request: bool,
    connect: bool,
    request_complete: bool,
    response_started: bool,
    response_complete: bool,
}

impl Exchange {
    fn finished(&self) -> bool {
        self.request_complete && self.response_complete
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    Yes,
    No,
    More,
}

/// Incremental plausibility test of a start line, run before `httparse` sees the whole head so
/// that garbage is rejected at once instead of after 64 KiB.
#[derive(Clone, Copy, Debug, Default)]
struct StartScan {
    part: u8,
    n: usize,
    method: [u8; 8],
}

impl StartScan {
    /// `METHOD SP target SP HTTP/1.d CRLF`; `strict`: the method must be a known one.
    fn request(&mut self, bytes: &[u8], strict: bool) -> Scan {
        const VERSION: &[u8] = b"HTTP/1.";
        for &b in bytes {
            match self.part {
                0 => {
                    if b == b' ' && self.n > 0 {
                        if strict && !self.known_method() {
                            return Scan::No;
                        }
                        self.part = 1;
                        self.n = 0;
                    } else if is_tchar(b) && self.n < MAX_METHOD_BYTES {
                        if let Some(slot) = self.method.get_mut(self.n) {
                            *slot = b;
                        }
                        self.n += 1;
                    } else {
                        return Scan::No;
                    }
                }
                1 => {
                    if b == b' ' && self.n > 0 {
                        self.part = 2;
                        self.n = 0;
                    } else if b > b' ' && b != 0x7f {
                        let first_ok =
                            b == b'/' || b == b'*' || b == b'[' || b.is_ascii_alphanumeric();
                        if strict && self.n == 0 && !first_ok {
                            return Scan::No;
                        }
                        self.n = self.n.saturating_add(1);
                    } else {
                        return Scan::No;
                    }
                }
                2 => {
                    let ok = match VERSION.get(self.n) {
                        Some(&want) => b == want,
                        None if self.n == VERSION.len() => b.is_ascii_digit(),
                        None if b == b'\n' => return Scan::Yes,
                        None if b == b'\r' => {
                            self.part = 3;
                            true
                        }
                        None => false,
                    };
                    if !ok {
                        return Scan::No;
                    }
                    self.n += 1;
                }
                _ => return if b == b'\n' { Scan::Yes } else { Scan::No },
            }
        }
        Scan::More
    }

    /// `HTTP/1.d SP ddd` followed by SP, CR or LF.
    fn status(&mut self, bytes: &[u8]) -> Scan {
        const PREFIX: &[u8] = b"HTTP/1.";
        for &b in bytes {
            let ok = match self.n {
                n if n < PREFIX.len() => PREFIX.get(n) == Some(&b),
                7 => b.is_ascii_digit(),
                8 => b == b' ',
                9..=11 => b.is_ascii_digit(),
                _ => {
                    return if matches!(b, b' ' | b'\r' | b'\n') {
                        Scan::Yes
                    } else {
                        Scan::No
                    }
                }
            };
            if !ok {
                return Scan::No;
            }
            self.n += 1;
        }
        Scan::More
    }

    fn known_method(&self) -> bool {
        let m = self.method.get(..self.n).unwrap_or_default();
        KNOWN_METHODS.contains(&m)
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A message head being read.
#[derive(Clone, Copy, Debug, Default)]
struct HeadState {
    /// The first byte (after blank lines between messages) was seen at `ts`.
    started: bool,
    ts: u64,
    scan: StartScan,
    /// The start line passed the plausibility test.
    confirmed: bool,
    /// Started while resynchronising: a start line that fails the test sends the side back to
    /// resynchronising without a `ParseError` (the bytes were never taken for a message).
    tentative: bool,
}

#[derive(Clone, Copy, Debug)]
enum Chunk {
    /// In a chunk-size line: `value` so far, `digits` read, `line` bytes read, after the
    /// digits (`ext`), after a CR (`cr`).
    Size {
        value: u64,
        digits: u8,
        line: usize,
        ext: bool,
        cr: bool,
    },
    Data(u64),
    /// The CRLF after chunk data; `cr`: the CR was seen.
    DataEnd {
        cr: bool,
    },
    /// The trailer section: `line` bytes in the current line, `total` bytes in all.
    Trailer {
        line: usize,
        total: usize,
    },
}

const CHUNK_SIZE_START: Chunk = Chunk::Size {
    value: 0,
    digits: 0,
    line: 0,
    ext: false,
    cr: false,
};

#[derive(Clone, Copy, Debug)]
enum Body {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Head(HeadState),
    Body(Body),
    /// Discarding bytes until a syscall-start segment that begins with a plausible start line.
    Resync,
}

/// One direction of the connection.
#[derive(Debug)]
struct Side {
    phase: Phase,
    /// A head that spans segments (empty otherwise).
    buf: Vec<u8>,
    /// The exchange the current message belongs to (`None`: a response to a request that was
    /// never seen, or an abandoned message: it is framed but not reported).
    msg: Option<u64>,
}

impl Side {
    fn new(phase: Phase) -> Self {
        Self {
            phase,
            buf: Vec::new(),
            msg: None,
        }
    }

    fn release_buf(&mut self) {
        if self.buf.capacity() > 8 * 1024 {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }
}

/// Framing decided from a head's fields.
#[derive(Clone, Copy, Debug, Default)]
struct Framing {
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
}

enum Parsed {
    Request {
        len: usize,
        head: RequestHead,
        framing: Framing,
    },
    Response {
        len: usize,
        head: ResponseHead,
        framing: Framing,
    },
}

/// The HTTP/1.x parser of one TCP connection.
#[derive(Debug)]
pub struct Http1Conn {
    req: Side,
    resp: Side,
    /// Open exchanges, oldest first, with consecutive `seq`s; at most [`MAX_PIPELINED`].
    inflight: VecDeque<Exchange>,
    next_seq: u64,
    /// The `seq` of the oldest open exchange without a response head (`next_seq` when none).
    next_response_seq: u64,
    /// Shed requests whose response has not begun: they follow every open exchange.
    shed_pending: u64,
    /// Requests shed since the last [`Http1Conn::take_shed`].
    shed: u64,
    mid_stream: bool,
    /// Nothing parsed and nothing failed yet: a bad start line means "not HTTP".
    fresh: bool,
    /// No more events (not HTTP, upgraded, or closed).
    done: bool,
}

impl Http1Conn {
    /// `mid_stream`: the agent attached after the connection was opened: the first bytes may be
    /// the middle of a message; parsing starts at the next syscall-start segment that begins
    /// with a plausible request line (status line for responses).
    pub fn new(mid_stream: bool) -> Self {
        let phase = if mid_stream {
            Phase::Resync
        } else {
            Phase::Head(HeadState::default())
        };
        Self {
            req: Side::new(phase),
            resp: Side::new(phase),
            inflight: VecDeque::new(),
            next_seq: 0,
            next_response_seq: 0,
            shed_pending: 0,
            shed: 0,
            mid_stream,
            fresh: !mid_stream,
            done: false,
        }
    }

    /// Bytes held of heads that span segments (both directions; each at most
    /// [`MAX_HEAD_BYTES`]).
    pub fn buffered(&self) -> usize {
        self.req.buf.len() + self.resp.buf.len()
    }

    /// Feed the next bytes of one direction.
    pub fn feed(&mut self, dir: Direction, seg: Segment<'_>, out: &mut impl FnMut(HttpEvent<'_>)) {
        let mut data = seg.data;
        let mut at_start = seg.syscall_start;
        let mut idle_steps = 0;
        while !data.is_empty() && !self.done {
            let used = match self.side(dir).phase {
                Phase::Resync => self.step_resync(dir, data, at_start, out),
                Phase::Head(_) => self.step_head(dir, data, seg.ts_ns, out),
                Phase::Body(_) => self.step_body(dir, data, seg.ts_ns, out),
            };
            // Steps that consume nothing only change phase; never loop on them.
            if used == 0 {
                idle_steps += 1;
                if idle_steps > 3 {
                    break;
                }
            } else {
                idle_steps = 0;
            }
            data = data.get(used..).unwrap_or_default();
            at_start = false;
        }
    }

    /// `len` bytes of this direction were lost: skip them. Inside a Content-Length body or a
    /// chunk's data (or a body delimited by close) the message goes on with a `*BodyGap`;
    /// elsewhere this is a `ParseError` (kind `Lost`) and the direction resynchronises.
    pub fn gap(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        len: u64,
        out: &mut impl FnMut(HttpEvent<'_>),
    ) {
        if self.done || len == 0 {
            return;
        }
        self.fresh = false;
        match self.side(dir).phase {
            Phase::Resync => {}
            Phase::Head(h) => {
                if h.tentative && !h.confirmed {
                    self.resync(dir);
                } else {
                    self.fail(dir, ParseErrorKind::Lost, ts_ns, out);
                }
            }
            Phase::Body(Body::UntilClose) => self.emit_gap(dir, len, out),
            Phase::Body(Body::Length(rem)) => {
                self.emit_gap(dir, len.min(rem), out);
                if len < rem {
                    self.side(dir).phase = Phase::Body(Body::Length(rem - len));
                } else {
                    self.end_message(dir, ts_ns, out);
                    if len > rem {
                        // The start of the next message was lost too.
                        self.fail(dir, ParseErrorKind::Lost, ts_ns, out);
                    }
                }
            }
            Phase::Body(Body::Chunked(Chunk::Data(rem))) if len <= rem => {
                self.emit_gap(dir, len, out);
                let next = if len < rem {
                    Chunk::Data(rem - len)
                } else {
                    Chunk::DataEnd { cr: false }
                };
                self.side(dir).phase = Phase::Body(Body::Chunked(next));
            }
            Phase::Body(Body::Chunked(_)) => self.fail(dir, ParseErrorKind::Lost, ts_ns, out),
        }
    }

    /// The connection closed at `ts_ns`: a response delimited by close ends here
    /// (`ResponseEnd`); every exchange still unfinished is reported as `Aborted`.
    pub fn close(&mut self, ts_ns: u64, out: &mut impl FnMut(HttpEvent<'_>)) {
        if self.done {
            return;
        }
        if matches!(self.resp.phase, Phase::Body(Body::UntilClose)) {
            self.end_message(Direction::Response, ts_ns, out);
        }
        for dir in [Direction::Request, Direction::Response] {
            let side = self.side(dir);
            if matches!(side.phase, Phase::Head(_)) && !side.buf.is_empty() {
                out(HttpEvent::ParseError {
                    dir,
                    kind: ParseErrorKind::Truncated,
                });
            }
        }
        self.abort_all(ts_ns, out);
        self.done = true;
        self.req = Side::new(Phase::Resync);
        self.resp = Side::new(Phase::Resync);
    }

    /// Requests shed (beyond [`MAX_PIPELINED`] in flight) since the last call.
    pub fn take_shed(&mut self) -> u64 {
        std::mem::take(&mut self.shed)
    }

    /// Open exchanges (at most [`MAX_PIPELINED`]).
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    fn side(&mut self, dir: Direction) -> &mut Side {
        match dir {
            Direction::Request => &mut self.req,
            Direction::Response => &mut self.resp,
        }
    }

    /// Where the open exchange `seq` is in the queue: constant time, as the queue's sequence
    /// numbers are consecutive.
    fn index(&self, seq: u64) -> Option<usize> {
        let front = self.inflight.front()?.seq;
        let i = usize::try_from(seq.wrapping_sub(front)).ok()?;
        (self.inflight.get(i)?.seq == seq).then_some(i)
    }

    fn exchange(&mut self, seq: Option<u64>) -> Option<&mut Exchange> {
        let i = self.index(seq?)?;
        self.inflight.get_mut(i)
    }

    /// The current message of `dir` is reported (its exchange is still open).
    fn reported(&self, dir: Direction) -> bool {
        let msg = match dir {
            Direction::Request => self.req.msg,
            Direction::Response => self.resp.msg,
        };
        msg.is_some_and(|seq| self.index(seq).is_some())
    }

    fn resync(&mut self, dir: Direction) {
        let side = self.side(dir);
        side.phase = Phase::Resync;
        side.msg = None;
        side.release_buf();
    }

    /// A parse error (or a loss) in `dir`: report it, abandon what it cuts into, resynchronise.
    fn fail(
        &mut self,
        dir: Direction,
        kind: ParseErrorKind,
        ts_ns: u64,
        out: &mut impl FnMut(HttpEvent<'_>),
    ) {
        out(HttpEvent::ParseError { dir, kind });
        // A broken response (or a loss between responses) breaks FIFO matching; a broken request
        // abandons its own exchange, and with it (to keep `Aborted` unambiguous) the older ones.
        let abandons = match dir {
            Direction::Response => !self.inflight.is_empty(),
            Direction::Request => self.reported(dir),
        };
        if abandons {
            self.abort_all(ts_ns, out);
        }
        self.resync(dir);
    }

    fn abort_all(&mut self, ts_ns: u64, out: &mut impl FnMut(HttpEvent<'_>)) {
        for ex in self.inflight.drain(..) {
            out(HttpEvent::Aborted {
                ts_ns,
                request_complete: ex.request_complete,
                response_started: ex.response_started,
            });
        }
        self.next_response_seq = self.next_seq;
        self.shed_pending = 0;
    }

    fn emit_gap(&mut self, dir: Direction, len: u64, out: &mut impl FnMut(HttpEvent<'_>)) {
        if len > 0 && self.reported(dir) {
            out(match dir {
                Direction::Request => HttpEvent::RequestBodyGap { len },
                Direction::Response => HttpEvent::ResponseBodyGap { len },
            });
        }
    }

    fn emit_body<'a>(
        &self,
        dir: Direction,
        ts_ns: u64,
        data: &'a [u8],
        out: &mut impl FnMut(HttpEvent<'a>),
    ) {
        if !data.is_empty() && self.reported(dir) {
            out(match dir {
                Direction::Request => HttpEvent::RequestBody { ts_ns, data },
                Direction::Response => HttpEvent::ResponseBody { ts_ns, data },
            });
        }
    }

    /// The current message of `dir` ended with a byte of the segment at `ts_ns`.
    fn end_message(&mut self, dir: Direction, ts_ns: u64, out: &mut impl FnMut(HttpEvent<'_>)) {
        let msg = self.side(dir).msg.take();
        self.side(dir).phase = Phase::Head(HeadState::default());
        if let Some(ex) = self.exchange(msg) {
            match dir {
                Direction::Request => ex.request_complete = true,
                Direction::Response => ex.response_complete = true,
            }
            out(match dir {
                Direction::Request => HttpEvent::RequestEnd { ts_ns },
                Direction::Response => HttpEvent::ResponseEnd { ts_ns },
            });
        }
        // Requests and responses are each in order, so finished exchanges are at the front.
        while self.inflight.front().is_some_and(Exchange::finished) {
            self.inflight.pop_front();
        }
    }

    fn step_resync(
        &mut self,
        dir: Direction,
        data: &[u8],
        at_start: bool,
        out: &mut impl FnMut(HttpEvent<'_>),
    ) -> usize {
        if !at_start {
            return data.len();
        }
        let blank = data
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        let rest = data.get(blank..).unwrap_or_default();
        if rest.is_empty() {
            return data.len();
        }
        if self.mid_stream && self.inflight.is_empty() && self.next_seq == 0 && looks_like_tls(rest)
        {
            out(HttpEvent::NotHttp);
            self.done = true;
            return data.len();
        }
        let mut scan = StartScan::default();
        let plausible = match dir {
            Direction::Request => scan.request(rest, true),
            Direction::Response => scan.status(rest),
        };
        if plausible == Scan::No {
            return data.len();
        }
        let side = self.side(dir);
        side.phase = Phase::Head(HeadState {
            tentative: true,
            ..HeadState::default()
        });
        side.msg = None;
        blank
    }

    fn step_head(
        &mut self,
        dir: Direction,
        data: &[u8],
        ts_ns: u64,
        out: &mut impl FnMut(HttpEvent<'_>),
    ) -> usize {
        let Phase::Head(mut h) = self.side(dir).phase else {
            return 0;
        };
        if !h.started {
            // Blank lines between messages are tolerated (RFC 9112 §2.2).
            let blank = data
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if blank > 0 {
                return blank;
            }
            h = HeadState {
                started: true,
                ts: ts_ns,
                tentative: h.tentative,
                ..HeadState::default()
            };
        }
        if !h.confirmed {
            let scan = match dir {
                Direction::Request => h.scan.request(data, h.tentative),
                Direction::Response => h.scan.status(data),
            };
            match scan {
                Scan::Yes => {
                    h.confirmed = true;
                    h.tentative = false;
                }
                Scan::More => {}
                Scan::No => {
                    self.bad_head(dir, h, ParseErrorKind::BadStartLine, ts_ns, out);
                    return data.len();
                }
            }
        }
        self.side(dir).phase = Phase::Head(h);

        let old = self.side(dir).buf.len();
        let parsed = if old == 0 {
            let window = data.get(..MAX_HEAD_BYTES).unwrap_or(data);
            if !has_head_end(window) {
                Ok(None)
            } else {
                parse_head(dir, window)
            }
        } else {
            let take = data.len().min(MAX_HEAD_BYTES.saturating_sub(old));
            let side = self.side(dir);
            side.buf
                .extend_from_slice(data.get(..take).unwrap_or_default());
            if !has_head_end(side.buf.get(old.saturating_sub(2)..).unwrap_or_default()) {
                Ok(None)
            } else {
                parse_head(dir, &side.buf)
            }
        };
        match parsed {
            Ok(Some(p)) => {
                let len = match &p {
                    Parsed::Request { len, .. } | Parsed::Response { len, .. } => *len,
                };
                // Bytes of this segment that belong to the head.
                let used = len.saturating_sub(old);
                if used == 0 {
                    self.bad_head(dir, h, ParseErrorKind::BadHeader, ts_ns, out);
                    return data.len();
                }
                self.side(dir).release_buf();
                self.on_head(dir, h.ts, p, ts_ns, out);
                used
            }
            Ok(None) => {
                let side = self.side(dir);
                if old == 0 {
                    if data.len() >= MAX_HEAD_BYTES {
                        self.bad_head(dir, h, ParseErrorKind::HeadTooLarge, ts_ns, out);
                        return data.len();
                    }
                    side.buf.extend_from_slice(data);
                    data.len()
                } else if side.buf.len() >= MAX_HEAD_BYTES {
                    self.bad_head(dir, h, ParseErrorKind::HeadTooLarge, ts_ns, out);
                    data.len()
                } else {
                    side.buf.len().saturating_sub(old)
                }
            }
            Err(kind) => {
                self.bad_head(dir, h, kind, ts_ns, out);
                data.len()
            }
        }
    }

    fn bad_head(
        &mut self,
        dir: Direction,
        h: HeadState,
        kind: ParseErrorKind,
        ts_ns: u64,
        out: &mut impl FnMut(HttpEvent<'_>),
    ) {
        if h.tentative && kind == ParseErrorKind::BadStartLine {
            self.resync(dir);
        } else if self.fresh && kind == ParseErrorKind::BadStartLine {
            out(HttpEvent::NotHttp);
            self.done = true;
        } else {
            self.fresh = false;
            self.fail(dir, kind, ts_ns, out);
        }
    }

    /// A complete head: open (or match) the exchange, report it, set up the body.
    fn on_head(
        &mut self,
        dir: Direction,
        head_ts: u64,
        parsed: Parsed,
        ts_ns: u64,
        out: &mut impl FnMut(HttpEvent<'_>),
    ) {
        self.fresh = false;
        match parsed {
            Parsed::Request {
                mut head, framing, ..
            } => {
                let body = if framing.transfer_encoding {
                    if !framing.chunked {
                        self.fail(dir, ParseErrorKind::BadTransferEncoding, ts_ns, out);
                        return;
                    }
                    Some(Body::Chunked(CHUNK_SIZE_START))
                } else {
                    framing.content_length.filter(|&n| n > 0).map(Body::Length)
                };
                head.chunked = framing.chunked;
                head.content_length = if framing.transfer_encoding {
                    None
                } else {
                    framing.content_length
                };
                if self.shed_pending > 0 || self.inflight.len() >= MAX_PIPELINED {
                    // Framed, not reported: its body is skipped with no exchange to feed.
                    self.shed_pending += 1;
                    self.shed += 1;
                    self.req.msg = None;
                    match body {
                        Some(body) => self.req.phase = Phase::Body(body),
                        None => self.end_message(dir, ts_ns, out),
                    }
                    return;
                }
                let seq = self.next_seq;
                self.next_seq = self.next_seq.wrapping_add(1);
                self.inflight.push_back(Exchange {
                    seq,
                    head_request: head.method == "HEAD",
                    connect: head.method == "CONNECT",
                    request_complete: false,
                    response_started: false,
                    response_complete: false,
                });
                self.req.msg = Some(seq);
                out(HttpEvent::RequestHead {
                    ts_ns: head_ts,
                    head,
                });
                match body {
                    Some(body) => self.req.phase = Phase::Body(body),
                    None => self.end_message(dir, ts_ns, out),
                }
            }
            Parsed::Response {
                mut head, framing, ..
            } => {
                if head.status == 101 {
                    self.done = true; // the connection switched protocols: opaque from here
                    return;
                }
                if (100..200).contains(&head.status) {
                    self.resp.phase = Phase::Head(HeadState::default());
                    return;
                }
                let matched = match self.index(self.next_response_seq) {
                    Some(i) => self.inflight.get_mut(i),
                    None => {
                        // A shed request's response (framed as a GET's), or one nobody asked.
                        self.shed_pending = self.shed_pending.saturating_sub(1);
                        None
                    }
                };
                let (head_request, connect) = matched
                    .as_ref()
                    .map_or((false, false), |e| (e.head_request, e.connect));
                if connect && (200..300).contains(&head.status) {
                    self.done = true; // a tunnel: opaque from here
                    return;
                }
                let body = if head_request || head.status == 204 || head.status == 304 {
                    None
                } else if framing.transfer_encoding {
                    Some(if framing.chunked {
                        Body::Chunked(CHUNK_SIZE_START)
                    } else {
                        Body::UntilClose
                    })
                } else {
                    match framing.content_length {
                        Some(0) => None,
                        Some(n) => Some(Body::Length(n)),
                        None => Some(Body::UntilClose),
                    }
                };
                head.chunked = framing.chunked;
                head.content_length = if framing.transfer_encoding {
                    None
                } else {
                    framing.content_length
                };
                self.resp.msg = matched.map(|e| {
                    e.response_started = true;
                    e.seq
                });
                if self.resp.msg.is_some() {
                    self.next_response_seq = self.next_response_seq.wrapping_add(1);
                }
                if self.resp.msg.is_some() {
                    out(HttpEvent::ResponseHead {
                        ts_ns: head_ts,
                        head,
                    });
                }
                match body {
                    Some(body) => self.resp.phase = Phase::Body(body),
                    None => self.end_message(dir, ts_ns, out),
                }
            }
        }
    }

    fn step_body(
        &mut self,
        dir: Direction,
        data: &[u8],
        ts_ns: u64,
        out: &mut impl FnMut(HttpEvent<'_>),
    ) -> usize {
        let Phase::Body(body) = self.side(dir).phase else {
            return 0;
        };
        match body {
            Body::UntilClose => {
                self.emit_body(dir, ts_ns, data, out);
                data.len()
            }
            Body::Length(rem) => {
                let n = data.len().min(usize::try_from(rem).unwrap_or(usize::MAX));
                self.emit_body(dir, ts_ns, data.get(..n).unwrap_or_default(), out);
                let rem = rem.saturating_sub(n as u64);
                if rem == 0 {
                    self.end_message(dir, ts_ns, out);
                } else {
                    self.side(dir).phase = Phase::Body(Body::Length(rem));
                }
                n
            }
            Body::Chunked(Chunk::Data(rem)) => {
                let n = data.len().min(usize::try_from(rem).unwrap_or(usize::MAX));
                self.emit_body(dir, ts_ns, data.get(..n).unwrap_or_default(), out);
                let rem = rem.saturating_sub(n as u64);
                let next = if rem == 0 {
                    Chunk::DataEnd { cr: false }
                } else {
                    Chunk::Data(rem)
                };
                self.side(dir).phase = Phase::Body(Body::Chunked(next));
                n
            }
            Body::Chunked(chunk) => match step_chunk_framing(chunk, data) {
                (used, Ok(ChunkStep::Continue(next))) => {
                    self.side(dir).phase = Phase::Body(Body::Chunked(next));
                    used
                }
                (used, Ok(ChunkStep::End)) => {
                    self.end_message(dir, ts_ns, out);
                    used
                }
                (_, Err(kind)) => {
                    self.fail(dir, kind, ts_ns, out);
                    data.len()
                }
            },
        }
    }
}

enum ChunkStep {
    Continue(Chunk),
    End,
}

/// Reads chunk-size lines, the CRLF after chunk data and the trailer section (never chunk
/// data). Returns the bytes used and the next state.
fn step_chunk_framing(mut chunk: Chunk, data: &[u8]) -> (usize, Result<ChunkStep, ParseErrorKind>) {
    for (i, &b) in data.iter().enumerate() {
        let used = i + 1;
        match &mut chunk {
            Chunk::Size {
                value,
                digits,
                line,
                ext,
                cr,
            } => {
                *line += 1;
                if *line > MAX_CHUNK_LINE_BYTES {
                    return (used, Err(ParseErrorKind::ChunkLineTooLong));
                }
                if *cr {
                    if b != b'\n' {
                        return (used, Err(ParseErrorKind::BadChunk));
                    }
                } else if b == b'\r' {
                    *cr = true;
                    continue;
                } else if *ext {
                    if b != b'\n' {
                        continue;
                    }
                } else if let Some(d) = (b as char).to_digit(16) {
                    *digits = digits.saturating_add(1);
                    match value
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(u64::from(d)))
                    {
                        Some(v) => *value = v,
                        None => return (used, Err(ParseErrorKind::BadChunk)),
                    }
                    continue;
                } else if matches!(b, b';' | b' ' | b'\t') && *digits > 0 {
                    *ext = true;
                    continue;
                } else if b != b'\n' {
                    return (used, Err(ParseErrorKind::BadChunk));
                }
                // End of the chunk-size line.
                if *digits == 0 {
                    return (used, Err(ParseErrorKind::BadChunk));
                }
                let next = if *value == 0 {
                    Chunk::Trailer { line: 0, total: 0 }
                } else {
                    Chunk::Data(*value)
                };
                return (used, Ok(ChunkStep::Continue(next)));
            }
            Chunk::DataEnd { cr } => match b {
                b'\r' if !*cr => *cr = true,
                b'\n' => return (used, Ok(ChunkStep::Continue(CHUNK_SIZE_START))),
                _ => return (used, Err(ParseErrorKind::BadChunk)),
            },
            Chunk::Trailer { line, total } => {
                *total += 1;
                if *total > MAX_HEAD_BYTES {
                    return (used, Err(ParseErrorKind::HeadTooLarge));
                }
                match b {
                    b'\n' if *line == 0 => return (used, Ok(ChunkStep::End)),
                    b'\n' => *line = 0,
                    b'\r' => {}
                    _ => *line += 1,
                }
            }
            Chunk::Data(_) => return (i, Ok(ChunkStep::Continue(chunk))),
        }
    }
    (data.len(), Ok(ChunkStep::Continue(chunk)))
}

/// Whether `buf` holds the blank line that ends a head (`\n\n` or `\n\r\n`).
/// Only the line ends are looked at (`memchr`): a byte-by-byte window over every head was a tenth
/// of the agent's CPU per plain request (docs/PERFORMANCE.md).
fn has_head_end(buf: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', buf).any(|i| match buf.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => buf.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

/// A TLS record header (handshake, alert, change-cipher-spec, application data; TLS 1.0–1.3).
fn looks_like_tls(data: &[u8]) -> bool {
    matches!(data, [0x14..=0x17, 0x03, 0x00..=0x04, ..])
}

/// Parses a complete head. `Ok(None)`: not complete after all.
fn parse_head(dir: Direction, bytes: &[u8]) -> Result<Option<Parsed>, ParseErrorKind> {
    // Left uninitialised: httparse writes the fields it parses (zeroing all 128 was a few hundred
    // instructions per head).
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    match dir {
        Direction::Request => {
            let mut req = httparse::Request::new(&mut []);
            let parsed = req.parse_with_uninit_headers(bytes, &mut fields);
            let len = match parsed.map_err(map_httparse_error)? {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial => return Ok(None),
            };
            let framing = framing(req.headers)?;
            let head = RequestHead {
                method: req.method.unwrap_or_default().to_owned(),
                path: request_path(req.path.unwrap_or_default()),
                minor_version: req.version.unwrap_or(1),
                content_length: None,
                chunked: false,
                headers: allowed_headers(req.headers),
            };
            Ok(Some(Parsed::Request { len, head, framing }))
        }
        Direction::Response => {
            let mut resp = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut resp,
                bytes,
                &mut fields,
            );
            let len = match parsed.map_err(map_httparse_error)? {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial => return Ok(None),
            };
            let framing = framing(resp.headers)?;
            let head = ResponseHead {
                status: resp.code.unwrap_or_default(),
                minor_version: resp.version.unwrap_or(1),
                content_length: None,
                chunked: false,
                headers: allowed_headers(resp.headers),
            };
            Ok(Some(Parsed::Response { len, head, framing }))
        }
    }
}

fn map_httparse_error(e: httparse::Error) -> ParseErrorKind {
    match e {
        httparse::Error::TooManyHeaders => ParseErrorKind::TooManyHeaders,
        httparse::Error::Token | httparse::Error::Version | httparse::Error::Status => {
            ParseErrorKind::BadStartLine
        }
        httparse::Error::HeaderName | httparse::Error::HeaderValue | httparse::Error::NewLine => {
            ParseErrorKind::BadHeader
        }
    }
}

fn framing(fields: &[httparse::Header<'_>]) -> Result<Framing, ParseErrorKind> {
    let mut f = Framing::default();
    for field in fields {
        if field.name.eq_ignore_ascii_case("content-length") {
            // `n` or a list of identical `n, n` (RFC 9110 §8.6); anything else is an error.
            for v in field.value.split(|&b| b == b',') {
                let v = v.trim_ascii();
                if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                    return Err(ParseErrorKind::BadContentLength);
                }
                let n = v.iter().fold(0u64, |acc, &d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                match f.content_length {
                    Some(prev) if prev != n => return Err(ParseErrorKind::BadContentLength),
                    _ => f.content_length = Some(n),
                }
            }
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in field.value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if !coding.is_empty() {
                    f.transfer_encoding = true;
                    f.chunked = coding.eq_ignore_ascii_case(b"chunked");
                }
            }
        }
    }
    Ok(f)
}

/// The allow-listed fields, values cut to [`MAX_HEADER_VALUE_BYTES`].
fn allowed_headers(fields: &[httparse::Header<'_>]) -> Vec<(&'static str, String)> {
    fields
        .iter()
        .filter_map(|field| {
            let name = allowed_name(field.name)?;
            let raw = field
                .value
                .get(..MAX_HEADER_VALUE_BYTES)
                .unwrap_or(field.value);
            Some((
                name,
                cut(&String::from_utf8_lossy(raw), MAX_HEADER_VALUE_BYTES),
            ))
        })
        .collect()
}

/// The allow-listed name `name` is (ASCII case-insensitively), if any. Length and first byte are
/// compared before the whole name: most fields of a head are on no list, and comparing each
/// against every allowed name was a tenth of the agent's CPU per plain request.
fn allowed_name(name: &str) -> Option<&'static str> {
    let first = name.as_bytes().first()?.to_ascii_lowercase();
    ALLOWED_HEADERS.iter().copied().find(|a| {
        a.len() == name.len()
            && a.as_bytes().first() == Some(&first)
            && a.eq_ignore_ascii_case(name)
    })
}

/// The path of a request target: no scheme/authority, query or fragment.
fn request_path(target: &str) -> String {
    let path = match target.find("://") {
        Some(i) if !target.starts_with('/') => {
            let after = target.get(i + 3..).unwrap_or_default();
            after.find('/').and_then(|j| after.get(j..)).unwrap_or("/")
        }
        _ => target,
    };
    let end = path.find(['?', '#']).unwrap_or(path.len());
    cut(path.get(..end).unwrap_or_default(), MAX_PATH_BYTES)
}

#[cfg(test)]
mod tests;
