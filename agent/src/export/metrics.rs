//! Request metrics derived from each finished request's typed [`Summary`] (made with its span,
//! never read back from the span's attributes): the GenAI server histograms (OTel semantic
//! conventions, vLLM's bucket lists), HTTP server durations, token and request counters.
//!
//! Owns: the [`RequestMetrics`] registry (what is recorded from a summary, under which labels), the
//! bucket lists, the cardinality cap, the Prometheus families on `/metrics` (through
//! [`MetricSource`]) and, when OTLP metrics are on ([`otlp`]), the SDK instruments fed from the
//! same records.
//!
//! Instruments (OTel name → Prometheus name):
//! - `gen_ai.server.time_to_first_token` (s) → `gen_ai_server_time_to_first_token_seconds`
//! - `gen_ai.server.time_per_output_token` (s) → `gen_ai_server_time_per_output_token_seconds`:
//!   (duration − TTFT) / (output tokens − 1), only when output tokens > 1.
//! - `gen_ai.server.inter_token_latency` (s) → `gen_ai_server_inter_token_latency_seconds`:
//!   infertap's own instrument (not in the semantic conventions; vLLM's
//!   `vllm:inter_token_latency_seconds` is the model), one observation per gap between
//!   consecutive content chunks of a streamed response.
//! - `gen_ai.server.request.duration` (s) → `gen_ai_server_request_duration_seconds`, with
//!   `error.type` when the request failed.
//! - `gen_ai.server.token.usage` ({token}) → `gen_ai_server_token_usage`, by `gen_ai.token.type`.
//! - `gen_ai.server.tokens` ({token}, counter) → `gen_ai_server_tokens_total`, by
//!   `gen_ai.token.type`, so `rate()` gives tokens per second.
//! - `http.server.request.duration` (s) → `http_server_request_duration_seconds`.
//! - `infertap.requests` ({request}, counter) → `infertap_requests_total`, by `outcome`
//!   (`completed`, `cancelled`, `error`).
//! - `infertap.epp.decision.duration` (s) → `infertap_epp_decision_duration_seconds`: routing
//!   decisions of endpoint pickers (request headers received → destination chosen), by
//!   `infertap.epp.decision` (`routed`, `rejected`, `none`) and model.
//! - `infertap.epp.decisions` ({decision}, counter) → `infertap_epp_decisions_total`: routed
//!   requests by chosen endpoint (`infertap.epp.endpoint`, bounded by the pool's size and the
//!   series cap) and model.
//! - `infertap.epp.rejections` ({request}, counter) → `infertap_epp_rejections_total`: immediate
//!   responses (429 shed, 503 no endpoint) by `http.response.status_code` and model.
//! - `infertap.epp.routed.time_to_first_token` (s) →
//!   `infertap_epp_routed_time_to_first_token_seconds`: routed requests whose response phase
//!   flowed through the endpoint picker, request at the EPP → first content token back through
//!   it, by chosen endpoint and model.
//! - `infertap.epp.routed.input_tokens`, `infertap.epp.routed.cached_input_tokens` ({token},
//!   counters) → `infertap_epp_routed_input_tokens_total`,
//!   `infertap_epp_routed_cached_input_tokens_total`: prompt tokens of those requests and the part
//!   the server found in its prefix cache, by chosen endpoint and model (only requests whose usage
//!   reported both), so that their `rate()` ratio is the realised prefix-cache hit ratio.
//! - `infertap_metrics_series_overflow_total{metric}`: records that found their metric full.
//!
//! Only SERVER spans are recorded (the traced process served the request).
//!
//! Model labels (`gen_ai.request.model`, `gen_ai.response.model`, the EPP instruments' model) take
//! only names a server serves, learned from its `/v1/models` answers and its own responses, else
//! `other` ([`served`]). Endpoint labels take the destinations decisions named, at most
//! `endpoints::ENDPOINTS_MAX` at a time, else `other` ([`endpoints`]). Series not recorded into
//! for [`DEFAULT_IDLE_AFTER`] are removed.
//!
//! Must never: label a series with anything unbounded by design (request ids, paths, client
//! addresses or ports) — labels come only from the fixed key lists below; hold more than
//! `series_limit` series per instrument (past it, records go to one series labelled
//! `otel.metric.overflow="true"` and are counted); allocate when recording into an existing
//! series; hold its lock for more than a few histogram updates.

pub mod endpoints;
pub mod otlp;
pub mod served;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;

use super::prometheus::{
    sanitize_name, Histogram, HistogramSample, MetricData, MetricFamily, MetricSource, Sample,
};
use crate::schema::{attr, metric};
use crate::trace::summary::{Summary, SummaryKind};

/// vLLM's `time_to_first_token_seconds` buckets (a superset of the semantic conventions').
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// vLLM's inter-token latency buckets, also used for time per output token.
pub const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];

/// vLLM's end-to-end latency buckets with the semantic conventions' small ones merged in, so
/// that fast requests are visible.
pub const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
];

