//! ext_proc messages → decisions → spans.

use std::collections::HashMap;

use super::*;
use crate::capture::clock::WallClock;
use crate::conn::ConnMeta;
use crate::protocol::ext_proc::messages::*;
use crate::protocol::ext_proc::processing_request::Request as Req;
use crate::protocol::ext_proc::processing_response::Response as Resp;
use crate::trace::build::{BuildOptions, IdGenerator};
use crate::trace::context::trace_id_from_request_id;
use crate::trace::decision::build_decision_span;
use crate::trace::span::{hex, AttrValue, SpanKind, SpanStatus};

const MS: u64 = 1_000_000;

fn hv(k: &str, v: &str) -> HeaderValue {
    HeaderValue {
        key: k.into(),
        value: String::new(),
        raw_value: v.as_bytes().to_vec(),
    }
}

fn headers_msg(hs: &[(&str, &str)], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Req::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: hs.iter().map(|(k, v)| hv(k, v)).collect(),
            }),
            end_of_stream,
        })),
        metadata_context: None,
        attributes: HashMap::new(),
        observability_mode: false,
    }
}

fn body_msg(body: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Req::RequestBody(HttpBody {
            body: body.to_vec(),
            end_of_stream,
        })),
        metadata_context: None,
        attributes: HashMap::new(),
        observability_mode: false,
    }
}

fn mutation(endpoint: &str) -> Option<HeaderMutation> {
    Some(HeaderMutation {
        set_headers: vec![HeaderValueOption {
            header: Some(hv(DESTINATION_HEADER, endpoint)),
            append_action: 0,
            keep_empty_value: false,
        }],
        remove_headers: vec![],
    })
}

fn body_response(endpoint: &str) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Resp::RequestBody(BodyResponse {
            response: Some(CommonResponse {
                status: 0,
                header_mutation: mutation(endpoint),
                body_mutation: None,
                clear_route_cache: true,
            }),
        })),
        dynamic_metadata: None,
    }
}

fn empty_headers_response() -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Resp::RequestHeaders(HeadersResponse { response: None })),
        dynamic_metadata: None,
    }
}

const SECRET: &str = "Bearer s3cr3t-never-copied";
const PROMPT: &str = "prompt canary text that must stay inside";

fn inner_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        (":method", "POST"),
        (":path", "/v1/chat/completions?api-version=1"),
        ("authorization", SECRET),
        ("x-request-id", "req-42"),
        ("x-gateway-inference-objective", "premium"),
        ("x-gateway-inference-fairness-id", "tenant-7"),
        ("x-slo-ttft-ms", "250"),
    ]
}

fn chat_body() -> Vec<u8> {
    format!(
        r#"{{"messages":[{{"role":"user","content":"{PROMPT}"}}],"model":"llama-3-8b","stream":true}}"#
    )
    .into_bytes()
}

#[test]
fn headers_body_then_destination_make_a_routed_decision() {
    let mut s = ExtProcStream::new();
    s.on_request(10 * MS, &headers_msg(&inner_headers(), false));
    assert!(s.on_response(11 * MS, &empty_headers_response()).is_none());
    let body = chat_body();
    let (a, b) = body.split_at(body.len() / 3);
    s.on_request(12 * MS, &body_msg(a, false));
    s.on_request(13 * MS, &body_msg(b, true));
    let d = s
        .on_response(40 * MS, &body_response("10.0.0.5:8000, 10.0.0.6:8000"))
        .expect("a decision");
    assert_eq!(d.outcome, Outcome::Routed);
    assert_eq!(d.start_ns, 10 * MS);
    assert_eq!(d.end_ns, 40 * MS);
    assert_eq!(d.endpoints, vec!["10.0.0.5:8000", "10.0.0.6:8000"]);
    assert_eq!(d.model.as_deref(), Some("llama-3-8b"));
    assert_eq!(d.header("x-request-id"), Some("req-42"));
    assert_eq!(d.header(":path"), Some("/v1/chat/completions"));
    assert_eq!(d.header("x-gateway-inference-objective"), Some("premium"));
    assert_eq!(
        d.header("x-gateway-inference-fairness-id"),
        Some("tenant-7")
    );
    let dump = format!("{d:?}");
    assert!(
        !dump.contains("s3cr3t") && !dump.contains("canary") && !dump.contains("authorization")
    );
    // Once only: a later answer (to the response headers) makes no second decision.
    assert!(s
        .on_response(50 * MS, &body_response("10.0.0.9:8000"))
        .is_none());
    assert!(s.finish(60 * MS).is_none());
}

