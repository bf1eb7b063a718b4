//! W3C trace context: parsing `traceparent`, keeping `tracestate`, and the trace id derived from
//! `x-request-id` when a request carries no `traceparent`.
//!
//! ## The derived trace id
//! `trace_id = SHA-256("infertap/v1 x-request-id:" ‖ request_id)[0..16]`, where `request_id` is the
//! header value with surrounding whitespace removed. Every agent — on the EPP's node and on the model
//! server's — computes the same id for the same request, so their spans meet in one trace without
//! any coordination. The derived trace has no parent span.

use sha2::{Digest, Sha256};

use super::span::{SpanId, TraceId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

fn hex_nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None, // W3C: lower-case hex only
    }
}

fn hex_into(s: &[u8], out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = hex_nibble(pair[0])? << 4 | hex_nibble(pair[1])?;
    }
    Some(())
}

/// Parse a `traceparent` header value per W3C Trace Context level 1 (future versions are read by
/// their version-00 prefix, as the spec asks). Invalid values yield `None`.
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let v = value.trim().as_bytes();
    if v.len() < 55 {
        return None;
    }
    let (version, rest) = (&v[..2], &v[2..]);
    let mut ver = [0u8; 1];
    hex_into(version, &mut ver)?;
    if ver[0] == 0xff
        || (ver[0] == 0 && v.len() != 55)
        || (ver[0] > 0 && v.len() > 55 && v[55] != b'-')
    {
        return None;
    }
    if rest[0] != b'-' || rest[33] != b'-' || rest[50] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    let mut flags = [0u8; 1];
    hex_into(&rest[1..33], &mut trace_id)?;
    hex_into(&rest[34..50], &mut parent_id)?;
    hex_into(&rest[51..53], &mut flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        sampled: flags[0] & 1 == 1,
    })
}

/// The trace id derived from a request id (see the module docs for the formula).
pub fn trace_id_from_request_id(request_id: &str) -> TraceId {
    let mut h = Sha256::new();
    h.update(b"infertap/v1 x-request-id:");
    h.update(request_id.trim().as_bytes());
    let digest = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    if id == [0; 16] {
        id[15] = 1; // an all-zero trace id is invalid
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::hex;

    #[test]
    fn parses_a_valid_traceparent() {
        let tp =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&tp.parent_id), "00f067aa0ba902b7");
        assert!(tp.sampled);
        assert!(
            !parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .sampled
        );
    }

    #[test]
    fn rejects_invalid_traceparents() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        // A future version may append fields after a dash.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn derived_trace_id_is_stable_and_distinct() {
        let a = trace_id_from_request_id("req-1");
        assert_eq!(a, trace_id_from_request_id(" req-1 "));
        assert_ne!(a, trace_id_from_request_id("req-2"));
        // Pinned (computed independently: Python's hashlib.sha256(b"infertap/v1 x-request-id:abc"))
        // so that agents of different versions keep agreeing: change only with the formula.
        assert_eq!(
            hex(&trace_id_from_request_id("abc")),
            "dc7558bdd902dc5c641db3352fec72c2"
        );
    }
}
