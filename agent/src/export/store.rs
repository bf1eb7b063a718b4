//! The most recent finished spans, kept for `GET /spans`.
//!
//! Owns a bounded ring: pushing into a full store forgets the oldest span, so memory stays bounded
//! whatever the request rate. Every finished span lands here, sampled for OTLP or not. Nothing in
//! this module does I/O.
//!
//! A span is stored in a compact form ([`StoredSpan`]): one shared allocation holding its fields
//! as bytes, decoded back into a [`FinishedSpan`] only when `/spans` renders it (one at a time).
//! A `FinishedSpan` holds a dozen separate allocations (name, attribute list, each string value):
//! kept whole, 4,096 spans cost several MiB, and forgetting the oldest freed a dozen cold blocks
//! per request on the pipeline task (about a tenth of its CPU under a fast server).
//!
//! Readers (`/spans?limit=4096`) take the lock only to copy pointers: copying thousands of spans
//! per request made each read allocate as much again as the store holds, and the allocator kept
//! that peak (docs/PERFORMANCE.md, "Memory with the collector down").

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::trace::span::{AttrValue, FinishedSpan, SpanKind, SpanStatus};

/// How many spans the debug endpoint remembers unless told otherwise.
pub const DEFAULT_CAPACITY: usize = 4096;

/// A finished span in its stored form: one allocation, decoded by [`StoredSpan::span`].
#[derive(Clone, Debug)]
pub struct StoredSpan(Arc<[u8]>);

impl StoredSpan {
    /// Encodes `span` (into a per-thread scratch buffer, then one exact allocation).
    pub fn new(span: &FinishedSpan) -> StoredSpan {
        thread_local! {
            static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            buf.clear();
            encode(span, &mut buf);
            StoredSpan(Arc::from(&buf[..]))
        })
    }

    /// The span as it was stored.
    pub fn span(&self) -> FinishedSpan {
        // The bytes were written by `encode` of this build: they always decode.
        decode(&self.0).unwrap_or_else(|| FinishedSpan {
            trace_id: [0; 16],
            span_id: [0; 8],
            parent_span_id: None,
            trace_state: String::new(),
            parent_is_remote: false,
            sampled: false,
            name: String::new(),
            kind: SpanKind::Internal,
            start_unix_nano: 0,
            end_unix_nano: 0,
            status: SpanStatus::Unset,
            attributes: Vec::new(),
        })
    }

    /// Bytes of its stored form.
    pub fn stored_len(&self) -> usize {
        self.0.len()
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn encode(span: &FinishedSpan, out: &mut Vec<u8>) {
    out.extend_from_slice(&span.trace_id);
    out.extend_from_slice(&span.span_id);
    match span.parent_span_id {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(&p);
        }
        None => out.push(0),
    }
    out.push(u8::from(span.parent_is_remote));
    out.push(u8::from(span.sampled));
    out.push(match span.kind {
        SpanKind::Server => 0,
        SpanKind::Client => 1,
        SpanKind::Internal => 2,
    });
    out.extend_from_slice(&span.start_unix_nano.to_le_bytes());
    out.extend_from_slice(&span.end_unix_nano.to_le_bytes());
    match &span.status {
        SpanStatus::Unset => out.push(0),
        SpanStatus::Ok => out.push(1),
        SpanStatus::Error(m) => {
            out.push(2);
            put_str(out, m);
        }
    }
    put_str(out, &span.name);
    put_str(out, &span.trace_state);
    out.extend_from_slice(&(span.attributes.len() as u32).to_le_bytes());
    for (key, value) in &span.attributes {
        put_str(out, key);
        match value {
            AttrValue::Str(s) => {
                out.push(0);
                put_str(out, s);
            }
            AttrValue::I64(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_le_bytes());
            }
            AttrValue::F64(f) => {
                out.push(2);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            AttrValue::Bool(b) => {
                out.push(3);
                out.push(u8::from(*b));
            }
            AttrValue::StrArray(items) => {
                out.push(4);
                out.extend_from_slice(&(items.len() as u32).to_le_bytes());
                for item in items {
                    put_str(out, item);
                }
            }
        }
    }
}

/// Reads what [`encode`] wrote.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        Some(std::str::from_utf8(self.take(n)?).ok()?.to_string())
    }
}

