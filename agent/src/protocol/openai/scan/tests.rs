use super::*;
use crate::protocol::json_scan::{Kind, ScanError, Scanner, MAX_DEPTH, STRING_MAX};
use crate::protocol::openai::{self, oracle};
use proptest::prelude::*;
use serde_json::Value;

// ---- helpers -------------------------------------------------------------------------

/// The typed fields and every value of the table (compared whole: `RequestFields` holds both).
fn scan_request(feeds: &[&[u8]]) -> (RequestFields, Result<(), ScanError>) {
    let mut s = RequestScan::new();
    for f in feeds {
        s.feed(f);
    }
    let r = s.finish();
    (s.fields(), r)
}

fn scan_response(feeds: &[&[u8]]) -> (ResponseFields, Result<(), ScanError>) {
    let mut s = ResponseScan::new();
    for f in feeds {
        s.feed(f);
    }
    let r = s.finish();
    (s.fields(), r)
}

/// Offsets to split a body at: all of them for small bodies, the two ends and a stride
/// for large ones.
fn offsets(len: usize) -> Vec<usize> {
    if len <= 4096 {
        return (0..=len).collect();
    }
    (0..=1024)
        .chain((1024..len - 1024).step_by(331))
        .chain(len - 1024..=len)
        .collect()
}

/// The result of one feed, checked equal to every two-feed split and to one byte at a time.
fn replay<T: PartialEq + std::fmt::Debug>(body: &[u8], scan: impl Fn(&[&[u8]]) -> T) -> T {
    let whole = scan(&[body]);
    for at in offsets(body.len()) {
        let (a, b) = body.split_at(at);
        assert_eq!(scan(&[a, b]), whole, "split at {at}");
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(scan(&bytes), whole, "one byte at a time");
    whole
}

fn bounded(s: &str) -> (String, bool) {
    let mut end = s.len().min(STRING_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_string(), s.len() > STRING_MAX)
}

/// The request fields serde_json reads: the named ones by hand, and every value of the table.
fn expect_request(v: &Value) -> RequestFields {
    let model = v.get("model").and_then(Value::as_str).map(bounded);
    let int = |p: &str| v.pointer(p).and_then(Value::as_i64);
    let float = |p: &str| v.pointer(p).and_then(Value::as_f64);
    // Other APIs' names: the Responses API's, TGI's `parameters`, SGLang's `sampling_params`.
    let max_tokens = int("/max_tokens")
        .or(int("/max_output_tokens"))
        .or(int("/parameters/max_new_tokens"))
        .or(int("/sampling_params/max_new_tokens"));
    let max_completion_tokens = int("/max_completion_tokens");
    let mut values = oracle::values(Body::Request, v);
    values.normalise();
    RequestFields {
        model: model.map(|m| m.0),
        stream: v.get("stream").and_then(Value::as_bool),
        include_usage: v
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool),
        max_tokens: max_completion_tokens.or(max_tokens),
        temperature: float("/temperature")
            .or(float("/parameters/temperature"))
            .or(float("/sampling_params/temperature")),
        top_p: float("/top_p")
            .or(float("/parameters/top_p"))
            .or(float("/sampling_params/top_p")),
        n: v.get("n").and_then(Value::as_i64),
        values,
    }
}

fn non_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

const OUTPUT_POINTERS: [&str; 9] = [
    "/message/content",
    "/message/reasoning_content",
    "/message/reasoning",
    "/message/tool_calls",
    "/text",
    "/delta/content",
    "/delta/reasoning_content",
    "/delta/reasoning",
    "/delta/tool_calls",
];

fn expect_response(v: &Value) -> ResponseFields {
    let choices = v
        .get("choices")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| bounded(s).0);
    let int = |p: &str| v.pointer(p).and_then(Value::as_i64);
    let mut finish_reasons: Vec<String> = choices
        .iter()
        .filter_map(|c| text(c.get("finish_reason")))
        .collect();
    if finish_reasons.is_empty() {
        // Other APIs' finish reason: the Responses API's (incomplete reason, else a final
        // status), Anthropic's, TGI's, SGLang's.
        let status = text(v.get("status"))
            .filter(|s| ["completed", "incomplete", "failed", "cancelled"].contains(&s.as_str()));
        finish_reasons.extend(
            status
                .map(|s| text(v.pointer("/incomplete_details/reason")).unwrap_or(s))
                .or(text(v.get("stop_reason")))
                .or(text(v.pointer("/details/finish_reason")))
                .or(text(v.pointer("/meta_info/finish_reason/type"))),
        );
    }
    let usage = if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        let n = |k: &str| u.pointer(k).and_then(Value::as_i64);
        let output = n("/completion_tokens").or(n("/output_tokens"));
        let cache = [
            n("/cache_read_input_tokens"),
            n("/cache_creation_input_tokens"),
        ];
        let input =
            n("/input_tokens").map(|i| cache.iter().flatten().fold(i, |a, c| a.saturating_add(*c)));
        let total = n("/total_tokens")
            .filter(|_| n("/completion_tokens").is_none() && n("/output_tokens").is_none());
        Some(Usage {
            prompt_tokens: n("/prompt_tokens").or(input).or(total),
            completion_tokens: output,
            cached_tokens: n("/prompt_tokens_details/cached_tokens")
                .or(n("/input_tokens_details/cached_tokens"))
                .or(n("/cache_read_input_tokens")),
        })
    } else if int("/details/input_length").is_some() || int("/details/generated_tokens").is_some() {
        Some(Usage {
            prompt_tokens: int("/details/input_length"),
            completion_tokens: int("/details/generated_tokens"),
            cached_tokens: None,
        })
    } else {
        let sgl = [
            int("/meta_info/prompt_tokens"),
            int("/meta_info/completion_tokens"),
            int("/meta_info/cached_tokens"),
        ];
        sgl.iter().any(Option::is_some).then(|| Usage {
            prompt_tokens: sgl[0],
            completion_tokens: sgl[1],
            cached_tokens: sgl[2],
        })
    };
    let mut values = oracle::values(Body::Response, v);
    values.normalise();
    ResponseFields {
        id: text(v.get("id")).or(text(v.pointer("/meta_info/id"))),
        model: text(v.get("model")),
        finish_reasons,
        choices_with_output: choices
            .iter()
            .filter(|c| OUTPUT_POINTERS.iter().any(|p| non_empty(c.pointer(p))))
            .count(),
        other_output: ["output", "content", "generated_text"]
            .iter()
            .any(|k| non_empty(v.get(*k)))
            || (v.get("status").is_none() && non_empty(v.get("text"))),
        usage,
        error_type: v.get("error").filter(|e| !e.is_null()).map(|e| {
            if e.is_string() {
                return text(v.get("error_type"))
                    .filter(|k| !k.is_empty())
                    .unwrap_or_else(|| "error".to_string());
            }
            match (e.get("type").and_then(Value::as_str), e.get("code")) {
                (Some(t), _) if !t.is_empty() => bounded(t).0,
                (_, Some(Value::String(s))) => bounded(s).0,
                (_, Some(Value::Number(n))) => n.to_string(),
                _ => "error".to_string(),
            }
        }),
        values,
    }
}

