//! Whole buffers (issue 14): reads and writes of 256 KiB and 1 MiB on HTTP/1.1 and HTTP/2
//! connections are copied whole — no byte counted lost, and on HTTP/2 the HPACK state survives
//! them (a later exchange whose headers are all dynamic-table references is still decoded). As
//! root; the peer is `tests/peers/bigbuf.py`.
//!
//! Run: `CI=true cargo xtask test -- whole_buffers` (as root).

use std::process::Command;
use std::time::Duration;

use infertap_tests::harness::{self, attr, free_port, poll, random_hex, Agent, Proc};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn wait_log(p: &Proc, text: &str) {
    poll(WAIT, || p.log_text().contains(text).then_some(()))
        .unwrap_or_else(|| panic!("{} never printed {text:?}:\n{}", p.name, p.log_text()));
}

/// The peer `script` (in `tests/peers`) run as a server with `server_args`, once the agent
/// targets it as a client with `client_args`; returns when the client is done and the server has
/// served. Each prints "listening", "done" and "served" as it gets there.
fn serve_and_ask(
    ctx: &harness::TestCtx,
    agent: &Agent,
    script: &str,
    server_args: &[&str],
    client_args: &[&str],
) {
    let p = harness::paths();
    let spawn = |role: &str, args: &[&str]| {
        let mut cmd = Command::new(&p.python);
        cmd.arg(p.peers.join(script)).arg(role).args(args);
        Proc::spawn(
            &format!("{script} {role}"),
            cmd,
            ctx.file(&format!("{role}.log")),
        )
    };
    let server = spawn("server", server_args);
    wait_log(&server, "listening");
    agent.wait_targeted(server.pid(), "the server");
    let client = spawn("client", client_args);
    wait_log(&client, "done");
    wait_log(&server, "served");
}

/// `/status` once a housekeeping tick (one a second) has passed: the kernel's drop counters
/// reach it only then.
fn status_after_a_tick(agent: &Agent) -> Value {
    std::thread::sleep(Duration::from_millis(1500));
    agent.status()
}

fn whole(proto: &str, size: usize) {
    let Some(ctx) = harness::begin(&format!("whole_buffers_{proto}_{size}")) else {
        return;
    };
    let marker = format!("bigbuf-{}", random_hex(4));
    let agent = Agent::start_with(&ctx, &["--target-cmdline", &marker], &[], None);
    let port = free_port().to_string();
    let size_s = size.to_string();
    serve_and_ask(
        &ctx,
        &agent,
        "bigbuf.py",
        &[&marker, proto, &size_s, &port],
        &[proto, &size_s, &port],
    );

    let spans = poll(WAIT, || {
        let spans: Vec<Value> = agent
            .spans()
            .into_iter()
            .filter(|s| attr(s, "gen_ai.request.model") == "big-model")
            .collect();
        (spans.len() >= 3).then_some(spans)
    });
    let status = status_after_a_tick(&agent);
    let spans = spans.unwrap_or_else(|| {
        panic!(
            "{proto} {size}: fewer than 3 spans: {:#}\nstatus: {status:#}",
            Value::Array(agent.spans())
        )
    });
    let mut ids: Vec<&str> = spans
        .iter()
        .filter_map(|s| attr(s, "gen_ai.response.id").as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["big-1", "big-2", "big-3"],
        "{proto} {size}: every response decoded, the one after the large ones too: {spans:#?}"
    );
    for s in &spans {
        assert_eq!(attr(s, "gen_ai.response.model"), "resp-model", "{s:#}");
        assert!(attr(s, "infertap.incomplete").is_null(), "{s:#}");
    }
    assert_eq!(
        status["records"]["lost_bytes"], 0,
        "{proto} {size}: bytes lost: {status:#}"
    );
    let dropped: u64 = status["records"]["kernel_dropped"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    assert_eq!(dropped, 0, "{status:#}");
    if proto == "h2" {
        assert_eq!(status["http2"]["frame_errors"], 0, "{status:#}");
    }
}

#[test]
fn whole_buffers_http1_256k() {
    whole("h1", 256 * 1024);
}

#[test]
fn whole_buffers_http1_1m() {
    whole("h1", 1024 * 1024);
}

#[test]
fn whole_buffers_http2_256k() {
    whole("h2", 256 * 1024);
}

#[test]
fn whole_buffers_http2_1m() {
    whole("h2", 1024 * 1024);
}

/// Small iovecs take ring slots near their own size: 25 pipelined answers, each one `sendmsg` of
/// a ~240-byte head and a 500-byte body, written back to back into a 64 KiB ring. At 4 KiB a slot
/// (what an iovec under 4 KiB took before) they need 208 KiB and most are refused before the
/// agent's next drain; at 512-byte slots they need 30 KiB, and every answer is a span.
#[test]
fn whole_buffers_small_iovecs_fit_a_small_ring() {
    let Some(ctx) = harness::begin("whole_buffers_small_iovecs_fit_a_small_ring") else {
        return;
    };
    const COUNT: usize = 25;
    let marker = format!("iovecs-{}", random_hex(4));
    let agent = Agent::start_with(
        &ctx,
        &["--target-cmdline", &marker, "--ring-buffer-size", "65536"],
        &[],
        None,
    );
    let port = free_port().to_string();
    let count = COUNT.to_string();
    serve_and_ask(
        &ctx,
        &agent,
        "iovecs.py",
        &[&marker, &port, &count],
        &[&port, &count],
    );

    let spans = poll(WAIT, || {
        let spans: Vec<Value> = agent
            .spans()
            .into_iter()
            .filter(|s| {
                attr(s, "url.path")
                    .as_str()
                    .is_some_and(|p| p.starts_with("/iov/"))
            })
            .collect();
        (spans.len() >= COUNT).then_some(spans)
    });
    let status = status_after_a_tick(&agent);
    let spans = spans.unwrap_or_else(|| {
        panic!(
            "fewer than {COUNT} spans of the pipelined answers\nstatus: {status:#}\nspans: {:#}",
            Value::Array(agent.spans())
        )
    });
    let mut paths: Vec<String> = spans
        .iter()
        .filter_map(|s| attr(s, "url.path").as_str().map(str::to_owned))
        .collect();
    paths.sort_unstable();
    paths.dedup();
    assert_eq!(paths.len(), COUNT, "every answer once: {paths:?}");
    assert_eq!(status["records"]["lost_bytes"], 0, "{status:#}");
    assert_eq!(
        status["records"]["kernel_dropped"]["ringbuf_full_data"], 0,
        "{status:#}"
    );
}
