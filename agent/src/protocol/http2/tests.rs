//! Framing and HPACK over recorded bytes (a real grpcio client and server: the ext_proc stand-ins,
//! recorded by `envoy_standin.py --record`), whole, split at every offset, picked up mid-stream,
//! and with garbage.

use super::*;

/// A recorded connection: `(direction, bytes)` chunks in time order (`C`: client → server).
pub(crate) fn load(name: &str) -> Vec<(Direction, Vec<u8>)> {
    let path = format!("{}/tests/fixtures/http2/{name}", env!("CARGO_MANIFEST_DIR"));
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= raw.len() {
        let dir = if raw[at] == b'C' {
            Direction::Request
        } else {
            Direction::Response
        };
        let len = u32::from_be_bytes([raw[at + 1], raw[at + 2], raw[at + 3], raw[at + 4]]) as usize;
        out.push((dir, raw[at + 5..at + 5 + len].to_vec()));
        at += 5 + len;
    }
    assert_eq!(at, raw.len(), "{name}: truncated fixture");
    out
}

/// All bytes of one direction.
fn direction(chunks: &[(Direction, Vec<u8>)], dir: Direction) -> Vec<u8> {
    chunks
        .iter()
        .filter(|(d, _)| *d == dir)
        .flat_map(|(_, b)| b.iter().copied())
        .collect()
}

/// Events rendered as lines, consecutive DATA of a stream joined (how DATA is cut depends on the
/// segments, not on the stream).
pub(crate) fn render(events: &mut Vec<String>, ev: H2Event<'_>) {
    let line = match ev {
        H2Event::Data { stream, data, .. } => {
            let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
            let prefix = format!("data {stream} ");
            if let Some(last) = events.last_mut() {
                if last.starts_with(&prefix) {
                    last.push_str(&hex);
                    return;
                }
            }
            format!("{prefix}{hex}")
        }
        H2Event::Headers {
            stream,
            fields,
            end_stream,
            ..
        } => format!("headers {stream} end={end_stream} {fields:?}"),
        H2Event::EndStream { stream, .. } => format!("end {stream}"),
        H2Event::Reset { stream, code, .. } => format!("reset {stream} {code}"),
        H2Event::GoAway {
            last_stream, code, ..
        } => format!("goaway {last_stream} {code}"),
        H2Event::DataGap { stream, len } => format!("gap {stream} {len}"),
        H2Event::Lost => "lost".into(),
        H2Event::Error(k) => format!("error {}", k.as_str()),
        H2Event::Abuse(k) => format!("abuse {}", k.as_str()),
    };
    events.push(line);
}

fn run(dir: Direction, from_start: bool, pieces: &[&[u8]]) -> Vec<String> {
    let mut p = Http2Conn::new(from_start);
    let mut events = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        p.feed(
            dir,
            Segment {
                ts_ns: i as u64,
                data: piece,
                syscall_start: i == 0,
            },
            &mut |ev| render(&mut events, ev),
        );
    }
    events
}

#[test]
fn recorded_ext_proc_connection_frames_and_headers() {
    let chunks = load("ext_proc_routed.bin");
    let req = run(
        Direction::Request,
        true,
        &[&direction(&chunks, Direction::Request)],
    );
    let resp = run(
        Direction::Response,
        true,
        &[&direction(&chunks, Direction::Response)],
    );
    let headers: Vec<&String> = req.iter().filter(|l| l.starts_with("headers")).collect();
    // Two ext_proc streams, both with their path decoded: the second one's HEADERS refer to the
    // dynamic table entries the first one added (grpcio indexes :path and content-type).
    assert_eq!(headers.len(), 2, "{req:#?}");
    for h in &headers {
        assert!(h.contains("known: true"), "{h}");
        assert!(
            h.contains("/envoy.service.ext_proc.v3.ExternalProcessor/Process"),
            "{h}"
        );
        assert!(h.contains("application/grpc"), "{h}");
    }
    assert!(headers[0].starts_with("headers 1 ") && headers[1].starts_with("headers 3 "));
    assert!(req.iter().any(|l| l == "end 1") && req.iter().any(|l| l == "end 3"));
    // The server's trailers (grpc-status 0) end each stream.
    let trailers: Vec<&String> = resp
        .iter()
        .filter(|l| l.contains("grpc_status: Some(0)"))
        .collect();
    assert_eq!(trailers.len(), 2, "{resp:#?}");
    assert!(trailers.iter().all(|l| l.contains("end=true")));
    assert!(!req
        .iter()
        .chain(&resp)
        .any(|l| l.starts_with("error") || l == "lost"));
    // Nothing that is not allow-listed was copied: the `authorization` secret and the prompt are
    // inside DATA (protobuf), never in a header field.
    assert!(!format!("{req:?}{resp:?}").contains("authorization"));
}