fn value(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("fixture is valid JSON")
}

// ---- fixtures ------------------------------------------------------------------------

const CHAT_REQUEST: &str = r#"{"messages":[{"role":"system","content":"You are a helpful assistant. Answer in \"quotes\"\\ and é, 日本語, \ud83d\ude00."},{"role":"user","content":"Say hi\nto {\"model\": \"not-this\"} and [1,2,3]"}],"model":"Qwen/Qwen2.5-0.5B-Instruct","max_completion_tokens":64,"max_tokens":10,"stream":true,"stream_options":{"include_usage":true},"temperature":0.7,"top_p":0.95,"n":1}"#;
const COMPLETIONS_REQUEST: &str = r#"{
  "model": "meta-llama/Llama-3.1-8B-Instruct",
  "prompt": "The capital of France is",
  "max_tokens": 16,
  "temperature": 0,
  "stream": false,
  "n": 2,
  "logprobs": null
}"#;
const EMBEDDINGS_REQUEST: &str = r#"{"input":["The food was delicious","and the waiter was kind"],"model":"intfloat/e5-small","encoding_format":"float"}"#;
const EMBEDDINGS_TOKENS_REQUEST: &str = r#"{"input":[[101,2023,2003,1037,3231,102],[-1,0.5,1e3]],"model":"BAAI/bge-m3","dimensions":null}"#;
const CHAT_RESPONSE: &str = r#"{"id":"chatcmpl-8f2c5d3e0b9a4c1e","object":"chat.completion","created":1733000000,"model":"Qwen/Qwen2.5-0.5B-Instruct","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! \"Hi\" \\ é \ud83d\ude00","refusal":null,"annotations":null,"audio":null,"function_call":null,"tool_calls":[],"reasoning":null,"reasoning_content":null},"logprobs":null,"finish_reason":"stop","stop_reason":null,"token_ids":null}],"service_tier":null,"system_fingerprint":null,"usage":{"prompt_tokens":31,"total_tokens":52,"completion_tokens":21,"prompt_tokens_details":{"cached_tokens":16}},"prompt_logprobs":null,"prompt_token_ids":null,"kv_transfer_params":null}"#;
const COMPLETIONS_RESPONSE: &str = r#"{"id":"cmpl-3b1f","object":"text_completion","created":1733000001,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"text":" Paris. It is","logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_logprobs":null},{"index":1,"text":"","logprobs":null,"finish_reason":"stop","stop_reason":null}],"service_tier":null,"system_fingerprint":null,"usage":{"prompt_tokens":6,"total_tokens":22,"completion_tokens":16,"prompt_tokens_details":null},"kv_transfer_params":null}"#;
const ERROR_RESPONSE: &str = r#"{"error":{"message":"The model `gpt-x` does not exist.","type":"NotFoundError","param":"model","code":404}}"#;
const ERROR_NO_TYPE: &str = r#"{"error":{"message":"bad","type":"","param":null,"code":400}}"#;
// Other APIs (the same bodies as `agent/tests/fixtures/apis`, from each server's documentation).
const RESPONSES_REQUEST: &str = r#"{"model":"Qwen/Qwen3-0.6B","input":[{"role":"user","content":"tell me a story"}],"instructions":"Be brief.","max_output_tokens":128,"temperature":0.6,"top_p":0.95,"stream":true,"reasoning":{"effort":"low"}}"#;
const MESSAGES_REQUEST: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"system":"You are terse.","messages":[{"role":"user","content":[{"type":"text","text":"Hello, Claude"}]}],"stream":true,"temperature":1.0}"#;
const TGI_REQUEST: &str = r#"{"inputs":"What is Deep Learning?","parameters":{"max_new_tokens":20,"temperature":0.5,"top_p":0.9,"do_sample":true}}"#;
const SGLANG_REQUEST: &str = r#"{"text":"The capital of France is","sampling_params":{"temperature":0,"max_new_tokens":32,"top_p":1.0},"stream":true}"#;
const RESPONSES_RESPONSE: &str = r#"{"id":"resp_67ccd2bed1ec8190","object":"response","created_at":1741476542,"status":"incomplete","error":null,"incomplete_details":{"reason":"max_output_tokens"},"instructions":null,"max_output_tokens":16,"model":"Qwen/Qwen3-0.6B","output":[{"type":"message","id":"msg_67cc","status":"incomplete","role":"assistant","content":[{"type":"output_text","text":"In a peaceful grove","annotations":[]}]}],"reasoning":{"effort":null,"summary":null},"temperature":1.0,"text":{"format":{"type":"text"}},"top_p":1.0,"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":16,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":52},"user":null,"metadata":{}}"#;
const RESPONSES_FAILED: &str = r#"{"id":"resp_2","object":"response","status":"failed","error":{"code":"server_error","message":"boom"},"incomplete_details":null,"model":"m","output":[],"text":{"format":{"type":"text"}},"usage":null}"#;
const MESSAGES_RESPONSE: &str = r#"{"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi! My name is Claude."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":2095,"output_tokens":503,"cache_creation_input_tokens":7,"cache_read_input_tokens":1024}}"#;
const MESSAGES_ERROR: &str =
    r#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-x"}}"#;