#[test]
fn dynamic_metadata_alone_names_the_endpoint_and_subset_hints_are_read() {
    let mut s = ExtProcStream::new();
    let mut req = headers_msg(
        &[
            ("x-request-id", "r"),
            ("x-gateway-model-name-rewrite", "m-v2"),
        ],
        true,
    );
    let mut hint = Struct::default();
    hint.fields.insert(
        SUBSET_KEY.into(),
        Value {
            kind: Some(value::Kind::ListValue(ListValue {
                values: vec![Value {
                    kind: Some(value::Kind::StringValue("10.0.0.5:8000".into())),
                }],
            })),
        },
    );
    req.metadata_context = Some(Metadata {
        filter_metadata: [(SUBSET_NAMESPACE.to_string(), hint)].into_iter().collect(),
    });
    s.on_request(MS, &req);
    let mut lb = Struct::default();
    lb.fields.insert(
        DESTINATION_HEADER.into(),
        Value {
            kind: Some(value::Kind::StringValue("10.0.0.5:8000".into())),
        },
    );
    let mut md = Struct::default();
    md.fields.insert(
        LB_NAMESPACE.into(),
        Value {
            kind: Some(value::Kind::StructValue(lb)),
        },
    );
    let resp = ProcessingResponse {
        response: Some(Resp::RequestHeaders(HeadersResponse { response: None })),
        dynamic_metadata: Some(md),
    };
    let d = s.on_response(2 * MS, &resp).unwrap();
    assert_eq!(d.endpoints, vec!["10.0.0.5:8000"]);
    assert_eq!(d.subset, vec!["10.0.0.5:8000"]);
    assert_eq!(d.model, None);
    assert_eq!(d.header("x-gateway-model-name-rewrite"), Some("m-v2"));
}

#[test]
fn immediate_responses_are_rejections_and_silence_is_no_decision() {
    for code in [429, 503] {
        let mut s = ExtProcStream::new();
        s.on_request(MS, &headers_msg(&inner_headers(), false));
        let resp = ProcessingResponse {
            response: Some(Resp::ImmediateResponse(ImmediateResponse {
                status: Some(HttpStatus { code }),
                headers: None,
                body: b"shed".to_vec(),
                grpc_status: None,
                details: "details".into(),
            })),
            dynamic_metadata: None,
        };
        let d = s.on_response(3 * MS, &resp).unwrap();
        assert_eq!(
            d.outcome,
            Outcome::Rejected {
                status: code as u16
            }
        );
        assert!(d.endpoints.is_empty());
    }
    let mut s = ExtProcStream::new();
    s.on_request(MS, &headers_msg(&inner_headers(), true));
    assert!(s.on_response(2 * MS, &empty_headers_response()).is_none());
    let d = s.finish(9 * MS).unwrap();
    assert_eq!(d.outcome, Outcome::None);
    assert_eq!(d.end_ns, 9 * MS);
    // A stream picked up after its request headers makes no decision at all.
    let mut late = ExtProcStream::new();
    late.on_request(MS, &body_msg(b"{}", true));
    assert!(late
        .on_response(2 * MS, &body_response("10.0.0.1:1"))
        .is_none());
    assert!(late.finish(3 * MS).is_none());
}

struct Ids;
impl IdGenerator for Ids {
    fn trace_id(&mut self) -> [u8; 16] {
        [7; 16]
    }
    fn span_id(&mut self) -> [u8; 8] {
        [9; 8]
    }
}

fn meta() -> ConnMeta {
    ConnMeta {
        pid: 99,
        local: Some("127.0.0.1:9002".parse().unwrap()),
        peer: Some("127.0.0.1:50000".parse().unwrap()),
        server: true,
        provider: "llm-d",
    }
}

