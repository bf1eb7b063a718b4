//! `cargo xtask bench-stream`: a streaming campaign. A small SSE server (this binary, hidden
//! subcommand `stream-server`: one thread per connection, one `write` per token chunk, as
//! uvicorn does) answers streaming chat completions; client threads in this process read them.
//! Arms: without the agent, with the agent tracing the server (every request must have exactly
//! one span whose `infertap.content_chunks` equals the chunks the client read; kernel drops must
//! stay 0), and beyond capacity (a small ring buffer and no pause between chunks: drops must be
//! counted and the affected spans marked incomplete, with the agent's RSS bounded).
//!
//! The server is Rust rather than the Python stand-in because the stand-in cannot write 20,000
//! chunks/s on two cores; the server writes exactly the bytes vLLM writes per chunk.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::bench::median;
use crate::demo::{agent_command, free_port, get_json, wait_until, Kill};

const MODEL: &str = "bench-model";

/// The server: `--chunks` token chunks per response, `--interval-us` between them.
pub fn serve(port: u16, chunks: usize, interval_us: u64) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).context("binding the stream server")?;
    println!("LISTENING {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    for s in listener.incoming() {
        let Ok(s) = s else { continue };
        std::thread::spawn(move || {
            let _ = answer(s, chunks, interval_us);
        });
    }
    Ok(())
}

fn answer(s: TcpStream, chunks: usize, interval_us: u64) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut r = BufReader::new(s);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    let mut s = r.into_inner();
    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")?;
    let event = |data: &str| {
        let e = format!("data: {data}\n\n");
        format!("{:x}\r\n{e}\r\n", e.len())
    };
    s.write_all(event(&format!(r#"{{"id":"chatcmpl-b","object":"chat.completion.chunk","created":1733000000,"model":"{MODEL}","choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#)).as_bytes())?;
    for i in 0..chunks {
        if interval_us > 0 {
            std::thread::sleep(Duration::from_micros(interval_us));
        }
        s.write_all(event(&format!(r#"{{"id":"chatcmpl-b","object":"chat.completion.chunk","created":1733000000,"model":"{MODEL}","choices":[{{"index":0,"delta":{{"content":" w{i}"}},"logprobs":null,"finish_reason":null}}]}}"#)).as_bytes())?;
    }
    s.write_all(event(&format!(r#"{{"id":"chatcmpl-b","object":"chat.completion.chunk","created":1733000000,"model":"{MODEL}","choices":[{{"index":0,"delta":{{"content":""}},"logprobs":null,"finish_reason":"length"}}],"usage":{{"prompt_tokens":4,"total_tokens":{},"completion_tokens":{chunks}}}}}"#, chunks + 4)).as_bytes())?;
    s.write_all(event("[DONE]").as_bytes())?;
    s.write_all(b"0\r\n\r\n")?;
    Ok(())
}

fn start_server(chunks: usize, interval_us: u64) -> Result<(Kill, u16, u32)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "stream-server",
            "--chunks",
            &chunks.to_string(),
            "--interval-us",
            &interval_us.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the stream server")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("server stdout")?).read_line(&mut line)?;
    let port: u16 = line
        .trim()
        .strip_prefix("LISTENING ")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("stream server said {line:?}"))?;
    let pid = child.id();
    Ok((Kill(child), port, pid))
}

/// One request as the client saw it.
struct Seen {
    trace: String,
    chunks: u64,
}

/// `streams` client threads, each making requests one after another for `seconds`.
fn load(port: u16, streams: usize, seconds: u64) -> (Vec<Seen>, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let n = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..streams)
        .map(|t| {
            let stop = stop.clone();
            let n = n.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let trace = format!("{:016x}{:016x}", 0xb3u64 << 56 | t as u64, k);
                    if let Ok(chunks) = one_request(port, &trace) {
                        n.fetch_add(chunks, Ordering::Relaxed);
                        seen.push(Seen { trace, chunks });
                    }
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let seen = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    (seen, started.elapsed())
}

fn one_request(port: u16, trace: &str) -> std::io::Result<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"go"}}],"stream":true}}"#
    );
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntraceparent: 00-{trace}-00f067aa0ba902b7-01\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let text = String::from_utf8_lossy(&all);
    Ok(text.matches("\"delta\":{\"content\":\" w").count() as u64)
}

/// Peak resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    crate::rss::rss_kib(pid).1
}

struct Agent {
    _kill: Kill,
    pid: u32,
    debug: String,
}

fn start_agent(port: u16, ring: Option<u32>) -> Result<Agent> {
    let debug = format!("127.0.0.1:{}", free_port()?);
    let mut cmd = agent_command(&debug);
    cmd.args(["--target-port", &port.to_string(), "--span-buffer", "65536"])
        .env("RUST_LOG", "warn");
    if let Some(r) = ring {
        cmd.args(["--ring-buffer-size", &r.to_string()]);
    }
    let child = cmd.spawn().context("starting the agent")?;
    let pid = child.id();
    let agent = Agent {
        _kill: Kill(child),
        pid,
        debug,
    };
    crate::demo::wait_targeted(&agent.debug)?;
    Ok(agent)
}

/// What the agent made of a load run.
struct Verdict {
    requests: usize,
    spans: usize,
    chunks_match: usize,
    incomplete: usize,
    missing: usize,
    kernel_dropped: Value,
    requests_lost: u64,
    lost_bytes: u64,
    /// Connections the agent met only after a kernel loss (open record refused).
    after_loss: u64,
    /// Connections the kernel counted as lost whole (close record refused after a loss).
    lost_in_kernel: u64,
}

