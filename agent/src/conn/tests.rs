//! The connection table end to end without a kernel: synthetic data records as the eBPF programs
//! emit them (with stream positions) → finished exchanges, timing, gaps, cancellation.

use std::sync::atomic::Ordering::Relaxed;

use super::*;
use crate::capture::decode::{DataChunk, Role, SocketDir};
use crate::exchange::Outcome;

impl Finished {
    /// The HTTP exchange that finished (these tests make only HTTP exchanges).
    pub(crate) fn ex(&self) -> &Exchange {
        self.exchange().expect("an HTTP exchange")
    }
}

const MS: u64 = 1_000_000;

struct Wire {
    table: ConnTable,
    stats: Stats,
    out: Vec<Finished>,
    pos: [u64; 2],
    id: ConnId,
}

impl Wire {
    fn new(origin: Origin) -> Wire {
        let stats = Stats::default();
        let mut table = ConnTable::new(16, 60_000 * MS);
        let id = ConnId {
            tgid: 7,
            conn_id: 1,
        };
        table.open(
            id,
            5,
            Role::Server,
            Some("127.0.0.1:8000".parse().unwrap()),
            Some("127.0.0.1:40000".parse().unwrap()),
            origin,
            0,
            &stats,
        );
        Wire {
            table,
            stats,
            out: Vec::new(),
            pos: [0, 0],
            id,
        }
    }
}

/// A record as the kernel emits it, on the test connection (tgid 7, fd 5, conn 1); also used by
/// the HTTP/2 and TLS tests of the connection table.
pub(crate) fn record(
    dir: SocketDir,
    ts_ms: u64,
    at: u64,
    syscall: (u64, u64),
    last: bool,
    payload: &[u8],
) -> DataChunk<'_> {
    DataChunk {
        tgid: 7,
        tid: 7,
        ts_ns: ts_ms * MS,
        conn_id: 1,
        fd: 5,
        dir,
        last,
        eof: false,
        after_loss: false,
        syscall: 0,
        stream_pos: at,
        syscall_pos: syscall.0,
        syscall_len: syscall.1,
        payload,
    }
}

impl Wire {
    /// One syscall moving `data` at `ts_ms`, delivered as one record.
    fn syscall(&mut self, dir: SocketDir, ts_ms: u64, data: &[u8]) {
        self.truncated(dir, ts_ms, data, data.len() as u64);
    }

    /// A syscall that moved `len` bytes of which only `head` reached userspace (the rest was dropped).
    fn truncated(&mut self, dir: SocketDir, ts_ms: u64, head: &[u8], len: u64) {
        let at = self.pos[dir as usize];
        let chunk = record(dir, ts_ms, at, (at, len), true, head);
        self.pos[dir as usize] += len;
        self.table.data(&chunk, &self.stats, &mut self.out);
    }

    /// The client closed its side: the server's read returned 0.
    fn peer_eof(&mut self, ts_ms: u64) {
        let at = self.pos[0];
        let chunk = DataChunk {
            eof: true,
            after_loss: false,
            ..record(SocketDir::Ingress, ts_ms, at, (at, 0), true, &[])
        };
        self.table.data(&chunk, &self.stats, &mut self.out);
    }

    fn close(&mut self, ts_ms: u64) {
        self.table
            .close(self.id, ts_ms * MS, &self.stats, &mut self.out);
    }
}

