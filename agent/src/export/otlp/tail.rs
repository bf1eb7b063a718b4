//! `OTEL_TRACES_SAMPLER=infertap_tail`: tail sampling decided when a request ends.
//!
//! Every span is finished before export decides anything, so the agent can look at how the
//! request went: keep every errored, server-aborted, cancelled, incomplete or slow one (per-model
//! thresholds on time to first token, inter-token p95 and duration), and a ratio of the rest
//! decided on the trace id alone. Pure: no I/O, no clock; [`TailPolicy::decide`] is a function of
//! the span's typed summary and its trace id.
//!
//! The ratio part is OpenTelemetry's `TraceIdRatioBased` rule, the same function as the
//! `traceidratio` sampler here and in the OTel SDKs (Rust, Go, Java): the trace id's bytes 8..16
//! read as a big-endian `u64`, shifted right by one, kept when below `ratio × 2^63`. So the
//! agents of every node (the EPP's and the model server's) and any SDK using that rule keep the
//! same traces of the ordinary rest without talking to each other. What is kept for being slow
//! or failed is decided per node: see `docs/spans.md` ("Tail sampling").

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::AtomicU64;

use opentelemetry::trace::{SamplingDecision, SpanKind, TraceId};
use opentelemetry_sdk::trace::{Sampler, ShouldSample};

use crate::stats::Stats;
use crate::trace::summary::Summary;

/// Why a span was kept (the value of `infertap.sampling.reason`), in the order they are checked:
/// the first that applies is the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeepReason {
    /// The span's status is ERROR (5xx, an error event in a stream, a failed call).
    Error,
    /// The server closed the connection before the response ended.
    ServerAborted,
    /// The client went away before the response ended.
    Cancelled,
    /// Bytes of the request or response were lost (the span is marked incomplete).
    Incomplete,
    /// Time to first token over the model's threshold.
    SlowTtft,
    /// Inter-token p95 over the model's threshold.
    SlowItl,
    /// Duration over the model's threshold.
    SlowDuration,
    /// An ordinary request whose trace id fell in the kept ratio.
    Ratio,
}

impl KeepReason {
    pub const ALL: [KeepReason; 8] = [
        KeepReason::Error,
        KeepReason::ServerAborted,
        KeepReason::Cancelled,
        KeepReason::Incomplete,
        KeepReason::SlowTtft,
        KeepReason::SlowItl,
        KeepReason::SlowDuration,
        KeepReason::Ratio,
    ];

    /// The `Stats` counter of spans kept for this reason.
    pub fn counter(self, stats: &Stats) -> &AtomicU64 {
        match self {
            KeepReason::Error => &stats.spans_kept_error,
            KeepReason::ServerAborted => &stats.spans_kept_server_aborted,
            KeepReason::Cancelled => &stats.spans_kept_cancelled,
            KeepReason::Incomplete => &stats.spans_kept_incomplete,
            KeepReason::SlowTtft => &stats.spans_kept_slow_ttft,
            KeepReason::SlowItl => &stats.spans_kept_slow_itl,
            KeepReason::SlowDuration => &stats.spans_kept_slow_duration,
            KeepReason::Ratio => &stats.spans_kept_ratio,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeepReason::Error => "error",
            KeepReason::ServerAborted => "server_aborted",
            KeepReason::Cancelled => "cancelled",
            KeepReason::Incomplete => "incomplete",
            KeepReason::SlowTtft => "slow_ttft",
            KeepReason::SlowItl => "slow_itl",
            KeepReason::SlowDuration => "slow_duration",
            KeepReason::Ratio => "ratio",
        }
    }
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What makes a request slow, in seconds; `None` never counts as slow.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub ttft_s: Option<f64>,
    pub itl_p95_s: Option<f64>,
    pub duration_s: Option<f64>,
}

impl Default for Thresholds {
    /// 2 s to the first token, 250 ms inter-token p95, 60 s in all.
    fn default() -> Self {
        Self {
            ttft_s: Some(2.0),
            itl_p95_s: Some(0.25),
            duration_s: Some(60.0),
        }
    }
}

/// The slow thresholds: one set for every model, and overrides per request model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlowThresholds {
    pub default: Thresholds,
    pub per_model: BTreeMap<String, Thresholds>,
}

/// A line of a thresholds file that could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {problem}")]
pub struct ThresholdsError {
    pub line: usize,
    pub problem: String,
}

