use super::*;
use crate::capture::clock::WallClock;
use crate::capture::decode::{DataChunk, Role, SocketDir};
use crate::conn::{ConnId, ConnTable, Origin};
use crate::export::prometheus::encode;
use crate::stats::Stats;
use crate::trace::build::{BuildOptions, RandomIds};
use std::time::Instant;

const MS: u64 = 1_000_000;

/// A chat request's summary as `trace::build` makes it: `duration_ms` long, with TTFT and tokens.
fn chat(model: &str, duration_ms: u64, ttft_s: Option<f64>, tokens: Option<(i64, i64)>) -> Summary {
    Summary {
        kind: SummaryKind::Http,
        server: true,
        duration_s: (duration_ms * MS) as f64 / 1e9,
        method: Some("POST".into()),
        status_code: Some(200),
        server_address: Some("10.0.0.1".into()),
        server_port: Some(8000),
        operation: Some("chat"),
        provider: Some("vllm"),
        request_model: Some(model.into()),
        response_model: Some(model.into()),
        ttft_s,
        input_tokens: tokens.map(|t| t.0),
        output_tokens: tokens.map(|t| t.1),
        ..Summary::default()
    }
}

/// A chat completion taken from the wire through the connection table and the span builder, with
/// every identifier a metric label must never carry: request id, response id, client address and
/// port, pid, `max_tokens`, the path.
fn chat_from_the_wire() -> Summary {
    let body = r#"{"model":"m","max_tokens":77,"messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nx-request-id: req-8c1f\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = r#"{"id":"chatcmpl-77","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"yo"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":9}}"#;
    let mut built = built_from_the_wire(&[(request, json_response("200 OK", answer))]);
    assert_eq!(built.len(), 1, "one exchange");
    let built = built.remove(0);
    // The span does carry them (they are span attributes, not labels).
    let span = format!("{:?}", built.span);
    assert!(span.contains("req-8c1f") && span.contains("51234") && span.contains("4242"));
    built.summary
}

fn family(m: &RequestMetrics, name: &str) -> String {
    let families = m.families();
    encode(std::slice::from_ref(
        families.iter().find(|f| f.name == name).expect(name),
    ))
}

fn text(m: &RequestMetrics) -> String {
    encode(&m.families())
}

const LABELS: &str = "gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"vllm\",\
gen_ai_request_model=\"m\",gen_ai_response_model=\"m\",server_address=\"10.0.0.1\",server_port=\"8000\"";

#[test]
fn ttft_histogram_text_is_exact() {
    let m = RequestMetrics::new();
    m.record(&chat("m", 900, Some(0.03), None));
    m.record(&chat("m", 900, Some(0.25), None));
    m.record(&chat("m", 900, Some(3000.0), None));
    m.record(&chat("m", 900, None, None)); // no first token: no TTFT observation
    let mut expected = String::from(
        "# HELP gen_ai_server_time_to_first_token_seconds Time from the request's first byte to \
         the first content token of the response. (gen_ai.server.time_to_first_token)\n\
         # TYPE gen_ai_server_time_to_first_token_seconds histogram\n",
    );
    for b in TTFT_BUCKETS {
        let c = [0.03, 0.25].iter().filter(|v| **v <= *b).count();
        expected += &format!(
            "gen_ai_server_time_to_first_token_seconds_bucket{{{LABELS},le=\"{b}\"}} {c}\n"
        );
    }
    expected += &format!(
        "gen_ai_server_time_to_first_token_seconds_bucket{{{LABELS},le=\"+Inf\"}} 3\n\
         gen_ai_server_time_to_first_token_seconds_sum{{{LABELS}}} 3000.28\n\
         gen_ai_server_time_to_first_token_seconds_count{{{LABELS}}} 3\n"
    );
    assert_eq!(
        family(&m, "gen_ai_server_time_to_first_token_seconds"),
        expected
    );
    // Spot checks that do not depend on the loop above.
    let t = text(&m);
    assert!(t.contains(&format!(
        "gen_ai_server_time_to_first_token_seconds_bucket{{{LABELS},le=\"0.02\"}} 0\n"
    )));
    assert!(t.contains(&format!(
        "gen_ai_server_time_to_first_token_seconds_bucket{{{LABELS},le=\"0.04\"}} 1\n"
    )));
    assert!(t.contains(&format!(
        "gen_ai_server_time_to_first_token_seconds_bucket{{{LABELS},le=\"0.25\"}} 2\n"
    )));
    assert!(t.contains(&format!(
        "gen_ai_server_time_to_first_token_seconds_bucket{{{LABELS},le=\"2560\"}} 2\n"
    )));
}

