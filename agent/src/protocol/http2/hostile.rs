//! Hostile header blocks and frame floods: each must cost a small constant factor per byte fed
//! (measured by [`Http2Conn::decoded_bytes`], not by a clock), be counted by kind, and leave the
//! parser able to read an ordinary request on a new connection afterwards.

use super::*;
use crate::exchange::h2::{H2Effects, H2Streams, RESET_BURST};

/// One frame.
pub(crate) fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[ty, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix, `first` holding the representation's high bits.
pub(crate) fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A raw (not Huffman) HPACK string.
pub(crate) fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// The HPACK bomb: a table size update to 64 KiB, a 60 KB `x-request-id` literal inserted in the dynamic table, then header
/// blocks of one-byte indexed references to it (index 62, the newest dynamic entry), each block
/// in one HEADERS frame with END_HEADERS on a new stream. Client bytes, preface included.
/// `long_name`: the 60 KB are the entry's name (value "a") instead of its value.
pub(crate) fn hpack_bomb(blocks: usize, refs: usize, long_name: bool) -> Vec<u8> {
    let mut s = PREFACE.to_vec();
    let mut first = Vec::new();
    // A dynamic table size update to 64 KiB (what the agent accepts) so that the literal fits.
    hpack_int(&mut first, 0x20, 5, MAX_HPACK_TABLE);
    first.push(0x82); // :method GET
    first.push(0x84); // :path /
    hpack_int(&mut first, 0x40, 6, 0); // literal, incremental indexing, new name
    let long = vec![b'a'; 60_000];
    if long_name {
        hpack_str(&mut first, &long);
        hpack_str(&mut first, b"a");
    } else {
        hpack_str(&mut first, b"x-request-id");
        hpack_str(&mut first, &long);
    }
    // HEADERS (no END_HEADERS) + CONTINUATIONs of at most 16 KiB.
    let mut chunks = first.chunks(16_000).peekable();
    let mut ty = HEADERS;
    while let Some(c) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            END_HEADERS | END_STREAM
        } else {
            0
        };
        s.extend(frame(ty, flags, 1, c));
        ty = CONTINUATION;
    }
    for i in 0..blocks {
        let mut b = vec![0x82, 0x84];
        b.extend(std::iter::repeat_n(0xbe, refs));
        s.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3 + 2 * i as u32,
            &b,
        ));
    }
    s
}

/// An ordinary GET on a new connection, client side.
pub(crate) fn ordinary_request() -> Vec<u8> {
    let mut s = PREFACE.to_vec();
    s.extend(frame(SETTINGS, 0, 0, &[]));
    let mut enc = loona_hpack::Encoder::new();
    let block = enc.encode([
        (&b":method"[..], &b"GET"[..]),
        (b":path", b"/v1/models"),
        (b"x-request-id", b"r-1"),
    ]);
    s.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    s
}

/// Feeds client bytes in 4 KiB syscalls; returns the parser and its events rendered.
fn feed(bytes: &[u8]) -> (Http2Conn, Vec<String>) {
    let mut p = Http2Conn::new(true);
    let mut events = Vec::new();
    for (i, c) in bytes.chunks(4096).enumerate() {
        let seg = Segment {
            ts_ns: 0,
            data: c,
            syscall_start: i == 0,
        };
        p.feed(Direction::Request, seg, &mut |ev| {
            super::tests::render(&mut events, ev)
        });
    }
    (p, events)
}

fn assert_ordinary_request_parses() {
    let (_, events) = feed(&ordinary_request());
    assert_eq!(events.len(), 1, "{events:#?}");
    assert!(
        events[0].contains("path: Some(\"/v1/models\")"),
        "{events:#?}"
    );
    assert!(
        events[0].contains("(\"x-request-id\", \"r-1\")"),
        "{events:#?}"
    );
}

#[test]
fn hpack_bomb_costs_a_constant_per_byte() {
    // Both variants are measured before either is asserted on.
    let runs: Vec<_> = [false, true].into_iter().map(run_bomb).collect();
    for check in runs {
        check();
    }
}

