//! gRPC over HTTP/2: length-prefixed messages in one direction of a stream's DATA, the method path,
//! and status codes.
//!
//! Owns: the 5-byte message prefix (compressed flag, big-endian length), reassembly of a message
//! split over DATA frames, bounded by the deframer's limit (at most [`MAX_MESSAGE`], gRPC's
//! default maximum receive size; 0 for streams followed for framing only, whose messages are
//! counted and never copied). Compressed messages are counted and skipped: decompressing is not
//! worth a codec here.
//!
//! Must never: do I/O or panic; hold more than one message (≤ its limit) per deframer; keep a
//! message after handing it out.

/// gRPC's default maximum message size (grpc-go, grpc-core): larger messages are skipped.
pub const MAX_MESSAGE: usize = 4 << 20;

/// One message out of a deframer.
#[derive(Debug, PartialEq, Eq)]
pub enum GrpcMessage<'a> {
    /// A whole uncompressed message.
    Message(&'a [u8]),
    /// A compressed message (not decoded), its length.
    Compressed(u32),
    /// A message over [`MAX_MESSAGE`] (skipped), its length.
    TooLarge(u32),
    /// A message over the deframer's limit but within [`MAX_MESSAGE`]: framed (counted), not
    /// kept. Every message of a framing-only deframer (limit 0) that is not empty.
    Framed(u32),
}

/// Splits one direction of a stream's DATA into messages.
#[derive(Debug, Default)]
pub struct GrpcDeframer {
    prefix: [u8; 5],
    prefix_len: usize,
    /// The message being read: its length, whether it is kept, and what arrived.
    want: Option<(u32, bool)>,
    got: usize,
    buf: Vec<u8>,
    /// The largest message kept whole (at most [`MAX_MESSAGE`]); larger ones are [`GrpcMessage::Framed`].
    limit: usize,
    /// Bytes were lost: message boundaries are unknown for the rest of the stream.
    lost: bool,
    /// Messages seen (of any kind).
    pub messages: u64,
}

impl GrpcDeframer {
    /// Keeps messages up to [`MAX_MESSAGE`] (for streams whose messages are decoded).
    pub fn new() -> GrpcDeframer {
        GrpcDeframer::with_limit(MAX_MESSAGE)
    }

    /// Keeps messages up to `limit` bytes (capped at [`MAX_MESSAGE`]); 0: framing only.
    pub fn with_limit(limit: usize) -> GrpcDeframer {
        GrpcDeframer {
            limit: limit.min(MAX_MESSAGE),
            ..GrpcDeframer::default()
        }
    }