const TGI_RESPONSE: &str = r#"{"generated_text":"Deep learning is a","details":{"finish_reason":"length","generated_tokens":4,"seed":null,"prefill":[],"tokens":[{"id":1939,"text":"Deep","logprob":-0.59,"special":false}]}}"#;
const TGI_LAST_EVENT: &str = r#"{"index":3,"token":{"id":2,"text":"</s>","logprob":-0.01,"special":true},"generated_text":"Deep learning","details":{"finish_reason":"eos_token","generated_tokens":3,"seed":null,"input_length":7}}"#;
const TGI_ERROR: &str = r#"{"error":"Input validation error: too long","error_type":"validation"}"#;
const SGLANG_RESPONSE: &str = r#"{"text":" Paris. It is the largest city","output_ids":[12095,13,1084],"meta_info":{"id":"0c4a1f5e9d","finish_reason":{"type":"stop","matched":2},"prompt_tokens":6,"weight_version":"default","completion_tokens":8,"cached_tokens":1,"e2e_latency":0.21}}"#;
const RERANK_RESPONSE: &str = r#"{"id":"rerank-5d2b","model":"BAAI/bge-reranker-base","usage":{"total_tokens":56},"results":[{"index":1,"document":{"text":"The capital of France is Paris."},"relevance_score":0.999}]}"#;
const TRANSCRIPTION_RESPONSE: &str =
    r#"{"text":"The quick brown fox.","usage":{"type":"duration","seconds":3}}"#;
// Server-reported phases: vLLM's per-request `metrics`, llama.cpp's `timings`.
const VLLM_METRICS_RESPONSE: &str = r#"{"id":"chatcmpl-9","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7},"metrics":{"time_to_first_token_ms":31.5,"generation_time_ms":12.25,"queue_time_ms":4,"mean_itl_ms":12.25,"tokens_per_second":163.3,"output_token_metrics":{"reasoning":{"token_count":1,"time_to_first_token_ms":31.5},"content":{"token_count":1,"time_to_first_token_ms":43.7},"unclassified_token_count":0}}}"#;
const LLAMA_CPP_RESPONSE: &str = r#"{"choices":[{"finish_reason":"stop","index":0,"message":{"role":"assistant","content":"Hello"}}],"created":1733000000,"model":"gpt-3.5-turbo","system_fingerprint":"b4600","object":"chat.completion","usage":{"completion_tokens":35,"prompt_tokens":237,"total_tokens":272},"id":"chatcmpl-zQ6","timings":{"cache_n":236,"prompt_n":1,"prompt_ms":30.958,"prompt_per_token_ms":30.958,"prompt_per_second":32.3,"predicted_n":35,"predicted_ms":661.064,"predicted_per_token_ms":18.887,"predicted_per_second":52.945}}"#;
// llm-d's routing sidecar: the prefill leg, then the decode leg with the prefill's answer.
const PD_PREFILL_REQUEST: &str = r#"{"model":"meta-llama/Llama-3.1-8B-Instruct","prompt":"Hello","max_tokens":1,"stream":false,"kv_transfer_params":{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}}"#;
const PD_DECODE_REQUEST: &str = r#"{"model":"meta-llama/Llama-3.1-8B-Instruct","prompt":"Hello","max_tokens":64,"stream":true,"kv_transfer_params":{"do_remote_decode":false,"do_remote_prefill":true,"remote_engine_id":"3f0a","remote_block_ids":[1,2,3],"remote_host":"10.0.0.7","remote_port":5600,"tp_size":1}}"#;
const OTHER_REQUESTS: [&str; 6] = [
    RESPONSES_REQUEST,
    MESSAGES_REQUEST,
    TGI_REQUEST,
    SGLANG_REQUEST,
    PD_PREFILL_REQUEST,
    PD_DECODE_REQUEST,
];
const OTHER_RESPONSES: [&str; 12] = [
    VLLM_METRICS_RESPONSE,
    LLAMA_CPP_RESPONSE,
    RESPONSES_RESPONSE,
    RESPONSES_FAILED,
    MESSAGES_RESPONSE,
    MESSAGES_ERROR,
    TGI_RESPONSE,
    TGI_LAST_EVENT,
    TGI_ERROR,
    SGLANG_RESPONSE,
    RERANK_RESPONSE,
    TRANSCRIPTION_RESPONSE,
];
const CHUNKS: [&str; 6] = [
    r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
    r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":"stop"}]}"#,
    r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8,"prompt_tokens_details":{"cached_tokens":2}}}"#,
    r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" a","logprobs":null,"finish_reason":null}],"usage":null}"#,
    r#"{"error":{"message":"boom","type":"InternalServerError","param":null,"code":500}}"#,
    r#"{"id":"chatcmpl-2","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"reasoning_content":"think","reasoning":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}"#,
];

