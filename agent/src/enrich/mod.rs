//! Enrichment: what the agent learns about a traced process beyond its bytes — the Kubernetes pod
//! and container it runs in (process → pod), and GPU time series and the correlation of finished
//! exchanges with those samples.
//!
//! Side inputs (a Kubernetes watch, a GPU sampler) fill caches on their own threads or tasks; the
//! pipeline calls every [`SpanEnricher`] once per finished exchange, after the span is built and
//! before it is exported. An enricher only reads its cache: it never blocks and never does I/O.
//!
//! Parsers here are pure (text in, values out, no panics on any input); reading /proc and other
//! side inputs happens only at the edges, in small functions named `read_*`.

pub mod cgroup;
pub mod kubernetes;

use crate::capture::clock::WallClock;
use crate::conn::Finished;
use crate::trace::span::FinishedSpan;

/// Adds what a side input knows to a finished span (attributes, resource-like `k8s.*` fields).
pub trait SpanEnricher: Send {
    /// `finished` carries the exchange's kernel-monotonic times and the serving process's pid;
    /// `clock` converts monotonic to Unix time as the span's own times were converted.
    fn enrich(&mut self, finished: &Finished, clock: &WallClock, span: &mut FinishedSpan);
}

/// The enrichers of one pipeline, applied in order.
#[derive(Default)]
pub struct Enrichers {
    list: Vec<Box<dyn SpanEnricher>>,
}

impl Enrichers {
    pub fn push(&mut self, e: Box<dyn SpanEnricher>) {
        self.list.push(e);
    }

    pub fn apply(&mut self, finished: &Finished, clock: &WallClock, span: &mut FinishedSpan) {
        for e in &mut self.list {
            e.enrich(finished, clock, span);
        }
    }
}
