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

fn whole(proto: &str, size: usize) {
    let Some(ctx) = harness::begin(&format!("whole_buffers_{proto}_{size}")) else {
        return;
    };
    let marker = format!("bigbuf-{}", random_hex(4));
    let agent = Agent::start_with(&ctx, &["--target-cmdline", &marker], &[], None);
    let p = harness::paths();
    let port = free_port().to_string();
    let size_s = size.to_string();
    let mut cmd = Command::new(&p.python);
    cmd.arg(p.peers.join("bigbuf.py"))
        .args(["server", &marker, proto, &size_s, &port]);
    let server = Proc::spawn("bigbuf server", cmd, ctx.file("server.log"));
    wait_log(&server, "listening");
    poll(WAIT, || {
        agent.status()["targets"]
            .as_array()?
            .iter()
            .any(|t| t["pid"].as_u64() == Some(u64::from(server.pid())))
            .then_some(())
    })
    .expect("the server is targeted");
    let mut cmd = Command::new(&p.python);
    cmd.arg(p.peers.join("bigbuf.py"))
        .args(["client", proto, &size_s, &port]);
    let client = Proc::spawn("bigbuf client", cmd, ctx.file("client.log"));
    wait_log(&client, "done");
    wait_log(&server, "served");

    let spans = poll(WAIT, || {
        let spans: Vec<Value> = agent
            .spans()
            .into_iter()
            .filter(|s| attr(s, "gen_ai.request.model") == "big-model")
            .collect();
        (spans.len() >= 3).then_some(spans)
    });
    let status = agent.status();
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
    let p = harness::paths();
    let port = free_port().to_string();
    let count = COUNT.to_string();
    let mut cmd = Command::new(&p.python);
    cmd.arg(p.peers.join("iovecs.py"))
        .args(["server", &marker, &port, &count]);
    let server = Proc::spawn("iovecs server", cmd, ctx.file("server.log"));
    wait_log(&server, "listening");
    poll(WAIT, || {
        agent.status()["targets"]
            .as_array()?
            .iter()
            .any(|t| t["pid"].as_u64() == Some(u64::from(server.pid())))
            .then_some(())
    })
    .expect("the server is targeted");
    let mut cmd = Command::new(&p.python);
    cmd.arg(p.peers.join("iovecs.py"))
        .args(["client", &port, &count]);
    let client = Proc::spawn("iovecs client", cmd, ctx.file("client.log"));
    wait_log(&client, "done");
    wait_log(&server, "served");

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
    let status = agent.status();
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