#[test]
fn request_duration_has_the_merged_buckets_and_error_type() {
    let m = RequestMetrics::new();
    m.record(&chat("m", 15, None, None));
    let mut failed = chat("m", 15, None, None);
    failed.error_type = Some("500".into());
    failed.failed = true;
    m.record(&failed);
    let t = family(&m, "gen_ai_server_request_duration_seconds");
    let les: Vec<&str> = t
        .lines()
        .filter(|l| l.contains("_bucket") && !l.contains("error_type"))
        .map(|l| l.split("le=\"").nth(1).unwrap().split('"').next().unwrap())
        .collect();
    assert_eq!(
        les.join(","),
        "0.01,0.02,0.04,0.08,0.16,0.3,0.5,0.8,1,1.5,2,2.5,5,10,15,20,30,40,50,60,120,240,480,960,1920,7680,+Inf"
    );
    assert!(t.contains(&format!(
        "gen_ai_server_request_duration_seconds_bucket{{{LABELS},le=\"0.01\"}} 0\n"
    )));
    assert!(t.contains(&format!(
        "gen_ai_server_request_duration_seconds_bucket{{{LABELS},le=\"0.02\"}} 1\n"
    )));
    assert!(t.contains(&format!(
        "gen_ai_server_request_duration_seconds_count{{{LABELS},error_type=\"500\"}} 1\n"
    )));
    assert!(t.contains(&format!(
        "gen_ai_server_request_duration_seconds_sum{{{LABELS}}} 0.015\n"
    )));
}

#[test]
fn time_per_output_token_formula() {
    assert_eq!(time_per_output_token(2.0, 0.5, 11), Some(0.15));
    assert_eq!(time_per_output_token(2.0, 0.5, 1), None);
    assert_eq!(time_per_output_token(2.0, 0.5, 0), None);
    assert_eq!(time_per_output_token(0.1, 0.5, 3), Some(0.0));

    let m = RequestMetrics::new();
    m.record(&chat("m", 2_000, Some(0.5), Some((7, 11)))); // (2 − 0.5) / 10 = 0.15
    m.record(&chat("m", 2_000, Some(0.5), Some((7, 1)))); // one token: no observation
    m.record(&chat("m", 2_000, None, Some((7, 11)))); // no TTFT: no observation
    let t = family(&m, "gen_ai_server_time_per_output_token_seconds");
    assert!(
        t.contains(&format!(
            "gen_ai_server_time_per_output_token_seconds_bucket{{{LABELS},le=\"0.1\"}} 0\n"
        )),
        "{t}"
    );
    assert!(t.contains(&format!(
        "gen_ai_server_time_per_output_token_seconds_bucket{{{LABELS},le=\"0.15\"}} 1\n"
    )));
    assert!(t.contains(&format!(
        "gen_ai_server_time_per_output_token_seconds_sum{{{LABELS}}} 0.15\n"
    )));
    assert!(t.contains(&format!(
        "gen_ai_server_time_per_output_token_seconds_count{{{LABELS}}} 1\n"
    )));
}

