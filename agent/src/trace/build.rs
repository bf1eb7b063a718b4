//! Exchange → span: names, ids, parent, times and attributes, as `design.md` and the GenAI
//! semantic conventions name them. Pure; ids come from the caller's generator.
//!
//! Privacy: only allow-listed header values (trace context, request id) and identifiers parsed
//! by `protocol::openai` reach a span. Nothing here reads a body.

use std::borrow::Cow;

use super::context::{parse_traceparent, trace_id_from_request_id};
use super::fields::put_field_attributes;
use super::span::{AttrValue, FinishedSpan, SpanId, SpanKind, SpanStatus, TraceId};
use crate::capture::clock::WallClock;
use crate::conn::ConnMeta;
use crate::exchange::{Exchange, Outcome};
use crate::protocol::openai::fields::Body;

/// Options for span building.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Derive a trace id from `x-request-id` when there is no `traceparent`.
    pub derive_trace_from_request_id: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            derive_trace_from_request_id: true,
        }
    }
}

/// Id source, so tests can be deterministic.
pub trait IdGenerator {
    fn trace_id(&mut self) -> TraceId;
    fn span_id(&mut self) -> SpanId;
}

pub struct RandomIds;

impl IdGenerator for RandomIds {
    fn trace_id(&mut self) -> TraceId {
        loop {
            let id: TraceId = rand::random();
            if id != [0; 16] {
                return id;
            }
        }
    }
    fn span_id(&mut self) -> SpanId {
        loop {
            let id: SpanId = rand::random();
            if id != [0; 8] {
                return id;
            }
        }
    }
}

/// The trace a span joins, from its request's headers: the incoming `traceparent` (its
/// `tracestate` kept), else — when enabled — the trace id derived from `x-request-id`, else a new
/// trace. Every span kind (HTTP, gRPC, routing decision) takes it from here, so that the spans of
/// one request meet in one trace.
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_span_id: Option<SpanId>,
    pub sampled: bool,
    pub trace_state: String,
}

impl TraceParent {
    /// The trace context, and the request id (`x-request-id`, when not blank).
    pub fn from_headers<'a>(
        header: impl Fn(&str) -> Option<&'a str>,
        opts: &BuildOptions,
        ids: &mut dyn IdGenerator,
    ) -> (TraceParent, Option<&'a str>) {
        let parent = header("traceparent").and_then(parse_traceparent);
        let request_id = header("x-request-id").filter(|v| !v.trim().is_empty());
        let (trace_id, parent_span_id, sampled) = match (&parent, request_id) {
            (Some(p), _) => (p.trace_id, Some(p.parent_id), p.sampled),
            (None, Some(rid)) if opts.derive_trace_from_request_id => {
                (trace_id_from_request_id(rid), None, true)
            }
            _ => (ids.trace_id(), None, true),
        };
        let trace_state = match parent {
            Some(_) => header("tracestate").unwrap_or("").to_string(),
            None => String::new(),
        };
        let tp = TraceParent {
            trace_id,
            parent_span_id,
            sampled,
            trace_state,
        };
        (tp, request_id)
    }

    /// The finished span in this trace, with a new span id; SERVER or CLIENT by the side the
    /// traced process was on.
    #[allow(clippy::too_many_arguments)]
    pub fn span(
        self,
        name: String,
        conn: &ConnMeta,
        clock: &WallClock,
        start_ns: u64,
        end_ns: u64,
        status: SpanStatus,
        attributes: Vec<(Cow<'static, str>, AttrValue)>,
        ids: &mut dyn IdGenerator,
    ) -> FinishedSpan {
        FinishedSpan {
            trace_id: self.trace_id,
            span_id: ids.span_id(),
            parent_span_id: self.parent_span_id,
            trace_state: self.trace_state,
            parent_is_remote: self.parent_span_id.is_some(),
            sampled: self.sampled,
            name,
            kind: if conn.server {
                SpanKind::Server
            } else {
                SpanKind::Client
            },
            start_unix_nano: clock.to_unix_nanos(start_ns),
            end_unix_nano: clock.to_unix_nanos(end_ns),
            status,
            attributes,
        }
    }
}

