//! Decision → span: the routing-decision span of one request through the gateway, in the trace of
//! that request (its `traceparent`, else the trace id derived from `x-request-id` with the same
//! formula as the model server's span, so both meet in one trace). Names are documented in
//! `docs/spans.md`. Pure.

use std::borrow::Cow;

use crate::capture::clock::WallClock;
use crate::conn::ConnMeta;
use crate::epp::{Decision, Outcome};
use crate::protocol::ext_proc::PROCESS_PATH;
use crate::schema::attr;
use crate::trace::build::{put_addresses, BuildOptions, IdGenerator, TraceParent};
use crate::trace::span::{AttrValue, SpanStatus};
use crate::trace::summary::{Summary, SummaryKind};
use crate::trace::Built;

pub fn build_decision_span(
    d: &Decision,
    conn: &ConnMeta,
    clock: &WallClock,
    opts: &BuildOptions,
    ids: &mut dyn IdGenerator,
) -> Built {
    let mut attrs: Vec<(Cow<'static, str>, AttrValue)> = Vec::with_capacity(24);
    let mut put = |k: &'static str, v: AttrValue| attrs.push((Cow::Borrowed(k), v));
    let s = |v: &str| AttrValue::Str(v.to_string());

    let (tp, request_id) = TraceParent::from_headers(|n| d.header(n), opts, ids);

    let (service, method) = crate::protocol::grpc::split_path(PROCESS_PATH).unwrap_or_default();
    put(attr::RPC_SYSTEM, s("grpc"));
    put(attr::RPC_SERVICE, s(service));
    put(attr::RPC_METHOD, s(method));
    put(attr::INFERTAP_EPP_DECISION, s(d.outcome.as_str()));
    if let Some(rid) = request_id {
        put(attr::GEN_AI_REQUEST_ID, s(rid));
    }
    let model = d
        .model
        .as_deref()
        .or(d.header("x-gateway-model-name-rewrite"));
    if let Some(m) = model {
        put(attr::GEN_AI_REQUEST_MODEL, s(m));
    }
    if let Some(m) = d.header("x-gateway-model-name-rewrite") {
        put(attr::INFERTAP_EPP_MODEL_REWRITE, s(m));
    }
    if let Some(p) = d.header(":path") {
        put(attr::URL_PATH, s(p));
    }
    if let Some(first) = d.endpoints.first() {
        put(attr::INFERTAP_EPP_ENDPOINT, s(first));
        put(
            attr::INFERTAP_EPP_ENDPOINTS,
            AttrValue::StrArray(d.endpoints.clone()),
        );
    }
    for (header, key) in [
        (
            "x-gateway-inference-objective",
            attr::INFERTAP_EPP_OBJECTIVE,
        ),
        (
            "x-gateway-inference-fairness-id",
            attr::INFERTAP_EPP_FAIRNESS_ID,
        ),
        ("x-slo-ttft-ms", attr::INFERTAP_EPP_SLO_TTFT_MS),
        ("x-slo-tpot-ms", attr::INFERTAP_EPP_SLO_TPOT_MS),
    ] {
        if let Some(v) = d.header(header) {
            put(key, s(v));
        }
    }
    if !d.subset.is_empty() {
        put(
            attr::INFERTAP_EPP_SUBSET,
            AttrValue::StrArray(d.subset.clone()),
        );
    }
    let _ = put_addresses(conn, &mut put);
    put(attr::PROCESS_PID, AttrValue::I64(conn.pid as i64));
    if d.incomplete {
        put(attr::INFERTAP_INCOMPLETE, AttrValue::Bool(true));
    }
    let mut rejected = None;
    let status = match d.outcome {
        Outcome::Rejected { status } => {
            rejected = Some(status as i64);
            put(
                attr::HTTP_RESPONSE_STATUS_CODE,
                AttrValue::I64(status as i64),
            );
            put(attr::ERROR_TYPE, s(&status.to_string()));
            SpanStatus::Error(status.to_string())
        }
        _ => SpanStatus::Unset,
    };
    let name = match model {
        Some(m) => format!("route {m}"),
        None => "route".to_string(),
    };
    let span = tp.span(name, conn, clock, d.start_ns, d.end_ns, status, attrs, ids);
    let summary = Summary {
        decision: Some(d.outcome.as_str()),
        request_model: model.map(str::to_string),
        endpoint: d.endpoints.first().cloned(),
        status_code: rejected,
        incomplete: d.incomplete,
        ..Summary::new(SummaryKind::Decision, &span)
    };
    Built { span, summary }
}