fn chat_request(model: &str) -> Vec<u8> {
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"hi"}}],"model":"{model}","stream":true,"stream_options":{{"include_usage":true}}}}"#
    );
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nauthorization: Bearer SECRET\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn chunk(event: &str) -> Vec<u8> {
    let data = format!("data: {event}\n\n");
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n";
const ROLE: &str = r#"{"id":"chatcmpl-1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;

fn token(t: &str, finish: Option<&str>) -> String {
    let f = finish
        .map(|f| format!("\"{f}\""))
        .unwrap_or_else(|| "null".into());
    format!(
        r#"{{"id":"chatcmpl-1","model":"m","choices":[{{"index":0,"delta":{{"content":"{t}"}},"finish_reason":{f}}}]}}"#
    )
}

fn stream_response(w: &mut Wire, start_ms: u64, tokens: usize) {
    w.syscall(SocketDir::Egress, start_ms, HEAD);
    w.syscall(SocketDir::Egress, start_ms + 100, &chunk(ROLE));
    for i in 0..tokens {
        let finish = (i + 1 == tokens).then_some("stop");
        w.syscall(
            SocketDir::Egress,
            start_ms + 100 + 20 * i as u64,
            &chunk(&token("tok", finish)),
        );
    }
    let usage = format!(
        r#"{{"id":"chatcmpl-1","choices":[],"usage":{{"prompt_tokens":3,"completion_tokens":{tokens},"total_tokens":{}}}}}"#,
        3 + tokens
    );
    let end = start_ms + 100 + 20 * tokens as u64;
    let mut tail = chunk(&usage);
    tail.extend_from_slice(&chunk("[DONE]"));
    tail.extend_from_slice(b"0\r\n\r\n");
    w.syscall(SocketDir::Egress, end, &tail);
}

#[test]
fn streaming_exchange_timing_counts_content_chunks_not_the_role_chunk() {
    let mut w = Wire::new(Origin::Start);
    w.syscall(SocketDir::Ingress, 10, &chat_request("m-1"));
    stream_response(&mut w, 20, 5);
    assert_eq!(w.out.len(), 1);
    let ex = &w.out[0].ex();
    assert_eq!(ex.start_ns, 10 * MS);
    // The role chunk and the first token are written at the same time here (120 ms) — as vLLM does.
    assert_eq!(ex.first_token_ns, Some(120 * MS));
    assert_eq!(ex.content_chunk_ns.len(), 5);
    assert_eq!(ex.end_ns, 220 * MS);
    assert_eq!(ex.outcome, Outcome::Completed);
    assert_eq!(
        ex.request_fields.as_ref().unwrap().model.as_deref(),
        Some("m-1")
    );
    assert_eq!(ex.usage.as_ref().unwrap().completion_tokens, Some(5));
    assert_eq!(ex.finish_reasons, vec!["stop"]);
    assert!(!ex.incomplete);
    assert_eq!(w.stats.requests_completed.load(Relaxed), 1);
}

#[test]
fn role_chunk_alone_is_not_the_first_token() {
    let mut w = Wire::new(Origin::Start);
    w.syscall(SocketDir::Ingress, 0, &chat_request("m"));
    w.syscall(SocketDir::Egress, 5, HEAD);
    w.syscall(SocketDir::Egress, 50, &chunk(ROLE));
    w.syscall(SocketDir::Egress, 300, &chunk(&token("a", Some("stop"))));
    let mut tail = chunk("[DONE]");
    tail.extend_from_slice(b"0\r\n\r\n");
    w.syscall(SocketDir::Egress, 310, &tail);
    assert_eq!(w.out[0].ex().first_token_ns, Some(300 * MS));
}

#[test]
fn keep_alive_connection_yields_one_exchange_per_request() {
    let mut w = Wire::new(Origin::Start);
    for i in 0..10u64 {
        w.syscall(SocketDir::Ingress, i * 1000, &chat_request("m"));
        stream_response(&mut w, i * 1000 + 1, 3);
    }
    assert_eq!(w.out.len(), 10);
    assert!(w
        .out
        .iter()
        .all(|f| f.ex().outcome == Outcome::Completed && f.ex().content_chunk_ns.len() == 3));
}

#[test]
fn close_mid_stream_cancels_with_what_was_produced() {
    let mut w = Wire::new(Origin::Start);
    w.syscall(SocketDir::Ingress, 0, &chat_request("m"));
    w.syscall(SocketDir::Egress, 1, HEAD);
    w.syscall(SocketDir::Egress, 100, &chunk(ROLE));
    w.syscall(SocketDir::Egress, 120, &chunk(&token("a", None)));
    w.syscall(SocketDir::Egress, 140, &chunk(&token("b", None)));
    w.peer_eof(145);
    w.close(150);
    assert_eq!(w.out.len(), 1);
    let ex = &w.out[0].ex();
    assert_eq!(
        ex.outcome,
        Outcome::Cancelled {
            response_started: true
        }
    );
    assert_eq!(ex.content_chunk_ns.len(), 2);
    assert_eq!(ex.end_ns, 150 * MS);
    assert_eq!(w.stats.requests_cancelled.load(Relaxed), 1);
}

#[test]
fn lost_bytes_inside_a_body_are_an_exact_gap_and_mark_the_request_incomplete() {
    let mut w = Wire::new(Origin::Start);
    w.syscall(
        SocketDir::Ingress,
        0,
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n0123456789",
    );
    let body = b"{\"id\":\"cmpl-1\",\"choices\":[{\"text\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":9}}";
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut resp = head.into_bytes();
    resp.extend_from_slice(body);
    // Only the first 80 bytes of the write reached userspace, then the tail in a later record.
    w.truncated(SocketDir::Egress, 5, &resp[..80], resp.len() as u64);
    assert_eq!(w.stats.bytes_lost.load(Relaxed), resp.len() as u64 - 80);
    assert_eq!(w.out.len(), 1, "the Content-Length body still ends");
    assert!(w.out[0].ex().incomplete);
    assert_eq!(w.stats.requests_incomplete.load(Relaxed), 1);
}

