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
        mode_override: None,
    }
}

fn empty_headers_response() -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Resp::RequestHeaders(HeadersResponse { response: None })),
        dynamic_metadata: None,
        mode_override: None,
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
    // Held for its outcome (the response phase may follow): it leaves when the stream ends.
    assert!(s
        .on_response(40 * MS, &body_response("10.0.0.5:8000, 10.0.0.6:8000"))
        .is_none());
    // Once only: a later answer makes no second decision.
    assert!(s
        .on_response(50 * MS, &body_response("10.0.0.9:8000"))
        .is_none());
    let d = s.finish(60 * MS).expect("a decision");
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
    assert_eq!(d.served, None, "no response phase flowed");
    let dump = format!("{d:?}");
    assert!(
        !dump.contains("s3cr3t") && !dump.contains("canary") && !dump.contains("authorization")
    );
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
        mode_override: None,
    };
    assert!(s.on_response(2 * MS, &resp).is_none());
    let d = s.finish(3 * MS).unwrap();
    assert_eq!(
        d.end_ns,
        2 * MS,
        "the decision's time, not the stream's end"
    );
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
            mode_override: None,
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
        served: None,
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

// ---- The routing outcome: the response phase Envoy sends the EPP ----

const COMPLETION_CANARY: &str = "completion-canary-words";

fn response_headers_msg(hs: &[(&str, &str)], end_of_stream: bool) -> ProcessingRequest {
    let mut m = headers_msg(hs, end_of_stream);
    if let Some(Req::RequestHeaders(h)) = m.request.take() {
        m.request = Some(Req::ResponseHeaders(h));
    }
    m
}

fn response_body_msg(body: &[u8], end_of_stream: bool) -> ProcessingRequest {
    let mut m = body_msg(body, end_of_stream);
    if let Some(Req::RequestBody(b)) = m.request.take() {
        m.request = Some(Req::ResponseBody(b));
    }
    m
}

/// A routed stream up to the decision at 40 ms (request headers at 10 ms).
fn routed_stream() -> ExtProcStream {
    let mut s = ExtProcStream::new();
    s.on_request(10 * MS, &headers_msg(&inner_headers(), false));
    assert!(s.on_response(11 * MS, &empty_headers_response()).is_none());
    assert!(s
        .on_request(12 * MS, &body_msg(&chat_body(), true))
        .is_none());
    assert!(s
        .on_response(40 * MS, &body_response("10.0.0.5:8000"))
        .is_none());
    s
}

/// A vLLM-shaped SSE stream: role chunk, two content chunks (the canary), usage with cached
/// tokens, `[DONE]`.
fn sse_events() -> Vec<String> {
    vec![
        r#"data: {"id":"c1","object":"chat.completion.chunk","model":"llama-3-8b","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#.to_string()
            + "\n\n",
        format!(
            r#"data: {{"id":"c1","object":"chat.completion.chunk","model":"llama-3-8b","choices":[{{"index":0,"delta":{{"content":"{COMPLETION_CANARY}"}}}}]}}"#
        ) + "\n\n",
        r#"data: {"id":"c1","object":"chat.completion.chunk","model":"llama-3-8b","choices":[{"index":0,"delta":{"content":" more"},"finish_reason":"length"}]}"#.to_string()
            + "\n\n",
        r#"data: {"id":"c1","object":"chat.completion.chunk","model":"llama-3-8b","choices":[],"usage":{"prompt_tokens":120,"completion_tokens":2,"total_tokens":122,"prompt_tokens_details":{"cached_tokens":96}}}"#.to_string()
            + "\n\n",
        "data: [DONE]\n\n".to_string(),
    ]
}

fn sse_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        (":status", "200"),
        ("content-type", "text/event-stream; charset=utf-8"),
        ("set-cookie", SECRET),
    ]
}

