//! HTTP/2 events of one connection → what its streams were: plain HTTP requests (the same
//! [`Exchange`](super::Exchange)s as over HTTP/1.1, through one [`ExchangeTracker`] per stream), gRPC calls
//! ([`GrpcCall`], ending at the response's END_STREAM — the trailers — not at its headers), and
//! ext_proc streams, whose messages make routing decisions ([`crate::epp`]).
//!
//! A stream's kind comes from its request headers (`:path`, `content-type`). When the headers
//! could not be decoded (HPACK state unknown: picked up mid-connection), a stream whose first
//! request message decodes as an ext_proc `ProcessingRequest` carrying request headers is taken as
//! an ext_proc stream (its payloads are protobuf in DATA, readable without HPACK); other such
//! streams are followed for framing only and produce nothing.
//!
//! Bounded: at most [`MAX_STREAMS`] streams per connection (more are counted and ignored); gRPC
//! messages are held whole only where they are decoded — ext_proc streams (one per direction,
//! ≤ `grpc::MAX_MESSAGE`) and the first request message of a stream whose headers are unknown
//! (≤ [`PROBE_MESSAGE`], to recognise ext_proc) —; other gRPC streams are followed by their
//! framing only and hold no message bytes. What the streams hold is kept as a running sum
//! ([`H2Streams::buffered`]) for the connection's buffer budget; each event touches one stream
//! (or all of them once, on a loss). Hostile traffic over a limit — client resets before the
//! response over [`RESET_BURST`]/[`RESETS_PER_SECOND`] (a rapid-reset flood), more than
//! [`MAX_STREAMS`] streams shed or opened with a stream id that does not increase (stream
//! exhaustion), or an [`H2Abuse`] from the parser — drops the connection's streams and state
//! ([`H2Effects::dropped`]; the caller stops the parser). Pure: no I/O, no clock (time is the
//! events' timestamps).

use std::collections::HashMap;

use super::{ExchangeTracker, Work};
use crate::epp::ExtProcStream;
use crate::protocol::ext_proc::{self, PROCESS_PATH};
use crate::protocol::grpc::{self, GrpcDeframer, GrpcMessage};
use crate::protocol::http::{HttpEvent, RequestHead, ResponseHead};
use crate::protocol::http2::{Budget, Fields, H2Abuse, H2Event};
use crate::protocol::Direction;

/// Streams followed per connection at once.
pub const MAX_STREAMS: usize = 256;
/// The largest first request message held of a stream whose headers are unknown, to recognise
/// an ext_proc stream by it (an ext_proc `ProcessingRequest` with request headers is small).
pub const PROBE_MESSAGE: usize = 64 << 10;
/// Streams the client may reset before their response: a burst, then this many per second
/// (nghttp2's stream reset rate limit); more is a rapid-reset flood.
pub const RESET_BURST: u64 = 1000;
pub const RESETS_PER_SECOND: u64 = 33;

/// How a gRPC call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// The response ended with END_STREAM (trailers).
    Completed,
    /// RST_STREAM: by the client (`by_client`) or the server.
    Reset { by_client: bool, code: u32 },
    /// The connection ended, or framing was lost, first.
    Abandoned,
}

/// A finished gRPC call (not ext_proc). Metadata only.
#[derive(Clone, Debug, PartialEq)]
pub struct GrpcCall {
    pub service: String,
    pub method: String,
    /// Allow-listed request headers (trace context, request id).
    pub headers: Vec<(&'static str, String)>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub http_status: Option<u16>,
    /// From the trailers (or a trailers-only response's headers).
    pub grpc_status: Option<u32>,
    pub request_messages: u64,
    pub response_messages: u64,
    pub outcome: CallOutcome,
    pub incomplete: bool,
}

/// Counts for the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2Effects {
    pub grpc_messages: u64,
    /// Compressed or oversized gRPC messages (not decoded).
    pub grpc_skipped: u64,
    /// gRPC messages of ext_proc streams that were not valid ext_proc messages.
    pub ext_proc_failures: u64,
    /// Streams beyond [`MAX_STREAMS`].
    pub streams_shed: u64,
    pub parse_errors: u64,
    /// Hostile traffic over a limit, by kind (the first of a connection only: then it is
    /// dropped).
    pub header_lists_too_large: u64,
    pub continuation_floods: u64,
    pub settings_floods: u64,
    pub ping_floods: u64,
    pub rapid_reset_floods: u64,
    pub stream_floods: u64,
    /// The connection's HTTP/2 state was dropped (the caller stops its parser).
    pub dropped: u64,
}

