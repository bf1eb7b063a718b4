//! A fair share of a GPU's busy time and energy among the requests one process has in flight.
//!
//! **The rule.** A serving process batches its requests: in each sample interval of the GPU, the
//! work belongs to the requests in flight in it. For every sample interval `I` (clipped to the
//! request's window), each request `r` of the same process that overlaps `I` gets the weight
//!
//! ```text
//! w_r(I) = chunks_r(I) + presence_r(I)
//! ```
//!
//! where `chunks_r(I)` is the number of content chunks (≈ tokens, or groups of tokens) `r` wrote
//! in `I` and `presence_r(I)` is the fraction of `I` that `r` was in flight (0–1). The chunk term
//! gives decode work to the requests that produced it; the presence term gives a request in
//! prefill, which writes no chunk yet, its share of a batch too. The request's share of `I` is
//! `w_R(I) / Σ_r w_r(I)`; its busy time is `Σ_I utilisation(I) · |I| · share` and its energy
//! `Σ_I energy(I) · share`, with the energy counter interpolated at the ends of `I`.
//!
//! Pure: no I/O, never panics.

use super::series::{Counter, Interval};

/// One request's activity as the share needs it: its window and its content chunk times
/// (kernel-monotonic ns, sorted).
#[derive(Clone, Debug, PartialEq)]
pub struct Activity {
    pub start_ns: u64,
    pub end_ns: u64,
    pub chunk_ns: Vec<u64>,
}

impl Activity {
    fn presence(&self, s: u64, e: u64) -> f64 {
        if e <= s {
            return 0.0;
        }
        let o = self.end_ns.min(e).saturating_sub(self.start_ns.max(s));
        o as f64 / (e - s) as f64
    }

    fn chunks_in(&self, s: u64, e: u64) -> usize {
        let lo = self.chunk_ns.partition_point(|&t| t < s);
        let hi = self.chunk_ns.partition_point(|&t| t < e);
        hi - lo
    }
}

/// A request's share of one GPU over its window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Share {
    /// GPU busy time attributed to the request, in seconds.
    pub busy_s: f64,
    /// Energy attributed to the request, in the counter's unit (mJ for NVML).
    pub energy: Option<f64>,
    /// Most requests of the process in flight at once in any interval (the request included).
    pub max_concurrent: usize,
}

/// `target`'s share of one GPU, given the other requests of its process (finished or still in
/// flight) and the GPU's utilisation intervals (0–1) and energy counter.
pub fn fair_share(
    target: &Activity,
    others: &[Activity],
    util: &[Interval],
    energy: Option<&Counter>,
) -> Share {
    let (a, b) = (target.start_ns, target.end_ns.max(target.start_ns));
    let mut out = Share {
        max_concurrent: 1,
        energy: energy.map(|_| 0.0),
        ..Share::default()
    };
    for i in util {
        let (s, e) = (i.start_ns.max(a), i.end_ns.min(b));
        if e <= s {
            continue;
        }
        let mine = target.chunks_in(s, e) as f64 + 1.0;
        let mut total = mine;
        let mut concurrent = 1;
        for o in others {
            let p = o.presence(s, e);
            if p > 0.0 {
                total += o.chunks_in(s, e) as f64 + p;
                concurrent += 1;
            }
        }
        out.max_concurrent = out.max_concurrent.max(concurrent);
        let share = mine / total;
        out.busy_s += i.value * (e - s) as f64 / 1e9 * share;
        if let (Some(c), Some(acc)) = (energy, out.energy.as_mut()) {
            match (c.at(s), c.at(e)) {
                (Some(es), Some(ee)) => *acc += (ee - es) * share,
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn act(start_ms: u64, end_ms: u64, chunks_ms: &[u64]) -> Activity {
        Activity {
            start_ns: start_ms * MS,
            end_ns: end_ms * MS,
            chunk_ns: chunks_ms.iter().map(|c| c * MS).collect(),
        }
    }

    fn util(spec: &[(u64, u64, f64)]) -> Vec<Interval> {
        spec.iter()
            .map(|&(s, e, v)| Interval {
                start_ns: s * MS,
                end_ns: e * MS,
                value: v,
            })
            .collect()
    }

    /// 10 W flat from 0 to 10 s: 10 mJ per ms.
    fn flat_energy() -> Counter {
        let mut c = Counter::default();
        for k in 0..=100u64 {
            c.push(k * 100 * MS, k * 1000);
        }
        c
    }

    #[test]
    fn alone_a_request_gets_all_busy_time_and_energy() {
        let r = act(0, 200, &[50, 150]);
        let u = util(&[(0, 100, 0.5), (100, 200, 1.0)]);
        let s = fair_share(&r, &[], &u, Some(&flat_energy()));
        assert!((s.busy_s - 0.15).abs() < 1e-12);
        assert!((s.energy.unwrap() - 2000.0).abs() < 1e-6);
        assert_eq!(s.max_concurrent, 1);
    }

    #[test]
    fn overlapping_requests_split_by_chunks_plus_presence() {
        // Both in flight over [0,100): R wrote 3 chunks, O wrote 1 → R: 4/(4+2) of 100 ms at 60%.
        let r = act(0, 100, &[10, 20, 30]);
        let o = act(0, 300, &[40]);
        let u = util(&[(0, 100, 0.6)]);
        let s = fair_share(&r, std::slice::from_ref(&o), &u, Some(&flat_energy()));
        let share = 4.0 / 6.0;
        assert!((s.busy_s - 0.06 * share).abs() < 1e-12, "{s:?}");
        assert!((s.energy.unwrap() - 1000.0 * share).abs() < 1e-6);
        assert_eq!(s.max_concurrent, 2);
        // The shares of both add up to the whole when each is computed the same way.
        let os = fair_share(&act(0, 100, &[40]), &[r.clone()], &u, None);
        assert!((s.busy_s + os.busy_s - 0.06).abs() < 1e-12);
    }

    #[test]
    fn a_request_in_prefill_still_gets_a_share_and_partial_presence_counts_less() {
        // O arrives halfway through the interval and writes no chunk.
        let r = act(0, 100, &[]);
        let o = act(50, 500, &[]);
        let u = util(&[(0, 100, 1.0)]);
        let s = fair_share(&r, &[o], &u, None);
        assert!((s.busy_s - 0.1 * (1.0 / 1.5)).abs() < 1e-12, "{s:?}");
        assert_eq!(s.energy, None);
    }

    #[test]
    fn requests_outside_the_interval_do_not_count_and_the_window_clips_samples() {
        let r = act(100, 150, &[120]);
        let before = act(0, 90, &[10, 20, 30]);
        let after = act(160, 300, &[200]);
        let u = util(&[(0, 200, 0.5)]);
        let s = fair_share(&r, &[before, after], &u, None);
        assert!((s.busy_s - 0.025).abs() < 1e-12, "{s:?}");
        assert_eq!(s.max_concurrent, 1);
    }
}
