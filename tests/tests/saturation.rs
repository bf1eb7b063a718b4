//! Runtime saturation at each request's arrival (issue 15, item 3), end to end as root: the vLLM
//! stand-in serves a vLLM-shaped `/metrics` whose figures the test drives (`POST /standin/gauges`:
//! queue, KV-cache usage, preemptions, prefix-cache counters), and each request's span must carry
//! what was served when it arrived — within one poll interval — and the KV-cache peak, the
//! preemptions and the prefix-cache hit ratio over its window.
//!
//! Twice: with the agent's own poll of the server's `/metrics` (the default, every 1 s; its own
//! connections must make no span), and with the poll off and a real Prometheus scraping the
//! stand-in as the only reader — the passive path alone (scrapes crossing the traced socket).
//!
//! Run: `CI=true cargo xtask test -- saturation` (as root).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use infertap_tests::harness::{attr, begin, poll, random_hex, Agent, StandIn, StandInOpts};
use infertap_tests::prometheus::Prometheus;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);
/// How long a test waits after changing the gauges before it relies on a reader having seen
/// them: one reader interval (1 s, the poll's default and the Prometheus scrape interval) and a
/// margin.
const SETTLE: Duration = Duration::from_millis(1400);

/// POST JSON to the stand-in (`connection: close`); the status code.
fn post(port: u16, path: &str, body: &Value, trace: Option<&str>) -> (u16, String) {
    let body = body.to_string();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let tp = trace
        .map(|t| format!("traceparent: 00-{t}-{}-01\r\n", random_hex(8)))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\n{tp}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn set_gauges(port: u16, g: Value) {
    let (code, text) = post(port, "/standin/gauges", &g, None);
    assert_eq!(code, 200, "{text}");
}

/// A chat request with a fresh trace; returns the trace id once the whole answer was read.
fn chat(port: u16, max_tokens: u64, stream: bool) -> String {
    let trace = random_hex(16);
    let (code, text) = post(
        port,
        "/v1/chat/completions",
        &json!({"model": "standin-model", "messages": [{"role": "user", "content": "a b c"}],
                "max_tokens": max_tokens, "stream": stream}),
        Some(&trace),
    );
    assert_eq!(code, 200, "{text}");
    trace
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

fn num(span: &Value, key: &str) -> f64 {
    attr(span, key)
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number on {span:#}"))
}

/// Drives the gauges through three phases around two requests and checks each span against
/// what was served at its arrival and over its window. `interval`: the reader's (poll or scrape)
/// interval, the most a sample at arrival may be old.
fn drive_and_check(agent: &Agent, server: &StandIn, interval: f64) {
    let port = server.port;
    // Phase A: a short request arrives with a queue of 3 and a quarter of the KV cache used.
    set_gauges(
        port,
        json!({"running": 2, "waiting": 3, "kv_cache_usage": 0.25, "preemptions": 10,
               "prefix_cache_queries": 100, "prefix_cache_hits": 40}),
    );
    thread::sleep(SETTLE);
    let short = chat(port, 2, false);

    // Phase B: a long stream (~3 s) arrives with a queue of 9, KV cache at 60 %; during it the
    // cache fills to 95 %, 7 requests are preempted and 160 of 200 prefix lookups hit (phase C).
    set_gauges(
        port,
        json!({"running": 5, "waiting": 9, "kv_cache_usage": 0.6}),
    );
    thread::sleep(SETTLE);
    let long = thread::spawn(move || chat(port, 150, true));
    thread::sleep(Duration::from_millis(600));
    set_gauges(
        port,
        json!({"kv_cache_usage": 0.95, "preemptions": 17, "prefix_cache_queries": 300,
               "prefix_cache_hits": 200}),
    );
    let long = long.join().unwrap();
    // After it: nothing later may count in its window.
    set_gauges(port, json!({"kv_cache_usage": 0.99, "preemptions": 50}));

    let s = span_of(agent, &short);
    assert_eq!(attr(&s, "infertap.runtime.source"), "vllm", "{s:#}");
    assert_eq!(num(&s, "infertap.runtime.requests_waiting"), 3.0, "{s:#}");
    assert_eq!(num(&s, "infertap.runtime.requests_running"), 2.0, "{s:#}");
    assert_eq!(num(&s, "infertap.runtime.kv_cache_usage"), 0.25, "{s:#}");
    let age = num(&s, "infertap.runtime.sample_age");
    assert!(
        (0.0..=interval + 0.1).contains(&age),
        "sample age {age} s, reader interval {interval} s: {s:#}"
    );

    let l = span_of(agent, &long);
    assert_eq!(num(&l, "infertap.runtime.requests_waiting"), 9.0, "{l:#}");
    assert_eq!(num(&l, "infertap.runtime.kv_cache_usage"), 0.6, "{l:#}");
    let age = num(&l, "infertap.runtime.sample_age");
    assert!(
        (0.0..=interval + 0.1).contains(&age),
        "sample age {age} s: {l:#}"
    );
    assert_eq!(
        num(&l, "infertap.runtime.kv_cache_usage.max"),
        0.95,
        "{l:#}"
    );
    assert_eq!(num(&l, "infertap.runtime.preemptions"), 7.0, "{l:#}");
    let ratio = num(&l, "infertap.runtime.prefix_cache_hit_ratio");
    assert!((ratio - 0.8).abs() < 1e-9, "hit ratio {ratio}: {l:#}");
}

#[test]
fn the_poll_gives_each_span_the_load_served_at_its_arrival() {
    let Some(ctx) = begin("the_poll_gives_each_span_the_load_served_at_its_arrival") else {
        return;
    };
    let server = StandIn::start(&ctx, StandInOpts::default());
    // The default: the poll on, every second.
    let agent = Agent::start(&ctx, &server, &[], &[]);
    drive_and_check(&agent, &server, 1.0);

    let status = agent.status();
    let rp = &status["runtime_poll"];
    assert_eq!(rp["interval_s"], 1.0, "{rp:#}");
    let servers = rp["servers"].as_array().expect("servers");
    let me = servers
        .iter()
        .find(|s| s["pid"] == server.pid())
        .unwrap_or_else(|| panic!("the stand-in is not polled: {rp:#}"));
    assert_eq!(
        me["address"],
        format!("127.0.0.1:{}", server.port),
        "{rp:#}"
    );
    let polls = me["polls"].as_u64().unwrap();
    assert!(polls >= 5, "{rp:#}");
    assert_eq!(me["failures"], 0, "{rp:#}");
    assert_eq!(rp["failures_total"], 0, "{rp:#}");
    // The polls crossed the traced server's socket (one kept-alive connection, reopened after
    // an idle close), untraced: none of them became a span.
    let untraced = rp["connections_untraced_total"].as_u64().unwrap();
    assert!((1..=polls).contains(&untraced), "{rp:#}");
    let own: Vec<Value> = agent
        .spans()
        .into_iter()
        .filter(|s| attr(s, "url.path") == "/metrics")
        .collect();
    assert!(own.is_empty(), "the agent's own polls made spans: {own:#?}");
    let metrics = agent.metrics();
    assert!(
        metrics.contains("infertap_runtime_poll_failures_total 0"),
        "{metrics}"
    );
}

#[test]
fn without_the_poll_a_prometheus_scrape_alone_fills_the_figures() {
    let Some(ctx) = begin("without_the_poll_a_prometheus_scrape_alone_fills_the_figures") else {
        return;
    };
    let server = StandIn::start(&ctx, StandInOpts::default());
    let agent = Agent::start(&ctx, &server, &["--runtime-poll-interval", "0"], &[]);
    let target: SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let prom = Prometheus::start(&ctx, "vllm", target);
    // Its scrapes cross the traced socket (they are spans like any request).
    poll(WAIT, || {
        agent
            .spans()
            .iter()
            .any(|s| attr(s, "url.path") == "/metrics")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no scrape of the stand-in seen:\n{}", prom.proc.log_text()));
    drive_and_check(&agent, &server, 1.0);

    let rp = &agent.status()["runtime_poll"];
    assert!(rp["interval_s"].is_null(), "{rp:#}");
    assert_eq!(rp["servers"], json!([]), "{rp:#}");
    assert_eq!(rp["connections_untraced_total"], 0, "{rp:#}");
}