#[test]
fn inter_token_latency_counts_every_gap() {
    let m = RequestMetrics::new();
    // Gaps 20 ms, 40 ms, 30 ms, 1000 ms.
    m.record_with_chunk_times(
        &chat("m", 2_000, Some(0.1), None),
        &[100 * MS, 120 * MS, 160 * MS, 190 * MS, 1190 * MS],
    );
    m.record_with_chunk_times(&chat("m", 2_000, Some(0.1), None), &[5 * MS]); // no gap
    m.record_with_gaps(&chat("m", 2_000, Some(0.1), None), &[5 * MS]);
    m.record(&chat("m", 2_000, Some(0.1), None));
    let t = family(&m, "gen_ai_server_inter_token_latency_seconds");
    assert!(!t.contains("le=\"0.03\""));
    for (le, n) in [
        ("0.01", 1),
        ("0.025", 2),
        ("0.05", 4),
        ("0.75", 4),
        ("1", 5),
        ("+Inf", 5),
    ] {
        let line = format!(
            "gen_ai_server_inter_token_latency_seconds_bucket{{{LABELS},le=\"{le}\"}} {n}\n"
        );
        assert!(t.contains(&line), "missing {line} in\n{t}");
    }
    assert!(t.contains(&format!(
        "gen_ai_server_inter_token_latency_seconds_count{{{LABELS}}} 5\n"
    )));
    assert!(t.contains(&format!(
        "gen_ai_server_inter_token_latency_seconds_sum{{{LABELS}}} 1.095\n"
    )));
}

/// A request's gaps, read one by one, each time checking that the families' lock is free.
struct GapsReadUnlocked<'a> {
    metrics: &'a RequestMetrics,
    left: u64,
}

impl Iterator for GapsReadUnlocked<'_> {
    type Item = (u64, u64);
    fn next(&mut self) -> Option<(u64, u64)> {
        assert!(
            self.metrics.families.try_lock().is_ok(),
            "a request's gaps are read with the metrics lock held"
        );
        self.left = self.left.checked_sub(1)?;
        Some((20 * MS, 1))
    }
}

#[test]
fn no_lock_is_held_while_a_requests_gaps_are_read() {
    let m = RequestMetrics::new();
    let gaps = || GapsReadUnlocked {
        metrics: &m,
        left: 10_000,
    };
    m.record_gaps(&chat("m", 2_000, Some(0.1), None), gaps);
    let t = family(&m, "gen_ai_server_inter_token_latency_seconds");
    assert!(t.contains(&format!(
        "gen_ai_server_inter_token_latency_seconds_count{{{LABELS}}} 10000\n"
    )));
}

#[test]
fn tokens_are_a_histogram_and_a_counter_by_type() {
    let m = RequestMetrics::new();
    m.record(&chat("m", 10, Some(0.001), Some((100, 20))));
    m.record(&chat("m", 10, Some(0.001), Some((3, 2))));
    let t = text(&m);
    assert!(t.contains(&format!(
        "gen_ai_server_tokens_total{{{LABELS},gen_ai_token_type=\"input\"}} 103\n"
    )));
    assert!(t.contains(&format!(
        "gen_ai_server_tokens_total{{{LABELS},gen_ai_token_type=\"output\"}} 22\n"
    )));
    assert!(t.contains(&format!(
        "gen_ai_server_token_usage_bucket{{{LABELS},gen_ai_token_type=\"input\",le=\"4\"}} 1\n"
    )));
    assert!(t.contains(&format!(
        "gen_ai_server_token_usage_bucket{{{LABELS},gen_ai_token_type=\"input\",le=\"64\"}} 1\n"
    )));
    assert!(t.contains(&format!(
        "gen_ai_server_token_usage_bucket{{{LABELS},gen_ai_token_type=\"input\",le=\"256\"}} 2\n"
    )));
    assert!(t.contains(&format!(
        "gen_ai_server_token_usage_bucket{{{LABELS},gen_ai_token_type=\"output\",le=\"67108864\"}} 2\n"
    )));
    assert!(t.contains("# TYPE gen_ai_server_tokens_total counter\n"));
}

