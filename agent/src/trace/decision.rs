//! Decision → span: the routing-decision span of one request through the gateway, in the trace of
//! that request (its `traceparent`, else the trace id derived from `x-request-id` with the same
//! formula as the model server's span, so both meet in one trace). Names are documented in
//! `docs/spans.md`. Pure.

use std::borrow::Cow;

use crate::capture::clock::WallClock;
use crate::conn::ConnMeta;
use crate::epp::{Decision, Outcome};
use crate::protocol::ext_proc::PROCESS_PATH;
use crate::trace::build::{put_addresses, BuildOptions, IdGenerator, TraceParent};
use crate::trace::span::{AttrValue, FinishedSpan, SpanStatus};

/// The attribute that marks a routing-decision span (`routed`, `rejected`, `none`).
pub const DECISION_ATTR: &str = "infertap.epp.decision";

pub fn build_decision_span(
    d: &Decision,
    conn: &ConnMeta,
    clock: &WallClock,
    opts: &BuildOptions,
    ids: &mut dyn IdGenerator,
) -> FinishedSpan {
    let mut attrs: Vec<(Cow<'static, str>, AttrValue)> = Vec::with_capacity(24);
    let mut put = |k: &'static str, v: AttrValue| attrs.push((Cow::Borrowed(k), v));
    let s = |v: &str| AttrValue::Str(v.to_string());

    let (tp, request_id) = TraceParent::from_headers(|n| d.header(n), opts, ids);

    let (service, method) = crate::protocol::grpc::split_path(PROCESS_PATH).unwrap_or_default();
    put("rpc.system", s("grpc"));
    put("rpc.service", s(service));
    put("rpc.method", s(method));
    put(DECISION_ATTR, s(d.outcome.as_str()));
    if let Some(rid) = request_id {
        put("gen_ai.request.id", s(rid));
    }
    let model = d
        .model
        .as_deref()
        .or(d.header("x-gateway-model-name-rewrite"));
    if let Some(m) = model {
        put("gen_ai.request.model", s(m));
    }
    if let Some(m) = d.header("x-gateway-model-name-rewrite") {
        put("infertap.epp.model_rewrite", s(m));
    }
    if let Some(p) = d.header(":path") {
        put("url.path", s(p));
    }
    if let Some(first) = d.endpoints.first() {
        put("infertap.epp.endpoint", s(first));
        put(
            "infertap.epp.endpoints",
            AttrValue::StrArray(d.endpoints.clone()),
        );
    }
    for (header, key) in [
        ("x-gateway-inference-objective", "infertap.epp.objective"),
        (
            "x-gateway-inference-fairness-id",
            "infertap.epp.fairness_id",
        ),
        ("x-slo-ttft-ms", "infertap.epp.slo_ttft_ms"),
        ("x-slo-tpot-ms", "infertap.epp.slo_tpot_ms"),
    ] {
        if let Some(v) = d.header(header) {
            put(key, s(v));
        }
    }
    if !d.subset.is_empty() {
        put("infertap.epp.subset", AttrValue::StrArray(d.subset.clone()));
    }
    put_addresses(conn, &mut put);
    put("process.pid", AttrValue::I64(conn.pid as i64));
    if d.incomplete {
        put("infertap.incomplete", AttrValue::Bool(true));
    }
    let status = match d.outcome {
        Outcome::Rejected { status } => {
            put("http.response.status_code", AttrValue::I64(status as i64));
            put("error.type", s(&status.to_string()));
            SpanStatus::Error(status.to_string())
        }
        _ => SpanStatus::Unset,
    };
    let name = match model {
        Some(m) => format!("route {m}"),
        None => "route".to_string(),
    };
    tp.span(name, conn, clock, d.start_ns, d.end_ns, status, attrs, ids)
}