fn judge(agent: &Agent, seen: &[Seen]) -> Result<Verdict> {
    let url = |p: &str| format!("http://{}{p}", agent.debug);
    // Spans are built when each response ends; allow the pipeline to catch up.
    let mut by: HashMap<String, Value> = HashMap::new();
    let _ = wait_until("spans for every request", Duration::from_secs(20), || {
        let Ok(Value::Array(spans)) = get_json(&url("/spans?limit=65536")) else {
            return false;
        };
        by = spans
            .into_iter()
            .filter_map(|s| Some((s["trace_id"].as_str()?.to_string(), s)))
            .collect();
        seen.iter().all(|r| by.contains_key(&r.trace))
    });
    let status = get_json(&url("/status"))?;
    let mut v = Verdict {
        requests: seen.len(),
        spans: 0,
        chunks_match: 0,
        incomplete: 0,
        missing: 0,
        kernel_dropped: status["records"]["kernel_dropped"].clone(),
        requests_lost: status["http"]["requests_lost"].as_u64().unwrap_or(0),
        lost_bytes: status["records"]["lost_bytes"].as_u64().unwrap_or(0),
        after_loss: status["connections"]["after_loss_total"]
            .as_u64()
            .unwrap_or(0),
        lost_in_kernel: status["connections"]["lost_in_kernel_total"]
            .as_u64()
            .unwrap_or(0),
    };
    for r in seen {
        match by.get(&r.trace) {
            None => {
                v.missing += 1;
                if v.missing <= 3 {
                    eprintln!(
                        "no span for trace {} ({} chunks read); agent http counters {}",
                        r.trace, r.chunks, status["http"]
                    );
                }
            }
            Some(span) => {
                v.spans += 1;
                let a = &span["attributes"];
                if a["infertap.content_chunks"].as_u64() == Some(r.chunks) {
                    v.chunks_match += 1;
                }
                if a["infertap.incomplete"] == Value::Bool(true) {
                    v.incomplete += 1;
                }
            }
        }
    }
    Ok(v)
}

pub fn run_stream(streams: usize, chunks: usize, interval_us: u64, seconds: u64) -> Result<()> {
    println!(
        "stream server: {streams} concurrent streams, {chunks} chunks per response, {interval_us} µs between chunks"
    );
    let (_server, port, server_pid) = start_server(chunks, interval_us)?;
    let rate = |seen: &[Seen], t: Duration| {
        seen.iter().map(|s| s.chunks).sum::<u64>() as f64 / t.as_secs_f64()
    };

    // Off and on, interleaved twice.
    let mut off_rates = Vec::new();
    let mut on_rates = Vec::new();
    let mut failures = Vec::new();
    for round in 0..2 {
        let (seen, t) = load(port, streams, seconds);
        off_rates.push(rate(&seen, t));
        let agent = start_agent(port, None)?;
        let (seen, t) = load(port, streams, seconds);
        on_rates.push(rate(&seen, t));
        let v = judge(&agent, &seen)?;
        println!(
            "round {round}: off {:.0} chunks/s; on {:.0} chunks/s: {} requests, {} spans, {} with every chunk counted, {} incomplete, {} missing; kernel drops {}; agent peak RSS {} KiB",
            off_rates[round], on_rates[round], v.requests, v.spans, v.chunks_match, v.incomplete, v.missing, v.kernel_dropped, rss_kib(agent.pid)
        );
        let dropped: u64 = v
            .kernel_dropped
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        if v.missing > 0 || v.chunks_match != v.requests || dropped > 0 || v.lost_bytes > 0 {
            failures.push(format!("round {round}: not every request traced whole"));
        }
    }
    let (off, on) = (median(&mut off_rates), median(&mut on_rates));
    println!(
        "chunks/s written and read: off {off:.0}, traced {on:.0} (ratio {:.3}); server pid {server_pid}",
        on / off
    );

    // Beyond capacity: a 64 KiB ring and no pause between chunks.
    drop(_server);
    let (_server, port, _) = start_server(chunks, 0)?;
    let agent = start_agent(port, Some(65536))?;
    let (seen, t) = load(port, streams, seconds);
    let v = judge(&agent, &seen)?;
    println!(
        "beyond capacity (64 KiB ring, no pause): {:.0} chunks/s; {} requests, {} spans ({} incomplete, {} with every chunk counted), {} without a span, requests_lost {}, connections met after a loss {}; kernel drops {}; bytes lost {}; agent peak RSS {} KiB",
        rate(&seen, t), v.requests, v.spans, v.incomplete, v.chunks_match, v.missing, v.requests_lost, v.after_loss, v.kernel_dropped, v.lost_bytes, rss_kib(agent.pid)
    );
    let short = v.requests - v.chunks_match;
    if short > 0 && (v.incomplete + v.missing) == 0 {
        failures.push("spans short of chunks but not marked incomplete".into());
    }
    // One request per connection here: a request without a span is either counted in
    // requests_lost (its head was refused, found from the next record or the close record of
    // its connection) or its connection was lost whole (every record refused, its close record
    // included), which the kernel counts.
    let uncounted = (v.missing as u64).saturating_sub(v.requests_lost);
    println!(
        "requests without a span: {}; counted as lost requests: {}; the rest ({uncounted}) against connections the kernel counted as lost whole: {}",
        v.missing, v.requests_lost, v.lost_in_kernel
    );
    if uncounted > v.lost_in_kernel {
        failures.push(format!(
            "{uncounted} requests without a span are neither counted as lost requests nor as connections lost whole ({})",
            v.lost_in_kernel
        ));
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}
