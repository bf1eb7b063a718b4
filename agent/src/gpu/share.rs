//! A fair share of a GPU's busy time and energy among the requests one process has in flight.
//!
//! **The rule.** A serving process batches its requests: what the GPU did while several requests
//! were in flight belongs to them together. Each sample interval of the GPU (clipped to the
//! request's window) is cut at every start and end of a request of the same process, so that the
//! set of requests in flight is constant within each piece `J`. Each request `r` in flight in `J`
//! weighs
//!
//! ```text
//! w_r(J) = 1 + chunks_r(J)
//! ```
//!
//! where `chunks_r(J)` is the number of content chunks (≈ tokens, or groups of tokens) `r` wrote
//! in `J`: decode work goes to the requests that produced it, and a request in prefill, which
//! writes no chunk yet, still gets its part of the batch. The request's busy time is
//! `Σ_J utilisation(J) · |J| · w_R(J) / Σ_r w_r(J)` and its energy `Σ_J energy(J) · w_R / Σ w`,
//! the energy counter interpolated at the ends of `J`. Because every request of a piece sees the
//! same set and weights, the shares of all requests add up exactly to the busy time and energy of
//! the union of their windows.
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
    /// Chunks after the ones in `chunk_ns` (a stream longer than an exchange keeps times of),
    /// taken as spread evenly from the last time in `chunk_ns` to `later_until_ns`.
    pub later_chunks: u64,
    pub later_until_ns: u64,
}

impl Activity {
    fn covers(&self, s: u64, e: u64) -> bool {
        self.start_ns <= s && e <= self.end_ns
    }

    fn chunks_in(&self, s: u64, e: u64) -> f64 {
        let lo = self.chunk_ns.partition_point(|&t| t < s);
        let hi = self.chunk_ns.partition_point(|&t| t < e);
        let mut n = (hi - lo) as f64;
        if self.later_chunks > 0 {
            let a = self.chunk_ns.last().copied().unwrap_or(self.start_ns);
            let b = self.later_until_ns.max(a);
            let overlap = e.min(b).saturating_sub(s.max(a));
            n += if b > a {
                self.later_chunks as f64 * overlap as f64 / (b - a) as f64
            } else if (s..e).contains(&a) {
                self.later_chunks as f64
            } else {
                0.0
            };
        }
        n
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
    let mut cuts: Vec<u64> = Vec::new();
    for i in util {
        let (s, e) = (i.start_ns.max(a), i.end_ns.min(b));
        if e <= s {
            continue;
        }
        cuts.clear();
        cuts.push(s);
        cuts.push(e);
        for o in others {
            for t in [o.start_ns, o.end_ns] {
                if s < t && t < e {
                    cuts.push(t);
                }
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        for piece in cuts.windows(2) {
            let (ps, pe) = (piece[0], piece[1]);
            let mine = 1.0 + target.chunks_in(ps, pe);
            let mut total = mine;
            let mut concurrent = 1;
            for o in others.iter().filter(|o| o.covers(ps, pe)) {
                total += 1.0 + o.chunks_in(ps, pe);
                concurrent += 1;
            }
            out.max_concurrent = out.max_concurrent.max(concurrent);
            let share = mine / total;
            out.busy_s += i.value * (pe - ps) as f64 / 1e9 * share;
            if let (Some(c), Some(acc)) = (energy, out.energy.as_mut()) {
                if let (Some(es), Some(ee)) = (c.at(ps), c.at(pe)) {
                    *acc += (ee - es) * share;
                }
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
            later_chunks: 0,
            later_until_ns: 0,
        }
    }

    #[test]
    fn chunks_past_the_kept_times_count_as_spread_evenly() {
        // R wrote 20 chunks at 5, 15, …, 195 ms, but only the first 10 times were kept; O wrote
        // 4 chunks in [100,200). Over [100,200) at 100%, the spread-out 10 later chunks stand for
        // the 10 real ones: R gets (1+10)/(1+10+1+4) as if all times were kept.
        let all: Vec<u64> = (0..20).map(|i| 5 + 10 * i).collect();
        let exact = act(0, 200, &all);
        let mut kept = act(0, 200, &all[..10]);
        kept.later_chunks = 10;
        kept.later_until_ns = 195 * MS;
        let o = act(100, 200, &[120, 140, 160, 180]);
        let u = util(&[(0, 100, 1.0), (100, 200, 1.0)]);
        let want = fair_share(&exact, std::slice::from_ref(&o), &u, None).busy_s;
        let got = fair_share(&kept, std::slice::from_ref(&o), &u, None).busy_s;
        assert!((got - want).abs() < 0.002, "{got} vs {want}");
        let without = fair_share(&act(0, 200, &all[..10]), std::slice::from_ref(&o), &u, None);
        assert!(without.busy_s < want - 0.02, "the later chunks matter");
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
        let os = fair_share(&act(0, 100, &[40]), std::slice::from_ref(&r), &u, None);
        assert!((s.busy_s + os.busy_s - 0.06).abs() < 1e-12);
    }

    #[test]
    fn a_request_in_prefill_still_gets_a_share_and_intervals_are_cut_where_requests_start() {
        // O arrives halfway through the interval and writes no chunk: [0,50) is R's alone,
        // [50,100) is split 1:1.
        let r = act(0, 100, &[]);
        let o = act(50, 500, &[]);
        let u = util(&[(0, 100, 1.0)]);
        let s = fair_share(&r, std::slice::from_ref(&o), &u, None);
        assert!((s.busy_s - (0.05 + 0.025)).abs() < 1e-12, "{s:?}");
        assert_eq!(s.energy, None);
        let so = fair_share(&o, &[r], &u, None);
        assert!((s.busy_s + so.busy_s - 0.1).abs() < 1e-12);
    }

    #[test]
    fn shares_of_many_overlapping_requests_add_up_to_the_union() {
        let reqs = [
            act(0, 250, &[20, 60, 110, 190]),
            act(40, 180, &[70, 80, 150]),
            act(90, 400, &[100, 120, 300, 310, 320]),
            act(260, 330, &[]),
        ];
        let u = util(&[
            (0, 100, 0.3),
            (100, 200, 0.9),
            (200, 300, 0.5),
            (300, 400, 0.7),
        ]);
        let energy = flat_energy();
        let (mut busy, mut joules) = (0.0, 0.0);
        for (k, r) in reqs.iter().enumerate() {
            let others: Vec<Activity> = reqs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != k)
                .map(|(_, o)| o.clone())
                .collect();
            let s = fair_share(r, &others, &u, Some(&energy));
            busy += s.busy_s;
            joules += s.energy.unwrap();
        }
        let whole = 0.1 * (0.3 + 0.9 + 0.5 + 0.7);
        assert!((busy - whole).abs() < 1e-12, "{busy} vs {whole}");
        assert!((joules - 4000.0).abs() < 1e-6, "{joules}");
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