impl H2Effects {
    fn abuse(&mut self, kind: H2Abuse) {
        let c = match kind {
            H2Abuse::HeaderListTooLarge => &mut self.header_lists_too_large,
            H2Abuse::ContinuationFlood => &mut self.continuation_floods,
            H2Abuse::SettingsFlood => &mut self.settings_floods,
            H2Abuse::PingFlood => &mut self.ping_floods,
            H2Abuse::RapidReset => &mut self.rapid_reset_floods,
            H2Abuse::StreamFlood => &mut self.stream_floods,
        };
        *c += 1;
        self.dropped += 1;
    }

    /// Adds `o` to these counts.
    pub fn add(&mut self, o: &H2Effects) {
        self.grpc_messages += o.grpc_messages;
        self.grpc_skipped += o.grpc_skipped;
        self.ext_proc_failures += o.ext_proc_failures;
        self.streams_shed += o.streams_shed;
        self.parse_errors += o.parse_errors;
        self.header_lists_too_large += o.header_lists_too_large;
        self.continuation_floods += o.continuation_floods;
        self.settings_floods += o.settings_floods;
        self.ping_floods += o.ping_floods;
        self.rapid_reset_floods += o.rapid_reset_floods;
        self.stream_floods += o.stream_floods;
        self.dropped += o.dropped;
    }
}

enum Kind {
    /// Headers unknown; deciding from the first request message.
    Unknown,
    Http(ExchangeTracker),
    Grpc(Box<GrpcCall>),
    ExtProc(Box<ExtProcStream>),
    /// Followed for framing only.
    Ignored,
}

struct Stream {
    kind: Kind,
    deframers: [GrpcDeframer; 2],
    /// END_STREAM seen, per direction (request, response).
    ended: [bool; 2],
    /// A final response head was seen.
    responded: bool,
}

fn idx(dir: Direction) -> usize {
    match dir {
        Direction::Request => 0,
        Direction::Response => 1,
    }
}

/// The streams of one HTTP/2 connection.
pub struct H2Streams {
    streams: HashMap<u32, Stream>,
    /// The highest stream id the client opened.
    last_opened: u32,
    /// New streams not followed (table full, or an id that did not increase).
    shed: u64,
    resets: Budget,
    /// Hostile traffic was seen: events are ignored.
    dropped: bool,
    /// Streams looked at (a measure of work that does not depend on a clock).
    visits: u64,
    /// Bytes the streams hold (gRPC messages being reassembled, SSE events in progress, JSON
    /// tails): the sum of [`Stream::buffered`], kept up to date by each event.
    buffered: usize,
}

impl Default for H2Streams {
    fn default() -> H2Streams {
        H2Streams {
            streams: HashMap::new(),
            last_opened: 0,
            shed: 0,
            resets: Budget::new(RESET_BURST),
            dropped: false,
            visits: 0,
            buffered: 0,
        }
    }
}

impl H2Streams {
    pub fn new() -> H2Streams {
        H2Streams::default()
    }

    /// Streams looked at so far.
    pub fn visits(&self) -> u64 {
        self.visits
    }

    /// Bytes the streams hold, not parsed yet.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The connection is over its buffer budget: every stream drops what it holds (as after a
    /// loss of both directions: its request is marked incomplete, a gRPC stream picks messages
    /// up again at the next DATA frame). The streams stay followed, the framing and the HPACK
    /// tables are kept.
    pub fn shed_buffers(&mut self) {
        self.visits += self.streams.len() as u64;
        for s in self.streams.values_mut() {
            s.gap(Direction::Request, 0);
            s.gap(Direction::Response, 0);
        }
        self.recount();
    }

