//! The agent's OTLP metric export against a real OTLP/gRPC receiver. Needs no root.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use infertap::export::metrics::otlp::{MetricsOtlpConfig, OtlpMetricsExporter};
use infertap::export::metrics::{RequestMetrics, ITL_BUCKETS, TTFT_BUCKETS};
use infertap::export::otlp::{OtlpConfig, OtlpSpanExporter};
use infertap::export::store::SpanStore;
use infertap::export::SpanSink;
use infertap::stats::Stats;
use infertap::trace::span::{AttrValue, FinishedSpan, SpanKind, SpanStatus};
use infertap::trace::summary::{Summary, SummaryKind};
use infertap::trace::Built;
use infertap_tests::otlp_receiver::OtlpReceiver;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);
const MS: u64 = 1_000_000;

/// A chat span and its summary, as `trace::build` makes them.
fn chat(ttft_s: f64, duration_ms: u64, output_tokens: i64) -> Built {
    let s = |v: &str| AttrValue::Str(v.to_string());
    let span = FinishedSpan {
        trace_id: [7; 16],
        span_id: [8; 8],
        parent_span_id: None,
        trace_state: String::new(),
        parent_is_remote: false,
        sampled: true,
        name: "chat m".into(),
        kind: SpanKind::Server,
        start_unix_nano: 1_700_000_000_000_000_000,
        end_unix_nano: 1_700_000_000_000_000_000 + duration_ms * MS,
        status: SpanStatus::Unset,
        attributes: vec![
            ("http.request.method".into(), s("POST")),
            ("url.path".into(), s("/v1/chat/completions")),
            ("http.response.status_code".into(), AttrValue::I64(200)),
            ("server.port".into(), AttrValue::I64(8000)),
            ("client.port".into(), AttrValue::I64(51234)),
            ("gen_ai.request.id".into(), s("req-1")),
            ("gen_ai.operation.name".into(), s("chat")),
            ("gen_ai.provider.name".into(), s("vllm")),
            ("gen_ai.request.model".into(), s("m")),
            (
                "gen_ai.latency.time_to_first_token".into(),
                AttrValue::F64(ttft_s),
            ),
            ("gen_ai.usage.input_tokens".into(), AttrValue::I64(12)),
            (
                "gen_ai.usage.output_tokens".into(),
                AttrValue::I64(output_tokens),
            ),
        ],
    };
    let summary = Summary {
        kind: SummaryKind::Http,
        server: true,
        duration_s: (duration_ms * MS) as f64 / 1e9,
        method: Some("POST".into()),
        status_code: Some(200),
        server_port: Some(8000),
        operation: Some("chat"),
        provider: Some("vllm"),
        request_model: Some("m".into()),
        // The server's own answer names it: a served model, so a label value.
        response_model: Some("m".into()),
        ttft_s: Some(ttft_s),
        input_tokens: Some(12),
        output_tokens: Some(output_tokens),
        ..Summary::default()
    };
    Built { span, summary }
}