impl SlowThresholds {
    /// The thresholds of requests for `model` (the default set for an unknown or missing one).
    pub fn of(&self, model: Option<&str>) -> &Thresholds {
        model
            .and_then(|m| self.per_model.get(m))
            .unwrap_or(&self.default)
    }

    /// Reads a thresholds file over `self` (the flags' values). One model per line:
    ///
    /// ```text
    /// # model            thresholds in seconds (any of the three; 0 or "off" disables one)
    /// *                  ttft=2 itl=0.25 duration=60
    /// llama-3-70b        ttft=4 itl=0.1
    /// ```
    ///
    /// `*` changes the default set; a model's line starts from the default set (as it is after
    /// the lines above it) and changes what it names.
    pub fn with_file(mut self, text: &str) -> Result<Self, ThresholdsError> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            let mut words = line.split_whitespace();
            let Some(model) = words.next() else { continue };
            let err = |problem: String| ThresholdsError {
                line: i + 1,
                problem,
            };
            let mut t = if model == "*" {
                self.default
            } else {
                self.per_model.get(model).copied().unwrap_or(self.default)
            };
            let mut any = false;
            for word in words {
                let (key, value) = word
                    .split_once('=')
                    .ok_or_else(|| err(format!("{word:?} is not key=seconds")))?;
                let value = match value {
                    "off" => None,
                    v => match v.parse::<f64>() {
                        Ok(s) if s.is_finite() && s >= 0.0 => (s > 0.0).then_some(s),
                        _ => return Err(err(format!("{value:?} is not a number of seconds"))),
                    },
                };
                match key {
                    "ttft" => t.ttft_s = value,
                    "itl" => t.itl_p95_s = value,
                    "duration" => t.duration_s = value,
                    _ => {
                        return Err(err(format!(
                            "unknown threshold {key:?} (use ttft, itl or duration)"
                        )))
                    }
                }
                any = true;
            }
            if !any {
                return Err(err(format!("{model:?} has no threshold")));
            }
            if model == "*" {
                self.default = t;
            } else {
                self.per_model.insert(model.to_string(), t);
            }
        }
        Ok(self)
    }
}

/// The `infertap_tail` policy: its slow thresholds and the ratio of the rest it keeps.
#[derive(Clone, Debug)]
pub struct TailPolicy {
    thresholds: SlowThresholds,
    ratio: f64,
    rest: Sampler,
}

impl TailPolicy {
    pub fn new(ratio: f64, thresholds: SlowThresholds) -> Self {
        Self {
            thresholds,
            ratio,
            rest: Sampler::TraceIdRatioBased(ratio),
        }
    }

    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Why a request that ended as `summary` says is kept, or `None` when it is not.
    pub fn decide(&self, trace_id: [u8; 16], summary: &Summary) -> Option<KeepReason> {
        if summary.failed {
            return Some(KeepReason::Error);
        }
        if summary.server_aborted {
            return Some(KeepReason::ServerAborted);
        }
        if summary.cancelled {
            return Some(KeepReason::Cancelled);
        }
        if summary.incomplete {
            return Some(KeepReason::Incomplete);
        }
        let t = self.thresholds.of(summary.request_model.as_deref());
        let over = |value: Option<f64>, limit: Option<f64>| matches!((value, limit), (Some(v), Some(l)) if v > l);
        if over(summary.ttft_s, t.ttft_s) {
            return Some(KeepReason::SlowTtft);
        }
        if over(summary.itl_p95_s, t.itl_p95_s) {
            return Some(KeepReason::SlowItl);
        }
        if over(Some(summary.duration_s), t.duration_s) {
            return Some(KeepReason::SlowDuration);
        }
        self.rest_kept(trace_id).then_some(KeepReason::Ratio)
    }

