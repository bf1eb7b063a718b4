//! The telemetry schema: the name of every span attribute infertap emits, and of every label
//! and instrument of its request metrics, in one place.
//!
//! Span builders (`trace`), enrichers (`enrich`, `gpu::enricher`), the request metrics
//! (`export::metrics`) and the OTLP conversion name attributes only through these constants, so
//! a rename is one edit here. `docs/spans.md` documents the same set: a test fails if the page
//! names an attribute missing here, or the reverse. The OpenAI request and response fields that
//! become attributes are listed with their JSON paths in `protocol::openai` (its field table),
//! which names them through these constants too.

/// Declares each attribute as a constant and lists them all in [`ALL`](attr::ALL).
macro_rules! attributes {
    ($($(#[doc = $group:literal])* $($name:ident = $key:literal),+ $(,)?);+ $(;)?) => {
        $($(#[doc = $group])* $(pub const $name: &str = $key;)+)+
        /// Every span attribute, in the order of this module.
        pub const ALL: &[&str] = &[$($($key),+),+];
    };
}

/// Span attribute keys.
pub mod attr {
    attributes! {
        /// HTTP and the connection (every HTTP span; `url.path` without the query string)
        HTTP_REQUEST_METHOD = "http.request.method",
        URL_PATH = "url.path",
        HTTP_RESPONSE_STATUS_CODE = "http.response.status_code",
        HTTP_REQUEST_BODY_SIZE = "http.request.body.size",
        HTTP_RESPONSE_BODY_SIZE = "http.response.body.size",
        SERVER_ADDRESS = "server.address",
        SERVER_PORT = "server.port",
        CLIENT_ADDRESS = "client.address",
        CLIENT_PORT = "client.port",
        PROCESS_PID = "process.pid";
        /// How a request ended
        ERROR_TYPE = "error.type",
        INFERTAP_CANCELLED = "infertap.cancelled",
        INFERTAP_SERVER_ABORTED = "infertap.server_aborted",
        INFERTAP_INCOMPLETE = "infertap.incomplete",
        INFERTAP_SAMPLING_REASON = "infertap.sampling.reason";
        /// GenAI request (OpenAI routes; request fields found by the streaming JSON scan)
        GEN_AI_OPERATION_NAME = "gen_ai.operation.name",
        GEN_AI_PROVIDER_NAME = "gen_ai.provider.name",
        GEN_AI_REQUEST_ID = "gen_ai.request.id",
        GEN_AI_REQUEST_MODEL = "gen_ai.request.model",
        GEN_AI_REQUEST_STREAM = "gen_ai.request.stream",
        GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens",
        GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature",
        GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p",
        GEN_AI_REQUEST_CHOICE_COUNT = "gen_ai.request.choice.count";
        /// GenAI response
        GEN_AI_RESPONSE_ID = "gen_ai.response.id",
        GEN_AI_RESPONSE_MODEL = "gen_ai.response.model",
        GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons",
        GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens",
        GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens",
        GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens",
        INFERTAP_USAGE_OUTPUT_TOKENS_ESTIMATED = "infertap.usage.output_tokens_estimated";
        /// GenAI timing
        GEN_AI_LATENCY_TIME_TO_FIRST_TOKEN = "gen_ai.latency.time_to_first_token",
        GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk",
        GEN_AI_LATENCY_E2E = "gen_ai.latency.e2e",
        INFERTAP_CONTENT_CHUNKS = "infertap.content_chunks",
        INFERTAP_INTER_TOKEN_LATENCY_MEAN = "infertap.inter_token_latency.mean",
        INFERTAP_INTER_TOKEN_LATENCY_P50 = "infertap.inter_token_latency.p50",
        INFERTAP_INTER_TOKEN_LATENCY_P95 = "infertap.inter_token_latency.p95",
        INFERTAP_INTER_TOKEN_LATENCY_MAX = "infertap.inter_token_latency.max";
        /// Phases the server reported (vLLM's per-request `metrics`, llama.cpp's `timings`), in
        /// seconds, vLLM's tracing names where it has them, and what the wire adds
        GEN_AI_LATENCY_TIME_IN_QUEUE = "gen_ai.latency.time_in_queue",
        GEN_AI_LATENCY_TIME_IN_MODEL_PREFILL = "gen_ai.latency.time_in_model_prefill",
        GEN_AI_LATENCY_TIME_IN_MODEL_DECODE = "gen_ai.latency.time_in_model_decode",
        INFERTAP_SERVER_PHASES_SOURCE = "infertap.server.phases_source",
        INFERTAP_SERVER_INTER_TOKEN_LATENCY_MEAN = "infertap.server.inter_token_latency.mean",
        INFERTAP_SERVER_TOKENS_PER_SECOND = "infertap.server.tokens_per_second",
        INFERTAP_SERVER_PROMPT_TOKENS_CACHED = "infertap.server.prompt_tokens_cached",
        INFERTAP_SERVER_PROMPT_TOKENS_EVALUATED = "infertap.server.prompt_tokens_evaluated",
        INFERTAP_USAGE_REASONING_TOKENS = "infertap.usage.reasoning_tokens",
        INFERTAP_LATENCY_API_SERVER = "infertap.latency.api_server";
        /// Runtime saturation: the serving process's own `/metrics` (scraped by others) at the
        /// request's arrival and over its window
        INFERTAP_RUNTIME_SOURCE = "infertap.runtime.source",
        INFERTAP_RUNTIME_REQUESTS_WAITING = "infertap.runtime.requests_waiting",
        INFERTAP_RUNTIME_REQUESTS_RUNNING = "infertap.runtime.requests_running",
        INFERTAP_RUNTIME_KV_CACHE_USAGE = "infertap.runtime.kv_cache_usage",
        INFERTAP_RUNTIME_SAMPLE_AGE = "infertap.runtime.sample_age",
        INFERTAP_RUNTIME_KV_CACHE_USAGE_MAX = "infertap.runtime.kv_cache_usage.max",
        INFERTAP_RUNTIME_PREEMPTIONS = "infertap.runtime.preemptions",
        INFERTAP_RUNTIME_PREFIX_CACHE_HIT_RATIO = "infertap.runtime.prefix_cache_hit_ratio";
        /// Prefill/decode disaggregation (llm-d): which leg, and the KV-cache transfer gap
        LLM_D_PD_ROLE = "llm_d.pd.role",
        INFERTAP_PD_KV_TRANSFER_GAP = "infertap.pd.kv_transfer_gap";
        /// gRPC calls and the ext_proc stream of a routing decision
        RPC_SYSTEM = "rpc.system",
        RPC_SERVICE = "rpc.service",
        RPC_METHOD = "rpc.method",
        RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code",
        INFERTAP_GRPC_REQUEST_MESSAGES = "infertap.grpc.request_messages",
        INFERTAP_GRPC_RESPONSE_MESSAGES = "infertap.grpc.response_messages";
        /// Routing decisions of endpoint pickers
        INFERTAP_EPP_DECISION = "infertap.epp.decision",
        INFERTAP_EPP_ENDPOINT = "infertap.epp.endpoint",
        INFERTAP_EPP_ENDPOINTS = "infertap.epp.endpoints",
        INFERTAP_EPP_MODEL_REWRITE = "infertap.epp.model_rewrite",
        INFERTAP_EPP_OBJECTIVE = "infertap.epp.objective",
        INFERTAP_EPP_FAIRNESS_ID = "infertap.epp.fairness_id",
        INFERTAP_EPP_SLO_TTFT_MS = "infertap.epp.slo_ttft_ms",
        INFERTAP_EPP_SLO_TPOT_MS = "infertap.epp.slo_tpot_ms",
        INFERTAP_EPP_SUBSET = "infertap.epp.subset";
        /// The routing outcome: what the chosen endpoint answered, from the response phase Envoy
        /// sent the endpoint picker
        INFERTAP_EPP_OUTCOME_STATUS_CODE = "infertap.epp.outcome.status_code",
        INFERTAP_EPP_OUTCOME_TIME_TO_FIRST_BYTE = "infertap.epp.outcome.time_to_first_byte",
        INFERTAP_EPP_OUTCOME_TIME_TO_FIRST_TOKEN = "infertap.epp.outcome.time_to_first_token",
        INFERTAP_EPP_OUTCOME_INPUT_TOKENS = "infertap.epp.outcome.input_tokens",
        INFERTAP_EPP_OUTCOME_OUTPUT_TOKENS = "infertap.epp.outcome.output_tokens",
        INFERTAP_EPP_OUTCOME_CACHED_INPUT_TOKENS = "infertap.epp.outcome.cached_input_tokens",
        INFERTAP_EPP_OUTCOME_PREFIX_CACHE_HIT_RATIO = "infertap.epp.outcome.prefix_cache_hit_ratio",
        INFERTAP_EPP_OUTCOME_COMPLETE = "infertap.epp.outcome.complete";
        /// Kubernetes (the pod whose cgroup holds the traced process)
        K8S_NAMESPACE_NAME = "k8s.namespace.name",
        K8S_POD_NAME = "k8s.pod.name",
        K8S_POD_UID = "k8s.pod.uid",
        K8S_NODE_NAME = "k8s.node.name",
        K8S_CONTAINER_NAME = "k8s.container.name",
        K8S_DEPLOYMENT_NAME = "k8s.deployment.name",
        K8S_REPLICASET_NAME = "k8s.replicaset.name",
        K8S_STATEFULSET_NAME = "k8s.statefulset.name",
        K8S_DAEMONSET_NAME = "k8s.daemonset.name",
        K8S_JOB_NAME = "k8s.job.name";
        /// GPU (the devices serving the process, over the request's window)
        INFERTAP_GPU_IDS = "infertap.gpu.ids",
        INFERTAP_GPU_ATTRIBUTION = "infertap.gpu.attribution",
        INFERTAP_GPU_SOURCE = "infertap.gpu.source",
        INFERTAP_GPU_UTILIZATION_MEAN = "infertap.gpu.utilization.mean",
        INFERTAP_GPU_UTILIZATION_MAX = "infertap.gpu.utilization.max",
        INFERTAP_GPU_COVERAGE = "infertap.gpu.coverage",
        INFERTAP_GPU_SAMPLE_RESOLUTION = "infertap.gpu.sample_resolution",
        INFERTAP_GPU_SAMPLE_AGE = "infertap.gpu.sample_age",
        INFERTAP_GPU_RESOLUTION_LIMITED = "infertap.gpu.resolution_limited",
        INFERTAP_GPU_MEMORY_BANDWIDTH_UTILIZATION = "infertap.gpu.memory_bandwidth.utilization",
        INFERTAP_GPU_MEMORY_BANDWIDTH_SOURCE = "infertap.gpu.memory_bandwidth.source",
        INFERTAP_GPU_MEMORY_BANDWIDTH_UTILIZATION_MAX = "infertap.gpu.memory_bandwidth.utilization_max",
        INFERTAP_GPU_SM_ACTIVE = "infertap.gpu.sm_active",
        INFERTAP_GPU_SM_OCCUPANCY = "infertap.gpu.sm_occupancy",
        INFERTAP_GPU_TENSOR_ACTIVE = "infertap.gpu.tensor_active",
        INFERTAP_GPU_PROCESS_UTILIZATION = "infertap.gpu.process.utilization",
        INFERTAP_GPU_ENERGY = "infertap.gpu.energy",
        INFERTAP_GPU_ENERGY_COVERAGE = "infertap.gpu.energy.coverage",
        INFERTAP_GPU_PROCESS_MEMORY_USAGE = "infertap.gpu.process.memory.usage",
        INFERTAP_GPU_MEMORY_USAGE = "infertap.gpu.memory.usage",
        INFERTAP_GPU_MEMORY_LIMIT = "infertap.gpu.memory.limit",
        INFERTAP_GPU_SHARE_BUSY_TIME = "infertap.gpu.share.busy_time",
        INFERTAP_GPU_SHARE_ENERGY = "infertap.gpu.share.energy",
        INFERTAP_GPU_SHARE_CONCURRENT_REQUESTS = "infertap.gpu.share.concurrent_requests",
        INFERTAP_GPU_SHARE_BUSY_TIME_PREFILL = "infertap.gpu.share.busy_time.prefill",
        INFERTAP_GPU_SHARE_BUSY_TIME_DECODE = "infertap.gpu.share.busy_time.decode",
        INFERTAP_GPU_SHARE_ENERGY_PREFILL = "infertap.gpu.share.energy.prefill",
        INFERTAP_GPU_SHARE_ENERGY_DECODE = "infertap.gpu.share.energy.decode",
        INFERTAP_GPU_SHARE_GPU_TIME = "infertap.gpu.share.gpu_time",
        INFERTAP_GPU_ENERGY_PER_OUTPUT_TOKEN = "infertap.gpu.energy_per_output_token",
        INFERTAP_GPU_SHARE_COST = "infertap.gpu.share.cost",
        INFERTAP_COST_PER_MILLION_OUTPUT_TOKENS = "infertap.cost.per_million_output_tokens",
        INFERTAP_GPU_SHARE_ESTIMATED = "infertap.gpu.share.estimated";
    }
}

/// Request metrics: instrument names (OTel) and the label keys that are not span attributes.
/// Label keys that are attributes (`gen_ai.request.model`, `server.port`, …) use [`attr`].
pub mod metric {
    pub const GEN_AI_SERVER_TIME_TO_FIRST_TOKEN: &str = "gen_ai.server.time_to_first_token";
    pub const GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN: &str = "gen_ai.server.time_per_output_token";
    pub const GEN_AI_SERVER_INTER_TOKEN_LATENCY: &str = "gen_ai.server.inter_token_latency";
    pub const GEN_AI_SERVER_REQUEST_DURATION: &str = "gen_ai.server.request.duration";
    pub const GEN_AI_SERVER_TOKEN_USAGE: &str = "gen_ai.server.token.usage";
    pub const GEN_AI_SERVER_TOKENS: &str = "gen_ai.server.tokens";
    pub const HTTP_SERVER_REQUEST_DURATION: &str = "http.server.request.duration";
    pub const INFERTAP_REQUESTS: &str = "infertap.requests";
    pub const INFERTAP_EPP_DECISION_DURATION: &str = "infertap.epp.decision.duration";
    pub const INFERTAP_EPP_DECISIONS: &str = "infertap.epp.decisions";
    pub const INFERTAP_EPP_REJECTIONS: &str = "infertap.epp.rejections";
    pub const INFERTAP_EPP_ROUTED_TIME_TO_FIRST_TOKEN: &str =
        "infertap.epp.routed.time_to_first_token";
    pub const INFERTAP_EPP_ROUTED_INPUT_TOKENS: &str = "infertap.epp.routed.input_tokens";
    pub const INFERTAP_EPP_ROUTED_CACHED_INPUT_TOKENS: &str =
        "infertap.epp.routed.cached_input_tokens";
    pub const INFERTAP_PD_KV_TRANSFER_GAP: &str = "infertap.pd.kv_transfer_gap";
    pub const INFERTAP_GPU_ENERGY_PER_OUTPUT_TOKEN: &str = "infertap.gpu.energy_per_output_token";
    pub const INFERTAP_SERVER_TIME_IN_QUEUE: &str = "infertap.server.time_in_queue";
    pub const INFERTAP_LATENCY_API_SERVER: &str = "infertap.latency.api_server";

    /// Label: `input` or `output`.
    pub const GEN_AI_TOKEN_TYPE: &str = "gen_ai.token.type";
    /// Label: `completed`, `cancelled` or `error`.
    pub const OUTCOME: &str = "outcome";
    /// The attribute of the overflow series, as the OTel SDKs name it.
    pub const OTEL_METRIC_OVERFLOW: &str = "otel.metric.overflow";
}

/// Every span attribute: the constants of [`attr`], then the attributes only the OpenAI field
/// table names (a provider-specific field is declared there alone).
pub fn attributes() -> impl Iterator<Item = &'static str> {
    let table = crate::protocol::openai::fields::FIELDS
        .iter()
        .filter_map(|f| f.attribute.map(|a| a.key))
        .filter(|k| !attr::ALL.contains(k));
    attr::ALL.iter().copied().chain(table)
}

#[cfg(test)]
mod tests;
