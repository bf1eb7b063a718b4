//! Fixtures (`agent/tests/fixtures/http1/*.txt`, format in the README there) are replayed
//! whole, split in two at every byte offset, and one byte at a time; each replay must render
//! the fixture's expected events. `INFERTAP_BLESS=1` rewrites the expectations.

use super::*;
use crate::protocol::sse::{SseEvent, SseFramer};
use proptest::prelude::*;
use std::fmt::Write as _;

enum Step {
    Data {
        dir: Direction,
        bytes: Vec<u8>,
        start: bool,
    },
    Gap {
        dir: Direction,
        len: u64,
    },
    Close,
}

struct Fixture {
    mid_stream: bool,
    sse: bool,
    split: bool,
    steps: Vec<Step>,
    expect: String,
}

fn parse_dir(s: &str) -> Direction {
    match s {
        "req" => Direction::Request,
        "resp" => Direction::Response,
        other => panic!("bad direction {other:?}"),
    }
}

fn unescape(line: &str, out: &mut Vec<u8>) {
    let mut bytes = line.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let hex = std::str::from_utf8(&hex).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
            }
            other => panic!("bad escape {other:?} in {line:?}"),
        }
    }
}

fn parse_fixture(text: &str) -> Fixture {
    let (script, expect) = text.split_once("== expect\n").expect("no `== expect` line");
    let mut fx = Fixture {
        mid_stream: false,
        sse: false,
        split: true,
        steps: Vec::new(),
        expect: expect.to_owned(),
    };
    for line in script.lines() {
        if line.starts_with("# ") || line == "#" {
            continue;
        }
        if let Some(opt) = line.strip_prefix("! ") {
            match opt {
                "mid_stream" => fx.mid_stream = true,
                "sse" => fx.sse = true,
                "no_split" => fx.split = false,
                other => panic!("bad option {other:?}"),
            }
        } else if let Some(step) = line.strip_prefix("> ") {
            let words: Vec<&str> = step.split(' ').collect();
            fx.steps.push(match words.as_slice() {
                ["close"] => Step::Close,
                ["gap", dir, len] => Step::Gap {
                    dir: parse_dir(dir),
                    len: len.parse().unwrap(),
                },
                [dir] => Step::Data {
                    dir: parse_dir(dir),
                    bytes: Vec::new(),
                    start: true,
                },
                [dir, "cont"] => Step::Data {
                    dir: parse_dir(dir),
                    bytes: Vec::new(),
                    start: false,
                },
                _ => panic!("bad step {step:?}"),
            });
        } else if let Some(Step::Data { bytes, .. }) = fx.steps.last_mut() {
            unescape(line, bytes);
        } else {
            panic!("content outside a data step: {line:?}");
        }
    }
    fx
}

/// Renders events one a line; consecutive body slices of one direction and one timestamp
/// are joined first (so that any segmentation renders the same). With `sse`, response
/// bodies go through an `SseFramer` and its events are rendered instead of the bytes.
struct Render {
    sse: bool,
    lines: Vec<String>,
    body: Option<(Direction, u64, Vec<u8>)>,
    framer: Option<SseFramer>,
}

impl Render {
    fn new(sse: bool) -> Self {
        Self {
            sse,
            lines: Vec::new(),
            body: None,
            framer: None,
        }
    }

    fn sse_line(lines: &mut Vec<String>, ev: SseEvent<'_>) {
        lines.push(match ev {
            SseEvent::Event {
                event_type,
                data,
                id,
            } => {
                let id = id.map(|id| format!(" id={id}")).unwrap_or_default();
                format!("  sse {event_type}{id} \"{}\"", data.escape_ascii())
            }
            SseEvent::Comment => "  sse comment".to_owned(),
            SseEvent::Failure(f) => format!("  sse failure {f:?}"),
        });
    }

    fn flush(&mut self) {
        let Some((dir, ts, data)) = self.body.take() else {
            return;
        };
        match (dir, self.framer.as_mut()) {
            (Direction::Response, Some(framer)) => {
                let lines = &mut self.lines;
                framer.feed(&data, &mut |ev| Self::sse_line(lines, ev));
            }
            _ => {
                let name = if dir == Direction::Request {
                    "req"
                } else {
                    "resp"
                };
                self.lines
                    .push(format!("{name}-body@{ts} \"{}\"", data.escape_ascii()));
            }
        }
    }

