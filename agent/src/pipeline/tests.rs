//! The pipeline from raw ring-buffer records to spans, with a scripted node: the accept-address
//! policy (listener addresses, sockets that turn out not to be TCP), targets going away, and the
//! one route every kind of finished work takes.

use std::net::SocketAddr;

use infertap_common::*;

use super::*;
use crate::trace::span::AttrValue;

const TGID: u32 = 42;
const MS: u64 = 1_000_000;

fn bytes_of<T>(v: &T) -> Vec<u8> {
    // SAFETY: a view of a repr(C), integer-only ABI struct (sizes asserted in infertap-common).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

fn open(conn_id: u64, fd: u32, listen_fd: u32, flags: u32, ts_ns: u64) -> Vec<u8> {
    let mut addr = [0u8; 32];
    addr[..2].copy_from_slice(&2u16.to_ne_bytes());
    addr[2..4].copy_from_slice(&40000u16.to_be_bytes());
    addr[4..8].copy_from_slice(&[127, 0, 0, 1]);
    bytes_of(&ConnOpenRecord {
        header: RecordHeader {
            kind: RECORD_CONN_OPEN,
            tgid: TGID,
            ts_ns,
        },
        conn_id,
        fd,
        listen_fd,
        role: ROLE_SERVER,
        flags,
        addr: if flags == 0 { addr } else { [0; 32] },
    })
}

fn data(conn_id: u64, fd: u32, egress: bool, pos: u64, ts_ns: u64, bytes: &[u8]) -> Vec<u8> {
    let mut raw = bytes_of(&DataRecord {
        header: RecordHeader {
            kind: RECORD_DATA,
            tgid: TGID,
            ts_ns,
        },
        conn_id,
        stream_pos: pos,
        syscall_pos: pos,
        syscall_len: bytes.len() as u64,
        fd,
        tid: TGID,
        len: bytes.len() as u32,
        flags: DATA_FLAG_LAST
            | if egress { DATA_FLAG_EGRESS } else { 0 }
            | (if egress { SYS_WRITE } else { SYS_READ }) << DATA_SYSCALL_SHIFT,
    });
    raw.extend_from_slice(bytes);
    raw.resize(raw.len().next_multiple_of(8), 0);
    raw
}

/// A node whose descriptors are scripted, recording what the pipeline asked of it.
#[derive(Default)]
struct Scripted {
    fds: HashMap<(u32, u32), FdKind>,
    untraced: Vec<(u32, u32, u64)>,
    exited: Vec<(u32, u64)>,
    /// The kernel socket map: (tgid, fd, conn_id).
    sockets: Vec<(u32, u32, u64)>,
    /// Peers of the agent's own polls.
    own: Vec<SocketAddr>,
    now_ns: u64,
}

impl Node for Scripted {
    fn classify_fd(&mut self, tgid: u32, fd: u32) -> FdKind {
        self.fds.get(&(tgid, fd)).cloned().unwrap_or(FdKind::Gone)
    }
    fn still_names(&mut self, tgid: u32, fd: u32, conn_id: u64) -> bool {
        self.sockets.contains(&(tgid, fd, conn_id))
    }
    fn untrace(&mut self, tgid: u32, fd: u32, conn_id: u64) {
        self.untraced.push((tgid, fd, conn_id));
    }
    fn process_exited(&mut self, tgid: u32, exit_ns: u64) {
        self.exited.push((tgid, exit_ns));
    }
    fn forget_fds(&mut self, tgid: u32, lo: u32, hi: u32, at_ns: u64) -> Vec<ForgottenSocket> {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sockets)
            .into_iter()
            .partition(|&(t, fd, conn_id)| {
                t == tgid && (lo..=hi).contains(&fd) && conn_id <= at_ns
            });
        self.sockets = kept;
        gone.into_iter()
            .map(|(_, fd, conn_id)| ForgottenSocket {
                fd,
                conn_id,
                after_loss: None,
            })
            .collect()
    }
    fn exec(&mut self, _tgid: u32, _was_target: bool, _listen: bool) {}
    fn now_ns(&self) -> u64 {
        self.now_ns
    }
    fn is_own_connection(&self, peer: SocketAddr, _accepted_ns: u64) -> bool {
        self.own.contains(&peer)
    }
}

