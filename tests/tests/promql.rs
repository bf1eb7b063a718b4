//! The PromQL of `docs/operators.md`, evaluated by a real Prometheus scraping the real agent while
//! the vLLM stand-in serves a known workload; and the Grafana dashboard, whose panels must use those
//! queries verbatim.
//!
//! The queries are parsed out of the doc (fenced `promql` blocks whose first line is
//! `# name: <name>`), so the doc, the dashboard and this test cannot drift apart.
//!
//! Needs `/usr/bin/prometheus` (Debian's `prometheus` package: `xtask`'s
//! `deps::ensure_prometheus`), or `INFERTAP_PROMETHEUS`.
//!
//! Run: `cargo test --release -p infertap-tests --test promql -- --test-threads=1` (as root).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use infertap_tests::fake_nvml::{Device, FakeNvml, Process, Series, Timeline};
use infertap_tests::harness::{self, client, poll, Agent, Proc, StandIn, StandInOpts, TestCtx};
use infertap_tests::prometheus::Prometheus;
use serde_json::Value;

const MODEL: &str = "standin-model";
/// The model label of requests for a model the server does not serve (`client.py --scenario
/// error-404` asks for `no-such-model`): client-chosen names are never label values.
const MISSING_MODEL: &str = "other";
const TTFT_MS: u64 = 100;
const INTERVAL_MS: u64 = 20;
const MAX_TOKENS: u64 = 8;
/// Routed requests (through the EPP stand-in, with the response phase): prompt tokens the model
/// server reports cached, of the Envoy stand-in's 5-word prompt.
const ROUTED_CACHED: u64 = 3;
const ROUTED_PROMPT: u64 = 5;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The documented queries, by name, in the doc's order.
fn documented_queries() -> Vec<(String, String)> {
    let path = workspace().join("docs/operators.md");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```promql" {
            continue;
        }
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let first = body.first().copied().unwrap_or_default();
        let name = first
            .trim()
            .strip_prefix("# name:")
            .unwrap_or_else(|| panic!("a promql block without a `# name:` first line: {body:?}"))
            .trim()
            .to_string();
        let expr = body[1..].join("\n").trim().to_string();
        assert!(!expr.is_empty(), "query {name} is empty");
        assert!(
            out.iter().all(|(n, _)| *n != name),
            "query name {name} is used twice"
        );
        out.push((name, expr));
    }
    out
}

/// Every `expr` of every panel's targets (rows' nested panels included).
fn panel_exprs(panels: &Value, out: &mut Vec<(String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_string()));
            }
        }
        panel_exprs(&panel["panels"], out);
    }
}

/// A result sample's value.
fn value(sample: &Value) -> f64 {
    let text = sample["value"][1]
        .as_str()
        .unwrap_or_else(|| panic!("no value in {sample}"));
    match text {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        t => t.parse().unwrap_or_else(|_| panic!("bad value {t}")),
    }
}

