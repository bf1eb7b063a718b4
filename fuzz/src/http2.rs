//! `protocol::http2` and the HTTP/2 stream assembly (`exchange::h2`) on any bytes: any
//! segmentation, both directions, from the start or mid-stream, syscall starts, gaps and a close.
//! Checks beyond "no panic": only allow-listed header values come out, bounded; DATA slices are
//! slices of the fed segment (never copies); the stream table stays bounded.

use infertap::exchange::h2::{H2Streams, MAX_STREAMS};
use infertap::protocol::http::{ALLOWED_HEADERS, MAX_HEADER_VALUE_BYTES, MAX_PATH_BYTES};
use infertap::protocol::http2::{H2Event, Http2Conn, PREFACE};
use infertap::protocol::{Direction, Segment};

/// The fuzz target's entry point (also replayed on `fuzz/regressions/` by `cargo test`).
pub fn run(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let from_start = flags & 1 == 1;
    let mut conn = Http2Conn::new(from_start);
    let mut streams = H2Streams::new();
    let mut done = Vec::new();
    // Often start with a real preface so that the fuzzer reaches the frame parser.
    if from_start && flags & 2 == 2 {
        let seg = Segment {
            ts_ns: 0,
            data: PREFACE,
            syscall_start: true,
        };
        conn.feed(Direction::Request, seg, &mut |ev| {
            streams.on_event(Direction::Request, ev, &mut done);
        });
    }
    let mut ts = 0u64;
    // Each op byte: bit 0 direction, bit 1 not a syscall start, bits 1-2 == 0b11 a gap, the high
    // bits a length.
    while let Some((&op, tail)) = rest.split_first() {
        ts += 1;
        let dir = if op & 1 == 0 {
            Direction::Request
        } else {
            Direction::Response
        };
        if op & 6 == 6 {
            rest = tail;
            conn.gap(dir, u64::from(op >> 3), &mut |ev| {
                streams.on_event(dir, ev, &mut done);
            });
            continue;
        }
        let len = usize::from(op >> 3) * 29 % 521 + 1;
        let (seg, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        let seg = Segment {
            ts_ns: ts,
            data: seg,
            syscall_start: op & 2 == 0,
        };
        let range = seg.data.as_ptr_range();
        conn.feed(dir, seg, &mut |ev| {
            check(&ev, &range);
            streams.on_event(dir, ev, &mut done);
        });
        assert!(streams.len() <= MAX_STREAMS);
    }
    streams.close(ts + 1, flags & 4 == 4, &mut done);
}

fn check(ev: &H2Event<'_>, seg: &std::ops::Range<*const u8>) {
    match ev {
        H2Event::Headers { fields, .. } => {
            if !fields.known {
                assert!(fields.headers.is_empty() && fields.path.is_none());
            }
            assert!(fields
                .path
                .as_ref()
                .is_none_or(|p| p.len() <= MAX_PATH_BYTES));
            for (name, value) in &fields.headers {
                assert!(ALLOWED_HEADERS.contains(name) && value.len() <= MAX_HEADER_VALUE_BYTES);
            }
        }
        H2Event::Data { data, .. } => {
            let r = data.as_ptr_range();
            assert!(data.is_empty() || (seg.start <= r.start && r.end <= seg.end));
        }
        _ => {}
    }
}
