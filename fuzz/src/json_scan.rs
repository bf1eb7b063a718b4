//! `protocol::json_scan` on any bytes. Differential: fed whole, in pieces (cut where the first
//! bytes say) and one byte at a time, the scanners must agree; whenever serde_json accepts the
//! body as an object, the scan must complete and agree with it on the request fields.

use infertap::protocol::json_scan::STRING_MAX;
use infertap::protocol::openai::{RequestScan, ResponseScan};
use serde_json::Value;

fn request(feeds: &[&[u8]]) -> String {
    let mut s = RequestScan::new();
    for f in feeds {
        s.feed(f);
    }
    let r = s.finish();
    format!("{r:?} {:?}", s.fields())
}

fn response(feeds: &[&[u8]]) -> String {
    let mut s = ResponseScan::new();
    for f in feeds {
        s.feed(f);
    }
    let r = s.finish();
    format!("{r:?} {:?}", s.fields())
}

/// The fuzz target's entry point (also replayed on `fuzz/regressions/` by `cargo test`).
pub fn run(data: &[u8]) {
    let [a, b, c, body @ ..] = data else { return };
    let mut cuts =
        [usize::from(*a), usize::from(*b) * 3, usize::from(*c) * 7].map(|n| n.min(body.len()));
    cuts.sort_unstable();
    let feeds = [
        &body[..cuts[0]],
        &body[cuts[0]..cuts[1]],
        &body[cuts[1]..cuts[2]],
        &body[cuts[2]..],
    ];
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    let whole = request(&[body]);
    assert_eq!(request(&feeds), whole);
    assert_eq!(request(&bytes), whole);
    let whole = response(&[body]);
    assert_eq!(response(&feeds), whole);
    assert_eq!(response(&bytes), whole);

    if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(body) {
        let mut s = RequestScan::new();
        s.feed(body);
        assert_eq!(s.finish(), Ok(()), "serde_json accepts this body");
        let f = s.fields();
        let model = v.get("model").and_then(Value::as_str).map(|m| {
            let mut end = m.len().min(STRING_MAX);
            while !m.is_char_boundary(end) {
                end -= 1;
            }
            &m[..end]
        });
        assert_eq!(f.model.as_deref(), model);
        assert_eq!(f.stream, v.get("stream").and_then(Value::as_bool));
        assert_eq!(f.n, v.get("n").and_then(Value::as_i64));
        let include = v
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool);
        assert_eq!(f.include_usage, include);
        let mut r = ResponseScan::new();
        r.feed(body);
        assert_eq!(r.finish(), Ok(()));
    }
}
