//! Ring-buffer records, as the pipeline takes them: `capture::decode` on any bytes, then valid
//! records built from the input (any field values: positions, lengths, flags, roles, addresses)
//! fed to the agent's own `Pipeline` (decoding, the connection table, every protocol, span
//! building; a `Detached` node: descriptors unknown, the clock set from the records). Checks beyond "no panic": a record built from fields decodes back to those
//! fields; a data record never carries more payload than its header declares.

use std::sync::Arc;

use infertap::capture::decode::{decode, Record, Role};
use infertap::conn::BufferBudget;
use infertap::enrich::Enrichers;
use infertap::pipeline::{Detached, ExistingSocket, Pipeline, Settings};
use infertap::stats::Stats;
use infertap::trace::build::BuildOptions;
use infertap::trace::span::FinishedSpan;
use infertap_common::*;

fn bytes_of<T>(v: &T) -> Vec<u8> {
    // SAFETY: a view of a repr(C), integer-only ABI struct (no padding: sizes are asserted in
    // infertap-common).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
        .to_vec()
}

/// Takes `N` bytes (zero-padded when the input runs out).
fn take<const N: usize>(input: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(input.len());
    out[..n].copy_from_slice(&input[..n]);
    *input = &input[n..];
    out
}

fn u64_from(input: &mut &[u8]) -> u64 {
    u64::from_le_bytes(take::<8>(input))
}

fn u32_from(input: &mut &[u8]) -> u32 {
    u32::from_le_bytes(take::<4>(input))
}

/// The fuzz target's entry point (also replayed on `fuzz/regressions/` by `cargo test`).
pub fn run(data: &[u8]) {
    // The decoder alone, on the raw input and on every suffix of its first bytes.
    for start in 0..data.len().min(64) {
        let _ = decode(&data[start..]);
    }

    let settings = Settings {
        max_connections: 8,
        idle_timeout_ns: 1_000_000_000,
        // Small, so that inputs reach the buffer budget's shedding.
        buffer_budget: BufferBudget {
            per_conn: 16 << 10,
            total: 48 << 10,
        },
        build: BuildOptions::default(),
    };
    let mut pipeline = Pipeline::new(
        settings,
        Arc::new(Stats::default()),
        Enrichers::default(),
        Detached::default(),
        Vec::<FinishedSpan>::new(),
    );
    // Every process has a listening socket (fd 3) for accepted connections to name.
    for tgid in 1..=4 {
        pipeline.target(tgid, [(3, "127.0.0.1:8000".parse().unwrap())], "vllm");
    }
    let mut input = data;
    let mut ts = 0u64;
    while let [op, rest @ ..] = input {
        input = rest;
        ts += u64::from(*op >> 4);
        // Few processes and connections, so that records meet on the same connection.
        let tgid = u32::from(op >> 6) + 1;
        let conn_id = u64::from((op >> 4) & 3);
        let header = |kind| RecordHeader {
            kind,
            tgid,
            ts_ns: ts,
        };
        let raw = match op & 3 {
            0 => {
                let len = usize::from(take::<1>(&mut input)[0]) * 7;
                let payload_len = len.min(input.len());
                let rec = DataRecord {
                    header: header(RECORD_DATA),
                    conn_id,
                    stream_pos: u64_from(&mut input) % 4096,
                    syscall_pos: u64_from(&mut input) % 4096,
                    syscall_len: u64_from(&mut input) % 8192,
                    fd: 5,
                    tid: tgid,
                    len: payload_len as u32,
                    flags: u32_from(&mut input),
                };
                let payload_len = payload_len.min(input.len());
                let mut raw = bytes_of(&DataRecord {
                    len: payload_len as u32,
                    ..rec
                });
                raw.extend_from_slice(&input[..payload_len]);
                input = &input[payload_len..];
                // The ring pads records to 8 bytes.
                raw.resize(raw.len().next_multiple_of(8), 0);
                raw
            }
            1 => bytes_of(&ConnOpenRecord {
                header: header(RECORD_CONN_OPEN),
                conn_id,
                fd: 5,
                listen_fd: u32_from(&mut input),
                role: u32_from(&mut input) % 4,
                flags: u32_from(&mut input),
                addr: {
                    let mut a = [0u8; 32];
                    a[..2].copy_from_slice(&(if op & 8 == 0 { 2u16 } else { 10u16 }).to_ne_bytes());
                    a[2..24].copy_from_slice(&take::<22>(&mut input));
                    a
                },
            }),
            2 => bytes_of(&ConnCloseRecord {
                header: header(RECORD_CONN_CLOSE),
                conn_id,
                fd: 5,
                flags: u32_from(&mut input) & CONN_FLAG_LOST,
                rx_pos: u64_from(&mut input) % 4096,
                tx_pos: u64_from(&mut input) % 4096,
            }),
            // A socket found already open by the targeting thread: taken mid-stream.
            _ if op & 8 != 0 => {
                let role = if op & 4 == 0 {
                    Role::Server
                } else {
                    Role::Client
                };
                let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
                let local = std::net::SocketAddr::from(([127, 0, 0, 1], 8000));
                pipeline.existing(ExistingSocket {
                    pid: tgid,
                    fd: 5,
                    conn_id,
                    role,
                    local,
                    peer,
                });
                continue;
            }
            _ => bytes_of(&ProcExitRecord {
                header: header(RECORD_PROC_EXIT),
            }),
        };
        let rec = decode(&raw).expect("a record built from its fields decodes");
        match rec {
            Record::Data(chunk) => {
                assert_eq!(chunk.tgid, tgid);
                assert_eq!(chunk.conn_id, conn_id);
                assert!(chunk.payload.len() + std::mem::size_of::<DataRecord>() <= raw.len());
            }
            Record::Open { ts_ns, .. } => assert_eq!(ts_ns, ts),
            Record::Close { .. }
            | Record::ProcExit { .. }
            | Record::FdsForgotten { .. }
            | Record::ProcExec { .. }
            | Record::ProcListen { .. } => {}
        }
        // As the agent applies it.
        pipeline.node_mut().now_ns = ts;
        pipeline.record(&raw);
        if ts.is_multiple_of(16) {
            pipeline.tick();
        }
        pipeline.output_mut().clear();
    }
    pipeline.gone(1);
    pipeline.flush();
}
