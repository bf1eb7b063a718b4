//! Enrichment: what the agent learns about a traced process beyond its bytes — the Kubernetes pod
//! and container it runs in (process → pod), and GPU time series and the correlation of finished
//! exchanges with those samples.
//!
//! Side inputs (a Kubernetes watch, a GPU sampler) fill caches on their own threads or tasks; the
//! pipeline calls every [`SpanEnricher`] once per finished exchange, after the span is built and
//! before it is exported. An enricher only reads its cache: it never blocks and never does I/O.
//! An enricher that needs its side input to catch up (GPU samples covering the request's end)
//! says so through [`SpanEnricher::ready`]; the pipeline then holds the exchange, in finishing
//! order, for as long as the enricher's own bound allows. [`InFlight`] lets an enricher see the
//! requests still in flight (the GPU's fair share splits work among them).
//!
//! Parsers here are pure (text in, values out, no panics on any input); reading /proc and other
//! side inputs happens only at the edges, in small functions named `read_*`.

pub mod cgroup;
pub mod kubernetes;

use crate::capture::clock::WallClock;
use crate::conn::{ConnTable, Finished};
use crate::trace::Built;

/// Adds what a side input knows to a finished span (attributes, resource-like `k8s.*` fields) and,
/// where the metrics label by it, to the span's typed summary.
pub trait SpanEnricher: Send {
    /// `finished` carries the exchange's kernel-monotonic times and the serving process's pid;
    /// `clock` converts monotonic to Unix time as the span's own times were converted.
    fn enrich(&mut self, finished: &Finished, clock: &WallClock, out: &mut Built);

    /// Called once as soon as an exchange finishes, before its span waits or is built (the GPU
    /// enricher keeps a short record of finished requests for the fair share).
    fn observe(&mut self, _finished: &Finished) {}

    /// Whether this enricher has what it needs for `finished` at monotonic time `now_ns`; the
    /// pipeline holds the span until every enricher is ready. An enricher that waits for a side
    /// input (GPU samples covering the request's end) must bound the wait itself.
    fn ready(&self, _finished: &Finished, _now_ns: u64) -> bool {
        true
    }

    /// [`SpanEnricher::enrich`] with a view of the requests still in flight.
    fn enrich_in_context(
        &mut self,
        finished: &Finished,
        clock: &WallClock,
        _in_flight: &dyn InFlight,
        out: &mut Built,
    ) {
        self.enrich(finished, clock, out);
    }
}

/// The requests a process has in flight, as the pipeline sees them when a span is enriched.
pub trait InFlight {
    /// `(start_ns, content chunk times at or after since_ns)` of each request of `pid` in flight.
    fn in_flight_chunks(&self, pid: u32, since_ns: u64) -> Vec<(u64, Vec<u64>)>;
}

impl InFlight for ConnTable {
    fn in_flight_chunks(&self, pid: u32, since_ns: u64) -> Vec<(u64, Vec<u64>)> {
        ConnTable::in_flight_chunks(self, pid, since_ns)
    }
}

/// No request in flight (tests, and callers without a connection table).
pub struct NoneInFlight;

impl InFlight for NoneInFlight {
    fn in_flight_chunks(&self, _pid: u32, _since_ns: u64) -> Vec<(u64, Vec<u64>)> {
        Vec::new()
    }
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

    pub fn apply(&mut self, finished: &Finished, clock: &WallClock, out: &mut Built) {
        for e in &mut self.list {
            e.enrich(finished, clock, out);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn observe(&mut self, finished: &Finished) {
        for e in &mut self.list {
            e.observe(finished);
        }
    }

    pub fn ready(&self, finished: &Finished, now_ns: u64) -> bool {
        self.list.iter().all(|e| e.ready(finished, now_ns))
    }

    /// [`Enrichers::apply`] with a view of the requests in flight.
    pub fn apply_in_context(
        &mut self,
        finished: &Finished,
        clock: &WallClock,
        in_flight: &dyn InFlight,
        out: &mut Built,
    ) {
        for e in &mut self.list {
            e.enrich_in_context(finished, clock, in_flight, out);
        }
    }
}
