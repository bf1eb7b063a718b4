//! `cargo xtask demo`: the agent, a stand-in vLLM server and an OpenAI-SDK client, and a table
//! of the requests the agent captured (read back from its debug endpoint).

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{agent_binary, root};

pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn get_json(url: &str) -> Result<Value> {
    let body = ureq::get(url)
        .timeout(Duration::from_secs(5))
        .call()?
        .into_string()?;
    Ok(serde_json::from_str(&body)?)
}

pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Start the stand-in vLLM server on 127.0.0.1:`port` with `extra` flags; returns once it listens.
/// The agent in standalone mode with its debug endpoint at `debug`; the caller adds the target,
/// the environment and any other flags.
pub fn agent_command(debug: &str) -> Command {
    crate::agent_command_of(&agent_binary(), debug)
}

pub fn start_standin(python: &Path, port: u16, extra: &[&str]) -> Result<Kill> {
    let ready = std::env::temp_dir().join(format!("infertap-standin-{port}.ready"));
    let _ = std::fs::remove_file(&ready);
    let server = Kill(
        Command::new(python)
            .arg(root().join("tests/peers/vllm_standin.py"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(extra)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .spawn()
            .context("starting the stand-in server")?,
    );
    wait_until("the stand-in server", Duration::from_secs(30), || {
        ready.exists()
    })?;
    Ok(server)
}

/// Wait until the agent's /status lists at least one target (the /proc scan found it).
pub fn wait_targeted(debug: &str) -> Result<()> {
    wait_until(
        "the agent to target the server",
        Duration::from_secs(30),
        || {
            get_json(&format!("http://{debug}/status"))
                .map(|s| s["targets"].as_array().is_some_and(|t| !t.is_empty()))
                .unwrap_or(false)
        },
    )
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span.get("attributes").and_then(|a| a.get(key))
}

fn ms(v: Option<&Value>) -> String {
    v.and_then(Value::as_f64)
        .map(|s| format!("{:.1}", s * 1000.0))
        .unwrap_or_else(|| "-".into())
}

fn print_row(span: &Value) {
    let start = span["start_time_unix_nano"].as_u64().unwrap_or(0);
    let end = span["end_time_unix_nano"].as_u64().unwrap_or(0);
    let status = attr(span, "http.response.status_code")
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into());
    let cancelled = attr(span, "infertap.cancelled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let tokens = attr(span, "gen_ai.usage.output_tokens")
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into());
    println!(
        "{:<34} {:>6} {:>9} {:>9} {:>10} {:>7} {:<10} {}",
        span["name"].as_str().unwrap_or("?"),
        status,
        ms(attr(span, "gen_ai.latency.time_to_first_token")),
        ms(attr(span, "infertap.inter_token_latency.mean")),
        format!("{:.1}", end.saturating_sub(start) as f64 / 1e6),
        tokens,
        if cancelled {
            "cancelled"
        } else {
            span["status"]["code"].as_str().unwrap_or("")
        },
        span["trace_id"].as_str().unwrap_or(""),
    );
}

pub fn run(python: &Path, duration: Option<u64>) -> Result<()> {
    let peers = root().join("tests/peers");
    let port = free_port()?;
    // The agent's default debug port when it is free, so that the page's address is the usual one.
    let debug_port = if TcpListener::bind("127.0.0.1:9464").is_ok() {
        9464
    } else {
        free_port()?
    };
    eprintln!("demo: starting the stand-in vLLM server on 127.0.0.1:{port}");
    let _server = start_standin(python, port, &[])?;

    let debug = format!("127.0.0.1:{debug_port}");
    eprintln!("demo: starting infertap (--target-port {port}), debug endpoint http://{debug}");
    let _agent = Kill(
        agent_command(&debug)
            .args(["--target-port", &port.to_string()])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .spawn()
            .context("starting infertap")?,
    );
    wait_until("infertap's /healthz", Duration::from_secs(30), || {
        ureq::get(&format!("http://{debug}/healthz")).call().is_ok()
    })?;
    // Targets are picked up by the /proc scan.
    wait_targeted(&debug)?;

    println!();
    println!("infertap is tracing the stand-in server. Debug endpoint: http://{debug}/status, /spans, /metrics");
    println!();
    println!("Flight-recorder page: http://{debug}/  (open it in a browser; it is up while the demo runs)");
    println!();
    println!(
        "{:<34} {:>6} {:>9} {:>9} {:>10} {:>7} {:<10} trace_id",
        "span", "status", "ttft_ms", "itl_ms", "dur_ms", "tokens", "outcome"
    );
    let started = Instant::now();
    let mut seen: HashSet<String> = HashSet::new();
    loop {
        let out = Command::new(python)
            .arg(peers.join("client.py"))
            .args([
                "--base-url",
                &format!("http://127.0.0.1:{port}/v1"),
                "--scenario",
                "mixed",
                "--count",
                "8",
            ])
            .args(["--concurrency", "2", "--out", "/dev/null"])
            .stdout(Stdio::null())
            .status()
            .context("running the client")?;
        if !out.success() {
            eprintln!("demo: the client reported unexpected results ({out})");
        }
        std::thread::sleep(Duration::from_millis(300));
        let spans = get_json(&format!("http://{debug}/spans?limit=1000"))?;
        let mut fresh: Vec<&Value> = spans
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|s| !seen.contains(s["span_id"].as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        fresh.reverse(); // oldest first
        for s in fresh {
            seen.insert(s["span_id"].as_str().unwrap_or("").to_string());
            print_row(s);
        }
        if duration.is_some_and(|d| started.elapsed() >= Duration::from_secs(d)) {
            break;
        }
    }
    let status = get_json(&format!("http://{debug}/status"))?;
    println!();
    println!(
        "captured {} requests; /status says: {}",
        seen.len(),
        status.get("http").cloned().unwrap_or_default()
    );
    Ok(())
}
