//! The endpoint picker's routing decisions, read from the ext_proc stream Envoy holds with it
//! (one gRPC `Process` stream per HTTP request through the gateway).
//!
//! Owns: what a decision is ([`Decision`]) and how the ext_proc messages of one stream make one
//! ([`ExtProcStream`]): the request headers Envoy forwards (trace context, `x-request-id`, the EPP's
//! routing headers), the model from the request body (scanned with `json_scan` as the body chunks
//! pass, nothing kept), and the EPP's answer — the `x-gateway-destination-endpoint` header mutation
//! or dynamic metadata `envoy.lb`, or an immediate response (429 shed, 503 no endpoint).
//! `trace::decision` turns a decision into a span.
//!
//! The routing outcome ([`Served`]): when Envoy also sends the EPP the response phase (response
//! headers, body chunks, trailers — llm-d's EPP asks for them to count tokens), the decision
//! carries what its chosen endpoint answered: the status, when the response headers and the first
//! content token reached the EPP, and the usage (cached prompt tokens included). The response
//! messages are replayed as HTTP events into the connection-level request assembly
//! (`exchange::ExchangeTracker`: SSE framing, the field table's scans), so a body is read exactly as
//! the model server's own span reads it; only counts and times are kept. A routed decision is
//! therefore held until the response phase ends (the last body chunk, the trailers) or the stream
//! does; it leaves at once when nothing can follow (an immediate response, or the EPP's
//! `mode_override` skipping the whole response phase).
//!
//! Must never: copy a header value other than the allow-listed ones below (`authorization` and
//! every other header Envoy forwards stay out), or any body text (request or response); do I/O;
//! panic.

use crate::exchange::{Exchange, ExchangeTracker};
use crate::protocol::ext_proc::messages::{
    processing_mode, value, HeaderMutation, ProcessingMode, Struct, Value,
};
use crate::protocol::ext_proc::{
    header_value, processing_request::Request, processing_response::Response, HeaderMap,
    ProcessingRequest, ProcessingResponse,
};
use crate::protocol::http::{HttpEvent, RequestHead, ResponseHead};
use crate::protocol::openai::{RequestScan, Usage};

/// The header (and `envoy.lb` metadata key) through which the EPP names the chosen endpoints.
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
/// Dynamic metadata namespace of the destination.
pub const LB_NAMESPACE: &str = "envoy.lb";
/// Metadata namespace and key of the subset hint Envoy passes to the EPP.
pub const SUBSET_NAMESPACE: &str = "envoy.lb.subset_hint";
pub const SUBSET_KEY: &str = "x-gateway-destination-endpoint-subset";
/// Endpoints (and subset entries) kept per decision; each at most [`MAX_VALUE`] bytes.
pub const MAX_ENDPOINTS: usize = 16;
const MAX_VALUE: usize = 256;

/// The request headers the decision reads (everything else Envoy forwards is ignored).
const REQUEST_HEADERS: [&str; 10] = [
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-gateway-inference-objective",
    "x-gateway-inference-fairness-id",
    "x-gateway-model-name-rewrite",
    "x-slo-ttft-ms",
    "x-slo-tpot-ms",
    ":path",
    ":method",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The EPP named the endpoint(s).
    Routed,
    /// The EPP answered with an immediate response (429: shed; 503: no endpoint).
    Rejected { status: u16 },
    /// The stream ended without either.
    None,
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Routed => "routed",
            Outcome::Rejected { .. } => "rejected",
            Outcome::None => "none",
        }
    }
}

/// One routing decision. Metadata only.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// When the request headers reached the EPP (the message that carried them was read).
    pub start_ns: u64,
    /// When the answer was written (or the stream ended).
    pub end_ns: u64,
    /// Allow-listed inner request headers (lower-case names), in order.
    pub headers: Vec<(&'static str, String)>,
    /// From the request body, when Envoy sent it.
    pub model: Option<String>,
    pub endpoints: Vec<String>,
    pub subset: Vec<String>,
    pub outcome: Outcome,
    /// What the chosen endpoint answered, when Envoy sent the EPP the response phase.
    pub served: Option<Box<Served>>,
    /// Messages of the stream were lost or could not be decoded.
    pub incomplete: bool,
}

/// The routing outcome: what came back through the gateway, as the response phase of the ext_proc
/// stream told the EPP. Counts and times only (kernel monotonic ns, like the decision's).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Served {
    /// The response headers' `:status` (absent when Envoy sent the body alone).
    pub status: Option<u16>,
    /// When the response headers reached the EPP (the `response_headers` message was read).
    pub headers_ns: Option<u64>,
    /// When the first content token reached the EPP: a streamed response's first content chunk,
    /// a whole body's response headers.
    pub first_token_ns: Option<u64>,
    /// The last response message read.
    pub end_ns: u64,
    pub usage: Option<Usage>,
    pub streaming: bool,
    /// Followed to its end (the last body chunk or the trailers), nothing lost.
    pub complete: bool,
}

