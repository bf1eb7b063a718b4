//! The most recent finished spans, kept for `GET /spans`.
//!
//! Owns a bounded ring: pushing into a full store forgets the oldest span, so memory stays bounded
//! whatever the request rate. Every finished span lands here, sampled for OTLP or not. Nothing in
//! this module does I/O.
//!
//! Spans are kept behind `Arc`s so that a reader (`/spans?limit=4096`) takes the lock only to
//! copy pointers: copying thousands of spans per request made each read allocate as much again as
//! the store holds, and the allocator kept that peak (docs/PERFORMANCE.md, "Memory with the
//! collector down").

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::trace::span::FinishedSpan;

/// How many spans the debug endpoint remembers unless told otherwise.
pub const DEFAULT_CAPACITY: usize = 4096;

/// A thread-safe ring of the last `capacity` finished spans.
#[derive(Debug)]
pub struct SpanStore {
    capacity: usize,
    spans: Mutex<VecDeque<Arc<FinishedSpan>>>,
}

impl Default for SpanStore {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl SpanStore {
    /// A store of at most `capacity` spans (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            spans: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Remembers `span`, forgetting the oldest one when the store is full. The span's attribute
    /// list is trimmed to its length first: span building reserves room for every attribute a
    /// GenAI span may carry (40 × 56 bytes), which a plain HTTP span with ten attributes would
    /// otherwise keep for as long as it is stored (2.7 KiB per span instead of 1 KiB).
    pub fn push(&self, mut span: FinishedSpan) {
        span.attributes.shrink_to_fit();
        let span = Arc::new(span);
        let mut spans = self.lock();
        if spans.len() == self.capacity {
            spans.pop_front();
        }
        spans.push_back(span);
    }

    /// Up to `limit` spans, newest first (shared, not copied).
    pub fn recent(&self, limit: usize) -> Vec<Arc<FinishedSpan>> {
        self.lock().iter().rev().take(limit).cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<FinishedSpan>>> {
        // A panic while holding the lock cannot leave the ring inconsistent (each operation is one
        // VecDeque call), so a poisoned lock is still usable.
        self.spans.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::trace::span::{AttrValue, SpanKind, SpanStatus};

    /// A span whose ids and times are derived from `n`.
    pub(crate) fn span(n: u8) -> FinishedSpan {
        FinishedSpan {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_span_id: None,
            trace_state: String::new(),
            parent_is_remote: false,
            sampled: false,
            name: format!("span {n}"),
            kind: SpanKind::Server,
            start_unix_nano: u64::from(n) * 1000,
            end_unix_nano: u64::from(n) * 1000 + 500,
            status: SpanStatus::Unset,
            attributes: Vec::new(),
        }
    }

    fn names(spans: &[Arc<FinishedSpan>]) -> Vec<String> {
        spans.iter().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn recent_is_newest_first_and_limited() {
        let store = SpanStore::new(10);
        for n in 1..=4 {
            store.push(span(n));
        }
        assert_eq!(names(&store.recent(2)), ["span 4", "span 3"]);
        assert_eq!(
            names(&store.recent(100)),
            ["span 4", "span 3", "span 2", "span 1"]
        );
        assert!(store.recent(0).is_empty());
    }

    #[test]
    fn full_store_forgets_the_oldest() {
        let store = SpanStore::new(3);
        for n in 1..=5 {
            store.push(span(n));
        }
        assert_eq!(store.len(), 3);
        assert_eq!(names(&store.recent(10)), ["span 5", "span 4", "span 3"]);
    }

    #[test]
    fn capacity_is_at_least_one() {
        let store = SpanStore::new(0);
        store.push(span(1));
        store.push(span(2));
        assert_eq!(store.capacity(), 1);
        assert_eq!(names(&store.recent(10)), ["span 2"]);
    }

    #[test]
    fn stored_spans_keep_no_spare_attribute_room() {
        let store = SpanStore::new(2);
        let mut s = span(1);
        s.attributes = Vec::with_capacity(40);
        s.attributes
            .push(("url.path".into(), AttrValue::Str("/health".into())));
        store.push(s);
        let stored = store.recent(1);
        assert_eq!(stored[0].attributes.len(), 1);
        assert_eq!(stored[0].attributes.capacity(), 1);
    }

    #[test]
    fn default_capacity_is_4096() {
        assert_eq!(SpanStore::default().capacity(), 4096);
    }
}
