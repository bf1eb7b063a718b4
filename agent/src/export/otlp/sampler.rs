//! Which finished spans go to OTLP: `OTEL_TRACES_SAMPLER` applied by the agent before export.
//!
//! The spans already exist when the decision is made (they describe requests the agent saw on the
//! wire), so sampling here only decides what is *exported*; `/spans` shows every span. Decisions
//! are the OpenTelemetry SDK's own samplers, so they are deterministic on the trace id exactly as
//! in any OTel SDK: agents on two nodes keep or drop the same traces without talking to each
//! other, and a parent-based sampler follows the incoming `traceparent`'s sampled flag.

use opentelemetry::trace::{
    SamplingDecision, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::Context;
use opentelemetry_sdk::trace::{Sampler, ShouldSample};

use super::convert::sdk_span_kind;
use super::tail::{KeepReason, SlowThresholds, TailPolicy};
use crate::trace::span::FinishedSpan;
use crate::trace::summary::Summary;

/// What a sampler says of one finished span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Exported; with the tail policy, the reason it was kept.
    Export(Option<KeepReason>),
    /// Not exported (still on `/spans`).
    Drop,
}

/// A sampler named by `OTEL_TRACES_SAMPLER` (with its `_ARG`).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum SamplerConfig {
    /// `always_on`
    AlwaysOn,
    /// `always_off`
    AlwaysOff,
    /// `traceidratio`: keeps this fraction of traces, by trace id.
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default).
    #[default]
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`
    ParentBasedTraceIdRatio(f64),
    /// `infertap_tail`: decided when the request ends — every errored, server-aborted,
    /// cancelled, incomplete or slow request, and this fraction of the rest by trace id
    /// (`tail::TailPolicy`). A missing `OTEL_TRACES_SAMPLER_ARG` means 0.1.
    InfertapTail(f64),
}

/// The ratio of ordinary requests `infertap_tail` keeps when `OTEL_TRACES_SAMPLER_ARG` is unset.
pub const TAIL_DEFAULT_RATIO: f64 = 0.1;

impl SamplerConfig {
    /// Reads `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`. A missing ratio means 1.0.
    /// Returns the sampler to use and, when the settings were not understood, what was wrong
    /// (then the sampler is the OTel fallback: the default sampler, or a ratio of 1.0).
    pub fn parse(name: Option<&str>, arg: Option<&str>) -> (Self, Option<String>) {
        let ratio_or = |missing: f64| -> (f64, Option<String>) {
            match arg.map(|a| (a, a.trim().parse::<f64>())) {
                None => (missing, None),
                Some((_, Ok(r))) if (0.0..=1.0).contains(&r) => (r, None),
                Some((a, _)) => (
                    1.0,
                    Some(format!(
                        "OTEL_TRACES_SAMPLER_ARG={a:?} is not a ratio from 0 to 1; using {missing}"
                    )),
                ),
            }
        };
        let ratio = || ratio_or(1.0);
        match name.map(str::trim) {
            None => (Self::default(), None),
            Some("always_on") => (Self::AlwaysOn, None),
            Some("always_off") => (Self::AlwaysOff, None),
            Some("parentbased_always_on") => (Self::ParentBasedAlwaysOn, None),
            Some("parentbased_always_off") => (Self::ParentBasedAlwaysOff, None),
            Some("traceidratio") => {
                let (r, problem) = ratio();
                (Self::TraceIdRatio(r), problem)
            }
            Some("parentbased_traceidratio") => {
                let (r, problem) = ratio();
                (Self::ParentBasedTraceIdRatio(r), problem)
            }
            Some("infertap_tail") => {
                let (r, problem) = ratio_or(TAIL_DEFAULT_RATIO);
                (Self::InfertapTail(r), problem)
            }
            Some(other) => (
                Self::default(),
                Some(format!(
                    "OTEL_TRACES_SAMPLER={other:?} is not supported (use always_on, always_off, \
                     traceidratio, parentbased_always_on, parentbased_always_off, \
                     parentbased_traceidratio or infertap_tail); using parentbased_always_on"
                )),
            ),
        }
    }

    /// The name `OTEL_TRACES_SAMPLER` gives this sampler.
    pub fn name(&self) -> &'static str {
        match self {
            Self::AlwaysOn => "always_on",
            Self::AlwaysOff => "always_off",
            Self::TraceIdRatio(_) => "traceidratio",
            Self::ParentBasedAlwaysOn => "parentbased_always_on",
            Self::ParentBasedAlwaysOff => "parentbased_always_off",
            Self::ParentBasedTraceIdRatio(_) => "parentbased_traceidratio",
            Self::InfertapTail(_) => "infertap_tail",
        }
    }

    /// The ratio of the ratio-based samplers.
    pub fn ratio(&self) -> Option<f64> {
        match *self {
            Self::TraceIdRatio(r) | Self::ParentBasedTraceIdRatio(r) | Self::InfertapTail(r) => {
                Some(r)
            }
            _ => None,
        }
    }

    fn sdk_sampler(&self) -> Sampler {
        match *self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
            // Decided by the tail policy; never asked.
            Self::InfertapTail(r) => Sampler::TraceIdRatioBased(r),
        }
    }
}

/// Decides, per finished span, whether OTLP export gets it: one of the SDK's head samplers, or
/// infertap's tail policy.
#[derive(Clone, Debug)]
pub enum SpanSampler {
    Head(Sampler),
    Tail(TailPolicy),
}

impl SpanSampler {
    /// A head sampler (for `infertap_tail`, a tail policy with the default slow thresholds).
    pub fn new(config: &SamplerConfig) -> Self {
        Self::with_thresholds(config, SlowThresholds::default())
    }

    /// The sampler `config` names; `infertap_tail` judges slowness by `slow`.
    pub fn with_thresholds(config: &SamplerConfig, slow: SlowThresholds) -> Self {
        match *config {
            SamplerConfig::InfertapTail(ratio) => Self::Tail(TailPolicy::new(ratio, slow)),
            _ => Self::Head(config.sdk_sampler()),
        }
    }

    /// Whether `span`, which ended as `summary` says, is exported, and (tail policy) why.
    pub fn decide(&self, span: &FinishedSpan, summary: &Summary) -> Verdict {
        match self {
            Self::Head(_) => {
                if self.should_export(span) {
                    Verdict::Export(None)
                } else {
                    Verdict::Drop
                }
            }
            Self::Tail(policy) => match policy.decide(span.trace_id, summary) {
                Some(reason) => Verdict::Export(Some(reason)),
                None => Verdict::Drop,
            },
        }
    }

    /// Whether a head sampler exports `span` (the tail policy: its trace-id ratio alone). A
    /// span with a parent is judged with that parent as a remote span context carrying the
    /// incoming `traceparent`'s sampled flag.
    pub fn should_export(&self, span: &FinishedSpan) -> bool {
        let sampler = match self {
            Self::Head(sampler) => sampler,
            Self::Tail(policy) => return policy.rest_kept(span.trace_id),
        };
        let trace_id = TraceId::from_bytes(span.trace_id);
        let parent = span.parent_span_id.map(|parent| {
            let flags = if span.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                SpanId::from_bytes(parent),
                flags,
                true,
                TraceState::default(),
            ))
        });
        let result = sampler.should_sample(
            parent.as_ref(),
            trace_id,
            &span.name,
            &sdk_span_kind(span.kind),
            &[],
            &[],
        );
        result.decision == SamplingDecision::RecordAndSample
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::store::tests::span;

    /// A root span (no parent) whose trace id's low 8 bytes are `low`.
    fn root(low: u64) -> FinishedSpan {
        let mut s = span(1);
        s.trace_id[8..].copy_from_slice(&low.to_be_bytes());
        s
    }

    fn child(sampled: bool, low: u64) -> FinishedSpan {
        let mut s = root(low);
        s.parent_span_id = Some([9; 8]);
        s.parent_is_remote = true;
        s.sampled = sampled;
        s
    }

    fn kept(config: SamplerConfig, spans: &[FinishedSpan]) -> usize {
        let sampler = SpanSampler::new(&config);
        spans.iter().filter(|s| sampler.should_export(s)).count()
    }

    /// 1000 trace ids spread evenly over the 64-bit space the ratio sampler reads.
    fn spread() -> Vec<FinishedSpan> {
        (0..1000u64).map(|i| root(i * (u64::MAX / 1000))).collect()
    }

    #[test]
    fn parse_names_and_ratios() {
        use SamplerConfig::*;
        assert_eq!(
            SamplerConfig::parse(None, None),
            (ParentBasedAlwaysOn, None)
        );
        assert_eq!(
            SamplerConfig::parse(Some("always_off"), None),
            (AlwaysOff, None)
        );
        assert_eq!(
            SamplerConfig::parse(Some("traceidratio"), Some("0.5")),
            (TraceIdRatio(0.5), None)
        );
        assert_eq!(
            SamplerConfig::parse(Some("parentbased_traceidratio"), None),
            (ParentBasedTraceIdRatio(1.0), None)
        );
        let (bad_ratio, problem) = SamplerConfig::parse(Some("traceidratio"), Some("2"));
        assert_eq!(bad_ratio, TraceIdRatio(1.0));
        assert!(problem.unwrap().contains("OTEL_TRACES_SAMPLER_ARG=\"2\""));
        assert_eq!(
            SamplerConfig::parse(Some("infertap_tail"), None),
            (InfertapTail(0.1), None)
        );
        assert_eq!(
            SamplerConfig::parse(Some("infertap_tail"), Some("0")),
            (InfertapTail(0.0), None)
        );
        let (unknown, problem) = SamplerConfig::parse(Some("xray"), None);
        assert_eq!(unknown, ParentBasedAlwaysOn);
        assert!(problem.unwrap().contains("\"xray\" is not supported"));
    }

    #[test]
    fn always_on_and_off() {
        let spans = spread();
        assert_eq!(kept(SamplerConfig::AlwaysOn, &spans), 1000);
        assert_eq!(kept(SamplerConfig::AlwaysOff, &spans), 0);
        // Not parent-based: an unsampled parent does not matter.
        assert_eq!(kept(SamplerConfig::AlwaysOn, &[child(false, 7)]), 1);
    }

    #[test]
    fn ratio_zero_one_and_half() {
        let spans = spread();
        assert_eq!(kept(SamplerConfig::TraceIdRatio(0.0), &spans), 0);
        assert_eq!(kept(SamplerConfig::TraceIdRatio(1.0), &spans), 1000);
        let half = kept(SamplerConfig::TraceIdRatio(0.5), &spans);
        assert!((490..=510).contains(&half), "kept {half} of 1000");
    }

    #[test]
    fn ratio_is_deterministic_on_the_low_trace_id_bits() {
        let sampler = SpanSampler::new(&SamplerConfig::TraceIdRatio(0.5));
        // (low >> 1) < 2^62 is kept, the rest dropped: the SDK's (and W3C's) rule.
        assert!(sampler.should_export(&root(0)));
        assert!(sampler.should_export(&root((1 << 63) - 1)));
        assert!(!sampler.should_export(&root(1 << 63)));
        assert!(!sampler.should_export(&root(u64::MAX)));
        // The high half of the trace id plays no part.
        let mut other_high = root(0);
        other_high.trace_id[..8].copy_from_slice(&[0xff; 8]);
        assert!(sampler.should_export(&other_high));
        for s in spread() {
            assert_eq!(sampler.should_export(&s), sampler.should_export(&s.clone()));
        }
    }

    #[test]
    fn parent_based_follows_the_sampled_flag() {
        let pb_on = SamplerConfig::ParentBasedAlwaysOn;
        assert_eq!(kept(pb_on, &[child(true, u64::MAX)]), 1);
        assert_eq!(kept(pb_on, &[child(false, 0)]), 0);
        assert_eq!(kept(pb_on, &[root(u64::MAX)]), 1);

        // Ratio 0 for roots, but a sampled parent is followed, and an unsampled one too.
        let pb_ratio0 = SamplerConfig::ParentBasedTraceIdRatio(0.0);
        assert_eq!(kept(pb_ratio0, &[child(true, u64::MAX)]), 1);
        assert_eq!(kept(pb_ratio0, &[child(false, 0)]), 0);
        assert_eq!(kept(pb_ratio0, &[root(0)]), 0);

        let pb_half = SamplerConfig::ParentBasedTraceIdRatio(0.5);
        assert_eq!(kept(pb_half, &[root(0), root(u64::MAX)]), 1);
        assert_eq!(
            kept(
                SamplerConfig::ParentBasedAlwaysOff,
                &[child(true, 0), root(0)]
            ),
            1
        );
    }
}