fn decision(headers: &[(&'static str, &str)], outcome: Outcome) -> Decision {
    Decision {
        start_ns: 100 * MS,
        end_ns: 130 * MS,
        headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        model: Some("llama-3-8b".into()),
        endpoints: vec!["10.0.0.5:8000".into()],
        subset: vec![],
        outcome,
        incomplete: false,
    }
}

#[test]
fn decision_spans_join_the_requests_trace() {
    let clock = WallClock::with_offset(1_000_000_000);
    let opts = BuildOptions::default();
    // Without traceparent: the id derived from x-request-id (what the model server's span uses).
    let d = decision(
        &[
            ("x-request-id", "req-42"),
            ("x-gateway-inference-objective", "premium"),
            ("x-gateway-inference-fairness-id", "tenant-7"),
        ],
        Outcome::Routed,
    );
    let s = build_decision_span(&d, &meta(), &clock, &opts, &mut Ids).span;
    assert_eq!(s.trace_id, trace_id_from_request_id("req-42"));
    assert_eq!(s.parent_span_id, None);
    assert_eq!(s.name, "route llama-3-8b");
    assert_eq!(s.kind, SpanKind::Server);
    assert_eq!(s.end_unix_nano - s.start_unix_nano, 30 * MS);
    assert_eq!(s.status, SpanStatus::Unset);
    let a = |k: &str| s.attr(k).cloned();
    assert_eq!(
        a("infertap.epp.endpoint"),
        Some(AttrValue::Str("10.0.0.5:8000".into()))
    );
    assert_eq!(
        a("infertap.epp.objective"),
        Some(AttrValue::Str("premium".into()))
    );
    assert_eq!(
        a("infertap.epp.fairness_id"),
        Some(AttrValue::Str("tenant-7".into()))
    );
    assert_eq!(
        a("gen_ai.request.id"),
        Some(AttrValue::Str("req-42".into()))
    );
    assert_eq!(
        a("gen_ai.request.model"),
        Some(AttrValue::Str("llama-3-8b".into()))
    );
    assert_eq!(
        a("infertap.epp.decision"),
        Some(AttrValue::Str("routed".into()))
    );
    assert_eq!(a("rpc.method"), Some(AttrValue::Str("Process".into())));
    // With traceparent: its trace, parented on its span.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let d = decision(
        &[("x-request-id", "req-42"), ("traceparent", tp)],
        Outcome::Rejected { status: 429 },
    );
    let s = build_decision_span(&d, &meta(), &clock, &opts, &mut Ids).span;
    assert_eq!(hex(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        s.parent_span_id.map(|p| hex(&p)),
        Some("00f067aa0ba902b7".into())
    );
    assert_eq!(s.status, SpanStatus::Error("429".into()));
    assert_eq!(
        s.attr("http.response.status_code"),
        Some(&AttrValue::I64(429))
    );
    assert_eq!(s.attr("error.type"), Some(&AttrValue::Str("429".into())));
}

#[test]
fn decision_spans_feed_the_routing_metrics() {
    use crate::export::metrics::RequestMetrics;
    use crate::export::prometheus::encode;
    let clock = WallClock::with_offset(0);
    let opts = BuildOptions::default();
    let m = RequestMetrics::new();
    for _ in 0..3 {
        let d = decision(&[("x-request-id", "a")], Outcome::Routed);
        m.record(&build_decision_span(&d, &meta(), &clock, &opts, &mut Ids).summary);
    }
    let d = decision(&[("x-request-id", "b")], Outcome::Rejected { status: 429 });
    m.record(&build_decision_span(&d, &meta(), &clock, &opts, &mut Ids).summary);
    let text = encode(&m.families());
    assert!(
        text.contains(
            r#"infertap_epp_decisions_total{infertap_epp_endpoint="10.0.0.5:8000",gen_ai_request_model="llama-3-8b"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"infertap_epp_rejections_total{http_response_status_code="429",gen_ai_request_model="llama-3-8b"} 1"#),
        "{text}"
    );
    assert!(text.contains(
        r#"infertap_epp_decision_duration_seconds_count{infertap_epp_decision="routed",gen_ai_request_model="llama-3-8b"} 3"#
    ));
    // 30 ms decisions fall in the 0.05 s bucket, not the 0.025 s one.
    assert!(text.contains(
        r#"infertap_epp_decision_duration_seconds_bucket{infertap_epp_decision="routed",gen_ai_request_model="llama-3-8b",le="0.025"} 0"#
    ));
    // A decision is not an HTTP request: the HTTP histogram stays empty, request ids are no label.
    assert!(!text.contains("http_server_request_duration_seconds_count"));
    assert!(!text.contains("\"a\""));
}