#[test]
fn a_streamed_response_phase_gives_the_decision_its_outcome() {
    let mut s = routed_stream();
    assert!(s
        .on_request(55 * MS, &response_headers_msg(&sse_headers(), false))
        .is_none());
    assert!(s.on_response(56 * MS, &empty_headers_response()).is_none());
    let events = sse_events();
    // The role chunk and half of the first content chunk, then the rest: message boundaries
    // fall inside SSE events, as Envoy's body chunks do.
    let all = events.concat();
    let cut = events[0].len() + 40;
    assert!(s
        .on_request(70 * MS, &response_body_msg(&all.as_bytes()[..cut], false))
        .is_none());
    assert!(s
        .on_request(90 * MS, &response_body_msg(&all.as_bytes()[cut..], false))
        .is_none());
    let d = s
        .on_request(95 * MS, &response_body_msg(b"", true))
        .expect("the response's end releases the decision");
    assert_eq!(d.outcome, Outcome::Routed);
    assert_eq!((d.start_ns, d.end_ns), (10 * MS, 40 * MS));
    let o = d.served.as_deref().expect("an outcome");
    assert_eq!(o.status, Some(200));
    assert_eq!(o.headers_ns, Some(55 * MS));
    // The first content chunk was completed by the message at 90 ms.
    assert_eq!(o.first_token_ns, Some(90 * MS));
    assert_eq!(o.end_ns, 95 * MS);
    assert!(o.streaming && o.complete);
    let u = o.usage.as_ref().unwrap();
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
        (Some(120), Some(2), Some(96))
    );
    assert_eq!(o.prefix_cache_hit_ratio(), Some(0.8));
    // Nothing more leaves the stream.
    assert!(s.finish(99 * MS).is_none());

    // The span: outcome attributes; first byte from the decision, first token from the request.
    let clock = WallClock::with_offset(0);
    let b = build_decision_span(&d, &meta(), &clock, &BuildOptions::default(), &mut Ids);
    let a = |k: &str| b.span.attr(k).cloned();
    assert_eq!(
        a("infertap.epp.outcome.status_code"),
        Some(AttrValue::I64(200))
    );
    assert_eq!(
        a("infertap.epp.outcome.time_to_first_byte"),
        Some(AttrValue::F64(0.015))
    );
    assert_eq!(
        a("infertap.epp.outcome.time_to_first_token"),
        Some(AttrValue::F64(0.08))
    );
    assert_eq!(
        a("infertap.epp.outcome.input_tokens"),
        Some(AttrValue::I64(120))
    );
    assert_eq!(
        a("infertap.epp.outcome.output_tokens"),
        Some(AttrValue::I64(2))
    );
    assert_eq!(
        a("infertap.epp.outcome.cached_input_tokens"),
        Some(AttrValue::I64(96))
    );
    assert_eq!(
        a("infertap.epp.outcome.prefix_cache_hit_ratio"),
        Some(AttrValue::F64(0.8))
    );
    assert_eq!(
        a("infertap.epp.outcome.complete"),
        Some(AttrValue::Bool(true))
    );
    // The span stays the decision's: it ends when the destination was chosen.
    assert_eq!(b.span.end_unix_nano - b.span.start_unix_nano, 30 * MS);
    assert_eq!(b.span.status, SpanStatus::Unset);
    assert_eq!(b.summary.ttft_s, Some(0.08));
    assert_eq!(b.summary.cached_input_tokens, Some(96));
    // Privacy: neither the completion text, the prompt nor the response's secret header.
    let dump = format!("{d:?}{:?}", b.span);
    for canary in [COMPLETION_CANARY, "canary text", "s3cr3t", "set-cookie"] {
        assert!(!dump.contains(canary), "{canary} leaked: {dump}");
    }
}

