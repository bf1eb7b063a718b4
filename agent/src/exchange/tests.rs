//! Bounds of one exchange fed an endless stream.

use super::*;
use crate::protocol::http::{RequestHead, ResponseHead};
use crate::protocol::openai::fields;

const MS: u64 = 1_000_000;

fn request() -> RequestHead {
    RequestHead {
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        minor_version: 1,
        content_length: None,
        chunked: false,
        headers: vec![],
    }
}

fn sse_head() -> ResponseHead {
    ResponseHead {
        status: 200,
        minor_version: 1,
        content_length: None,
        chunked: true,
        headers: vec![("content-type", "text/event-stream".into())],
    }
}

/// Gap `i` (between chunk `i` and `i + 1`): 10 ms plus up to 9.9 ms, a repeating pattern.
fn gap(i: u64) -> u64 {
    10 * MS + (i * 37 % 100) * MS / 10
}

/// Bytes an exchange retains for its per-chunk collections (not counting fixed fields).
fn retained(ex: &Exchange) -> usize {
    let marker = fields::id(fields::Body::Response, "choices[*]");
    ex.content_chunk_ns.capacity() * 8
        + ex.later_gaps.as_ref().map_or(0, |g| g.size_bytes())
        + ex.finish_reasons.capacity() * std::mem::size_of::<String>()
        + ex.response_values.rows(marker).rows.len()
            * fields::FIELDS
                .iter()
                .filter(|f| fields::holds("choices[*]", f.path))
                .count()
            * std::mem::size_of::<crate::protocol::openai::Value>()
}

#[test]
fn a_million_chunk_stream_costs_bounded_memory_with_exact_counts() {
    const N: u64 = 1_000_000;
    let mut t = ExchangeTracker::new();
    let mut done = Vec::new();
    t.on_event(
        HttpEvent::RequestHead {
            ts_ns: 0,
            head: request(),
        },
        &mut done,
    );
    t.on_event(HttpEvent::RequestEnd { ts_ns: MS }, &mut done);
    t.on_event(
        HttpEvent::ResponseHead {
            ts_ns: 2 * MS,
            head: sse_head(),
        },
        &mut done,
    );
    // Every chunk carries content and a finish reason (a hostile server, or a hostile replay).
    let event =
        b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\n\n";
    let mut ts = 3 * MS;
    let mut gaps = Vec::with_capacity(N as usize);
    let mut peak = 0;
    for i in 0..N {
        if i > 0 {
            let g = gap(i);
            gaps.push(g);
            ts += g;
        }
        t.on_event(
            HttpEvent::ResponseBody {
                ts_ns: ts,
                data: event,
            },
            &mut done,
        );
        if i % 100_000 == 0 {
            let (_, chunks) = t.in_flight_chunks().next().unwrap();
            assert!(chunks.len() <= CHUNK_TIMES_MAX);
            peak = peak.max(retained(&t.in_flight[0].ex));
        }
    }
    t.on_event(HttpEvent::ResponseEnd { ts_ns: ts }, &mut done);
    let ex = done.pop().unwrap();
    peak = peak.max(retained(&ex));
    eprintln!("retained per-chunk collections after {N} chunks: {peak} bytes");
    assert!(peak <= 256 << 10, "{peak} bytes");

    assert_eq!(ex.content_chunks, N);
    assert_eq!(ex.content_chunk_ns.len(), CHUNK_TIMES_MAX);
    assert_eq!(ex.last_chunk_ns, Some(ts));
    let later = ex.later_gaps.as_deref().unwrap();
    assert_eq!(later.count(), N - CHUNK_TIMES_MAX as u64);
    assert_eq!(ex.finish_reasons.len(), FINISH_REASONS_MAX);
    assert_eq!(ex.finish_reasons_dropped, N - FINISH_REASONS_MAX as u64);
    assert_eq!(ex.sse_events, N);

    let stats = crate::trace::build::stream_gap_stats(&ex.content_chunk_ns, Some(later)).unwrap();
    let sum: u64 = gaps.iter().sum();
    let max = *gaps.iter().max().unwrap();
    assert!((stats.mean_s - sum as f64 / 1e9 / gaps.len() as f64).abs() < 1e-12);
    assert_eq!(stats.max_s, max as f64 / 1e9);
    gaps.sort_unstable();
    let n = gaps.len();
    for (p, got) in [(0.50, stats.p50_s), (0.95, stats.p95_s)] {
        let want = gaps[((p * n as f64).ceil() as usize).clamp(1, n) - 1] as f64 / 1e9;
        assert!(
            (got - want).abs() <= gaps::RELATIVE_ERROR * want,
            "p{p}: {got} vs {want}"
        );
    }
}

#[test]
fn a_stream_under_the_bound_keeps_every_time_and_no_sketch() {
    let mut t = ExchangeTracker::new();
    let mut done = Vec::new();
    t.on_event(
        HttpEvent::RequestHead {
            ts_ns: 0,
            head: request(),
        },
        &mut done,
    );
    t.on_event(
        HttpEvent::ResponseHead {
            ts_ns: MS,
            head: sse_head(),
        },
        &mut done,
    );
    let event = b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";
    for i in 0..CHUNK_TIMES_MAX as u64 {
        t.on_event(
            HttpEvent::ResponseBody {
                ts_ns: (i + 2) * MS,
                data: event,
            },
            &mut done,
        );
    }
    t.on_event(HttpEvent::ResponseEnd { ts_ns: 9_999 * MS }, &mut done);
    let ex = done.pop().unwrap();
    assert_eq!(ex.content_chunk_ns.len(), CHUNK_TIMES_MAX);
    assert_eq!(ex.content_chunks, CHUNK_TIMES_MAX as u64);
    assert!(ex.later_gaps.is_none());
}

#[test]
fn pipelined_requests_past_the_parsers_bound_open_no_exchange() {
    use crate::protocol::http1::{Http1Conn, MAX_PIPELINED};
    use crate::protocol::{Direction, Segment};
    let mut parser = Http1Conn::new(false);
    let mut t = ExchangeTracker::new();
    let mut done = Vec::new();
    let mut most = 0;
    let requests = b"GET /v1/models HTTP/1.1\r\n\r\n".repeat(10_000);
    let seg = Segment {
        ts_ns: 1,
        data: &requests,
        syscall_start: true,
    };
    parser.feed(Direction::Request, seg, &mut |ev| {
        t.on_event(ev, &mut done);
        most = most.max(t.in_flight());
    });
    assert_eq!(most, MAX_PIPELINED);
    assert_eq!(parser.take_shed(), 10_000 - MAX_PIPELINED as u64);
    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 43\r\n\r\n{\"object\":\"list\",\"data\":[{\"id\":\"llama\"}]}  "
        .repeat(10_000);
    let seg = Segment {
        ts_ns: 2,
        data: &answer,
        syscall_start: true,
    };
    parser.feed(Direction::Response, seg, &mut |ev| {
        t.on_event(ev, &mut done);
    });
    assert_eq!(
        done.len(),
        MAX_PIPELINED,
        "one exchange per reported request"
    );
    assert!(done.iter().all(|ex| ex.served_models == ["llama"]));
    assert_eq!(t.in_flight(), 0);
}
