//! GrpcCall → span: `{rpc.service}/{rpc.method}` with the OpenTelemetry RPC attributes, from the
//! request headers to the response's END_STREAM (trailers). Pure.

use std::borrow::Cow;

use super::build::{BuildOptions, ConnMeta, IdGenerator};
use super::context::{parse_traceparent, trace_id_from_request_id};
use super::span::{AttrValue, FinishedSpan, SpanKind, SpanStatus};
use crate::capture::clock::WallClock;
use crate::exchange::h2::{CallOutcome, GrpcCall};
use crate::protocol::grpc::status_name;

/// Status codes that make a SERVER span an error (OpenTelemetry RPC conventions); on a CLIENT span
/// every non-OK status is.
const SERVER_ERRORS: [u32; 6] = [2, 4, 12, 13, 14, 15];

pub fn build_grpc_span(
    c: &GrpcCall,
    conn: &ConnMeta,
    clock: &WallClock,
    opts: &BuildOptions,
    ids: &mut dyn IdGenerator,
) -> FinishedSpan {
    let mut attrs: Vec<(Cow<'static, str>, AttrValue)> = Vec::with_capacity(16);
    let mut put = |k: &'static str, v: AttrValue| attrs.push((Cow::Borrowed(k), v));
    let header = |n: &str| {
        c.headers
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.as_str())
    };
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
    put("rpc.system", AttrValue::Str("grpc".into()));
    put("rpc.service", AttrValue::Str(c.service.clone()));
    put("rpc.method", AttrValue::Str(c.method.clone()));
    if let Some(s) = c.grpc_status {
        put("rpc.grpc.status_code", AttrValue::I64(s as i64));
    }
    if let Some(s) = c.http_status {
        put("http.response.status_code", AttrValue::I64(s as i64));
    }
    put(
        "infertap.grpc.request_messages",
        AttrValue::I64(c.request_messages as i64),
    );
    put(
        "infertap.grpc.response_messages",
        AttrValue::I64(c.response_messages as i64),
    );
    if let Some(rid) = request_id {
        put("gen_ai.request.id", AttrValue::Str(rid.to_string()));
    }
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
    put("process.pid", AttrValue::I64(conn.pid as i64));
    if c.incomplete {
        put("infertap.incomplete", AttrValue::Bool(true));
    }
    let error = match (c.outcome, c.grpc_status) {
        (
            CallOutcome::Reset {
                by_client: true, ..
            },
            _,
        ) => {
            put("infertap.cancelled", AttrValue::Bool(true));
            None
        }
        (CallOutcome::Reset { .. }, _) => Some("reset".to_string()),
        (_, Some(s)) if s != 0 && (!conn.server || SERVER_ERRORS.contains(&s)) => {
            Some(status_name(s).to_string())
        }
        _ => None,
    };
    if let Some(e) = &error {
        put("error.type", AttrValue::Str(e.clone()));
    }
    FinishedSpan {
        trace_id,
        span_id: ids.span_id(),
        parent_span_id,
        trace_state,
        parent_is_remote: parent_span_id.is_some(),
        sampled,
        name: format!("{}/{}", c.service, c.method),
        kind: if conn.server {
            SpanKind::Server
        } else {
            SpanKind::Client
        },
        start_unix_nano: clock.to_unix_nanos(c.start_ns),
        end_unix_nano: clock.to_unix_nanos(c.end_ns),
        status: error.map_or(SpanStatus::Unset, SpanStatus::Error),
        attributes: attrs,
    }
}
