//! Prometheus text exposition (format 0.0.4): metric families in, text out.
//!
//! Owns the text format — `# HELP`/`# TYPE` lines, escaping, number formatting, cumulative
//! histogram buckets — and the [`MetricSource`] hook through which any part of the agent adds
//! families to `/metrics` (the agent's own counters today, GenAI histograms and GPU gauges
//! later). Names follow the OTel→Prometheus conventions: dots become underscores, counters end in
//! `_total`, units are suffixes (`_seconds`, `_bytes`). Pure: no I/O, no clocks.

use std::fmt::Write;

use crate::stats::Stats;

/// The `Content-Type` of the text this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Prefix of the agent's own metrics.
pub const AGENT_PREFIX: &str = "infertap_";

/// Label pairs of one sample, in the order they are written.
pub type Labels = Vec<(String, String)>;

/// One metric family: a name, its help, and its samples of one type.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricFamily {
    /// The exposed name; for counters it ends in `_total`.
    pub name: String,
    pub help: String,
    pub data: MetricData,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MetricData {
    Counter(Vec<Sample>),
    Gauge(Vec<Sample>),
    Histogram(Vec<HistogramSample>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
}

/// One labelled histogram: per-bucket (not cumulative) counts; the writer makes them cumulative.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSample {
    pub labels: Labels,
    pub histogram: Histogram,
}

/// Observations counted into buckets with inclusive upper bounds, plus an overflow bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// Upper bounds, ascending, without `+Inf`.
    bounds: Vec<f64>,
    /// `bounds.len() + 1` counts: one per bound, then the overflow (`+Inf`) bucket.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds` (sorted here; NaN bounds are dropped).
    pub fn new(mut bounds: Vec<f64>) -> Self {
        bounds.retain(|b| !b.is_nan() && *b != f64::INFINITY);
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let counts = vec![0; bounds.len() + 1];
        Self {
            bounds,
            counts,
            sum: 0.0,
        }
    }

    /// Counts `value` into the first bucket whose bound is ≥ `value` (Prometheus' `le`).
    pub fn observe(&mut self, value: f64) {
        self.observe_n(value, 1);
    }

    /// Counts `value` `n` times.
    pub fn observe_n(&mut self, value: f64, n: u64) {
        let i = self.bounds.partition_point(|b| *b < value);
        self.counts[i] += n;
        self.sum += value * n as f64;
    }

    /// Adds `other`'s observations: a histogram over the same bounds.
    pub fn merge(&mut self, other: &Histogram) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
        self.sum += other.sum;
    }

    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }
}

impl MetricFamily {
    /// A counter family with one unlabelled sample.
    pub fn counter(name: impl Into<String>, help: impl Into<String>, value: u64) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            data: MetricData::Counter(vec![Sample {
                labels: Vec::new(),
                value: value as f64,
            }]),
        }
    }

    /// A gauge family with one unlabelled sample.
    pub fn gauge(name: impl Into<String>, help: impl Into<String>, value: f64) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            data: MetricData::Gauge(vec![Sample {
                labels: Vec::new(),
                value,
            }]),
        }
    }

    /// Appends this family's text to `out`.
    pub fn write(&self, out: &mut String) {
        let kind = match self.data {
            MetricData::Counter(_) => "counter",
            MetricData::Gauge(_) => "gauge",
            MetricData::Histogram(_) => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(&self.help));
        let _ = writeln!(out, "# TYPE {} {kind}", self.name);
        match &self.data {
            MetricData::Counter(samples) | MetricData::Gauge(samples) => {
                for s in samples {
                    write_sample(out, &self.name, "", &s.labels, None, s.value);
                }
            }
            MetricData::Histogram(samples) => {
                for s in samples {
                    let h = &s.histogram;
                    let mut cumulative = 0;
                    for (i, count) in h.counts.iter().enumerate() {
                        cumulative += count;
                        let le = h
                            .bounds
                            .get(i)
                            .map_or_else(|| "+Inf".to_string(), |b| number(*b));
                        write_sample(
                            out,
                            &self.name,
                            "_bucket",
                            &s.labels,
                            Some(&le),
                            cumulative as f64,
                        );
                    }
                    write_sample(out, &self.name, "_sum", &s.labels, None, h.sum);
                    write_sample(out, &self.name, "_count", &s.labels, None, h.count() as f64);
                }
            }
        }
    }
}

/// Something that contributes families to `/metrics`, asked at every scrape.
pub trait MetricSource: Send + Sync {
    fn collect(&self, out: &mut Vec<MetricFamily>);
}

/// The whole exposition of `families`, in order.
pub fn encode(families: &[MetricFamily]) -> String {
    let mut out = String::new();
    for family in families {
        family.write(&mut out);
    }
    out
}

/// One counter family per [`Stats`] counter: `infertap_<name>_total`, help from its doc comment.
pub fn stats_families(stats: &Stats) -> Vec<MetricFamily> {
    let help: std::collections::HashMap<_, _> = Stats::descriptions().iter().copied().collect();
    stats
        .snapshot()
        .into_iter()
        .map(|(name, value)| {
            let help = help
                .get(name)
                .map(|lines| lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            MetricFamily::counter(format!("{AGENT_PREFIX}{name}_total"), help, value)
        })
        .collect()
}

/// An OTel instrument name as a Prometheus name: every character outside `[a-zA-Z0-9_:]`
/// becomes `_`, and a leading digit gets a `_` in front.
pub fn sanitize_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(String, String)],
    le: Option<&str>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    let le = le.map(|le| ("le", le));
    let pairs = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(le);
    let mut first = true;
    for (k, v) in pairs {
        out.push(if first { '{' } else { ',' });
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
    }
    if !first {
        out.push('}');
    }
    let _ = writeln!(out, " {}", number(value));
}