    fn recount(&mut self) {
        self.buffered = self.streams.values().map(Stream::buffered).sum();
    }

    /// Whether the connection's streams were dropped (hostile traffic over a limit).
    pub fn dropped(&self) -> bool {
        self.dropped
    }

    /// Drops every stream (counted as shed) and ignores later events.
    fn drop_all(&mut self, kind: H2Abuse, fx: &mut H2Effects) {
        if self.dropped {
            return;
        }
        self.dropped = true;
        fx.streams_shed += self.streams.len() as u64;
        self.streams.clear();
        self.buffered = 0;
        fx.abuse(kind);
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// One event of direction `dir`.
    pub fn on_event(&mut self, dir: Direction, ev: H2Event<'_>, done: &mut Vec<Work>) -> H2Effects {
        let mut fx = H2Effects::default();
        if self.dropped {
            return fx;
        }
        self.visits += 1;
        // What the stream this event is about holds, before and after (the running sum).
        let id = ev_stream(&ev);
        let held_before = id
            .and_then(|id| self.streams.get(&id))
            .map_or(0, Stream::buffered);
        self.event(dir, ev, &mut fx, done);
        let held_after = id
            .and_then(|id| self.streams.get(&id))
            .map_or(0, Stream::buffered);
        self.buffered = (self.buffered + held_after).saturating_sub(held_before);
        fx
    }

    fn event(&mut self, dir: Direction, ev: H2Event<'_>, fx: &mut H2Effects, done: &mut Vec<Work>) {
        // The stream this event touched (checked for its end below).
        let mut touched = None;
        match ev {
            H2Event::Headers {
                ts_ns,
                stream,
                fields,
                end_stream,
            } => {
                touched = Some(stream);
                if dir == Direction::Request && !self.streams.contains_key(&stream) {
                    // Stream ids of a client increase (RFC 9113 §5.1.1): a lower one is a stream
                    // already closed.
                    if self.streams.len() >= MAX_STREAMS || stream <= self.last_opened {
                        fx.streams_shed += 1;
                        self.shed += 1;
                        if self.shed > MAX_STREAMS as u64 {
                            self.drop_all(H2Abuse::StreamFlood, fx);
                        }
                        return;
                    }
                    self.last_opened = stream;
                    self.streams.insert(stream, Stream::open(ts_ns, &fields));
                } else if !self.streams.contains_key(&stream) {
                    // A response for a stream whose request we did not see: its request is lost.
                    return;
                }
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.headers(dir, ts_ns, fields, end_stream, done);
                }
            }
            H2Event::Data {
                ts_ns,
                stream,
                data,
                frame_start,
            } => {
                touched = Some(stream);
                if let Some(s) = self.streams.get_mut(&stream) {
                    if frame_start {
                        // gRPC writers start a message at a frame: pick messages up again there.
                        s.deframers[idx(dir)].resume();
                    }
                    s.data(dir, ts_ns, data, fx, done);
                }
            }
            H2Event::DataGap { stream, len } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.gap(dir, len);
                }
            }
            H2Event::EndStream { ts_ns, stream } => {
                touched = Some(stream);
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.end(dir, ts_ns, done);
                }
            }
            H2Event::Reset {
                ts_ns,
                stream,
                code,
            } => {
                if let Some(s) = self.streams.remove(&stream) {
                    let early = dir == Direction::Request && !s.responded;
                    s.reset(dir, ts_ns, code, done);
                    if early && !self.resets.take(ts_ns, RESET_BURST, RESETS_PER_SECOND) {
                        self.drop_all(H2Abuse::RapidReset, fx);
                    }
                }
            }
            H2Event::GoAway { .. } => {}
            H2Event::Lost => {
                // Only this direction's bytes were lost.
                self.visits += self.streams.len() as u64;
                for s in self.streams.values_mut() {
                    s.gap(dir, 0);
                }
                self.recount();
            }
            H2Event::Error(_) => fx.parse_errors += 1,
            H2Event::Abuse(kind) => self.drop_all(kind, fx),
        }
        if let Some(id) = touched {
            if self.streams.get(&id).is_some_and(Stream::finished) {
                self.streams.remove(&id);
            }
        }
    }

    /// The connection ended: every stream still open ends here. `peer_closed`: the peer closed
    /// first (for a server, the client went away: a cancellation).
    pub fn close(&mut self, ts_ns: u64, peer_closed: bool, done: &mut Vec<Work>) {
        for (_, s) in self.streams.drain() {
            s.close(ts_ns, peer_closed, done);
        }
    }
}

