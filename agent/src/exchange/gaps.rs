//! A fixed-size sketch of inter-chunk gaps: what a streamed response's gaps cost once it has more
//! content chunks than an exchange keeps times of (`CHUNK_TIMES_MAX`).
//!
//! Log-bucketed like DDSketch: bucket `i ≥ 1` holds the gaps in `(MIN·γ^(i-1), MIN·γ^i]`
//! nanoseconds and stands for `MIN·2γ^i/(γ+1)`, so any quantile read back is within
//! [`RELATIVE_ERROR`] of a gap of that rank; bucket 0 holds gaps up to `MIN` (1 µs, an absolute
//! error of at most 1 µs). Gaps beyond the top bucket are counted in it. Count, sum and maximum
//! are exact. Pure; its size never grows after [`GapSketch::new`].

/// Bucket growth factor.
pub const GAMMA: f64 = 1.04;
/// The bound on a quantile's relative error, `(γ-1)/(γ+1)` rounded up.
pub const RELATIVE_ERROR: f64 = 0.02;
/// Gaps up to this many nanoseconds share bucket 0.
const MIN_NS: f64 = 1_000.0;
/// Buckets: `MIN·γ^639` ≈ 77,000 s, far beyond any gap worth telling apart.
pub const BUCKETS: usize = 640;

/// Gaps (nanoseconds) counted in log buckets, with exact count, sum and maximum.
#[derive(Clone, Debug, PartialEq)]
pub struct GapSketch {
    counts: Box<[u64]>,
    count: u64,
    sum_ns: u64,
    max_ns: u64,
}

impl Default for GapSketch {
    fn default() -> Self {
        Self::new()
    }
}

impl GapSketch {
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }

    fn index(gap_ns: u64) -> usize {
        let g = gap_ns as f64;
        if g <= MIN_NS {
            return 0;
        }
        let i = ((g / MIN_NS).ln() / GAMMA.ln()).ceil();
        (i as usize).clamp(1, BUCKETS - 1)
    }

    /// The value bucket `i` stands for, in nanoseconds.
    fn value(i: usize) -> f64 {
        if i == 0 {
            return MIN_NS / 2.0;
        }
        MIN_NS * 2.0 * GAMMA.powi(i as i32) / (GAMMA + 1.0)
    }

    pub fn add(&mut self, gap_ns: u64) {
        self.counts[Self::index(gap_ns)] += 1;
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(gap_ns);
        self.max_ns = self.max_ns.max(gap_ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
    }

    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    /// The gap of rank `ceil(p·n)` (the same rank as an exact sorted list's), within
    /// [`RELATIVE_ERROR`] (never above the maximum); `None` when empty.
    pub fn quantile_ns(&self, p: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::value(i).min(self.max_ns as f64));
            }
        }
        Some(self.max_ns as f64)
    }

    /// Each non-empty bucket's value (nanoseconds, never above the maximum) and its count.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let max = self.max_ns as f64;
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(move |(i, c)| (Self::value(i).min(max), *c))
    }

    /// Bytes this sketch holds (its bucket array included): constant.
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.counts.len() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_the_stated_relative_error() {
        let mut s = GapSketch::new();
        let mut exact: Vec<u64> = (1..=100_000u64)
            .map(|i| i * 997 % 50_000_000 + 2_000)
            .collect();
        for g in &exact {
            s.add(*g);
        }
        exact.sort_unstable();
        let n = exact.len();
        for p in [0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let want = exact[((p * n as f64).ceil() as usize).clamp(1, n) - 1] as f64;
            let got = s.quantile_ns(p).unwrap();
            assert!(
                (got - want).abs() <= RELATIVE_ERROR * want,
                "p{p}: {got} vs {want}"
            );
        }
        assert_eq!(s.count(), n as u64);
        assert_eq!(s.sum_ns(), exact.iter().sum::<u64>());
        assert_eq!(s.max_ns(), *exact.last().unwrap());
        assert_eq!(s.buckets().map(|(_, c)| c).sum::<u64>(), n as u64);
    }

    #[test]
    fn extremes_land_in_the_end_buckets() {
        let mut s = GapSketch::new();
        s.add(0);
        s.add(u64::MAX);
        assert_eq!(s.count(), 2);
        assert_eq!(s.quantile_ns(0.5), Some(MIN_NS / 2.0));
        assert!(s.quantile_ns(1.0).unwrap() <= u64::MAX as f64);
        assert_eq!(GapSketch::new().quantile_ns(0.5), None);
    }
}