/// A ~200 KB prompt full of escapes and non-ASCII text.
fn big_text() -> String {
    let piece = "Line with \"quotes\", a back\\slash, tab\t, é, 日本語, emoji 😀, control \u{1}, </script> ";
    piece.repeat(200_000 / piece.len() + 1)
}

fn big_chat_request() -> Vec<u8> {
    let messages = serde_json::json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": big_text(), "model": "nested-not-this"},
    ]);
    format!(
        r#"{{"messages":{messages},"model":"big-model","stream":false,"max_tokens":512,"temperature":1.0,"top_p":1,"n":1}}"#
    )
    .into_bytes()
}

fn big_chat_response() -> Vec<u8> {
    let content = serde_json::to_string(&big_text()).unwrap();
    format!(
        r#"{{"id":"chatcmpl-big","object":"chat.completion","created":1,"model":"big-model","choices":[{{"index":0,"message":{{"role":"assistant","content":{content},"tool_calls":[]}},"logprobs":null,"finish_reason":"length"}}],"usage":{{"prompt_tokens":9000,"total_tokens":59000,"completion_tokens":50000,"prompt_tokens_details":{{"cached_tokens":8192}}}},"prompt_logprobs":null,"prompt_token_ids":null,"kv_transfer_params":null}}"#
    )
    .into_bytes()
}

// ---- fixtures replayed ---------------------------------------------------------------

#[test]
fn request_fixtures_match_serde_at_every_split() {
    for body in [
        CHAT_REQUEST,
        COMPLETIONS_REQUEST,
        EMBEDDINGS_REQUEST,
        EMBEDDINGS_TOKENS_REQUEST,
    ]
    .into_iter()
    .chain(OTHER_REQUESTS)
    {
        let (got, r) = replay(body.as_bytes(), scan_request);
        assert_eq!(r, Ok(()), "{body}");
        assert_eq!(got, expect_request(&value(body.as_bytes())), "{body}");
        assert_eq!(Some(got), oracle::parse_request(body.as_bytes()), "{body}");
    }
    let (chat, _) = scan_request(&[CHAT_REQUEST.as_bytes()]);
    assert_eq!(chat.model.as_deref(), Some("Qwen/Qwen2.5-0.5B-Instruct"));
    assert_eq!(chat.max_tokens, Some(64), "max_completion_tokens wins");
}

#[test]
fn response_fixtures_match_serde_at_every_split() {
    for body in [
        CHAT_RESPONSE,
        COMPLETIONS_RESPONSE,
        ERROR_RESPONSE,
        ERROR_NO_TYPE,
    ]
    .into_iter()
    .chain(OTHER_RESPONSES)
    {
        let (got, r) = replay(body.as_bytes(), scan_response);
        assert_eq!(r, Ok(()), "{body}");
        let fields = got;
        assert_eq!(fields, expect_response(&value(body.as_bytes())), "{body}");
        assert_eq!(
            Some(fields),
            oracle::parse_response(body.as_bytes()),
            "{body}"
        );
    }
    let (chat, _) = scan_response(&[CHAT_RESPONSE.as_bytes()]);
    let usage = Usage {
        prompt_tokens: Some(31),
        completion_tokens: Some(21),
        cached_tokens: Some(16),
    };
    assert_eq!(chat.usage, Some(usage));
    assert_eq!(
        scan_response(&[ERROR_RESPONSE.as_bytes()])
            .0
            .error_type
            .as_deref(),
        Some("NotFoundError")
    );
    assert_eq!(
        scan_response(&[ERROR_NO_TYPE.as_bytes()])
            .0
            .error_type
            .as_deref(),
        Some("400")
    );
}

#[test]
fn server_phases_read_alike_from_bodies_and_stream_chunks() {
    for body in [VLLM_METRICS_RESPONSE, LLAMA_CPP_RESPONSE] {
        let (got, _) = replay(body.as_bytes(), scan_response);
        let scanned = got.values.server_phases().expect("phases");
        let chunk = openai::parse_stream_chunk(body.as_bytes()).unwrap();
        assert_eq!(Some(&scanned), chunk.phases.as_deref(), "{body}");
        // Stored from a chunk, read back the same.
        let mut v = super::Values::new(Body::Response);
        v.apply_stream(
            chunk.id.as_deref(),
            chunk.model.as_deref(),
            &chunk.finish_reasons,
            chunk.usage.as_ref(),
            chunk.phases.as_deref(),
        );
        assert_eq!(v.server_phases(), Some(scanned));
    }
    let (vllm, _) = scan_response(&[VLLM_METRICS_RESPONSE.as_bytes()]);
    let p = vllm.values.server_phases().unwrap();
    assert_eq!(
        (p.queue_ms, p.prefill_ms, p.decode_ms, p.reasoning_tokens),
        (Some(4.0), Some(31.5), Some(12.25), Some(1))
    );
    let (none, _) = scan_response(&[CHAT_RESPONSE.as_bytes()]);
    assert_eq!(none.values.server_phases(), None);
}