#[test]
fn tail_record_of_a_large_write_still_gives_usage() {
    let mut w = Wire::new(Origin::Start);
    w.syscall(SocketDir::Ingress, 0, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}");
    let text = "a".repeat(100_000);
    let body = format!(
        r#"{{"id":"chatcmpl-9","choices":[{{"message":{{"role":"assistant","content":"{text}"}},"finish_reason":"length"}}],"usage":{{"prompt_tokens":4,"completion_tokens":77}},"prompt_logprobs":null}}"#
    );
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    resp.extend_from_slice(body.as_bytes());
    // As the kernel emits a large write: head chunk, then the tail chunk at the end.
    let total = resp.len() as u64;
    let tail_at = resp.len() - 1000;
    for (at, end, last) in [(0usize, 16383usize, false), (tail_at, resp.len(), true)] {
        let chunk = record(
            SocketDir::Egress,
            9,
            at as u64,
            (0, total),
            last,
            &resp[at..end],
        );
        w.table.data(&chunk, &w.stats, &mut w.out);
    }
    assert_eq!(w.out.len(), 1);
    let ex = &w.out[0].ex();
    assert!(ex.incomplete);
    assert_eq!(
        ex.usage.as_ref().and_then(|u| u.completion_tokens),
        Some(77)
    );
}

#[test]
fn connection_found_mid_stream_starts_at_the_next_request() {
    let mut w = Wire::new(Origin::MidStream);
    // The tail of a response that began before the agent, then a fresh request.
    w.syscall(SocketDir::Egress, 1, b"data: [DONE]\n\n\r\n0\r\n\r\n");
    w.syscall(SocketDir::Ingress, 10, &chat_request("m"));
    stream_response(&mut w, 11, 2);
    assert_eq!(w.out.len(), 1);
    assert_eq!(w.out[0].ex().start_ns, 10 * MS);
    assert_eq!(w.out[0].ex().content_chunk_ns.len(), 2);
}

#[test]
fn garbage_makes_the_connection_opaque_and_is_counted() {
    let mut w = Wire::new(Origin::Start);
    w.syscall(
        SocketDir::Ingress,
        0,
        // (Not a TLS record header: those are TLS ciphertext, see `conn::tls`.)
        b"\x00\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 binary garbage",
    );
    w.syscall(SocketDir::Ingress, 1, &chat_request("m"));
    assert!(w.out.is_empty());
    assert_eq!(w.stats.streams_not_http.load(Relaxed), 1);
}

#[test]
fn header_values_outside_the_allow_list_are_never_kept() {
    let mut w = Wire::new(Origin::Start);
    w.syscall(SocketDir::Ingress, 0, &chat_request("m"));
    stream_response(&mut w, 1, 1);
    let dump = format!("{:?}", w.out[0].ex());
    assert!(!dump.contains("SECRET"), "{dump}");
    assert!(!dump.to_lowercase().contains("authorization"));
}

#[test]
fn the_table_is_bounded_and_counts_what_it_sheds() {
    let stats = Stats::default();
    let mut table = ConnTable::new(2, MS);
    for i in 0..5 {
        table.open(
            ConnId {
                tgid: 1,
                conn_id: i,
            },
            i as u32,
            Role::Server,
            None,
            None,
            Origin::Start,
            0,
            &stats,
        );
    }
    assert_eq!(table.len(), 2);
    assert_eq!(stats.connections_shed.load(Relaxed), 3);
    let mut out = Vec::new();
    table.evict_idle(10 * MS, &stats, &mut out);
    assert!(table.is_empty());
    assert_eq!(stats.connections_evicted.load(Relaxed), 2);
}