/// The semantic conventions' token usage buckets (powers of 4).
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// The HTTP semantic conventions' duration buckets.
pub const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Routing decision latency buckets: an EPP decides in well under a second.
pub const DECISION_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Series per instrument before records go to the overflow series (OTel SDKs' default).
pub const DEFAULT_SERIES_LIMIT: usize = 2000;

/// A series not recorded into for this long is removed from `/metrics` (its counters restart
/// from zero if it comes back, which Prometheus' `rate()` and `increase()` take as a reset).
pub const DEFAULT_IDLE_AFTER: Duration = Duration::from_secs(10 * 60);

/// How often a family looks for idle series (on a record or a scrape).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Label values are cut to this many bytes (at a character boundary).
pub const MAX_LABEL_VALUE_LEN: usize = 256;

/// The attribute of the overflow series, as the OTel SDKs name it.
pub const OVERFLOW_ATTRIBUTE: &str = metric::OTEL_METRIC_OVERFLOW;

/// The labels every GenAI instrument has, then `extra`.
macro_rules! genai_keys {
    ($($extra:expr),*) => {
        &[
            attr::GEN_AI_OPERATION_NAME,
            attr::GEN_AI_PROVIDER_NAME,
            attr::GEN_AI_REQUEST_MODEL,
            attr::GEN_AI_RESPONSE_MODEL,
            attr::SERVER_ADDRESS,
            attr::SERVER_PORT,
            attr::K8S_NAMESPACE_NAME,
            attr::K8S_POD_NAME,
            $($extra),*
        ]
    };
}

const GENAI_KEYS: &[&str] = genai_keys!();
/// Labels every GenAI instrument has (`GENAI_KEYS`).
const GENAI_LEN: usize = GENAI_KEYS.len();
const GENAI_ERROR_KEYS: &[&str] = genai_keys!(attr::ERROR_TYPE);
const GENAI_TOKEN_KEYS: &[&str] = genai_keys!(metric::GEN_AI_TOKEN_TYPE);
const REQUEST_KEYS: &[&str] = genai_keys!(metric::OUTCOME, attr::ERROR_TYPE);
const HTTP_KEYS: &[&str] = &[
    attr::HTTP_REQUEST_METHOD,
    attr::HTTP_RESPONSE_STATUS_CODE,
    attr::SERVER_PORT,
    attr::ERROR_TYPE,
];

/// The kind of an instrument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InstrumentKind {
    Histogram(&'static [f64]),
    Counter,
}

/// One instrument: its OTel identity, its Prometheus name, and its label keys.
#[derive(Clone, Copy, Debug)]
pub struct InstrumentSpec {
    pub otel_name: &'static str,
    /// UCUM unit as OTLP carries it.
    pub unit: &'static str,
    pub description: &'static str,
    /// The exposed name: sanitized, unit suffix, `_total` for counters.
    pub prometheus_name: &'static str,
    pub kind: InstrumentKind,
    /// Attribute keys, in label order. Nothing else ever becomes a label.
    pub keys: &'static [&'static str],
}

// Indices into `INSTRUMENTS`.
const TTFT: usize = 0;
const TPOT: usize = 1;
const ITL: usize = 2;
const DURATION: usize = 3;
const TOKEN_USAGE: usize = 4;
const HTTP_DURATION: usize = 5;
const TOKENS: usize = 6;
const REQUESTS: usize = 7;
const EPP_DECISION_DURATION: usize = 8;
const EPP_DECISIONS: usize = 9;
const EPP_REJECTIONS: usize = 10;
const PD_KV_TRANSFER_GAP: usize = 11;
const ENERGY_PER_OUTPUT_TOKEN: usize = 12;
const SERVER_TIME_IN_QUEUE: usize = 13;
const API_SERVER: usize = 14;
const EPP_ROUTED_TTFT: usize = 15;
const EPP_ROUTED_INPUT_TOKENS: usize = 16;
const EPP_ROUTED_CACHED_INPUT_TOKENS: usize = 17;

/// Joules per output token: from a fraction of a joule (a large batch on a small model) to
/// tens of joules.
const ENERGY_PER_TOKEN_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

const EPP_DURATION_KEYS: &[&str] = &[attr::INFERTAP_EPP_DECISION, attr::GEN_AI_REQUEST_MODEL];
const EPP_ENDPOINT_KEYS: &[&str] = &[attr::INFERTAP_EPP_ENDPOINT, attr::GEN_AI_REQUEST_MODEL];
const EPP_REJECTION_KEYS: &[&str] = &[attr::HTTP_RESPONSE_STATUS_CODE, attr::GEN_AI_REQUEST_MODEL];

