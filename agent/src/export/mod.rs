//! The export stage: where finished spans and the agent's state leave the agent.
//!
//! Code map:
//! - [`store`] — the ring of recent spans behind `GET /spans`.
//! - [`otlp`] — OTLP span export: `OTEL_*` configuration, sampler, bounded queue, batching task
//!   over the OpenTelemetry SDK's exporter, and the exporter state.
//! - [`status`] — the `/status` model: what the app writes, what is read live from `Stats`.
//! - [`metrics`] — request metrics (GenAI and HTTP histograms, token and request counters) from
//!   each finished request's typed summary, for `/metrics` and OTLP metric export.
//! - [`prometheus`] — Prometheus text exposition and the [`prometheus::MetricSource`] hook.
//! - [`gpu`] — the GPU hub as `/gpu` shows it, the `hw.gpu.*` gauges and the `/status` part.
//! - [`ticks`] — content-chunk times of recent streamed requests (`/ticks`, the page's waterfall).
//! - [`page`] — the flight-recorder page at `GET /` (embedded HTML/CSS/JS) and its two JSON
//!   endpoints, `/ticks` and `/gpu/series`.
//! - [`debug`] — the HTTP debug endpoint over all of the above.
//!
//! [`SpanSink`] is the one entry point for finished spans: every span goes to the store, and the
//! sampled ones to the OTLP queue, and (when given one) into the request metrics.
//!
//! Invariants: nothing here blocks the producer of spans (the store is a short mutex, the queue a
//! `try_send`); memory is bounded (store capacity, queue capacity, one batch in flight); every
//! span shed is counted; the debug endpoint only reads.

pub mod debug;
pub mod gpu;
pub mod metrics;
pub mod otlp;
pub mod page;
pub mod prometheus;
pub mod status;
pub mod store;
pub mod ticks;

use std::sync::Arc;

use crate::stats::Stats;
use crate::trace::span::FinishedSpan;
use crate::trace::summary::Summary;

/// Where enrichment hands finished spans: counts them in `spans_finished`, remembers them for
/// `/spans`, and offers them to OTLP export. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SpanSink {
    store: Arc<store::SpanStore>,
    otlp: otlp::SpanSender,
    stats: Arc<Stats>,
    metrics: Option<Arc<metrics::RequestMetrics>>,
    ticks: Option<Arc<ticks::TickStore>>,
}

impl SpanSink {
    pub fn new(store: Arc<store::SpanStore>, otlp: otlp::SpanSender, stats: Arc<Stats>) -> Self {
        Self {
            store,
            otlp,
            stats,
            metrics: None,
            ticks: None,
        }
    }

    /// Also records every span into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<metrics::RequestMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Also keeps the content-chunk times of streamed spans in `ticks` (for `/ticks`).
    pub fn with_ticks(mut self, ticks: Arc<ticks::TickStore>) -> Self {
        self.ticks = Some(ticks);
        self
    }

    /// Takes one finished span, the typed summary the metrics record, and the times of its
    /// content chunks (the exchange's `content_chunk_ns`), whose gaps feed the inter-token
    /// latency histogram. Never waits.
    pub fn submit(&self, mut span: FinishedSpan, summary: &Summary, chunk_times_ns: &[u64]) {
        Stats::add(&self.stats.spans_finished, 1);
        // Metrics from every request, whatever the sampler decides.
        if let Some(metrics) = &self.metrics {
            metrics.record_with_chunk_times(summary, chunk_times_ns);
        }
        if let Some(ticks) = &self.ticks {
            ticks.record(span.span_id, summary.ttft_s, chunk_times_ns);
        }
        self.otlp.send(&mut span, summary);
        self.store.push(span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn every_span_is_counted_and_stored_even_without_export() {
        let stats = Arc::new(Stats::default());
        let store = Arc::new(store::SpanStore::new(8));
        let sink = SpanSink::new(store.clone(), otlp::SpanSender::disabled(), stats.clone());
        sink.submit(store::tests::span(1), &Summary::default(), &[]);
        sink.submit(store::tests::span(2), &Summary::default(), &[]);
        assert_eq!(stats.spans_finished.load(Relaxed), 2);
        assert_eq!(store.recent(10).len(), 2);
        assert_eq!(stats.spans_export_dropped.load(Relaxed), 0);
    }
}
