//! GrpcCall → span: `{rpc.service}/{rpc.method}` with the OpenTelemetry RPC attributes, from the
//! request headers to the response's END_STREAM (trailers). Pure.

use std::borrow::Cow;

use super::build::{put_addresses, BuildOptions, IdGenerator, TraceParent};
use super::span::{AttrValue, SpanStatus};
use super::summary::{Summary, SummaryKind};
use super::Built;
use crate::capture::clock::WallClock;
use crate::conn::ConnMeta;
use crate::exchange::h2::{CallOutcome, GrpcCall};
use crate::protocol::grpc::status_name;
use crate::schema::attr;

/// Status codes that make a SERVER span an error (OpenTelemetry RPC conventions); on a CLIENT span
/// every non-OK status is.
const SERVER_ERRORS: [u32; 6] = [2, 4, 12, 13, 14, 15];

pub fn build_grpc_span(
    c: &GrpcCall,
    conn: &ConnMeta,
    clock: &WallClock,
    opts: &BuildOptions,
    ids: &mut dyn IdGenerator,
) -> Built {
    let mut attrs: Vec<(Cow<'static, str>, AttrValue)> = Vec::with_capacity(16);
    let mut put = |k: &'static str, v: AttrValue| attrs.push((Cow::Borrowed(k), v));
    let header = |n: &str| {
        c.headers
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.as_str())
    };
    let (tp, request_id) = TraceParent::from_headers(header, opts, ids);
    put(attr::RPC_SYSTEM, AttrValue::Str("grpc".into()));
    put(attr::RPC_SERVICE, AttrValue::Str(c.service.clone()));
    put(attr::RPC_METHOD, AttrValue::Str(c.method.clone()));
    if let Some(s) = c.grpc_status {
        put(attr::RPC_GRPC_STATUS_CODE, AttrValue::I64(s as i64));
    }
    if let Some(s) = c.http_status {
        put(attr::HTTP_RESPONSE_STATUS_CODE, AttrValue::I64(s as i64));
    }
    put(
        attr::INFERTAP_GRPC_REQUEST_MESSAGES,
        AttrValue::I64(c.request_messages as i64),
    );
    put(
        attr::INFERTAP_GRPC_RESPONSE_MESSAGES,
        AttrValue::I64(c.response_messages as i64),
    );
    if let Some(rid) = request_id {
        put(attr::GEN_AI_REQUEST_ID, AttrValue::Str(rid.to_string()));
    }
    let _ = put_addresses(conn, &mut put);
    put(attr::PROCESS_PID, AttrValue::I64(conn.pid as i64));
    if c.incomplete {
        put(attr::INFERTAP_INCOMPLETE, AttrValue::Bool(true));
    }
    let error = match (c.outcome, c.grpc_status) {
        (
            CallOutcome::Reset {
                by_client: true, ..
            },
            _,
        ) => {
            put(attr::INFERTAP_CANCELLED, AttrValue::Bool(true));
            None
        }
        (CallOutcome::Reset { .. }, _) => Some("reset".to_string()),
        (_, Some(s)) if s != 0 && (!conn.server || SERVER_ERRORS.contains(&s)) => {
            Some(status_name(s).to_string())
        }
        _ => None,
    };
    if let Some(e) = &error {
        put(attr::ERROR_TYPE, AttrValue::Str(e.clone()));
    }
    let status = error.map_or(SpanStatus::Unset, SpanStatus::Error);
    let name = format!("{}/{}", c.service, c.method);
    let span = tp.span(name, conn, clock, c.start_ns, c.end_ns, status, attrs, ids);
    let summary = Summary {
        incomplete: c.incomplete,
        ..Summary::new(SummaryKind::GrpcCall, &span)
    };
    Built { span, summary }
}
