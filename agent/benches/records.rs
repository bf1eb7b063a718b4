//! Userspace throughput per core: ring-buffer records of streaming chat exchanges, as the kernel
//! programs emit them for a traced vLLM-like server, taken through `capture::decode` → `ConnTable`
//! (ordered streams, HTTP/1.1, SSE, the OpenAI chunk fields) → span building, through the
//! agent's own `pipeline::Pipeline` (a `Detached` node: no /proc lookups). Target (docs/PERFORMANCE.md):
//! ≥ 2 M records/s per core.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use infertap::enrich::Enrichers;
use infertap::export::metrics::RequestMetrics;
use infertap::export::otlp::SpanSender;
use infertap::export::store::SpanStore;
use infertap::export::ticks::TickStore;
use infertap::export::SpanSink;
use infertap::pipeline::{Detached, Output, Pipeline, Settings};
use infertap::stats::Stats;
use infertap::trace::build::BuildOptions;
use infertap::trace::Built;
use infertap_common::*;

fn bytes_of<T>(v: &T) -> Vec<u8> {
    // SAFETY: a view of a repr(C), integer-only ABI struct.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

const TGID: u32 = 4242;

/// Builds the records of `conns` keep-alive connections, each carrying `requests` streaming chat
/// completions of `tokens` tokens, the connections' writes interleaved as a busy server's are.
struct Wire {
    records: Vec<Vec<u8>>,
    ts: u64,
    pos: Vec<[u64; 2]>,
}

impl Wire {
    fn new(conns: usize) -> Wire {
        let mut w = Wire {
            records: Vec::new(),
            ts: 0,
            pos: vec![[0, 0]; conns],
        };
        for c in 0..conns {
            let mut addr = [0u8; 32];
            addr[..2].copy_from_slice(&2u16.to_ne_bytes());
            addr[2..4].copy_from_slice(&(40000 + c as u16).to_be_bytes());
            addr[4..8].copy_from_slice(&[127, 0, 0, 1]);
            w.records.push(bytes_of(&ConnOpenRecord {
                header: RecordHeader {
                    kind: RECORD_CONN_OPEN,
                    tgid: TGID,
                    ts_ns: 1,
                },
                conn_id: c as u64 + 1,
                fd: 10 + c as u32,
                listen_fd: 3,
                role: ROLE_SERVER,
                flags: 0,
                addr,
            }));
        }
        w
    }

    fn close_all(&mut self) {
        for c in 0..self.pos.len() {
            self.records.push(bytes_of(&ConnCloseRecord {
                header: RecordHeader {
                    kind: RECORD_CONN_CLOSE,
                    tgid: TGID,
                    ts_ns: self.ts + 1,
                },
                conn_id: c as u64 + 1,
                fd: 10 + c as u32,
                flags: 0,
                rx_pos: self.pos[c][0],
                tx_pos: self.pos[c][1],
            }));
        }
    }

    fn data(&mut self, conn: usize, egress: bool, bytes: &[u8]) {
        self.data_by(
            conn,
            egress,
            bytes,
            if egress { SYS_WRITE } else { SYS_READ },
        );
    }

    /// One `writev` of `parts` (one record per iovec, as the kernel emits them).
    fn writev(&mut self, conn: usize, parts: &[&[u8]]) {
        self.ts += 1_000;
        let syscall_pos = self.pos[conn][1];
        let syscall_len: usize = parts.iter().map(|p| p.len()).sum();
        for (i, bytes) in parts.iter().enumerate() {
            let last = if i + 1 == parts.len() {
                DATA_FLAG_LAST
            } else {
                0
            };
            let flags = last | DATA_FLAG_EGRESS | SYS_WRITEV << DATA_SYSCALL_SHIFT;
            self.push(conn, true, bytes, syscall_pos, syscall_len as u64, flags);
        }
    }

    fn data_by(&mut self, conn: usize, egress: bool, bytes: &[u8], syscall: u32) {
        self.ts += 1_000;
        let at = self.pos[conn][usize::from(egress)];
        let flags = DATA_FLAG_LAST
            | if egress { DATA_FLAG_EGRESS } else { 0 }
            | syscall << DATA_SYSCALL_SHIFT;
        self.push(conn, egress, bytes, at, bytes.len() as u64, flags);
    }

    /// One data record of `bytes` at the direction's position, which it advances.
    fn push(
        &mut self,
        conn: usize,
        egress: bool,
        bytes: &[u8],
        syscall_pos: u64,
        syscall_len: u64,
        flags: u32,
    ) {
        let d = usize::from(egress);
        let at = self.pos[conn][d];
        self.pos[conn][d] += bytes.len() as u64;
        let rec = DataRecord {
            header: RecordHeader {
                kind: RECORD_DATA,
                tgid: TGID,
                ts_ns: self.ts,
            },
            conn_id: conn as u64 + 1,
            stream_pos: at,
            syscall_pos,
            syscall_len,
            fd: 10 + conn as u32,
            tid: TGID,
            len: bytes.len() as u32,
            flags,
        };
        let mut raw = bytes_of(&rec);
        raw.extend_from_slice(bytes);
        raw.resize(raw.len().next_multiple_of(8), 0);
        self.records.push(raw);
    }
}

fn sse_chunk(event: &str) -> Vec<u8> {
    let data = format!("data: {event}\n\n");
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

fn exchange_records(conns: usize, requests: usize, tokens: usize) -> Vec<Vec<u8>> {
    let mut w = Wire::new(conns);
    let body = r#"{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Explain the attention mechanism in transformers, step by step, with an example."}],"model":"Qwen/Qwen2.5-0.5B-Instruct","max_completion_tokens":256,"stream":true,"stream_options":{"include_usage":true},"temperature":0.7}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8000\r\naccept-encoding: gzip, deflate\r\nconnection: keep-alive\r\naccept: application/json\r\ncontent-type: application/json\r\nuser-agent: OpenAI/Python 1.99.0\r\nx-stainless-lang: python\r\nauthorization: Bearer sk-xxxxxxxx\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let head = b"HTTP/1.1 200 OK\r\ndate: Thu, 26 Nov 2026 12:00:00 GMT\r\nserver: uvicorn\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n";
    let token = |i: usize| {
        format!(
            r#"{{"id":"chatcmpl-8f2c5d3e","object":"chat.completion.chunk","created":1733000000,"model":"Qwen/Qwen2.5-0.5B-Instruct","choices":[{{"index":0,"delta":{{"content":" w{i}"}},"logprobs":null,"finish_reason":null}}]}}"#
        )
    };
    let usage = r#"{"id":"chatcmpl-8f2c5d3e","object":"chat.completion.chunk","created":1733000000,"model":"Qwen/Qwen2.5-0.5B-Instruct","choices":[],"usage":{"prompt_tokens":31,"total_tokens":95,"completion_tokens":64}}"#;
    for _ in 0..requests {
        for c in 0..conns {
            w.data(c, false, request.as_bytes());
            w.data(c, true, head);
        }
        for i in 0..tokens {
            for c in 0..conns {
                w.data(c, true, &sse_chunk(&token(i)));
            }
        }
        for c in 0..conns {
            w.data(c, true, &sse_chunk(usage));
            w.data(c, true, &sse_chunk("[DONE]"));
            w.data(c, true, b"0\r\n\r\n");
        }
    }
    w.close_all();
    w.records
}

/// The records of `conns` keep-alive connections to nginx serving a 500-byte static file to wrk
/// (`bench-overhead --workload nginx`): `recvfrom` of a 50-byte `GET`, `writev` of nginx's
/// 238-byte head and the body, `requests` times per connection, interleaved.
fn plain_get_records(conns: usize, requests: usize) -> Vec<Vec<u8>> {
    let mut w = Wire::new(conns);
    let request = b"GET /file.html HTTP/1.1\r\nHost: 127.0.0.1:18480\r\n\r\n";
    let head = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 09:20:57 GMT\r\nContent-Type: text/html\r\nContent-Length: 500\r\nLast-Modified: Sun, 06 Dec 2026 09:17:25 GMT\r\nConnection: keep-alive\r\nETag: \"6b152825-1f4\"\r\nAccept-Ranges: bytes\r\n\r\n";
    let body = [b'x'; 500];
    for _ in 0..requests {
        for c in 0..conns {
            w.data_by(c, false, request, SYS_RECVFROM);
            w.writev(c, &[head, &body]);
        }
    }
    w.close_all();
    w.records
}

/// Counts spans (each kept from the optimiser).
struct Count(usize);

impl Output for Count {
    fn submit(&mut self, built: Built, chunk_times_ns: &[u64]) {
        black_box((built, chunk_times_ns));
        self.0 += 1;
    }
}

/// The pipeline's per-record work, as the agent's pipeline task does it (records fed, spans
/// emitted after each batch).
fn pipeline(records: &[Vec<u8>]) -> usize {
    let settings = Settings {
        max_connections: 65536,
        idle_timeout_ns: u64::MAX,
        buffer_budget: infertap::conn::BufferBudget::DEFAULT,
        build: BuildOptions::default(),
    };
    let mut p = Pipeline::new(
        settings,
        Arc::new(Stats::default()),
        Enrichers::default(),
        Detached::default(),
        Count(0),
    );
    let local: SocketAddr = "127.0.0.1:8000".parse().unwrap();
    p.target(TGID, [(3, local)], "vllm");
    for batch in records.chunks(64) {
        for raw in batch {
            p.feed(raw);
        }
        p.emit();
    }
    p.output().0
}

/// The agent's whole per-request path for plain HTTP: the pipeline as above into the agent's own
/// [`SpanSink`] as `app` wires it — `/spans` store, request metrics, ticks, OTLP disabled (no
/// endpoint). The store is kept across iterations (full, as on a busy agent: each push forgets the
/// oldest span). Returns the spans finished.
#[inline(never)] // its own frame: callgrind counts its calls (docs/PERFORMANCE.md)
fn pipeline_to_sink(records: &[Vec<u8>], sink: &SpanSink, sink_stats: &Stats) -> usize {
    let before = sink_stats.spans_finished.load(Ordering::Relaxed);
    let settings = Settings {
        max_connections: 65536,
        idle_timeout_ns: u64::MAX,
        buffer_budget: infertap::conn::BufferBudget::DEFAULT,
        build: BuildOptions::default(),
    };
    let stats = Arc::new(Stats::default());
    let mut p = Pipeline::new(
        settings,
        stats.clone(),
        Enrichers::default(),
        Detached::default(),
        sink.clone(),
    );
    let local: SocketAddr = "127.0.0.1:18480".parse().unwrap();
    p.target(TGID, [(3, local)], "nginx");
    for batch in records.chunks(64) {
        for raw in batch {
            p.feed(raw);
        }
        p.emit();
    }
    (sink_stats.spans_finished.load(Ordering::Relaxed) - before) as usize
}

fn sink(stats: Arc<Stats>) -> SpanSink {
    SpanSink::new(
        Arc::new(SpanStore::new(infertap::export::store::DEFAULT_CAPACITY)),
        SpanSender::disabled(),
        stats,
    )
    .with_ticks(Arc::new(TickStore::default()))
    .with_metrics(Arc::new(RequestMetrics::new()))
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("records");
    // 16 concurrent streams, 4 requests each, 64 tokens per response.
    let records = exchange_records(16, 4, 64);
    assert_eq!(pipeline(&records), 64, "every exchange becomes a span");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("streaming_chat_decode_parse_span", |b| {
        b.iter(|| pipeline(black_box(&records)))
    });
    // nginx under wrk: 16 connections, 64 plain GETs each; throughput in requests.
    let records = plain_get_records(16, 64);
    let stats = Arc::new(Stats::default());
    let sink = sink(stats.clone());
    assert_eq!(
        pipeline_to_sink(&records, &sink, &stats),
        1024,
        "every request becomes a span"
    );
    g.throughput(Throughput::Elements(1024));
    g.bench_function("plain_get_to_span_store_metrics", |b| {
        b.iter(|| pipeline_to_sink(black_box(&records), &sink, &stats))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