/// Every instrument, in exposition order.
pub const INSTRUMENTS: &[InstrumentSpec] = &[
    InstrumentSpec {
        otel_name: metric::GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
        unit: "s",
        description: "Time from the request's first byte to the first content token of the response.",
        prometheus_name: "gen_ai_server_time_to_first_token_seconds",
        kind: InstrumentKind::Histogram(TTFT_BUCKETS),
        keys: GENAI_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
        unit: "s",
        description: "Time per output token after the first: (duration - TTFT) / (output tokens - 1).",
        prometheus_name: "gen_ai_server_time_per_output_token_seconds",
        kind: InstrumentKind::Histogram(ITL_BUCKETS),
        keys: GENAI_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::GEN_AI_SERVER_INTER_TOKEN_LATENCY,
        unit: "s",
        description: "Gaps between consecutive content chunks of streamed responses (one observation per gap).",
        prometheus_name: "gen_ai_server_inter_token_latency_seconds",
        kind: InstrumentKind::Histogram(ITL_BUCKETS),
        keys: GENAI_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::GEN_AI_SERVER_REQUEST_DURATION,
        unit: "s",
        description: "GenAI request duration, from the request's first byte to the response's last.",
        prometheus_name: "gen_ai_server_request_duration_seconds",
        kind: InstrumentKind::Histogram(REQUEST_DURATION_BUCKETS),
        keys: GENAI_ERROR_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::GEN_AI_SERVER_TOKEN_USAGE,
        unit: "{token}",
        description: "Tokens per request, by gen_ai.token.type (input, output).",
        prometheus_name: "gen_ai_server_token_usage",
        kind: InstrumentKind::Histogram(TOKEN_BUCKETS),
        keys: GENAI_TOKEN_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::HTTP_SERVER_REQUEST_DURATION,
        unit: "s",
        description: "HTTP server request duration.",
        prometheus_name: "http_server_request_duration_seconds",
        kind: InstrumentKind::Histogram(HTTP_DURATION_BUCKETS),
        keys: HTTP_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::GEN_AI_SERVER_TOKENS,
        unit: "{token}",
        description: "Tokens processed, by gen_ai.token.type (input, output).",
        prometheus_name: "gen_ai_server_tokens_total",
        kind: InstrumentKind::Counter,
        keys: GENAI_TOKEN_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::INFERTAP_REQUESTS,
        unit: "{request}",
        description: "GenAI requests, by outcome (completed, cancelled, error).",
        prometheus_name: "infertap_requests_total",
        kind: InstrumentKind::Counter,
        keys: REQUEST_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::INFERTAP_EPP_DECISION_DURATION,
        unit: "s",
        description: "Endpoint picker routing decisions: request headers received to destination chosen.",
        prometheus_name: "infertap_epp_decision_duration_seconds",
        kind: InstrumentKind::Histogram(DECISION_DURATION_BUCKETS),
        keys: EPP_DURATION_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::INFERTAP_EPP_DECISIONS,
        unit: "{decision}",
        description: "Requests the endpoint picker routed, by chosen endpoint.",
        prometheus_name: "infertap_epp_decisions_total",
        kind: InstrumentKind::Counter,
        keys: EPP_ENDPOINT_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::INFERTAP_EPP_REJECTIONS,
        unit: "{request}",
        description: "Requests the endpoint picker rejected with an immediate response (429 shed, 503 no endpoint).",
        prometheus_name: "infertap_epp_rejections_total",
        kind: InstrumentKind::Counter,
        keys: EPP_REJECTION_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::INFERTAP_PD_KV_TRANSFER_GAP,
        unit: "s",
        description: "Disaggregated (prefill/decode) requests: the prefill leg's last response byte to the decode leg's first request byte (the KV-cache transfer and the sidecar's turn-around).",
        prometheus_name: "infertap_pd_kv_transfer_gap_seconds",
        kind: InstrumentKind::Histogram(TTFT_BUCKETS),
        keys: GENAI_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::INFERTAP_GPU_ENERGY_PER_OUTPUT_TOKEN,
        unit: "J/{token}",
        description: "A request's fair share of GPU energy divided by its output tokens.",
        prometheus_name: "infertap_gpu_energy_per_output_token",
        kind: InstrumentKind::Histogram(ENERGY_PER_TOKEN_BUCKETS),
        keys: GENAI_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::INFERTAP_SERVER_TIME_IN_QUEUE,
        unit: "s",
        description: "Time the request waited in the engine's queue, as the server reported it (vLLM --enable-per-request-metrics).",
        prometheus_name: "infertap_server_time_in_queue_seconds",
        kind: InstrumentKind::Histogram(TTFT_BUCKETS),
        keys: GENAI_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::INFERTAP_LATENCY_API_SERVER,
        unit: "s",
        description: "Time to first token outside the engine's queue and prefill (network, HTTP, templating, tokenisation), where the server reports its phases.",
        prometheus_name: "infertap_latency_api_server_seconds",
        kind: InstrumentKind::Histogram(TTFT_BUCKETS),
        keys: GENAI_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::INFERTAP_EPP_ROUTED_TIME_TO_FIRST_TOKEN,
        unit: "s",
        description: "Routed requests whose response phase flowed through the endpoint picker: request at the EPP to the first content token back through it, by chosen endpoint.",
        prometheus_name: "infertap_epp_routed_time_to_first_token_seconds",
        kind: InstrumentKind::Histogram(TTFT_BUCKETS),
        keys: EPP_ENDPOINT_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::INFERTAP_EPP_ROUTED_INPUT_TOKENS,
        unit: "{token}",
        description: "Prompt tokens of routed requests whose usage reported cached tokens, by chosen endpoint.",
        prometheus_name: "infertap_epp_routed_input_tokens_total",
        kind: InstrumentKind::Counter,
        keys: EPP_ENDPOINT_KEYS,
    },
    InstrumentSpec {
        otel_name: metric::INFERTAP_EPP_ROUTED_CACHED_INPUT_TOKENS,
        unit: "{token}",
        description: "Prompt tokens of routed requests that the chosen endpoint found in its prefix cache.",
        prometheus_name: "infertap_epp_routed_cached_input_tokens_total",
        kind: InstrumentKind::Counter,
        keys: EPP_ENDPOINT_KEYS,
    },
];