#[test]
fn requests_by_outcome() {
    let m = RequestMetrics::new();
    m.record(&chat("m", 10, None, None));
    m.record(&chat("m", 10, None, None));
    let mut cancelled = chat("m", 10, None, None);
    cancelled.cancelled = true;
    m.record(&cancelled);
    let mut error = chat("m", 10, None, None);
    error.error_type = Some("429".into());
    m.record(&error);
    let mut status_only = chat("m", 10, None, None);
    status_only.failed = true;
    m.record(&status_only);
    let t = family(&m, "infertap_requests_total");
    assert!(
        t.contains(&format!(
            "infertap_requests_total{{{LABELS},outcome=\"completed\"}} 2\n"
        )),
        "{t}"
    );
    assert!(t.contains(&format!(
        "infertap_requests_total{{{LABELS},outcome=\"cancelled\"}} 1\n"
    )));
    assert!(t.contains(&format!(
        "infertap_requests_total{{{LABELS},outcome=\"error\",error_type=\"429\"}} 1\n"
    )));
    assert!(t.contains(&format!(
        "infertap_requests_total{{{LABELS},outcome=\"error\",error_type=\"_OTHER\"}} 1\n"
    )));
}

#[test]
fn http_duration_for_every_server_span_with_bounded_method() {
    let m = RequestMetrics::new();
    let health = Summary {
        operation: None,
        provider: None,
        request_model: None,
        response_model: None,
        ..chat("m", 3, None, None)
    };
    m.record(&health);
    let mut odd = chat("m", 30, None, None);
    odd.method = Some("BREW-COFFEE-42".into());
    m.record(&odd);
    let t = text(&m);
    assert!(t.contains(
        "http_server_request_duration_seconds_bucket{http_request_method=\"POST\",http_response_status_code=\"200\",server_port=\"8000\",le=\"0.005\"} 1\n"
    ), "{t}");
    assert!(t.contains(
        "http_server_request_duration_seconds_count{http_request_method=\"_OTHER\",http_response_status_code=\"200\",server_port=\"8000\"} 1\n"
    ));
    assert!(!t.contains("BREW"));
    // The span without GenAI attributes counts only as an HTTP request.
    assert!(t.contains(&format!(
        "infertap_requests_total{{{LABELS},outcome=\"completed\"}} 1\n"
    )));
}

#[test]
fn client_spans_are_not_recorded() {
    let m = RequestMetrics::new();
    let mut client = chat("m", 10, Some(0.1), Some((1, 2)));
    client.server = false;
    m.record(&client);
    assert_eq!(m.series_count(), 0);
}

#[test]
fn cardinality_is_capped_with_one_overflow_series() {
    let m = RequestMetrics::with_series_limit(2);
    for model in ["a", "b", "c", "d", "a"] {
        m.record(&chat(model, 100, Some(0.05), None));
    }
    let t = family(&m, "gen_ai_server_time_to_first_token_seconds");
    assert!(t.contains("gen_ai_request_model=\"a\",gen_ai_response_model=\"a\",server_address=\"10.0.0.1\",server_port=\"8000\"} 2\n"));
    assert!(t.contains("gen_ai_request_model=\"b\""));
    assert!(!t.contains("gen_ai_request_model=\"c\""));
    assert!(!t.contains("gen_ai_request_model=\"d\""));
    assert!(
        t.contains(
            "gen_ai_server_time_to_first_token_seconds_count{otel_metric_overflow=\"true\"} 2\n"
        ),
        "{t}"
    );
    let all = text(&m);
    assert!(all.contains(
        "infertap_metrics_series_overflow_total{metric=\"gen_ai_server_time_to_first_token_seconds\"} 2\n"
    ));
    assert!(all.contains("infertap_metrics_series_overflow_total{metric=\"http_server_request_duration_seconds\"} 0\n"));
    // Duration, requests and TTFT each sent two records to overflow; HTTP stayed at one series.
    assert_eq!(m.overflowed(), 6);
    // Two series each for TTFT, duration, requests; one for HTTP.
    assert_eq!(m.series_count(), 7);
}

