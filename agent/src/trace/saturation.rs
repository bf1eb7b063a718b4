//! Runtime saturation at the moment of each request: the load figures a model server published
//! on its `/metrics` (read passively from the scrapes that crossed a traced socket,
//! `protocol::runtime_metrics`) joined to the requests of the same process — the sample in
//! effect at the request's arrival (with its age, so a stale one shows), and over its window
//! the highest KV-cache usage, the preemptions, and the prefix-cache hit ratio.
//!
//! State the pipeline keeps across exchanges, bounded: [`SAMPLES_MAX`] scrapes per process,
//! [`PROCESSES_MAX`] processes (the least recently scraped forgotten first). Pure.

use std::collections::{HashMap, HashSet, VecDeque};

use super::span::AttrValue;
use super::Built;
use crate::exchange::Exchange;
use crate::protocol::runtime_metrics::RuntimeSample;
use crate::schema::attr;

/// Scrapes kept per process (a 1 s scrape interval: two minutes of them).
pub const SAMPLES_MAX: usize = 128;
/// Processes whose scrapes are kept.
pub const PROCESSES_MAX: usize = 256;

/// Each serving process's recent scrapes, oldest first (time = the scrape's last byte).
#[derive(Debug, Default)]
pub struct Runtime {
    samples: HashMap<u32, VecDeque<(u64, RuntimeSample)>>,
}

impl Runtime {
    pub fn new() -> Runtime {
        Runtime::default()
    }

    /// Take a finished exchange: a scrape is remembered; a GenAI request gets the figures.
    pub fn apply(&mut self, pid: u32, ex: &Exchange, built: &mut Built) {
        if let Some(s) = &ex.runtime {
            self.remember(pid, ex.end_ns, (**s).clone());
            return;
        }
        if ex.operation.is_none() {
            return;
        }
        let Some(samples) = self.samples.get(&pid) else {
            return;
        };
        for (k, v) in figures(samples, ex.start_ns, ex.end_ns) {
            built.span.attributes.push((k.into(), v));
        }
    }

    /// Remember a sample of process `pid` taken at `t` (kernel monotonic ns): a passive scrape's
    /// last byte, or the end of the agent's own poll.
    pub fn remember(&mut self, pid: u32, t: u64, s: RuntimeSample) {
        if !self.samples.contains_key(&pid) && self.samples.len() >= PROCESSES_MAX {
            let stalest = self
                .samples
                .iter()
                .min_by_key(|(_, q)| q.back().map_or(0, |(t, _)| *t))
                .map(|(p, _)| *p);
            if let Some(p) = stalest {
                self.samples.remove(&p);
            }
        }
        let q = self.samples.entry(pid).or_default();
        if q.len() >= SAMPLES_MAX {
            q.pop_front();
        }
        // Scrapes finish in order on one connection; across connections, keep the queue sorted.
        let at = q.partition_point(|(u, _)| *u <= t);
        q.insert(at, (t, s));
    }
}

/// Connections of the agent's own `/metrics` poll (`runtime_poll`) that the pipeline stopped
/// tracing at their open: records of them already in flight are dropped until their close.
/// Bounded: past [`OWN_CONNS_MAX`] the oldest are forgotten (their stray records are then taken
/// as a connection picked up mid-stream, as after any loss of an open record).
#[derive(Debug, Default)]
pub struct OwnConns {
    ids: HashSet<(u32, u64)>,
    /// In insertion order, for eviction (may name ids already removed).
    order: VecDeque<(u32, u64)>,
}

/// Own poll connections remembered at once (one per polled server is usual).
pub const OWN_CONNS_MAX: usize = 1024;

impl OwnConns {
    pub fn insert(&mut self, tgid: u32, conn_id: u64) {
        while self.ids.len() >= OWN_CONNS_MAX || self.order.len() >= 2 * OWN_CONNS_MAX {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.ids.remove(&old);
        }
        self.ids.insert((tgid, conn_id));
        self.order.push_back((tgid, conn_id));
    }