    fn finish_sse(&mut self) {
        if let Some(mut framer) = self.framer.take() {
            let lines = &mut self.lines;
            framer.finish(&mut |ev| Self::sse_line(lines, ev));
        }
    }

    fn event(&mut self, ev: HttpEvent<'_>) {
        match ev {
            HttpEvent::RequestBody { ts_ns, data } | HttpEvent::ResponseBody { ts_ns, data } => {
                let dir = if matches!(ev, HttpEvent::RequestBody { .. }) {
                    Direction::Request
                } else {
                    Direction::Response
                };
                match &mut self.body {
                    Some((d, t, buf)) if *d == dir && *t == ts_ns => buf.extend_from_slice(data),
                    _ => {
                        self.flush();
                        self.body = Some((dir, ts_ns, data.to_vec()));
                    }
                }
                return;
            }
            _ => self.flush(),
        }
        let line = match ev {
            HttpEvent::RequestHead { ts_ns, head } => {
                let mut s = format!(
                    "req-head@{ts_ns} {} {} HTTP/1.{}",
                    head.method, head.path, head.minor_version
                );
                framing_str(&mut s, head.content_length, head.chunked, &head.headers);
                s
            }
            HttpEvent::ResponseHead { ts_ns, head } => {
                self.finish_sse();
                self.framer = self.sse.then(SseFramer::new);
                let mut s = format!(
                    "resp-head@{ts_ns} {} HTTP/1.{}",
                    head.status, head.minor_version
                );
                framing_str(&mut s, head.content_length, head.chunked, &head.headers);
                s
            }
            HttpEvent::RequestBodyGap { len } => format!("req-gap {len}"),
            HttpEvent::ResponseBodyGap { len } => {
                if let Some(f) = self.framer.as_mut() {
                    f.gap();
                }
                format!("resp-gap {len}")
            }
            HttpEvent::RequestEnd { ts_ns } => format!("req-end@{ts_ns}"),
            HttpEvent::ResponseEnd { ts_ns } => {
                self.finish_sse();
                format!("resp-end@{ts_ns}")
            }
            HttpEvent::Aborted {
                ts_ns,
                request_complete,
                response_started,
            } => {
                self.finish_sse();
                format!("aborted@{ts_ns} request_complete={request_complete} response_started={response_started}")
            }
            HttpEvent::ParseError { dir, kind } => format!("parse-error {dir:?} {kind:?}"),
            HttpEvent::NotHttp => "not-http".to_owned(),
            HttpEvent::RequestBody { .. } | HttpEvent::ResponseBody { .. } => unreachable!(),
        };
        self.lines.push(line);
    }

    fn finish(mut self) -> String {
        self.flush();
        self.finish_sse();
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

fn framing_str(s: &mut String, cl: Option<u64>, chunked: bool, headers: &[(&'static str, String)]) {
    if let Some(cl) = cl {
        write!(s, " cl={cl}").unwrap();
    }
    if chunked {
        s.push_str(" chunked");
    }
    for (k, v) in headers {
        write!(s, " [{k}: {v}]").unwrap();
    }
}

#[derive(Clone, Copy)]
enum Split {
    Whole,
    At(usize),
    Bytes,
}

fn replay(fx: &Fixture, split: Split) -> String {
    let mut conn = Http1Conn::new(fx.mid_stream);
    let mut render = Render::new(fx.sse);
    let mut offset = 0;
    for (i, step) in fx.steps.iter().enumerate() {
        let ts_ns = i as u64 + 1;
        match step {
            Step::Data { dir, bytes, start } => {
                let mut feed = |data: &[u8], syscall_start: bool| {
                    conn.feed(
                        *dir,
                        Segment {
                            ts_ns,
                            data,
                            syscall_start,
                        },
                        &mut |ev| render.event(ev),
                    );
                };
                match split {
                    Split::Whole => feed(bytes, *start),
                    Split::At(k) if k > offset && k < offset + bytes.len() => {
                        let (a, b) = bytes.split_at(k - offset);
                        feed(a, *start);
                        feed(b, false);
                    }
                    Split::At(_) => feed(bytes, *start),
                    Split::Bytes => {
                        for (j, b) in bytes.iter().enumerate() {
                            feed(std::slice::from_ref(b), *start && j == 0);
                        }
                    }
                }
                offset += bytes.len();
            }
            Step::Gap { dir, len } => conn.gap(*dir, ts_ns, *len, &mut |ev| render.event(ev)),
            Step::Close => conn.close(ts_ns, &mut |ev| render.event(ev)),
        }
    }
    render.finish()
}

fn check_fixture(name: &str, text: &str) {
    let fx = parse_fixture(text);
    let got = replay(&fx, Split::Whole);
    if std::env::var_os("INFERTAP_BLESS").is_some() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/http1/{name}.txt"));
        let (script, _) = text.split_once("== expect\n").unwrap();
        std::fs::write(path, format!("{script}== expect\n{got}")).unwrap();
    } else {
        assert_eq!(got, fx.expect, "fixture {name}, whole");
    }
    assert!(
        !got.contains("SECRET"),
        "fixture {name}: a non-allow-listed header leaked"
    );
    if !fx.split {
        return;
    }
    let total: usize = fx
        .steps
        .iter()
        .map(|s| {
            if let Step::Data { bytes, .. } = s {
                bytes.len()
            } else {
                0
            }
        })
        .sum();
    for k in 1..total {
        assert_eq!(
            replay(&fx, Split::At(k)),
            got,
            "fixture {name}, split at byte {k}"
        );
    }
    assert_eq!(
        replay(&fx, Split::Bytes),
        got,
        "fixture {name}, one byte at a time"
    );
}

macro_rules! fixtures {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            check_fixture(
                stringify!($name),
                include_str!(concat!("../../../tests/fixtures/http1/", stringify!($name), ".txt")),
            );
        }
    )*};
}

