//! Exchange → span: names, ids, parent, times and attributes, as `docs/spans.md` and the GenAI
//! semantic conventions name them. Pure; ids come from the caller's generator.
//!
//! Privacy: only allow-listed header values (trace context, request id) and identifiers parsed
//! by `protocol::openai` reach a span. Nothing here reads a body.

use std::borrow::Cow;

use super::context::{parse_traceparent, trace_id_from_request_id};
use super::fields::put_field_attributes;
use super::span::{AttrValue, FinishedSpan, SpanId, SpanKind, SpanStatus, TraceId};
use super::summary::{Summary, SummaryKind};
use super::Built;
use crate::capture::clock::WallClock;
use crate::conn::ConnMeta;
use crate::exchange::gaps::GapSketch;
use crate::exchange::{Exchange, Outcome};
use crate::protocol::openai::fields::Body;
use crate::schema::attr;

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
/// side the traced process was on (an unspecified listening address is left out); returns the
/// server address it put.
pub fn put_addresses(
    conn: &ConnMeta,
    put: &mut dyn FnMut(&'static str, AttrValue),
) -> Option<String> {
    let mut server_address = None;
    if let Some(a) = server_addr(conn) {
        if !a.ip().is_unspecified() {
            let ip = ip_text(a.ip());
            server_address = Some(ip.clone());
            put(attr::SERVER_ADDRESS, AttrValue::Str(ip));
        }
        put(attr::SERVER_PORT, AttrValue::I64(a.port() as i64));
    }
    let client = if conn.server { conn.peer } else { conn.local };
    if let Some(a) = client {
        put(attr::CLIENT_ADDRESS, AttrValue::Str(ip_text(a.ip())));
        put(attr::CLIENT_PORT, AttrValue::I64(a.port() as i64));
    }
    server_address
}

/// An address as text, as `IpAddr`'s `Display` writes it. IPv4 (nearly every span has two) is
/// written directly: `to_string` goes through the formatting machinery, a tenth of a span's
/// build time.
fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut s = String::with_capacity(15);
    for (i, o) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if o >= 100 {
            s.push(char::from(b'0' + o / 100));
        }
        if o >= 10 {
            s.push(char::from(b'0' + o / 10 % 10));
        }
        s.push(char::from(b'0' + o % 10));
    }
    s
}