/// The Prometheus counter of records routed to an overflow series, labelled by `metric`.
pub const OVERFLOW_FAMILY: &str = "infertap_metrics_series_overflow_total";

/// A label value borrowed from a summary.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Val<'a> {
    Absent,
    Str(&'a str),
    Int(i64),
}

/// A label value owned by a series.
#[derive(Clone, Debug, PartialEq)]
enum OwnedVal {
    Absent,
    Str(Box<str>),
    Int(i64),
}

impl OwnedVal {
    fn borrowed(&self) -> Val<'_> {
        match self {
            OwnedVal::Absent => Val::Absent,
            OwnedVal::Str(s) => Val::Str(s),
            OwnedVal::Int(i) => Val::Int(*i),
        }
    }
}

impl Val<'_> {
    fn hash_into(&self, h: &mut impl Hasher) {
        match self {
            Val::Absent => 0u8.hash(h),
            Val::Str(s) => {
                1u8.hash(h);
                s.hash(h);
            }
            Val::Int(i) => {
                2u8.hash(h);
                i.hash(h);
            }
        }
    }

    fn matches(&self, owned: &OwnedVal) -> bool {
        match (self, owned) {
            (Val::Absent, OwnedVal::Absent) => true,
            (Val::Str(a), OwnedVal::Str(b)) => *a == &**b,
            (Val::Int(a), OwnedVal::Int(b)) => a == b,
            _ => false,
        }
    }

    fn owned(self) -> OwnedVal {
        match self {
            Val::Absent => OwnedVal::Absent,
            Val::Str(s) => OwnedVal::Str(s.into()),
            Val::Int(i) => OwnedVal::Int(i),
        }
    }
}

/// Cuts `s` to at most [`MAX_LABEL_VALUE_LEN`] bytes, at a character boundary.
fn bounded(s: &str) -> &str {
    if s.len() <= MAX_LABEL_VALUE_LEN {
        return s;
    }
    let mut end = MAX_LABEL_VALUE_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Debug)]
enum Data {
    Histogram(Histogram),
    Counter(u64),
}

#[derive(Debug)]
struct Series {
    /// One per key of the instrument (absent ones included); empty for the overflow series.
    values: Box<[OwnedVal]>,
    /// The same, as OTel attributes (absent ones left out), made once.
    attributes: Box<[KeyValue]>,
    data: Data,
    /// Last recorded into.
    touched: Instant,
}

impl Series {
    fn new(spec: &InstrumentSpec, values: Box<[OwnedVal]>, attributes: Box<[KeyValue]>) -> Self {
        let data = match spec.kind {
            InstrumentKind::Histogram(bounds) => Data::Histogram(Histogram::new(bounds.to_vec())),
            InstrumentKind::Counter => Data::Counter(0),
        };
        Self {
            values,
            attributes,
            data,
            touched: Instant::now(),
        }
    }

    fn add(&mut self, value: f64, now: Instant) {
        self.touched = now;
        match &mut self.data {
            Data::Histogram(h) => h.observe(value),
            Data::Counter(c) => *c += value as u64,
        }
    }

    fn prometheus_labels(&self, spec: &InstrumentSpec) -> Vec<(String, String)> {
        if self.values.is_empty() {
            return vec![(sanitize_name(OVERFLOW_ATTRIBUTE), "true".to_string())];
        }
        spec.keys
            .iter()
            .zip(self.values.iter())
            .filter_map(|(k, v)| {
                let v = match v {
                    OwnedVal::Absent => return None,
                    OwnedVal::Str(s) => s.to_string(),
                    OwnedVal::Int(i) => i.to_string(),
                };
                Some((sanitize_name(k), v))
            })
            .collect()
    }
}

/// The series of one instrument.
#[derive(Debug)]
struct Family {
    spec: &'static InstrumentSpec,
    /// foldhash (as the connection table): SipHash was most of a series lookup, one per
    /// instrument per request.
    hasher: foldhash::fast::RandomState,
    /// Hash of the label values → indices into `series` (more than one only on collisions).
    index: HashMap<u64, Vec<usize>, foldhash::fast::RandomState>,
    series: Vec<Series>,
    overflow: Option<Series>,
    /// Records routed to `overflow`.
    overflowed: u64,
    limit: usize,
    /// When idle series were last looked for.
    swept: Instant,
}