#[test]
fn model_after_a_200_kb_prompt_is_found_across_many_reads_without_keeping_the_body() {
    let mut w = Wire::new(Origin::Start);
    let prompt = "word \\\"quoted\\\" ".repeat(15_000);
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{prompt}"}}],"stream":false,"max_tokens":9,"model":"m-big"}}"#
    );
    assert!(body.len() > 200_000);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    w.syscall(SocketDir::Ingress, 1, head.as_bytes());
    for (i, part) in body.as_bytes().chunks(65536).enumerate() {
        w.syscall(SocketDir::Ingress, 2 + i as u64, part);
    }
    let resp = br#"{"id":"chatcmpl-2","model":"m-big","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":30000,"completion_tokens":1,"total_tokens":30001},"prompt_logprobs":null}"#;
    let mut bytes = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        resp.len()
    )
    .into_bytes();
    bytes.extend_from_slice(resp);
    w.syscall(SocketDir::Egress, 20, &bytes);
    let ex = &w.out[0].ex();
    let f = ex.request_fields.as_ref().unwrap();
    assert_eq!(f.model.as_deref(), Some("m-big"));
    assert_eq!(f.max_tokens, Some(9));
    assert_eq!(ex.response_id.as_deref(), Some("chatcmpl-2"));
    assert_eq!(ex.usage.as_ref().unwrap().prompt_tokens, Some(30000));
    assert_eq!(ex.finish_reasons, vec!["stop"]);
    assert_eq!(
        ex.first_token_ns,
        Some(20 * MS),
        "non-streaming: the answer comes with the response"
    );
    assert_eq!(w.stats.json_parse_failures.load(Relaxed), 0);
}

#[test]
fn a_json_body_that_does_not_scan_is_counted() {
    let mut w = Wire::new(Origin::Start);
    let body = b"{\"model\": \"m\", \"messages\": [oops";
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    w.syscall(SocketDir::Ingress, 1, &req);
    w.syscall(SocketDir::Egress, 2, b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}");
    assert_eq!(w.out.len(), 1);
    assert!(w.out[0].ex().json_error.is_some());
    assert_eq!(w.stats.json_parse_failures.load(Relaxed), 1);
    // What was found before the error is kept.
    assert_eq!(
        w.out[0]
            .ex()
            .request_fields
            .as_ref()
            .unwrap()
            .model
            .as_deref(),
        Some("m")
    );
}

#[test]
fn server_closing_first_is_a_server_abort_not_a_cancellation() {
    let mut w = Wire::new(Origin::Start);
    w.syscall(SocketDir::Ingress, 0, &chat_request("m"));
    w.syscall(SocketDir::Egress, 1, HEAD);
    w.syscall(SocketDir::Egress, 100, &chunk(ROLE));
    w.syscall(SocketDir::Egress, 120, &chunk(&token("a", None)));
    w.close(130); // no EOF from the client first
    let ex = &w.out[0].ex();
    assert_eq!(
        ex.outcome,
        Outcome::ServerAborted {
            response_started: true
        }
    );
    assert_eq!(w.stats.requests_server_aborted.load(Relaxed), 1);
    assert_eq!(w.stats.requests_cancelled.load(Relaxed), 0);
}

#[test]
fn a_lost_request_head_is_counted_as_a_lost_request_and_the_next_one_is_traced() {
    let mut w = Wire::new(Origin::Start);
    let req = chat_request("m");
    // The whole first request was dropped in the kernel; only its position advanced.
    w.pos[SocketDir::Ingress as usize] += req.len() as u64;
    w.syscall(SocketDir::Ingress, 1, &req);
    assert_eq!(w.stats.bytes_lost.load(Relaxed), req.len() as u64);
    assert_eq!(w.stats.requests_lost.load(Relaxed), 1);
    assert_eq!(w.stats.requests_incomplete.load(Relaxed), 0);
    // The parser resynchronised on the second request, which is answered and traced.
    w.syscall(SocketDir::Egress, 5, HEAD);
    w.syscall(SocketDir::Egress, 6, &chunk(&token("a", Some("stop"))));
    w.syscall(SocketDir::Egress, 7, b"0\r\n\r\n");
    assert_eq!(w.out.len(), 1, "the second request has its exchange");
    assert_eq!(w.stats.requests_lost.load(Relaxed), 1);
}

#[test]
fn an_event_over_the_size_bound_is_counted_and_marks_the_request_incomplete() {
    let mut w = Wire::new(Origin::Start);
    w.syscall(SocketDir::Ingress, 0, &chat_request("m"));
    w.syscall(SocketDir::Egress, 5, HEAD);
    w.syscall(SocketDir::Egress, 6, &chunk(&token("a", None)));
    // An event that never ends within the bound, written in 64 KiB pieces.
    let piece = "x".repeat(64 * 1024);
    w.syscall(SocketDir::Egress, 7, b"6\r\ndata: \r\n");
    for i in 0..(crate::protocol::sse::MAX_EVENT_BYTES / piece.len() + 2) {
        w.syscall(
            SocketDir::Egress,
            8 + i as u64,
            format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes(),
        );
    }
    w.syscall(SocketDir::Egress, 100, b"0\r\n\r\n");
    assert_eq!(w.out.len(), 1);
    let ex = &w.out[0].ex();
    assert_eq!(ex.content_chunk_ns.len(), 1, "the event before it counts");
    assert!(ex.sse_failures >= 1);
    assert!(ex.incomplete);
    assert_eq!(w.stats.requests_incomplete.load(Relaxed), 1);
    assert_eq!(
        w.stats.bytes_lost.load(Relaxed),
        0,
        "nothing was lost in the kernel"
    );
}

