//! The typed twin of a span: what one finished request tells the request metrics. Span builders
//! fill it from the same typed values they put on the span (and the Kubernetes enricher adds the
//! pod), so the metrics never read attribute strings back from a span: renaming an attribute in
//! `schema` cannot silently break a metric.

/// What kind of work a span is, as the metrics tell them apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SummaryKind {
    /// An HTTP exchange (a GenAI request when `operation` is set).
    #[default]
    Http,
    /// A routing decision of an endpoint picker.
    Decision,
    /// A gRPC call (no request metrics yet).
    GrpcCall,
}

/// One finished request, typed. Label values are bounded by the metrics when recorded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub kind: SummaryKind,
    /// The traced process served it (a SERVER span): only those are recorded.
    pub server: bool,
    /// The span's duration, in seconds.
    pub duration_s: f64,
    /// The span's status is ERROR.
    pub failed: bool,
    pub method: Option<String>,
    pub status_code: Option<i64>,
    pub server_address: Option<String>,
    pub server_port: Option<i64>,
    pub error_type: Option<String>,
    pub cancelled: bool,
    /// The server closed the connection before the response ended.
    pub server_aborted: bool,
    /// Bytes of the request or response were lost (the span is marked incomplete).
    pub incomplete: bool,
    /// `gen_ai.operation.name`: set for GenAI requests only.
    pub operation: Option<&'static str>,
    pub provider: Option<&'static str>,
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    /// Kubernetes mode: the serving pod.
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub ttft_s: Option<f64>,
    /// `infertap.inter_token_latency.p95`, seconds.
    pub itl_p95_s: Option<f64>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    /// Routing decisions: `routed`, `rejected` or `none`, and the first chosen endpoint.
    pub decision: Option<&'static str>,
    pub endpoint: Option<String>,
    /// A routing decision's outcome (the response phase through the EPP): prompt tokens the
    /// server found in its prefix cache. `input_tokens`, `output_tokens` and `ttft_s` (request
    /// at the EPP → first content token back through it) are the routed request's.
    pub cached_input_tokens: Option<i64>,
    /// A stream with more content chunks than its exchange kept times of: the gaps after those
    /// (the chunk times themselves reach the metrics beside the summary). Fixed size.
    pub later_gaps: Option<Box<crate::exchange::gaps::GapSketch>>,
    /// A `GET /v1/models` answer: the models the server listed (bounded by the exchange), the
    /// only request model names the metrics label on their own (`export::metrics`).
    pub served_models: Vec<String>,
    /// A leg of a disaggregated request: `prefill` or `decode`.
    pub pd_role: Option<&'static str>,
    /// A decode leg: the prefill leg's last response byte → this leg's first request byte.
    pub kv_transfer_gap_s: Option<f64>,
    /// The server's reported queue time (vLLM's per-request metrics), in seconds.
    pub queue_s: Option<f64>,
    /// The wire's TTFT less the server's queue and prefill (`trace::phases`), in seconds.
    pub api_server_s: Option<f64>,
    /// The request's fair share of GPU energy per output token, in joules (GPU enricher).
    pub energy_per_output_token_j: Option<f64>,
}

impl Summary {
    /// The parts every span has: kind, side, duration (from Unix nanoseconds) and failure.
    pub fn new(kind: SummaryKind, span: &super::span::FinishedSpan) -> Summary {
        Summary {
            kind,
            server: span.kind == super::span::SpanKind::Server,
            duration_s: span.end_unix_nano.saturating_sub(span.start_unix_nano) as f64 / 1e9,
            failed: matches!(span.status, super::span::SpanStatus::Error(_)),
            ..Summary::default()
        }
    }
}