#[test]
fn stream_chunks_match_openai_chunk_parser() {
    for chunk in CHUNKS {
        let (got, r) = replay(chunk.as_bytes(), scan_response);
        assert_eq!(r, Ok(()));
        let c = openai::parse_stream_chunk(chunk.as_bytes()).unwrap();
        assert_eq!(got.choices_with_output > 0, c.has_content, "{chunk}");
        assert_eq!(got.finish_reasons, c.finish_reasons);
        assert_eq!(got.usage, c.usage);
        assert_eq!(got.error_type, c.error_type);
        assert_eq!(
            (got.id.as_deref(), got.model.as_deref()),
            (c.id.as_deref(), c.model.as_deref())
        );
    }
}

#[test]
fn model_after_a_200_kb_messages_array() {
    let body = big_chat_request();
    assert!(body.len() > 200_000);
    let (got, r) = replay(&body, scan_request);
    assert_eq!(r, Ok(()));
    assert_eq!(got.model.as_deref(), Some("big-model"));
    assert_eq!(got, expect_request(&value(&body)));
    assert_eq!(Some(got), oracle::parse_request(&body));
}

#[test]
fn usage_at_the_end_of_a_200_kb_response() {
    let body = big_chat_response();
    let (got, r) = replay(&body, scan_response);
    assert_eq!(r, Ok(()));
    let fields = got;
    assert_eq!(
        fields.usage.as_ref().and_then(|u| u.completion_tokens),
        Some(50_000)
    );
    assert_eq!(fields, expect_response(&value(&body)));
    assert_eq!(Some(fields), oracle::parse_response(&body));
}

// ---- adversarial ---------------------------------------------------------------------

#[test]
fn deep_nesting_gives_up_without_panic() {
    let mut body = br#"{"model":"m","x":"#.to_vec();
    body.extend(std::iter::repeat_n(b'[', 10_000));
    let (got, r) = scan_request(&[&body]);
    assert!(matches!(r, Err(ScanError::TooDeep { .. })), "{r:?}");
    assert_eq!(
        got.model.as_deref(),
        Some("m"),
        "fields before the error stay"
    );
    // The same limit as serde_json: 127 levels parse, 128 do not.
    for depth in [126, 127, 128] {
        let body = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        );
        let ours = scan_request(&[body.as_bytes()]).1.is_ok();
        assert_eq!(
            ours,
            serde_json::from_str::<Value>(&body).is_ok(),
            "depth {depth}"
        );
        assert_eq!(ours, depth <= MAX_DEPTH);
    }
}