fn pipeline(node: Scripted) -> Pipeline<Scripted, Vec<FinishedSpan>> {
    let settings = Settings {
        max_connections: 16,
        idle_timeout_ns: 60_000 * MS,
        buffer_budget: crate::conn::BufferBudget::DEFAULT,
        build: BuildOptions::default(),
    };
    Pipeline::new(
        settings,
        Arc::new(Stats::default()),
        Enrichers::default(),
        node,
        Vec::new(),
    )
}

const REQUEST: &[u8] = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 31\r\n\r\n{\"model\":\"m\",\"prompt\":\"secret\"}";
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

fn attr<'a>(span: &'a FinishedSpan, key: &str) -> Option<&'a AttrValue> {
    span.attr(key)
}

#[test]
fn an_accepted_connection_names_its_listener_and_becomes_a_span() {
    let listener: SocketAddr = "10.0.0.1:8000".parse().unwrap();
    let mut p = pipeline(Scripted::default());
    p.target(TGID, [(3, listener)], "vllm");
    p.record(&open(1, 7, 3, 0, MS));
    p.record(&data(1, 7, false, 0, 2 * MS, REQUEST));
    assert!(
        p.output().is_empty(),
        "nothing finished before the response"
    );
    p.record(&data(1, 7, true, 0, 3 * MS, RESPONSE));
    let spans = p.output();
    assert_eq!(spans.len(), 1);
    assert_eq!(attr(&spans[0], "server.port"), Some(&AttrValue::I64(8000)));
    assert_eq!(
        attr(&spans[0], "gen_ai.provider.name"),
        Some(&AttrValue::Str("vllm".into()))
    );
    assert_eq!(
        attr(&spans[0], "gen_ai.request.model"),
        Some(&AttrValue::Str("m".into()))
    );
    assert!(!format!("{spans:?}").contains("secret"), "no payload text");
    assert_eq!(p.stats.records_read.load(Ordering::Relaxed), 3);
}

#[test]
fn an_accept_without_address_that_is_not_tcp_is_untraced_and_makes_nothing() {
    let mut node = Scripted::default();
    node.fds.insert((TGID, 3), FdKind::Other); // the "listener" is a Unix socket
    let mut p = pipeline(node);
    p.record(&open(5, 9, 3, OPEN_FLAG_FAMILY_UNKNOWN, MS));
    assert_eq!(p.node.untraced, vec![(TGID, 9, 5)]);
    assert_eq!(p.connections(), 0);
    p.record(&data(5, 9, false, 0, 2 * MS, REQUEST));
    p.record(&data(5, 9, true, 0, 3 * MS, RESPONSE));
    // Its bytes, had the kernel sent any more, start a connection picked up mid-stream; the
    // open itself made none.
    assert_eq!(p.stats.connections_opened.load(Ordering::Relaxed), 1);
}

#[test]
fn an_accept_without_address_takes_the_addresses_the_socket_has() {
    let local: SocketAddr = "10.0.0.2:8001".parse().unwrap();
    let remote: SocketAddr = "10.0.0.3:5555".parse().unwrap();
    let mut node = Scripted::default();
    node.fds.insert((TGID, 3), FdKind::Tcp { local, remote });
    node.fds.insert((TGID, 9), FdKind::Tcp { local, remote });
    node.sockets.push((TGID, 9, 5));
    let mut p = pipeline(node);
    p.record(&open(5, 9, 3, OPEN_FLAG_FAMILY_UNKNOWN, MS));
    p.record(&data(5, 9, false, 0, 2 * MS, REQUEST));
    p.record(&data(5, 9, true, 0, 3 * MS, RESPONSE));
    let spans = p.output();
    assert_eq!(spans.len(), 1);
    assert_eq!(attr(&spans[0], "server.port"), Some(&AttrValue::I64(8001)));
    assert_eq!(
        attr(&spans[0], "client.address"),
        Some(&AttrValue::Str("10.0.0.3".into()))
    );
}