#[test]
fn every_split_offset_gives_the_same_events() {
    for name in ["ext_proc_routed.bin", "ext_proc_rejected.bin"] {
        let chunks = load(name);
        for dir in [Direction::Request, Direction::Response] {
            let bytes = direction(&chunks, dir);
            let whole = run(dir, true, &[&bytes]);
            for k in 0..=bytes.len() {
                let split = run(dir, true, &[&bytes[..k], &bytes[k..]]);
                assert_eq!(split, whole, "{name} {dir:?} split at {k}");
            }
            // Byte by byte.
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(
                run(dir, true, &singles),
                whole,
                "{name} {dir:?} one byte at a time"
            );
        }
    }
}

/// Offsets of frame starts in one direction's bytes (after the preface on the request side).
fn frame_starts(bytes: &[u8], preface: bool) -> Vec<usize> {
    let mut at = if preface { PREFACE.len() } else { 0 };
    let mut out = Vec::new();
    while at + 9 <= bytes.len() {
        out.push(at);
        at += 9 + u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
    }
    out
}

#[test]
fn picked_up_mid_stream_headers_are_unknown_but_data_is_read() {
    let chunks = load("ext_proc_routed.bin");
    let bytes = direction(&chunks, Direction::Request);
    let whole = run(Direction::Request, true, &[&bytes]);
    // Attach at the second stream's HEADERS frame.
    let starts = frame_starts(&bytes, true);
    let second = *starts
        .iter()
        .find(|&&at| bytes[at + 3] == HEADERS && bytes[at + 8] == 3)
        .expect("a HEADERS frame of stream 3");
    let mid = run(Direction::Request, false, &[&bytes[second..]]);
    let h = mid.iter().find(|l| l.starts_with("headers 3")).unwrap();
    assert!(h.contains("known: false") && !h.contains("Process"), "{h}");
    // The same DATA as when seen from the start.
    let data = |evs: &[String]| {
        evs.iter()
            .filter(|l| l.starts_with("data 3 "))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(!data(&mid).is_empty());
    assert_eq!(data(&mid), data(&whole));
    // Not at a frame start: nothing until a syscall boundary where frames start.
    let off = run(Direction::Request, false, &[&bytes[second + 3..]]);
    assert!(off.is_empty(), "{off:?}");
}

#[test]
fn hpack_with_and_without_the_connection_start() {
    // Encode two requests with one encoder: the second's fields are indexed in the dynamic table.
    let mut enc = loona_hpack::Encoder::new();
    let fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":path", b"/v1/chat/completions?x=1"),
        (b"x-gateway-inference-objective", b"premium"),
        (b"authorization", b"Bearer top-secret"),
    ];
    let first = enc.encode(fields.iter().copied());
    let second = enc.encode(fields.iter().copied());
    assert!(
        second.len() < first.len(),
        "the second block uses the dynamic table"
    );
    let frame = |stream: u8, block: &[u8]| {
        let mut f = vec![
            0,
            0,
            block.len() as u8,
            HEADERS,
            END_HEADERS | END_STREAM,
            0,
            0,
            0,
            stream,
        ];
        f.extend_from_slice(block);
        f
    };
    let mut from_start = PREFACE.to_vec();
    from_start.extend(frame(1, &first));
    from_start.extend(frame(3, &second));
    let evs = run(Direction::Request, true, &[&from_start]);
    assert_eq!(evs.len(), 2, "{evs:?}");
    for e in &evs {
        assert!(e.contains("path: Some(\"/v1/chat/completions\")"), "{e}");
        assert!(
            e.contains("x-gateway-inference-objective\", \"premium\""),
            "{e}"
        );
        assert!(
            !e.contains("top-secret") && !e.contains("authorization"),
            "{e}"
        );
    }
    // Only the second block, without the first: its table is unknown.
    let mid = run(Direction::Request, false, &[&frame(3, &second)]);
    assert_eq!(mid.len(), 1);
    assert!(mid[0].contains("known: false") && !mid[0].contains("premium"));
    // A block that refers to an entry that does not exist (decoder from the start): an HPACK
    // error, counted, and the direction's later blocks are unknown.
    let mut bad = PREFACE.to_vec();
    bad.extend(frame(1, &[0xbe])); // indexed field 62: dynamic table empty
    bad.extend(frame(3, &first));
    let evs = run(Direction::Request, true, &[&bad]);
    assert_eq!(evs[0], "error hpack");
    assert!(
        evs[1].contains("known: false") && evs[2].contains("known: false"),
        "{evs:?}"
    );
}

