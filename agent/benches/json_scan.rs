//! Throughput of the streaming JSON field scanner on request and response bodies, next to a
//! serde_json pass over the same bytes that keeps nothing (`IgnoredAny`: the least any serde
//! reading of the body costs; the typed serde oracles are test-only).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use infertap::protocol::openai::{RequestScan, ResponseScan};
use serde::de::IgnoredAny;

fn prompt(len: usize) -> String {
    let piece = "Explain the \"attention\" mechanism in transformers, step by step.\n\
                 Include é, 日本語 and a path C:\\\\models\\\\x. ";
    piece.repeat(len / piece.len() + 1)[..len].to_string()
}

/// A chat request as the OpenAI SDK writes it: messages first, model last.
fn chat_request(body_len: usize) -> Vec<u8> {
    let text = prompt(body_len.saturating_sub(300));
    let messages = serde_json::json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text},
    ]);
    format!(
        r#"{{"messages":{messages},"model":"Qwen/Qwen2.5-0.5B-Instruct","max_completion_tokens":256,"stream":true,"stream_options":{{"include_usage":true}},"temperature":0.7,"top_p":0.95}}"#
    )
    .into_bytes()
}

fn chat_response(body_len: usize) -> Vec<u8> {
    let content = serde_json::to_string(&prompt(body_len.saturating_sub(600))).unwrap();
    format!(
        r#"{{"id":"chatcmpl-8f2c5d3e","object":"chat.completion","created":1733000000,"model":"Qwen/Qwen2.5-0.5B-Instruct","choices":[{{"index":0,"message":{{"role":"assistant","content":{content},"refusal":null,"tool_calls":[],"reasoning_content":null}},"logprobs":null,"finish_reason":"length","stop_reason":null}}],"usage":{{"prompt_tokens":9000,"total_tokens":59000,"completion_tokens":50000,"prompt_tokens_details":{{"cached_tokens":8192}}}},"prompt_logprobs":null,"prompt_token_ids":null,"kv_transfer_params":null}}"#
    )
    .into_bytes()
}

/// Feed in 16 KiB pieces, as socket reads arrive.
const FEED: usize = 16 << 10;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("json_scan");
    for (name, body) in [
        ("request_1k", chat_request(1 << 10)),
        ("request_200k", chat_request(200 << 10)),
    ] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("scan", name), &body, |b, body| {
            b.iter(|| {
                let mut s = RequestScan::new();
                for piece in body.chunks(FEED) {
                    s.feed(black_box(piece));
                }
                assert!(s.finish().is_ok());
                s.into_fields()
            })
        });
        g.bench_with_input(BenchmarkId::new("serde", name), &body, |b, body| {
            b.iter(|| serde_json::from_slice::<IgnoredAny>(black_box(body)).is_ok())
        });
    }
    let body = chat_response(200 << 10);
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_with_input(
        BenchmarkId::new("scan", "response_200k"),
        &body,
        |b, body| {
            b.iter(|| {
                let mut s = ResponseScan::new();
                for piece in body.chunks(FEED) {
                    s.feed(black_box(piece));
                }
                assert!(s.finish().is_ok());
                s.into_fields()
            })
        },
    );
    g.bench_with_input(
        BenchmarkId::new("serde", "response_200k"),
        &body,
        |b, body| b.iter(|| serde_json::from_slice::<IgnoredAny>(black_box(body)).is_ok()),
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