impl Served {
    fn of(ex: &Exchange, status: Option<u16>, headers_ns: Option<u64>, complete: bool) -> Served {
        Served {
            status,
            headers_ns,
            first_token_ns: ex.first_token_ns,
            end_ns: ex.end_ns,
            usage: ex.usage.clone(),
            streaming: ex.streaming,
            complete: complete && !ex.incomplete,
        }
    }

    /// Cached prompt tokens / prompt tokens, when the server reported both (and some prompt).
    pub fn prefix_cache_hit_ratio(&self) -> Option<f64> {
        let u = self.usage.as_ref()?;
        let (prompt, cached) = (u.prompt_tokens?, u.cached_tokens?);
        (prompt > 0 && cached >= 0).then(|| cached.min(prompt) as f64 / prompt as f64)
    }
}

/// The response phase being read: its messages as HTTP events of one exchange.
struct ResponsePhase {
    tracker: ExchangeTracker,
    status: Option<u16>,
    headers_ns: Option<u64>,
}

impl ResponsePhase {
    /// Response headers (or, when Envoy skips them, the first body chunk) at `ts_ns`: an exchange
    /// whose request is already over (its fields are the decision's) and whose response starts.
    fn start(ts_ns: u64, status: Option<u16>, content_type: Option<String>) -> ResponsePhase {
        let mut tracker = ExchangeTracker::new();
        let mut out = Vec::new();
        let head = RequestHead {
            method: String::new(),
            path: String::new(),
            minor_version: 0,
            content_length: None,
            chunked: false,
            headers: Vec::new(),
        };
        tracker.on_event(HttpEvent::RequestHead { ts_ns, head }, &mut out);
        tracker.on_event(HttpEvent::RequestEnd { ts_ns }, &mut out);
        let head = ResponseHead {
            status: status.unwrap_or(0),
            minor_version: 0,
            content_length: None,
            chunked: false,
            headers: content_type
                .map(|v| vec![("content-type", v)])
                .unwrap_or_default(),
        };
        tracker.on_event(HttpEvent::ResponseHead { ts_ns, head }, &mut out);
        ResponsePhase {
            tracker,
            status,
            headers_ns: status.map(|_| ts_ns),
        }
    }

    fn body(&mut self, ts_ns: u64, data: &[u8]) {
        let mut out = Vec::new();
        self.tracker
            .on_event(HttpEvent::ResponseBody { ts_ns, data }, &mut out);
    }

    fn gap(&mut self) {
        let mut out = Vec::new();
        self.tracker
            .on_event(HttpEvent::ResponseBodyGap { len: 0 }, &mut out);
    }

    /// The response ended at `ts_ns` (`complete`: at its end of stream, else cut short).
    fn finish(mut self, ts_ns: u64, complete: bool) -> Served {
        let mut out = Vec::new();
        let ev = if complete {
            HttpEvent::ResponseEnd { ts_ns }
        } else {
            HttpEvent::Aborted {
                ts_ns,
                request_complete: true,
                response_started: true,
            }
        };
        self.tracker.on_event(ev, &mut out);
        match out.pop() {
            Some(ex) => Served::of(&ex, self.status, self.headers_ns, complete),
            None => Served {
                status: self.status,
                headers_ns: self.headers_ns,
                end_ns: ts_ns,
                ..Served::default()
            },
        }
    }
}

/// A body's type when Envoy sent no response headers: SSE or JSON by its first bytes.
fn sniff_content_type(data: &[u8]) -> Option<String> {
    let t = data.trim_ascii_start();
    if t.starts_with(b"data:") || t.starts_with(b"event:") || t.starts_with(b":") {
        Some("text/event-stream".to_string())
    } else if t.starts_with(b"{") {
        Some("application/json".to_string())
    } else {
        None
    }
}

/// The response headers the outcome reads (values of other headers are not looked at).
fn response_head(map: Option<&HeaderMap>) -> (Option<u16>, Option<String>) {
    let (mut status, mut content_type) = (None, None);
    for h in map.map(|m| m.headers.as_slice()).unwrap_or(&[]) {
        if h.key == ":status" {
            status = header_value(h).and_then(|v| v.trim().parse::<u16>().ok());
        } else if h.key.eq_ignore_ascii_case("content-type") {
            content_type = header_value(h).map(cut);
        }
    }
    (status, content_type)
}

/// Whether the EPP's `mode_override` skips the whole response phase (no headers, no body, no
/// trailers will follow).
fn skips_response(m: &ProcessingMode) -> bool {
    m.response_header_mode == processing_mode::HEADER_SKIP
        && m.response_body_mode == processing_mode::BODY_NONE
        && m.response_trailer_mode != processing_mode::HEADER_SEND
}

