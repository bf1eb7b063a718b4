//! HTTP/2 streams → decisions, gRPC calls and exchanges, from recorded and synthesized frames.

use super::*;
use crate::epp::{Decision, Outcome};
use crate::protocol::http2::tests::load;
use crate::protocol::http2::{Http2Conn, PREFACE};
use crate::protocol::Segment;

/// Replays chunks (each its own syscall, timestamps 1, 2, 3… ms) through a parser and the streams.
fn replay(chunks: &[(Direction, Vec<u8>)], from_start: bool) -> (Vec<Work>, H2Effects) {
    let mut p = Http2Conn::new(from_start);
    let mut streams = H2Streams::new();
    let mut done = Vec::new();
    let mut fx = H2Effects::default();
    for (i, (dir, bytes)) in chunks.iter().enumerate() {
        let seg = Segment {
            ts_ns: (i as u64 + 1) * 1_000_000,
            data: bytes,
            syscall_start: true,
        };
        p.feed(*dir, seg, &mut |ev| {
            let e = streams.on_event(*dir, ev, &mut done);
            fx.grpc_messages += e.grpc_messages;
            fx.parse_errors += e.parse_errors;
            fx.ext_proc_failures += e.ext_proc_failures;
        });
    }
    streams.close(u64::MAX / 2, false, &mut done);
    (done, fx)
}

fn decisions(done: &[Work]) -> Vec<&Decision> {
    done.iter()
        .filter_map(|d| match d {
            Work::Decision(d) => Some(d),
            _ => None,
        })
        .collect()
}

#[test]
fn recorded_ext_proc_streams_make_routing_decisions() {
    let chunks = load("ext_proc_routed.bin");
    let (done, fx) = replay(&chunks, true);
    assert_eq!(fx.parse_errors + fx.ext_proc_failures, 0);
    let ds = decisions(&done);
    assert_eq!(ds.len(), 2, "{done:#?}");
    for d in &ds {
        assert_eq!(d.outcome, Outcome::Routed);
        assert_eq!(d.endpoints.len(), 1);
        assert!(
            d.endpoints[0].starts_with("127.0.0.1:"),
            "{:?}",
            d.endpoints
        );
        assert_eq!(d.model.as_deref(), Some("standin-model"));
        assert!(d.header("x-request-id").unwrap().starts_with("fixture-"));
        assert_eq!(
            d.header("x-gateway-inference-objective"),
            Some("critical-chat")
        );
        assert_eq!(
            d.header("x-gateway-inference-fairness-id"),
            Some("tenant-a")
        );
        assert!(d.end_ns > d.start_ns);
        assert!(!d.incomplete);
    }
    let dump = format!("{done:?}");
    assert!(
        !dump.contains("fixture-secret-value"),
        "the authorization header leaked"
    );
    assert!(!dump.contains("canary-fixture-prompt"), "the prompt leaked");
    // No other stream kind came out of an ext_proc connection.
    assert_eq!(done.len(), 2);
}

#[test]
fn recorded_rejection_is_a_503_decision_with_the_traceparent() {
    let (done, _) = replay(&load("ext_proc_rejected.bin"), true);
    let ds = decisions(&done);
    assert_eq!(ds.len(), 1, "{done:#?}");
    assert_eq!(ds[0].outcome, Outcome::Rejected { status: 503 });
    assert!(ds[0].header("traceparent").unwrap().starts_with("00-"));
}

