//! Rebuilding requests: HTTP events of one connection → finished `Exchange`s with their timing
//! and OpenAI semantics.
//!
//! Owns: pairing requests with responses (FIFO, for pipelining), SSE framing of streaming bodies,
//! the timestamps that matter (first request byte, first content token, every content chunk, last
//! response byte), and bounded buffers of the JSON bodies it reads fields from. Pure: no I/O, no
//! clocks; timestamps are kernel monotonic nanoseconds from the capture.

pub mod gaps;
pub mod h2;

/// What a connection finished: the one value that leaves the connection table for each request
/// it saw, whatever the protocol. Span builders (`trace`) take each kind.
#[derive(Clone, Debug)]
pub enum Work {
    /// An HTTP request and its response, over HTTP/1.x or one HTTP/2 stream.
    Exchange(Box<Exchange>),
    /// A gRPC call (an HTTP/2 stream ending at its trailers), not ext_proc.
    Call(h2::GrpcCall),
    /// A routing decision of an endpoint picker (one ext_proc stream).
    Decision(crate::epp::Decision),
}

impl Work {
    /// When it started and ended (kernel monotonic ns), and the times of the content chunks it
    /// produced (a streamed response's; empty otherwise).
    pub fn times(&self) -> (u64, u64, &[u64]) {
        match self {
            Work::Exchange(ex) => (ex.start_ns, ex.end_ns, &ex.content_chunk_ns),
            Work::Call(c) => (c.start_ns, c.end_ns, &[]),
            Work::Decision(d) => (d.start_ns, d.end_ns, &[]),
        }
    }

    /// Content chunks after the ones `times` gives (a stream longer than `CHUNK_TIMES_MAX`
    /// chunks) and the last one's time; `(0, 0)` otherwise.
    pub fn later_chunks(&self) -> (u64, u64) {
        match self {
            Work::Exchange(ex) => (
                ex.content_chunks
                    .saturating_sub(ex.content_chunk_ns.len() as u64),
                ex.last_chunk_ns.unwrap_or_default(),
            ),
            _ => (0, 0),
        }
    }
}

use std::borrow::Cow;
use std::collections::VecDeque;

use crate::protocol::form::{self, FormScan};
use crate::protocol::http::{HttpEvent, ParseErrorKind, RequestHead, ResponseHead};
use crate::protocol::openai::fields::Body;
use crate::protocol::openai::models::{self, ModelsScan};
use crate::protocol::openai::{
    self, Operation, RequestFields, ResponseFields, ServerPhases, StreamChunk, Usage, Values,
};
use crate::protocol::openai::{RequestScan, ResponseScan};
use crate::protocol::runtime_metrics::{RuntimeSample, RuntimeScan};
use crate::protocol::sse::{SseEvent, SseFailure, SseFramer};
use crate::protocol::Direction;
use gaps::GapSketch;

const RESPONSE_TAIL: usize = 64 << 10;
const REQUEST_STREAM: openai::fields::FieldId = openai::fields::id(Body::Request, "stream");
/// Content chunk timestamps kept per request (for inter-token statistics and the GPU share):
/// the first ones, exactly; the gaps after them go to a fixed-size [`GapSketch`].
pub const CHUNK_TIMES_MAX: usize = 4096;
/// Finish reasons kept per request (a stream's chunks each may carry some; a response has at
/// most `CHOICES_MAX` choices): more are counted in `finish_reasons_dropped`.
pub const FINISH_REASONS_MAX: usize = openai::CHOICES_MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The response was written to its end.
    Completed,
    /// The client closed its side before the response ended (the server read EOF, then closed).
    Cancelled { response_started: bool },
    /// The server closed the connection before the response ended without the client having
    /// closed first (an abort, a crash, a killed process).
    ServerAborted { response_started: bool },
    /// Bytes were lost or could not be parsed and the exchange could not be followed to its end.
    Abandoned,
}