impl Family {
    fn new(spec: &'static InstrumentSpec, limit: usize) -> Self {
        Self {
            spec,
            hasher: foldhash::fast::RandomState::default(),
            index: HashMap::default(),
            series: Vec::new(),
            overflow: None,
            overflowed: 0,
            limit,
            swept: Instant::now(),
        }
    }

    fn hash<'a>(&self, values: impl Iterator<Item = Val<'a>>) -> u64 {
        let mut h = self.hasher.build_hasher();
        for v in values {
            v.hash_into(&mut h);
        }
        h.finish()
    }

    /// Removes the labelled series not recorded into since `now - idle`; how many.
    fn evict_idle(&mut self, now: Instant, idle: Duration) -> usize {
        self.swept = now;
        let before = self.series.len();
        self.series
            .retain(|s| now.saturating_duration_since(s.touched) < idle);
        if self.series.len() != before {
            let mut index: HashMap<u64, Vec<usize>, foldhash::fast::RandomState> =
                HashMap::default();
            for (i, s) in self.series.iter().enumerate() {
                index
                    .entry(self.hash(s.values.iter().map(OwnedVal::borrowed)))
                    .or_default()
                    .push(i);
            }
            self.index = index;
        }
        before - self.series.len()
    }

    /// [`Self::evict_idle`] at most once per [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant, idle: Duration) {
        if now.saturating_duration_since(self.swept) >= SWEEP_EVERY {
            self.evict_idle(now, idle);
        }
    }

    /// The series of `values` (one per key), created if there is room, else the overflow series.
    fn series(&mut self, values: &[Val<'_>]) -> &mut Series {
        debug_assert_eq!(values.len(), self.spec.keys.len());
        let hash = self.hash(values.iter().copied());
        let found = self.index.get(&hash).and_then(|ids| {
            ids.iter().copied().find(|&i| {
                let s = &self.series[i].values;
                s.len() == values.len() && values.iter().zip(s.iter()).all(|(a, b)| a.matches(b))
            })
        });
        if let Some(i) = found {
            return &mut self.series[i];
        }
        if self.series.len() >= self.limit {
            self.overflowed += 1;
            let spec = self.spec;
            return self.overflow.get_or_insert_with(|| {
                Series::new(
                    spec,
                    Box::new([]),
                    Box::new([KeyValue::new(OVERFLOW_ATTRIBUTE, true)]),
                )
            });
        }
        let owned: Box<[OwnedVal]> = values.iter().map(|v| v.owned()).collect();
        let attributes: Box<[KeyValue]> = self
            .spec
            .keys
            .iter()
            .zip(values.iter())
            .filter_map(|(k, v)| match v {
                Val::Absent => None,
                Val::Str(s) => Some(KeyValue::new(*k, s.to_string())),
                Val::Int(i) => Some(KeyValue::new(*k, *i)),
            })
            .collect();
        let i = self.series.len();
        self.series.push(Series::new(self.spec, owned, attributes));
        self.index.entry(hash).or_default().push(i);
        &mut self.series[i]
    }

    fn family(&self) -> MetricFamily {
        let all = self.series.iter().chain(self.overflow.as_ref());
        let data = match self.spec.kind {
            InstrumentKind::Histogram(_) => MetricData::Histogram(
                all.filter_map(|s| match &s.data {
                    Data::Histogram(h) => Some(HistogramSample {
                        labels: s.prometheus_labels(self.spec),
                        histogram: h.clone(),
                    }),
                    Data::Counter(_) => None,
                })
                .collect(),
            ),
            InstrumentKind::Counter => MetricData::Counter(
                all.filter_map(|s| match &s.data {
                    Data::Counter(c) => Some(Sample {
                        labels: s.prometheus_labels(self.spec),
                        value: *c as f64,
                    }),
                    Data::Histogram(_) => None,
                })
                .collect(),
            ),
        };
        MetricFamily {
            name: self.spec.prometheus_name.to_string(),
            help: format!("{} ({})", self.spec.description, self.spec.otel_name),
            data,
        }
    }
}

/// The SDK instruments that mirror [`INSTRUMENTS`] for OTLP, same order.
#[derive(Debug)]
pub(crate) enum OtelInstrument {
    Histogram(opentelemetry::metrics::Histogram<f64>),
    Counter(opentelemetry::metrics::Counter<u64>),
}

impl OtelInstrument {
    fn add(&self, value: f64, attributes: &[KeyValue]) {
        match self {
            OtelInstrument::Histogram(h) => h.record(value, attributes),
            OtelInstrument::Counter(c) => c.add(value as u64, attributes),
        }
    }
}