fixtures! {
    stream_chat,
    nonstream_chat,
    error_400,
    keepalive,
    pipelined,
    head_204_304,
    continue_100,
    close_delimited,
    chunked_ext_trailers,
    sse_crlf_comments,
    midstream,
    bad_request_line,
    truncated_request,
    truncated_head,
    truncated_response,
    gap_content_length,
    gap_chunk_data,
    gap_chunk_size,
}

/// Feeds `(dir, bytes)` segments (each a syscall start, ts = index + 1) and renders.
fn run(mid_stream: bool, segs: &[(Direction, &[u8])]) -> String {
    let mut conn = Http1Conn::new(mid_stream);
    let mut render = Render::new(false);
    for (i, (dir, data)) in segs.iter().enumerate() {
        let seg = Segment {
            ts_ns: i as u64 + 1,
            data,
            syscall_start: true,
        };
        conn.feed(*dir, seg, &mut |ev| render.event(ev));
    }
    conn.close(99, &mut |ev| render.event(ev));
    render.finish()
}

const REQ: Direction = Direction::Request;
const RESP: Direction = Direction::Response;

#[test]
fn tls_client_hello_is_not_http() {
    let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x8a\x1e\x7f";
    assert_eq!(
        run(false, &[(REQ, hello), (REQ, b"GET / HTTP/1.1\r\n\r\n")]),
        "not-http\n"
    );
    // Attached mid-stream, a TLS record at a syscall start also gives up.
    assert_eq!(
        run(
            true,
            &[
                (REQ, b"\x17\x03\x03\x00\x20abcdef"),
                (REQ, b"GET / HTTP/1.1\r\n\r\n")
            ]
        ),
        "not-http\n"
    );
}

#[test]
fn http2_preface_is_not_http() {
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00";
    assert_eq!(run(false, &[(REQ, preface)]), "not-http\n");
    // Even one byte at a time.
    let segs: Vec<(Direction, &[u8])> = preface.chunks(1).map(|c| (REQ, c)).collect();
    assert_eq!(run(false, &segs), "not-http\n");
}

#[test]
fn garbage_is_not_http() {
    let mut x = 0x2545_f491_u32;
    let random: Vec<u8> = (0..512)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let mut garbage = vec![0x00];
    garbage.extend_from_slice(&random);
    assert_eq!(run(false, &[(REQ, &garbage)]), "not-http\n");
    assert_eq!(
        run(false, &[(REQ, b"hello world, not http\r\n\r\n")]),
        "not-http\n"
    );
    assert_eq!(
        run(false, &[(REQ, b"SSH-2.0-OpenSSH_9.6\r\n")]),
        "not-http\n"
    );
    assert_eq!(
        run(false, &[(RESP, b"220 smtp.example.com ESMTP\r\n")]),
        "not-http\n"
    );
    // A real request first: later garbage is a parse error, not "not HTTP".
    assert_eq!(
        run(false, &[(REQ, b"GET / HTTP/1.1\r\n\r\n"), (REQ, b"\x00\x01\x02")]),
        "req-head@1 GET / HTTP/1.1\nreq-end@1\nparse-error Request BadStartLine\naborted@99 request_complete=true response_started=false\n"
    );
}

