//! Other APIs a model server speaks, end to end (issue 15), as root: a real client asks the stand-in
//! (which serves them as vLLM does) for a streamed OpenAI Responses API answer and a streamed
//! Anthropic Messages API answer; the agent tracing it must make each one span saying what the
//! client read: operation, model, usage, finish reason, and a time to first token that is the first
//! content event's, with one content chunk per delta event.
//!
//! Run: `CI=true cargo xtask test -- apis` (as root).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use infertap_tests::harness::{attr, begin, poll, random_hex, Agent, StandIn, StandInOpts};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// What the client saw of one streamed answer.
struct Seen {
    trace: String,
    /// The SSE `data:` payloads, in order, with the time each was read after the request was sent.
    events: Vec<(Duration, Value)>,
}

/// POST `body` to `path` with a fresh trace context; reads the whole streamed answer
/// (`connection: close`, so the end of the stream is the end of the connection).
fn post_stream(port: u16, path: &str, body: &Value) -> Seen {
    let trace = random_hex(16);
    let body = body.to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\ntraceparent: 00-{trace}-{}-01\r\ncontent-length: {}\r\n\r\n{body}",
        random_hex(8),
        body.len()
    );
    let sent = Instant::now();
    s.write_all(req.as_bytes()).unwrap();
    let mut events = Vec::new();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        // Events complete so far (chunked framing lines never start with `data:`).
        let text = String::from_utf8_lossy(&raw).to_string();
        let complete: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect();
        for e in complete.into_iter().skip(events.len()) {
            events.push((sent.elapsed(), e));
        }
    }
    let head = String::from_utf8_lossy(&raw[..raw.len().min(16)]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Seen { trace, events }
}

fn span_of(agent: &Agent, trace: &str) -> Value {
    let spans = poll(WAIT, || {
        let s: Vec<Value> = agent
            .spans()
            .into_iter()
            .filter(|s| s["trace_id"] == trace)
            .collect();
        (!s.is_empty()).then_some(s)
    })
    .unwrap_or_else(|| panic!("no span of trace {trace}: {:#?}", agent.spans()));
    assert_eq!(spans.len(), 1, "{spans:#?}");
    spans.into_iter().next().unwrap()
}

fn f64_of(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The span's TTFT against the client's view of the first content event: the agent sees the
/// server's write, the client its read, so the agent's is not later (a small tolerance for the
/// two clocks' readings) and not much earlier.
fn check_ttft(span: &Value, client_first: Duration) {
    let ttft = f64_of(attr(span, "gen_ai.latency.time_to_first_token"));
    let client = client_first.as_secs_f64();
    assert!(
        ttft <= client + 0.005 && ttft >= client - 0.25,
        "TTFT {ttft} s on the span, first content event read by the client after {client} s"
    );
}

#[test]
fn responses_and_messages_streams_become_spans_with_usage_and_first_token() {
    let Some(ctx) = begin("responses_and_messages_streams_become_spans_with_usage_and_first_token")
    else {
        return;
    };
    let server = StandIn::start(&ctx, StandInOpts::default());
    let agent = Agent::start(&ctx, &server, &[], &[]);

    // The OpenAI Responses API.
    let seen = post_stream(
        server.port,
        "/v1/responses",
        &serde_json::json!({"model": "standin-model", "input": "one two three four", "stream": true, "max_output_tokens": 6}),
    );
    let deltas: Vec<&(Duration, Value)> = seen
        .events
        .iter()
        .filter(|(_, e)| e["type"] == "response.output_text.delta")
        .collect();
    let done = &seen.events.last().expect("events").1;
    assert_eq!(
        done["type"], "response.incomplete",
        "6 tokens asked, 6 given"
    );
    let usage = &done["response"]["usage"];
    let span = span_of(&agent, &seen.trace);
    assert_eq!(attr(&span, "gen_ai.operation.name"), "chat", "{span:#}");
    assert_eq!(attr(&span, "gen_ai.request.model"), "standin-model");
    assert_eq!(
        attr(&span, "gen_ai.response.model"),
        &done["response"]["model"]
    );
    assert_eq!(attr(&span, "gen_ai.response.id"), &done["response"]["id"]);
    assert_eq!(attr(&span, "gen_ai.request.stream"), true);
    assert_eq!(
        attr(&span, "gen_ai.usage.input_tokens"),
        &usage["input_tokens"]
    );
    assert_eq!(
        attr(&span, "gen_ai.usage.output_tokens"),
        &usage["output_tokens"]
    );
    assert_eq!(
        attr(&span, "gen_ai.response.finish_reasons"),
        &serde_json::json!(["max_output_tokens"])
    );
    assert_eq!(
        attr(&span, "infertap.content_chunks"),
        deltas.len() as u64,
        "{span:#}"
    );
    check_ttft(&span, deltas[0].0);

    // Anthropic's Messages API.
    let seen = post_stream(
        server.port,
        "/v1/messages",
        &serde_json::json!({"model": "standin-model", "max_tokens": 5, "stream": true,
                            "messages": [{"role": "user", "content": "five words in the prompt"}]}),
    );
    let deltas: Vec<&(Duration, Value)> = seen
        .events
        .iter()
        .filter(|(_, e)| e["type"] == "content_block_delta")
        .collect();
    let start = &seen.events[0].1["message"];
    let end = seen
        .events
        .iter()
        .find(|(_, e)| e["type"] == "message_delta")
        .map(|(_, e)| e)
        .expect("a message_delta event");
    let span = span_of(&agent, &seen.trace);
    assert_eq!(attr(&span, "gen_ai.operation.name"), "chat", "{span:#}");
    assert_eq!(attr(&span, "gen_ai.response.id"), &start["id"]);
    let u = &start["usage"];
    let input = u["input_tokens"].as_u64().unwrap()
        + u["cache_read_input_tokens"].as_u64().unwrap()
        + u["cache_creation_input_tokens"].as_u64().unwrap();
    assert_eq!(attr(&span, "gen_ai.usage.input_tokens"), input);
    assert_eq!(
        attr(&span, "gen_ai.usage.output_tokens"),
        &end["usage"]["output_tokens"],
        "the message_delta's count, not message_start's placeholder"
    );
    assert_eq!(
        attr(&span, "gen_ai.response.finish_reasons"),
        &serde_json::json!([end["delta"]["stop_reason"]])
    );
    assert_eq!(attr(&span, "infertap.content_chunks"), deltas.len() as u64);
    check_ttft(&span, deltas[0].0);
}
