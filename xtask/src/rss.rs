//! `cargo xtask bench-rss`: the agent's resident memory at start and with 1,000 open keep-alive
//! connections to a traced server (each having served one request), from /proc/<pid>/status.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::demo::{agent_command, free_port, get_json, start_standin, wait_targeted, Kill};

/// Python that opens N connections, makes one request on each, and keeps them open.
const HOLDER: &str = r#"
import resource, socket, sys, time
n, port, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 100), hard))
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
    s.recv(4096)
    conns.append(s)
print("OPEN", flush=True)
time.sleep(hold)
"#;

/// VmRSS and VmHWM (peak) of a process, KiB; 0 where unreadable.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub fn run_rss(python: &Path, connections: usize) -> Result<()> {
    let port = free_port()?;
    let _server = start_standin(python, port, &["--timeout-keep-alive", "300"])?;
    let debug = format!("127.0.0.1:{}", free_port()?);
    let agent = Kill(
        agent_command(&debug)
            .args(["--target-port", &port.to_string()])
            .env("RUST_LOG", "warn")
            .spawn()?,
    );
    let pid = agent.0.id();
    wait_targeted(&debug)?;
    std::thread::sleep(Duration::from_secs(2));
    let (start_rss, start_hwm) = rss_kib(pid);

    let mut holder = Kill(
        Command::new(python)
            .args([
                "-c",
                HOLDER,
                &connections.to_string(),
                &port.to_string(),
                "30",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the connection holder")?,
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.0.stdout.take().context("holder stdout")?),
        &mut line,
    )?;
    let mut samples = Vec::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(rss_kib(pid).0);
    }
    let (_, peak) = rss_kib(pid);
    let status = get_json(&format!("http://{debug}/status"))?;
    println!(
        "agent RSS at start (targeting, idle): {} KiB (peak so far {} KiB)",
        start_rss, start_hwm
    );
    println!(
        "with {connections} open connections, one request each: steady {} KiB (samples {:?}), peak {} KiB",
        samples.last().copied().unwrap_or(0),
        samples,
        peak
    );
    println!(
        "connections open in the agent's table: {}; requests completed: {}",
        status["connections"]["open"], status["http"]["requests_completed"]
    );
    Ok(())
}