#[test]
fn head_too_large_then_recovery() {
    let mut big = b"POST /v1/completions HTTP/1.1\r\nhost: a\r\n".to_vec();
    while big.len() <= MAX_HEAD_BYTES {
        big.extend_from_slice(
            b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    big.extend_from_slice(b"content-length: 2\r\n\r\n{}");
    let next = b"GET /next HTTP/1.1\r\nhost: b\r\n\r\n";
    let expect = "parse-error Request HeadTooLarge\nreq-head@3 GET /next HTTP/1.1 [host: b]\nreq-end@3\naborted@99 request_complete=true response_started=false\n";
    // In one segment, and in 1000-byte segments (only the first is a syscall start).
    assert_eq!(
        run(
            false,
            &[(REQ, &big[..100]), (REQ, &big[100..]), (REQ, next)]
        ),
        expect
    );
    let mut conn = Http1Conn::new(false);
    let mut render = Render::new(false);
    for (i, c) in big.chunks(1000).enumerate() {
        conn.feed(
            REQ,
            Segment {
                ts_ns: 1,
                data: c,
                syscall_start: i == 0,
            },
            &mut |ev| render.event(ev),
        );
    }
    conn.feed(
        REQ,
        Segment {
            ts_ns: 3,
            data: next,
            syscall_start: true,
        },
        &mut |ev| render.event(ev),
    );
    conn.close(99, &mut |ev| render.event(ev));
    assert_eq!(render.finish(), expect);
}

#[test]
fn too_many_headers() {
    let mut req = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        req.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    assert_eq!(
        run(false, &[(REQ, &req), (REQ, b"GET /ok HTTP/1.1\r\n\r\n")]),
        "parse-error Request TooManyHeaders\nreq-head@2 GET /ok HTTP/1.1\nreq-end@2\naborted@99 request_complete=true response_started=false\n"
    );
}

#[test]
fn only_allow_listed_headers_are_copied() {
    let long = "v".repeat(600);
    let path = format!("/{}?q=secret", "p".repeat(3000));
    let req = format!(
        "POST {path} HTTP/1.1\r\nAuthorization: Bearer sk-SECRET\r\nCookie: s=SECRET\r\napi-key: SECRET\r\n\
         X-Api-Key: SECRET\r\nProxy-Authorization: SECRET\r\nTraceParent: 00-abc-def-01\r\nX-Request-Id: {long}\r\n\
         x-gateway-destination-endpoint: 10.0.0.1:8000\r\ncontent-length: 0\r\n\r\n"
    );
    let mut heads = Vec::new();
    Http1Conn::new(false).feed(
        REQ,
        Segment {
            ts_ns: 1,
            data: req.as_bytes(),
            syscall_start: true,
        },
        &mut |ev| {
            if let HttpEvent::RequestHead { head, .. } = ev {
                heads.push(head);
            }
        },
    );
    let [head] = heads.as_slice() else {
        panic!("{heads:?}")
    };
    assert_eq!(head.path, "/".to_owned() + &"p".repeat(MAX_PATH_BYTES - 1));
    let names: Vec<&str> = head.headers.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        names,
        [
            "traceparent",
            "x-request-id",
            "x-gateway-destination-endpoint"
        ]
    );
    assert_eq!(head.headers[1].1.len(), MAX_HEADER_VALUE_BYTES);
    assert!(!format!("{head:?}").contains("SECRET"));
}

#[test]
fn request_paths() {
    for (target, path) in [
        ("/v1/chat/completions?x=1", "/v1/chat/completions"),
        ("/a#frag", "/a"),
        ("http://vllm:8000/v1/models?x", "/v1/models"),
        ("http://vllm:8000", "/"),
        ("*", "*"),
        ("/redirect?u=http://x/y", "/redirect"),
    ] {
        assert_eq!(request_path(target), path, "{target}");
    }
    assert_eq!(crate::protocol::cut(&"aé".repeat(2000), 2048).len(), 2047);
}

#[test]
fn midstream_waits_for_a_plausible_start() {
    // Syscall-start segments that are body bytes, or a start line for a method we do not
    // know, are skipped silently; the first real request is reported.
    let out = run(
        true,
        &[
            (REQ, b"{\"prompt\":\"GET / HTTP/1.1\"}"),
            (REQ, b"data GET /x HTTP/1.1\r\n\r\n"),
            (RESP, b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nold"),
            (REQ, b"GE"),
            (REQ, b"X / HTTP/1.1\r\n\r\n"),
            (REQ, b"GET /v1/models HTTP/1.1\r\n\r\n"),
            (RESP, b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew"),
        ],
    );
    assert_eq!(
        out,
        "req-head@6 GET /v1/models HTTP/1.1\nreq-end@6\nresp-head@7 200 HTTP/1.1 cl=3\nresp-body@7 \"new\"\nresp-end@7\n"
    );
}

#[test]
fn upgrade_makes_the_connection_opaque() {
    let out = run(
        false,
        &[
            (
                REQ,
                b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            ),
            (
                RESP,
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n\x81\x05hello",
            ),
            (REQ, b"GET / HTTP/1.1\r\n\r\n"),
        ],
    );
    assert_eq!(out, "req-head@1 GET /ws HTTP/1.1\nreq-end@1\n");
    let out = run(
        false,
        &[
            (REQ, b"CONNECT vllm:443 HTTP/1.1\r\nhost: vllm:443\r\n\r\n"),
            (RESP, b"HTTP/1.1 200 OK\r\n\r\n\x16\x03\x01"),
        ],
    );
    assert_eq!(
        out,
        "req-head@1 CONNECT vllm:443 HTTP/1.1 [host: vllm:443]\nreq-end@1\n"
    );
}

#[test]
fn framing_errors() {
    let cases: [(&[u8], &str); 6] = [
        (
            b"POST / HTTP/1.1\r\ncontent-length: 12a\r\n\r\n",
            "BadContentLength",
        ),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "BadContentLength",
        ),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
            "BadTransferEncoding",
        ),
        (b"POST / HTTP/1.1\r\nbad header\r\n\r\n", "BadHeader"),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "BadChunk",
        ),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX",
            "BadChunk",
        ),
    ];
    for (input, kind) in cases {
        let out = run(
            false,
            &[
                (REQ, b"GET / HTTP/1.1\r\n\r\n"),
                (REQ, input),
                (REQ, b"GET /next HTTP/1.1\r\n\r\n"),
            ],
        );
        assert!(
            out.contains(&format!("parse-error Request {kind}\n")),
            "{out}"
        );
        assert!(out.contains("req-head@3 GET /next"), "{out}");
    }
    // Equal repeated content-lengths are fine.
    let out = run(
        false,
        &[(REQ, b"POST / HTTP/1.1\r\ncontent-length: 2, 2\r\n\r\nab")],
    );
    assert!(
        out.starts_with("req-head@1 POST / HTTP/1.1 cl=2\nreq-body@1 \"ab\"\nreq-end@1\n"),
        "{out}"
    );
}

