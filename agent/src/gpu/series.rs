//! Bounded per-GPU time series and the alignment maths: a figure over a request's window
//! (time-weighted mean, max, coverage, resolution) and a counter (energy) between two instants.
//!
//! Times are kernel `CLOCK_MONOTONIC` nanoseconds, the clock spans use; the sources convert their
//! own timestamps before pushing. Pure: no I/O, no clocks, never panics.

use std::collections::VecDeque;

/// How long samples are kept.
pub const MAX_AGE_NS: u64 = 5 * 60 * 1_000_000_000;
/// Most intervals kept per series (5 minutes at 1/6 s is 1,800; GPM at 100 ms is 3,000).
pub const MAX_LEN: usize = 4096;

/// One figure's value over `[start_ns, end_ns)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub start_ns: u64,
    pub end_ns: u64,
    pub value: f64,
}

impl Interval {
    fn overlap(&self, a: u64, b: u64) -> u64 {
        self.end_ns.min(b).saturating_sub(self.start_ns.max(a))
    }

    fn len(&self) -> u64 {
        self.end_ns - self.start_ns
    }
}

/// Non-overlapping intervals in time order, bounded by age and count.
#[derive(Clone, Debug, Default)]
pub struct Series {
    intervals: VecDeque<Interval>,
    /// A floor on the reported resolution, for sources whose values are older than their
    /// intervals suggest (dcgm-exporter collects every 30 s, whatever the scrape interval).
    min_resolution_ns: u64,
}

/// A figure over a window `[a, b]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowStat {
    /// Time-weighted mean over the covered part of the window; for a window shorter than one
    /// sample, the value of the sample(s) that contain it.
    pub mean: Option<f64>,
    pub max: Option<f64>,
    /// Nanoseconds of the window covered by samples.
    pub covered_ns: u64,
    pub window_ns: u64,
    /// The typical length of one sample around the window (median of the overlapping ones).
    pub resolution_ns: Option<u64>,
}

impl WindowStat {
    /// Covered share of the window, 0–1 (1 for an empty window inside a sample).
    pub fn coverage(&self) -> f64 {
        if self.window_ns == 0 {
            return if self.mean.is_some() { 1.0 } else { 0.0 };
        }
        self.covered_ns as f64 / self.window_ns as f64
    }

    /// The window is shorter than one sample: its figure is the sample's, not the request's own.
    pub fn resolution_limited(&self) -> bool {
        self.resolution_ns.is_some_and(|r| self.window_ns < r)
    }
}

impl Series {
    /// Adds `value` over `[start, end)`; the part before the last interval's end is dropped (a
    /// source never rewrites what it reported). Non-finite values and empty intervals are ignored.
    pub fn push(&mut self, start_ns: u64, end_ns: u64, value: f64) {
        if !value.is_finite() {
            return;
        }
        let start_ns = match self.intervals.back() {
            Some(last) => start_ns.max(last.end_ns),
            None => start_ns,
        };
        if end_ns <= start_ns {
            return;
        }
        self.intervals.push_back(Interval {
            start_ns,
            end_ns,
            value,
        });
        while self.intervals.len() > MAX_LEN {
            self.intervals.pop_front();
        }
        let horizon = end_ns.saturating_sub(MAX_AGE_NS);
        while self.intervals.front().is_some_and(|i| i.end_ns < horizon) {
            self.intervals.pop_front();
        }
    }

    pub fn set_min_resolution(&mut self, ns: u64) {
        self.min_resolution_ns = ns;
    }

    /// Where the series' coverage ends.
    pub fn covered_until(&self) -> Option<u64> {
        self.intervals.back().map(|i| i.end_ns)
    }

    pub fn latest(&self) -> Option<&Interval> {
        self.intervals.back()
    }

    pub fn len(&self) -> usize {
        self.intervals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }

    /// The intervals that overlap `[a, b]` (or contain `a` when `a == b`).
    pub fn overlapping(&self, a: u64, b: u64) -> impl Iterator<Item = &Interval> {
        let first = self.intervals.partition_point(|i| i.end_ns <= a);
        self.intervals
            .range(first..)
            .take_while(move |i| i.start_ns < b || (a == b && i.start_ns <= a))
    }