#[test]
fn huge_and_odd_numbers() {
    let big = "9".repeat(1000);
    let body = format!(
        r#"{{"max_tokens":{big},"n":9223372036854775808,"temperature":1e400,"top_p":-0.5e-2,"x":[{big}.{big}e-{big}],"model":"m"}}"#
    );
    let (got, r) = replay(body.as_bytes(), scan_request);
    assert_eq!(r, Ok(()));
    assert_eq!((got.max_tokens, got.n, got.temperature), (None, None, None));
    assert_eq!(got.top_p, Some(-0.005));
    assert_eq!(got.model.as_deref(), Some("m"));
    assert_eq!(
        scan_request(&[br#"{"n":-9223372036854775808}"#]).0.n,
        Some(i64::MIN)
    );
    assert_eq!(
        scan_request(&[br#"{"n":2.0}"#]).0.n,
        None,
        "integers only, like serde_json"
    );
    for n in ["-0", "0", "-1", "18446744073709551615"] {
        let body = format!(r#"{{"n":{n}}}"#);
        assert_eq!(
            scan_request(&[body.as_bytes()]).0,
            expect_request(&value(body.as_bytes())),
            "{n}"
        );
    }
}

#[test]
fn invalid_utf8_inside_strings() {
    let mut body = br#"{"messages":[{"content":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0xc3, b'x', 0xe6, 0x97]);
    body.extend_from_slice(br#""}],"model":"a"#);
    body.extend_from_slice(&[0xff]);
    body.extend_from_slice(br#"b","stream":true}"#);
    let (got, r) = replay(&body, scan_request);
    assert_eq!(r, Ok(()));
    assert_eq!(got.model.as_deref(), Some("a\u{FFFD}b"));
    assert_eq!(got.stream, Some(true));
}

#[test]
fn truncated_bodies_keep_what_was_complete() {
    let body = CHAT_REQUEST.as_bytes();
    let model_end = CHAT_REQUEST.find("Instruct\"").unwrap() + "Instruct\"".len();
    for at in 0..body.len() {
        let (got, r) = scan_request(&[&body[..at]]);
        assert_eq!(r, Err(ScanError::Truncated), "at {at}");
        assert_eq!(got.model.is_some(), at >= model_end, "at {at}");
    }
    let (_, r) = scan_response(&[&CHAT_RESPONSE.as_bytes()[..CHAT_RESPONSE.len() - 1]]);
    assert_eq!(r, Err(ScanError::Truncated));
}

#[test]
fn trailing_bytes_and_non_objects() {
    assert_eq!(scan_request(&[b"{} \r\n\t"]).1, Ok(()));
    assert_eq!(
        scan_request(&[b"{}", b" x"]).1,
        Err(ScanError::TrailingData { offset: 3 })
    );
    assert_eq!(
        scan_request(&[b"{}{}"]).1,
        Err(ScanError::TrailingData { offset: 2 })
    );
    for body in [&b"[1]"[..], b"\"x\"", b"1", b"null", b"\xef\xbb\xbf{}"] {
        assert_eq!(scan_request(&[body]).1, Err(ScanError::NotObject));
    }
    let (got, r) = scan_request(&[br#"{"model":"m"} garbage"#]);
    assert!(r.is_err());
    assert_eq!(got.model.as_deref(), Some("m"));
}

#[test]
fn syntax_errors_agree_with_serde() {
    let bad: &[&str] = &[
        r#"{"a":01}"#,
        r#"{"a":1.}"#,
        r#"{"a":-}"#,
        r#"{"a":1e}"#,
        r#"{"a":1e+}"#,
        r#"{"a":.5}"#,
        r#"{"a":+1}"#,
        r#"{"a":tru}"#,
        r#"{"a":nul1}"#,
        r#"{"a" 1}"#,
        r#"{,}"#,
        r#"{"a":1,}"#,
        r#"{"a":[1,]}"#,
        r#"{"a":[1 2]}"#,
        r#"{"a":tr ue}"#,
        r#"{"a":-1 .5}"#,
        r#"{"a":{]}"#,
        r#"{"a":[}"#,
        r#"{"a":"\x"}"#,
        r#"{"a":"\u12g4"}"#,
        r#"{a:1}"#,
        r#"{"a":1 "b":2}"#,
        "{\"a\":1}}",
    ];
    for body in bad {
        assert!(serde_json::from_str::<Value>(body).is_err(), "{body}");
        assert!(replay(body.as_bytes(), scan_request).1.is_err(), "{body}");
    }
    let good: &[&str] = &[
        r#"{"a":-0.0e+5,"b":[[],{}],"c":"\/\b\f\n\r\t\u00e9"}"#,
        " {\n} ",
        r#"{"":0}"#,
    ];
    for body in good {
        assert!(serde_json::from_str::<Value>(body).is_ok(), "{body}");
        assert_eq!(replay(body.as_bytes(), scan_request).1, Ok(()), "{body}");
    }
}

#[test]
fn keys_at_the_wrong_depth_are_not_taken() {
    let body = br#"{"messages":[{"role":"user","model":"inner","stream":true,"content":"x"}],"metadata":{"model":"meta","n":3},"stream_options":{"stream":true,"model":"so"},"extra":[{"usage":{"prompt_tokens":1}}]}"#;
    let (got, r) = replay(body, scan_request);
    assert_eq!(r, Ok(()));
    // Only `stream_options` itself is at its place (an object: a marker, no value).
    let mut only = Values::new(Body::Request);
    only.set(
        fields::id(Body::Request, "stream_options"),
        super::Value::Present(Kind::Object),
    );
    assert_eq!(got, only.request_fields());
    assert_eq!(got, expect_request(&value(body)));
    let body = br#"{"choices":[{"usage":{"prompt_tokens":1},"id":"x","message":{"message":{"content":"y"}}}],"data":{"id":"z","choices":[{"text":"t"}]},"usage":{"completion_tokens":{"prompt_tokens":5}}}"#;
    let (got, _) = replay(body, scan_response);
    let fields = got;
    assert_eq!(fields, expect_response(&value(body)));
    assert_eq!((fields.id, fields.choices_with_output), (None, 0));
    assert_eq!(fields.usage, Some(Usage::default()));
}

#[test]
fn duplicate_keys_last_wins_like_serde_value() {
    let bodies: &[&str] = &[
        r#"{"model":"a","model":"b"}"#,
        r#"{"model":"a","model":5}"#,
        r#"{"model":"a","model":{"x":"y"}}"#,
        r#"{"stream_options":{"include_usage":true},"stream_options":null}"#,
        r#"{"stream_options":{"include_usage":true,"include_usage":false}}"#,
        r#"{"max_tokens":3,"max_tokens":null,"n":1,"n":2}"#,
    ];
    for body in bodies {
        assert_eq!(
            replay(body.as_bytes(), scan_request).0,
            expect_request(&value(body.as_bytes())),
            "{body}"
        );
    }
    let bodies: &[&str] = &[
        r#"{"choices":[{"text":"a","finish_reason":"stop"}],"choices":[{"text":"","finish_reason":"length"},{"text":"b"}]}"#,
        r#"{"choices":[{"text":"a","text":"","message":{"content":"x"},"message":{"content":null}}]}"#,
        r#"{"usage":{"prompt_tokens":1},"usage":null}"#,
        r#"{"usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":1},"prompt_tokens_details":{}}}"#,
        r#"{"error":{"type":"A"},"error":{"code":"c"}}"#,
        r#"{"error":{"type":"A"},"error":null}"#,
        r#"{"error":"plain text"}"#,
        r#"{"choices":[{"finish_reason":"stop","finish_reason":null}]}"#,
    ];
    for body in bodies {
        let got = replay(body.as_bytes(), scan_response).0;
        assert_eq!(got, expect_response(&value(body.as_bytes())), "{body}");
    }
}

#[test]
fn canary_in_content_is_never_captured() {
    const CANARY: &str = "CANARY-7f3a9c";
    let request = format!(
        r#"{{"messages":[{{"role":"user","content":"{CANARY} {CANARY}","{CANARY}":"{CANARY}"}}],"model":"m","prompt":"{CANARY}","tools":[{{"function":{{"name":"{CANARY}"}}}}],"stream_options":{{"{CANARY}":1}}}}"#
    );
    let response = format!(
        r#"{{"id":"c","choices":[{{"message":{{"content":"{CANARY}","tool_calls":[{{"id":"{CANARY}"}}]}},"text":"{CANARY}","delta":{{"content":"{CANARY}"}}}}],"usage":{{"{CANARY}":"{CANARY}"}},"error":{{"message":"{CANARY}","type":"t"}}}}"#
    );
    for cut in [request.len() / 2, request.len()] {
        let mut s = RequestScan::new();
        s.feed(&request.as_bytes()[..cut]);
        let printed = format!("{s:?} {:?} {:?}", s.fields(), s.clone().into_fields());
        assert!(!printed.contains(CANARY), "{printed}");
    }
    for cut in [response.len() / 2, response.len()] {
        let mut s = ResponseScan::new();
        s.feed(&response.as_bytes()[..cut]);
        let printed = format!("{s:?} {:?} {:?}", s.fields(), s.clone().into_fields());
        assert!(!printed.contains(CANARY), "{printed}");
    }
    // Events carry no content either.
    let mut events = String::new();
    let mut scanner = Scanner::new(&Layout::of(Body::Response).patterns);
    scanner.feed(response.as_bytes(), &mut |e| {
        events.push_str(&format!("{e:?}\n"))
    });
    assert!(!events.contains(CANARY), "{events}");
    assert!(events.contains("NonEmpty"), "{events}");
}

#[test]
fn long_strings_are_bounded_and_flagged() {
    for model in [
        "x".repeat(300),
        format!("{}é tail", "y".repeat(255)),
        "z".repeat(256),
    ] {
        let body = serde_json::json!({"model": model}).to_string();
        let (got, _) = replay(body.as_bytes(), scan_request);
        assert_eq!(got, expect_request(&value(body.as_bytes())));
        assert_eq!(
            got.values.get(id::MODEL),
            &oracle::string(&model),
            "cut and flagged"
        );
        assert_eq!(
            matches!(
                got.values.get(id::MODEL),
                super::Value::Str {
                    truncated: true,
                    ..
                }
            ),
            model.len() > STRING_MAX
        );
        assert_eq!(Some(got), oracle::parse_request(body.as_bytes()));
    }
}

#[test]
fn escapes_in_keys_and_values() {
    let body =
        br#"{"mod\u0065l":"\ud83d\ude00 \u00e9\"\\\/","str\u0065am":true,"max\u005ftokens":5}"#;
    let (got, r) = replay(body, scan_request);
    assert_eq!(r, Ok(()));
    assert_eq!(got, expect_request(&value(body)));
    assert_eq!(got.model.as_deref(), Some("😀 é\"\\/"));
    // Lone surrogates: replaced, not an error.
    let (got, r) = replay(br#"{"model":"a\ud83db\ude00c\ud83d\u0041"}"#, scan_request);
    assert_eq!(r, Ok(()));
    assert_eq!(got.model.as_deref(), Some("a\u{FFFD}b\u{FFFD}c\u{FFFD}A"));
}

#[test]
fn gap_stops_the_scan_and_keeps_fields() {
    let mut s = RequestScan::new();
    s.feed(br#"{"model":"m","messages":[{"content":"abc"#);
    s.gap();
    s.feed(br#"","stream":true}"#);
    assert_eq!(s.finish(), Err(ScanError::Gap));
    assert_eq!(s.fields().model.as_deref(), Some("m"));
    assert_eq!(s.fields().stream, None);
}

#[test]
fn the_table_compiles_to_patterns() {
    for body in [Body::Request, Body::Response] {
        let layout = Layout::of(body);
        assert_eq!(
            layout.ids.len(),
            FIELDS.iter().filter(|f| f.body == body).count()
        );
    }
    // Rows nest one level only: no row marker under another.
    for (i, f) in FIELDS.iter().enumerate() {
        if fields::is_row(f) {
            assert_eq!(Layout::of(f.body).row[i], None, "{}", f.path);
        }
    }
}

/// The fixtures give every field of the table a value: a field added to the table needs one
/// here (in a fixture body), and is then checked against serde_json at every split.
#[test]
fn every_field_is_in_a_fixture() {
    let mut seen = vec![false; FIELDS.len()];
    let requests = [
        CHAT_REQUEST,
        COMPLETIONS_REQUEST,
        EMBEDDINGS_REQUEST,
        EMBEDDINGS_TOKENS_REQUEST,
    ];
    let responses = [
        CHAT_RESPONSE,
        COMPLETIONS_RESPONSE,
        ERROR_RESPONSE,
        ERROR_NO_TYPE,
        CHUNKS[0],
        CHUNKS[1],
        CHUNKS[2],
        CHUNKS[3],
        CHUNKS[4],
        CHUNKS[5],
    ];
    let raw = |body: Body, b: &str| {
        // Before `normalise`: each API's own paths must be seen where they are.
        oracle::values(body, &value(b.as_bytes()))
    };
    let request_values: Vec<_> = requests
        .iter()
        .chain(&OTHER_REQUESTS)
        .map(|b| raw(Body::Request, b))
        .collect();
    let response_values: Vec<_> = responses
        .iter()
        .chain(&OTHER_RESPONSES)
        .map(|b| raw(Body::Response, b))
        .collect();
    for v in request_values.iter().chain(&response_values) {
        for (id, f) in FIELDS.iter().enumerate() {
            let found = if fields::is_row(f) {
                !v.rows(id).rows.is_empty()
            } else {
                v.all(id).any(|x| *x != super::Value::Absent)
            };
            seen[id] |= f.body == v.body() && found;
        }
    }
    for (id, f) in FIELDS.iter().enumerate() {
        assert!(seen[id], "no fixture has `{}` ({:?})", f.path, f.body);
    }
}

// ---- property tests ------------------------------------------------------------------

const KEYS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "include_usage",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "messages",
    "content",
    "id",
    "choices",
    "finish_reason",
    "message",
    "delta",
    "text",
    "tool_calls",
    "reasoning",
    "reasoning_content",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "cached_tokens",
    "error",
    "type",
    "code",
];

/// A string literal, plainly escaped by serde_json or with every UTF-16 unit as `\uXXXX`.
fn literal(s: &str, escape_all: bool) -> String {
    if escape_all {
        let mut out = String::from("\"");
        for u in s.encode_utf16() {
            out.push_str(&format!("\\u{u:04x}"));
        }
        out + "\""
    } else {
        serde_json::to_string(s).unwrap()
    }
}

fn leaf() -> BoxedStrategy<String> {
    prop_oneof![
        Just("null".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (-1_000_000i32..1_000_000, 0i32..6)
            .prop_map(|(m, k)| serde_json::to_string(&(f64::from(m) / 10f64.powi(k))).unwrap()),
        (
            prop_oneof!["[a-z \"\\\\/]{0,8}", "\\PC{0,6}", ".{0,300}"],
            any::<bool>()
        )
            .prop_map(|(s, e)| literal(&s, e)),
    ]
    .boxed()
}

fn key(keys: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![4 => prop::sample::select(keys).prop_map(String::from), 1 => "\\PC{0,5}"].boxed()
}

fn object(
    keys: &'static [&'static str],
    value: BoxedStrategy<String>,
    max: usize,
) -> BoxedStrategy<String> {
    let sep = prop::sample::select(&[",", " , ", ",\n\t"][..]);
    (
        prop::collection::vec((key(keys), any::<bool>(), value), 0..max),
        sep,
    )
        .prop_map(|(kv, sep)| {
            let kv: Vec<String> = kv
                .iter()
                .map(|(k, e, v)| format!("{}:{v}", literal(k, *e)))
                .collect();
            format!("{{{}}}", kv.join(sep))
        })
        .boxed()
}

fn any_json() -> BoxedStrategy<String> {
    leaf()
        .prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|v| format!("[ {} ]", v.join(","))),
                object(KEYS, inner, 5),
            ]
        })
        .boxed()
}

fn request_doc() -> BoxedStrategy<String> {
    let so = object(&["include_usage", "x"], leaf(), 3);
    object(
        KEYS,
        prop_oneof![3 => leaf(), 1 => any_json(), 1 => so].boxed(),
        10,
    )
}

fn response_doc() -> BoxedStrategy<String> {
    let inner = object(
        &[
            "content",
            "reasoning",
            "reasoning_content",
            "tool_calls",
            "role",
        ],
        prop_oneof![leaf(), any_json()].boxed(),
        4,
    );
    let choice = object(
        &["finish_reason", "message", "delta", "text", "index"],
        prop_oneof![2 => leaf(), 2 => inner, 1 => any_json()].boxed(),
        5,
    );
    let choices = prop::collection::vec(choice, 0..4).prop_map(|v| format!("[{}]", v.join(",")));
    let details = object(&["cached_tokens"], leaf(), 2);
    let usage = object(
        &[
            "prompt_tokens",
            "completion_tokens",
            "prompt_tokens_details",
            "total_tokens",
        ],
        prop_oneof![3 => leaf(), 1 => details].boxed(),
        5,
    );
    let error = object(&["type", "code", "message", "param"], leaf(), 4);
    object(
        KEYS,
        prop_oneof![2 => leaf(), 2 => choices, 1 => usage, 1 => error, 1 => any_json()].boxed(),
        8,
    )
}

fn cut<'a>(body: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
    at.sort_unstable();
    let mut feeds = Vec::new();
    let mut prev = 0;
    for a in at {
        feeds.push(&body[prev..a]);
        prev = a;
    }
    feeds.push(&body[prev..]);
    feeds
}

fn json_alphabet() -> impl Strategy<Value = Vec<u8>> {
    const PREFIXES: [&[u8]; 4] = [
        b"",
        b"{",
        br#"{"model":"#,
        br#"{"choices":[{"message":{"content":"#,
    ];
    let prefix = prop::sample::select(&PREFIXES[..]);
    let bytes = prop::collection::vec(
        prop::sample::select(&b"{}[]\":,\\u0123456789abcdefABCDEF-+.eEtrunlsx \n\xff\xc3"[..]),
        0..200,
    );
    (prefix, bytes).prop_map(|(p, b)| [p, &b[..]].concat())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_splits_agree(
        body in prop_oneof![prop::collection::vec(any::<u8>(), 0..300), json_alphabet()],
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
    ) {
        let feeds = cut(&body, &cuts);
        prop_assert_eq!(scan_request(&feeds), scan_request(&[&body]));
        prop_assert_eq!(scan_response(&feeds), scan_response(&[&body]));
    }

    #[test]
    fn request_fields_agree_with_serde(doc in request_doc(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4)) {
        let v: Value = serde_json::from_str(&doc).unwrap();
        let (got, r) = scan_request(&cut(doc.as_bytes(), &cuts));
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(got, expect_request(&v));
    }

    #[test]
    fn response_fields_agree_with_serde(doc in response_doc(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4)) {
        let v: Value = serde_json::from_str(&doc).unwrap();
        let (got, r) = scan_response(&cut(doc.as_bytes(), &cuts));
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(got, expect_response(&v));
    }
}

/// `Slots` holds one body's run of the table: the run must be contiguous.
#[test]
fn each_body_s_fields_are_one_contiguous_run_of_the_table() {
    for body in [Body::Request, Body::Response] {
        let ids: Vec<usize> = (0..FIELDS.len())
            .filter(|&i| FIELDS[i].body == body)
            .collect();
        assert!(!ids.is_empty());
        assert_eq!(ids.last().unwrap() + 1 - ids[0], ids.len(), "{body:?}");
    }
}