/// A finished request/response exchange. Metadata only.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub request: RequestHead,
    pub response: Option<ResponseHead>,
    pub operation: Option<Operation>,
    pub request_fields: Option<RequestFields>,
    /// First request byte read.
    pub start_ns: u64,
    pub request_end_ns: Option<u64>,
    pub response_start_ns: Option<u64>,
    /// First chunk of generated content written (a role-only first chunk does not count).
    pub first_token_ns: Option<u64>,
    /// Last response byte written (or when the exchange was abandoned).
    pub end_ns: u64,
    /// The first [`CHUNK_TIMES_MAX`] content chunks' write times, in order.
    pub content_chunk_ns: Vec<u64>,
    /// Content chunks written, all of them (exact, however long the stream).
    pub content_chunks: u64,
    /// The last content chunk's write time.
    pub last_chunk_ns: Option<u64>,
    /// The gaps between content chunks after the ones whose times are kept (the gap into the
    /// first chunk not kept included): present once a stream outgrows `content_chunk_ns`.
    pub later_gaps: Option<Box<GapSketch>>,
    pub request_body_len: u64,
    pub response_body_len: u64,
    pub sse_events: u64,
    pub streaming: bool,
    pub response_id: Option<String>,
    pub response_model: Option<String>,
    /// At most [`FINISH_REASONS_MAX`].
    pub finish_reasons: Vec<String>,
    /// Finish reasons past [`FINISH_REASONS_MAX`], not kept (nor added to `response_values`).
    pub finish_reasons_dropped: u64,
    pub usage: Option<Usage>,
    /// What the server reported of the request's phases in a stream's chunks (the last report):
    /// put into `response_values` when the stream ends.
    pub stream_phases: Option<Box<ServerPhases>>,
    /// Every response field of `openai::fields` (span attributes are set from these): a JSON
    /// body's scan, or what the stream chunks said.
    pub response_values: Values,
    /// `error.type` from an error body or an in-stream error event.
    pub error_type: Option<String>,
    pub outcome: Outcome,
    /// Bytes of this exchange were lost (kernel drop or not copied).
    pub incomplete: bool,
    pub sse_failures: u64,
    /// A JSON body (request or response) that did not scan: why (`ScanError::as_str`).
    pub json_error: Option<&'static str>,
    /// A successful `GET /v1/models` answer: the model ids the server listed (at most
    /// `models::SERVED_MODELS_MAX`); empty otherwise.
    pub served_models: Vec<String>,
    /// A scrape of a model server's `/metrics`: the load figures it said (its time is `end_ns`).
    pub runtime: Option<Box<RuntimeSample>>,
}

struct InFlight {
    ex: Exchange,
    request_done: bool,
    /// Streaming scans of JSON bodies: fields are picked up as bytes pass, nothing is kept.
    /// (Boxed, as the other scans: an `InFlight` is moved several times per request, and the
    /// scans are most of its size — 3.6 KB inline, ~1.2 KB boxed.)
    request_scan: Option<Box<RequestScan>>,
    /// A model operation's `multipart/form-data` upload (audio transcription): its text fields.
    request_form: Option<Box<FormScan>>,
    response_scan: Option<Box<ResponseScan>>,
    /// After a loss in a non-streaming body: its last bytes, where `usage` sits.
    response_tail: Vec<u8>,
    response_gapped: bool,
    sse: Option<SseFramer>,
    /// A `GET /v1/models` answer's model list being read.
    models_scan: Option<Box<ModelsScan>>,
    /// A `GET /metrics` answer's load figures being read.
    runtime_scan: Option<RuntimeScan>,
}