fn run_bomb(long_name: bool) -> impl FnOnce() {
    let bytes = hpack_bomb(4, 4000, long_name);
    let (p, events) = feed(&bytes);
    let work = p.decoded_bytes();
    eprintln!(
        "hpack bomb (long name: {long_name}): {} bytes fed, {work} decoded bytes",
        bytes.len()
    );
    move || check_bomb(&bytes, work, &events)
}

fn check_bomb(bytes: &[u8], work: u64, events: &[String]) {
    assert!(
        work <= 4 * bytes.len() as u64,
        "{work} decoded bytes for {} bytes fed",
        bytes.len()
    );
    // The first block (the 60 KB entry) is within the bound; the second is not.
    assert_eq!(events.len(), 2, "{events:#?}");
    assert!(events[0].starts_with("headers 1"), "{events:#?}");
    assert_eq!(events[1], "abuse header_list_too_large");
    assert_ordinary_request_parses();
}

/// Client bytes through the parser and the stream table; returns the counts, the work (decoded
/// bytes + streams looked at) and the spans' worth of work produced.
fn through_streams(bytes: &[u8]) -> (H2Effects, u64, usize) {
    let mut p = Http2Conn::new(true);
    let mut streams = H2Streams::new();
    let mut fx = H2Effects::default();
    let mut done = Vec::new();
    for (i, c) in bytes.chunks(4096).enumerate() {
        let seg = Segment {
            ts_ns: 0,
            data: c,
            syscall_start: i == 0,
        };
        p.feed(Direction::Request, seg, &mut |ev| {
            fx.add(&streams.on_event(Direction::Request, ev, &mut done))
        });
        if streams.dropped() {
            p.drop_state();
        }
    }
    (fx, p.decoded_bytes() + streams.visits(), done.len())
}

fn check_flood(name: &str, bytes: &[u8], counter: impl Fn(&H2Effects) -> u64) {
    let (fx, work, done) = through_streams(bytes);
    eprintln!(
        "{name}: {} bytes fed, work {work}, {done} works out, {fx:?}",
        bytes.len()
    );
    assert!(work <= bytes.len() as u64, "{name}: work {work}");
    assert_eq!(counter(&fx), 1, "{name}: {fx:?}");
    assert_eq!(fx.dropped, 1, "{name}: {fx:?}");
    assert_ordinary_request_parses();
}

fn get_block(enc: &mut loona_hpack::Encoder<'_>) -> Vec<u8> {
    enc.encode([(&b":method"[..], &b"GET"[..]), (b":path", b"/")])
}

#[test]
fn continuation_flood_is_dropped() {
    let mut s = PREFACE.to_vec();
    let mut enc = loona_hpack::Encoder::new();
    s.extend(frame(HEADERS, 0, 1, &get_block(&mut enc)));
    for _ in 0..100_000 {
        s.extend(frame(CONTINUATION, 0, 1, &[]));
    }
    check_flood("continuation flood", &s, |fx| fx.continuation_floods);
}

#[test]
fn settings_and_ping_floods_are_dropped() {
    let mut s = PREFACE.to_vec();
    for _ in 0..100_000 {
        s.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]));
    }
    check_flood("settings flood", &s, |fx| fx.settings_floods);
    let mut s = PREFACE.to_vec();
    for _ in 0..100_000 {
        s.extend(frame(PING, 0, 0, &[0; 8]));
    }
    check_flood("ping flood", &s, |fx| fx.ping_floods);
}

#[test]
fn rapid_reset_flood_is_dropped() {
    let mut s = PREFACE.to_vec();
    let mut enc = loona_hpack::Encoder::new();
    for i in 0..100_000u32 {
        let id = 1 + 2 * i;
        s.extend(frame(HEADERS, END_HEADERS, id, &get_block(&mut enc)));
        s.extend(frame(RST_STREAM, 0, id, &[0, 0, 0, 8]));
    }
    check_flood("rapid reset", &s, |fx| fx.rapid_reset_floods);
    let (_, _, done) = through_streams(&s);
    assert!(done <= RESET_BURST as usize + 1, "{done} aborted exchanges");
}

