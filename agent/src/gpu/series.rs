//! Bounded per-GPU time series and the alignment maths: a figure over a request's window
//! (time-weighted mean, max, coverage, resolution) and a counter (energy) between two instants.
//!
//! Times are kernel `CLOCK_MONOTONIC` nanoseconds, the clock spans use; the sources convert their
//! own timestamps before pushing. Pure: no I/O, no clocks, never panics.
//!
//! **Held readings.** A source that reports seldom (dcgm-exporter: every 30 s by default) sets a
//! hold: its latest value stays in effect for that long after its interval ends, so a request
//! between two readings gets the reading in effect (counters: extrapolated at the last rate)
//! instead of nothing. The held part never counts as covered: [`WindowStat::coverage`] stays the
//! measured share, and [`WindowStat::age_ns`] says how old the newest reading used was.

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
    /// How long the latest value stays in effect after its interval (0: not held).
    hold_ns: u64,
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
    /// Nanoseconds of the window after the last sample that took the held latest value.
    pub held_ns: u64,
    /// How far the newest sample used ends before the window's end (0 when samples reach it);
    /// `None` when no sample was used.
    pub age_ns: Option<u64>,
}

impl WindowStat {
    /// Covered share of the window, 0–1 (1 for an empty window inside a sample).
    pub fn coverage(&self) -> f64 {
        if self.window_ns == 0 {
            let inside = self.mean.is_some() && self.age_ns == Some(0);
            return if inside { 1.0 } else { 0.0 };
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

    /// Keeps the latest value in effect for `ns` after its interval ends (0: not held).
    pub fn set_hold(&mut self, ns: u64) {
        self.hold_ns = ns;
    }

    pub fn hold_ns(&self) -> u64 {
        self.hold_ns
    }

    /// The held part of `[a, b]`: from the last interval's end (or `a`) to `b`, at most `hold_ns`
    /// past that end; with the held value.
    fn held(&self, a: u64, b: u64) -> Option<Interval> {
        let last = self.intervals.back().filter(|_| self.hold_ns > 0)?;
        let start_ns = a.max(last.end_ns);
        let end_ns = b.min(last.end_ns.saturating_add(self.hold_ns));
        (start_ns <= end_ns).then_some(Interval {
            start_ns,
            end_ns,
            value: last.value,
        })
    }

    /// The intervals in effect over `[a, b]`: the overlapping ones, then the held latest value
    /// up to `b` (the input of the fair share).
    pub fn in_effect(&self, a: u64, b: u64) -> Vec<Interval> {
        let mut v: Vec<Interval> = self.overlapping(a, b).copied().collect();
        v.extend(self.held(a, b).filter(|h| h.end_ns > h.start_ns));
        v
    }

    /// A copy holding only what [`Series::window`] and [`Series::in_effect`] over `[a, b]` read
    /// (the overlapping intervals and the last 16): bounded, to compute on outside a lock.
    pub fn clip(&self, a: u64, b: u64) -> Series {
        let b = b.max(a);
        let first = self.intervals.partition_point(|i| i.end_ns <= a);
        let end = first + self.overlapping(a, b).count();
        let tail = self.intervals.len().saturating_sub(16);
        let mut intervals: VecDeque<Interval> = VecDeque::new();
        if end >= tail {
            intervals.extend(self.intervals.range(first.min(tail)..).copied());
        } else {
            intervals.extend(self.intervals.range(first..end).copied());
            intervals.extend(self.intervals.range(tail..).copied());
        }
        Series {
            intervals,
            min_resolution_ns: self.min_resolution_ns,
            hold_ns: self.hold_ns,
        }
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
        let mut newest_end: Option<u64> = None;
        for i in self.overlapping(a, b) {
            let o = i.overlap(a, b);
            weighted += i.value * o as f64;
            covered += o;
            max = Some(max.map_or(i.value, |m: f64| m.max(i.value)));
            lens.push(i.len());
            newest_end = Some(i.end_ns);
            if o == 0 {
                containing = Some(i.value);
            }
        }
        let mut held_ns = 0;
        if let Some(h) = self.held(a, b) {
            held_ns = h.end_ns - h.start_ns;
            weighted += h.value * held_ns as f64;
            max = Some(max.map_or(h.value, |m: f64| m.max(h.value)));
            containing = containing.or(Some(h.value));
            newest_end = newest_end.max(self.covered_until());
        }
        let mean = if covered + held_ns > 0 {
            Some(weighted / (covered + held_ns) as f64)
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
            held_ns,
            age_ns: newest_end.map(|e| b.saturating_sub(e)),
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
    /// How long past the last reading the counter is extrapolated at its last rate (0: not).
    hold_ns: u64,
}

/// The counter's increase over a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CounterWindow {
    /// Increase over the covered part of the window, interpolated at its ends.
    pub increase: f64,
    pub covered_ns: u64,
    pub window_ns: u64,
    /// Part of the window past the last reading, extrapolated at the last rate (held).
    pub held_ns: u64,
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

    /// Extrapolates the counter at its last rate for `ns` past the last reading (0: never).
    pub fn set_hold(&mut self, ns: u64) {
        self.hold_ns = ns;
    }

    pub fn hold_ns(&self) -> u64 {
        self.hold_ns
    }

    /// A copy holding only the readings [`Counter::window`] and [`Counter::at`] need within
    /// `[a, b]` (one either side, and the last two for the rate): bounded, to compute on outside
    /// a lock.
    pub fn clip(&self, a: u64, b: u64) -> Counter {
        let b = b.max(a);
        let first = self
            .points
            .partition_point(|&(t, _)| t < a)
            .saturating_sub(1);
        let end = (self.points.partition_point(|&(t, _)| t <= b) + 1).min(self.points.len());
        let tail = self.points.len().saturating_sub(2);
        let mut points = VecDeque::new();
        if end >= tail {
            points.extend(self.points.range(first.min(tail)..).copied());
        } else {
            points.extend(self.points.range(first..end).copied());
            points.extend(self.points.range(tail..).copied());
        }
        Counter {
            points,
            last_raw: self.last_raw,
            total: self.total,
            wraps: self.wraps,
            hold_ns: self.hold_ns,
        }
    }

    pub fn covered_until(&self) -> Option<u64> {
        self.points.back().map(|&(t, _)| t)
    }

    /// The unwrapped value at `t`, linearly interpolated; `None` outside the readings (past the
    /// last one, extrapolated at the last rate within the hold).
    pub fn at(&self, t: u64) -> Option<f64> {
        let &(tl, vl) = self.points.back()?;
        if t > tl {
            if t - tl > self.hold_ns {
                return None;
            }
            return Some(vl + self.rate_per_ns()? * (t - tl) as f64);
        }
        let i = self.points.partition_point(|&(pt, _)| pt < t);
        let &(t1, v1) = self.points.get(i)?;
        if t1 == t {
            return Some(v1);
        }
        let &(t0, v0) = self.points.get(i.checked_sub(1)?)?;
        Some(v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64)
    }

    /// The increase over `[a, b]`, clipped to the span of the readings (and the hold past the
    /// last one, when the rate is known).
    pub fn window(&self, a: u64, b: u64) -> Option<CounterWindow> {
        let b = b.max(a);
        let first = self.points.front()?.0;
        let last = self.points.back()?.0;
        let reach = if self.hold_ns > 0 && self.rate_per_ns().is_some() {
            last.saturating_add(self.hold_ns)
        } else {
            last
        };
        let (ca, cb) = (a.max(first), b.min(reach));
        if cb < ca {
            return None;
        }
        let measured = cb.min(last).saturating_sub(ca);
        Some(CounterWindow {
            increase: self.at(cb)? - self.at(ca)?,
            covered_ns: measured,
            window_ns: b - a,
            held_ns: cb - ca - measured,
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

    /// A dcgm-exporter-like series: one reading every 30 s, held for up to 70 s.
    fn held_30s() -> Series {
        let mut s = Series::default();
        s.push(0, 30_000 * MS, 0.4);
        s.push(30_000 * MS, 60_000 * MS, 0.8);
        s.set_min_resolution(30_000 * MS);
        s.set_hold(70_000 * MS);
        s
    }

    #[test]
    fn a_held_series_gives_a_window_after_its_last_reading_that_reading_with_its_age() {
        let s = held_30s();
        // A 200 ms request 5 s after the last reading: the reading in effect, 5.2 s old at the
        // request's end, nothing measured over the window.
        let w = s.window(65_000 * MS, 65_200 * MS);
        assert_eq!(w.mean, Some(0.8));
        assert_eq!(w.max, Some(0.8));
        assert_eq!(w.covered_ns, 0);
        assert_eq!(w.coverage(), 0.0);
        assert_eq!(w.held_ns, 200 * MS);
        assert_eq!(w.age_ns, Some(5_200 * MS));
        assert_eq!(w.resolution_ns, Some(30_000 * MS));
        assert!(w.resolution_limited());
        // Straddling the last reading: measured part and held part, time-weighted.
        let w = s.window(50_000 * MS, 70_000 * MS);
        assert_eq!(w.mean, Some(0.8));
        assert!((w.coverage() - 0.5).abs() < 1e-12);
        let w = s.window(20_000 * MS, 40_000 * MS);
        assert!((w.mean.unwrap() - 0.6).abs() < 1e-12);
        assert_eq!((w.coverage(), w.age_ns), (1.0, Some(0)));
        // Past the hold, nothing: the source has stopped.
        let w = s.window(140_000 * MS, 141_000 * MS);
        assert_eq!((w.mean, w.coverage()), (None, 0.0));
        // An unheld series gives nothing after its last sample (NVML: the span waits instead).
        let mut s = s;
        s.set_hold(0);
        assert_eq!(s.window(65_000 * MS, 65_200 * MS).mean, None);
    }

    #[test]
    fn in_effect_and_clip_keep_what_a_window_reads() {
        let s = held_30s();
        let v = s.in_effect(50_000 * MS, 70_000 * MS);
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[1],
            Interval {
                start_ns: 60_000 * MS,
                end_ns: 70_000 * MS,
                value: 0.8
            }
        );
        // A clip of a long series answers every window inside it as the series does.
        let long = ramp(3_000);
        for (a, b) in [
            (1_000, 1_250),
            (100_000, 150_000),
            (299_000, 301_000),
            (5, 5),
        ] {
            let (a, b) = (a * MS, b * MS);
            let c = long.clip(a, b);
            assert!(c.len() <= 16 + 501, "{}", c.len());
            assert_eq!(c.window(a, b), long.window(a, b));
            assert_eq!(c.typical_len(), long.typical_len());
        }
        let mut c = Counter::default();
        for k in 0..1_000u64 {
            c.push(k * 100 * MS, k * 1_000);
        }
        c.set_hold(1_000 * MS);
        let k = c.clip(20_050 * MS, 20_450 * MS);
        assert!(k.points.len() <= 8, "{}", k.points.len());
        assert_eq!(
            k.window(20_050 * MS, 20_450 * MS),
            c.window(20_050 * MS, 20_450 * MS)
        );
        let end = 99_900 * MS;
        assert_eq!(k.window(end, end + 500 * MS), c.window(end, end + 500 * MS));
    }

    #[test]
    fn a_held_counter_is_extrapolated_at_its_last_rate_and_says_so() {
        // 300 W read every 30 s (mJ).
        let mut c = Counter::default();
        c.push(0, 0);
        c.push(30_000 * MS, 9_000_000);
        assert!(c.window(35_000 * MS, 36_000 * MS).is_none());
        c.set_hold(60_000 * MS);
        let w = c.window(35_000 * MS, 36_000 * MS).unwrap();
        assert!((w.increase - 300_000.0).abs() < 1e-6, "{w:?}");
        assert_eq!((w.covered_ns, w.held_ns), (0, 1_000 * MS));
        let w = c.window(29_000 * MS, 31_000 * MS).unwrap();
        assert!((w.increase - 600_000.0).abs() < 1e-6);
        assert_eq!((w.covered_ns, w.held_ns), (1_000 * MS, 1_000 * MS));
        assert!(c.at(95_000 * MS).is_none());
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