    /// Median sample length of the last few intervals (the series' resolution now).
    pub fn typical_len(&self) -> Option<u64> {
        let mut lens: Vec<u64> = self
            .intervals
            .iter()
            .rev()
            .take(16)
            .map(Interval::len)
            .collect();
        median(&mut lens).map(|m| m.max(self.min_resolution_ns))
    }

    /// The figure over `[a, b]`.
    pub fn window(&self, a: u64, b: u64) -> WindowStat {
        let b = b.max(a);
        let mut weighted = 0.0;
        let mut covered = 0u64;
        let mut max: Option<f64> = None;
        let mut lens = Vec::new();
        let mut containing: Option<f64> = None;
        for i in self.overlapping(a, b) {
            let o = i.overlap(a, b);
            weighted += i.value * o as f64;
            covered += o;
            max = Some(max.map_or(i.value, |m: f64| m.max(i.value)));
            lens.push(i.len());
            if o == 0 {
                containing = Some(i.value);
            }
        }
        let mean = if covered > 0 {
            Some(weighted / covered as f64)
        } else {
            containing
        };
        let resolution_ns = median(&mut lens)
            .map(|m| m.max(self.min_resolution_ns))
            .or_else(|| self.typical_len());
        WindowStat {
            mean,
            max,
            covered_ns: covered,
            window_ns: b - a,
            resolution_ns,
        }
    }
}

fn median(v: &mut [u64]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

/// A monotonically increasing counter read at instants (energy in mJ), unwrapped. A reading below
/// the previous one is a wrap (counted in `wraps`) at an unknown modulus: the increase is taken as
/// a wrap at 2³² (previous reading in 32 bits) or 2⁶⁴ when that agrees with the rate just before
/// (at most twice the extrapolated increase, with 1 unit of slack), else as the extrapolated
/// increase itself (a counter wrapping at some other value, or reset by a driver reload).
#[derive(Clone, Debug, Default)]
pub struct Counter {
    /// (time, unwrapped total since the first reading).
    points: VecDeque<(u64, f64)>,
    last_raw: Option<u64>,
    total: f64,
    pub wraps: u64,
}

/// The counter's increase over a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CounterWindow {
    /// Increase over the covered part of the window, interpolated at its ends.
    pub increase: f64,
    pub covered_ns: u64,
    pub window_ns: u64,
}

impl Counter {
    /// A reading `raw` taken at `t_ns`; readings must come in time order (others are ignored).
    pub fn push(&mut self, t_ns: u64, raw: u64) {
        if self.points.back().is_some_and(|&(t, _)| t_ns <= t) {
            return;
        }
        let delta = match self.last_raw {
            None => 0,
            Some(prev) if raw >= prev => raw - prev,
            Some(prev) => {
                self.wraps += 1;
                let at_modulus = if prev <= u32::MAX as u64 {
                    (1u64 << 32) - prev + raw
                } else {
                    raw.wrapping_sub(prev)
                };
                match self.rate_per_ns() {
                    Some(rate) => {
                        let dt = t_ns - self.points.back().map_or(t_ns, |p| p.0);
                        let expected = rate * dt as f64;
                        if (at_modulus as f64) <= 2.0 * expected + 1.0 {
                            at_modulus
                        } else {
                            (expected.round() as u64).max(raw)
                        }
                    }
                    None => at_modulus,
                }
            }
        };
        self.last_raw = Some(raw);
        self.total += delta as f64;
        self.points.push_back((t_ns, self.total));
        while self.points.len() > MAX_LEN {
            self.points.pop_front();
        }
        let horizon = t_ns.saturating_sub(MAX_AGE_NS);
        while self.points.front().is_some_and(|&(t, _)| t < horizon) {
            self.points.pop_front();
        }
    }

    /// The rate between the last two readings.
    fn rate_per_ns(&self) -> Option<f64> {
        let n = self.points.len();
        let (t1, v1) = *self.points.get(n.checked_sub(1)?)?;
        let (t0, v0) = *self.points.get(n.checked_sub(2)?)?;
        (t1 > t0).then(|| (v1 - v0) / (t1 - t0) as f64)
    }

