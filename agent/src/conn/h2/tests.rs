//! The connection table's HTTP/2 path: detection from the first bytes (either side first), a
//! recorded ext_proc connection delivered as kernel records (whole and cut at every offset), the
//! decisions leaving by the same route as exchanges (`Finished`), and HTTP/1.1 still going the HTTP/1.1 way.

use std::sync::atomic::Ordering::Relaxed;

use crate::capture::decode::{Role, SocketDir};
use crate::conn::tests::record;
use crate::conn::{ConnId, ConnTable, Finished, Origin};
use crate::epp::Outcome;
use crate::exchange::Work;
use crate::protocol::Direction;
use crate::stats::Stats;

const MS: u64 = 1_000_000;

/// A recorded connection as the traced server's socket sees it: the client's bytes are ingress.
fn load(name: &str) -> Vec<(SocketDir, Vec<u8>)> {
    crate::protocol::http2::tests::load(name)
        .into_iter()
        .map(|(dir, bytes)| match dir {
            Direction::Request => (SocketDir::Ingress, bytes),
            Direction::Response => (SocketDir::Egress, bytes),
        })
        .collect()
}

/// A recording replayed, one syscall per chunk; with `cut = Some((i, k))`, chunk `i` arrives in
/// two syscalls split at byte `k`.
fn replay(chunks: &[(SocketDir, Vec<u8>)], cut: Option<(usize, usize)>) -> Wire {
    let mut w = Wire::new(Origin::Start);
    for (j, (dir, b)) in chunks.iter().enumerate() {
        match cut {
            Some((i, k)) if i == j => {
                w.syscall(*dir, j as u64 + 1, &b[..k]);
                w.syscall(*dir, j as u64 + 1, &b[k..]);
            }
            _ => w.syscall(*dir, j as u64 + 1, b),
        }
    }
    w
}

/// Every place a recording's chunks can be cut. A first client read of fewer than 4 bytes ("P",
/// "PR", "PRI") is not taken for a preface ("POST", "PUT" and "PATCH" start the same way): a
/// documented limit, not cut at.
fn cuts(chunks: &[(SocketDir, Vec<u8>)]) -> impl Iterator<Item = (usize, usize)> + '_ {
    chunks.iter().enumerate().flat_map(|(i, (_, bytes))| {
        let from = if i == 0 { 4 } else { 1 };
        (from..bytes.len()).map(move |k| (i, k))
    })
}

struct Wire {
    table: ConnTable,
    stats: Stats,
    out: Vec<Finished>,
    pos: [u64; 2],
}

impl Wire {
    fn new(origin: Origin) -> Wire {
        let stats = Stats::default();
        let mut table = ConnTable::new(16, 60_000 * MS);
        table.open(
            ConnId {
                tgid: 7,
                conn_id: 1,
            },
            5,
            Role::Server,
            Some("127.0.0.1:9002".parse().unwrap()),
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
        }
    }

    fn syscall(&mut self, dir: SocketDir, ts_ms: u64, data: &[u8]) {
        let d = dir as usize;
        let at = self.pos[d];
        let chunk = record(dir, ts_ms, at, (at, data.len() as u64), true, data);
        self.table.data(&chunk, &self.stats, &mut self.out);
        self.pos[d] += data.len() as u64;
    }

