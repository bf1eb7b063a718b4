//! `cargo xtask bench-rss`: the agent's resident memory at start and with 1,000 open keep-alive
//! connections to a traced server (each having served one request), from /proc/<pid>/status.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::agent_command_of;
use crate::demo::{free_port, get_json, start_standin, wait_targeted, Kill};

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

/// Resident KiB of a process's mappings of the kernel's BPF maps (the ring buffer: its data
/// pages are mapped twice, back to back, so `VmRSS` counts each one twice).
fn bpf_map_rss_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let is_header = |line: &str| {
        line.split_whitespace()
            .next()
            .and_then(|range| range.split_once('-'))
            .is_some_and(|(a, b)| {
                u64::from_str_radix(a, 16).is_ok() && u64::from_str_radix(b, 16).is_ok()
            })
    };
    let mut in_map = false;
    let mut total = 0;
    for line in smaps.lines() {
        if is_header(line) {
            in_map = line.ends_with("anon_inode:bpf-map");
        } else if let Some(v) = line.strip_prefix("Rss:").filter(|_| in_map) {
            total += v
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// `RssAnon` of a process, KiB.
fn rss_anon_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn run_rss(python: &Path, connections: usize, bin: &Path, extra: &[String]) -> Result<()> {
    let port = free_port()?;
    let _server = start_standin(python, port, &["--timeout-keep-alive", "300"])?;
    let debug = format!("127.0.0.1:{}", free_port()?);
    let agent = Kill(
        agent_command_of(bin, &debug)
            .args(extra)
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
        "of which: anonymous (heap) {} KiB; BPF map mappings (the ring buffer, data pages mapped twice) {} KiB",
        rss_anon_kib(pid),
        bpf_map_rss_kib(pid)
    );
    println!(
        "connections open in the agent's table: {}; requests completed: {}",
        status["connections"]["open"], status["http"]["requests_completed"]
    );
    Ok(())
}