#[test]
fn a_connection_whose_open_record_was_dropped_is_traced_from_its_first_byte() {
    let stats = Stats::default();
    let mut table = ConnTable::new(16, 60_000 * MS);
    let mut out = Vec::new();
    let req = chat_request("m");
    // No open record: the first record is the request at stream position 0.
    table.data(
        &record(SocketDir::Ingress, 1, 0, (0, req.len() as u64), true, &req),
        &stats,
        &mut out,
    );
    let mut at = 0u64;
    for (ts, bytes) in [
        (5, HEAD.to_vec()),
        (6, chunk(&token("a", None))),
        (7, chunk(&token("b", Some("stop")))),
        (8, b"0\r\n\r\n".to_vec()),
    ] {
        let len = bytes.len() as u64;
        table.data(
            &record(SocketDir::Egress, ts, at, (at, len), true, &bytes),
            &stats,
            &mut out,
        );
        at += len;
    }
    assert_eq!(out.len(), 1, "the exchange is complete");
    let ex = &out[0].ex();
    assert!(!ex.incomplete);
    assert_eq!(ex.content_chunk_ns.len(), 2);
    assert_eq!(ex.request.path, "/v1/chat/completions");
}

/// A connection whose open record and first request were both dropped in the kernel: the first
/// record userspace gets is the second request, at stream position `req.len()`.
fn second_request_first(after_loss: bool) -> (Stats, Vec<Finished>, u64) {
    let stats = Stats::default();
    let mut table = ConnTable::new(16, 60_000 * MS);
    let mut out = Vec::new();
    let req = chat_request("m");
    let n = req.len() as u64;
    let first = DataChunk {
        after_loss,
        ..record(SocketDir::Ingress, 1, n, (n, n), true, &req)
    };
    table.data(&first, &stats, &mut out);
    (stats, out, n)
}

#[test]
fn a_connection_first_seen_after_a_kernel_loss_counts_what_came_before_as_lost() {
    let (stats, _, n) = second_request_first(true);
    assert_eq!(stats.connections_after_loss.load(Relaxed), 1);
    assert_eq!(
        stats.bytes_lost.load(Relaxed),
        n,
        "the first request's bytes"
    );
    assert_eq!(stats.requests_lost.load(Relaxed), 1, "its request");
}

#[test]
fn a_connection_first_seen_mid_stream_without_a_loss_loses_nothing() {
    // The same record without the flag: a connection older than tracing, or evicted while idle.
    let (stats, _, _) = second_request_first(false);
    assert_eq!(stats.connections_after_loss.load(Relaxed), 0);
    assert_eq!(stats.bytes_lost.load(Relaxed), 0);
    assert_eq!(stats.requests_lost.load(Relaxed), 0);
}

#[test]
fn a_connection_lost_whole_is_counted_from_its_close_record() {
    // Every record of the connection was refused but its close: its final positions say how
    // much was lost.
    let stats = Stats::default();
    let mut table = ConnTable::new(16, 60_000 * MS);
    let mut out = Vec::new();
    let id = ConnId {
        tgid: 7,
        conn_id: 9,
    };
    table.closed(id, 5, 10 * MS, Some([300, 2_000]), &stats, &mut out);
    assert_eq!(stats.connections_after_loss.load(Relaxed), 1);
    assert_eq!(stats.bytes_lost.load(Relaxed), 2_300);
    assert_eq!(stats.requests_lost.load(Relaxed), 1);
    assert_eq!(table.len(), 0, "nothing is left behind");
}

