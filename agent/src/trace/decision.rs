//! Decision → span: the routing-decision span of one request through the gateway, in the trace of
//! that request (its `traceparent`, else the trace id derived from `x-request-id` with the same
//! formula as the model server's span, so both meet in one trace), with the outcome of its choice
//! when the response phase flowed through the EPP (`infertap.epp.outcome.*`). Names are documented
//! in `docs/spans.md`. Pure.

use std::borrow::Cow;

use crate::capture::clock::WallClock;
use crate::conn::ConnMeta;
use crate::epp::{Decision, Outcome, Served};
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
    let outcome = d.served.as_deref().map(|o| put_outcome(d, o, &mut put));
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
    let o = outcome.unwrap_or_default();
    let summary = Summary {
        decision: Some(d.outcome.as_str()),
        request_model: model.map(str::to_string),
        endpoint: d.endpoints.first().cloned(),
        status_code: rejected.or(o.status),
        incomplete: d.incomplete,
        ttft_s: o.ttft_s,
        input_tokens: o.input_tokens,
        output_tokens: o.output_tokens,
        cached_input_tokens: o.cached_input_tokens,
        ..Summary::new(SummaryKind::Decision, &span)
    };
    Built { span, summary }
}

/// The outcome's figures as the summary takes them.
#[derive(Default)]
struct OutcomeFigures {
    status: Option<i64>,
    ttft_s: Option<f64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cached_input_tokens: Option<i64>,
}

fn secs(from_ns: u64, to_ns: u64) -> Option<f64> {
    (to_ns >= from_ns).then(|| (to_ns - from_ns) as f64 / 1e9)
}

/// `infertap.epp.outcome.*`: what the chosen endpoint answered. Time to first byte counts from the
/// decision (routed decisions only), time to first token from the request's arrival at the EPP.
fn put_outcome(
    d: &Decision,
    o: &Served,
    put: &mut impl FnMut(&'static str, AttrValue),
) -> OutcomeFigures {
    let status = o.status.map(i64::from);
    if let Some(code) = status {
        put(attr::INFERTAP_EPP_OUTCOME_STATUS_CODE, AttrValue::I64(code));
    }
    if d.outcome == Outcome::Routed {
        if let Some(ttfb) = o.headers_ns.and_then(|h| secs(d.end_ns, h)) {
            put(
                attr::INFERTAP_EPP_OUTCOME_TIME_TO_FIRST_BYTE,
                AttrValue::F64(ttfb),
            );
        }
    }
    let ttft_s = o.first_token_ns.and_then(|t| secs(d.start_ns, t));
    if let Some(t) = ttft_s {
        put(
            attr::INFERTAP_EPP_OUTCOME_TIME_TO_FIRST_TOKEN,
            AttrValue::F64(t),
        );
    }
    let usage = o.usage.clone().unwrap_or_default();
    for (key, v) in [
        (attr::INFERTAP_EPP_OUTCOME_INPUT_TOKENS, usage.prompt_tokens),
        (
            attr::INFERTAP_EPP_OUTCOME_OUTPUT_TOKENS,
            usage.completion_tokens,
        ),
        (
            attr::INFERTAP_EPP_OUTCOME_CACHED_INPUT_TOKENS,
            usage.cached_tokens,
        ),
    ] {
        if let Some(n) = v {
            put(key, AttrValue::I64(n));
        }
    }
    if let Some(r) = o.prefix_cache_hit_ratio() {
        put(
            attr::INFERTAP_EPP_OUTCOME_PREFIX_CACHE_HIT_RATIO,
            AttrValue::F64(r),
        );
    }
    put(
        attr::INFERTAP_EPP_OUTCOME_COMPLETE,
        AttrValue::Bool(o.complete),
    );
    OutcomeFigures {
        status,
        ttft_s,
        input_tokens: usage.prompt_tokens,
        output_tokens: usage.completion_tokens,
        cached_input_tokens: usage.cached_tokens,
    }
}