/// What one summary says, borrowed: the label values and the observations.
struct Observed<'a> {
    operation: Val<'a>,
    provider: Val<'a>,
    request_model: Val<'a>,
    response_model: Val<'a>,
    server_address: Val<'a>,
    server_port: Val<'a>,
    /// Kubernetes mode: the serving pod (bounded by the pods of one node and the series cap; the
    /// pod UID, unbounded over time, is never a label).
    namespace: Val<'a>,
    pod: Val<'a>,
    method: Val<'a>,
    status_code: Val<'a>,
    error_type: Val<'a>,
    cancelled: bool,
    ttft_s: Option<f64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
}

const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl<'a> Observed<'a> {
    fn from_summary(r: &'a Summary) -> Self {
        let str_of = str_val;
        let static_of = |v: Option<&'static str>| v.map_or(Val::Absent, |s| Val::Str(bounded(s)));
        let int_of = |v: Option<i64>| v.map_or(Val::Absent, Val::Int);
        Observed {
            operation: static_of(r.operation),
            provider: static_of(r.provider),
            request_model: str_of(&r.request_model),
            response_model: str_of(&r.response_model),
            server_address: str_of(&r.server_address),
            server_port: int_of(r.server_port),
            namespace: str_of(&r.namespace),
            pod: str_of(&r.pod),
            // Unknown methods are `_OTHER`, as the HTTP conventions ask (bounded).
            method: r.method.as_deref().map_or(Val::Absent, |m| {
                Val::Str(
                    HTTP_METHODS
                        .iter()
                        .copied()
                        .find(|k| *k == m)
                        .unwrap_or("_OTHER"),
                )
            }),
            status_code: int_of(r.status_code),
            error_type: match (&r.error_type, r.failed) {
                (Some(e), _) => Val::Str(bounded(e)),
                (None, true) => Val::Str("_OTHER"),
                (None, false) => Val::Absent,
            },
            cancelled: r.cancelled,
            ttft_s: r.ttft_s,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
        }
    }

    fn genai(&self) -> [Val<'a>; GENAI_LEN] {
        [
            self.operation,
            self.provider,
            self.request_model,
            self.response_model,
            self.server_address,
            self.server_port,
            self.namespace,
            self.pod,
        ]
    }

    fn with<const N: usize>(&self, extra: [Val<'a>; N]) -> [Val<'a>; GENAI_LEN + 2] {
        let mut out = [Val::Absent; GENAI_LEN + 2];
        out[..GENAI_LEN].copy_from_slice(&self.genai());
        out[GENAI_LEN..GENAI_LEN + N].copy_from_slice(&extra);
        out
    }

    fn outcome(&self) -> &'static str {
        if self.cancelled {
            "cancelled"
        } else if !matches!(self.error_type, Val::Absent) {
            "error"
        } else {
            "completed"
        }
    }
}

/// A model as a label value: itself when `r`'s server serves it, else `other` (`served`).
fn model_label<'a>(
    served: &served::ServedModels,
    r: &Summary,
    model: &'a Option<String>,
) -> Val<'a> {
    model
        .as_deref()
        .map_or(Val::Absent, |m| Val::Str(served.label(r, m)))
}

/// An optional string as a label value (bounded).
fn str_val(v: &Option<String>) -> Val<'_> {
    v.as_deref().map_or(Val::Absent, |s| Val::Str(bounded(s)))
}

/// Time per output token, in seconds: `(duration − TTFT) / (output tokens − 1)`; `None` unless
/// there are at least two output tokens.
pub fn time_per_output_token(duration_s: f64, ttft_s: f64, output_tokens: i64) -> Option<f64> {
    (output_tokens > 1).then(|| (duration_s - ttft_s).max(0.0) / (output_tokens - 1) as f64)
}

