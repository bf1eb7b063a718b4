//! Prefill/decode disaggregation (issue 15, item 4), end to end as root: a stand-in for llm-d's
//! routing sidecar (`tests/peers/pd_sidecar.py`) makes both legs of one request — the prefill leg
//! (`kv_transfer_params.do_remote_decode`, `max_tokens: 1`) to one stand-in server, then, after a
//! gap it measures, the decode leg (with the prefill's returned `kv_transfer_params`) to a second
//! one — with a shared `x-request-id` (and `traceparent`). The agent tracing both servers must put
//! both legs in one trace, mark `llm_d.pd.role`, and give the decode leg the KV-transfer gap the
//! sidecar made (± 2 ms) as `infertap.pd.kv_transfer_gap` and in the histogram on `/metrics`.
//!
//! Run: `CI=true cargo xtask test -- pd_` (as root).

use std::time::Duration;

use infertap_tests::harness::{
    self, attr, begin, poll, Agent, Proc, StandIn, StandInOpts, TestCtx,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
/// The agent's gap (prefill server's last write → decode server's first read, kernel times) against
/// the sidecar's (its read of the prefill's end → its send of the decode leg, user-space times).
const TOLERANCE_S: f64 = 0.002;

/// Runs the sidecar once; its JSON report.
fn sidecar(ctx: &TestCtx, prefill: u16, decode: u16, gap_ms: u64, extra: &[&str]) -> Value {
    let mut cmd = harness::python("pd_sidecar.py");
    cmd.args(["--prefill-port", &prefill.to_string()])
        .args(["--decode-port", &decode.to_string()])
        .args(["--gap-ms", &gap_ms.to_string()])
        .args(extra);
    let log = ctx.file(&format!("sidecar-{gap_ms}.log"));
    let mut proc = Proc::spawn("pd_sidecar.py", cmd, log);
    let status = proc.wait(Duration::from_secs(60));
    let text = proc.log_text();
    assert!(status.success(), "the sidecar failed ({status}):\n{text}");
    let report: Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no report from the sidecar:\n{text}"));
    assert_eq!(report["prefill_status"], 200, "{report}");
    assert_eq!(report["decode_status"], 200, "{report}");
    assert_eq!(report["prefill_returned_params"], true, "{report}");
    report
}

/// The two legs' spans (the completions, not the sidecar's warm-up `GET /health`), prefill first.
fn legs(agent: &Agent, request_id: &str) -> (Value, Value) {
    let spans = poll(WAIT, || {
        let mut s: Vec<Value> = agent
            .spans()
            .into_iter()
            .filter(|s| attr(s, "url.path") == "/v1/completions")
            .filter(|s| attr(s, "gen_ai.request.id") == request_id)
            .collect();
        s.sort_by_key(|s| s["start_time_unix_nano"].as_u64());
        (s.len() >= 2).then_some(s)
    })
    .unwrap_or_else(|| panic!("not two legs of {request_id}: {:#?}", agent.spans()));
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let mut it = spans.into_iter();
    (it.next().unwrap(), it.next().unwrap())
}

fn check(prefill: &Value, decode: &Value, report: &Value, ports: (u16, u16)) {
    assert_eq!(attr(prefill, "llm_d.pd.role"), "prefill", "{prefill:#}");
    assert_eq!(attr(decode, "llm_d.pd.role"), "decode", "{decode:#}");
    assert_eq!(attr(prefill, "server.port"), ports.0, "{prefill:#}");
    assert_eq!(attr(decode, "server.port"), ports.1, "{decode:#}");
    assert_eq!(prefill["trace_id"], decode["trace_id"], "one trace");
    if let Some(t) = report["trace_id"].as_str() {
        assert_eq!(decode["trace_id"], t, "the sidecar's trace");
    }
    assert!(
        attr(prefill, "infertap.pd.kv_transfer_gap").is_null(),
        "{prefill:#}"
    );
    let gap = attr(decode, "infertap.pd.kv_transfer_gap")
        .as_f64()
        .unwrap_or_else(|| panic!("no transfer gap on the decode leg: {decode:#}"));
    let made = report["gap_s"].as_f64().unwrap();
    println!("kv transfer gap: agent {gap:.6} s, sidecar {made:.6} s");
    assert!(
        (gap - made).abs() <= TOLERANCE_S,
        "the agent's gap {gap} s, the sidecar's {made} s"
    );
}

/// `infertap_pd_kv_transfer_gap_seconds_{count,sum}` summed over their series.
fn histogram(agent: &Agent) -> (f64, f64) {
    let text = agent.metrics();
    let total = |suffix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("infertap_pd_kv_transfer_gap_seconds_{suffix}")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (total("count"), total("sum"))
}

#[test]
fn pd_legs_make_one_trace_with_the_kv_transfer_gap_the_sidecar_made() {
    let Some(ctx) = begin("pd_legs_make_one_trace_with_the_kv_transfer_gap_the_sidecar_made")
    else {
        return;
    };
    let prefill = StandIn::start(&ctx, StandInOpts::default());
    let decode = StandIn::start(&ctx, StandInOpts::default());
    let dport = decode.port.to_string();
    let agent = Agent::start(&ctx, &prefill, &["--target-port", &dport], &[]);
    agent.wait_targeted(decode.pid(), "the decode server");
    let ports = (prefill.port, decode.port);

    // With a traceparent, then by x-request-id alone (the derived trace id joins the legs).
    let a = sidecar(&ctx, prefill.port, decode.port, 120, &[]);
    let b = sidecar(&ctx, prefill.port, decode.port, 40, &["--no-traceparent"]);
    let mut gaps = 0.0;
    for report in [&a, &b] {
        let (p, d) = legs(&agent, report["request_id"].as_str().unwrap());
        check(&p, &d, report, ports);
        gaps += attr(&d, "infertap.pd.kv_transfer_gap").as_f64().unwrap();
    }
    let (count, sum) = poll(WAIT, || Some(histogram(&agent)).filter(|(c, _)| *c >= 2.0))
        .unwrap_or_else(|| panic!("no gap histogram:\n{}", agent.metrics()));
    assert_eq!(count, 2.0);
    assert!(
        (sum - gaps).abs() < 1e-6,
        "histogram sum {sum}, spans {gaps}"
    );
}