fn decode(bytes: &[u8]) -> Option<FinishedSpan> {
    let mut r = Reader(bytes);
    let trace_id = r.array()?;
    let span_id = r.array()?;
    let parent_span_id = match r.u8()? {
        0 => None,
        _ => Some(r.array()?),
    };
    let parent_is_remote = r.u8()? != 0;
    let sampled = r.u8()? != 0;
    let kind = match r.u8()? {
        0 => SpanKind::Server,
        1 => SpanKind::Client,
        _ => SpanKind::Internal,
    };
    let start_unix_nano = r.u64()?;
    let end_unix_nano = r.u64()?;
    let status = match r.u8()? {
        0 => SpanStatus::Unset,
        1 => SpanStatus::Ok,
        _ => SpanStatus::Error(r.string()?),
    };
    let name = r.string()?;
    let trace_state = r.string()?;
    let n = r.u32()? as usize;
    let mut attributes = Vec::with_capacity(n.min(256));
    for _ in 0..n {
        let key = Cow::Owned(r.string()?);
        let value = match r.u8()? {
            0 => AttrValue::Str(r.string()?),
            1 => AttrValue::I64(r.u64()? as i64),
            2 => AttrValue::F64(f64::from_bits(r.u64()?)),
            3 => AttrValue::Bool(r.u8()? != 0),
            _ => {
                let items = r.u32()? as usize;
                let mut v = Vec::with_capacity(items.min(256));
                for _ in 0..items {
                    v.push(r.string()?);
                }
                AttrValue::StrArray(v)
            }
        };
        attributes.push((key, value));
    }
    Some(FinishedSpan {
        trace_id,
        span_id,
        parent_span_id,
        trace_state,
        parent_is_remote,
        sampled,
        name,
        kind,
        start_unix_nano,
        end_unix_nano,
        status,
        attributes,
    })
}

/// A thread-safe ring of the last `capacity` finished spans.
#[derive(Debug)]
pub struct SpanStore {
    capacity: usize,
    spans: Mutex<VecDeque<StoredSpan>>,
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

    /// Remembers `span` (in its stored form), forgetting the oldest one when the store is full.
    pub fn push(&self, span: FinishedSpan) {
        let stored = StoredSpan::new(&span);
        let forgotten = {
            let mut spans = self.lock();
            let forgotten = if spans.len() == self.capacity {
                spans.pop_front()
            } else {
                None
            };
            spans.push_back(stored);
            forgotten
        };
        // Freed outside the lock.
        drop(forgotten);
    }

    /// Up to `limit` spans, newest first (shared, not copied).
    pub fn recent(&self, limit: usize) -> Vec<StoredSpan> {
        self.lock().iter().rev().take(limit).cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<StoredSpan>> {
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

    fn names(spans: &[StoredSpan]) -> Vec<String> {
        spans.iter().map(|s| s.span().name).collect()
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
    fn a_stored_span_decodes_to_what_was_pushed_in_one_small_allocation() {
        let store = SpanStore::new(2);
        let mut s = span(1);
        s.parent_span_id = Some([7; 8]);
        s.parent_is_remote = true;
        s.sampled = true;
        s.trace_state = "infertap=test".into();
        s.kind = SpanKind::Client;
        s.status = SpanStatus::Error("timeout".into());
        s.attributes = Vec::with_capacity(40);
        s.attributes
            .push(("url.path".into(), AttrValue::Str("/health".into())));
        s.attributes
            .push(("http.response.status_code".into(), AttrValue::I64(-200)));
        s.attributes
            .push(("gen_ai.latency.e2e".into(), AttrValue::F64(0.25)));
        s.attributes
            .push(("nan".into(), AttrValue::F64(f64::INFINITY)));
        s.attributes.push(("b".into(), AttrValue::Bool(true)));
        s.attributes.push((
            "gen_ai.response.finish_reasons".into(),
            AttrValue::StrArray(vec!["stop".into(), "length".into(), String::new()]),
        ));
        store.push(s.clone());
        let stored = store.recent(1);
        assert_eq!(stored[0].span(), s);
        // Fields and attributes in one block: no room reserved for absent attributes.
        assert!(stored[0].stored_len() < 400, "{}", stored[0].stored_len());
        let plain = StoredSpan::new(&span(2));
        assert_eq!(plain.span(), span(2));
    }

    #[test]
    fn default_capacity_is_4096() {
        assert_eq!(SpanStore::default().capacity(), 4096);
    }
}