#[test]
fn chunk_line_too_long() {
    let mut body = b"4;".to_vec();
    body.resize(MAX_CHUNK_LINE_BYTES + 10, b'e');
    let mut conn = Http1Conn::new(false);
    let mut render = Render::new(false);
    let head = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
    for data in [&head[..], &body] {
        conn.feed(
            REQ,
            Segment {
                ts_ns: 1,
                data,
                syscall_start: true,
            },
            &mut |ev| render.event(ev),
        );
    }
    assert_eq!(
        render.finish(),
        "req-head@1 POST / HTTP/1.1 chunked\nparse-error Request ChunkLineTooLong\naborted@1 request_complete=false response_started=false\n"
    );
}

#[test]
fn gap_in_a_head_or_between_messages() {
    let mut conn = Http1Conn::new(false);
    let mut render = Render::new(false);
    let feed = |conn: &mut Http1Conn, render: &mut Render, ts_ns, data: &[u8]| {
        conn.feed(
            REQ,
            Segment {
                ts_ns,
                data,
                syscall_start: true,
            },
            &mut |ev| render.event(ev),
        );
    };
    feed(&mut conn, &mut render, 1, b"GET /a HTTP/1.1\r\nho");
    conn.gap(REQ, 2, 10, &mut |ev| render.event(ev));
    feed(&mut conn, &mut render, 3, b"st: a\r\n\r\n");
    conn.gap(REQ, 4, 10, &mut |ev| render.event(ev));
    feed(&mut conn, &mut render, 5, b"GET /b HTTP/1.1\r\n\r\n");
    assert_eq!(
        render.finish(),
        "parse-error Request Lost\nreq-head@5 GET /b HTTP/1.1\nreq-end@5\n",
        "the second gap happens while resynchronising: no second error"
    );
}