    fn decisions(&mut self) -> Vec<crate::epp::Decision> {
        let (decisions, rest) = std::mem::take(&mut self.out)
            .into_iter()
            .partition::<Vec<_>, _>(|f| matches!(f.work, Work::Decision(_)));
        self.out = rest;
        decisions
            .into_iter()
            .filter_map(|f| match f.work {
                Work::Decision(d) => Some(d),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_recorded_ext_proc_connection_becomes_routing_decisions() {
    let mut w = replay(&load("ext_proc_routed.bin"), None);
    let ds = w.decisions();
    assert_eq!(ds.len(), 2);
    assert!(ds.iter().all(|d| d.outcome == Outcome::Routed));
    assert_eq!(w.stats.http2_connections.load(Relaxed), 1);
    assert_eq!(w.stats.streams_not_http.load(Relaxed), 0);
    assert_eq!(w.stats.http2_frame_errors.load(Relaxed), 0);
    assert!(w.stats.grpc_messages.load(Relaxed) >= 8);
    assert!(
        w.out.is_empty(),
        "no HTTP exchange on an ext_proc connection"
    );
}

#[test]
fn cut_at_every_offset_the_decisions_are_the_same() {
    let chunks = load("ext_proc_rejected.bin");
    let decided = |mut w: Wire| -> Vec<_> {
        w.decisions()
            .into_iter()
            .map(|d| (d.outcome, d.headers))
            .collect()
    };
    let want = decided(replay(&chunks, None));
    assert_eq!(want.len(), 1);
    for (i, k) in cuts(&chunks) {
        let got = decided(replay(&chunks, Some((i, k))));
        assert_eq!(got, want, "chunk {i} cut at {k}");
    }
}

#[test]
fn the_server_settings_first_also_means_http2() {
    let chunks = load("ext_proc_routed.bin");
    let first_server = chunks
        .iter()
        .position(|(d, _)| *d == SocketDir::Egress)
        .unwrap();
    let mut w = Wire::new(Origin::Start);
    // The server's SETTINGS reach the agent before the client's preface.
    let (d, b) = &chunks[first_server];
    w.syscall(*d, 1, b);
    for (i, (dir, b)) in chunks.iter().enumerate() {
        if i != first_server {
            w.syscall(*dir, i as u64 + 2, b);
        }
    }
    assert_eq!(w.decisions().len(), 2);
}

#[test]
fn http1_is_untouched_and_a_preface_to_an_http1_server_is_counted() {
    let mut w = Wire::new(Origin::Start);
    w.syscall(
        SocketDir::Ingress,
        1,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    w.syscall(
        SocketDir::Egress,
        2,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(w.out.len(), 1);
    assert_eq!(w.stats.http2_connections.load(Relaxed), 0);
    // The badclient case: a preface and SETTINGS to a server that answers in HTTP/1.1.
    let mut w = Wire::new(Origin::Start);
    w.syscall(
        SocketDir::Ingress,
        1,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    );
    w.syscall(SocketDir::Egress, 2, b"HTTP/1.1 400 Bad Request\r\n\r\n");
    assert_eq!(w.stats.http2_connections.load(Relaxed), 1);
    assert_eq!(w.stats.http2_frame_errors.load(Relaxed), 1);
    assert!(w.out.is_empty() && w.decisions().is_empty());
}

#[test]
fn picked_up_mid_stream_frames_go_the_http2_way() {
    let chunks = load("ext_proc_routed.bin");
    let cut = chunks
        .iter()
        .position(|(d, b)| *d == SocketDir::Ingress && b.len() >= 9 && b[3] == 1 && b[8] == 3)
        .unwrap();
    let mut mid = Wire::new(Origin::MidStream);
    // Positions as the kernel numbers them: the bytes before `cut` were never seen.
    for (dir, b) in &chunks[..cut] {
        mid.pos[*dir as usize] += b.len() as u64;
    }
    for (i, (dir, b)) in chunks[cut..].iter().enumerate() {
        mid.syscall(*dir, i as u64 + 1, b);
    }
    let ds = mid.decisions();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].model.as_deref(), Some("standin-model"));
    assert_eq!(mid.stats.http2_connections.load(Relaxed), 1);
}

/// A recorded connection (Envoy stand-in ↔ EPP stand-in, real grpcio) whose streams carry the
/// response phase: the decisions, replayed whole.
fn outcome_decisions(name: &str) -> Vec<crate::epp::Decision> {
    let mut w = replay(&load(name), None);
    assert_eq!(w.stats.http2_frame_errors.load(Relaxed), 0);
    w.decisions()
}

#[test]
fn recorded_response_phases_give_each_decision_its_outcome() {
    // Two streamed chats (vLLM stand-in, include_usage, 3 cached prompt tokens asked for).
    let ds = outcome_decisions("ext_proc_outcome_sse.bin");
    assert_eq!(ds.len(), 2);
    for d in &ds {
        assert_eq!(d.outcome, Outcome::Routed);
        let o = d.served.as_deref().expect("the response phase flowed");
        assert_eq!(o.status, Some(200));
        assert!(o.streaming && o.complete, "{o:?}");
        let u = o.usage.as_ref().unwrap();
        assert_eq!(u.cached_tokens, Some(3));
        assert_eq!(u.completion_tokens, Some(4));
        assert!(u.prompt_tokens.unwrap() > 3);
        // Response headers after the decision, the first token after them.
        let (h, t) = (o.headers_ns.unwrap(), o.first_token_ns.unwrap());
        assert!(d.end_ns < h && h < t && t <= o.end_ns, "{d:?}");
        let dump = format!("{d:?}");
        assert!(
            !dump.contains("canary") && !dump.contains("secret"),
            "{dump}"
        );
    }
    // A whole JSON body.
    let ds = outcome_decisions("ext_proc_outcome_json.bin");
    assert_eq!(ds.len(), 1);
    let o = ds[0].served.as_deref().unwrap();
    assert_eq!(
        (o.status, o.streaming, o.complete),
        (Some(200), false, true)
    );
    assert_eq!(o.usage.as_ref().unwrap().completion_tokens, Some(4));
}

#[test]
fn cut_at_every_offset_the_outcomes_are_the_same() {
    for name in ["ext_proc_outcome_sse.bin", "ext_proc_outcome_json.bin"] {
        let want = outcome_decisions(name);
        let chunks = load(name);
        for (i, k) in cuts(&chunks) {
            let mut w = replay(&chunks, Some((i, k)));
            assert_eq!(w.decisions(), want, "{name}: chunk {i} cut at {k}");
        }
    }
}

/// A client's first bytes: the preface, SETTINGS, and a request whose header block grows its
/// HPACK table to 64 KiB and puts a 40 KB entry in it.
fn large_table_request() -> Vec<u8> {
    use crate::protocol::http2::hostile::{frame, indexing_block, request_with_block};
    use crate::protocol::http2::{MAX_HPACK_TABLE, PREFACE};
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(4, 0, 0, &[]));
    let big = vec![b'v'; 40_000];
    bytes.extend(request_with_block(
        1,
        &indexing_block(Some(MAX_HPACK_TABLE), &[(b"x-big", &big)]),
    ));
    bytes
}

const LARGE_TABLE: usize = 5 + 40_000 + 32;

#[test]
fn hpack_tables_are_charged_and_a_connection_over_its_budget_is_shed() {
    let mut w = Wire::new(Origin::Start);
    w.table.set_budget(crate::conn::BufferBudget {
        per_conn: 64 << 10,
        total: 1 << 30,
    });
    w.syscall(SocketDir::Ingress, 1, &large_table_request());
    assert_eq!(w.table.buffered(), LARGE_TABLE, "the table is charged");
    assert_eq!(w.stats.buffer_sheds_connection.load(Relaxed), 0);

    // Under a bound the table alone exceeds: shed (counted), its tables forgotten.
    let mut w = Wire::new(Origin::Start);
    w.table.set_budget(crate::conn::BufferBudget {
        per_conn: 32 << 10,
        total: 1 << 30,
    });
    w.syscall(SocketDir::Ingress, 1, &large_table_request());
    assert_eq!(w.stats.buffer_sheds_connection.load(Relaxed), 1);
    assert_eq!(w.table.buffered(), 0);
}

#[test]
fn over_the_global_budget_the_connection_with_the_larger_tables_is_shed() {
    let mut w = Wire::new(Origin::Start);
    w.table.set_budget(crate::conn::BufferBudget {
        per_conn: 1 << 20,
        total: 40 << 10,
    });
    w.table.open(
        ConnId {
            tgid: 7,
            conn_id: 2,
        },
        6,
        Role::Server,
        Some("127.0.0.1:9002".parse().unwrap()),
        Some("127.0.0.1:40001".parse().unwrap()),
        Origin::Start,
        0,
        &w.stats,
    );
    // Connection 2: a small table (one 1 KB entry).
    let mut small = crate::protocol::http2::PREFACE.to_vec();
    small.extend(crate::protocol::http2::hostile::request_with_block(
        1,
        &crate::protocol::http2::hostile::indexing_block(None, &[(b"x-s", &[b's'; 1000])]),
    ));
    let chunk = record(
        SocketDir::Ingress,
        1,
        0,
        (0, small.len() as u64),
        true,
        &small,
    );
    let chunk = crate::capture::decode::DataChunk {
        conn_id: 2,
        ..chunk
    };
    w.table.data(&chunk, &w.stats, &mut w.out);
    let small_table = 3 + 1000 + 32;
    assert_eq!(w.table.buffered(), small_table);
    // Connection 1's large table takes all of them past the total: connection 1 is shed, 2 keeps
    // its table.
    w.syscall(SocketDir::Ingress, 2, &large_table_request());
    assert_eq!(w.stats.buffer_sheds_global.load(Relaxed), 1);
    assert_eq!(w.stats.buffer_sheds_connection.load(Relaxed), 0);
    assert_eq!(w.table.buffered(), small_table);
}