    /// Changes the limit for messages that start from now on.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_MESSAGE);
    }

    /// Bytes held of a message being reassembled.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// After a loss, the caller knows that a message starts here (the first bytes of an HTTP/2
    /// DATA frame, where gRPC writers start messages): read messages again. No effect otherwise.
    pub fn resume(&mut self) {
        if self.lost {
            self.lost = false;
            self.prefix_len = 0;
            self.want = None;
            self.got = 0;
        }
    }

    /// Bytes were lost: stop until [`Self::resume`] (a length prefix cannot be found again in a
    /// byte stream by itself).
    pub fn gap(&mut self) {
        self.lost = true;
        self.buf = Vec::new();
        self.want = None;
    }

    pub fn feed(&mut self, mut data: &[u8], out: &mut dyn FnMut(GrpcMessage<'_>)) {
        if self.lost {
            return;
        }
        while !data.is_empty() {
            let Some((len, keep)) = self.want else {
                let n = (5 - self.prefix_len).min(data.len());
                self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
                self.prefix_len += n;
                data = &data[n..];
                if self.prefix_len == 5 {
                    self.prefix_len = 0;
                    self.start(out);
                }
                continue;
            };
            let left = len as usize - self.got;
            let n = left.min(data.len());
            if keep {
                if self.got == 0 && n == left {
                    // The whole message is in this slice: no copy.
                    out(GrpcMessage::Message(&data[..n]));
                } else {
                    self.buf.extend_from_slice(&data[..n]);
                }
            }
            self.got += n;
            data = &data[n..];
            if self.got == len as usize {
                self.want = None;
                if keep && !self.buf.is_empty() {
                    out(GrpcMessage::Message(&self.buf));
                }
                self.buf = Vec::new();
            }
        }
    }

    /// A prefix was read.
    fn start(&mut self, out: &mut dyn FnMut(GrpcMessage<'_>)) {
        let compressed = self.prefix[0] & 1 == 1;
        let len = u32::from_be_bytes([
            self.prefix[1],
            self.prefix[2],
            self.prefix[3],
            self.prefix[4],
        ]);
        self.messages += 1;
        self.got = 0;
        let keep = if compressed {
            out(GrpcMessage::Compressed(len));
            false
        } else if len as usize > MAX_MESSAGE {
            out(GrpcMessage::TooLarge(len));
            false
        } else if len as usize > self.limit {
            out(GrpcMessage::Framed(len));
            false
        } else {
            true
        };
        if len == 0 {
            if keep {
                out(GrpcMessage::Message(&[]));
            }
            return;
        }
        self.want = Some((len, keep));
    }
}

/// `(service, method)` of a gRPC path `/package.Service/Method`.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// The canonical name of a gRPC status code.
pub fn status_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("_OTHER")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(compressed: bool, body: &[u8]) -> Vec<u8> {
        let mut v = vec![compressed as u8];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn collect(d: &mut GrpcDeframer, pieces: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        for p in pieces {
            d.feed(p, &mut |m| {
                out.push(match m {
                    GrpcMessage::Message(b) => String::from_utf8_lossy(b).into_owned(),
                    GrpcMessage::Compressed(n) => format!("compressed {n}"),
                    GrpcMessage::TooLarge(n) => format!("too large {n}"),
                    GrpcMessage::Framed(n) => format!("framed {n}"),
                })
            });
        }
        out
    }

    #[test]
    fn messages_at_every_split() {
        let mut stream = frame(false, b"hello");
        stream.extend(frame(true, b"zz"));
        stream.extend(frame(false, b""));
        stream.extend(frame(false, b"world!"));
        let want = vec!["hello", "compressed 2", "", "world!"];
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let mut d = GrpcDeframer::new();
                let got = collect(&mut d, &[&stream[..i], &stream[i..j], &stream[j..]]);
                assert_eq!(got, want, "split at {i}, {j}");
                assert_eq!(d.messages, 4);
            }
        }
    }

    #[test]
    fn oversized_messages_are_skipped_and_a_gap_stops_the_stream() {
        let mut d = GrpcDeframer::new();
        let mut head = vec![0u8];
        head.extend_from_slice(&((MAX_MESSAGE as u32) + 1).to_be_bytes());
        assert_eq!(
            collect(&mut d, &[&head, &[0u8; 100]]),
            vec![format!("too large {}", MAX_MESSAGE + 1)]
        );
        d.gap();
        assert!(collect(&mut d, &[&frame(false, b"x")]).is_empty());
        assert!(d.is_lost());
    }

    #[test]
    fn a_framing_only_deframer_counts_messages_and_holds_no_bytes() {
        let body = vec![7u8; 3 << 20];
        let stream = frame(false, &body);
        let mut d = GrpcDeframer::with_limit(0);
        let mut out = Vec::new();
        let mut held = 0;
        for piece in stream.chunks(16 << 10) {
            out.extend(collect(&mut d, &[piece]));
            held = held.max(d.buffered());
        }
        assert_eq!(out, vec![format!("framed {}", 3 << 20)]);
        assert_eq!(held, 0);
        assert_eq!(d.messages, 1);
        // A limit keeps messages up to it, whole.
        let mut d = GrpcDeframer::with_limit(8);
        let s = [frame(false, b"small"), frame(false, b"over the limit")].concat();
        assert_eq!(
            collect(&mut d, &[&s[..3], &s[3..]]),
            vec!["small", "framed 14"]
        );
    }

    #[test]
    fn paths_and_status_names() {
        assert_eq!(
            split_path("/envoy.service.ext_proc.v3.ExternalProcessor/Process"),
            Some(("envoy.service.ext_proc.v3.ExternalProcessor", "Process"))
        );
        assert_eq!(split_path("/v1/chat/completions"), None);
        assert_eq!(split_path("/x"), None);
        assert_eq!(status_name(14), "UNAVAILABLE");
        assert_eq!(status_name(99), "_OTHER");
    }
}