/// `server.address`/`server.port` and `client.address`/`client.port` of the connection, by the
/// side the traced process was on (an unspecified listening address is left out).
pub fn put_addresses(conn: &ConnMeta, put: &mut dyn FnMut(&'static str, AttrValue)) {
    let (server, client) = if conn.server {
        (conn.local, conn.peer)
    } else {
        (conn.peer, conn.local)
    };
    if let Some(a) = server {
        if !a.ip().is_unspecified() {
            put("server.address", AttrValue::Str(a.ip().to_string()));
        }
        put("server.port", AttrValue::I64(a.port() as i64));
    }
    if let Some(a) = client {
        put("client.address", AttrValue::Str(a.ip().to_string()));
        put("client.port", AttrValue::I64(a.port() as i64));
    }
}

fn header<'a>(ex: &'a Exchange, name: &str) -> Option<&'a str> {
    ex.request
        .headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Inter-token gap statistics over content chunk times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GapStats {
    pub mean_s: f64,
    pub p50_s: f64,
    pub p95_s: f64,
    pub max_s: f64,
}

pub fn gap_stats(times: &[u64]) -> Option<GapStats> {
    if times.len() < 2 {
        return None;
    }
    let mut gaps: Vec<u64> = times
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    gaps.sort_unstable();
    let n = gaps.len();
    let pct = |p: f64| gaps[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    Some(GapStats {
        mean_s: secs(gaps.iter().sum::<u64>()) / n as f64,
        p50_s: secs(pct(0.50)),
        p95_s: secs(pct(0.95)),
        max_s: secs(gaps[n - 1]),
    })
}

/// Routes of OpenAI-compatible servers that are safe to put in a span name (low cardinality).
/// Other paths give a span named by the method alone, as the HTTP conventions ask when the route
/// is not known.
fn known_route(path: &str) -> Option<&'static str> {
    const ROUTES: &[&str] = &[
        "/health",
        "/ping",
        "/metrics",
        "/version",
        "/v1/models",
        "/v1/responses",
        "/tokenize",
        "/detokenize",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/score",
        "/v1/rerank",
        "/pooling",
    ];
    ROUTES.iter().copied().find(|r| *r == path)
}

