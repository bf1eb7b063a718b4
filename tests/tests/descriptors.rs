//! Only socket bytes, whatever happens to descriptor numbers (issue 14), as root: a traced process
//! serves one exchange on a socket, then makes the socket's number name a file or a pipe — by
//! `close`, `close_range`, `dup2`, `dup3`, exec, and `CLOSE_RANGE_CLOEXEC` + exec — and moves
//! HTTP-looking bytes carrying a canary through it. The canary must reach no span (`/spans`,
//! OTLP), and `/status` must say why the socket was forgotten. A churn of many connections, got
//! rid of every way, must leave the kernel's socket map at the live count.
//!
//! Run: `CI=true cargo xtask test -- descriptors` (as root).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use infertap_tests::harness::{self, free_port, poll, random_hex, Agent, Proc, Receiver, TestCtx};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn wait_log(peer: &Proc, text: &str, timeout: Duration) -> String {
    poll(timeout, || {
        let log = peer.log_text();
        log.contains(text).then_some(log)
    })
    .unwrap_or_else(|| panic!("the peer never printed {text:?}:\n{}", peer.log_text()))
}

fn forgotten(agent: &Agent, cause: &str) -> u64 {
    agent.status()["connections"]["forgotten"][cause]
        .as_u64()
        .unwrap_or(0)
}

fn peer(ctx: &TestCtx, marker: &str, args: &[&str]) -> Proc {
    let p = harness::paths();
    let mut cmd = Command::new(&p.python);
    cmd.arg(p.peers.join("fdreuse.py"))
        .arg(marker)
        .args(args)
        .arg(ctx.dir());
    Proc::spawn("fdreuse", cmd, ctx.file("peer.log"))
}

/// One way of reusing the number (`path`, see `tests/peers/fdreuse.py`), and the `/status`
/// cause it must be counted under.
fn reuse(path: &str, cause: &str) {
    let Some(ctx) = harness::begin(&format!("descriptors_{path}")) else {
        return;
    };
    let marker = format!("fdreuse-{}", random_hex(4));
    let canary = format!("INFERTAP-FD-CANARY-{}", random_hex(8));
    let receiver = Receiver::start();
    let agent = Agent::start_with(
        &ctx,
        &["--target-cmdline", &marker],
        &receiver.agent_env(),
        None,
    );
    let port = free_port();
    let server = peer(&ctx, &marker, &[path, &port.to_string(), &canary]);
    wait_log(&server, "listening", WAIT);
    agent.wait_targeted(server.pid(), "the server");

    // One exchange on the socket: the agent traces it (a span shows it).
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = br#"{"model":"fd-model","prompt":"hello"}"#;
    write!(
        conn,
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.write_all(body).unwrap();
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "the peer answered");
    let spans = agent.wait_spans(1, WAIT);
    assert!(
        spans
            .iter()
            .any(|s| s["attributes"]["gen_ai.request.model"] == "fd-model"),
        "precondition: the socket is traced: {spans:#?}"
    );

    // Now the number names something else, and the canary goes through it.
    let before = forgotten(&agent, cause);
    std::fs::write(ctx.file("go"), b"").unwrap();
    let log = wait_log(&server, "reused", WAIT);
    println!("{path}: {}", log.lines().last().unwrap_or(""));
    let counted = poll(WAIT, || (forgotten(&agent, cause) > before).then_some(()));
    assert!(
        counted.is_some(),
        "{path}: /status connections.forgotten.{cause} did not move: {}",
        agent.status()["connections"]
    );
    // Give whatever the kernel copied time to reach a span (ring drain, idle eviction is far).
    std::thread::sleep(Duration::from_secs(3));
    let spans = serde_json::to_string(&agent.spans()).unwrap();
    let otlp = format!("{:?}", receiver.spans());
    let status = agent.get("/status");
    for (place, text) in [("/spans", &spans), ("OTLP", &otlp), ("/status", &status)] {
        assert!(
            !text.contains(&canary),
            "{path}: the canary moved through a reused descriptor reached {place}"
        );
    }
    assert_eq!(
        agent.status()["records"]["kernel_dropped"]["sockets_map_full"],
        0
    );
    drop(conn);
}

#[test]
fn a_closed_socket_number_reused_for_a_file_copies_nothing() {
    reuse("close", "close");
}

#[test]
fn a_close_range_then_a_file_on_the_number_copies_nothing() {
    reuse("close_range", "close_range");
}

#[test]
fn a_file_dup2ed_onto_a_socket_number_copies_nothing() {
    reuse("dup2", "dup");
}

#[test]
fn a_file_dup3ed_onto_a_socket_number_copies_nothing() {
    reuse("dup3", "dup");
}

#[test]
fn a_pipe_on_a_closed_socket_number_copies_nothing() {
    reuse("pipe", "close");
}

#[test]
fn after_exec_a_file_on_the_old_socket_number_copies_nothing() {
    reuse("exec", "exec");
}

#[test]
fn close_range_cloexec_then_exec_then_a_file_on_the_number_copies_nothing() {
    reuse("cloexec", "exec");
}

/// Connections got rid of every way above (CONNECTIONS pairs, both ends traced): the kernel
/// socket map comes back to the live count, and never filled.
#[test]
fn a_churn_of_connections_closed_every_way_leaves_only_the_live_ones_in_the_map() {
    let Some(ctx) = harness::begin("descriptors_churn") else {
        return;
    };
    // The issue asks for 100,000; INFERTAP_CHURN sets another count.
    let count: u32 = std::env::var("INFERTAP_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let marker = format!("fdchurn-{}", random_hex(4));
    let agent = Agent::start_with(&ctx, &["--target-cmdline", &marker], &[], None);
    let port = free_port();
    let started = Instant::now();
    let churner = peer(
        &ctx,
        &marker,
        &["churn", &port.to_string(), &count.to_string()],
    );
    agent.wait_targeted(churner.pid(), "the churner");
    let log = wait_log(&churner, "churned", Duration::from_secs(600));
    println!(
        "{} ({:?} in all, agent attached)",
        log.lines().last().unwrap_or(""),
        started.elapsed()
    );
    // 5 pairs kept open: 10 traced sockets.
    let live = poll(WAIT, || {
        let s: Value = agent.status();
        (s["connections"]["kernel_sockets"].as_u64() == Some(10)).then_some(s)
    });
    let status = agent.status();
    assert!(
        live.is_some(),
        "the kernel socket map did not come back to the 10 live sockets: {}",
        status["connections"]
    );
    let f = &status["connections"]["forgotten"];
    println!("forgotten: {f}");
    // The process was targeted a moment after it started: the first few pairs may be untraced.
    let per_way = u64::from(count.saturating_sub(5) / 4) * 2;
    let slack = 200;
    let n = |k: &str| f[k].as_u64().unwrap();
    assert!(n("close") + slack >= per_way, "{f}");
    // The next pair reuses the numbers a close_range freed, and the kernel marks that range stale
    // lazily: a socket on one of them can be charged to the close_range or to the dup that
    // follows, whichever the kernel sees first (a run gave 50,561 and 99,509 for 49,996 and
    // 99,992). Together they are exact; each is near its share.
    assert!(
        n("close_range") + n("dup") + 3 * slack >= 3 * per_way,
        "{f}"
    );
    assert!(n("close_range") * 10 >= per_way * 9, "{f}");
    assert!(n("dup") * 10 >= 2 * per_way * 9, "{f}");
    assert_eq!(
        status["records"]["kernel_dropped"]["sockets_map_full"], 0,
        "{}",
        status["records"]
    );
}
