//! Every API a model server speaks, end to end: recorded exchanges (`agent/tests/fixtures/apis`,
//! format in the README there) go through the HTTP/1.1 parser, request assembly and span
//! building; the span's name, status and attributes must be the fixture's. Each fixture is
//! replayed whole, split in two at every byte offset, and one byte at a time.
//! `INFERTAP_BLESS=1` rewrites the expectations (review the diff).

use super::{Exchange, ExchangeTracker};
use crate::capture::clock::WallClock;
use crate::conn::ConnMeta;
use crate::protocol::http1::Http1Conn;
use crate::protocol::{Direction, Segment};
use crate::trace::build::{build_span, BuildOptions, IdGenerator};
use crate::trace::span::{AttrValue, SpanStatus};

const MS: u64 = 1_000_000;

/// One write of the exchange: its direction, time and bytes.
struct Write {
    dir: Direction,
    ts_ns: u64,
    bytes: Vec<u8>,
}

struct Fixture {
    writes: Vec<Write>,
    expect: String,
}

/// The request: `METHOD PATH`, header lines, a blank line, the body (one line). The response:
/// `--- STATUS CONTENT-TYPE`, then its writes, separated by blank lines; an SSE write's lines
/// are joined by `\n` and end with a blank line (one event per write). The request is read at
/// 0 and 1 ms, the response head written at 10 ms, write `k` at `10 + 5 (k + 1)` ms.
fn parse(text: &str) -> Fixture {
    let (script, expect) = text.split_once("== expect\n").expect("an expectation");
    let lines: Vec<&str> = script.lines().filter(|l| !l.starts_with("# ")).collect();
    let resp_at = lines
        .iter()
        .position(|l| l.starts_with("--- "))
        .expect("a response");
    let (req, resp) = lines.split_at(resp_at);
    let req_line = req[0];
    let blank = req.iter().position(|l| l.is_empty()).unwrap_or(req.len());
    let headers = &req[1..blank];
    let body = req[blank..].iter().find(|l| !l.is_empty()).unwrap_or(&"");
    // A form (an audio upload) spells its CRLFs `\r\n`.
    let form = headers.iter().any(|h| h.contains("multipart/"));
    let body = if form {
        body.replace("\\r\\n", "\r\n")
    } else {
        body.to_string()
    };
    let mut head = format!("{req_line} HTTP/1.1\r\nhost: model:8000\r\n");
    for h in headers {
        head.push_str(&format!("{h}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));

    let mut parts = resp[0]["--- ".len()..].splitn(2, ' ');
    let status = parts.next().unwrap();
    let content_type = parts.next().unwrap_or("application/json");
    let sse = content_type.starts_with("text/event-stream");
    let mut bodies: Vec<String> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for l in resp[1..].iter().chain([&""]) {
        if l.is_empty() {
            if !current.is_empty() {
                let joined = current.join("\n");
                bodies.push(if sse { joined + "\n\n" } else { joined });
                current.clear();
            }
        } else {
            current.push(l);
        }
    }
    let mut writes = vec![
        Write {
            dir: Direction::Request,
            ts_ns: 0,
            bytes: head.into_bytes(),
        },
        Write {
            dir: Direction::Request,
            ts_ns: MS,
            bytes: body.as_bytes().to_vec(),
        },
    ];
    if sse {
        writes.push(Write {
            dir: Direction::Response,
            ts_ns: 10 * MS,
            bytes: format!("HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n").into_bytes(),
        });
        for (k, b) in bodies.iter().enumerate() {
            writes.push(Write {
                dir: Direction::Response,
                ts_ns: (10 + 5 * (k as u64 + 1)) * MS,
                bytes: format!("{:x}\r\n{b}\r\n", b.len()).into_bytes(),
            });
        }
        let end = (10 + 5 * (bodies.len() as u64 + 1)) * MS;
        writes.push(Write {
            dir: Direction::Response,
            ts_ns: end,
            bytes: b"0\r\n\r\n".to_vec(),
        });
    } else {
        let body = bodies.concat();
        writes.push(Write {
            dir: Direction::Response,
            ts_ns: 10 * MS,
            bytes: format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes(),
        });
        writes.push(Write {
            dir: Direction::Response,
            ts_ns: 15 * MS,
            bytes: body.into_bytes(),
        });
    }
    Fixture {
        writes,
        expect: expect.to_string(),
    }
}

#[derive(Clone, Copy)]
enum Split {
    Whole,
    At(usize),
    Bytes,
}

/// The exchanges of one replay.
fn replay(fx: &Fixture, split: Split) -> Vec<Exchange> {
    let mut parser = Http1Conn::new(false);
    let mut tracker = ExchangeTracker::new();
    let mut done = Vec::new();
    let mut offset = 0;
    for w in &fx.writes {
        let mut feed = |data: &[u8], start: bool| {
            let seg = Segment {
                ts_ns: w.ts_ns,
                data,
                syscall_start: start,
            };
            parser.feed(w.dir, seg, &mut |ev| {
                tracker.on_event(ev, &mut done);
            });
        };
        match split {
            Split::At(k) if k > offset && k < offset + w.bytes.len() => {
                let (a, b) = w.bytes.split_at(k - offset);
                feed(a, true);
                feed(b, false);
            }
            Split::Bytes => {
                for (j, b) in w.bytes.iter().enumerate() {
                    feed(std::slice::from_ref(b), j == 0);
                }
            }
            Split::Whole | Split::At(_) => feed(&w.bytes, true),
        }
        offset += w.bytes.len();
    }
    done
}

struct Ids;
impl IdGenerator for Ids {
    fn trace_id(&mut self) -> [u8; 16] {
        [7; 16]
    }
    fn span_id(&mut self) -> [u8; 8] {
        [9; 8]
    }
}

fn value(v: &AttrValue) -> String {
    match v {
        AttrValue::Str(s) => format!("{s:?}"),
        AttrValue::I64(n) => n.to_string(),
        AttrValue::F64(x) => format!("{x:.4}"),
        AttrValue::Bool(b) => b.to_string(),
        AttrValue::StrArray(a) => format!("{a:?}"),
    }
}

/// The spans of the exchanges: name, status, every attribute in order (the connection's
/// addresses and pid left out: they are the test's).
fn render(done: &[Exchange]) -> String {
    let meta = ConnMeta {
        pid: 1,
        local: Some("10.0.0.2:8000".parse().unwrap()),
        peer: Some("10.0.0.1:40000".parse().unwrap()),
        server: true,
        provider: "vllm",
    };
    let clock = WallClock::with_offset(0);
    let mut out = String::new();
    for ex in done {
        let s = build_span(ex, &meta, &clock, &BuildOptions::default(), &mut Ids).span;
        out.push_str(&format!("span {:?}\n", s.name));
        if let SpanStatus::Error(e) = &s.status {
            out.push_str(&format!("status error {e:?}\n"));
        }
        for (k, v) in &s.attributes {
            if k.starts_with("server.") || k.starts_with("client.") || k == "process.pid" {
                continue;
            }
            out.push_str(&format!("{k} = {}\n", value(v)));
        }
    }
    out
}

fn check(name: &str, text: &str) {
    let fx = parse(text);
    let got = render(&replay(&fx, Split::Whole));
    if std::env::var_os("INFERTAP_BLESS").is_some() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/apis/{name}.txt"));
        let (script, _) = text.split_once("== expect\n").unwrap();
        std::fs::write(path, format!("{script}== expect\n{got}")).unwrap();
    } else {
        assert_eq!(got, fx.expect, "fixture {name}, whole");
    }
    assert!(
        !got.contains("SECRET"),
        "fixture {name}: generated or prompt text reached the span"
    );
    let total: usize = fx.writes.iter().map(|w| w.bytes.len()).sum();
    for k in 1..total {
        assert_eq!(
            render(&replay(&fx, Split::At(k))),
            got,
            "fixture {name}, split at byte {k}"
        );
    }
    assert_eq!(
        render(&replay(&fx, Split::Bytes)),
        got,
        "fixture {name}, one byte at a time"
    );
}

macro_rules! fixtures {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            check(
                stringify!($name),
                include_str!(concat!("../../tests/fixtures/apis/", stringify!($name), ".txt")),
            );
        }
    )*};
}

fixtures! {
    chat_vllm_metrics_stream,
    chat_llama_cpp_timings,
    responses_stream,
    responses_nonstream,
    messages_stream,
    messages_nonstream,
    messages_stream_error,
    tgi_generate_stream,
    tgi_generate,
    sglang_generate_stream,
    sglang_generate,
    tgi_error,
    rerank,
    score,
    classify,
    pooling,
    transcription,
    transcription_stream,
    tokenize,
    detokenize,
}