impl Decision {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One ext_proc stream, message by message.
#[derive(Default)]
pub struct ExtProcStream {
    start_ns: Option<u64>,
    headers: Vec<(&'static str, String)>,
    subset: Vec<String>,
    scan: Option<RequestScan>,
    /// Made, waiting for its outcome (the response phase).
    held: Option<Decision>,
    /// The decision left (at most one per stream).
    emitted: bool,
    response: Option<ResponsePhase>,
    /// The response phase ended (its outcome is here, waiting for a decision or the stream end).
    served: Option<Served>,
    /// The EPP's `mode_override` said no response phase will follow.
    no_response_phase: bool,
    incomplete: bool,
}

fn cut(s: &str) -> String {
    crate::protocol::cut(s, MAX_VALUE)
}

fn split_endpoints(v: &str, out: &mut Vec<String>) {
    for e in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if out.len() < MAX_ENDPOINTS && !out.iter().any(|x| x == e) {
            out.push(cut(e));
        }
    }
}

/// Strings of a metadata value: a string (comma-separated) or a list of strings.
fn strings_of(v: &Value, out: &mut Vec<String>) {
    match &v.kind {
        Some(value::Kind::StringValue(s)) => split_endpoints(s, out),
        Some(value::Kind::ListValue(l)) => {
            for item in &l.values {
                if let Some(value::Kind::StringValue(s)) = &item.kind {
                    split_endpoints(s, out);
                }
            }
        }
        _ => {}
    }
}

fn metadata_strings(s: Option<&Struct>, namespace: &str, key: &str, out: &mut Vec<String>) {
    let Some(ns) = s.and_then(|s| s.fields.get(namespace)) else {
        return;
    };
    if let Some(value::Kind::StructValue(inner)) = &ns.kind {
        if let Some(v) = inner.fields.get(key) {
            strings_of(v, out);
        }
    }
}

fn mutation_endpoints(m: Option<&HeaderMutation>, out: &mut Vec<String>) {
    for opt in m.map(|m| m.set_headers.as_slice()).unwrap_or(&[]) {
        if let Some(h) = &opt.header {
            if h.key.eq_ignore_ascii_case(DESTINATION_HEADER) {
                if let Some(v) = header_value(h) {
                    split_endpoints(v, out);
                }
            }
        }
    }
}

impl ExtProcStream {
    pub fn new() -> ExtProcStream {
        ExtProcStream::default()
    }

    /// Whether the request headers were seen (a decision can be made).
    pub fn started(&self) -> bool {
        self.start_ns.is_some()
    }

    /// Bytes of the EPP's answers were lost: the request side (and its body scan) is intact.
    pub fn mark_response_incomplete(&mut self) {
        self.incomplete = true;
    }

    /// Request messages were lost or undecodable (the body scans stop).
    pub fn mark_incomplete(&mut self) {
        self.incomplete = true;
        if let Some(s) = self.scan.as_mut() {
            s.gap();
        }
        if let Some(r) = self.response.as_mut() {
            r.gap();
        }
    }

    /// Bytes held for the response phase that are not parsed yet (an SSE event in progress, the
    /// tail of a JSON body after a loss): the connection's buffer budget counts them.
    pub fn buffered(&self) -> usize {
        self.response.as_ref().map_or(0, |r| r.tracker.buffered())
    }

    /// A `ProcessingRequest` from Envoy, read at `ts_ns`: the decision, when this message ends
    /// the response phase its outcome waited for.
    pub fn on_request(&mut self, ts_ns: u64, msg: &ProcessingRequest) -> Option<Decision> {
        if let Some(md) = &msg.metadata_context {
            let s = md.filter_metadata.get(SUBSET_NAMESPACE);
            if let Some(v) = s.and_then(|s| s.fields.get(SUBSET_KEY)) {
                strings_of(v, &mut self.subset);
            }
        }
        match &msg.request {
            Some(Request::RequestHeaders(h)) if self.start_ns.is_none() => {
                self.start_ns = Some(ts_ns);
                self.read_headers(h.headers.as_ref());
                if !h.end_of_stream {
                    self.scan = Some(RequestScan::new());
                }
            }
            Some(Request::RequestBody(b)) => {
                if let Some(scan) = self.scan.as_mut() {
                    scan.feed(&b.body);
                }
            }
            Some(Request::ResponseHeaders(h))
                if self.response.is_none() && self.served.is_none() && !self.emitted =>
            {
                let (status, content_type) = response_head(h.headers.as_ref());
                self.response = Some(ResponsePhase::start(ts_ns, status, content_type));
                if h.end_of_stream {
                    return self.response_ended(ts_ns, true);
                }
            }
            Some(Request::ResponseBody(b)) if !self.emitted && self.served.is_none() => {
                let r = self.response.get_or_insert_with(|| {
                    ResponsePhase::start(ts_ns, None, sniff_content_type(&b.body))
                });
                r.body(ts_ns, &b.body);
                if b.end_of_stream {
                    return self.response_ended(ts_ns, true);
                }
            }
            Some(Request::ResponseTrailers(_)) if self.response.is_some() => {
                return self.response_ended(ts_ns, true);
            }
            _ => {}
        }
        None
    }

