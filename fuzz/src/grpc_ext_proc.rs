//! gRPC message framing (`protocol::grpc`) and ext_proc decoding (`protocol::ext_proc`, `epp`) on
//! any bytes: the stream is cut into pieces, deframed, every message decoded as a
//! `ProcessingRequest` and a `ProcessingResponse` and applied to an ext_proc stream. Checks beyond
//! "no panic": a decision's endpoints and headers stay bounded and allow-listed, and one stream
//! makes at most one decision (held for its outcome or not).

use infertap::epp::{ExtProcStream, MAX_ENDPOINTS};
use infertap::protocol::ext_proc::{decode_request, decode_response};
use infertap::protocol::grpc::{GrpcDeframer, GrpcMessage};

/// The fuzz target's entry point (also replayed on `fuzz/regressions/` by `cargo test`).
pub fn run(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let mut deframer = GrpcDeframer::new();
    let mut stream = ExtProcStream::new();
    let mut decisions = Vec::new();
    let step = usize::from(cut) % 37 + 1;
    for (i, piece) in rest.chunks(step).enumerate() {
        deframer.feed(piece, &mut |m| {
            if let GrpcMessage::Message(bytes) = m {
                if let Ok(req) = decode_request(bytes) {
                    decisions.extend(stream.on_request(i as u64, &req));
                }
                if let Ok(resp) = decode_response(bytes) {
                    decisions.extend(stream.on_response(i as u64, &resp));
                }
            }
        });
    }
    // Raw bytes as one message, too (no prefix needed to reach prost).
    if let Ok(req) = decode_request(rest) {
        decisions.extend(stream.on_request(0, &req));
    }
    if let Ok(resp) = decode_response(rest) {
        decisions.extend(stream.on_response(1, &resp));
    }
    decisions.extend(stream.finish(2));
    assert!(decisions.len() <= 1, "{} decisions", decisions.len());
    for d in &decisions {
        assert!(d.endpoints.len() <= MAX_ENDPOINTS && d.subset.len() <= MAX_ENDPOINTS);
        assert!(d.endpoints.iter().all(|e| e.len() <= 256));
        for (k, v) in &d.headers {
            assert!(*k != "authorization" && v.len() <= 256);
        }
    }
}