    /// Whether a record of `(tgid, conn_id)` belongs to an own connection (cheap when none is).
    pub fn holds(&self, tgid: u32, conn_id: u64) -> bool {
        !self.ids.is_empty() && self.ids.contains(&(tgid, conn_id))
    }

    /// The connection closed: forgotten; whether it was an own one.
    pub fn remove(&mut self, tgid: u32, conn_id: u64) -> bool {
        let was = self.ids.remove(&(tgid, conn_id));
        if self.ids.is_empty() {
            self.order.clear();
        }
        was
    }

    pub fn process_exit(&mut self, tgid: u32) {
        self.ids.retain(|(t, _)| *t != tgid);
        self.order.retain(|(t, _)| *t != tgid);
    }
}

/// The attributes of a request over `[start, end]` from one process's scrapes (sorted by time).
pub fn figures(
    samples: &VecDeque<(u64, RuntimeSample)>,
    start: u64,
    end: u64,
) -> Vec<(&'static str, AttrValue)> {
    let mut a = Vec::new();
    let before = samples.partition_point(|(t, _)| *t <= start);
    let through = samples.partition_point(|(t, _)| *t <= end);
    let arrival = before.checked_sub(1).map(|i| &samples[i]);
    let last = through.checked_sub(1).map(|i| &samples[i]);
    let Some((_, first)) = arrival.or(last) else {
        return a;
    };
    a.push((
        attr::INFERTAP_RUNTIME_SOURCE,
        AttrValue::Str(first.engine.as_str().to_string()),
    ));
    if let Some((t0, s0)) = arrival {
        for (key, v) in [
            (attr::INFERTAP_RUNTIME_REQUESTS_WAITING, s0.requests_waiting),
            (attr::INFERTAP_RUNTIME_REQUESTS_RUNNING, s0.requests_running),
            (attr::INFERTAP_RUNTIME_KV_CACHE_USAGE, s0.kv_cache_usage),
        ] {
            if let Some(v) = v {
                a.push((key, AttrValue::F64(v)));
            }
        }
        a.push((
            attr::INFERTAP_RUNTIME_SAMPLE_AGE,
            AttrValue::F64(start.saturating_sub(*t0) as f64 / 1e9),
        ));
    }
    // Over the window: the arrival sample and every scrape up to the end.
    let from = before.saturating_sub(1);
    let window = samples.range(from..through.max(from));
    let kv_max = window
        .clone()
        .filter_map(|(_, s)| s.kv_cache_usage)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    if let Some(m) = kv_max {
        a.push((attr::INFERTAP_RUNTIME_KV_CACHE_USAGE_MAX, AttrValue::F64(m)));
    }
    if let (Some((t0, s0)), Some((t1, s1))) = (arrival, last) {
        if t1 > t0 {
            let delta = |f: fn(&RuntimeSample) -> Option<f64>| Some((f(s1)? - f(s0)?).max(0.0));
            if let Some(p) = delta(|s| s.preemptions_total) {
                a.push((attr::INFERTAP_RUNTIME_PREEMPTIONS, AttrValue::F64(p)));
            }
            if let (Some(h), Some(q)) = (
                delta(|s| s.prefix_cache_hits_total),
                delta(|s| s.prefix_cache_queries_total),
            ) {
                if q > 0.0 {
                    a.push((
                        attr::INFERTAP_RUNTIME_PREFIX_CACHE_HIT_RATIO,
                        AttrValue::F64((h / q).min(1.0)),
                    ));
                }
            }
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::runtime_metrics::Engine;

    const S: u64 = 1_000_000_000;

    fn sample(waiting: f64, kv: f64, preempt: f64, hits: f64, queries: f64) -> RuntimeSample {
        RuntimeSample {
            engine: Engine::Vllm,
            requests_running: Some(4.0),
            requests_waiting: Some(waiting),
            kv_cache_usage: Some(kv),
            preemptions_total: Some(preempt),
            prefix_cache_hits_total: Some(hits),
            prefix_cache_queries_total: Some(queries),
        }
    }

    fn get(a: &[(&'static str, AttrValue)], k: &str) -> Option<f64> {
        a.iter()
            .find(|(key, _)| *key == k)
            .and_then(|(_, v)| match v {
                AttrValue::F64(x) => Some(*x),
                _ => None,
            })
    }

    #[test]
    fn arrival_figures_with_their_age_and_the_window_s_pressure() {
        let q: VecDeque<_> = [
            (10 * S, sample(0.0, 0.2, 5.0, 100.0, 400.0)),
            (11 * S, sample(6.0, 0.5, 5.0, 100.0, 400.0)),
            (12 * S, sample(9.0, 0.97, 8.0, 160.0, 500.0)),
            (13 * S, sample(2.0, 0.6, 9.0, 220.0, 600.0)),
            (20 * S, sample(0.0, 0.1, 50.0, 900.0, 5000.0)),
        ]
        .into_iter()
        .collect();
        // Arrives 11.25 s (the 11 s scrape is 0.25 s old), ends 13.5 s.
        let a = figures(&q, 11 * S + S / 4, 13 * S + S / 2);
        assert_eq!(get(&a, "infertap.runtime.requests_waiting"), Some(6.0));
        assert_eq!(get(&a, "infertap.runtime.kv_cache_usage"), Some(0.5));
        assert_eq!(get(&a, "infertap.runtime.sample_age"), Some(0.25));
        assert_eq!(get(&a, "infertap.runtime.kv_cache_usage.max"), Some(0.97));
        assert_eq!(get(&a, "infertap.runtime.preemptions"), Some(4.0));
        // 120 hits of 200 queries between the 11 s and 13 s scrapes.
        assert_eq!(
            get(&a, "infertap.runtime.prefix_cache_hit_ratio"),
            Some(0.6)
        );
        // Before any scrape: only what the window saw.
        let early = figures(&q, 5 * S, 10 * S + 1);
        assert_eq!(get(&early, "infertap.runtime.requests_waiting"), None);
        assert_eq!(
            get(&early, "infertap.runtime.kv_cache_usage.max"),
            Some(0.2)
        );
        assert!(figures(&q, 1, 2).is_empty());
    }

    #[test]
    fn own_connections_are_held_until_their_close_and_bounded() {
        let mut o = OwnConns::default();
        assert!(!o.holds(1, 1));
        o.insert(1, 1);
        assert!(o.holds(1, 1) && !o.holds(1, 2) && !o.holds(2, 1));
        assert!(o.remove(1, 1));
        assert!(!o.holds(1, 1) && !o.remove(1, 1));
        for i in 0..(OWN_CONNS_MAX as u64 + 10) {
            o.insert(7, i);
        }
        assert!(!o.holds(7, 0), "the oldest are forgotten first");
        assert!(o.holds(7, OWN_CONNS_MAX as u64 + 9));
        o.process_exit(7);
        assert!(!o.holds(7, OWN_CONNS_MAX as u64 + 9));
    }

    #[test]
    fn memory_is_bounded() {
        let mut r = Runtime::new();
        for i in 0..(SAMPLES_MAX as u64 + 5) {
            r.remember(1, i, sample(0.0, 0.0, 0.0, 0.0, 0.0));
        }
        assert_eq!(r.samples[&1].len(), SAMPLES_MAX);
        for p in 0..(PROCESSES_MAX as u32 + 3) {
            r.remember(
                100 + p,
                u64::from(p) + 1000,
                sample(0.0, 0.0, 0.0, 0.0, 0.0),
            );
        }
        assert_eq!(r.samples.len(), PROCESSES_MAX);
    }
}