#[test]
fn stream_exhaustion_is_dropped() {
    // Streams opened and never ended (the table fills), then on and on; then ids going down.
    let mut enc = loona_hpack::Encoder::new();
    let mut s = PREFACE.to_vec();
    for i in 0..100_000u32 {
        s.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i, &get_block(&mut enc)));
        // DATA on the first stream: with a full table, each event must not visit every stream.
        s.extend(frame(DATA, 0, 1, b"x"));
    }
    check_flood("stream exhaustion", &s, |fx| fx.stream_floods);
    let mut s = PREFACE.to_vec();
    s.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        999_999,
        &get_block(&mut enc),
    ));
    for i in 0..100_000u32 {
        s.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1 + 2 * i,
            &get_block(&mut enc),
        ));
    }
    check_flood("stream ids going down", &s, |fx| fx.stream_floods);
}

/// A request on `stream` whose header block is `block` (HEADERS, then CONTINUATIONs of 16 KB).
pub(crate) fn request_with_block(stream: u32, block: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    let mut chunks = block.chunks(16_000).peekable();
    let mut ty = HEADERS;
    while let Some(c) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            END_HEADERS | END_STREAM
        } else {
            0
        };
        s.extend(frame(ty, flags, stream, c));
        ty = CONTINUATION;
    }
    s
}

/// A header block: an optional table size update, `:method GET`, `:path /`, then each
/// `(name, value)` as a literal with incremental indexing (a new name).
pub(crate) fn indexing_block(size_update: Option<usize>, entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = Vec::new();
    if let Some(max) = size_update {
        hpack_int(&mut b, 0x20, 5, max);
    }
    b.extend([0x82, 0x84]);
    for (name, value) in entries {
        hpack_int(&mut b, 0x40, 6, 0);
        hpack_str(&mut b, name);
        hpack_str(&mut b, value);
    }
    b
}

#[test]
fn hpack_tables_are_measured_as_rfc_7541_does_and_counted_as_held() {
    let big = vec![b'v'; 40_000];
    let mut bytes = PREFACE.to_vec();
    // Table bound 4,096 (the default): a 40 KB entry does not fit and empties the table.
    bytes.extend(request_with_block(
        1,
        &indexing_block(None, &[(b"x-a", b"1"), (b"x-big", &big)]),
    ));
    let (p, _) = feed(&bytes);
    assert_eq!(p.hpack_table_sizes(), [0, 0]);

    // Grown to 64 KiB: the entries stay, 32 octets each on top of name and value.
    bytes.extend(request_with_block(
        3,
        &indexing_block(Some(MAX_HPACK_TABLE), &[(b"x-a", b"1"), (b"x-big", &big)]),
    ));
    let (p, events) = feed(&bytes);
    let table = (3 + 1 + 32) + (5 + 40_000 + 32);
    assert_eq!(p.hpack_table_sizes(), [table, 0], "{events:#?}");
    assert_eq!(p.buffered(), table);
    // A second 40 KB entry evicts the oldest ones until the table is back within its bound.
    bytes.extend(request_with_block(
        5,
        &indexing_block(None, &[(b"x-big2", &big)]),
    ));
    let (p, _) = feed(&bytes);
    assert_eq!(p.hpack_table_sizes(), [6 + 40_000 + 32, 0]);

    // A size update shrinking the table evicts, oldest first; a Huffman-coded name ("aaaaaaaa"
    // in 5 octets) counts its decoded length; an indexed reference changes nothing.
    let mut b = Vec::new();
    hpack_int(&mut b, 0x20, 5, 100);
    b.extend([
        0x82, 0x84, 0x40, 0x85, 0x18, 0xc6, 0x31, 0x8c, 0x63, 0x01, b'1', 0xbe,
    ]);
    bytes.extend(request_with_block(7, &b));
    let (mut p, events) = feed(&bytes);
    assert_eq!(events.len(), 4, "{events:#?}");
    assert!(
        events[3].starts_with("headers 7 ") && events[3].contains("known: true"),
        "{events:#?}"
    );
    assert_eq!(p.hpack_table_sizes(), [8 + 1 + 32, 0], "{events:#?}");
    p.drop_tables();
    assert_eq!(p.buffered(), 0);
}