#[test]
fn a_whole_json_body_in_pieces_gives_status_and_usage() {
    let body = format!(
        r#"{{"id":"c2","object":"chat.completion","model":"llama-3-8b","choices":[{{"index":0,"message":{{"role":"assistant","content":"{COMPLETION_CANARY}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":50,"completion_tokens":7,"prompt_tokens_details":{{"cached_tokens":0}}}}}}"#
    );
    let b = body.as_bytes();
    for k in 1..b.len() {
        let mut s = routed_stream();
        s.on_request(
            50 * MS,
            &response_headers_msg(
                &[(":status", "200"), ("content-type", "application/json")],
                false,
            ),
        );
        assert!(s
            .on_request(60 * MS, &response_body_msg(&b[..k], false))
            .is_none());
        let d = s
            .on_request(61 * MS, &response_body_msg(&b[k..], true))
            .unwrap_or_else(|| panic!("cut at {k}: no decision"));
        let o = d.served.unwrap();
        let u = o.usage.clone().unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
            (Some(50), Some(7), Some(0)),
            "cut at {k}"
        );
        assert_eq!(o.prefix_cache_hit_ratio(), Some(0.0));
        // A whole body: its first token arrived with the response.
        assert_eq!(o.first_token_ns, Some(50 * MS));
        assert!(!o.streaming && o.complete);
        assert!(!format!("{o:?}").contains(COMPLETION_CANARY));
    }
}

#[test]
fn an_error_status_and_headers_only_responses_end_the_phase() {
    let mut s = routed_stream();
    let d = s
        .on_request(
            45 * MS,
            &response_headers_msg(&[(":status", "503"), ("content-length", "0")], true),
        )
        .expect("end of stream on the headers ends the phase");
    let o = d.served.unwrap();
    assert_eq!(
        (o.status, o.first_token_ns, o.usage),
        (Some(503), None, None)
    );
    assert!(o.complete);
    // Trailers end it too.
    let mut s = routed_stream();
    s.on_request(45 * MS, &response_headers_msg(&sse_headers(), false));
    s.on_request(
        46 * MS,
        &response_body_msg(sse_events()[1].as_bytes(), false),
    );
    let trailers = ProcessingRequest {
        request: Some(Req::ResponseTrailers(HttpTrailers { trailers: None })),
        ..headers_msg(&[], false)
    };
    let d = s
        .on_request(47 * MS, &trailers)
        .expect("the trailers end it");
    assert_eq!(d.served.unwrap().first_token_ns, Some(46 * MS));
}

#[test]
fn a_response_phase_cut_short_leaves_with_the_stream_marked_not_complete() {
    let mut s = routed_stream();
    s.on_request(45 * MS, &response_headers_msg(&sse_headers(), false));
    s.on_request(
        46 * MS,
        &response_body_msg(sse_events()[1].as_bytes(), false),
    );
    // The client went away: the stream ends before the body's end.
    let d = s
        .finish(80 * MS)
        .expect("held decisions leave at the stream's end");
    let o = d.served.unwrap();
    assert_eq!(o.first_token_ns, Some(46 * MS));
    assert!(!o.complete);
    let b = build_decision_span(
        &Decision {
            served: Some(o),
            ..d
        },
        &meta(),
        &WallClock::with_offset(0),
        &BuildOptions::default(),
        &mut Ids,
    );
    assert_eq!(
        b.span.attr("infertap.epp.outcome.complete"),
        Some(&AttrValue::Bool(false))
    );
}

#[test]
fn the_epp_skipping_the_response_phase_releases_the_decision_at_once() {
    use crate::protocol::ext_proc::messages::processing_mode as pm;
    let mut s = ExtProcStream::new();
    s.on_request(10 * MS, &headers_msg(&inner_headers(), false));
    let mut skip = empty_headers_response();
    skip.mode_override = Some(ProcessingMode {
        response_header_mode: pm::HEADER_SKIP,
        response_body_mode: pm::BODY_NONE,
        ..ProcessingMode::default()
    });
    assert!(s.on_response(11 * MS, &skip).is_none());
    s.on_request(12 * MS, &body_msg(&chat_body(), true));
    let d = s
        .on_response(40 * MS, &body_response("10.0.0.5:8000"))
        .expect("nothing can follow: the decision leaves now");
    assert_eq!((d.outcome, d.served), (Outcome::Routed, None));
    // Asking for the response headers (STREAMED body): held.
    let mut s = ExtProcStream::new();
    s.on_request(10 * MS, &headers_msg(&inner_headers(), false));
    let mut send = empty_headers_response();
    send.mode_override = Some(ProcessingMode {
        response_header_mode: pm::HEADER_SEND,
        response_body_mode: 1,
        ..ProcessingMode::default()
    });
    s.on_response(11 * MS, &send);
    s.on_request(12 * MS, &body_msg(&chat_body(), true));
    assert!(s
        .on_response(40 * MS, &body_response("10.0.0.5:8000"))
        .is_none());
}

