//! A connection on the HTTP/2 path: when it is taken for HTTP/2, and its parser and streams.
//!
//! Detection (whatever delivered the bytes — syscalls or a TLS library's plaintext):
//! - seen from its start: the client's first bytes are the connection preface, or the server's
//!   first bytes are a SETTINGS frame (servers may write theirs before reading the preface);
//! - picked up mid-stream: a syscall's bytes parse as HTTP/2 frames while no HTTP/1 exchange is
//!   in flight (header blocks then stay unknown; DATA is still read).

use std::sync::atomic::Ordering;

use crate::exchange::h2::{H2Effects, H2Streams};
use crate::exchange::Work;
use crate::protocol::http2::{looks_like_frames, H2Event, Http2Conn, PREFACE};
use crate::protocol::{Direction, Segment};
use crate::stats::Stats;

pub(super) struct H2State {
    parser: Http2Conn,
    streams: H2Streams,
    /// The peer closed its side (read returned 0).
    pub(super) peer_closed: bool,
}

/// Whether the first bytes of a direction (at stream position 0 of a connection seen from its
/// start) open an HTTP/2 connection.
pub(super) fn starts_http2(dir: Direction, data: &[u8]) -> bool {
    match dir {
        Direction::Request => {
            let n = data.len().min(PREFACE.len());
            n >= 4 && data[..n] == PREFACE[..n]
        }
        // The server's connection preface is a SETTINGS frame.
        Direction::Response => data.len() >= 9 && data[3] == 4 && looks_like_frames(data),
    }
}

/// Whether a syscall's bytes on a connection picked up mid-stream are HTTP/2 frames.
pub(super) fn frames_mid_stream(seg: &Segment<'_>) -> bool {
    seg.syscall_start && looks_like_frames(seg.data)
}

impl H2State {
    pub(super) fn new(from_start: bool, stats: &Stats) -> H2State {
        stats.http2_connections.fetch_add(1, Ordering::Relaxed);
        H2State {
            parser: Http2Conn::new(from_start),
            streams: H2Streams::new(),
            peer_closed: false,
        }
    }

    fn apply(
        streams: &mut H2Streams,
        dir: Direction,
        ev: H2Event<'_>,
        fx: &mut H2Effects,
        done: &mut Vec<Work>,
    ) {
        let e = streams.on_event(dir, ev, done);
        fx.add(&e);
    }

    pub(super) fn feed(
        &mut self,
        dir: Direction,
        seg: Segment<'_>,
        stats: &Stats,
        done: &mut Vec<Work>,
    ) {
        let mut fx = H2Effects::default();
        let streams = &mut self.streams;
        self.parser.feed(dir, seg, &mut |ev| {
            Self::apply(streams, dir, ev, &mut fx, done)
        });
        self.stop_if_dropped();
        count(&fx, stats);
    }

    pub(super) fn gap(&mut self, dir: Direction, len: u64, stats: &Stats, done: &mut Vec<Work>) {
        let mut fx = H2Effects::default();
        let streams = &mut self.streams;
        self.parser.gap(dir, len, &mut |ev| {
            Self::apply(streams, dir, ev, &mut fx, done)
        });
        self.stop_if_dropped();
        count(&fx, stats);
    }

    /// The streams found hostile traffic over a limit (rapid resets, stream exhaustion): the
    /// parser stops too, so that later bytes cost nothing.
    fn stop_if_dropped(&mut self) {
        if self.streams.dropped() && !self.parser.dropped() {
            self.parser.drop_state();
        }
    }

    /// Bytes held: frames and header blocks being assembled, the HPACK dynamic tables, and what
    /// the streams hold.
    pub(super) fn buffered(&self) -> usize {
        self.parser.buffered() + self.streams.buffered()
    }

    /// Over the buffer budget: the streams drop what they hold and the HPACK tables are
    /// forgotten (later header blocks are unknown, as on a connection picked up mid-stream);
    /// the framing is kept.
    pub(super) fn shed_buffers(&mut self) {
        self.streams.shed_buffers();
        self.parser.drop_tables();
    }

    pub(super) fn close(&mut self, ts_ns: u64, done: &mut Vec<Work>) {
        self.streams.close(ts_ns, self.peer_closed, done);
    }
}

fn count(fx: &H2Effects, stats: &Stats) {
    for (counter, n) in [
        (&stats.grpc_messages, fx.grpc_messages),
        (&stats.grpc_messages_skipped, fx.grpc_skipped),
        (&stats.ext_proc_decode_failures, fx.ext_proc_failures),
        (&stats.http2_streams_shed, fx.streams_shed),
        (&stats.http2_frame_errors, fx.parse_errors),
        (
            &stats.http2_header_lists_too_large,
            fx.header_lists_too_large,
        ),
        (&stats.http2_continuation_floods, fx.continuation_floods),
        (&stats.http2_settings_floods, fx.settings_floods),
        (&stats.http2_ping_floods, fx.ping_floods),
        (&stats.http2_rapid_reset_floods, fx.rapid_reset_floods),
        (&stats.http2_stream_floods, fx.stream_floods),
        (&stats.http2_connections_dropped, fx.dropped),
    ] {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
