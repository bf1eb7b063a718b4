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
    /// Streams found not to be HTTP/1.1 (given up on).
    streams_not_http,
    /// HTTP messages that could not be parsed (the parser resynchronised).
    http_parse_failures,
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
    /// Metric export requests accepted by the OTLP endpoint.
    metrics_exported,
    /// Metric export requests that failed (the values are sent again at the next interval).
    metrics_export_failed,
}

impl Stats {
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
