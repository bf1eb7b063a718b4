//! The agent's OTLP span exporter against a real OTLP/gRPC receiver. Needs no root.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use infertap::export::otlp::{ExporterHealth, OtlpConfig, OtlpSpanExporter};
use infertap::export::store::SpanStore;
use infertap::export::SpanSink;
use infertap::stats::Stats;
use infertap::trace::span::{AttrValue, FinishedSpan, SpanKind, SpanStatus};
use infertap::trace::summary::Summary;
use infertap_tests::otlp_receiver::OtlpReceiver;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn span(n: u8, parent: Option<[u8; 8]>) -> FinishedSpan {
    FinishedSpan {
        trace_id: [
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
            0x47, n,
        ],
        span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, n],
        parent_span_id: parent,
        trace_state: if parent.is_some() {
            "vendor=abc,other=x1".into()
        } else {
            String::new()
        },
        parent_is_remote: parent.is_some(),
        sampled: true,
        name: format!("chat model-{n}"),
        kind: SpanKind::Server,
        start_unix_nano: 1_700_000_000_000_000_000 + u64::from(n) * 1_000_000_007,
        end_unix_nano: 1_700_000_000_500_000_000 + u64::from(n) * 1_000_000_007,
        status: if n == 3 {
            SpanStatus::Error("upstream reset".into())
        } else {
            SpanStatus::Unset
        },
        attributes: vec![
            (
                "gen_ai.request.model".into(),
                AttrValue::Str(format!("model-{n}")),
            ),
            (
                "gen_ai.usage.output_tokens".into(),
                AttrValue::I64(i64::from(n) * 10),
            ),
            (
                "gen_ai.latency.time_to_first_token".into(),
                AttrValue::F64(0.25),
            ),
            ("gen_ai.request.stream".into(), AttrValue::Bool(true)),
            (
                "gen_ai.response.finish_reasons".into(),
                AttrValue::StrArray(vec!["stop".into(), "length".into()]),
            ),
        ],
    }
}