impl InFlight {
    fn new(ts_ns: u64, head: RequestHead) -> InFlight {
        let operation = Operation::from_path(&head.path);
        let content_type_sent = head
            .headers
            .iter()
            .find(|(k, _)| *k == "content-type")
            .map(|(_, v)| v);
        let request_form = operation
            .and(content_type_sent)
            .and_then(|v| form::boundary(v))
            .map(|b| Box::new(FormScan::new(b)));
        let content_type = content_type_sent.map(|v| v.to_ascii_lowercase());
        let json = content_type.as_deref().is_some_and(|v| v.contains("json"));
        // An upload (audio transcription's multipart form) is not JSON: its text fields are
        // read by `request_form` instead.
        let form = content_type.as_deref().is_some_and(|v| {
            v.starts_with("multipart/") || v.starts_with("application/x-www-form")
        });
        InFlight {
            request_scan: ((operation.is_some() && !form) || json)
                .then(|| Box::new(RequestScan::new())),
            ex: Exchange {
                request: head,
                response: None,
                operation,
                request_fields: None,
                start_ns: ts_ns,
                request_end_ns: None,
                response_start_ns: None,
                first_token_ns: None,
                end_ns: ts_ns,
                content_chunk_ns: Vec::new(),
                content_chunks: 0,
                last_chunk_ns: None,
                later_gaps: None,
                request_body_len: 0,
                response_body_len: 0,
                sse_events: 0,
                streaming: false,
                response_id: None,
                response_model: None,
                finish_reasons: Vec::new(),
                finish_reasons_dropped: 0,
                usage: None,
                stream_phases: None,
                response_values: Values::new(Body::Response),
                error_type: None,
                outcome: Outcome::Completed,
                incomplete: false,
                sse_failures: 0,
                json_error: None,
                served_models: Vec::new(),
                runtime: None,
            },
            request_form,
            request_done: false,
            response_scan: None,
            response_tail: Vec::new(),
            response_gapped: false,
            sse: None,
            models_scan: None,
            runtime_scan: None,
        }
    }

    fn finish_request(&mut self, ts_ns: u64) {
        self.request_done = true;
        self.ex.request_end_ns = Some(ts_ns);
        if let Some(mut scan) = self.request_scan.take() {
            if let Err(e) = scan.finish() {
                self.ex.json_error.get_or_insert(e.as_str());
            }
            self.ex.request_fields = Some(scan.into_fields());
        }
        if let Some(form) = self.request_form.take() {
            self.ex.request_fields = Some(form.into_values().request_fields());
        }
    }

    fn finish(mut self, ts_ns: u64, outcome: Outcome) -> Exchange {
        if !self.request_done {
            self.finish_request(ts_ns);
        }
        if let Some(mut sse) = self.sse.take() {
            let ex = &mut self.ex;
            sse.finish(&mut |e| match e {
                SseEvent::Event { data, .. } => {
                    if let Some(c) = openai::parse_stream_chunk(data) {
                        apply_chunk(ex, ts_ns, c);
                    }
                }
                SseEvent::Failure(_) => ex.sse_failures += 1,
                SseEvent::Comment => {}
            });
        }
        if self.ex.streaming {
            // What the chunks said, into the response's values once (not per chunk).
            let ex = &mut self.ex;
            ex.response_values.apply_stream(
                ex.response_id.as_deref(),
                ex.response_model.as_deref(),
                &ex.finish_reasons,
                ex.usage.as_ref(),
                ex.stream_phases.as_deref(),
            );
        }
        if let Some(mut scan) = self.response_scan.take() {
            if let Err(e) = scan.finish() {
                if !self.response_gapped {
                    self.ex.json_error.get_or_insert(e.as_str());
                }
            }
            self.apply_response_fields(scan.into_fields());
            if self.ex.usage.is_none() && self.response_gapped {
                self.ex.usage = openai::usage_from_tail(&self.response_tail);
                if let Some(u) = &self.ex.usage {
                    self.ex.response_values.set_usage(u);
                }
            }
        }
        if let Some(scan) = self.models_scan.take() {
            self.ex.served_models = scan.finish();
        }
        if let Some(scan) = self.runtime_scan.take() {
            self.ex.runtime = scan.finish().map(Box::new);
        }
        if self.ex.streaming {
            // A stream asked for by the route (TGI's `/generate_stream`) or a form field (an
            // audio upload), not by a JSON `stream`: the request streamed all the same.
            let f = self
                .ex
                .request_fields
                .get_or_insert_with(|| RequestScan::new().into_fields());
            if f.stream.is_none() {
                f.stream = Some(true);
                f.values.set(REQUEST_STREAM, openai::Value::Bool(true));
            }
        }
        self.ex.end_ns = ts_ns;
        self.ex.outcome = outcome;
        self.ex
    }