/// What a fuzzer or proptest drives: any bytes, any segmentation, gaps and a close.
fn drive(data: &[u8]) {
    let Some((&ctl, mut rest)) = data.split_first() else {
        return;
    };
    let mut conn = Http1Conn::new(ctl & 1 == 1);
    let mut events = 0usize;
    let mut ts = 0u64;
    while let Some((&op, tail)) = rest.split_first() {
        let len = usize::from(op >> 3) * 7 % 97 + 1;
        let (chunk, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        ts += 1;
        let dir = if op & 1 == 0 { REQ } else { RESP };
        let mut out = |ev: HttpEvent<'_>| {
            events += 1;
            if let HttpEvent::RequestHead { head, .. } = &ev {
                assert!(head.path.len() <= MAX_PATH_BYTES);
                assert!(
                    head.headers
                        .iter()
                        .all(|(k, v)| ALLOWED_HEADERS.contains(k)
                            && v.len() <= MAX_HEADER_VALUE_BYTES)
                );
            }
        };
        match op & 6 {
            6 => conn.gap(dir, ts, u64::from(op >> 3), &mut out),
            _ => conn.feed(
                dir,
                Segment {
                    ts_ns: ts,
                    data: chunk,
                    syscall_start: op & 2 == 0,
                },
                &mut out,
            ),
        }
    }
    conn.close(ts + 1, &mut |_| events += 1);
    let _ = events;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        drive(&data);
    }

    /// Mostly-HTTP input (fragments of real messages, shuffled and cut) reaches deeper states.
    #[test]
    fn never_panics_on_http_like(parts in proptest::collection::vec(
        prop_oneof![
            Just(&b"GET / HTTP/1.1\r\n"[..]), Just(&b"HTTP/1.1 200 OK\r\n"[..]), Just(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]),
            Just(&b"transfer-encoding: chunked\r\n"[..]), Just(&b"content-length: 5\r\n"[..]), Just(&b"\r\n"[..]),
            Just(&b"5;x=y\r\nhello\r\n"[..]), Just(&b"0\r\n\r\n"[..]), Just(&b"HEAD / HTTP/1.1\r\n"[..]),
            Just(&b"data: x\n\n"[..]), any::<u8>().prop_map(|_| &b"\xff"[..]),
        ],
        0..64,
    ), cuts in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut data = vec![0u8];
        for (i, p) in parts.iter().enumerate() {
            data.push(cuts.get(i).copied().unwrap_or(0) & 0b1111_1001);
            data.extend_from_slice(p);
        }
        drive(&data);
    }
}

/// Replays `(ts, op)` steps: `Ok((dir, bytes))` a syscall-start segment, `Err((dir, len))` a gap;
/// then closes at 99.
fn replay_ops(ops: &[(Direction, Result<&[u8], u64>)]) -> String {
    let mut conn = Http1Conn::new(false);
    let mut render = Render::new(false);
    for (i, (dir, op)) in ops.iter().enumerate() {
        let ts_ns = i as u64 + 1;
        match op {
            Ok(data) => conn.feed(
                *dir,
                Segment {
                    ts_ns,
                    data,
                    syscall_start: true,
                },
                &mut |ev| render.event(ev),
            ),
            Err(len) => conn.gap(*dir, ts_ns, *len, &mut |ev| render.event(ev)),
        }
    }
    conn.close(99, &mut |ev| render.event(ev));
    render.finish()
}