/// Behind a busy ring buffer, a short connection's accept is read after it closed and its
/// number went to the next connection on the same listener — here the agent's own `/metrics`
/// poll. What the number names now is not taken for it: the client's request is still a span
/// (without a client address), and the poll is still recognised at its own accept.
#[test]
fn an_accept_read_after_its_number_was_reused_takes_nothing_from_the_next_connection() {
    let local: SocketAddr = "127.0.0.1:8000".parse().unwrap();
    let poll: SocketAddr = "127.0.0.1:40001".parse().unwrap();
    let mut node = Scripted::default();
    node.fds.insert(
        (TGID, 3),
        FdKind::Tcp {
            local,
            remote: "0.0.0.0:0".parse().unwrap(),
        },
    );
    // fd 9 was client connection 5's; it closed, and the poll's connection 6 has it now.
    node.fds.insert(
        (TGID, 9),
        FdKind::Tcp {
            local,
            remote: poll,
        },
    );
    node.sockets.push((TGID, 9, 6));
    node.own.push(poll);
    let mut p = pipeline(node);
    p.record(&open(5, 9, 3, OPEN_FLAG_FAMILY_UNKNOWN, MS));
    p.record(&data(5, 9, false, 0, 2 * MS, REQUEST));
    p.record(&data(5, 9, true, 0, 3 * MS, RESPONSE));
    p.record(&open(6, 9, 3, OPEN_FLAG_FAMILY_UNKNOWN, 4 * MS));
    assert_eq!(
        p.node.untraced,
        vec![(TGID, 9, 6)],
        "the poll's connection, not the client's"
    );
    assert_eq!(
        p.stats
            .runtime_poll_connections_untraced
            .load(Ordering::Relaxed),
        1
    );
    let spans = p.output();
    assert_eq!(spans.len(), 1, "the client's request");
    assert_eq!(attr(&spans[0], "client.address"), None);
    assert_eq!(attr(&spans[0], "server.port"), Some(&AttrValue::I64(8000)));
}

#[test]
fn a_target_gone_ends_what_it_had_in_flight_and_an_exit_reaches_the_node() {
    let mut p = pipeline(Scripted::default());
    p.record(&open(1, 7, u32::MAX, 0, MS));
    p.record(&data(1, 7, false, 0, 2 * MS, REQUEST));
    p.node_mut().now_ns = 5 * MS;
    p.gone(TGID);
    assert_eq!(p.output().len(), 1, "the request in flight ends as a span");
    assert_eq!(p.connections(), 0);
    let exit = bytes_of(&ProcExitRecord {
        header: RecordHeader {
            kind: RECORD_PROC_EXIT,
            tgid: TGID,
            ts_ns: 6 * MS,
        },
    });
    p.record(&exit);
    assert_eq!(p.node.exited, vec![(TGID, 6 * MS)]);
}

#[test]
fn malformed_records_are_counted_and_change_nothing() {
    let mut p = pipeline(Scripted::default());
    p.record(&[1, 2, 3]);
    assert_eq!(p.stats.records_malformed.load(Ordering::Relaxed), 1);
    assert_eq!(p.connections(), 0);
    assert!(p.output().is_empty());
}

#[test]
fn a_close_range_ends_the_connections_in_its_range_that_began_before_it_and_counts_them() {
    let node = Scripted {
        sockets: vec![
            (TGID, 7, MS),
            (TGID, 8, MS + 1),
            (TGID, 20, MS + 2),
            (TGID, 9, 10 * MS),
        ],
        ..Scripted::default()
    };
    let mut p = pipeline(node);
    for (conn_id, fd) in [(MS, 7), (MS + 1, 8), (MS + 2, 20)] {
        p.record(&open(conn_id, fd, u32::MAX, 0, MS));
    }
    p.record(&data(MS, 7, false, 0, 2 * MS, REQUEST));
    p.record(&bytes_of(&FdsForgottenRecord {
        header: RecordHeader {
            kind: RECORD_FDS_FORGOTTEN,
            tgid: TGID,
            ts_ns: 5 * MS,
        },
        lo: 3,
        hi: 10,
        cause: FORGET_CLOSE_RANGE,
        _pad: 0,
    }));
    // fds 7 and 8 went; 20 is outside the range, 9 began after the close_range.
    assert_eq!(p.node.sockets, vec![(TGID, 20, MS + 2), (TGID, 9, 10 * MS)]);
    assert_eq!(
        p.stats
            .sockets_forgotten_close_range
            .load(Ordering::Relaxed),
        2
    );
    assert_eq!(p.connections(), 1);
    assert_eq!(
        p.output().len(),
        1,
        "the request in flight on fd 7 ends as a span"
    );
    // A close the kernel made for a dup2 onto a traced number is counted by its cause.
    p.record(&bytes_of(&ConnCloseRecord {
        header: RecordHeader {
            kind: RECORD_CONN_CLOSE,
            tgid: TGID,
            ts_ns: 6 * MS,
        },
        conn_id: MS + 2,
        fd: 20,
        flags: FORGET_DUP << CLOSE_CAUSE_SHIFT,
        rx_pos: 0,
        tx_pos: 0,
    }));
    assert_eq!(p.stats.sockets_forgotten_dup.load(Ordering::Relaxed), 1);
    assert_eq!(p.connections(), 0);
}