/// A sample value or bound as Prometheus writes it: `+Inf`, `-Inf`, `NaN`, else the shortest
/// decimal that reads back to the same float (integers without a fraction).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn counter_text() {
        let text = encode(&[MetricFamily::counter(
            "infertap_records_read_total",
            "Ring buffer records decoded.",
            5,
        )]);
        assert_eq!(
            text,
            "# HELP infertap_records_read_total Ring buffer records decoded.\n\
             # TYPE infertap_records_read_total counter\n\
             infertap_records_read_total 5\n"
        );
    }

    #[test]
    fn labelled_samples_are_escaped() {
        let family = MetricFamily {
            name: "infertap_kernel_records_dropped_total".into(),
            help: "Dropped \\ by the kernel\nper reason.".into(),
            data: MetricData::Counter(vec![
                Sample {
                    labels: labels(&[("reason", "ringbuf_full")]),
                    value: 3.0,
                },
                Sample {
                    labels: labels(&[("reason", "odd \"name\"\\\n")]),
                    value: 1.0,
                },
            ]),
        };
        assert_eq!(
            encode(&[family]),
            "# HELP infertap_kernel_records_dropped_total Dropped \\\\ by the kernel\\nper reason.\n\
             # TYPE infertap_kernel_records_dropped_total counter\n\
             infertap_kernel_records_dropped_total{reason=\"ringbuf_full\"} 3\n\
             infertap_kernel_records_dropped_total{reason=\"odd \\\"name\\\"\\\\\\n\"} 1\n"
        );
    }

    #[test]
    fn gauge_numbers() {
        let family = MetricFamily {
            name: "g".into(),
            help: String::new(),
            data: MetricData::Gauge(vec![
                Sample {
                    labels: labels(&[("v", "a")]),
                    value: 0.25,
                },
                Sample {
                    labels: labels(&[("v", "b")]),
                    value: f64::NAN,
                },
                Sample {
                    labels: labels(&[("v", "c")]),
                    value: f64::NEG_INFINITY,
                },
                Sample {
                    labels: labels(&[("v", "d")]),
                    value: 1e-7,
                },
            ]),
        };
        assert_eq!(
            encode(&[family]),
            "# HELP g \n# TYPE g gauge\n\
             g{v=\"a\"} 0.25\ng{v=\"b\"} NaN\ng{v=\"c\"} -Inf\ng{v=\"d\"} 0.0000001\n"
        );
    }

    #[test]
    fn histogram_text_is_cumulative_with_sum_and_count() {
        let mut h = Histogram::new(vec![0.5, 0.001, 0.1]);
        for v in [0.0625, 0.0009765625, 0.25, 2.0] {
            h.observe(v);
        }
        assert_eq!(h.bounds(), [0.001, 0.1, 0.5]);
        let family = MetricFamily {
            name: "gen_ai_server_time_to_first_token_seconds".into(),
            help: "Time to first token.".into(),
            data: MetricData::Histogram(vec![
                HistogramSample {
                    labels: labels(&[("gen_ai_request_model", "m")]),
                    histogram: h,
                },
                HistogramSample {
                    labels: Vec::new(),
                    histogram: Histogram::new(vec![1.0]),
                },
            ]),
        };
        assert_eq!(
            encode(&[family]),
            "# HELP gen_ai_server_time_to_first_token_seconds Time to first token.\n\
             # TYPE gen_ai_server_time_to_first_token_seconds histogram\n\
             gen_ai_server_time_to_first_token_seconds_bucket{gen_ai_request_model=\"m\",le=\"0.001\"} 1\n\
             gen_ai_server_time_to_first_token_seconds_bucket{gen_ai_request_model=\"m\",le=\"0.1\"} 2\n\
             gen_ai_server_time_to_first_token_seconds_bucket{gen_ai_request_model=\"m\",le=\"0.5\"} 3\n\
             gen_ai_server_time_to_first_token_seconds_bucket{gen_ai_request_model=\"m\",le=\"+Inf\"} 4\n\
             gen_ai_server_time_to_first_token_seconds_sum{gen_ai_request_model=\"m\"} 2.3134765625\n\
             gen_ai_server_time_to_first_token_seconds_count{gen_ai_request_model=\"m\"} 4\n\
             gen_ai_server_time_to_first_token_seconds_bucket{le=\"1\"} 0\n\
             gen_ai_server_time_to_first_token_seconds_bucket{le=\"+Inf\"} 0\n\
             gen_ai_server_time_to_first_token_seconds_sum 0\n\
             gen_ai_server_time_to_first_token_seconds_count 0\n"
        );
    }

    #[test]
    fn observe_on_a_bound_counts_in_that_bucket() {
        let mut h = Histogram::new(vec![1.0, 2.0]);
        h.observe(1.0);
        h.observe(2.0000001);
        assert_eq!(h.counts, [1, 0, 1]);
        assert_eq!(h.count(), 2);
    }

    #[test]
    fn every_stats_counter_is_a_total_with_its_doc_as_help() {
        let stats = Stats::default();
        stats.records_read.store(7, Relaxed);
        let families = stats_families(&stats);
        assert_eq!(families.len(), stats.snapshot().len());
        assert_eq!(
            families[0],
            MetricFamily::counter(
                "infertap_records_read_total",
                "Ring buffer records decoded.",
                7
            )
        );
        for f in &families {
            assert!(f.name.starts_with("infertap_") && f.name.ends_with("_total"));
            assert!(!f.help.is_empty(), "{} has no doc comment", f.name);
        }
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(
            sanitize_name("gen_ai.server.time_to_first_token"),
            "gen_ai_server_time_to_first_token"
        );
        assert_eq!(sanitize_name("9lives-x"), "_9lives_x");
    }
}