#[test]
fn label_values_are_escaped_and_bounded() {
    let m = RequestMetrics::new();
    m.record(&chat("we\"ird\\mo\ndel", 10, Some(0.1), None));
    let t = family(&m, "gen_ai_server_time_to_first_token_seconds");
    assert!(
        t.contains("gen_ai_request_model=\"we\\\"ird\\\\mo\\ndel\""),
        "{t}"
    );
    assert_eq!(t.matches('\n').count(), 2 + TTFT_BUCKETS.len() + 3);

    let long = "é".repeat(200); // 400 bytes
    let m = RequestMetrics::new();
    m.record(&chat(&long, 10, Some(0.1), None));
    let t = family(&m, "gen_ai_server_time_to_first_token_seconds");
    assert!(t.contains(&format!("gen_ai_request_model=\"{}\"", "é".repeat(128))));
    assert!(!t.contains(&"é".repeat(129)));
}

#[test]
fn no_unbounded_attribute_ever_becomes_a_label() {
    let m = RequestMetrics::new();
    let summary = chat_from_the_wire();
    m.record_with_chunk_times(&summary, &[0, 10 * MS]);
    let t = text(&m);
    for forbidden in [
        "request_id",
        "req-8c1f",
        "client_port",
        "51234",
        "client_address",
        "10.0.0.9",
        "url_path",
        "/v1/chat",
        "chatcmpl",
        "response_id",
        "max_tokens",
        "4242",
        "pid",
    ] {
        assert!(!t.contains(forbidden), "{forbidden} leaked into\n{t}");
    }
    // Every label name used is one of the allowed keys.
    let allowed: Vec<String> = INSTRUMENTS
        .iter()
        .flat_map(|s| s.keys.iter().map(|k| sanitize_name(k)))
        .chain(["le".into(), "otel_metric_overflow".into(), "metric".into()])
        .collect();
    for line in t.lines().filter(|l| !l.starts_with('#')) {
        if let Some(labels) = line
            .split_once('{')
            .map(|(_, r)| r.rsplit_once('}').unwrap().0)
        {
            for pair in labels.split("\",") {
                let name = pair.split_once('=').unwrap().0;
                assert!(allowed.iter().any(|a| a == name), "label {name} in {line}");
            }
        }
    }
}

#[test]
fn recording_an_existing_series_adds_no_series() {
    let m = RequestMetrics::new();
    m.record(&chat("m", 10, Some(0.1), Some((1, 3))));
    let n = m.series_count();
    for _ in 0..100 {
        m.record(&chat("m", 10, Some(0.1), Some((1, 3))));
    }
    assert_eq!(m.series_count(), n);
    assert!(family(&m, "infertap_requests_total").contains(" 101\n"));
}

#[test]
fn every_family_is_named_by_the_otel_to_prometheus_rules() {
    for spec in INSTRUMENTS {
        let unit = match spec.unit {
            "s" => "_seconds",
            _ => "",
        };
        let total = match spec.kind {
            InstrumentKind::Counter => "_total",
            InstrumentKind::Histogram(_) => "",
        };
        assert_eq!(
            spec.prometheus_name,
            format!("{}{unit}{total}", sanitize_name(spec.otel_name))
        );
        if let InstrumentKind::Histogram(b) = spec.kind {
            assert!(
                b.windows(2).all(|w| w[0] < w[1]),
                "{} buckets unsorted",
                spec.otel_name
            );
        }
    }
}

#[test]
fn pods_label_genai_metrics_by_namespace_and_name_never_by_uid() {
    let m = RequestMetrics::new();
    let span = Summary {
        namespace: Some("llm".into()),
        pod: Some("vllm-0".into()),
        ..chat("m", 500, Some(0.05), Some((10, 20)))
    };
    m.record(&span);
    let out = text(&m);
    let pod = "k8s_namespace_name=\"llm\",k8s_pod_name=\"vllm-0\"";
    for name in [
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "gen_ai_server_request_duration_seconds_count",
        "gen_ai_server_tokens_total",
        "infertap_requests_total",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(name) && l.contains(pod)),
            "{name} without the pod labels:\n{out}"
        );
    }
    assert!(!out.contains("uid") && !out.contains("0d7e9a52"), "{out}");
    assert!(!out.contains("k8s_container_name") && !out.contains("k8s_deployment_name"));
    // A second pod is a second series; outside Kubernetes there is no pod label at all.
    let mut other = span.clone();
    other.pod = Some("vllm-1".into());
    let before = m.series_count();
    m.record(&other);
    assert!(m.series_count() > before);
    let plain = RequestMetrics::new();
    plain.record(&chat("m", 500, Some(0.05), None));
    assert!(!text(&plain).contains("k8s_"));
}