/// The stream an event is about.
fn ev_stream(ev: &H2Event<'_>) -> Option<u32> {
    match ev {
        H2Event::Headers { stream, .. }
        | H2Event::Data { stream, .. }
        | H2Event::DataGap { stream, .. }
        | H2Event::EndStream { stream, .. }
        | H2Event::Reset { stream, .. } => Some(*stream),
        _ => None,
    }
}

/// An HTTP stream that ends without its response (reset, or the connection went): its exchange
/// is aborted as a cancellation (`peer_closed`: the client's side went first) or a server abort.
fn abort_http(
    mut t: ExchangeTracker,
    ts_ns: u64,
    peer_closed: bool,
    responded: bool,
    done: &mut Vec<Work>,
) {
    t.closing();
    if peer_closed {
        t.peer_closed();
    }
    let mut out = Vec::new();
    t.on_event(
        HttpEvent::Aborted {
            ts_ns,
            request_complete: false,
            response_started: responded,
        },
        &mut out,
    );
    done.extend(out.into_iter().map(|e| Work::Exchange(Box::new(e))));
}

impl Stream {
    fn open(ts_ns: u64, fields: &Fields) -> Stream {
        let kind = if !fields.known {
            Kind::Unknown
        } else if fields.path.as_deref() == Some(PROCESS_PATH) {
            Kind::ExtProc(Box::new(ExtProcStream::new()))
        } else if fields
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/grpc"))
        {
            let path = fields.path.as_deref().unwrap_or("");
            let (service, method) = grpc::split_path(path).unwrap_or(("unknown", "unknown"));
            Kind::Grpc(Box::new(GrpcCall {
                service: service.to_string(),
                method: method.to_string(),
                headers: Vec::new(),
                start_ns: ts_ns,
                end_ns: ts_ns,
                http_status: None,
                grpc_status: None,
                request_messages: 0,
                response_messages: 0,
                outcome: CallOutcome::Abandoned,
                incomplete: false,
            }))
        } else {
            Kind::Http(ExchangeTracker::new())
        };
        let mut s = Stream {
            kind,
            deframers: [GrpcDeframer::with_limit(0), GrpcDeframer::with_limit(0)],
            ended: [false, false],
            responded: false,
        };
        s.set_limits();
        s
    }

    /// Messages are held whole only where they are decoded: an ext_proc stream's, and the first
    /// request message of a stream whose headers are unknown (up to [`PROBE_MESSAGE`]).
    fn set_limits(&mut self) {
        let limits = match self.kind {
            Kind::ExtProc(_) => [grpc::MAX_MESSAGE, grpc::MAX_MESSAGE],
            Kind::Unknown => [PROBE_MESSAGE, 0],
            Kind::Http(_) | Kind::Grpc(_) | Kind::Ignored => [0, 0],
        };
        for (d, limit) in self.deframers.iter_mut().zip(limits) {
            d.set_limit(limit);
        }
    }

    /// Bytes this stream holds, not parsed yet.
    fn buffered(&self) -> usize {
        let held = match &self.kind {
            Kind::Http(t) => t.buffered(),
            Kind::ExtProc(e) => e.buffered(),
            _ => 0,
        };
        held + self
            .deframers
            .iter()
            .map(GrpcDeframer::buffered)
            .sum::<usize>()
    }

    fn finished(&self) -> bool {
        self.ended[0] && self.ended[1]
    }