/// Body bytes under a `content-length` head.
fn http(head: &str, body: &str) -> Vec<u8> {
    format!("{head}content-length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

#[test]
fn a_scrape_of_the_server_s_metrics_gives_later_requests_its_load() {
    let listener: SocketAddr = "10.0.0.1:8000".parse().unwrap();
    let mut p = pipeline(Scripted::default());
    p.target(TGID, [(3, listener)], "vllm");
    // Prometheus scrapes /metrics on one connection at 2 ms...
    p.record(&open(1, 7, 3, 0, MS));
    let scrape = b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n";
    p.record(&data(1, 7, false, 0, 2 * MS, scrape));
    let exposition = "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 6.0\nvllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\nvllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.875\n";
    let answer = http(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n",
        exposition,
    );
    p.record(&data(1, 7, true, 0, 2 * MS, &answer));
    // ...and a completion arrives on another at 5 ms.
    p.record(&open(2, 8, 3, 0, 4 * MS));
    p.record(&data(2, 8, false, 0, 5 * MS, REQUEST));
    p.record(&data(2, 8, true, 0, 6 * MS, RESPONSE));
    let spans = p.output();
    assert_eq!(spans.len(), 2);
    let s = &spans[1];
    let f = |k: &str| match attr(s, k) {
        Some(AttrValue::F64(x)) => *x,
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(f("infertap.runtime.requests_waiting"), 6.0);
    assert_eq!(f("infertap.runtime.requests_running"), 3.0);
    assert_eq!(f("infertap.runtime.kv_cache_usage"), 0.875);
    assert!((f("infertap.runtime.sample_age") - 0.003).abs() < 1e-12);
    assert_eq!(
        attr(s, "infertap.runtime.source"),
        Some(&AttrValue::Str("vllm".into()))
    );
    // The scrape's own span carries none of it.
    assert!(attr(&spans[0], "infertap.runtime.source").is_none());
}

#[test]
fn the_legs_of_a_disaggregated_request_meet_and_the_decode_leg_gets_the_transfer_gap() {
    let listener: SocketAddr = "10.0.0.1:8000".parse().unwrap();
    let mut p = pipeline(Scripted::default());
    p.target(TGID, [(3, listener)], "vllm");
    let prefill = r#"{"model":"m","prompt":"secret","max_tokens":1,"kv_transfer_params":{"do_remote_decode":true}}"#;
    let decode = r#"{"model":"m","prompt":"secret","max_tokens":9,"kv_transfer_params":{"do_remote_prefill":true,"remote_block_ids":[1]}}"#;
    let head =
        "POST /v1/completions HTTP/1.1\r\nx-request-id: pd-1\r\ncontent-type: application/json\r\n";
    let answer = http(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n",
        r#"{"id":"cmpl-1","choices":[{"text":"x","finish_reason":"length"}],"kv_transfer_params":{"remote_engine_id":"e"}}"#,
    );
    p.record(&open(1, 7, 3, 0, MS));
    p.record(&data(1, 7, false, 0, 2 * MS, &http(head, prefill)));
    p.record(&data(1, 7, true, 0, 10 * MS, &answer));
    p.record(&open(2, 8, 3, 0, 11 * MS));
    p.record(&data(2, 8, false, 0, 13 * MS, &http(head, decode)));
    p.record(&data(2, 8, true, 0, 40 * MS, &answer));
    let spans = p.output();
    assert_eq!(spans.len(), 2);
    let role = |s: &FinishedSpan| attr(s, "llm_d.pd.role").cloned();
    assert_eq!(role(&spans[0]), Some(AttrValue::Str("prefill".into())));
    assert_eq!(role(&spans[1]), Some(AttrValue::Str("decode".into())));
    assert_eq!(spans[0].trace_id, spans[1].trace_id, "one trace");
    match attr(&spans[1], "infertap.pd.kv_transfer_gap") {
        Some(AttrValue::F64(g)) => assert!((g - 0.003).abs() < 1e-12, "{g}"),
        other => panic!("{other:?}"),
    }
}