    pub fn last_raw(&self) -> Option<u64> {
        self.last_raw
    }

    pub fn covered_until(&self) -> Option<u64> {
        self.points.back().map(|&(t, _)| t)
    }

    /// The unwrapped value at `t`, linearly interpolated; `None` outside the readings.
    pub fn at(&self, t: u64) -> Option<f64> {
        let i = self.points.partition_point(|&(pt, _)| pt < t);
        let &(t1, v1) = self.points.get(i)?;
        if t1 == t {
            return Some(v1);
        }
        let &(t0, v0) = self.points.get(i.checked_sub(1)?)?;
        Some(v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64)
    }

    /// The increase over `[a, b]`, clipped to the span of the readings.
    pub fn window(&self, a: u64, b: u64) -> Option<CounterWindow> {
        let b = b.max(a);
        let first = self.points.front()?.0;
        let last = self.points.back()?.0;
        let (ca, cb) = (a.max(first), b.min(last));
        if cb < ca {
            return None;
        }
        Some(CounterWindow {
            increase: self.at(cb)? - self.at(ca)?,
            covered_ns: cb - ca,
            window_ns: b - a,
        })
    }

    /// Average rate (units per second) over the last `span_ns` of readings.
    pub fn recent_rate(&self, span_ns: u64) -> Option<f64> {
        let &(t1, v1) = self.points.back()?;
        let from = t1.saturating_sub(span_ns);
        let i = self.points.partition_point(|&(t, _)| t < from);
        let &(t0, v0) = self.points.get(i)?;
        (t1 > t0).then(|| (v1 - v0) / ((t1 - t0) as f64 / 1e9))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Samples of 100 ms from t = 1 s: 10%, 20%, …
    fn ramp(n: u64) -> Series {
        let mut s = Series::default();
        for k in 0..n {
            s.push(
                1000 * MS + k * 100 * MS,
                1100 * MS + k * 100 * MS,
                (k + 1) as f64 / 10.0,
            );
        }
        s
    }

    #[test]
    fn mean_is_time_weighted_over_the_overlap_and_max_over_touched_samples() {
        let s = ramp(5); // [1.0,1.1)=.1 [1.1,1.2)=.2 [1.2,1.3)=.3 [1.3,1.4)=.4 [1.4,1.5)=.5
        let w = s.window(1050 * MS, 1250 * MS);
        // 50 ms at .1, 100 ms at .2, 50 ms at .3
        let expect = (0.05 * 0.1 + 0.1 * 0.2 + 0.05 * 0.3) / 0.2;
        assert!((w.mean.unwrap() - expect).abs() < 1e-12, "{w:?}");
        assert_eq!(w.max, Some(0.3));
        assert_eq!(w.covered_ns, 200 * MS);
        assert_eq!(w.coverage(), 1.0);
        assert_eq!(w.resolution_ns, Some(100 * MS));
        assert!(!w.resolution_limited());
    }

    #[test]
    fn window_before_the_first_sample_has_no_figure() {
        let s = ramp(3);
        let w = s.window(100 * MS, 900 * MS);
        assert_eq!(w.mean, None);
        assert_eq!(w.max, None);
        assert_eq!(w.coverage(), 0.0);
        // Straddling the first sample: only the covered part counts.
        let w = s.window(900 * MS, 1100 * MS);
        assert_eq!(w.mean, Some(0.1));
        assert_eq!(w.covered_ns, 100 * MS);
        assert!((w.coverage() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn gaps_lower_coverage_not_the_mean() {
        let mut s = Series::default();
        s.push(0, 100 * MS, 0.8);
        s.push(300 * MS, 400 * MS, 0.4); // 200 ms without samples
        let w = s.window(0, 400 * MS);
        assert!((w.mean.unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(w.covered_ns, 200 * MS);
        assert!((w.coverage() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn a_request_shorter_than_one_sample_is_flagged_and_gets_the_sample_value() {
        let s = ramp(3);
        let w = s.window(1120 * MS, 1130 * MS);
        assert_eq!(w.mean, Some(0.2));
        assert!(w.resolution_limited());
        assert_eq!(w.coverage(), 1.0);
        // A zero-length window inside a sample.
        let w = s.window(1150 * MS, 1150 * MS);
        assert_eq!(w.mean, Some(0.2));
        assert!(w.resolution_limited());
    }

    #[test]
    fn overlapping_pushes_are_clipped_and_bad_values_ignored() {
        let mut s = Series::default();
        s.push(0, 100, 1.0);
        s.push(50, 150, 0.5); // clipped to [100,150)
        s.push(120, 140, 0.2); // entirely inside what was reported
        s.push(150, 200, f64::NAN);
        assert_eq!(s.len(), 2);
        let w = s.window(0, 150);
        assert!((w.mean.unwrap() - (100.0 + 25.0) / 150.0).abs() < 1e-12);
    }

    #[test]
    fn series_is_bounded_by_count_and_age() {
        let mut s = Series::default();
        for k in 0..(MAX_LEN as u64 + 10) {
            s.push(k * MS, (k + 1) * MS, 0.5);
        }
        assert_eq!(s.len(), MAX_LEN);
        s.push(MAX_AGE_NS * 2, MAX_AGE_NS * 2 + MS, 0.5);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn counter_is_interpolated_at_both_ends() {
        let mut c = Counter::default();
        c.push(1000 * MS, 5_000);
        c.push(1100 * MS, 6_000); // 10 W
        c.push(1200 * MS, 8_000); // 20 W
        let w = c.window(1050 * MS, 1150 * MS).unwrap();
        assert!((w.increase - (500.0 + 1000.0)).abs() < 1e-9);
        assert_eq!(w.covered_ns, w.window_ns);
        // Clipped to the readings.
        let w = c.window(900 * MS, 1100 * MS).unwrap();
        assert!((w.increase - 1000.0).abs() < 1e-9);
        assert_eq!(w.covered_ns, 100 * MS);
        assert!(c.window(0, 900 * MS).is_none());
        assert!((c.recent_rate(200 * MS).unwrap() - 15_000.0).abs() < 1e-6);
    }

    #[test]
    fn counter_wrap_is_unwrapped_at_32_and_64_bits() {
        let mut c = Counter::default();
        c.push(0, u32::MAX as u64 - 99);
        c.push(100 * MS, 100); // wrapped at 2^32: +200 (no rate known yet)
        assert_eq!(c.wraps, 1);
        assert!((c.window(0, 100 * MS).unwrap().increase - 200.0).abs() < 1e-9);
        let mut c = Counter::default();
        c.push(0, u64::MAX - 49);
        c.push(100 * MS, 50); // wrapped at 2^64: +100
        assert!((c.window(0, 100 * MS).unwrap().increase - 100.0).abs() < 1e-9);
        // Out-of-order readings are ignored.
        c.push(50 * MS, 0);
        assert_eq!(c.last_raw(), Some(50));
    }

    #[test]
    fn a_wrap_at_another_modulus_follows_the_rate_before_it() {
        // 10 mJ per ms, wrapping at 1,000,000 mJ.
        let mut c = Counter::default();
        c.push(0, 998_000);
        c.push(100 * MS, 999_000);
        c.push(200 * MS, 0); // 1,000,000 reached exactly: +1,000
        c.push(300 * MS, 1_000);
        assert_eq!(c.wraps, 1);
        let w = c.window(50 * MS, 250 * MS).unwrap();
        assert!((w.increase - 2_000.0).abs() < 1e-9, "{w:?}");
        // A 32-bit wrap agreeing with the rate is taken at 2^32.
        let mut c = Counter::default();
        let top = u32::MAX as u64 + 1;
        c.push(0, top - 2_000);
        c.push(100 * MS, top - 1_000);
        c.push(200 * MS, 500); // +1,500: within twice the rate
        assert!((c.window(100 * MS, 200 * MS).unwrap().increase - 1_500.0).abs() < 1e-9);
    }
}