/// Exchanges on one server connection, taken from the wire (request and response bytes in
/// turn), through the connection table and `span_of`: their summaries.
fn from_the_wire(exchanges: &[(String, String)]) -> Vec<Summary> {
    built_from_the_wire(exchanges)
        .into_iter()
        .map(|b| b.summary)
        .collect()
}

/// [`from_the_wire`]'s spans and summaries.
fn built_from_the_wire(exchanges: &[(String, String)]) -> Vec<crate::trace::Built> {
    let stats = Stats::default();
    let mut table = ConnTable::new(4, u64::MAX);
    let id = ConnId {
        tgid: 4242,
        conn_id: 1,
    };
    table.open(
        id,
        5,
        Role::Server,
        Some("10.0.0.1:8000".parse().unwrap()),
        Some("10.0.0.9:51234".parse().unwrap()),
        Origin::Start,
        0,
        &stats,
    );
    let mut out = Vec::new();
    let mut pos = [0u64; 2];
    let mut ts = MS;
    for (request, response) in exchanges {
        for (d, dir, bytes) in [
            (0, SocketDir::Ingress, request.as_bytes()),
            (1, SocketDir::Egress, response.as_bytes()),
        ] {
            ts += MS;
            let chunk = DataChunk {
                tgid: 4242,
                tid: 4242,
                ts_ns: ts,
                conn_id: 1,
                fd: 5,
                dir,
                last: true,
                eof: false,
                after_loss: false,
                syscall: 0,
                stream_pos: pos[d],
                syscall_pos: pos[d],
                syscall_len: bytes.len() as u64,
                payload: bytes,
            };
            pos[d] += bytes.len() as u64;
            table.data(&chunk, &stats, &mut out);
        }
    }
    let clock = WallClock::measure();
    out.iter()
        .map(|f| {
            crate::trace::span_of(
                &f.work,
                &f.meta,
                &clock,
                &BuildOptions::default(),
                &mut RandomIds,
            )
        })
        .collect()
}

