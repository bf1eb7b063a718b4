//! The content-chunk times of recent streamed requests, kept for the debug page's waterfall
//! (`GET /ticks?span_id=HEX`).
//!
//! Owns a bounded ring: the last [`DEFAULT_SPANS`] streamed spans, each with at most
//! [`MAX_TICKS`] chunk times as microseconds after the span's start (4 bytes each), so it holds
//! at most 512 × 2048 × 4 B = 4 MiB whatever the traffic. Times only: never a payload byte.
//! Nothing in this module does I/O.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Streamed spans whose chunk times are kept.
pub const DEFAULT_SPANS: usize = 512;
/// Chunk times kept per span (the first ones; `chunks` still says how many there were).
pub const MAX_TICKS: usize = 2048;

/// One span's chunk times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticks {
    pub span_id: [u8; 8],
    /// Microseconds from the span's start to each content chunk's write, in order.
    pub offsets_us: Vec<u32>,
    /// Content chunks whose times were given (more than `offsets_us` holds when cut).
    pub chunks: usize,
}

/// A thread-safe ring of the chunk times of the last `capacity` streamed spans.
#[derive(Debug)]
pub struct TickStore {
    capacity: usize,
    ticks: Mutex<VecDeque<Ticks>>,
}

impl Default for TickStore {
    fn default() -> Self {
        Self::new(DEFAULT_SPANS)
    }
}

impl TickStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            ticks: Mutex::new(VecDeque::new()),
        }
    }

    /// Remembers a span's chunk times (kernel monotonic ns). The first chunk is the first token,
    /// `ttft_s` after the span's start, which places them all on the span's time axis. Spans
    /// without chunks are not kept.
    pub fn record(&self, span_id: [u8; 8], ttft_s: Option<f64>, chunk_times_ns: &[u64]) {
        let (Some(ttft_s), Some(&first)) = (ttft_s, chunk_times_ns.first()) else {
            return;
        };
        let ttft_ns = (ttft_s * 1e9).max(0.0) as u64;
        let offsets_us = chunk_times_ns
            .iter()
            .take(MAX_TICKS)
            .map(|&t| ((ttft_ns + t.saturating_sub(first)) / 1_000).min(u64::from(u32::MAX)) as u32)
            .collect();
        let entry = Ticks {
            span_id,
            offsets_us,
            chunks: chunk_times_ns.len(),
        };
        let mut ticks = self.ticks.lock().unwrap_or_else(|e| e.into_inner());
        if ticks.len() == self.capacity {
            ticks.pop_front();
        }
        ticks.push_back(entry);
    }

    /// The chunk times of `span_id`, if still kept.
    pub fn get(&self, span_id: [u8; 8]) -> Option<Ticks> {
        let ticks = self.ticks.lock().unwrap_or_else(|e| e.into_inner());
        ticks.iter().rev().find(|t| t.span_id == span_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_sit_on_the_span_axis_from_the_first_token() {
        let store = TickStore::new(2);
        let ms = 1_000_000;
        // First token 50 ms after the start; chunks 20 ms apart.
        store.record([1; 8], Some(0.05), &[7_000 * ms, 7_020 * ms, 7_040 * ms]);
        let t = store.get([1; 8]).unwrap();
        assert_eq!(t.offsets_us, [50_000, 70_000, 90_000]);
        assert_eq!(t.chunks, 3);
        // Nothing without chunks or without a first token.
        store.record([2; 8], Some(0.05), &[]);
        store.record([3; 8], None, &[1]);
        assert!(store.get([2; 8]).is_none() && store.get([3; 8]).is_none());
    }

    #[test]
    fn bounded_in_spans_and_ticks() {
        let store = TickStore::new(2);
        let many: Vec<u64> = (0..MAX_TICKS as u64 + 10).collect();
        store.record([1; 8], Some(0.0), &many);
        store.record([2; 8], Some(0.0), &[1]);
        store.record([3; 8], Some(0.0), &[1]);
        assert!(store.get([1; 8]).is_none(), "the oldest is forgotten");
        let store = TickStore::new(2);
        store.record([1; 8], Some(0.0), &many);
        let t = store.get([1; 8]).unwrap();
        assert_eq!((t.offsets_us.len(), t.chunks), (MAX_TICKS, MAX_TICKS + 10));
    }
}