/// The server's side of the connection: the local address when the traced process served it.
fn server_addr(conn: &ConnMeta) -> Option<std::net::SocketAddr> {
    if conn.server {
        conn.local
    } else {
        conn.peer
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

/// Gap statistics of a stream: the gaps between its kept chunk times (`times`) and, for a stream
/// that outgrew them, the later gaps' sketch. Exact (as [`gap_stats`]) without a sketch; with
/// one, mean and max stay exact and p50/p95 are within `gaps::RELATIVE_ERROR`.
pub fn stream_gap_stats(times: &[u64], later: Option<&GapSketch>) -> Option<GapStats> {
    let Some(later) = later.filter(|l| l.count() > 0) else {
        return gap_stats(times);
    };
    let mut all = later.clone();
    for w in times.windows(2) {
        all.add(w[1].saturating_sub(w[0]));
    }
    let n = all.count();
    Some(GapStats {
        mean_s: secs(all.sum_ns()) / n as f64,
        p50_s: all.quantile_ns(0.50).unwrap_or_default() / 1e9,
        p95_s: all.quantile_ns(0.95).unwrap_or_default() / 1e9,
        max_s: secs(all.max_ns()),
    })
}

/// Gap statistics over content chunk times, exact.
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

/// Exchange → span and its typed summary.
pub fn build_span(
    ex: &Exchange,
    conn: &ConnMeta,
    clock: &WallClock,
    opts: &BuildOptions,
    ids: &mut dyn IdGenerator,
) -> Built {
    let mut attrs: Vec<(Cow<'static, str>, AttrValue)> = Vec::with_capacity(40);
    let mut put = |k: &'static str, v: AttrValue| attrs.push((Cow::Borrowed(k), v));

    let (tp, request_id) = TraceParent::from_headers(|n| header(ex, n), opts, ids);
    let status = ex.response.as_ref().map(|r| r.status);
    let server_address = put_http(ex, conn, status, request_id, &mut put);
    let genai = ex.operation.map(|_| put_genai(ex, conn, &mut put));
    let end = Ending::of(ex, status, conn.server);
    end.put(ex, &mut put);

    let model = ex.request_fields.as_ref().and_then(|f| f.model.as_deref());
    let name = match (ex.operation, model) {
        (Some(op), Some(m)) => format!("{} {}", op.as_str(), m),
        (Some(op), None) => op.as_str().to_string(),
        (None, _) => match known_route(&ex.request.path) {
            Some(route) => format!("{} {}", ex.request.method, route),
            None => ex.request.method.clone(),
        },
    };
    let span_status = if end.is_error {
        SpanStatus::Error(
            end.error_type
                .clone()
                .unwrap_or_else(|| "error".to_string()),
        )
    } else {
        SpanStatus::Unset
    };
    let span = tp.span(
        name,
        conn,
        clock,
        ex.start_ns,
        ex.end_ns,
        span_status,
        attrs,
        ids,
    );
    let server = server_addr(conn);
    let genai = genai.unwrap_or_default();
    let summary = Summary {
        method: Some(ex.request.method.clone()),
        status_code: status.map(i64::from),
        server_address,
        server_port: server.map(|a| i64::from(a.port())),
        error_type: end.error_type,
        cancelled: matches!(ex.outcome, Outcome::Cancelled { .. }),
        server_aborted: matches!(ex.outcome, Outcome::ServerAborted { .. }),
        incomplete: ex.incomplete,
        operation: ex.operation.map(|op| op.as_str()),
        provider: ex.operation.map(|_| conn.provider),
        request_model: model.map(str::to_string),
        response_model: ex.response_values.response_model().map(str::to_string),
        ttft_s: genai.ttft_s,
        itl_p95_s: genai.itl_p95_s,
        input_tokens: genai.input_tokens,
        output_tokens: genai.output_tokens,
        queue_s: genai.queue_s,
        api_server_s: genai.api_server_s,
        later_gaps: ex.later_gaps.clone(),
        served_models: ex.served_models.clone(),
        ..Summary::new(SummaryKind::Http, &span)
    };
    Built { span, summary }
}

/// The HTTP and connection attributes every exchange has; returns the server address.
fn put_http(
    ex: &Exchange,
    conn: &ConnMeta,
    status: Option<u16>,
    request_id: Option<&str>,
    put: &mut dyn FnMut(&'static str, AttrValue),
) -> Option<String> {
    put(
        attr::HTTP_REQUEST_METHOD,
        AttrValue::Str(ex.request.method.clone()),
    );
    put(attr::URL_PATH, AttrValue::Str(ex.request.path.clone()));
    if let Some(s) = status {
        put(attr::HTTP_RESPONSE_STATUS_CODE, AttrValue::I64(s as i64));
    }
    let server_address = put_addresses(conn, put);
    put(
        attr::HTTP_REQUEST_BODY_SIZE,
        AttrValue::I64(ex.request_body_len as i64),
    );
    put(
        attr::HTTP_RESPONSE_BODY_SIZE,
        AttrValue::I64(ex.response_body_len as i64),
    );
    put(attr::PROCESS_PID, AttrValue::I64(conn.pid as i64));
    if let Some(rid) = request_id {
        put(attr::GEN_AI_REQUEST_ID, AttrValue::Str(rid.to_string()));
    }
    server_address
}

/// The GenAI figures a GenAI request's summary carries.
#[derive(Clone, Copy, Debug, Default)]
struct GenAi {
    ttft_s: Option<f64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    itl_p95_s: Option<f64>,
    /// The server's reported queue time, and the wire's share of TTFT (`trace::phases`).
    queue_s: Option<f64>,
    api_server_s: Option<f64>,
}

/// The GenAI attributes of a request on an OpenAI route: operation, provider, the field table's
/// request and response fields, token estimate, timing.
fn put_genai(
    ex: &Exchange,
    conn: &ConnMeta,
    put: &mut dyn FnMut(&'static str, AttrValue),
) -> GenAi {
    let mut g = GenAi::default();
    if let Some(op) = ex.operation {
        put(
            attr::GEN_AI_OPERATION_NAME,
            AttrValue::Str(op.as_str().to_string()),
        );
    }
    put(
        attr::GEN_AI_PROVIDER_NAME,
        AttrValue::Str(conn.provider.to_string()),
    );
    // The request and response fields of the table (`openai::fields`), in its order.
    let request = ex.request_fields.as_ref().map(|f| &f.values);
    put_field_attributes(Body::Request, request, put);
    put_field_attributes(Body::Response, Some(&ex.response_values), put);
    if let Some(u) = ex.response_values.usage() {
        g.input_tokens = u.prompt_tokens;
        g.output_tokens = u.completion_tokens;
    }
    if ex.usage.is_none() && ex.streaming && ex.operation.is_some_and(|op| op.generates()) {
        let estimate = ex.content_chunks as i64;
        g.output_tokens = Some(estimate);
        put(attr::GEN_AI_USAGE_OUTPUT_TOKENS, AttrValue::I64(estimate));
        put(
            attr::INFERTAP_USAGE_OUTPUT_TOKENS_ESTIMATED,
            AttrValue::Bool(true),
        );
    }
    if let Some(t) = ex.first_token_ns {
        let ttft = secs(t.saturating_sub(ex.start_ns));
        g.ttft_s = Some(ttft);
        put(
            attr::GEN_AI_LATENCY_TIME_TO_FIRST_TOKEN,
            AttrValue::F64(ttft),
        );
        put(
            attr::GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK,
            AttrValue::F64(ttft),
        );
    }
    if let Some(p) = ex.response_values.server_phases() {
        g.api_server_s = super::phases::put_server_phases(&p, g.ttft_s, put);
        g.queue_s = p.queue_ms.map(|ms| ms / 1e3);
    }
    put(
        attr::GEN_AI_LATENCY_E2E,
        AttrValue::F64(secs(ex.end_ns.saturating_sub(ex.start_ns))),
    );
    if ex.streaming {
        put(
            attr::INFERTAP_CONTENT_CHUNKS,
            AttrValue::I64(ex.content_chunks as i64),
        );
    }
    if let Some(gaps) = stream_gap_stats(&ex.content_chunk_ns, ex.later_gaps.as_deref()) {
        g.itl_p95_s = Some(gaps.p95_s);
        let g = gaps;
        for (key, seconds) in [
            (attr::INFERTAP_INTER_TOKEN_LATENCY_MEAN, g.mean_s),
            (attr::INFERTAP_INTER_TOKEN_LATENCY_P50, g.p50_s),
            (attr::INFERTAP_INTER_TOKEN_LATENCY_P95, g.p95_s),
            (attr::INFERTAP_INTER_TOKEN_LATENCY_MAX, g.max_s),
        ] {
            put(key, AttrValue::F64(seconds));
        }
    }
    g
}

/// How an exchange ended, as the span says it.
struct Ending {
    error_type: Option<String>,
    is_error: bool,
}

impl Ending {
    fn of(ex: &Exchange, status: Option<u16>, server: bool) -> Ending {
        let aborted = matches!(ex.outcome, Outcome::ServerAborted { .. });
        let mut error_type = if let Some(s) = status.filter(|s| *s >= 400) {
            Some(ex.error_type.clone().unwrap_or_else(|| s.to_string()))
        } else {
            ex.error_type.clone() // an error event inside a 200 stream
        };
        if aborted && error_type.is_none() {
            error_type = Some("server_aborted".to_string());
        }
        let is_error = aborted
            || match status {
                Some(s) if s >= 500 => true,
                Some(s) if s >= 400 => !server, // 4xx is the client's error: an error on CLIENT spans only
                _ => ex.error_type.is_some(),
            };
        Ending {
            error_type,
            is_error,
        }
    }

    fn put(&self, ex: &Exchange, put: &mut dyn FnMut(&'static str, AttrValue)) {
        match ex.outcome {
            Outcome::Cancelled { .. } => put(attr::INFERTAP_CANCELLED, AttrValue::Bool(true)),
            Outcome::ServerAborted { .. } => {
                put(attr::INFERTAP_SERVER_ABORTED, AttrValue::Bool(true))
            }
            Outcome::Completed | Outcome::Abandoned => {}
        }
        if ex.incomplete {
            put(attr::INFERTAP_INCOMPLETE, AttrValue::Bool(true));
        }
        if let Some(e) = &self.error_type {
            put(attr::ERROR_TYPE, AttrValue::Str(e.clone()));
        }
    }
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

    /// Addresses on spans read as `IpAddr` writes them, every octet value included.
    #[test]
    fn address_text_is_display() {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        for o in 0..=255u8 {
            for ip in [
                Ipv4Addr::new(o, 0, o / 3, 255 - o),
                Ipv4Addr::new(10, o, 7, o),
            ] {
                assert_eq!(ip_text(IpAddr::V4(ip)), ip.to_string());
            }
        }
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(ip_text(v6), "::1");
    }
}