    fn apply_response_fields(&mut self, f: ResponseFields) {
        self.ex.response_id = f.id;
        self.ex.response_model = f.model;
        self.ex.finish_reasons = f.finish_reasons;
        self.ex.usage = f.usage;
        self.ex.response_values = f.values;
        if f.error_type.is_some() {
            self.ex.error_type = f.error_type;
        }
        if self.ex.first_token_ns.is_none() && (f.choices_with_output > 0 || f.other_output) {
            // Non-streaming: the whole answer arrives with the response.
            self.ex.first_token_ns = self.ex.response_start_ns;
        }
    }
}

/// Per-connection request assembly.
#[derive(Default)]
pub struct ExchangeTracker {
    /// One per request head the parser reported and did not finish: at most
    /// `http1::MAX_PIPELINED` (the parser sheds requests beyond it; an HTTP/2 stream has one).
    in_flight: VecDeque<InFlight>,
    /// The peer (client, for a server) closed its side: read() returned 0.
    peer_closed: bool,
    /// The connection is being closed: aborts from here on are cancellations or server aborts.
    closing: bool,
}

/// What one HTTP event changed, for the caller's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub parse_errors: u64,
    pub not_http: bool,
    /// Requests whose head was lost (a kernel drop before it reached the agent): they have no
    /// span, so they are only counted.
    pub requests_lost: u64,
}