/// The registry of request metrics. Thread-safe; share it in an `Arc`.
#[derive(Debug)]
pub struct RequestMetrics {
    families: Mutex<Vec<Family>>,
    /// The model label policy's memory (`served`); locked before, never with, `families`.
    served: Mutex<served::ServedModels>,
    /// The endpoint label policy's memory (`endpoints`); locked before, never with, `families`.
    endpoints: Mutex<endpoints::EndpointLabels>,
    otel: OnceLock<Vec<OtelInstrument>>,
    /// Series idle this long are removed ([`DEFAULT_IDLE_AFTER`]).
    idle_after: Duration,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestMetrics {
    /// A registry with [`DEFAULT_SERIES_LIMIT`] series per instrument.
    pub fn new() -> Self {
        Self::with_series_limit(DEFAULT_SERIES_LIMIT)
    }

    /// A registry with at most `limit` labelled series per instrument (plus one overflow series).
    pub fn with_series_limit(limit: usize) -> Self {
        Self {
            families: Mutex::new(INSTRUMENTS.iter().map(|s| Family::new(s, limit)).collect()),
            served: Mutex::new(served::ServedModels::default()),
            endpoints: Mutex::new(endpoints::EndpointLabels::new(
                endpoints::ENDPOINTS_MAX,
                DEFAULT_IDLE_AFTER,
            )),
            otel: OnceLock::new(),
            idle_after: DEFAULT_IDLE_AFTER,
        }
    }

    /// Records one finished request (no inter-token gaps: use [`Self::record_with_chunk_times`]).
    pub fn record(&self, r: &Summary) {
        self.record_gaps(r, std::iter::empty);
    }

    /// Records one finished request and, as `gen_ai.server.inter_token_latency`, the gaps between
    /// consecutive content chunk times (any monotonic clock, nanoseconds; an exchange's
    /// `content_chunk_ns`).
    /// A stream longer than its kept chunk times adds its later gaps from the summary's sketch
    /// (`Summary::later_gaps`), each at its bucket's value (within `gaps::RELATIVE_ERROR`): every
    /// gap is observed once.
    pub fn record_with_chunk_times(&self, r: &Summary, chunk_times_ns: &[u64]) {
        self.record_gaps(r, || {
            let later = r
                .later_gaps
                .iter()
                .flat_map(|g| g.buckets().map(|(ns, n)| (ns as u64, n)));
            chunk_times_ns
                .windows(2)
                .map(|w| (w[1].saturating_sub(w[0]), 1))
                .chain(later)
        });
    }

    /// Records one finished request and the given inter-token gaps (nanoseconds).
    pub fn record_with_gaps(&self, r: &Summary, gaps_ns: &[u64]) {
        self.record_gaps(r, || gaps_ns.iter().map(|&g| (g, 1)));
    }

    /// `gaps_ns` gives each inter-token gap (nanoseconds) with how many times it was seen.
    fn record_gaps<I>(&self, r: &Summary, gaps_ns: impl Fn() -> I)
    where
        I: Iterator<Item = (u64, u64)>,
    {
        if !r.server {
            return;
        }
        match r.kind {
            SummaryKind::Http => {}
            SummaryKind::Decision => return self.record_decision(r),
            // gRPC calls: no instruments yet.
            SummaryKind::GrpcCall => return,
        }
        let mut o = Observed::from_summary(r);
        {
            let mut served = self.served_models();
            served.learn(r);
            o.request_model = model_label(&served, r, &r.request_model);
            o.response_model = model_label(&served, r, &r.response_model);
        }
        let duration_s = r.duration_s;
        let mut put = self.recorder();

        put(
            HTTP_DURATION,
            &[o.method, o.status_code, o.server_port, o.error_type],
            duration_s,
        );
        if matches!(o.operation, Val::Absent) {
            return; // not a GenAI request
        }
        let genai = o.genai();
        put(
            DURATION,
            &o.with([o.error_type])[..GENAI_LEN + 1],
            duration_s,
        );
        put(
            REQUESTS,
            &o.with([Val::Str(o.outcome()), o.error_type]),
            1.0,
        );
        if let Some(ttft) = o.ttft_s {
            put(TTFT, &genai, ttft);
            if let Some(tpot) = o
                .output_tokens
                .and_then(|n| time_per_output_token(duration_s, ttft, n))
            {
                put(TPOT, &genai, tpot);
            }
        }
        for (kind, tokens) in [("input", o.input_tokens), ("output", o.output_tokens)] {
            if let Some(n) = tokens.filter(|n| *n >= 0) {
                let labels = o.with([Val::Str(kind)]);
                put(TOKEN_USAGE, &labels[..GENAI_LEN + 1], n as f64);
                put(TOKENS, &labels[..GENAI_LEN + 1], n as f64);
            }
        }
        if let Some(gap) = r.kv_transfer_gap_s {
            put(PD_KV_TRANSFER_GAP, &genai, gap);
        }
        if let Some(j) = r.energy_per_output_token_j {
            put(ENERGY_PER_OUTPUT_TOKEN, &genai, j);
        }
        if let Some(q) = r.queue_s {
            put(SERVER_TIME_IN_QUEUE, &genai, q);
        }
        if let Some(a) = r.api_server_s.filter(|a| *a >= 0.0) {
            put(API_SERVER, &genai, a);
        }
        drop(put);
        self.record_itl(&genai, gaps_ns);
    }

    /// A request's inter-token gaps: as many as its chunks, so they are counted into a histogram
    /// of their own before the families' lock is taken, merged into the series at once, and
    /// handed to the OTel instrument after the lock is released.
    fn record_itl<I>(&self, genai: &[Val<'_>], gaps_ns: impl Fn() -> I)
    where
        I: Iterator<Item = (u64, u64)>,
    {
        let InstrumentKind::Histogram(bounds) = INSTRUMENTS[ITL].kind else {
            return;
        };
        let mut gaps = Histogram::new(bounds.to_vec());
        for (gap, n) in gaps_ns() {
            gaps.observe_n(gap as f64 / 1e9, n);
        }
        if gaps.count() == 0 {
            return;
        }
        let now = Instant::now();
        let attributes = {
            let mut families = self.lock();
            let family = &mut families[ITL];
            family.sweep(now, self.idle_after);
            let series = family.series(genai);
            series.touched = now;
            if let Data::Histogram(h) = &mut series.data {
                h.merge(&gaps);
            }
            self.otel.get().map(|_| series.attributes.clone())
        };
        if let (Some(otel), Some(attributes)) = (self.otel.get(), attributes) {
            for (gap, n) in gaps_ns() {
                for _ in 0..n {
                    otel[ITL].add(gap as f64 / 1e9, &attributes);
                }
            }
        }
    }

    /// Where one request's values go: each to its instrument's series in the Prometheus families
    /// and, with OTLP metrics on, to the OTel instrument (holding the families' lock while alive).
    fn recorder(&self) -> impl FnMut(usize, &[Val<'_>], f64) + '_ {
        let otel = self.otel.get();
        let mut families = self.lock();
        let now = Instant::now();
        let idle = self.idle_after;
        move |instrument, values, value| {
            let family = &mut families[instrument];
            family.sweep(now, idle);
            let series = family.series(values);
            series.add(value, now);
            if let Some(otel) = otel {
                otel[instrument].add(value, &series.attributes);
            }
        }
    }

    /// A routing decision: duration, endpoint, rejection, and the outcome of a routed one.
    fn record_decision(&self, r: &Summary) {
        let Some(decision) = r.decision else {
            return;
        };
        let decision = Val::Str(decision);
        let model = r.request_model.as_deref().map_or(Val::Absent, |m| {
            Val::Str(self.served_models().label_routed(m))
        });
        let endpoint = r.endpoint.as_deref().map_or(Val::Absent, |e| {
            Val::Str(
                self.endpoints
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .label(e, Instant::now()),
            )
        });
        let mut put = self.recorder();
        put(EPP_DECISION_DURATION, &[decision, model], r.duration_s);
        if decision == Val::Str("routed") && !matches!(endpoint, Val::Absent) {
            put(EPP_DECISIONS, &[endpoint, model], 1.0);
            if let Some(t) = r.ttft_s {
                put(EPP_ROUTED_TTFT, &[endpoint, model], t);
            }
            if let (Some(prompt), Some(cached)) = (r.input_tokens, r.cached_input_tokens) {
                if prompt >= 0 && cached >= 0 {
                    put(EPP_ROUTED_INPUT_TOKENS, &[endpoint, model], prompt as f64);
                    put(
                        EPP_ROUTED_CACHED_INPUT_TOKENS,
                        &[endpoint, model],
                        cached.min(prompt) as f64,
                    );
                }
            }
        }
        if decision == Val::Str("rejected") {
            put(
                EPP_REJECTIONS,
                &[r.status_code.map_or(Val::Absent, Val::Int), model],
                1.0,
            );
        }
    }

    /// Every instrument's family, then the overflow counter, as `/metrics` shows them.
    pub fn families(&self) -> Vec<MetricFamily> {
        let mut families = self.lock();
        let now = Instant::now();
        for f in families.iter_mut() {
            f.sweep(now, self.idle_after);
        }
        let mut out: Vec<MetricFamily> = families.iter().map(Family::family).collect();
        out.push(MetricFamily {
            name: OVERFLOW_FAMILY.to_string(),
            help: format!(
                "Records routed to the overflow series ({OVERFLOW_ATTRIBUTE}=true) because their \
                 metric already had its maximum of labelled series."
            ),
            data: MetricData::Counter(
                families
                    .iter()
                    .map(|f| Sample {
                        labels: vec![("metric".to_string(), f.spec.prometheus_name.to_string())],
                        value: f.overflowed as f64,
                    })
                    .collect(),
            ),
        });
        out
    }

    /// Removes every labelled series not recorded into since `now` minus the idle time (done
    /// by itself once a minute on records and scrapes); how many. OTLP metrics are not affected:
    /// the SDK keeps its own streams (bounded by the same label policy and its own limit).
    pub fn evict_idle_at(&self, now: Instant) -> usize {
        let idle = self.idle_after;
        self.lock()
            .iter_mut()
            .map(|f| f.evict_idle(now, idle))
            .sum()
    }

    /// Records routed to the overflow series, over all instruments.
    pub fn overflowed(&self) -> u64 {
        self.lock().iter().map(|f| f.overflowed).sum()
    }

    /// Labelled series held, over all instruments (overflow series not counted).
    pub fn series_count(&self) -> usize {
        self.lock().iter().map(|f| f.series.len()).sum()
    }

    /// From now on, also records into these SDK instruments (same order as [`INSTRUMENTS`]).
    /// Only the first call has an effect.
    pub(crate) fn attach_otel(&self, instruments: Vec<OtelInstrument>) {
        debug_assert_eq!(instruments.len(), INSTRUMENTS.len());
        let _ = self.otel.set(instruments);
    }

    fn served_models(&self) -> MutexGuard<'_, served::ServedModels> {
        self.served.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Family>> {
        self.families.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MetricSource for RequestMetrics {
    fn collect(&self, out: &mut Vec<MetricFamily>) {
        out.extend(self.families());
    }
}

#[cfg(test)]
mod tests;