#[test]
fn padding_continuation_and_control_frames() {
    let mut enc = loona_hpack::Encoder::new();
    let block = enc.encode([
        (&b":status"[..], &b"200"[..]),
        (b"content-type", b"application/grpc"),
    ]);
    let (a, b) = block.split_at(block.len() / 2);
    let mut s = Vec::new();
    // HEADERS (padded, with priority, no END_HEADERS) + CONTINUATION.
    let mut p = vec![3u8]; // pad length
    p.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
    p.extend_from_slice(a);
    p.extend_from_slice(&[0, 0, 0]);
    s.extend_from_slice(&[
        0,
        0,
        p.len() as u8,
        HEADERS,
        PADDED | PRIORITY_FLAG,
        0,
        0,
        0,
        1,
    ]);
    s.extend(p);
    s.extend_from_slice(&[0, 0, b.len() as u8, CONTINUATION, END_HEADERS, 0, 0, 0, 1]);
    s.extend_from_slice(b);
    // PING, WINDOW_UPDATE, SETTINGS, PRIORITY, an unknown extension frame.
    s.extend_from_slice(&[0, 0, 8, PING, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    s.extend_from_slice(&[0, 0, 4, WINDOW_UPDATE, 0, 0, 0, 0, 1, 0, 0, 0x10, 0]);
    s.extend_from_slice(&[0, 0, 6, SETTINGS, 0, 0, 0, 0, 0, 0, 4, 0, 1, 0, 0]);
    s.extend_from_slice(&[0, 0, 5, PRIORITY, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
    s.extend_from_slice(&[0, 0, 2, 0x42, 0, 0, 0, 0, 0, 9, 9]);
    // DATA, padded, END_STREAM: "hi" then 4 bytes of padding.
    s.extend_from_slice(&[
        0,
        0,
        7,
        DATA,
        PADDED | END_STREAM,
        0,
        0,
        0,
        1,
        4,
        b'h',
        b'i',
        0,
        0,
        0,
        0,
    ]);
    // RST_STREAM and GOAWAY.
    s.extend_from_slice(&[0, 0, 4, RST_STREAM, 0, 0, 0, 0, 5, 0, 0, 0, 8]);
    s.extend_from_slice(&[0, 0, 8, GOAWAY, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0]);
    let whole = run(Direction::Response, true, &[&s]);
    assert_eq!(whole.len(), 5, "{whole:#?}");
    assert!(whole[0].starts_with("headers 1 end=false") && whole[0].contains("status: Some(200)"));
    assert_eq!(whole[1], "data 1 6869");
    assert_eq!(whole[2], "end 1");
    assert_eq!(whole[3], "reset 5 8");
    assert_eq!(whole[4], "goaway 5 0");
    for k in 0..=s.len() {
        assert_eq!(
            run(Direction::Response, true, &[&s[..k], &s[k..]]),
            whole,
            "split {k}"
        );
    }
}

#[test]
fn garbage_is_counted_and_framing_resumes_at_a_syscall_boundary() {
    let chunks = load("ext_proc_routed.bin");
    let resp = direction(&chunks, Direction::Response);
    let starts = frame_starts(&resp, false);
    // An HTTP/1.1 answer where frames were expected (a server that does not speak HTTP/2).
    let mut p = Http2Conn::new(true);
    let mut events = Vec::new();
    let feed = |p: &mut Http2Conn, data: &[u8], syscall_start: bool, events: &mut Vec<String>| {
        p.feed(
            Direction::Response,
            Segment {
                ts_ns: 0,
                data,
                syscall_start,
            },
            &mut |ev| render(events, ev),
        )
    };
    feed(
        &mut p,
        b"HTTP/1.1 400 Bad Request\r\n\r\n",
        true,
        &mut events,
    );
    assert_eq!(events, vec!["error bad_frame", "lost"]);
    // Garbage mid-segment is ignored; frames at the next syscall start are read again, headers
    // unknown (the table was lost with the bytes).
    feed(&mut p, &[0xff; 40], false, &mut events);
    assert_eq!(events.len(), 2);
    let at = starts[starts.len() / 2];
    feed(&mut p, &resp[at..], true, &mut events);
    assert!(events.len() > 2, "{events:?}");
    assert!(events[2..].iter().all(|e| !e.contains("known: true")));
    // Random bytes never panic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..200 {
        let mut buf = Vec::new();
        for _ in 0..(round * 7 % 300) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.push(x as u8);
        }
        let mut p = Http2Conn::new(round % 2 == 0);
        let mut sink = Vec::new();
        feed(&mut p, &buf, true, &mut sink);
        p.gap(Direction::Response, 17, &mut |ev| render(&mut sink, ev));
    }
}

#[test]
fn a_loss_inside_data_keeps_the_framing() {
    let mut s = Vec::new();
    s.extend_from_slice(&[0, 0, 10, DATA, 0, 0, 0, 0, 1]);
    s.extend_from_slice(b"0123456789");
    s.extend_from_slice(&[0, 0, 2, DATA, END_STREAM, 0, 0, 0, 1]);
    s.extend_from_slice(b"ab");
    let mut p = Http2Conn::new(true);
    let mut ev = Vec::new();
    fn seg(data: &[u8]) -> Segment<'_> {
        Segment {
            ts_ns: 0,
            data,
            syscall_start: false,
        }
    }
    p.feed(Direction::Response, seg(&s[..12]), &mut |e| {
        render(&mut ev, e)
    });
    p.gap(Direction::Response, 5, &mut |e| render(&mut ev, e));
    p.feed(Direction::Response, seg(&s[17..]), &mut |e| {
        render(&mut ev, e)
    });
    assert_eq!(
        ev,
        vec!["data 1 303132", "gap 1 5", "data 1 38396162", "end 1"]
    );
    // A loss across a frame header: framing is lost.
    let mut p = Http2Conn::new(true);
    let mut ev = Vec::new();
    p.feed(Direction::Response, seg(&s[..12]), &mut |e| {
        render(&mut ev, e)
    });
    p.gap(Direction::Response, 9, &mut |e| render(&mut ev, e));
    assert_eq!(ev.last().unwrap(), "lost");
}

#[test]
fn detects_frames_but_not_http1_or_tls() {
    let chunks = load("ext_proc_routed.bin");
    let resp = direction(&chunks, Direction::Response);
    assert!(looks_like_frames(&resp));
    assert!(!looks_like_frames(
        b"POST /v1/chat/completions HTTP/1.1\r\n"
    ));
    assert!(!looks_like_frames(b"HTTP/1.1 200 OK\r\n\r\n"));
    assert!(!looks_like_frames(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03
    ]));
    assert!(!looks_like_frames(b"short"));
}
