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
//! Must never: copy a header value other than the allow-listed ones below (`authorization` and
//! every other header Envoy forwards stay out), or any body text; do I/O; panic.

use crate::protocol::ext_proc::messages::{value, HeaderMutation, Struct, Value};
use crate::protocol::ext_proc::{
    header_value, processing_request::Request, processing_response::Response, HeaderMap,
    ProcessingRequest, ProcessingResponse,
};
use crate::protocol::openai::RequestScan;

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
    /// Messages of the stream were lost or could not be decoded.
    pub incomplete: bool,
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
    decided: bool,
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

    /// Request messages were lost or undecodable (the body scan stops).
    pub fn mark_incomplete(&mut self) {
        self.incomplete = true;
        if let Some(s) = self.scan.as_mut() {
            s.gap();
        }
    }

    /// A `ProcessingRequest` from Envoy, read at `ts_ns`.
    pub fn on_request(&mut self, ts_ns: u64, msg: &ProcessingRequest) {
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
            _ => {}
        }
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

    /// A `ProcessingResponse` from the EPP, written at `ts_ns`: the decision, once, when this
    /// answer makes it.
    pub fn on_response(&mut self, ts_ns: u64, msg: &ProcessingResponse) -> Option<Decision> {
        if self.decided || self.start_ns.is_none() {
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
        self.decided = true;
        Some(self.decision(ts_ns, endpoints, outcome))
    }

    /// The stream ended (or the connection did): a decision with outcome `None` if none was made
    /// and the request was seen.
    pub fn finish(mut self, ts_ns: u64) -> Option<Decision> {
        if self.decided || self.start_ns.is_none() {
            return None;
        }
        Some(self.decision(ts_ns, Vec::new(), Outcome::None))
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
            incomplete: self.incomplete,
        }
    }
}

#[cfg(test)]
mod tests;