#[test]
fn a_response_tail_lost_before_the_close_marks_the_request_incomplete() {
    let mut w = Wire::new(Origin::Start);
    w.syscall(SocketDir::Ingress, 1, &chat_request("m"));
    w.syscall(SocketDir::Egress, 5, HEAD);
    w.syscall(SocketDir::Egress, 6, &chunk(&token("a", None)));
    // The rest of the response (two chunks and the terminator) was refused by the ring buffer;
    // then the server closed the connection.
    let final_pos = [w.pos[0], w.pos[1] + 180];
    w.table
        .closed(w.id, 5, 9 * MS, Some(final_pos), &w.stats, &mut w.out);
    assert_eq!(w.stats.bytes_lost.load(Relaxed), 180);
    assert_eq!(w.out.len(), 1);
    assert!(w.out[0].ex().incomplete, "{:?}", w.out[0].ex());
}

#[test]
fn pipelined_requests_past_the_parsers_bound_are_counted_as_shed() {
    use crate::protocol::http1::MAX_PIPELINED;
    let mut w = Wire::new(Origin::Start);
    let requests = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n".repeat(MAX_PIPELINED + 6);
    w.syscall(SocketDir::Ingress, 1, &requests);
    assert_eq!(w.stats.http_requests_shed.load(Relaxed), 6);
    let responses = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".repeat(MAX_PIPELINED + 6);
    w.syscall(SocketDir::Egress, 2, &responses);
    assert_eq!(w.out.len(), MAX_PIPELINED, "one span per request kept");
    assert_eq!(w.stats.http_parse_failures.load(Relaxed), 0);
}

/// An SSE event that never ends: one chunk of `len` bytes of a `data:` line with no newline.
fn endless_event(len: usize) -> Vec<u8> {
    let data = format!("data: {}", "x".repeat(len));
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

#[test]
fn a_connection_over_its_buffer_budget_is_shed_counted_and_resynchronised() {
    let mut w = Wire::new(Origin::Start);
    w.table.set_budget(BufferBudget {
        per_conn: 64 << 10,
        total: 1 << 30,
    });
    w.syscall(SocketDir::Ingress, 1, &chat_request("m"));
    w.syscall(SocketDir::Egress, 2, HEAD);
    // The event in progress grows past the bound over several writes.
    for i in 0..4 {
        w.syscall(SocketDir::Egress, 3 + i, &endless_event(30 << 10));
    }
    assert_eq!(w.stats.buffer_sheds_connection.load(Relaxed), 1);
    assert!(w.table.buffered() < 64 << 10, "{}", w.table.buffered());
    assert_eq!(w.out.len(), 1, "the request in flight ends at the shed");
    let ex = w.out[0].ex();
    assert!(ex.incomplete);
    assert_eq!(ex.outcome, Outcome::Abandoned);
    // The rest of the endless response is skipped; the next request on the same connection is
    // followed from its head.
    w.syscall(SocketDir::Egress, 10, &endless_event(10 << 10));
    w.syscall(SocketDir::Ingress, 20, &chat_request("next"));
    stream_response(&mut w, 21, 3);
    assert_eq!(w.out.len(), 2, "{:#?}", w.out);
    let ex = w.out[1].ex();
    assert_eq!(ex.outcome, Outcome::Completed);
    assert!(!ex.incomplete);
    assert_eq!(ex.content_chunks, 3);
    assert_eq!(w.stats.buffer_sheds_connection.load(Relaxed), 1);
}

#[test]
fn over_the_global_budget_the_connection_holding_most_is_shed_and_others_lose_nothing() {
    let stats = Stats::default();
    let mut table = ConnTable::new(16, 60_000 * MS);
    table.set_budget(BufferBudget {
        per_conn: 1 << 20,
        total: 128 << 10,
    });
    let mut out = Vec::new();
    let on = |conn_id: u64, c: DataChunk<'static>| DataChunk { conn_id, ..c };
    // Connection 2: a request head arriving slowly (40 KiB of it so far).
    let head: &'static [u8] = Box::leak(
        format!(
            "GET /v1/models HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n",
            "p".repeat(40 << 10)
        )
        .into_bytes()
        .into_boxed_slice(),
    );
    let len = head.len() as u64;
    table.data(
        &on(2, record(SocketDir::Ingress, 1, 0, (0, len), true, head)),
        &stats,
        &mut out,
    );
    // Connection 1: a streamed response whose event in progress outgrows the total.
    let req: &'static [u8] = Box::leak(chat_request("m").into_boxed_slice());
    let mut pos = [req.len() as u64, 0];
    table.data(
        &on(1, record(SocketDir::Ingress, 2, 0, (0, pos[0]), true, req)),
        &stats,
        &mut out,
    );
    let mut egress = |ts: u64, bytes: Vec<u8>, table: &mut ConnTable, out: &mut Vec<_>| {
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let at = pos[1];
        pos[1] += bytes.len() as u64;
        let n = bytes.len() as u64;
        table.data(
            &on(1, record(SocketDir::Egress, ts, at, (at, n), true, bytes)),
            &stats,
            out,
        );
    };
    egress(3, HEAD.to_vec(), &mut table, &mut out);
    for i in 0..4 {
        egress(4 + i, endless_event(30 << 10), &mut table, &mut out);
    }
    assert_eq!(stats.buffer_sheds_global.load(Relaxed), 1);
    assert_eq!(stats.buffer_sheds_connection.load(Relaxed), 0);
    assert_eq!(out.len(), 1, "connection 1's request ended incomplete");
    assert_eq!(out[0].conn.conn_id, 1);
    assert!(out[0].ex().incomplete);
    // Connection 2 kept its partial head: the request completes normally.
    let rest: &'static [u8] = b"\r\n";
    table.data(
        &on(2, record(SocketDir::Ingress, 20, len, (len, 2), true, rest)),
        &stats,
        &mut out,
    );
    let resp: &'static [u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
    table.data(
        &on(
            2,
            record(SocketDir::Egress, 21, 0, (0, resp.len() as u64), true, resp),
        ),
        &stats,
        &mut out,
    );
    assert_eq!(out.len(), 2, "{out:#?}");
    assert_eq!(out[1].conn.conn_id, 2);
    assert_eq!(out[1].ex().outcome, Outcome::Completed);
    assert!(!out[1].ex().incomplete);
    // Closing gives the bytes back.
    for id in [1, 2] {
        table.close(
            ConnId {
                tgid: 7,
                conn_id: id,
            },
            30 * MS,
            &stats,
            &mut out,
        );
    }
    assert_eq!(table.buffered(), 0);
}