/// The labels of a result sample, `key=value` joined, for messages and lookups.
fn labels(sample: &Value) -> BTreeMap<String, String> {
    sample["metric"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The one sample of `results` whose labels include all of `want`.
fn pick<'a>(name: &str, results: &'a [Value], want: &[(&str, &str)]) -> f64 {
    let found: Vec<&'a Value> = results
        .iter()
        .filter(|s| {
            let l = labels(s);
            want.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{name}: expected one sample with {want:?}, results: {results:#?}"
    );
    value(found[0])
}

fn near(name: &str, got: f64, want: f64, tolerance: f64) {
    assert!(
        (got - want).abs() <= tolerance,
        "{name}: {got} is not {want} ± {tolerance}"
    );
}

fn within(name: &str, got: f64, lo: f64, hi: f64) {
    assert!(
        got >= lo && got <= hi,
        "{name}: {got} is outside [{lo}, {hi}]"
    );
}

#[test]
fn dashboard_uses_only_documented_queries() {
    // Pure file checks: no root needed.
    let queries = documented_queries();
    assert!(
        queries.len() >= 15,
        "too few documented queries: {queries:?}"
    );
    let exprs: BTreeSet<&str> = queries.iter().map(|(_, e)| e.as_str()).collect();
    let path = workspace().join("deploy/grafana/infertap-dashboard.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(
        dash["schemaVersion"].as_u64().unwrap_or(0) >= 38,
        "schemaVersion {}",
        dash["schemaVersion"]
    );
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let model = var("model");
    assert_eq!(model["type"], "query");
    let model_query = model["query"]
        .as_str()
        .or_else(|| model["query"]["query"].as_str())
        .unwrap_or_default();
    assert_eq!(
        model_query,
        "label_values(gen_ai_server_request_duration_seconds_count, gen_ai_request_model)"
    );
    let mut panels = Vec::new();
    panel_exprs(&dash["panels"], &mut panels);
    assert!(panels.len() >= 10, "too few panel queries: {panels:?}");
    for (title, expr) in &panels {
        assert!(
            exprs.contains(expr.trim()),
            "panel {title:?}: its expr is not one of docs/operators.md's queries verbatim:\n{expr}"
        );
    }
    // Every panel's datasource is the variable.
    fn datasources(panels: &Value) {
        for p in panels.as_array().into_iter().flatten() {
            if p["type"] != "row" {
                assert_eq!(
                    p["datasource"]["uid"], "${datasource}",
                    "panel {}",
                    p["title"]
                );
            }
            datasources(&p["panels"]);
        }
    }
    datasources(&dash["panels"]);
}

/// A peer script (tests/peers) run with the workspace's Python.
fn peer(ctx: &TestCtx, script: &str, args: &[String], log: &str) -> Proc {
    let mut cmd = harness::python(script);
    cmd.args(args);
    Proc::spawn(script, cmd, ctx.file(log))
}

/// `count` streamed chats through the Envoy stand-in and the EPP, with their response phase.
fn route(ctx: &TestCtx, epp_port: u16, count: usize, log: &str) {
    let args: Vec<String> = [
        "--epp".to_string(),
        format!("127.0.0.1:{epp_port}"),
        "--count".into(),
        count.to_string(),
        "--stream".into(),
        "--cached-tokens".into(),
        ROUTED_CACHED.to_string(),
    ]
    .to_vec();
    let mut proc = peer(ctx, "envoy_standin.py", &args, log);
    let status = proc.wait(Duration::from_secs(120));
    assert!(status.success(), "envoy_standin: {}", proc.log_text());
}

#[test]
fn documented_promql_gives_the_workloads_numbers() {
    let Some(ctx) = harness::begin("documented_promql_gives_the_workloads_numbers") else {
        return;
    };
    let queries = documented_queries();
    // The server reports each request's phases (vLLM's `--enable-per-request-metrics`): a fifth
    // of its first-token wait queued, for the queue-wait query.
    let server = StandIn::start(
        &ctx,
        StandInOpts {
            ttft_ms: TTFT_MS,
            token_interval_ms: INTERVAL_MS,
            env: vec![("STANDIN_PER_REQUEST_METRICS".into(), "1".into())],
            ..StandInOpts::default()
        },
    );
    // Routing: an EPP stand-in (targeted) sends requests to a second model server (not
    // targeted: the counts above stay the first server's).
    let routed_to = StandIn::start(
        &ctx,
        StandInOpts {
            ttft_ms: TTFT_MS,
            token_interval_ms: INTERVAL_MS,
            ..StandInOpts::default()
        },
    );
    let endpoint = format!("127.0.0.1:{}", routed_to.port);
    let (epp, epp_port) = harness::start_epp(&ctx, &endpoint, &[]);
    let epp_port_arg = epp_port.to_string();
    // A fake GPU at a steady 250 W running the server, for the energy-per-token queries.
    let fake = fake_gpu(&ctx, server.pid());
    let nvml = fake.lib.display().to_string();
    let agent = Agent::start(
        &ctx,
        &server,
        &["--target-port", &epp_port_arg, "--nvml-lib", &nvml],
        &[],
    );
    let epp_targeted = poll(Duration::from_secs(10), || {
        let t = agent.status()["targets"].as_array()?.clone();
        t.iter()
            .any(|t| t["pid"].as_u64() == Some(u64::from(epp.pid())))
            .then_some(())
    });
    assert!(
        epp_targeted.is_some(),
        "EPP never targeted: {}",
        agent.status()
    );
    let prom = Prometheus::start(&ctx, "infertap", agent.debug_addr);
    let max_tokens = MAX_TOKENS.to_string();
    let run = |scenario: &str, count: usize| {
        client(
            &ctx,
            &server,
            &[
                "--scenario",
                scenario,
                "--count",
                &count.to_string(),
                "--concurrency",
                "1",
                "--max-tokens",
                &max_tokens,
            ],
        )
    };

    // Warm-up: one request of each kind, so that every series exists (and is scraped) before
    // the workload; rate() then sees the whole workload as increase.
    let warmup = [
        ("chat-stream", 1),
        ("error-400", 1),
        ("error-404", 1),
        ("cancel", 1),
    ];
    for (scenario, n) in warmup {
        run(scenario, n);
    }
    route(&ctx, epp_port, 1, "envoy-warmup.log");
    let total = |results: &[Value]| results.iter().map(value).sum::<f64>();
    let counted = |n: f64| {
        poll(Duration::from_secs(20), || {
            let r = prom.query("sum(infertap_requests_total)");
            (total(&r) >= n).then_some(())
        })
        .is_some()
    };
    assert!(
        counted(4.0),
        "prometheus did not see the 4 warm-up requests: {}",
        agent.metrics()
    );
    prom.wait_scrapes(3);

    // The workload.
    let started = Instant::now();
    let workload = [
        ("chat-stream", 20),
        ("error-400", 5),
        ("error-404", 5),
        ("cancel", 3),
    ];
    for (scenario, n) in workload {
        run(scenario, n);
    }
    route(&ctx, epp_port, 4, "envoy-workload.log");
    let all = 4.0 + 33.0;
    assert!(
        counted(all),
        "prometheus did not see all {all} requests: {}",
        agent.metrics()
    );
    prom.wait_scrapes(3);
    eprintln!("workload took {:?}", started.elapsed());

    let mut results: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (name, expr) in &queries {
        let evaluated = expr.replace("$model", ".*");
        let r = prom.query(&evaluated);
        eprintln!(
            "{name}: {}",
            r.iter()
                .map(|s| format!("{:?} = {}", labels(s), value(s)))
                .collect::<Vec<_>>()
                .join("; ")
        );
        assert!(!r.is_empty(), "{name} gave no result:\n{evaluated}");
        results.insert(name.clone(), r);
    }
    let q = |name: &str| -> &[Value] {
        results
            .get(name)
            .unwrap_or_else(|| panic!("docs/operators.md has no query {name}"))
    };
    let m = [("gen_ai_request_model", MODEL)];

    // Raw counters: exactly the requests and tokens sent (warm-up included).
    let outcome = |model: &str, outcome: &str| {
        pick(
            "requests_by_outcome_since_start",
            q("requests_by_outcome_since_start"),
            &[("gen_ai_request_model", model), ("outcome", outcome)],
        )
    };
    assert_eq!(outcome(MODEL, "completed"), 21.0);
    assert_eq!(outcome(MODEL, "error"), 6.0);
    assert_eq!(outcome(MODEL, "cancelled"), 4.0);
    assert_eq!(outcome(MISSING_MODEL, "error"), 6.0);
    let tokens = |kind: &str| {
        pick(
            "tokens_since_start",
            q("tokens_since_start"),
            &[("gen_ai_request_model", MODEL), ("gen_ai_token_type", kind)],
        )
    };
    // Completed streams: 8 output tokens each, from their usage.
    // Completed streams report 8 output tokens each in their usage; cancelled ones count the
    // content chunks the server wrote before the client went away (at least the 3 it read).
    // The metric must add up to the spans' own token counts.
    let span_output: i64 = agent
        .spans()
        .iter()
        .filter(|s| s["attributes"]["gen_ai.request.model"] == MODEL)
        .filter_map(|s| s["attributes"]["gen_ai.usage.output_tokens"].as_i64())
        .sum();
    let output = tokens("output");
    assert_eq!(output, span_output as f64, "output tokens: metric vs spans");
    within(
        "output tokens",
        output,
        21.0 * 8.0 + 4.0 * 3.0,
        21.0 * 8.0 + 4.0 * 64.0,
    );
    assert!(tokens("input") > 0.0);

    // Ratios of rates over the workload (rate() extrapolates each series a little differently
    // at the window's start, hence the tolerances).
    // standin-model: 5 + 1 error-400 of 21 + 6 + 4 (the workload's increase: 5 of 28).
    near(
        "error_ratio_by_model",
        pick("error_ratio_by_model", q("error_ratio_by_model"), &m),
        5.0 / 28.0,
        0.03,
    );
    near(
        "error_ratio_by_model (missing model)",
        pick(
            "error_ratio_by_model",
            q("error_ratio_by_model"),
            &[("gen_ai_request_model", MISSING_MODEL)],
        ),
        1.0,
        1e-9,
    );
    // Fleet: 10 errors of 33.
    near(
        "error_ratio_fleet",
        value(&q("error_ratio_fleet")[0]),
        10.0 / 33.0,
        0.03,
    );
    let by_type = q("error_rate_by_type");
    assert!(
        by_type.len() >= 2,
        "error_rate_by_type: expected 400 and 404 errors apart: {by_type:?}"
    );
    assert!(pick("cancelled_rate_by_model", q("cancelled_rate_by_model"), &m) > 0.0);
    // Workload's output tokens per second over the same window as the requests: 8 per
    // completed request.
    let out_rate = pick(
        "tokens_per_second_by_model",
        q("tokens_per_second_by_model"),
        &[
            ("gen_ai_request_model", MODEL),
            ("gen_ai_token_type", "output"),
        ],
    );
    assert!(out_rate > 0.0);
    near(
        "output_tokens_per_request_by_model",
        pick(
            "output_tokens_per_request_by_model",
            q("output_tokens_per_request_by_model"),
            &m,
        ),
        // The workload: 20 x 8 + 3 cancelled x 3 (or a little more) over 23 requests; rate()
        // extrapolates `_sum` and `_count` a little differently at the series' start.
        (160.0 + 9.0) / 23.0,
        0.7,
    );

    // Latency: the stand-in waits 100 ms for the first token, then 20 ms per token.
    within(
        "ttft_p50_by_model",
        pick("ttft_p50_by_model", q("ttft_p50_by_model"), &m),
        0.1,
        0.25,
    );
    within(
        "ttft_p99_by_model",
        pick("ttft_p99_by_model", q("ttft_p99_by_model"), &m),
        0.1,
        0.5,
    );
    for name in ["ttft_p50_by_instance", "ttft_p99_by_instance"] {
        let r = q(name);
        assert_eq!(r.len(), 1, "{name}: one instance: {r:?}");
        within(name, value(&r[0]), 0.1, 0.5);
    }
    within(
        "itl_p50_by_model",
        pick("itl_p50_by_model", q("itl_p50_by_model"), &m),
        0.01,
        0.05,
    );
    within(
        "itl_p99_by_model",
        pick("itl_p99_by_model", q("itl_p99_by_model"), &m),
        0.01,
        0.25,
    );
    // (duration - TTFT) / 7 = 7 gaps of 20 ms / 7, plus scheduling slack.
    within(
        "tpot_mean_by_model",
        pick("tpot_mean_by_model", q("tpot_mean_by_model"), &m),
        0.018,
        0.05,
    );
    within(
        "tpot_p99_by_model",
        pick("tpot_p99_by_model", q("tpot_p99_by_model"), &m),
        0.01,
        0.1,
    );
    // 100 ms + 7 x 20 ms for a stream; errors are fast.
    within(
        "request_duration_p99_by_model",
        pick(
            "request_duration_p99_by_model",
            q("request_duration_p99_by_model"),
            &m,
        ),
        0.2,
        0.6,
    );

    // One instance: it gets everything, and there is no imbalance.
    let r = q("request_rate_by_instance");
    assert_eq!(r.len(), 1, "one instance: {r:?}");
    assert!(value(&r[0]) > 0.0);
    let r = q("request_share_by_instance");
    assert_eq!(r.len(), 1, "one instance: {r:?}");
    near("request_share_by_instance", value(&r[0]), 1.0, 1e-9);
    near(
        "load_imbalance_max_over_mean",
        value(&q("load_imbalance_max_over_mean")[0]),
        1.0,
        1e-9,
    );
    near(
        "load_imbalance_cv",
        value(&q("load_imbalance_cv")[0]),
        0.0,
        1e-9,
    );

    // Routing payoff: the one endpoint's realised prefix-cache hit ratio is what the server
    // reported (3 of 5 prompt tokens), its routed TTFT covers the 100 ms prefill.
    let e = [("infertap_epp_endpoint", endpoint.as_str())];
    near(
        "routing_prefix_cache_hit_ratio_by_endpoint",
        pick(
            "routing_prefix_cache_hit_ratio_by_endpoint",
            q("routing_prefix_cache_hit_ratio_by_endpoint"),
            &e,
        ),
        ROUTED_CACHED as f64 / ROUTED_PROMPT as f64,
        0.02,
    );
    within(
        "routing_ttft_p90_by_endpoint",
        pick(
            "routing_ttft_p90_by_endpoint",
            q("routing_ttft_p90_by_endpoint"),
            &e,
        ),
        0.1,
        0.5,
    );
    // Queue wait vs TTFT: the server queued each stream for a fifth of its 100 ms first-token
    // wait (20 ms). infertap's TTFT adds the wire and the API server, and counts the requests
    // whose phases were not reported (whole answers, cancelled streams: longer or no queue
    // figure), so the share of the mean is at most 0.2.
    within(
        "queue_wait_share_of_ttft_by_model",
        pick(
            "queue_wait_share_of_ttft_by_model",
            q("queue_wait_share_of_ttft_by_model"),
            &m,
        ),
        0.05,
        0.2,
    );
    within(
        "queue_wait_p90_by_model",
        pick("queue_wait_p90_by_model", q("queue_wait_p90_by_model"), &m),
        0.01,
        0.05,
    );
    // Energy per token: 250 W over a stream of 0.1 s + 7 × 20 ms (and some slack) for 8
    // tokens is 7.5–10 J per token; a cancelled stream's few tokens cost a little more each.
    let j_mean = pick(
        "joules_per_output_token_mean_by_model",
        q("joules_per_output_token_mean_by_model"),
        &m,
    );
    within("joules_per_output_token_mean_by_model", j_mean, 6.0, 16.0);
    within(
        "joules_per_output_token_p50_by_model",
        pick(
            "joules_per_output_token_p50_by_model",
            q("joules_per_output_token_p50_by_model"),
            &m,
        ),
        5.0,
        20.0,
    );
    near(
        "kwh_per_million_output_tokens_by_model",
        pick(
            "kwh_per_million_output_tokens_by_model",
            q("kwh_per_million_output_tokens_by_model"),
            &m,
        ),
        j_mean / 3.6,
        1e-6 * j_mean,
    );

    drop(prom);
    drop(agent);
    drop(epp);
    thread::sleep(Duration::from_millis(10));
}

/// The fake NVML library with one GPU at 250 W and 50 % running `pid`.
fn fake_gpu(ctx: &TestCtx, pid: u32) -> FakeNvml {
    let device = Device {
        gpu_util: Series::constant(50.0),
        power_mw: Series::constant(250_000.0),
        processes: vec![Process {
            pid,
            used_memory_bytes: Series::constant((8u64 << 30) as f64),
            ..Process::default()
        }],
        ..Device::default()
    };
    FakeNvml::install(&ctx.file("nvml"), Timeline::new(vec![device]))
}