    fn headers(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        fields: Fields,
        end_stream: bool,
        done: &mut Vec<Work>,
    ) {
        match (&mut self.kind, dir) {
            // Trailers on the request side are not a new request.
            (Kind::Http(t), Direction::Request) if t.in_flight() == 0 => {
                let head = RequestHead {
                    method: fields.method.clone().unwrap_or_default(),
                    path: fields.path.clone().unwrap_or_default(),
                    minor_version: 0,
                    content_length: None,
                    chunked: false,
                    headers: fields.headers,
                };
                let mut out = Vec::new();
                t.on_event(HttpEvent::RequestHead { ts_ns, head }, &mut out);
            }
            (Kind::Http(t), Direction::Response) => {
                let status = fields.status.unwrap_or(0);
                if !self.responded && (200..).contains(&status) {
                    self.responded = true;
                    let head = ResponseHead {
                        status,
                        minor_version: 0,
                        content_length: None,
                        chunked: false,
                        headers: fields.headers,
                    };
                    let mut out = Vec::new();
                    t.on_event(HttpEvent::ResponseHead { ts_ns, head }, &mut out);
                }
            }
            (Kind::Grpc(c), Direction::Request) => {
                c.headers = fields
                    .headers
                    .into_iter()
                    .filter(|(k, _)| matches!(*k, "traceparent" | "tracestate" | "x-request-id"))
                    .collect();
            }
            (Kind::Grpc(c), Direction::Response) => {
                if c.http_status.is_none() {
                    c.http_status = fields.status;
                }
                if fields.grpc_status.is_some() {
                    c.grpc_status = fields.grpc_status;
                }
            }
            _ => {}
        }
        if end_stream {
            self.end(dir, ts_ns, done);
        }
    }

    fn data(
        &mut self,
        dir: Direction,
        ts_ns: u64,
        data: &[u8],
        fx: &mut H2Effects,
        done: &mut Vec<Work>,
    ) {
        if let Kind::Http(t) = &mut self.kind {
            let ev = match dir {
                Direction::Request => HttpEvent::RequestBody { ts_ns, data },
                Direction::Response => HttpEvent::ResponseBody { ts_ns, data },
            };
            let mut out = Vec::new();
            t.on_event(ev, &mut out);
            return;
        }
        if matches!(self.kind, Kind::Ignored) {
            return;
        }
        let was_unknown = matches!(self.kind, Kind::Unknown);
        let Stream {
            kind, deframers, ..
        } = self;
        deframers[idx(dir)].feed(data, &mut |m| match m {
            GrpcMessage::Message(bytes) => {
                fx.grpc_messages += 1;
                on_message(kind, dir, ts_ns, bytes, fx, done);
            }
            GrpcMessage::Framed(_) => {
                // Followed by its framing only (a gRPC stream's), or an unknown stream's first
                // request message too large to be ext_proc's request headers.
                fx.grpc_messages += 1;
                match kind {
                    Kind::Grpc(c) => match dir {
                        Direction::Request => c.request_messages += 1,
                        Direction::Response => c.response_messages += 1,
                    },
                    Kind::Unknown => *kind = Kind::Ignored,
                    _ => {}
                }
            }
            GrpcMessage::Compressed(_) | GrpcMessage::TooLarge(_) => {
                fx.grpc_messages += 1;
                fx.grpc_skipped += 1;
                match kind {
                    Kind::Grpc(c) => match dir {
                        Direction::Request => c.request_messages += 1,
                        Direction::Response => c.response_messages += 1,
                    },
                    Kind::ExtProc(e) => e.mark_incomplete(),
                    _ => {}
                }
            }
        });
        if was_unknown {
            self.set_limits();
        }
    }

    fn gap(&mut self, dir: Direction, len: u64) {
        match &mut self.kind {
            Kind::Http(t) => {
                let ev = match dir {
                    Direction::Request => HttpEvent::RequestBodyGap { len },
                    Direction::Response => HttpEvent::ResponseBodyGap { len },
                };
                t.on_event(ev, &mut Vec::new());
            }
            Kind::Grpc(c) => c.incomplete = true,
            Kind::ExtProc(e) if dir == Direction::Request => e.mark_incomplete(),
            Kind::ExtProc(e) => e.mark_response_incomplete(),
            _ => {}
        }
        self.deframers[idx(dir)].gap();
    }