/// The kernel refused the last records of the request's read (no later request position shows
/// the gap yet): the response's first record carries the connection's after-loss flag, and the
/// exchange it ends is incomplete, not a complete span with half a body.
#[test]
fn an_after_loss_flag_in_the_other_direction_marks_the_exchange_in_flight_incomplete() {
    for flagged in [false, true] {
        let mut w = Wire::new(Origin::Start);
        let req = chat_request("m");
        let len = req.len() as u64;
        // The read's first record got through; its last one (the body's end) did not.
        let first = record(
            SocketDir::Ingress,
            1,
            0,
            (0, len),
            false,
            &req[..req.len() - 8],
        );
        w.table.data(&first, &w.stats, &mut w.out);
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let n = head.len() as u64;
        let response = DataChunk {
            after_loss: flagged,
            ..record(SocketDir::Egress, 2, 0, (0, n), true, head)
        };
        w.table.data(&response, &w.stats, &mut w.out);
        assert_eq!(w.out.len(), 1);
        assert_eq!(w.out[0].ex().incomplete, flagged, "flagged: {flagged}");
    }
}

/// Which records of one syscall the ring buffer refuses: none, all, all from the `k`th chunk on,
/// or the first `k` (a full ring refuses runs of records, not scattered ones).
type Refusal = (u8, usize);

/// The kernel's side of a traced connection, as `ebpf/probes/src/data.rs` behaves: each
/// syscall's bytes in chunks of at most `CHUNK_PAYLOAD_MAX` (whole up to
/// `HEAD_CHUNKS_PER_BUFFER` chunks, then the tail), any of which the ring buffer may refuse. The
/// connection's `CONN_FLAG_LOST` is read at the syscall's start (its records carry it), set when
/// a record of it was refused and cleared once a record carrying it got through; each
/// direction's own loss bit is cleared only by a delivered record of that direction, and the
/// end-of-stream and close records carry what is still unshown.
struct LossyKernel<'d> {
    w: Wire,
    flags: u32,
    plan: &'d mut dyn Iterator<Item = Refusal>,
}