    /// The response phase ended at `ts_ns`: the held decision leaves with its outcome.
    fn response_ended(&mut self, ts_ns: u64, complete: bool) -> Option<Decision> {
        let r = self.response.take()?;
        self.served = Some(r.finish(ts_ns, complete));
        let mut d = self.held.take()?;
        d.served = self.served.take().map(Box::new);
        d.incomplete |= self.incomplete;
        self.emitted = true;
        Some(d)
    }

    fn read_headers(&mut self, map: Option<&HeaderMap>) {
        for h in map.map(|m| m.headers.as_slice()).unwrap_or(&[]) {
            let key = h.key.to_ascii_lowercase();
            let Some(name) = REQUEST_HEADERS.iter().find(|k| **k == key) else {
                continue;
            };
            if let Some(v) = header_value(h) {
                let v = if *name == ":path" {
                    v.split(['?', '#']).next().unwrap_or("")
                } else {
                    v
                };
                self.headers.push((name, cut(v)));
            }
        }
    }

    /// A `ProcessingResponse` from the EPP, written at `ts_ns`: the decision, when this answer
    /// makes it and no outcome can follow (an immediate response; the EPP skipping the response
    /// phase) or the outcome is already known. Otherwise the decision is held for its outcome
    /// ([`Self::on_request`], [`Self::finish`]).
    pub fn on_response(&mut self, ts_ns: u64, msg: &ProcessingResponse) -> Option<Decision> {
        if let Some(m) = &msg.mode_override {
            self.no_response_phase = skips_response(m);
        }
        if self.emitted || self.held.is_some() || self.start_ns.is_none() {
            return None;
        }
        let mut endpoints = Vec::new();
        let mut rejected = None;
        match &msg.response {
            Some(Response::RequestHeaders(r)) => mutation_endpoints(
                r.response.as_ref().and_then(|c| c.header_mutation.as_ref()),
                &mut endpoints,
            ),
            Some(Response::RequestBody(r)) => mutation_endpoints(
                r.response.as_ref().and_then(|c| c.header_mutation.as_ref()),
                &mut endpoints,
            ),
            Some(Response::ImmediateResponse(i)) => {
                let code = i.status.as_ref().map(|s| s.code).unwrap_or(0);
                rejected = Some(u16::try_from(code).unwrap_or(0));
            }
            _ => {}
        }
        metadata_strings(
            msg.dynamic_metadata.as_ref(),
            LB_NAMESPACE,
            DESTINATION_HEADER,
            &mut endpoints,
        );
        let outcome = match (rejected, endpoints.is_empty()) {
            (Some(status), _) => Outcome::Rejected { status },
            (None, false) => Outcome::Routed,
            (None, true) => return None,
        };
        let mut d = self.decision(ts_ns, endpoints, outcome);
        if matches!(d.outcome, Outcome::Rejected { .. }) || self.no_response_phase {
            self.emitted = true;
            return Some(d);
        }
        if let Some(served) = self.served.take() {
            d.served = Some(Box::new(served));
            self.emitted = true;
            return Some(d);
        }
        self.held = Some(d);
        None
    }

    /// The stream ended (or the connection did) at `ts_ns`: the held decision with what its
    /// outcome got to (cut short if the response phase had not ended), or a decision with outcome
    /// `None` if none was made and the request was seen.
    pub fn finish(mut self, ts_ns: u64) -> Option<Decision> {
        if self.emitted || self.start_ns.is_none() {
            return None;
        }
        if let Some(r) = self.response.take() {
            self.served = Some(r.finish(ts_ns, false));
        }
        let mut d = match self.held.take() {
            Some(d) => d,
            None => self.decision(ts_ns, Vec::new(), Outcome::None),
        };
        d.served = self.served.take().map(Box::new);
        d.incomplete |= self.incomplete;
        Some(d)
    }

    fn decision(&mut self, ts_ns: u64, endpoints: Vec<String>, outcome: Outcome) -> Decision {
        let model = self.scan.as_ref().and_then(|s| s.fields().model.clone());
        Decision {
            start_ns: self.start_ns.unwrap_or(ts_ns),
            end_ns: ts_ns,
            headers: std::mem::take(&mut self.headers),
            model,
            endpoints,
            subset: std::mem::take(&mut self.subset),
            outcome,
            served: None,
            incomplete: self.incomplete,
        }
    }
}

#[cfg(test)]
mod tests;