fn config_for(receiver: &OtlpReceiver) -> OtlpConfig {
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_SERVICE_NAME", "infertap-test".to_string()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "k8s.node.name=node-a,deployment.environment=test".to_string(),
        ),
    ];
    OtlpConfig::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_with_their_ids_parent_state_and_attributes() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let stats = Arc::new(Stats::default());
    let config = OtlpConfig {
        batch_interval: Duration::from_millis(100),
        ..config_for(&receiver)
    };
    let exporter = OtlpSpanExporter::spawn(&config, stats.clone()).unwrap();
    let store = Arc::new(SpanStore::new(16));
    let sink = SpanSink::new(store.clone(), exporter.sender(), stats.clone());

    let parent = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0];
    sink.submit(span(1, None), &Summary::default(), &[]);
    sink.submit(span(2, Some(parent)), &Summary::default(), &[]);
    sink.submit(span(3, Some(parent)), &Summary::default(), &[]);

    let mut received = receiver.wait_for(3, WAIT).await.unwrap();
    received.sort_by(|a, b| a.span_id.cmp(&b.span_id));
    assert_eq!(received.len(), 3);
    assert_eq!(store.len(), 3);
    assert_eq!(stats.spans_finished.load(Relaxed), 3);

    let root = &received[0];
    assert_eq!(root.trace_id, "4bf92f3577b34da6a3ce929d0e0e4701");
    assert_eq!(root.span_id, "00f067aa0ba90201");
    assert_eq!(root.parent_span_id, None);
    assert_eq!(root.trace_state, "");
    assert!(!root.parent_is_remote());

    let child = &received[1];
    assert_eq!(child.trace_id, "4bf92f3577b34da6a3ce929d0e0e4702");
    assert_eq!(child.span_id, "00f067aa0ba90202");
    assert_eq!(child.parent_span_id.as_deref(), Some("123456789abcdef0"));
    assert_eq!(child.trace_state, "vendor=abc,other=x1");
    assert!(child.parent_is_remote());
    assert_eq!(child.flags & 0xff, 1, "W3C sampled flag");
    assert_eq!(child.name, "chat model-2");
    assert_eq!(child.kind, "server");
    assert_eq!(child.start_time_unix_nano, 1_700_000_002_000_000_014);
    assert_eq!(child.end_time_unix_nano, 1_700_000_002_500_000_014);
    assert_eq!(child.status_code, "unset");
    assert_eq!(
        serde_json::Value::Object(child.attributes.clone()),
        json!({
            "gen_ai.request.model": "model-2",
            "gen_ai.usage.output_tokens": 20,
            "gen_ai.latency.time_to_first_token": 0.25,
            "gen_ai.request.stream": true,
            "gen_ai.response.finish_reasons": ["stop", "length"],
        })
    );
    assert_eq!(
        (
            received[2].status_code.as_str(),
            received[2].status_message.as_str()
        ),
        ("error", "upstream reset")
    );

    let resource = &child.resource_attributes;
    assert_eq!(resource["service.name"], "infertap-test");
    assert_eq!(resource["k8s.node.name"], "node-a");
    assert_eq!(resource["deployment.environment"], "test");
    assert_eq!(resource["telemetry.sdk.language"], "rust");
    assert_eq!(resource["telemetry.sdk.name"], "opentelemetry");
    assert!(resource["host.name"]
        .as_str()
        .is_some_and(|h| !h.is_empty()));
    assert_eq!(child.scope_name, "infertap");

    // The receiver stores spans before its answer reaches the exporter: flush to see the count.
    exporter.flush().await;
    assert_eq!(stats.spans_exported.load(Relaxed), 3);
    assert_eq!(exporter.state().get().health, ExporterHealth::Ok);
    exporter.shutdown().await;
    receiver.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_receiver_counts_failures_and_blocks_nothing() {
    let receiver = OtlpReceiver::start().await.unwrap();
    receiver.refuse();
    let stats = Arc::new(Stats::default());
    let exporter = OtlpSpanExporter::spawn(&config_for(&receiver), stats.clone()).unwrap();
    let sender = exporter.sender();

    let started = Instant::now();
    for n in 0..5 {
        sender.send(&mut span(n, None), &Summary::default());
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "sending took {:?}",
        started.elapsed()
    );
    exporter.flush().await;

    assert_eq!(stats.spans_export_failed.load(Relaxed), 5);
    assert_eq!(stats.spans_exported.load(Relaxed), 0);
    assert!(receiver.requests() >= 1);
    assert!(receiver.spans().is_empty());
    let state = exporter.state().get();
    let ExporterHealth::Failing(error) = &state.health else {
        panic!("{state:?}")
    };
    assert!(error.contains("test receiver refuses exports"), "{error}");
    assert!(state.last_error_unix_nano.is_some());

    // The collector comes back: the next spans go through and the state recovers.
    receiver.accept();
    sender.send(&mut span(9, None), &Summary::default());
    exporter.flush().await;
    assert_eq!(
        receiver.wait_for(1, WAIT).await.unwrap()[0].span_id,
        "00f067aa0ba90209"
    );
    assert_eq!(exporter.state().get().health, ExporterHealth::Ok);
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_receiver_fills_the_queue_which_sheds_and_times_out() {
    let receiver = OtlpReceiver::start().await.unwrap();
    receiver.pause();
    let stats = Arc::new(Stats::default());
    let config = OtlpConfig {
        queue_capacity: 4,
        max_batch: 1,
        batch_interval: Duration::from_millis(50),
        export_timeout: Duration::from_secs(2),
        ..config_for(&receiver)
    };
    let exporter = OtlpSpanExporter::spawn(&config, stats.clone()).unwrap();
    let sender = exporter.sender();

    // The first span's export is held by the receiver.
    sender.send(&mut span(0, None), &Summary::default());
    let deadline = Instant::now() + WAIT;
    while receiver.requests() == 0 {
        assert!(
            Instant::now() < deadline,
            "the export never reached the receiver"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // With the task stuck on it, four spans fit in the queue and the rest are shed at once.
    let started = Instant::now();
    for n in 1..=10 {
        sender.send(&mut span(n, None), &Summary::default());
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "sending took {:?}",
        started.elapsed()
    );
    assert_eq!(stats.spans_export_dropped.load(Relaxed), 6);

    // The held export times out after 2 s and counts as failed.
    let deadline = Instant::now() + WAIT;
    while stats.spans_export_failed.load(Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the held export never timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Either the agent's own timeout or the gRPC channel's (both are the export timeout).
    let state = exporter.state().get();
    let ExporterHealth::Failing(error) = &state.health else {
        panic!("{state:?}")
    };
    assert!(
        error.contains("timed out") || error.contains("Timeout expired"),
        "{error}"
    );

    // The collector recovers; what was queued is delivered.
    receiver.accept();
    let received = receiver.wait_for(4, WAIT).await.unwrap();
    let mut ids: Vec<_> = received.iter().map(|s| s.span_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert!(ids.len() >= 4, "{ids:?}");
    exporter.shutdown().await;
    assert_eq!(
        stats.spans_exported.load(Relaxed) + stats.spans_export_failed.load(Relaxed) + 6,
        11
    );
}
