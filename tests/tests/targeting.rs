//! Targeting as root: what `--target-port` finds across the node's network namespaces.
//!
//! Run: `CI=true cargo xtask test -- <name>` (as root). Not root: each test prints
//! `SKIPPED (needs root)`.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use infertap_tests::harness::{
    self, attr, client, one_span_for, poll, Agent, Proc, StandIn, StandInOpts,
};
use serde_json::Value;

const SPANS_WAIT: Duration = Duration::from_secs(20);

/// A network namespace made with `ip netns add` (loopback up), deleted when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: &str) -> Netns {
        let ip = |args: &[&str]| {
            let ok = Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip {args:?} failed");
        };
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }

    /// The command prefix that runs a program inside it.
    fn exec(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(String::from)
            .to_vec()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The inode of a process's network namespace (`/proc/<pid>/ns/net` → `net:[N]`).
fn netns_of(pid: u32) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let link = link.to_str().unwrap();
    link.trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap_or_else(|_| panic!("unexpected ns link {link}"))
}

/// Python that listens on 127.0.0.1:<port> and accepts (and drops) connections.
const LISTENER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
while True:
    c, _ = s.accept()
    c.close()
"#;

/// A model server in its own network namespace (as in a container), listening on the target
/// port, and a host-side `docker-proxy` listening on the same port in the agent's namespace:
/// the server is targeted and its requests become spans, `/status` names its namespace, and the
/// proxy is recognised and not targeted.
#[test]
fn a_port_target_is_found_in_another_network_namespace_and_a_port_proxy_is_not() {
    let Some(ctx) = harness::begin("netns_port_target") else {
        return;
    };
    let ns = Netns::create(&format!("infertap-it-{}", std::process::id()));
    let port = harness::free_port();

    // The fake proxy: python executed under the name `docker-proxy` (its comm).
    let proxy_exe = ctx.file("docker-proxy");
    std::os::unix::fs::symlink("/usr/bin/python3", &proxy_exe).unwrap();
    let mut cmd = Command::new(&proxy_exe);
    cmd.args(["-c", LISTENER, &port.to_string()]);
    let proxy = Proc::spawn("docker-proxy", cmd, ctx.file("proxy.log"));
    poll(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .expect("the fake docker-proxy listens");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/comm", proxy.pid()))
            .unwrap()
            .trim(),
        "docker-proxy"
    );

    let server = StandIn::start_on(
        &ctx,
        StandInOpts {
            ttft_ms: 0,
            token_interval_ms: 1,
            wrapper: ns.exec(),
            ..StandInOpts::default()
        },
        port,
        |_| true,
    )
    .expect("any pid will do");
    let server_ns = netns_of(server.pid());
    assert_ne!(server_ns, netns_of(std::process::id()));

    let port_arg = port.to_string();
    let agent = Agent::start_with(&ctx, &["--target-port", &port_arg], &[], Some(server.pid()));
    // The client runs in the server's namespace (the stand-in's wrapper).
    let records = client(&ctx, &server, &["--scenario", "chat", "--count", "3"]);
    let spans = agent.wait_spans_for(&records, SPANS_WAIT);
    for r in &records {
        let span = one_span_for(&spans, r);
        assert_eq!(attr(span, "server.port").as_i64(), Some(i64::from(port)));
    }

    let status = agent.status();
    let targets = status["targets"].as_array().unwrap();
    let server_target = targets
        .iter()
        .find(|t| t["pid"].as_u64() == Some(u64::from(server.pid())))
        .unwrap_or_else(|| panic!("server not targeted: {status}"));
    assert_eq!(server_target["reason"], Value::from(format!("port {port}")));
    assert_eq!(server_target["netns"].as_u64(), Some(server_ns), "{status}");
    assert!(
        targets
            .iter()
            .all(|t| t["pid"].as_u64() != Some(u64::from(proxy.pid()))),
        "the proxy was targeted: {status}"
    );
    let proxies = status["port_proxies"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        proxies
            .iter()
            .any(|p| p["pid"].as_u64() == Some(u64::from(proxy.pid()))
                && p["comm"] == "docker-proxy"
                && p["port"].as_u64() == Some(u64::from(port))
                && p["netns"].as_u64() == Some(netns_of(std::process::id()))),
        "the proxy is not listed in port_proxies: {status}"
    );
    assert!(
        agent.proc.log_text().contains("Port-publishing proxy"),
        "the agent did not say why the proxy was left out"
    );
}