pub fn build_span(
    ex: &Exchange,
    conn: &ConnMeta,
    clock: &WallClock,
    opts: &BuildOptions,
    ids: &mut dyn IdGenerator,
) -> FinishedSpan {
    let mut attrs: Vec<(Cow<'static, str>, AttrValue)> = Vec::with_capacity(40);
    let mut put = |k: &'static str, v: AttrValue| attrs.push((Cow::Borrowed(k), v));

    let (tp, request_id) = TraceParent::from_headers(|n| header(ex, n), opts, ids);

    // HTTP.
    let status = ex.response.as_ref().map(|r| r.status);
    put(
        "http.request.method",
        AttrValue::Str(ex.request.method.clone()),
    );
    put("url.path", AttrValue::Str(ex.request.path.clone()));
    if let Some(s) = status {
        put("http.response.status_code", AttrValue::I64(s as i64));
    }
    put_addresses(conn, &mut put);
    put(
        "http.request.body.size",
        AttrValue::I64(ex.request_body_len as i64),
    );
    put(
        "http.response.body.size",
        AttrValue::I64(ex.response_body_len as i64),
    );
    put("process.pid", AttrValue::I64(conn.pid as i64));
    if let Some(rid) = request_id {
        put("gen_ai.request.id", AttrValue::Str(rid.to_string()));
    }

    // GenAI.
    let fields = ex.request_fields.as_ref();
    let model = fields.and_then(|f| f.model.clone());
    if let Some(op) = ex.operation {
        put(
            "gen_ai.operation.name",
            AttrValue::Str(op.as_str().to_string()),
        );
        put(
            "gen_ai.provider.name",
            AttrValue::Str(conn.provider.to_string()),
        );
        // The request and response fields of the table (`openai::fields`), in its order.
        put_field_attributes(Body::Request, fields.map(|f| &f.values), &mut put);
        put_field_attributes(Body::Response, Some(&ex.response_values), &mut put);
        if ex.usage.is_none()
            && ex.streaming
            && ex.operation != Some(crate::protocol::openai::Operation::Embeddings)
        {
            put(
                "gen_ai.usage.output_tokens",
                AttrValue::I64(ex.content_chunk_ns.len() as i64),
            );
            put(
                "infertap.usage.output_tokens_estimated",
                AttrValue::Bool(true),
            );
        }
        if let Some(t) = ex.first_token_ns {
            let ttft = secs(t.saturating_sub(ex.start_ns));
            put("gen_ai.latency.time_to_first_token", AttrValue::F64(ttft));
            put("gen_ai.response.time_to_first_chunk", AttrValue::F64(ttft));
        }
        put(
            "gen_ai.latency.e2e",
            AttrValue::F64(secs(ex.end_ns.saturating_sub(ex.start_ns))),
        );
        if ex.streaming {
            put(
                "infertap.content_chunks",
                AttrValue::I64(ex.content_chunk_ns.len() as i64),
            );
        }
        if let Some(g) = gap_stats(&ex.content_chunk_ns) {
            put(
                "infertap.inter_token_latency.mean",
                AttrValue::F64(g.mean_s),
            );
            put("infertap.inter_token_latency.p50", AttrValue::F64(g.p50_s));
            put("infertap.inter_token_latency.p95", AttrValue::F64(g.p95_s));
            put("infertap.inter_token_latency.max", AttrValue::F64(g.max_s));
        }
    }

    // Outcome.
    let mut error_type: Option<String> = None;
    match ex.outcome {
        Outcome::Completed => {}
        Outcome::Cancelled { .. } => {
            put("infertap.cancelled", AttrValue::Bool(true));
        }
        Outcome::ServerAborted { .. } => {
            put("infertap.server_aborted", AttrValue::Bool(true));
        }
        Outcome::Abandoned => {}
    }
    if ex.incomplete {
        put("infertap.incomplete", AttrValue::Bool(true));
    }
    if let Some(s) = status.filter(|s| *s >= 400) {
        error_type = Some(ex.error_type.clone().unwrap_or_else(|| s.to_string()));
    } else if let Some(e) = &ex.error_type {
        error_type = Some(e.clone()); // an error event inside a 200 stream
    }
    if matches!(ex.outcome, Outcome::ServerAborted { .. }) && error_type.is_none() {
        error_type = Some("server_aborted".to_string());
    }
    let is_error = matches!(ex.outcome, Outcome::ServerAborted { .. })
        || match status {
            Some(s) if s >= 500 => true,
            Some(s) if s >= 400 => !conn.server, // 4xx is the client's error: an error on CLIENT spans only
            _ => ex.error_type.is_some(),
        };
    if let Some(e) = &error_type {
        put("error.type", AttrValue::Str(e.clone()));
    }

    let name = match (ex.operation, &model) {
        (Some(op), Some(m)) => format!("{} {}", op.as_str(), m),
        (Some(op), None) => op.as_str().to_string(),
        (None, _) => match known_route(&ex.request.path) {
            Some(route) => format!("{} {}", ex.request.method, route),
            None => ex.request.method.clone(),
        },
    };
    let status = if is_error {
        SpanStatus::Error(error_type.unwrap_or_else(|| "error".to_string()))
    } else {
        SpanStatus::Unset
    };
    tp.span(
        name,
        conn,
        clock,
        ex.start_ns,
        ex.end_ns,
        status,
        attrs,
        ids,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_statistics() {
        let ms = 1_000_000;
        let g = gap_stats(&[0, 10 * ms, 20 * ms, 50 * ms, 60 * ms]).unwrap();
        assert!((g.mean_s - 0.015).abs() < 1e-9);
        assert!((g.p50_s - 0.010).abs() < 1e-9);
        assert!((g.p95_s - 0.030).abs() < 1e-9);
        assert!((g.max_s - 0.030).abs() < 1e-9);
        assert_eq!(gap_stats(&[5]), None);
    }
}