#[test]
fn every_split_of_every_chunk_gives_the_same_decisions() {
    for name in ["ext_proc_routed.bin", "ext_proc_rejected.bin"] {
        let chunks = load(name);
        let (whole, _) = replay(&chunks, true);
        let strip = |d: &[Work]| {
            decisions(d)
                .into_iter()
                .map(|d| {
                    (
                        d.endpoints.clone(),
                        d.headers.clone(),
                        d.model.clone(),
                        d.outcome.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let want = strip(&whole);
        for (i, (_, bytes)) in chunks.iter().enumerate() {
            for k in 1..bytes.len() {
                let mut split = chunks.clone();
                let (dir, b) = split.remove(i);
                split.insert(i, (dir, b[k..].to_vec()));
                split.insert(i, (dir, b[..k].to_vec()));
                let (got, _) = replay(&split, true);
                assert_eq!(strip(&got), want, "{name}: chunk {i} split at {k}");
            }
        }
    }
}

#[test]
fn picked_up_mid_connection_ext_proc_is_still_decoded_from_data() {
    // Drop everything before the second stream's request HEADERS (the first stream and the
    // HPACK context): the second stream's headers are unknown, its DATA still decodes.
    let chunks = load("ext_proc_routed.bin");
    let mut req_bytes = 0usize;
    let mut cut = None;
    for (i, (dir, b)) in chunks.iter().enumerate() {
        if *dir == Direction::Request {
            // The chunk holding the HEADERS of stream 3 starts with it (grpcio writes a new
            // stream's HEADERS at the start of a write).
            if b.len() >= 9 && b[3] == 1 && b[8] == 3 {
                cut = Some(i);
                break;
            }
            req_bytes += b.len();
        }
    }
    let cut = cut.expect("a syscall starting with stream 3's HEADERS");
    assert!(req_bytes > PREFACE.len());
    let (done, _) = replay(&chunks[cut..], false);
    let ds = decisions(&done);
    assert_eq!(ds.len(), 1, "{done:#?}");
    assert_eq!(ds[0].outcome, Outcome::Routed);
    assert_eq!(ds[0].model.as_deref(), Some("standin-model"));
    assert!(ds[0]
        .header("x-request-id")
        .unwrap()
        .starts_with("fixture-1-"));
}

/// Frames for synthesized connections.
fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn plain_http_over_h2_is_an_exchange_and_grpc_calls_end_at_trailers() {
    let mut req_enc = loona_hpack::Encoder::new();
    let mut resp_enc = loona_hpack::Encoder::new();
    let mut c = PREFACE.to_vec();
    let mut s = frame(4, 0, 0, &[]);
    // Stream 1: an OpenAI chat request over h2.
    c.extend(frame(
        1,
        4,
        1,
        &req_enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":path", b"/v1/chat/completions"),
            (b"content-type", b"application/json"),
            (b"x-request-id", b"h2-req"),
        ]),
    ));
    c.extend(frame(
        0,
        1,
        1,
        br#"{"messages":[],"model":"m1","stream":false}"#,
    ));
    s.extend(frame(
        1,
        4,
        1,
        &resp_enc.encode([
            (&b":status"[..], &b"200"[..]),
            (b"content-type", b"application/json"),
        ]),
    ));
    s.extend(frame(0, 1, 1, br#"{"id":"x","model":"m1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#));
    // Stream 3: a gRPC call whose response headers come long before its trailers.
    c.extend(frame(
        1,
        4,
        3,
        &req_enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":path", b"/pkg.Svc/Stream"),
            (b"content-type", b"application/grpc"),
        ]),
    ));
    c.extend(frame(0, 1, 3, &[0, 0, 0, 0, 2, 8, 1]));
    s.extend(frame(
        1,
        4,
        3,
        &resp_enc.encode([
            (&b":status"[..], &b"200"[..]),
            (b"content-type", b"application/grpc"),
        ]),
    ));
    s.extend(frame(0, 0, 3, &[0, 0, 0, 0, 1, 7, 0, 0, 0, 0, 1, 7]));
    s.extend(frame(
        1,
        5,
        3,
        &resp_enc.encode([(&b"grpc-status"[..], &b"14"[..])]),
    ));
    let chunks = vec![
        (Direction::Request, c[..PREFACE.len()].to_vec()),
        (Direction::Request, c[PREFACE.len()..].to_vec()),
        (Direction::Response, s[..s.len() - 20].to_vec()),
        (Direction::Response, s[s.len() - 20..].to_vec()),
    ];
    let (done, _) = replay(&chunks, true);
    assert_eq!(done.len(), 2, "{done:#?}");
    let Work::Exchange(ex) = &done[0] else {
        panic!("{:?}", done[0]);
    };
    assert_eq!(ex.request.method, "POST");
    assert_eq!(ex.request.path, "/v1/chat/completions");
    assert_eq!(ex.response.as_ref().map(|r| r.status), Some(200));
    assert_eq!(
        ex.request_fields.as_ref().and_then(|f| f.model.as_deref()),
        Some("m1")
    );
    assert_eq!(ex.usage.as_ref().and_then(|u| u.completion_tokens), Some(5));
    let Work::Call(call) = &done[1] else {
        panic!("{:?}", done[1]);
    };
    assert_eq!(
        (call.service.as_str(), call.method.as_str()),
        ("pkg.Svc", "Stream")
    );
    assert_eq!(call.grpc_status, Some(14));
    assert_eq!((call.request_messages, call.response_messages), (1, 2));
    assert_eq!(call.outcome, CallOutcome::Completed);
    // Ends at the trailers (the last chunk, 4 ms), not at the response headers (3 ms).
    assert_eq!(call.end_ns, 4_000_000);
}

#[test]
fn streams_are_bounded_and_reset_streams_end() {
    let mut enc = loona_hpack::Encoder::new();
    let mut c = PREFACE.to_vec();
    for i in 0..(MAX_STREAMS as u32 + 10) {
        c.extend(frame(
            1,
            4,
            2 * i + 1,
            &enc.encode([(&b":method"[..], &b"GET"[..]), (b":path", b"/health")]),
        ));
    }
    let mut p = Http2Conn::new(true);
    let mut streams = H2Streams::new();
    let mut done = Vec::new();
    let mut shed = 0;
    p.feed(
        Direction::Request,
        Segment {
            ts_ns: 1,
            data: &c,
            syscall_start: true,
        },
        &mut |ev| {
            shed += streams
                .on_event(Direction::Request, ev, &mut done)
                .streams_shed
        },
    );
    assert_eq!(streams.len(), MAX_STREAMS);
    assert_eq!(shed, 10);
    // The client resets stream 1: a cancelled exchange.
    let rst = frame(3, 0, 1, &[0, 0, 0, 8]);
    p.feed(
        Direction::Request,
        Segment {
            ts_ns: 2,
            data: &rst,
            syscall_start: true,
        },
        &mut |ev| {
            streams.on_event(Direction::Request, ev, &mut done);
        },
    );
    assert_eq!(streams.len(), MAX_STREAMS - 1);
    let Work::Exchange(ex) = &done[0] else {
        panic!()
    };
    assert!(matches!(
        ex.outcome,
        crate::exchange::Outcome::Cancelled { .. }
    ));
}