impl LossyKernel<'_> {
    fn syscall(&mut self, dir: SocketDir, ts_ms: u64, data: &[u8]) {
        use infertap_common::{CONN_FLAG_LOST, CONN_FLAG_LOST_RX, CONN_FLAG_LOST_TX};
        const MAX: usize = infertap_common::CHUNK_PAYLOAD_MAX;
        let head = infertap_common::HEAD_CHUNKS_PER_BUFFER as usize;
        let at = self.w.pos[dir as usize];
        let len = data.len() as u64;
        let after_loss = self.flags & CONN_FLAG_LOST != 0;
        let (mode, k) = self.plan.next().unwrap_or((0, 0));
        // As `emit_buffer` copies: whole up to `head` chunks; past that, the head chunks and
        // then the rest if shorter than a chunk, else the last full chunk (a gap before it).
        let head_bytes = head * MAX;
        let mut copied: Vec<(usize, &[u8])> = data
            .get(..head_bytes)
            .unwrap_or(data)
            .chunks(MAX)
            .enumerate()
            .map(|(i, piece)| (i * MAX, piece))
            .collect();
        if data.len() > head_bytes {
            let at = if data.len() - head_bytes >= MAX {
                data.len() - MAX
            } else {
                head_bytes
            };
            copied.push((at, &data[at..]));
        }
        let mut delivered = true;
        for (j, (off, piece)) in copied.into_iter().enumerate() {
            let refused = match mode % 4 {
                0 => false,
                1 => true,
                2 => j >= k,
                _ => j < k,
            };
            if refused {
                delivered = false;
                continue;
            }
            let off = off as u64;
            let chunk = DataChunk {
                after_loss,
                ..record(
                    dir,
                    ts_ms,
                    at + off,
                    (at, len),
                    off + piece.len() as u64 == len,
                    piece,
                )
            };
            self.w.table.data(&chunk, &self.w.stats, &mut self.w.out);
        }
        self.w.pos[dir as usize] += len;
        let dir_lost = match dir {
            SocketDir::Ingress => CONN_FLAG_LOST_RX,
            SocketDir::Egress => CONN_FLAG_LOST_TX,
        };
        if !delivered {
            self.flags |= CONN_FLAG_LOST | dir_lost;
        } else if self.flags & (CONN_FLAG_LOST | dir_lost) != 0 {
            self.flags &= !(CONN_FLAG_LOST | dir_lost);
        }
    }

    /// The client closed: the server reads the end of the stream, then closes.
    fn close(&mut self, ts_ms: u64) {
        use infertap_common::{CONN_FLAGS_LOST_ANY, CONN_FLAG_LOST_RX};
        let at = self.w.pos[0];
        let eof = DataChunk {
            eof: true,
            after_loss: self.flags & CONN_FLAG_LOST_RX != 0,
            ..record(SocketDir::Ingress, ts_ms, at, (at, 0), true, &[])
        };
        self.w.table.data(&eof, &self.w.stats, &mut self.w.out);
        let lost_until = (self.flags & CONN_FLAGS_LOST_ANY != 0).then_some(self.w.pos);
        let id = self.w.id;
        self.w.table.closed(
            id,
            5,
            ts_ms * MS,
            lost_until,
            &self.w.stats,
            &mut self.w.out,
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// A big request (head, then a 1 MB body, read in arbitrary pieces) and its answer, any runs
    /// of whose records the ring buffer refuses: the request is always accounted for, as one
    /// span (marked incomplete when anything of it was lost) or as one lost request, never
    /// neither — also when every byte of the request was refused but the answer got through.
    #[test]
    fn a_request_any_of_whose_records_were_refused_is_a_span_or_counted_lost(
        reads in proptest::collection::vec(1usize..1_200_000, 1..40),
        plan in proptest::collection::vec((0u8..4, 0usize..70), 0..60),
        split_response in proptest::bool::ANY,
    ) {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}],"max_tokens":2}}"#,
            "word ".repeat(200_000)
        );
        let mut request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body.as_bytes());
        let answer = r#"{"id":"c1","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"length"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        );
        let mut plan = plan.into_iter();
        let mut k = LossyKernel { w: Wire::new(Origin::Start), flags: 0, plan: &mut plan };
        let (mut at, mut ts) = (0, 1);
        for n in reads.iter().cycle() {
            if at >= request.len() {
                break;
            }
            let end = (at + n).min(request.len());
            k.syscall(SocketDir::Ingress, ts, &request[at..end]);
            at = end;
            ts += 1;
        }
        if split_response {
            k.syscall(SocketDir::Egress, ts, head.as_bytes());
            k.syscall(SocketDir::Egress, ts + 1, answer.as_bytes());
        } else {
            k.syscall(SocketDir::Egress, ts, format!("{head}{answer}").as_bytes());
        }
        k.close(ts + 2);
        let (spans, lost) = (k.w.out.len() as u64, k.w.stats.requests_lost.load(Relaxed));
        proptest::prop_assert_eq!(spans + lost, 1, "spans {} lost {} stats {:?}", spans, lost, k.w.stats);
        if spans == 1 && k.w.stats.bytes_lost.load(Relaxed) > 0 {
            proptest::prop_assert!(k.w.out[0].ex().incomplete);
        }
        proptest::prop_assert_eq!(k.w.table.len(), 0);
    }
}