impl ExchangeTracker {
    pub fn new() -> ExchangeTracker {
        ExchangeTracker::default()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The requests in flight: each one's start and its content chunk times so far (read-only;
    /// the GPU share needs the chunks of requests that have not finished yet).
    pub fn in_flight_chunks(&self) -> impl Iterator<Item = (u64, &[u64])> {
        self.in_flight
            .iter()
            .map(|f| (f.ex.start_ns, f.ex.content_chunk_ns.as_slice()))
    }

    /// Bytes held for the requests in flight that are not parsed yet: SSE events in progress and
    /// the tails of JSON bodies after a loss (the connection's buffer budget counts them).
    pub fn buffered(&self) -> usize {
        self.in_flight
            .iter()
            .map(|f| f.response_tail.len() + f.sse.as_ref().map_or(0, SseFramer::buffered))
            .sum()
    }

    /// The connection's parse state is shed (over its buffer budget): every request in flight
    /// ends here, incomplete and abandoned, into `done`.
    pub fn shed(&mut self, ts_ns: u64, done: &mut Vec<Exchange>) {
        while let Some(mut f) = self.in_flight.pop_front() {
            f.ex.incomplete = true;
            // What is held is dropped, not read: the figures it carried are missing.
            f.sse = None;
            f.response_tail = Vec::new();
            done.push(f.finish(ts_ns, Outcome::Abandoned));
        }
    }

    /// Records of the connection were lost in the kernel somewhere since its last delivered one
    /// (perhaps the end of the other direction's last syscall, which no later position shows
    /// until that direction carries bytes again): every request in flight is incomplete.
    pub fn lost_somewhere(&mut self) {
        for f in &mut self.in_flight {
            f.ex.incomplete = true;
        }
    }

    /// The peer closed its side of the connection.
    pub fn peer_closed(&mut self) {
        self.peer_closed = true;
    }

    /// The connection is closing (or its process exited): call before the parser's `close`.
    pub fn closing(&mut self) {
        self.closing = true;
    }

    /// The exchange whose response is being read: the oldest one.
    fn responding(&mut self) -> Option<&mut InFlight> {
        self.in_flight.front_mut()
    }

    /// The exchange whose request is being read: the newest one, if its request is unfinished.
    fn requesting(&mut self) -> Option<&mut InFlight> {
        self.in_flight.back_mut().filter(|f| !f.request_done)
    }

    /// Apply one HTTP event; finished exchanges are pushed to `done`.
    pub fn on_event(&mut self, ev: HttpEvent<'_>, done: &mut Vec<Exchange>) -> Effects {
        let mut fx = Effects::default();
        match ev {
            HttpEvent::RequestHead { ts_ns, head } => {
                self.in_flight.push_back(InFlight::new(ts_ns, head));
            }
            HttpEvent::RequestBody { data, .. } => {
                if let Some(f) = self.requesting() {
                    f.ex.request_body_len += data.len() as u64;
                    if let Some(scan) = f.request_scan.as_mut() {
                        scan.feed(data);
                    }
                    if let Some(form) = f.request_form.as_mut() {
                        form.feed(data);
                    }
                }
            }
            HttpEvent::RequestBodyGap { len } => {
                if let Some(f) = self.requesting() {
                    f.ex.request_body_len += len;
                    f.ex.incomplete = true;
                    if let Some(scan) = f.request_scan.as_mut() {
                        scan.gap();
                    }
                    if let Some(form) = f.request_form.as_mut() {
                        form.gap();
                    }
                }
            }
            HttpEvent::RequestEnd { ts_ns } => {
                if let Some(f) = self.requesting() {
                    f.finish_request(ts_ns);
                }
            }
            HttpEvent::ResponseHead { ts_ns, head } => {
                if let Some(f) = self.responding() {
                    let sse = head.headers.iter().any(|(k, v)| {
                        *k == "content-type"
                            && v.to_ascii_lowercase().starts_with("text/event-stream")
                    });
                    f.ex.streaming = sse;
                    f.sse = sse.then(SseFramer::new);
                    let json = head.headers.iter().any(|(k, v)| {
                        *k == "content-type" && v.to_ascii_lowercase().contains("json")
                    });
                    f.response_scan = (!sse && json).then(|| Box::new(ResponseScan::new()));
                    f.models_scan = (json
                        && (200..300).contains(&head.status)
                        && models::is_models_request(&f.ex.request.method, &f.ex.request.path))
                    .then(|| Box::new(ModelsScan::new()));
                    f.runtime_scan = (!sse
                        && (200..300).contains(&head.status)
                        && f.ex.request.method == "GET"
                        && f.ex
                            .request
                            .path
                            .trim_end_matches('/')
                            .ends_with("/metrics"))
                    .then(RuntimeScan::new);
                    f.ex.response_start_ns = Some(ts_ns);
                    f.ex.response = Some(head);
                }
            }
            HttpEvent::ResponseBody { ts_ns, data } => {
                if let Some(f) = self.responding() {
                    f.ex.response_body_len += data.len() as u64;
                    if let Some(scan) = f.runtime_scan.as_mut() {
                        scan.feed(data);
                    }
                    if let Some(sse) = f.sse.as_mut() {
                        // Each event's fields are applied as it is framed: its identifiers are
                        // borrowed from this feed, and only the ones kept are copied.
                        let ex = &mut f.ex;
                        sse.feed(data, &mut |e| match e {
                            SseEvent::Event { data, .. } => {
                                ex.sse_events += 1;
                                if let Some(c) = openai::parse_stream_chunk(data) {
                                    apply_chunk(ex, ts_ns, c);
                                }
                            }
                            SseEvent::Failure(why) => {
                                ex.sse_failures += 1;
                                // An event over the size bound is dropped whole: what it carried
                                // is missing from the figures.
                                ex.incomplete |= why == SseFailure::TooLarge;
                            }
                            SseEvent::Comment => {}
                        });
                    } else if let Some(scan) = f.response_scan.as_mut() {
                        if let Some(models) = f.models_scan.as_mut() {
                            models.feed(data);
                        }
                        if f.response_gapped {
                            push_tail(&mut f.response_tail, data);
                        } else {
                            scan.feed(data);
                        }
                    }
                }
            }
            HttpEvent::ResponseBodyGap { len } => {
                if let Some(f) = self.responding() {
                    f.ex.response_body_len += len;
                    f.ex.incomplete = true;
                    f.response_gapped = true;
                    if let Some(scan) = f.response_scan.as_mut() {
                        scan.gap();
                    }
                    if let Some(sse) = f.sse.as_mut() {
                        sse.gap();
                    }
                    if let Some(models) = f.models_scan.as_mut() {
                        models.gap();
                    }
                    // A scrape with a hole is not read: its figures could be any series' part.
                    f.runtime_scan = None;
                }
            }
            HttpEvent::ResponseEnd { ts_ns } => {
                if let Some(f) = self.in_flight.pop_front() {
                    done.push(f.finish(ts_ns, Outcome::Completed));
                }
            }
            HttpEvent::Aborted {
                ts_ns,
                response_started,
                ..
            } => {
                // The connection ended, or the parser gave up, mid-exchange: every exchange still
                // in flight ends here.
                let mut first = true;
                while let Some(f) = self.in_flight.pop_front() {
                    let started = if first {
                        response_started || f.ex.response.is_some()
                    } else {
                        f.ex.response.is_some()
                    };
                    first = false;
                    let outcome = match (self.closing, self.peer_closed) {
                        (true, true) => Outcome::Cancelled {
                            response_started: started,
                        },
                        (true, false) => Outcome::ServerAborted {
                            response_started: started,
                        },
                        (false, _) => Outcome::Abandoned,
                    };
                    done.push(f.finish(ts_ns, outcome));
                }
            }
            HttpEvent::ParseError { dir, kind } => {
                fx.parse_errors += 1;
                if kind == ParseErrorKind::Lost
                    && dir == Direction::Request
                    && self.requesting().is_none()
                {
                    // Bytes lost where a request head was due: at least one request is gone.
                    fx.requests_lost += 1;
                }
                for f in self.in_flight.iter_mut() {
                    f.ex.incomplete = true;
                }
            }
            HttpEvent::NotHttp => {
                fx.not_http = true;
            }
        }
        fx
    }
}

/// One stream chunk's fields into its exchange.
fn apply_chunk(ex: &mut Exchange, ts_ns: u64, mut c: StreamChunk<'_>) {
    let room = FINISH_REASONS_MAX.saturating_sub(ex.finish_reasons.len());
    if c.finish_reasons.len() > room {
        ex.finish_reasons_dropped += (c.finish_reasons.len() - room) as u64;
        c.finish_reasons.truncate(room);
    }
    if c.has_content {
        if ex.first_token_ns.is_none() {
            ex.first_token_ns = Some(ts_ns);
        }
        add_chunk_time(ex, ts_ns);
    }
    if ex.response_id.is_none() {
        ex.response_id = c.id.map(Cow::into_owned);
    }
    if ex.response_model.is_none() {
        ex.response_model = c.model.map(Cow::into_owned);
    }
    ex.finish_reasons.extend(c.finish_reasons);
    if let Some(u) = c.usage {
        // With continuous usage stats the last one wins; Anthropic's events carry the input
        // (`message_start`) and the output (`message_delta`) counts apart.
        ex.usage.get_or_insert_with(Usage::default).merge(&u);
    }
    if c.error_type.is_some() {
        ex.error_type = c.error_type;
    }
    if c.phases.is_some() {
        ex.stream_phases = c.phases; // the final chunk's
    }
}

/// One content chunk's time: kept while there is room, else its gap goes to the sketch.
fn add_chunk_time(ex: &mut Exchange, ts_ns: u64) {
    ex.content_chunks += 1;
    if ex.content_chunk_ns.len() < CHUNK_TIMES_MAX {
        ex.content_chunk_ns.push(ts_ns);
    } else if let Some(last) = ex.last_chunk_ns {
        ex.later_gaps
            .get_or_insert_with(Box::default)
            .add(ts_ns.saturating_sub(last));
    }
    ex.last_chunk_ns = Some(ts_ns);
}

fn push_tail(tail: &mut Vec<u8>, data: &[u8]) {
    if data.len() >= RESPONSE_TAIL {
        tail.clear();
        tail.extend_from_slice(&data[data.len() - RESPONSE_TAIL..]);
        return;
    }
    let excess = (tail.len() + data.len()).saturating_sub(RESPONSE_TAIL);
    tail.drain(..excess.min(tail.len()));
    tail.extend_from_slice(data);
}

#[cfg(test)]
mod apis;
#[cfg(test)]
mod tests;