    /// END_STREAM in direction `dir`.
    fn end(&mut self, dir: Direction, ts_ns: u64, done: &mut Vec<Work>) {
        self.ended[idx(dir)] = true;
        match (&mut self.kind, dir) {
            (Kind::Http(t), Direction::Request) => {
                t.on_event(HttpEvent::RequestEnd { ts_ns }, &mut Vec::new());
            }
            (Kind::Http(t), Direction::Response) => {
                let mut out = Vec::new();
                t.on_event(HttpEvent::ResponseEnd { ts_ns }, &mut out);
                done.extend(out.into_iter().map(|e| Work::Exchange(Box::new(e))));
            }
            (Kind::Grpc(c), Direction::Response) => {
                let mut call = (**c).clone();
                call.end_ns = ts_ns;
                call.outcome = CallOutcome::Completed;
                done.push(Work::Call(call));
                self.kind = Kind::Ignored;
            }
            (Kind::ExtProc(_), Direction::Response) => {
                if let Kind::ExtProc(e) = std::mem::replace(&mut self.kind, Kind::Ignored) {
                    done.extend(e.finish(ts_ns).map(Work::Decision));
                }
            }
            _ => {}
        }
    }

    fn reset(self, dir: Direction, ts_ns: u64, code: u32, done: &mut Vec<Work>) {
        match self.kind {
            Kind::Http(t) => abort_http(t, ts_ns, dir == Direction::Request, self.responded, done),
            Kind::Grpc(mut c) => {
                c.end_ns = ts_ns;
                c.outcome = CallOutcome::Reset {
                    by_client: dir == Direction::Request,
                    code,
                };
                done.push(Work::Call(*c));
            }
            Kind::ExtProc(e) => done.extend(e.finish(ts_ns).map(Work::Decision)),
            Kind::Unknown | Kind::Ignored => {}
        }
    }

    fn close(self, ts_ns: u64, peer_closed: bool, done: &mut Vec<Work>) {
        match self.kind {
            Kind::Http(t) => abort_http(t, ts_ns, peer_closed, self.responded, done),
            Kind::Grpc(mut c) => {
                c.end_ns = ts_ns;
                c.outcome = CallOutcome::Abandoned;
                done.push(Work::Call(*c));
            }
            Kind::ExtProc(e) => done.extend(e.finish(ts_ns).map(Work::Decision)),
            Kind::Unknown | Kind::Ignored => {}
        }
    }
}

/// One whole gRPC message of a stream.
fn on_message(
    kind: &mut Kind,
    dir: Direction,
    ts_ns: u64,
    bytes: &[u8],
    fx: &mut H2Effects,
    done: &mut Vec<Work>,
) {
    if matches!(kind, Kind::Unknown) {
        // Headers unknown: an ext_proc stream shows itself by its first request message.
        *kind = match (dir, ext_proc::decode_request(bytes)) {
            (Direction::Request, Ok(m))
                if matches!(
                    m.request,
                    Some(ext_proc::processing_request::Request::RequestHeaders(_))
                ) =>
            {
                Kind::ExtProc(Box::new(ExtProcStream::new()))
            }
            _ => Kind::Ignored,
        };
    }
    match kind {
        Kind::Grpc(c) => match dir {
            Direction::Request => c.request_messages += 1,
            Direction::Response => c.response_messages += 1,
        },
        Kind::ExtProc(e) => match dir {
            Direction::Request => match ext_proc::decode_request(bytes) {
                Ok(m) => done.extend(e.on_request(ts_ns, &m).map(Work::Decision)),
                Err(_) => {
                    fx.ext_proc_failures += 1;
                    e.mark_incomplete();
                }
            },
            Direction::Response => match ext_proc::decode_response(bytes) {
                Ok(m) => done.extend(e.on_response(ts_ns, &m).map(Work::Decision)),
                Err(_) => {
                    fx.ext_proc_failures += 1;
                    e.mark_incomplete();
                }
            },
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests;
