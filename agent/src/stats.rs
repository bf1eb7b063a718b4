//! The agent's own counters: every record read or lost, every parse failure, every span exported
//! or dropped. Each stage bumps its counters here; `/status`, `/metrics` and OTLP read them.
//! Nothing in this module does I/O.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident ),* $(,)?) => {
        /// Monotonic counters, shared by every stage through an `Arc<Stats>`.
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[doc = $doc])* pub $name: AtomicU64, )*
        }

        impl Stats {
            /// Every counter with its name, in declaration order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name.load(Ordering::Relaxed)), )* ]
            }

            /// One counter by name (`None` for an unknown name).
            pub fn get(&self, name: &str) -> Option<u64> {
                match name {
                    $( stringify!($name) => Some(self.$name.load(Ordering::Relaxed)), )*
                    _ => None,
                }
            }

            /// Every counter's name with its doc comment (one `&str` per doc line), in declaration
            /// order: the help text of `/metrics`.
            pub fn descriptions() -> &'static [(&'static str, &'static [&'static str])] {
                &[ $( (stringify!($name), &[ $($doc),* ]), )* ]
            }
        }
    };
}

counters! {
    /// Ring buffer records decoded.
    records_read,
    /// Payload bytes received from the kernel.
    bytes_read,
    /// Records too short or of an unknown kind (a kernel/agent ABI mismatch).
    records_malformed,
    /// Bytes the kernel transferred that never reached userspace (dropped or not copied).
    bytes_lost,
    /// Records the kernel could not deliver (all reasons, all CPUs; per reason in `/status` and
    /// `infertap_kernel_records_dropped_total`).
    records_dropped_in_kernel,
    /// Connections opened (accepted, connected, or found already open).
    connections_opened,
    /// Connections closed.
    connections_closed,
    /// Connections evicted after being idle.
    connections_evicted,
    /// Connections dropped because the connection table was full.
    connections_shed,
    /// Connections first seen through a record flagged as following a kernel loss (their open
    /// record was lost): what came before counts as lost bytes, and as a lost request where a
    /// request head was due.
    connections_after_loss,
    /// Connections the kernel closed with records of them lost and its close record refused
    /// too: nothing of their loss reached the agent, so the kernel counted them (each lost at
    /// least its unseen requests).
    connections_lost_in_kernel,
    /// Connections whose bytes held but not parsed yet (heads, SSE events, JSON tails, HTTP/2
    /// frames, ext_proc messages) went over the per-connection budget (`--conn-buffer-bytes`):
    /// their parse state was shed, their requests in flight marked incomplete, and parsing
    /// resynchronised.
    buffer_sheds_connection,
    /// Connections shed because all connections together held more than `--buffer-budget-bytes`
    /// (the ones holding the most, until a quarter of it was free).
    buffer_sheds_global,
    /// Traced sockets forgotten because their descriptor was closed.
    sockets_forgotten_close,
    /// Traced sockets forgotten because `close_range` (or `closefrom`) covered their descriptor.
    sockets_forgotten_close_range,
    /// Traced sockets forgotten because `dup2`/`dup3` put another file on their descriptor.
    sockets_forgotten_dup,
    /// Traced sockets forgotten because their process exec'd (sockets that survive exec are
    /// rediscovered).
    sockets_forgotten_exec,
    /// Traced sockets forgotten because `/proc/<pid>/fd` showed their descriptor no longer names
    /// them (closed where the kernel programs cannot see, e.g. through io_uring).
    sockets_forgotten_reconcile,
    /// Streams found not to be HTTP/1.1 (given up on).
    streams_not_http,
    /// HTTP messages that could not be parsed (the parser resynchronised).
    http_parse_failures,
    /// HTTP/1 requests pipelined beyond `protocol::http1::MAX_PIPELINED` open exchanges on one
    /// connection: framed and skipped, no span (nor their responses).
    http_requests_shed,
    /// SSE events that could not be framed or decoded.
    sse_parse_failures,
    /// JSON request or response bodies that did not scan as one complete object.
    json_parse_failures,
    /// Requests completed (response fully written).
    requests_completed,
    /// Requests cancelled by the client (connection closed before the response ended).
    requests_cancelled,
    /// Requests the server abandoned (closed the connection before the response ended, without
    /// the client having closed first).
    requests_server_aborted,
    /// Requests whose bytes were partly lost (gaps): their spans are marked incomplete.
    requests_incomplete,
    /// Requests whose head the kernel could not deliver (ring buffer full): no span, only this
    /// count (at least one per loss).
    requests_lost,
    /// Spans finished and handed to the exporters.
    spans_finished,
    /// Spans accepted by the OTLP endpoint.
    spans_exported,
    /// Spans the OTLP exporter failed to deliver.
    spans_export_failed,
    /// Spans shed because the export queue was full.
    spans_export_dropped,
    /// Spans the trace sampler (`OTEL_TRACES_SAMPLER`) kept from OTLP export (still on `/spans`).
    spans_not_sampled,
    /// Spans the tail policy (`OTEL_TRACES_SAMPLER=infertap_tail`) exported for an error status
    /// (`infertap.sampling.reason` `error`); the seven below count the other reasons.
    spans_kept_error,
    /// Exported by the tail policy: the server aborted the response.
    spans_kept_server_aborted,
    /// Exported by the tail policy: the client cancelled.
    spans_kept_cancelled,
    /// Exported by the tail policy: bytes were lost (incomplete).
    spans_kept_incomplete,
    /// Exported by the tail policy: time to first token over the model's threshold.
    spans_kept_slow_ttft,
    /// Exported by the tail policy: inter-token p95 over the model's threshold.
    spans_kept_slow_itl,
    /// Exported by the tail policy: duration over the model's threshold.
    spans_kept_slow_duration,
    /// Exported by the tail policy: an ordinary request in the kept ratio (by trace id).
    spans_kept_ratio,
    /// Metric export requests accepted by the OTLP endpoint.
    metrics_exported,
    /// Metric export requests that failed (the values are sent again at the next interval).
    metrics_export_failed,
    /// TLS plaintext records (Go `crypto/tls` and OpenSSL uprobes).
    tls_records,
    /// TLS plaintext bytes received from the kernel.
    tls_bytes,
    /// Connections whose TLS plaintext was captured and parsed.
    tls_streams,
    /// Connections seen carrying TLS records at the socket (ciphertext, skipped, not counted as
    /// bad input); their plaintext is parsed only where a TLS uprobe captured it.
    tls_ciphertext_streams,
    /// TLS uprobes attached (one per probed instruction of a binary or library).
    tls_uprobes_attached,
    /// Binaries or libraries of targeted processes whose TLS could not be probed (see `/status`
    /// `tls` for why).
    tls_attach_failures,
    /// Connections taken as HTTP/2 (client preface, server SETTINGS, or frames mid-stream).
    http2_connections,
    /// HTTP/2 frames or header blocks that could not be parsed (garbage, HPACK failures): the
    /// parser resynchronised or marked header blocks unknown.
    http2_frame_errors,
    /// HTTP/2 streams not followed because a connection already had its maximum.
    http2_streams_shed,
    /// HTTP/2 header blocks whose decoded list was over 64 KiB (name + value + 32 per field; an
    /// HPACK bomb): the connection's HTTP/2 state was dropped. As the five below, each counts the
    /// attack that made one connection be dropped.
    http2_header_lists_too_large,
    /// HTTP/2 header blocks of more than 8 CONTINUATION frames.
    http2_continuation_floods,
    /// HTTP/2 SETTINGS frames over their budget (1000, then 100 a second, per direction).
    http2_settings_floods,
    /// HTTP/2 PING frames over their budget (1000, then 100 a second, per direction).
    http2_ping_floods,
    /// HTTP/2 streams reset by the client before their response over their budget (1000, then
    /// 33 a second).
    http2_rapid_reset_floods,
    /// HTTP/2 connections that opened more than 256 streams beyond the ones followed, or with ids
    /// that did not increase (stream exhaustion).
    http2_stream_floods,
    /// HTTP/2 connections whose state was dropped for hostile traffic (any of the above): their
    /// later bytes are not parsed.
    http2_connections_dropped,
    /// gRPC messages read from HTTP/2 streams.
    grpc_messages,
    /// gRPC messages not decoded: compressed, or over the 4 MiB bound.
    grpc_messages_skipped,
    /// gRPC messages of ext_proc streams that were not valid ext_proc protobuf.
    ext_proc_decode_failures,
    /// NVML calls that failed (other than `NOT_FOUND`, which means an idle GPU); per call in `/gpu`.
    gpu_nvml_call_errors,
    /// Lines of a dcgm-exporter scrape that could not be parsed (skipped).
    gpu_dcgm_lines_malformed,
    /// Polls of a model server's own `/metrics` (`--runtime-poll-interval`) that gave no sample:
    /// no listener, connect/read failure or timeout, non-200, body over the bound, no load
    /// figure, or the pipeline's queue full (per server, with the reason, in `/status`
    /// `runtime_poll`).
    runtime_poll_failures,
    /// Connections of the agent's own `/metrics` poll seen accepted by a traced server and not
    /// traced (no span, no request metric).
    runtime_poll_connections_untraced,
}

impl Stats {
    /// The counter of sockets forgotten for `cause` (`infertap_common::FORGET_*`); unknown
    /// causes count as closes.
    pub fn socket_forgotten(&self, cause: u32) -> &AtomicU64 {
        match cause {
            infertap_common::FORGET_CLOSE_RANGE => &self.sockets_forgotten_close_range,
            infertap_common::FORGET_DUP => &self.sockets_forgotten_dup,
            infertap_common::FORGET_EXEC => &self.sockets_forgotten_exec,
            infertap_common::FORGET_RECONCILE => &self.sockets_forgotten_reconcile,
            _ => &self.sockets_forgotten_close,
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_reads_the_named_counter_and_agrees_with_the_snapshot() {
        let s = Stats::default();
        Stats::add(&s.spans_finished, 3);
        assert_eq!(s.get("spans_finished"), Some(3));
        assert_eq!(s.get("no_such_counter"), None);
        for (name, v) in s.snapshot() {
            assert_eq!(s.get(name), Some(v), "{name}");
        }
    }
}