fn config(receiver: &OtlpReceiver, interval_ms: &str) -> MetricsOtlpConfig {
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_SERVICE_NAME", "infertap-test".to_string()),
        ("OTEL_METRIC_EXPORT_INTERVAL", interval_ms.to_string()),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "2000".to_string()),
    ];
    MetricsOtlpConfig::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histograms_arrive_with_their_bounds_counts_and_attributes() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let stats = Arc::new(Stats::default());
    let metrics = Arc::new(RequestMetrics::new());
    let exporter =
        OtlpMetricsExporter::spawn(&config(&receiver, "60000"), &metrics, stats.clone()).unwrap();
    assert!(exporter.is_enabled());

    // Spans go through the sink, as the app hands them over.
    let sink = SpanSink::new(
        Arc::new(SpanStore::new(8)),
        OtlpSpanExporter::spawn(&OtlpConfig::default(), stats.clone())
            .unwrap()
            .sender(),
        stats.clone(),
    )
    .with_metrics(metrics.clone());
    for (b, chunks) in [
        (chat(0.03, 1_000, 11), &[][..]),
        (chat(0.3, 1_000, 11), &[]),
        (
            chat(3000.0, 3_100_000, 1),
            &[0, 20 * MS, 60 * MS, 2_060 * MS],
        ),
    ] {
        sink.submit(b.span, &b.summary, chunks);
    }
    exporter.flush().await;

    let ttft = receiver
        .wait_for_metric(WAIT, |p| {
            p.name == "gen_ai.server.time_to_first_token" && p.count == 3
        })
        .await
        .unwrap();
    assert_eq!(ttft.kind, "histogram");
    assert_eq!(ttft.temporality, "cumulative");
    assert_eq!(ttft.unit, "s");
    assert_eq!(ttft.explicit_bounds, TTFT_BUCKETS);
    let mut expected = vec![0u64; TTFT_BUCKETS.len() + 1];
    expected[4] = 1; // 0.03 in (0.02, 0.04]
    expected[9] = 1; // 0.3 in (0.25, 0.5]
    expected[TTFT_BUCKETS.len()] = 1; // 3000 above 2560
    assert_eq!(ttft.bucket_counts, expected);
    assert!((ttft.sum.unwrap() - 3000.33).abs() < 1e-9);
    assert_eq!(
        serde_json::Value::Object(ttft.attributes.clone()),
        json!({
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "vllm",
            "gen_ai.request.model": "m",
            "gen_ai.response.model": "m",
            "server.port": 8000,
        })
    );
    assert_eq!(
        ttft.resource_attributes["service.name"],
        json!("infertap-test")
    );
    assert_eq!(ttft.scope_name, "infertap");

    let itl = receiver
        .wait_for_metric(WAIT, |p| p.name == "gen_ai.server.inter_token_latency")
        .await
        .unwrap();
    assert_eq!(itl.explicit_bounds, ITL_BUCKETS);
    assert_eq!(itl.count, 3);
    assert_eq!(itl.bucket_counts[1], 1); // 20 ms in (0.01, 0.025]
    assert_eq!(itl.bucket_counts[2], 1); // 40 ms in (0.025, 0.05]
    assert_eq!(itl.bucket_counts[12], 1); // 2 s in (1, 2.5]

    let tpot = receiver
        .wait_for_metric(WAIT, |p| p.name == "gen_ai.server.time_per_output_token")
        .await
        .unwrap();
    assert_eq!(tpot.count, 2); // the one-token request has none
    assert!((tpot.sum.unwrap() - (0.097 + 0.07)).abs() < 1e-9);

    let output_tokens = receiver
        .wait_for_metric(WAIT, |p| {
            p.name == "gen_ai.server.tokens" && p.attributes["gen_ai.token.type"] == json!("output")
        })
        .await
        .unwrap();
    assert_eq!(output_tokens.kind, "sum");
    assert!(output_tokens.is_monotonic);
    assert_eq!(output_tokens.value, Some(23.0));

    // The agent's own counters go out too, read from `Stats` at export time.
    let finished = receiver
        .wait_for_metric(WAIT, |p| p.name == "infertap.spans_finished")
        .await
        .unwrap();
    assert_eq!(finished.kind, "sum");
    assert!(finished.is_monotonic);
    assert_eq!(finished.value, Some(3.0));

    for export in receiver.metric_exports() {
        for p in export {
            for forbidden in ["gen_ai.request.id", "client.port", "url.path"] {
                assert!(
                    !p.attributes.contains_key(forbidden),
                    "{forbidden} on {p:?}"
                );
            }
        }
    }
    assert!(stats.metrics_exported.load(Relaxed) >= 1);
    assert_eq!(stats.metrics_export_failed.load(Relaxed), 0);
    exporter.shutdown().await;
    receiver.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_export_runs_and_failures_are_counted() {
    let receiver = OtlpReceiver::start().await.unwrap();
    receiver.refuse();
    let stats = Arc::new(Stats::default());
    let metrics = RequestMetrics::new();
    let exporter =
        OtlpMetricsExporter::spawn(&config(&receiver, "100"), &metrics, stats.clone()).unwrap();
    metrics.record(&chat(0.03, 1_000, 11).summary);

    let deadline = tokio::time::Instant::now() + 2 * WAIT;
    while stats.metrics_export_failed.load(Relaxed) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no failure counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(exporter.last_error().is_some());

    // Recovery: the next periodic export (no flush) delivers the cumulative values.
    receiver.accept();
    let duration = receiver
        .wait_for_metric(WAIT, |p| p.name == "gen_ai.server.request.duration")
        .await
        .unwrap();
    assert_eq!(duration.count, 1);
    // The receiver keeps the export before it answers: the counter follows the answer.
    while stats.metrics_exported.load(Relaxed) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no export counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    exporter.shutdown().await;
    receiver.stop().await.unwrap();
}