#[test]
fn a_body_without_response_headers_is_read_by_its_first_bytes() {
    let mut s = routed_stream();
    let all = sse_events().concat();
    s.on_request(60 * MS, &response_body_msg(all.as_bytes(), false));
    let d = s
        .on_request(61 * MS, &response_body_msg(b"", true))
        .unwrap();
    let o = d.served.unwrap();
    assert_eq!((o.status, o.headers_ns), (None, None));
    assert_eq!(o.usage.unwrap().cached_tokens, Some(96));
    assert_eq!(o.first_token_ns, Some(60 * MS));
}

#[test]
fn routed_outcomes_feed_the_per_endpoint_payoff_metrics() {
    use crate::export::metrics::RequestMetrics;
    use crate::export::prometheus::encode;
    let m = RequestMetrics::new();
    let clock = WallClock::with_offset(0);
    for (cached, ttft_ms) in [(96, 80), (0, 300)] {
        let mut d = decision(&[("x-request-id", "a")], Outcome::Routed);
        d.served = Some(Box::new(Served {
            status: Some(200),
            headers_ns: Some(140 * MS),
            first_token_ns: Some(d.start_ns + ttft_ms * MS),
            end_ns: 500 * MS,
            usage: Some(crate::protocol::openai::Usage {
                prompt_tokens: Some(120),
                completion_tokens: Some(2),
                cached_tokens: Some(cached),
            }),
            streaming: true,
            complete: true,
        }));
        m.record(
            &build_decision_span(&d, &meta(), &clock, &BuildOptions::default(), &mut Ids).summary,
        );
    }
    // Without cached tokens reported: TTFT counts, the hit ratio's counters do not.
    let mut d = decision(&[("x-request-id", "b")], Outcome::Routed);
    d.served = Some(Box::new(Served {
        first_token_ns: Some(d.start_ns + 50 * MS),
        usage: Some(crate::protocol::openai::Usage {
            prompt_tokens: Some(1000),
            ..Default::default()
        }),
        ..Served::default()
    }));
    m.record(&build_decision_span(&d, &meta(), &clock, &BuildOptions::default(), &mut Ids).summary);
    let text = encode(&m.families());
    let labels = r#"infertap_epp_endpoint="10.0.0.5:8000",gen_ai_request_model="llama-3-8b""#;
    for line in [
        format!("infertap_epp_routed_input_tokens_total{{{labels}}} 240"),
        format!("infertap_epp_routed_cached_input_tokens_total{{{labels}}} 96"),
        format!("infertap_epp_routed_time_to_first_token_seconds_count{{{labels}}} 3"),
        // 50 ms and 80 ms are within 0.1 s, 300 ms is not.
        format!(r#"infertap_epp_routed_time_to_first_token_seconds_bucket{{{labels},le="0.1"}} 2"#),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
}

#[test]
fn endpoint_labels_are_capped_with_other() {
    use crate::export::metrics::endpoints::{ENDPOINTS_MAX, OTHER};
    use crate::export::metrics::RequestMetrics;
    use crate::export::prometheus::encode;
    let m = RequestMetrics::new();
    let clock = WallClock::with_offset(0);
    for i in 0..ENDPOINTS_MAX + 5 {
        let mut d = decision(&[("x-request-id", "a")], Outcome::Routed);
        d.endpoints = vec![format!("10.1.{}.{}:8000", i / 256, i % 256)];
        m.record(
            &build_decision_span(&d, &meta(), &clock, &BuildOptions::default(), &mut Ids).summary,
        );
    }
    let text = encode(&m.families());
    let series = text
        .lines()
        .filter(|l| l.starts_with("infertap_epp_decisions_total{"))
        .count();
    assert_eq!(series, ENDPOINTS_MAX + 1, "{text}");
    assert!(text.contains(&format!(
        r#"infertap_epp_decisions_total{{infertap_epp_endpoint="{OTHER}",gen_ai_request_model="llama-3-8b"}} 5"#
    )));
}