#[test]
fn early_response_then_close() {
    // The server rejects a large upload before reading it all, and closes.
    let out = replay_ops(&[
        (REQ, Ok(b"POST /v1/completions HTTP/1.1\r\ncontent-length: 100\r\n\r\n{\"prompt\"")),
        (RESP, Ok(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")),
    ]);
    assert_eq!(
        out,
        "req-head@1 POST /v1/completions HTTP/1.1 cl=100\nreq-body@1 \"{\\\"prompt\\\"\"\n\
         resp-head@2 413 HTTP/1.1 cl=2\nresp-body@2 \"{}\"\nresp-end@2\n\
         aborted@99 request_complete=false response_started=true\n"
    );
}

#[test]
fn close_aborts_every_unfinished_exchange_oldest_first() {
    let out = replay_ops(&[
        (REQ, Ok(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\ncontent-length: 9\r\n\r\nabc")),
        (RESP, Ok(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na")),
        (RESP, Ok(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nb\r\n")),
    ]);
    assert_eq!(
        out,
        "req-head@1 GET /a HTTP/1.1\nreq-end@1\nreq-head@1 GET /b HTTP/1.1\nreq-end@1\n\
         req-head@1 POST /c HTTP/1.1 cl=9\nreq-body@1 \"abc\"\n\
         resp-head@2 200 HTTP/1.1 cl=1\nresp-body@2 \"a\"\nresp-end@2\n\
         resp-head@3 200 HTTP/1.1 chunked\nresp-body@3 \"b\"\n\
         aborted@99 request_complete=true response_started=true\n\
         aborted@99 request_complete=false response_started=false\n"
    );
}

#[test]
fn gaps_in_other_bodies() {
    // A gap past the end of a content-length body ends it, then loses the next start.
    let out = replay_ops(&[
        (REQ, Ok(b"GET / HTTP/1.1\r\n\r\n")),
        (RESP, Ok(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab")),
        (RESP, Err(10)),
        (RESP, Ok(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")),
    ]);
    assert_eq!(
        out,
        "req-head@1 GET / HTTP/1.1\nreq-end@1\nresp-head@2 200 HTTP/1.1 cl=5\nresp-body@2 \"ab\"\n\
         resp-gap 3\nresp-end@3\nparse-error Response Lost\n"
    );
    // A body delimited by close survives any gap; chunk data of a request too.
    let out = replay_ops(&[
        (
            REQ,
            Ok(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n8\r\nab"),
        ),
        (REQ, Err(4)),
        (REQ, Ok(b"gh\r\n0\r\n\r\n")),
        (RESP, Ok(b"HTTP/1.0 200 OK\r\n\r\nxy")),
        (RESP, Err(1000)),
        (RESP, Ok(b"z")),
    ]);
    assert_eq!(
        out,
        "req-head@1 POST / HTTP/1.1 chunked\nreq-body@1 \"ab\"\nreq-gap 4\nreq-body@3 \"gh\"\nreq-end@3\n\
         resp-head@4 200 HTTP/1.0\nresp-body@4 \"xy\"\nresp-gap 1000\nresp-body@6 \"z\"\nresp-end@99\n"
    );
}

#[test]
fn blank_lines_between_messages_are_tolerated() {
    let out = replay_ops(&[
        (
            REQ,
            Ok(b"POST / HTTP/1.1\r\ncontent-length: 1\r\n\r\nx\r\n"),
        ),
        (REQ, Ok(b"\r\nGET /next HTTP/1.1\n\n")),
    ]);
    assert_eq!(
        out,
        "req-head@1 POST / HTTP/1.1 cl=1\nreq-body@1 \"x\"\nreq-end@1\nreq-head@2 GET /next HTTP/1.1\nreq-end@2\n\
         aborted@99 request_complete=true response_started=false\naborted@99 request_complete=true response_started=false\n"
    );
}

/// Counts of what `n` pipelined requests, then their `n` responses, report.
#[derive(Debug, Default, PartialEq)]
struct Counted {
    request_heads: usize,
    request_bodies: usize,
    response_heads: usize,
    response_bodies: usize,
    response_ends: usize,
    aborted: usize,
    errors: usize,
}

fn count(c: &mut Counted, ev: HttpEvent<'_>) {
    match ev {
        HttpEvent::RequestHead { .. } => c.request_heads += 1,
        HttpEvent::RequestBody { .. } => c.request_bodies += 1,
        HttpEvent::ResponseHead { .. } => c.response_heads += 1,
        HttpEvent::ResponseBody { .. } => c.response_bodies += 1,
        HttpEvent::ResponseEnd { .. } => c.response_ends += 1,
        HttpEvent::Aborted { .. } => c.aborted += 1,
        HttpEvent::ParseError { .. } => c.errors += 1,
        _ => {}
    }
}

fn feed_all(conn: &mut Http1Conn, c: &mut Counted, dir: Direction, data: &[u8]) {
    let seg = Segment {
        ts_ns: 1,
        data,
        syscall_start: true,
    };
    conn.feed(dir, seg, &mut |ev| count(c, ev));
}

const BODY_REQ: &[u8] = b"POST /v1/completions HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}";
const BODY_RESP: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[test]
fn pipelined_requests_past_the_bound_are_shed_and_their_responses_skipped() {
    let n = MAX_PIPELINED + 36;
    let mut conn = Http1Conn::new(false);
    let mut c = Counted::default();
    feed_all(&mut conn, &mut c, REQ, &BODY_REQ.repeat(n));
    assert_eq!(conn.in_flight(), MAX_PIPELINED);
    assert_eq!(conn.take_shed(), 36);
    assert_eq!(conn.take_shed(), 0, "taken");
    assert_eq!(c.request_heads, MAX_PIPELINED);
    assert_eq!(
        c.request_bodies, MAX_PIPELINED,
        "shed bodies are not reported"
    );
    // Half the responses: the reported exchanges are answered first, in order; room frees up,
    // but a new request still waits behind the shed ones.
    feed_all(
        &mut conn,
        &mut c,
        RESP,
        &BODY_RESP.repeat(MAX_PIPELINED + 10),
    );
    assert_eq!(conn.in_flight(), 0);
    feed_all(&mut conn, &mut c, REQ, BODY_REQ);
    assert_eq!(conn.take_shed(), 1);
    // The rest (26 shed + this one): then requests are reported again.
    feed_all(&mut conn, &mut c, RESP, &BODY_RESP.repeat(27));
    feed_all(&mut conn, &mut c, REQ, BODY_REQ);
    feed_all(&mut conn, &mut c, RESP, BODY_RESP);
    conn.close(99, &mut |ev| count(&mut c, ev));
    assert_eq!(
        c,
        Counted {
            request_heads: MAX_PIPELINED + 1,
            request_bodies: MAX_PIPELINED + 1,
            response_heads: MAX_PIPELINED + 1,
            response_bodies: MAX_PIPELINED + 1,
            response_ends: MAX_PIPELINED + 1,
            aborted: 0,
            errors: 0,
        }
    );
    assert_eq!(conn.take_shed(), 0);
}

#[test]
fn a_flood_of_pipelined_requests_costs_linear_time_and_bounded_state() {
    let n = 200_000;
    let mut conn = Http1Conn::new(false);
    let mut c = Counted::default();
    let reqs = b"GET /v1/models HTTP/1.1\r\n\r\n".repeat(n);
    let start = std::time::Instant::now();
    feed_all(&mut conn, &mut c, REQ, &reqs);
    feed_all(&mut conn, &mut c, RESP, &BODY_RESP.repeat(n));
    assert_eq!(conn.take_shed(), (n - MAX_PIPELINED) as u64);
    assert_eq!(c.response_ends, MAX_PIPELINED);
    assert_eq!(conn.in_flight(), 0);
    assert_eq!(conn.shed_pending, 0);
    // A quadratic scan over a queue of this length would take minutes.
    assert!(start.elapsed().as_secs() < 30, "{:?}", start.elapsed());
}

#[test]
fn an_abort_forgets_the_shed_requests() {
    let mut conn = Http1Conn::new(false);
    let mut c = Counted::default();
    feed_all(&mut conn, &mut c, REQ, &BODY_REQ.repeat(MAX_PIPELINED + 5));
    // A broken response breaks FIFO matching: everything open is aborted, shed ones forgotten.
    feed_all(
        &mut conn,
        &mut c,
        RESP,
        b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
    );
    assert_eq!(c.aborted, MAX_PIPELINED);
    assert_eq!(conn.shed_pending, 0);
    feed_all(&mut conn, &mut c, REQ, BODY_REQ);
    feed_all(&mut conn, &mut c, RESP, BODY_RESP);
    assert_eq!(c.request_heads, MAX_PIPELINED + 1);
    assert_eq!(c.response_ends, 1);
}

proptest! {
    /// The `memchr` head-end search says what the byte-window search it replaced said, on bytes
    /// made mostly of line ends; and allow-listed names are found whatever their case.
    #[test]
    fn head_end_and_allowed_names_as_before(
        data in proptest::collection::vec(
            prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), any::<u8>()],
            0..64,
        ),
        pick in 0..ALLOWED_HEADERS.len(),
        upper in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let windows = data
            .windows(2)
            .enumerate()
            .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && data.get(i + 2) == Some(&b'\n')));
        prop_assert_eq!(has_head_end(&data), windows);
        let name: String = ALLOWED_HEADERS[pick]
            .chars()
            .zip(upper.iter().cycle())
            .map(|(c, &u)| if u { c.to_ascii_uppercase() } else { c })
            .collect();
        prop_assert_eq!(allowed_name(&name), Some(ALLOWED_HEADERS[pick]));
        prop_assert_eq!(allowed_name(&format!("{name}x")), None);
        prop_assert_eq!(allowed_name(""), None);
    }
}
