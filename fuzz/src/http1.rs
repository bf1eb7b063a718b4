//! `protocol::http1` on any bytes: any segmentation, both directions, syscall starts, gaps and a
//! close. Checks beyond "no panic": only allow-listed header values come out, bounded; body
//! slices are slices of the fed segment (never copies); ends never precede heads.

use infertap::protocol::http::{
    HttpEvent, ALLOWED_HEADERS, MAX_HEADER_VALUE_BYTES, MAX_PATH_BYTES,
};
use infertap::protocol::http1::Http1Conn;
use infertap::protocol::{Direction, Segment};

/// The fuzz target's entry point (also replayed on `fuzz/regressions/` by `cargo test`).
pub fn run(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut conn = Http1Conn::new(flags & 1 == 1);
    let mut ts = 0u64;
    // Each op byte: bit 0 direction, bit 1 not a syscall start, bits 1-2 == 0b11 a gap, the
    // high bits a length.
    while let Some((&op, tail)) = rest.split_first() {
        ts += 1;
        let dir = if op & 1 == 0 {
            Direction::Request
        } else {
            Direction::Response
        };
        let len = usize::from(op >> 3) * 13 % 257 + 1;
        if op & 6 == 6 {
            rest = tail;
            conn.gap(dir, ts, u64::from(op >> 3), &mut check(&[]));
            continue;
        }
        let (seg, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        let seg = Segment {
            ts_ns: ts,
            data: seg,
            syscall_start: op & 2 == 0,
        };
        conn.feed(dir, seg, &mut check(seg.data));
    }
    conn.close(ts + 1, &mut check(&[]));
}

fn check(seg: &[u8]) -> impl FnMut(HttpEvent<'_>) + '_ {
    move |ev| match ev {
        HttpEvent::RequestHead { head, .. } => {
            assert!(head.path.len() <= MAX_PATH_BYTES);
            for (name, value) in &head.headers {
                assert!(ALLOWED_HEADERS.contains(name) && value.len() <= MAX_HEADER_VALUE_BYTES);
            }
        }
        HttpEvent::ResponseHead { head, .. } => {
            assert!(!(100..200).contains(&head.status), "1xx heads are skipped");
            for (name, value) in &head.headers {
                assert!(ALLOWED_HEADERS.contains(name) && value.len() <= MAX_HEADER_VALUE_BYTES);
            }
        }
        HttpEvent::RequestBody { data, .. } | HttpEvent::ResponseBody { data, .. } => {
            let range = seg.as_ptr_range();
            let inside = range.start <= data.as_ptr() && data.as_ptr_range().end <= range.end;
            assert!(
                !data.is_empty() && inside,
                "body bytes must be a slice of the segment"
            );
        }
        _ => {}
    }
}
