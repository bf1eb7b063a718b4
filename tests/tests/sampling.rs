//! Tail sampling end to end, as root: the real agent with `OTEL_TRACES_SAMPLER=infertap_tail` and a
//! keep ratio of 0 traces the vLLM stand-in serving the real `openai` client, and exports to a real
//! OTLP/gRPC receiver. Every slow, errored, cancelled and server-aborted request must arrive there
//! with its `infertap.sampling.reason`; no ordinary one may; `/spans` and the request metrics still
//! count every request.
//!
//! Run: `cargo xtask build && cargo test --release -p infertap-tests --test sampling` (as root).

use std::thread;
use std::time::Duration;

use infertap_tests::harness::{
    begin, client, client_run, one_span_for, Agent, Receiver, StandIn, StandInOpts,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn ratio_zero_exports_exactly_the_slow_failed_and_cancelled_requests() {
    let Some(ctx) = begin("ratio_zero_exports_exactly_the_slow_failed_and_cancelled_requests")
    else {
        return;
    };
    let receiver = Receiver::start();
    // 20 ms between tokens: 4 tokens take about 0.13 s, 40 tokens about 0.85 s.
    let server = StandIn::start(&ctx, StandInOpts::default());
    let mut env = receiver.agent_env();
    env.push(("OTEL_TRACES_SAMPLER", "infertap_tail".into()));
    env.push(("OTEL_TRACES_SAMPLER_ARG", "0".into()));
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "100".into()));
    let agent = Agent::start(
        &ctx,
        &server,
        &[
            "--slow-duration",
            "0.5",
            "--slow-ttft",
            "0",
            "--slow-itl",
            "0",
        ],
        &env,
    );

    let base = ["--max-tokens", "4"];
    fn with<'a>(scenario: &'a str, count: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--scenario", scenario, "--count", count];
        args.extend_from_slice(extra);
        args
    }
    let normal = client(&ctx, &server, &with("chat-stream", "6", &base));
    let slow = client(
        &ctx,
        &server,
        &with("chat-stream", "2", &["--max-tokens", "40"]),
    );
    let errored = client(&ctx, &server, &with("stream-error", "2", &base));
    let cancelled = client(&ctx, &server, &with("cancel", "2", &["--max-tokens", "16"]));
    let aborted = client_run(
        &ctx,
        &server,
        &with("server-abort", "1", &["--max-tokens", "16"]),
        Duration::from_secs(60),
    )
    .records;
    assert_eq!(aborted.len(), 1, "the server-abort request ran");

    let kept: Vec<(&Value, &str)> = slow
        .iter()
        .map(|r| (r, "slow_duration"))
        .chain(errored.iter().map(|r| (r, "error")))
        .chain(cancelled.iter().map(|r| (r, "cancelled")))
        // A server abort is an ERROR span: `error` comes first in the order of reasons.
        .chain(aborted.iter().map(|r| (r, "error")))
        .collect();
    let all: Vec<Value> = normal
        .iter()
        .chain(kept.iter().map(|(r, _)| *r))
        .cloned()
        .collect();
    let spans = agent.wait_spans_for(&all, WAIT);

    let kept_ids: Vec<String> = kept
        .iter()
        .map(|(r, _)| {
            one_span_for(&spans, r)["span_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let received = receiver.wait_for_ids(&kept_ids, WAIT);
    for ((record, reason), id) in kept.iter().zip(&kept_ids) {
        let span = received.iter().find(|s| &s.span_id == id).unwrap();
        assert_eq!(
            span.attributes["infertap.sampling.reason"], *reason,
            "{span:#?}\n{record}"
        );
        // `/spans` shows the same reason.
        let local = one_span_for(&spans, record);
        assert_eq!(local["attributes"]["infertap.sampling.reason"], *reason);
    }

    // Give a late export every chance to arrive, then: no ordinary request was exported.
    thread::sleep(Duration::from_millis(1500));
    let received = receiver.spans();
    for r in &normal {
        let span = one_span_for(&spans, r);
        assert!(
            span["attributes"]["infertap.sampling.reason"].is_null(),
            "{span:#}"
        );
        let id = span["span_id"].as_str().unwrap();
        assert!(
            !received.iter().any(|s| s.span_id == id),
            "an ordinary request was exported at ratio 0: {span:#}"
        );
    }
    assert_eq!(received.len(), kept_ids.len(), "{received:#?}");

    // Counters per reason, and metrics from every request.
    let status = agent.status();
    let sampling = &status["exporter"]["sampling"];
    assert_eq!(sampling["sampler"], "infertap_tail", "{status:#}");
    assert_eq!(sampling["kept"]["slow_duration"], 2, "{status:#}");
    assert_eq!(sampling["kept"]["error"], 3, "{status:#}");
    assert_eq!(sampling["kept"]["cancelled"], 2, "{status:#}");
    assert_eq!(sampling["kept"]["ratio"], 0, "{status:#}");
    assert!(status["exporter"]["spans_not_sampled"].as_u64().unwrap() >= 6);
    let metrics = agent.metrics();
    assert!(
        metrics.contains("infertap_spans_kept_slow_duration_total 2"),
        "{metrics}"
    );
    let requests: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("gen_ai_server_request_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        requests >= all.len() as f64,
        "the request metrics count every request ({requests} < {}):\n{metrics}",
        all.len()
    );
}