    /// The ratio part alone: the `TraceIdRatioBased` rule on the trace id.
    pub fn rest_kept(&self, trace_id: [u8; 16]) -> bool {
        let result = self.rest.should_sample(
            None,
            TraceId::from_bytes(trace_id),
            "",
            &SpanKind::Server,
            &[],
            &[],
        );
        result.decision == SamplingDecision::RecordAndSample
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ordinary() -> Summary {
        Summary {
            server: true,
            duration_s: 0.5,
            request_model: Some("m".into()),
            ttft_s: Some(0.1),
            itl_p95_s: Some(0.02),
            ..Summary::default()
        }
    }

    fn id(low: u64) -> [u8; 16] {
        let mut t = [0xab; 16];
        t[8..].copy_from_slice(&low.to_be_bytes());
        t
    }

    #[test]
    fn failed_and_slow_requests_are_kept_at_ratio_zero() {
        let p = TailPolicy::new(0.0, SlowThresholds::default());
        assert_eq!(p.decide(id(0), &ordinary()), None);
        type Case = (fn(&mut Summary), KeepReason);
        let cases: [Case; 7] = [
            (|s| s.failed = true, KeepReason::Error),
            (|s| s.server_aborted = true, KeepReason::ServerAborted),
            (|s| s.cancelled = true, KeepReason::Cancelled),
            (|s| s.incomplete = true, KeepReason::Incomplete),
            (|s| s.ttft_s = Some(2.5), KeepReason::SlowTtft),
            (|s| s.itl_p95_s = Some(0.3), KeepReason::SlowItl),
            (|s| s.duration_s = 61.0, KeepReason::SlowDuration),
        ];
        for (change, reason) in cases {
            let mut s = ordinary();
            change(&mut s);
            assert_eq!(p.decide(id(0), &s), Some(reason), "{s:?}");
        }
    }

    #[test]
    fn the_first_reason_in_order_wins() {
        let p = TailPolicy::new(1.0, SlowThresholds::default());
        let s = Summary {
            failed: true,
            cancelled: true,
            ttft_s: Some(9.0),
            ..ordinary()
        };
        assert_eq!(p.decide(id(0), &s), Some(KeepReason::Error));
        assert_eq!(p.decide(id(0), &ordinary()), Some(KeepReason::Ratio));
    }

    #[test]
    fn per_model_thresholds_from_a_file() {
        let file = "# thresholds\n* ttft=1 duration=off\nbig itl=0.5   # slower decode\n";
        let t = SlowThresholds::default().with_file(file).unwrap();
        assert_eq!(t.default.ttft_s, Some(1.0));
        assert_eq!(t.default.duration_s, None);
        let big = t.of(Some("big"));
        assert_eq!((big.ttft_s, big.itl_p95_s), (Some(1.0), Some(0.5)));
        let p = TailPolicy::new(0.0, t);
        let slow_itl = |model: &str| Summary {
            itl_p95_s: Some(0.3),
            request_model: Some(model.into()),
            ..ordinary()
        };
        assert_eq!(p.decide(id(0), &slow_itl("m")), Some(KeepReason::SlowItl));
        assert_eq!(p.decide(id(0), &slow_itl("big")), None);
        let long = Summary {
            duration_s: 1e6,
            ..ordinary()
        };
        assert_eq!(p.decide(id(0), &long), None, "duration is off");

        for (bad, line) in [("m ttft", 1), ("\nm ttft=x", 2), ("m speed=1", 1), ("m", 1)] {
            let e = SlowThresholds::default().with_file(bad).unwrap_err();
            assert_eq!(e.line, line, "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_ratio_rule_is_the_trace_id_ratio_rule() {
        let p = TailPolicy::new(0.5, SlowThresholds::default());
        // (low >> 1) < 0.5 × 2^63 = 2^62.
        assert!(p.rest_kept(id(0)));
        assert!(p.rest_kept(id((1 << 63) - 1)));
        assert!(!p.rest_kept(id(1 << 63)));
        assert!(!p.rest_kept(id(u64::MAX)));
        // The same function as the `traceidratio` sampler.
        let sdk = Sampler::TraceIdRatioBased(0.5);
        for k in 0..1000u64 {
            let t = id(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let sdk_keeps = sdk
                .should_sample(
                    None,
                    TraceId::from_bytes(t),
                    "",
                    &SpanKind::Server,
                    &[],
                    &[],
                )
                .decision
                == SamplingDecision::RecordAndSample;
            assert_eq!(p.rest_kept(t), sdk_keeps);
        }
    }

    #[test]
    fn two_agents_agree_on_the_rest() {
        // Two nodes' policies, with different slow thresholds: the ratio part depends on the
        // trace id alone, so both keep exactly the same ordinary requests.
        let a = TailPolicy::new(0.3, SlowThresholds::default());
        let b = TailPolicy::new(
            0.3,
            SlowThresholds::default().with_file("* ttft=10").unwrap(),
        );
        let mut kept = 0;
        for k in 0..10_000u64 {
            let t = id(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (da, db) = (a.decide(t, &ordinary()), b.decide(t, &ordinary()));
            assert_eq!(da, db, "trace {k}");
            kept += usize::from(da.is_some());
        }
        assert!((2_800..=3_200).contains(&kept), "kept {kept} of 10000");
    }
}