fn json_response(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn chat_request(model: &str) -> String {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

const MODELS_LIST: &str = r#"{"object":"list","data":[{"id":"llama","object":"model"},{"id":"lora-a","object":"model","parent":"llama"}]}"#;

/// Every value a label takes in the text exposition.
fn label_values(m: &RequestMetrics, label: &str) -> std::collections::BTreeSet<String> {
    let key = format!("{label}=\"");
    text(m)
        .lines()
        .filter_map(|l| {
            l.split_once(&key)
                .map(|(_, r)| r.split('"').next().unwrap().to_string())
        })
        .collect()
}

fn models_summary(models: &[&str]) -> Summary {
    Summary {
        kind: SummaryKind::Http,
        server: true,
        method: Some("GET".into()),
        status_code: Some(200),
        server_address: Some("10.0.0.1".into()),
        server_port: Some(8000),
        served_models: models.iter().map(|m| m.to_string()).collect(),
        ..Summary::default()
    }
}

#[test]
fn ten_thousand_client_model_names_label_only_served_models_and_other() {
    let m = RequestMetrics::new();
    m.record(&models_summary(&["llama", "lora-a"]));
    let mut flat = None;
    for i in 0..10_000 {
        let mut s = chat(&format!("junk-{i}"), 10, Some(0.01), Some((3, 4)));
        if i % 2 == 0 {
            // A hostile server echoing the name: still not served.
            s.response_model = Some(format!("junk-{i}"));
        } else {
            // vLLM: 404, no response model.
            s.status_code = Some(404);
            s.response_model = None;
            s.error_type = Some("NotFoundError".into());
        }
        m.record(&s);
        m.record(&chat(
            if i % 3 == 0 { "llama" } else { "lora-a" },
            10,
            Some(0.01),
            None,
        ));
        if i == 99 {
            flat = Some(m.series_count());
        }
    }
    assert_eq!(m.series_count(), flat.unwrap(), "series stay flat");
    assert_eq!(m.overflowed(), 0);
    let want: std::collections::BTreeSet<String> =
        ["llama", "lora-a", "other"].map(String::from).into();
    assert_eq!(label_values(&m, "gen_ai_request_model"), want);
    assert_eq!(label_values(&m, "gen_ai_response_model"), want);
}

#[test]
fn before_a_model_list_the_servers_own_answers_bound_the_labels() {
    let m = RequestMetrics::new();
    // The usual server answers with the model it served: labelled as sent.
    m.record(&chat("m", 10, Some(0.01), None));
    // An echoing server: only the first PROVISIONAL_MAX names, then `other`.
    for i in 0..1_000 {
        m.record(&chat(&format!("echo-{i}"), 10, Some(0.01), None));
    }
    let values = label_values(&m, "gen_ai_request_model");
    assert_eq!(values.len(), served::PROVISIONAL_MAX + 1, "{values:?}");
    assert!(values.contains("m") && values.contains("other"));
    // A request model the server never answered with is `other`.
    let mut unanswered = chat("never-served", 10, Some(0.01), None);
    unanswered.status_code = Some(404);
    unanswered.response_model = None;
    m.record(&unanswered);
    assert!(!label_values(&m, "gen_ai_request_model").contains("never-served"));
    // Once the list is seen it replaces the provisional names.
    m.record(&models_summary(&["m"]));
    m.record(&chat("echo-1", 10, Some(0.01), None));
    let t = family(&m, "infertap_requests_total");
    assert!(
        t.contains("gen_ai_request_model=\"other\",gen_ai_response_model=\"other\""),
        "{t}"
    );
}

#[test]
fn model_lists_are_learned_per_server() {
    let m = RequestMetrics::new();
    m.record(&models_summary(&["llama"]));
    let mut elsewhere = chat("llama", 10, Some(0.01), None);
    elsewhere.server_port = Some(9000);
    elsewhere.response_model = None;
    m.record(&elsewhere);
    let t = family(&m, "infertap_requests_total");
    assert!(
        t.contains(
            "gen_ai_request_model=\"other\",server_address=\"10.0.0.1\",server_port=\"9000\""
        ),
        "{t}"
    );
}

#[test]
fn served_models_flow_from_a_models_answer_on_the_wire() {
    let mut exchanges = vec![(
        "GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n".to_string(),
        json_response("200 OK", MODELS_LIST),
    )];
    for i in 0..300 {
        let model = if i % 3 == 0 {
            "llama".to_string()
        } else {
            format!("junk-{i}")
        };
        let answer = format!(
            r#"{{"id":"c{i}","model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"yo"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":5,"completion_tokens":9}}}}"#
        );
        exchanges.push((chat_request(&model), json_response("200 OK", &answer)));
    }
    let summaries = from_the_wire(&exchanges);
    assert_eq!(summaries.len(), 301);
    assert_eq!(summaries[0].served_models, ["llama", "lora-a"]);
    assert!(summaries[1..].iter().all(|s| s.served_models.is_empty()));
    let m = RequestMetrics::new();
    for s in &summaries {
        m.record(s);
    }
    let want: std::collections::BTreeSet<String> = ["llama", "other"].map(String::from).into();
    assert_eq!(label_values(&m, "gen_ai_request_model"), want);
    // The span keeps what was sent.
    assert_eq!(summaries[2].request_model.as_deref(), Some("junk-1"));
}

#[test]
fn a_stream_longer_than_its_kept_times_still_feeds_every_gap() {
    use crate::exchange::gaps::GapSketch;
    let m = RequestMetrics::new();
    let mut s = chat("m", 2_000, Some(0.1), None);
    let mut later = GapSketch::new();
    for _ in 0..1_000 {
        later.add(20 * MS);
    }
    s.later_gaps = Some(Box::new(later));
    m.record_with_chunk_times(&s, &[0, 10 * MS, 20 * MS]);
    let t = family(&m, "gen_ai_server_inter_token_latency_seconds");
    assert!(
        t.contains(&format!(
            "gen_ai_server_inter_token_latency_seconds_count{{{LABELS}}} 1002\n"
        )),
        "{t}"
    );
    // 20 ms gaps (within 2%) all fall in the 0.025 s bucket.
    assert!(
        t.contains(&format!(
            "gen_ai_server_inter_token_latency_seconds_bucket{{{LABELS},le=\"0.01\"}} 2\n"
        )),
        "{t}"
    );
    assert!(t.contains(&format!(
        "gen_ai_server_inter_token_latency_seconds_bucket{{{LABELS},le=\"0.025\"}} 1002\n"
    )));
}

#[test]
fn idle_series_are_evicted_and_come_back_from_zero() {
    let m = RequestMetrics::new();
    m.record(&chat("a", 10, Some(0.01), None));
    let n = m.series_count();
    assert!(n > 0);
    // Not idle yet: nothing goes.
    assert_eq!(m.evict_idle_at(Instant::now() + DEFAULT_IDLE_AFTER / 2), 0);
    assert_eq!(m.series_count(), n);
    // Idle: every labelled series goes, and with it its lines on /metrics.
    assert_eq!(m.evict_idle_at(Instant::now() + DEFAULT_IDLE_AFTER), n);
    assert_eq!(m.series_count(), 0);
    assert!(!family(&m, "infertap_requests_total").contains("gen_ai_request_model"));
    // Recorded again: a new series from zero (a counter reset for Prometheus), found again by
    // the rebuilt index.
    m.record(&chat("b", 10, Some(0.01), None));
    m.record(&chat("a", 10, Some(0.01), None));
    m.record(&chat("a", 10, Some(0.01), None));
    m.evict_idle_at(Instant::now() + DEFAULT_IDLE_AFTER / 2);
    m.record(&chat("a", 10, Some(0.01), None));
    let t = family(&m, "infertap_requests_total");
    assert!(t.contains("gen_ai_request_model=\"a\",gen_ai_response_model=\"a\",server_address=\"10.0.0.1\",server_port=\"8000\",outcome=\"completed\"} 3\n"), "{t}");
    // Both models; the HTTP duration series (no model label) is shared.
    assert_eq!(m.series_count(), 2 * n - 1);
}

#[test]
fn decode_legs_record_the_kv_transfer_gap_by_model() {
    let m = RequestMetrics::new();
    let decode = Summary {
        pd_role: Some("decode"),
        kv_transfer_gap_s: Some(0.007),
        ..chat("llama", 100, Some(0.02), Some((5, 9)))
    };
    m.record(&decode);
    m.record(&chat("llama", 100, Some(0.02), Some((5, 9))));
    let f = family(&m, "infertap_pd_kv_transfer_gap_seconds");
    assert!(f.contains("_count{"), "{f}");
    assert!(f.contains("gen_ai_request_model=\"llama\""), "{f}");
    assert!(f.contains("} 1\n"), "one decode leg: {f}");
}

#[test]
fn reported_queue_time_and_the_wire_s_share_are_histograms_by_model() {
    let m = RequestMetrics::new();
    m.record(&Summary {
        queue_s: Some(0.12),
        api_server_s: Some(0.004),
        ..chat("llama", 100, Some(0.2), Some((5, 9)))
    });
    for name in [
        "infertap_server_time_in_queue_seconds",
        "infertap_latency_api_server_seconds",
    ] {
        let f = family(&m, name);
        assert!(f.contains("gen_ai_request_model=\"llama\""), "{f}");
        assert!(f.contains("_count{"), "{f}");
    }
}