#[test]
fn a_loss_in_the_servers_writes_costs_only_what_was_lost() {
    // grpc-core writes its first answer on a connection as one sendmsg of 10-11 iovecs; the
    // kernel side copies 8, so the tail (the DATA frame answering the request headers) is lost.
    // The decision, written later, must still be read.
    let chunks = load("ext_proc_routed.bin");
    let (i, at) = chunks
        .iter()
        .enumerate()
        .filter(|(_, (d, _))| *d == Direction::Response)
        .find_map(|(i, (_, b))| {
            // The first response chunk holding a DATA frame of stream 1.
            let mut at = 0;
            while at + 9 <= b.len() {
                if b[at + 3] == 0 && b[at + 8] == 1 {
                    return Some((i, at));
                }
                at += 9 + u32::from_be_bytes([0, b[at], b[at + 1], b[at + 2]]) as usize;
            }
            None
        })
        .expect("a response chunk with stream 1's DATA");
    let mut p = Http2Conn::new(true);
    let mut streams = H2Streams::new();
    let mut done = Vec::new();
    for (j, (dir, bytes)) in chunks.iter().enumerate() {
        let data: &[u8] = if j == i { &bytes[..at] } else { bytes };
        let seg = Segment {
            ts_ns: (j as u64 + 1) * 1_000_000,
            data,
            syscall_start: true,
        };
        p.feed(*dir, seg, &mut |ev| {
            streams.on_event(*dir, ev, &mut done);
        });
        if j == i {
            p.gap(*dir, (bytes.len() - at) as u64, &mut |ev| {
                streams.on_event(*dir, ev, &mut done);
            });
        }
    }
    let ds = decisions(&done);
    assert_eq!(ds.len(), 2, "{done:#?}");
    assert!(ds.iter().all(|d| d.outcome == Outcome::Routed));
    assert_eq!(
        ds[0].model.as_deref(),
        Some("standin-model"),
        "the request side was intact"
    );
    assert!(ds[0].incomplete, "the lost answer is reported");
    assert!(!ds[1].incomplete);
}

#[test]
fn grpc_messages_are_held_whole_only_for_ext_proc() {
    let mut enc = loona_hpack::Encoder::new();
    let mut p = Http2Conn::new(true);
    let mut streams = H2Streams::new();
    let mut done = Vec::new();
    let mut feed = |p: &mut Http2Conn, streams: &mut H2Streams, dir, bytes: &[u8]| {
        let mut fx = H2Effects::default();
        p.feed(
            dir,
            Segment {
                ts_ns: 1_000_000,
                data: bytes,
                syscall_start: true,
            },
            &mut |ev| fx.add(&streams.on_event(dir, ev, &mut done)),
        );
        fx
    };
    let mut c = PREFACE.to_vec();
    c.extend(frame(4, 0, 0, &[]));
    for (id, path) in [
        (1u32, &b"/pkg.Svc/Upload"[..]),
        (3, ext_proc::PROCESS_PATH.as_bytes()),
    ] {
        c.extend(frame(
            1,
            4,
            id,
            &enc.encode([
                (&b":method"[..], &b"POST"[..]),
                (b":path", path),
                (b"content-type", b"application/grpc"),
            ]),
        ));
    }
    feed(&mut p, &mut streams, Direction::Request, &c);
    // A 3 MiB message on each stream, its first 1 MiB so far.
    let len = 3u32 << 20;
    let mut most = 0;
    for id in [1u32, 3] {
        let mut first = vec![0u8];
        first.extend_from_slice(&len.to_be_bytes());
        first.resize(5 + (1 << 20), 9);
        for piece in first.chunks(16_000) {
            feed(
                &mut p,
                &mut streams,
                Direction::Request,
                &frame(0, 0, id, piece),
            );
            if id == 1 {
                most = most.max(streams.buffered());
            }
        }
    }
    assert_eq!(
        most, 0,
        "a plain gRPC stream is followed by its framing only"
    );
    assert_eq!(streams.buffered(), 1 << 20, "the ext_proc message is held");
    streams.shed_buffers();
    assert_eq!(streams.buffered(), 0);
    assert_eq!(streams.len(), 2, "the streams are still followed");
}
