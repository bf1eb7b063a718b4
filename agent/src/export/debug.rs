//! The local debug endpoint (`--debug-addr`, default `127.0.0.1:9464`).
//!
//! | path | answer |
//! |---|---|
//! | `GET /healthz` | 200 `ok` once [`Readiness::set_ready`] was called and no loop has stalled; 503 saying what it waits for, or which loop stopped making progress ([`Liveness`]) and while doing what |
//! | `GET /status` | [`StatusSnapshot`](super::status::StatusSnapshot) as JSON |
//! | `GET /spans?limit=N` | the N (default 100, at most the store's size) newest spans, JSON |
//! | `GET /metrics` | Prometheus text of every registered [`MetricSource`] |
//! | `GET /gpu` | the GPU source's state, JSON |
//! | `GET /` (`/page.css`, `/page.js`), `GET /ticks`, `GET /gpu/series` | the flight-recorder page and its two JSON endpoints ([`super::page`]) |
//! | anything else | 404 with a JSON error listing the paths |
//!
//! Owns the HTTP surface and the `/spans` JSON shape, which is a user contract:
//! `{"trace_id","span_id","parent_span_id","name","kind","start_time_unix_nano",
//! "end_time_unix_nano","status":{"code","message"},"attributes":{…}}` with lower-case hex ids,
//! `parent_span_id` null for a root, `kind` `"server"`/`"client"`/`"internal"`, status code
//! `"unset"`/`"ok"`/`"error"` with `message` null unless an error, and attribute values as JSON
//! scalars or arrays (non-finite floats as null).
//!
//! Must never: write to anything it reads (it only reads snapshots), or show payload bytes (spans
//! hold none).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::prometheus::{self, MetricSource};
use super::status::StatusSource;
use super::store::{SpanStore, StoredSpan};
use crate::liveness::Liveness;
use crate::trace::span::{hex, AttrValue, FinishedSpan, SpanStatus};

/// Where the debug endpoint listens unless `--debug-addr` says otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";

/// `/spans` without `limit`.
pub const DEFAULT_SPANS_LIMIT: usize = 100;

const PATHS: [&str; 8] = [
    "/",
    "/healthz",
    "/status",
    "/spans",
    "/metrics",
    "/gpu",
    "/gpu/series",
    "/ticks",
];

/// Errors of the debug server.
#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    #[error("cannot listen on {addr} for the debug endpoint")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("debug endpoint stopped")]
    Serve(#[source] std::io::Error),
}

/// The flag `/healthz` reports: set once the agent is ready (probes attached).
#[derive(Clone, Debug)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    waiting_for: Arc<str>,
}

impl Readiness {
    /// A flag that is not set yet; `waiting_for` completes "not ready: waiting for …".
    pub fn new(waiting_for: &str) -> Self {
        Self {
            ready: Arc::default(),
            waiting_for: waiting_for.into(),
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// What the debug endpoint reads.
#[derive(Clone)]
pub struct DebugState {
    store: Arc<SpanStore>,
    status: StatusSource,
    readiness: Readiness,
    metric_sources: Vec<Arc<dyn MetricSource>>,
    /// The GPU hub, once GPU telemetry is wired; `/gpu` shows the status alone without it.
    gpu: Option<crate::gpu::Hub>,
    /// Chunk times of recent streamed requests, for `/ticks`.
    ticks: Option<Arc<super::ticks::TickStore>>,
    /// The heartbeats `/healthz` checks once ready.
    liveness: Option<Liveness>,
}

impl DebugState {
    /// `/metrics` starts with the agent's own metrics (from `status`); add more sources with
    /// [`DebugState::with_metric_source`].
    pub fn new(store: Arc<SpanStore>, status: StatusSource, readiness: Readiness) -> Self {
        let metric_sources: Vec<Arc<dyn MetricSource>> = vec![Arc::new(status.clone())];
        Self {
            store,
            status,
            readiness,
            metric_sources,
            gpu: None,
            ticks: None,
            liveness: None,
        }
    }

    /// `/healthz` fails while a loop of `liveness` has stalled.
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// `/gpu` shows this hub (devices, latest samples, the sampler's cost).
    pub fn with_gpu(mut self, hub: crate::gpu::Hub) -> Self {
        self.gpu = Some(hub);
        self
    }

    /// `/ticks` answers from this store.
    pub fn with_ticks(mut self, ticks: Arc<super::ticks::TickStore>) -> Self {
        self.ticks = Some(ticks);
        self
    }

    pub(super) fn ticks(&self) -> Option<&super::ticks::TickStore> {
        self.ticks.as_deref()
    }

    pub(super) fn gpu_hub(&self) -> Option<&crate::gpu::Hub> {
        self.gpu.as_ref()
    }

    /// Adds families to `/metrics`, after those already registered.
    pub fn with_metric_source(mut self, source: Arc<dyn MetricSource>) -> Self {
        self.metric_sources.push(source);
        self
    }
}

/// The debug endpoint's routes.
pub fn router(state: DebugState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/spans", get(spans))
        .route("/metrics", get(metrics))
        .route("/gpu", get(gpu))
        .route("/", get(super::page::index))
        .route("/page.css", get(super::page::css))
        .route("/page.js", get(super::page::js))
        .route("/ticks", get(super::page::ticks))
        .route("/gpu/series", get(super::page::gpu_series))
        .fallback(not_found)
        .with_state(state)
}

/// The metrics listener's routes (`--metrics-addr`): `/metrics` alone, for scraping from off the
/// node; the debug pages (client addresses, request ids, pod names) stay on the debug endpoint.
pub fn metrics_router(state: DebugState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(metrics_not_found)
        .with_state(state)
}

async fn metrics_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not found", "paths": ["/metrics"]})),
    )
        .into_response()
}

/// A bound, not yet serving, debug endpoint: binding first lets the app fail early on a busy
/// address and learn the port when it asked for port 0.
pub struct DebugServer {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl DebugServer {
    pub async fn bind(addr: SocketAddr, state: DebugState) -> Result<Self, DebugError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DebugError::Bind { addr, source })?;
        Ok(Self {
            listener,
            router: router(state),
        })
    }

    /// The metrics listener: [`metrics_router`] on `addr`.
    pub async fn bind_metrics(addr: SocketAddr, state: DebugState) -> Result<Self, DebugError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DebugError::Bind { addr, source })?;
        Ok(Self {
            listener,
            router: metrics_router(state),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DebugError> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(DebugError::Serve)
    }
}

async fn healthz(State(state): State<DebugState>) -> Response {
    if state.readiness.is_ready() {
        let stalled = state
            .liveness
            .as_ref()
            .map(Liveness::stalled)
            .unwrap_or_default();
        if stalled.is_empty() {
            (StatusCode::OK, "ok").into_response()
        } else {
            let body = format!("stalled: {}", stalled.join("; "));
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    } else {
        let body = format!("not ready: waiting for {}", state.readiness.waiting_for);
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn status(State(state): State<DebugState>) -> Response {
    Json(state.status.snapshot()).into_response()
}

#[derive(Deserialize)]
struct SpansQuery {
    limit: Option<String>,
}

async fn spans(
    State(state): State<DebugState>,
    query: Result<Query<SpansQuery>, QueryRejection>,
) -> Response {
    let max = state.store.capacity();
    let limit = match query {
        Ok(Query(SpansQuery { limit: None })) => DEFAULT_SPANS_LIMIT.min(max),
        Ok(Query(SpansQuery { limit: Some(raw) })) => match raw.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid limit {raw:?}: use an integer from 1 to {max}"),
                )
            }
        },
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid query: {rejection}; use ?limit=N with N from 1 to {max}"),
            )
        }
    };
    spans_body(state.store.recent(limit))
}

/// Spans per chunk of the `/spans` reply: about 35 KiB of JSON for plain HTTP spans.
const SPANS_PER_CHUNK: usize = 64;

/// The `/spans` array, streamed in chunks of [`SPANS_PER_CHUNK`] spans written as the client
/// reads: only one span's JSON tree and one chunk exist at a time, so a read of the whole store
/// allocates tens of KiB, not a copy of the store and a tree of thousands of spans (which the
/// allocator kept after the reply; docs/PERFORMANCE.md). Each span is decoded from its stored form
/// as its chunk is written. The reply holds its spans (shared, not copied) until it is sent, even those the store forgets meanwhile.
fn spans_body(spans: Vec<StoredSpan>) -> Response {
    let total = spans.len();
    let chunks = (0..total.div_ceil(SPANS_PER_CHUNK).max(1)).map(move |chunk| {
        let (from, to) = (
            chunk * SPANS_PER_CHUNK,
            ((chunk + 1) * SPANS_PER_CHUNK).min(total),
        );
        let mut out = Vec::new();
        if chunk == 0 {
            out.push(b'[');
        }
        for (n, span) in spans.iter().enumerate().take(to).skip(from) {
            if n > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &span_json(&span.span()))?;
        }
        if to == total {
            out.push(b']');
        }
        Ok::<_, serde_json::Error>(axum::body::Bytes::from(out))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(futures::stream::iter(chunks)),
    )
        .into_response()
}

async fn metrics(State(state): State<DebugState>) -> Response {
    let mut families = Vec::new();
    for source in &state.metric_sources {
        source.collect(&mut families);
    }
    (
        [(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)],
        prometheus::encode(&families),
    )
        .into_response()
}

async fn gpu(State(state): State<DebugState>) -> Response {
    match &state.gpu {
        Some(hub) => Json(crate::export::gpu::gpu_json(hub)).into_response(),
        None => Json(state.status.app().gpu).into_response(),
    }
}

async fn not_found(uri: Uri) -> Response {
    let body = json!({ "error": format!("no such path: {}", uri.path()), "paths": PATHS });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(json!({ "error": message }))).into_response()
}

/// One span as `/spans` shows it (the contract in this module's docs).
pub fn span_json(span: &FinishedSpan) -> Value {
    let (code, message) = match &span.status {
        SpanStatus::Unset => ("unset", None),
        SpanStatus::Ok => ("ok", None),
        SpanStatus::Error(message) => ("error", Some(message.as_str())),
    };
    let attributes: Map<String, Value> = span
        .attributes
        .iter()
        .map(|(key, value)| (key.to_string(), attr_json(value)))
        .collect();
    json!({
        "trace_id": hex(&span.trace_id),
        "span_id": hex(&span.span_id),
        "parent_span_id": span.parent_span_id.map(|p| hex(&p)),
        "name": span.name,
        "kind": span.kind.as_str(),
        "start_time_unix_nano": span.start_unix_nano,
        "end_time_unix_nano": span.end_unix_nano,
        "status": { "code": code, "message": message },
        "attributes": attributes,
    })
}

fn attr_json(value: &AttrValue) -> Value {
    match value {
        AttrValue::Str(s) => Value::from(s.as_str()),
        AttrValue::I64(i) => Value::from(*i),
        // `Value::from` maps NaN and infinities to null.
        AttrValue::F64(f) => Value::from(*f),
        AttrValue::Bool(b) => Value::from(*b),
        AttrValue::StrArray(items) => Value::from(items.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::otlp::ExporterStateHandle;
    use crate::export::prometheus::MetricFamily;
    use crate::export::store::tests::span;
    use crate::stats::Stats;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    struct Fixture {
        store: Arc<SpanStore>,
        status: StatusSource,
        readiness: Readiness,
    }

    fn fixture(capacity: usize) -> Fixture {
        Fixture {
            store: Arc::new(SpanStore::new(capacity)),
            status: StatusSource::new(Arc::new(Stats::default()), ExporterStateHandle::disabled()),
            readiness: Readiness::new("probes to attach"),
        }
    }

    impl Fixture {
        fn state(&self) -> DebugState {
            DebugState::new(
                self.store.clone(),
                self.status.clone(),
                self.readiness.clone(),
            )
        }

        async fn get(&self, uri: &str) -> (StatusCode, Option<String>, String) {
            get_from(router(self.state()), uri).await
        }
    }

    async fn get_from(router: Router, uri: &str) -> (StatusCode, Option<String>, String) {
        let request = Request::get(uri).body(Body::empty()).unwrap();
        let response = router.oneshot(request).await.unwrap();
        let code = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        (
            code,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn the_page_and_its_endpoints() {
        let f = fixture(10);
        let (code, content_type, body) = f.get("/").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("text/html; charset=utf-8"));
        assert!(body.contains("<script src=\"page.js\">"), "{body}");
        for (path, kind) in [("/page.js", "text/javascript"), ("/page.css", "text/css")] {
            let (code, content_type, body) = f.get(path).await;
            assert_eq!(code, StatusCode::OK, "{path}");
            assert!(content_type.unwrap().starts_with(kind) && !body.is_empty());
        }

        let ticks = Arc::new(crate::export::ticks::TickStore::new(4));
        ticks.record([7; 8], Some(0.05), &[1_000_000, 21_000_000]);
        let router = router(f.state().with_ticks(ticks));
        let (code, _, body) = get_from(router.clone(), "/ticks?span_id=0707070707070707").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"span_id": "0707070707070707", "offsets_us": [50_000, 70_000], "chunks": 2})
        );
        let (code, _, _) = get_from(router.clone(), "/ticks?span_id=0807070707070707").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        let (code, _, _) = get_from(router.clone(), "/ticks?span_id=xyz").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);

        // No GPU: no devices; a window that is backwards or too long is refused.
        let (code, _, body) = get_from(router.clone(), "/gpu/series?from=1&to=2").await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, r#"{"devices":[]}"#));
        for bad in [
            "/gpu/series?from=2&to=1",
            "/gpu/series?from=0&to=1000000000000",
            "/gpu/series",
        ] {
            let (code, _, _) = get_from(router.clone(), bad).await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[tokio::test]
    async fn healthz_is_503_until_ready() {
        let f = fixture(10);
        let (code, _, body) = f.get("/healthz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: waiting for probes to attach");
        f.readiness.set_ready();
        let (code, _, body) = f.get("/healthz").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, "ok");
    }

    #[tokio::test]
    async fn the_metrics_listener_serves_metrics_and_nothing_of_the_debug_pages() {
        let f = fixture(10);
        let app = || metrics_router(f.state());
        let (code, _, body) = get_from(app(), "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("infertap_records_read_total"), "{body}");
        for path in ["/status", "/spans", "/healthz", "/gpu"] {
            let (code, _, body) = get_from(app(), path).await;
            assert_eq!(code, StatusCode::NOT_FOUND, "{path}: {body}");
        }
    }

    #[tokio::test]
    async fn healthz_is_503_naming_the_loop_that_stopped_making_progress() {
        use std::sync::atomic::AtomicU64;
        use std::time::Duration;
        let f = fixture(10);
        f.readiness.set_ready();
        let now = Arc::new(AtomicU64::new(0));
        let clock = now.clone();
        let liveness = Liveness::with_clock(Arc::new(move || clock.load(Ordering::Relaxed)));
        let pipeline = liveness.register("pipeline", Duration::from_secs(30));
        let targeting = liveness.register("targeting", Duration::from_secs(30));
        let app = || router(f.state().with_liveness(liveness.clone()));
        pipeline.beat("draining the ring buffer");
        assert_eq!(get_from(app(), "/healthz").await.0, StatusCode::OK);
        // The targeting thread goes on; the pipeline task's last beat was before an attach
        // that never returned.
        pipeline.beat("attaching TLS uprobes");
        for t in [10_000, 20_000, 31_000] {
            now.store(t, Ordering::Relaxed);
            targeting.beat("scanning /proc");
        }
        let (code, _, body) = get_from(app(), "/healthz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "stalled: pipeline: no progress for 31.0 s (limit 30 s) while attaching TLS uprobes"
        );
        pipeline.beat("draining the ring buffer");
        assert_eq!(get_from(app(), "/healthz").await.0, StatusCode::OK);
    }

    /// The reply streamed in chunks is byte for byte the JSON array of the spans' trees.
    #[tokio::test]
    async fn spans_body_is_the_array_of_span_trees() {
        let f = fixture(200);
        let (_, _, empty) = f.get("/spans").await;
        assert_eq!(empty, "[]");
        for n in 1..=150 {
            let mut s = span(n);
            s.attributes = vec![
                ("b.second".into(), AttrValue::I64(i64::from(n))),
                ("a.first".into(), AttrValue::Str(format!("v{n}"))),
            ];
            f.store.push(s);
        }
        let trees: Vec<Value> = f
            .store
            .recent(200)
            .iter()
            .map(|s| span_json(&s.span()))
            .collect();
        // One span; a chunk less one, exactly a chunk, a chunk and one; two chunks; three.
        for limit in [1, 63, 64, 65, 128, 150] {
            let (_, _, body) = f.get(&format!("/spans?limit={limit}")).await;
            assert_eq!(body, serde_json::to_string(&trees[..limit]).unwrap());
        }
    }

    #[tokio::test]
    async fn spans_json_is_exactly_the_contract() {
        let f = fixture(10);
        let mut child = span(0xab);
        child.parent_span_id = Some([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        child.parent_is_remote = true;
        child.name = "chat llama".into();
        child.start_unix_nano = 1_700_000_000_123_456_789;
        child.end_unix_nano = 1_700_000_001_000_000_000;
        child.status = SpanStatus::Error("timeout".into());
        child.attributes = vec![
            ("http.request.method".into(), AttrValue::Str("POST".into())),
            ("http.response.status_code".into(), AttrValue::I64(200)),
            ("gen_ai.latency.e2e".into(), AttrValue::F64(0.5)),
            ("gen_ai.request.stream".into(), AttrValue::Bool(true)),
            ("bad.float".into(), AttrValue::F64(f64::NAN)),
            (
                "gen_ai.response.finish_reasons".into(),
                AttrValue::StrArray(vec!["stop".into()]),
            ),
        ];
        let mut root = span(0x02);
        root.kind = crate::trace::span::SpanKind::Client;
        root.status = SpanStatus::Ok;
        f.store.push(child);
        f.store.push(root);

        let (code, content_type, body) = f.get("/spans").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            value,
            json!([
                {
                    "trace_id": "02020202020202020202020202020202",
                    "span_id": "0202020202020202",
                    "parent_span_id": null,
                    "name": "span 2",
                    "kind": "client",
                    "start_time_unix_nano": 2000,
                    "end_time_unix_nano": 2500,
                    "status": {"code": "ok", "message": null},
                    "attributes": {}
                },
                {
                    "trace_id": "abababababababababababababababab",
                    "span_id": "abababababababab",
                    "parent_span_id": "0123456789abcdef",
                    "name": "chat llama",
                    "kind": "server",
                    "start_time_unix_nano": 1_700_000_000_123_456_789u64,
                    "end_time_unix_nano": 1_700_000_001_000_000_000u64,
                    "status": {"code": "error", "message": "timeout"},
                    "attributes": {
                        "http.request.method": "POST",
                        "http.response.status_code": 200,
                        "gen_ai.latency.e2e": 0.5,
                        "gen_ai.request.stream": true,
                        "bad.float": null,
                        "gen_ai.response.finish_reasons": ["stop"]
                    }
                }
            ])
        );
        // Times are JSON integers, exactly (not floats, not strings).
        assert!(body.contains("\"start_time_unix_nano\":1700000000123456789"));
        let unset = span_json(&span(1));
        assert_eq!(unset["status"], json!({"code": "unset", "message": null}));
    }

    #[tokio::test]
    async fn spans_limit_defaults_to_100_and_is_validated() {
        let f = fixture(150);
        for n in 0..150u8 {
            f.store.push(span(n));
        }
        let count = |body: &str| serde_json::from_str::<Vec<Value>>(body).unwrap().len();
        let (_, _, body) = f.get("/spans").await;
        assert_eq!(count(&body), 100);
        let (code, _, body) = f.get("/spans?limit=150").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(count(&body), 150);
        let (_, _, body) = f.get("/spans?limit=1").await;
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()[0]["name"],
            "span 149"
        );

        for bad in ["0", "151", "-1", "ten", ""] {
            let (code, content_type, body) = f.get(&format!("/spans?limit={bad}")).await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "limit={bad}");
            assert_eq!(content_type.as_deref(), Some("application/json"));
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap(),
                json!({"error": format!("invalid limit {bad:?}: use an integer from 1 to 150")})
            );
        }
    }

    #[tokio::test]
    async fn small_store_caps_the_default_limit() {
        let f = fixture(5);
        let (code, _, body) = f.get("/spans").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body, "[]");
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_with_extra_sources() {
        struct Extra;
        impl MetricSource for Extra {
            fn collect(&self, out: &mut Vec<MetricFamily>) {
                out.push(MetricFamily::gauge("extra_gauge", "An extra family.", 1.5));
            }
        }
        let f = fixture(10);
        f.status.stats().records_read.store(5, Ordering::Relaxed);
        let router = router(f.state().with_metric_source(Arc::new(Extra)));
        let (code, content_type, body) = get_from(router, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            content_type.as_deref(),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(body.starts_with(
            "# HELP infertap_records_read_total Ring buffer records decoded.\n\
             # TYPE infertap_records_read_total counter\n\
             infertap_records_read_total 5\n\
             # HELP infertap_bytes_read_total Payload bytes received from the kernel.\n"
        ));
        assert!(body.ends_with(
            "# HELP extra_gauge An extra family.\n# TYPE extra_gauge gauge\nextra_gauge 1.5\n"
        ));
        assert!(body.contains("# TYPE infertap_kernel_records_dropped_total counter\n"));
    }

    #[tokio::test]
    async fn status_gpu_and_unknown_paths() {
        let f = fixture(10);
        let (code, content_type, body) = f.get("/status").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let value: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["exporter"]["state"], "disabled");
        assert_eq!(value["version"], env!("CARGO_PKG_VERSION"));

        let (code, _, body) = f.get("/gpu").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"state": "off", "reason": "GPU telemetry is not built yet"})
        );

        let (code, content_type, body) = f.get("/nope?x=1").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"error": "no such path: /nope",
                   "paths": ["/", "/healthz", "/status", "/spans", "/metrics", "/gpu", "/gpu/series", "/ticks"]})
        );
    }

    #[tokio::test]
    async fn serves_on_a_real_listener_and_shuts_down() {
        let f = fixture(10);
        f.readiness.set_ready();
        let server = DebugServer::bind("127.0.0.1:0".parse().unwrap(), f.state())
            .await
            .unwrap();
        let addr = server.local_addr();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stop_rx.await;
        }));

        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\nok"), "{response}");

        // A second bind on the same address fails with a clear error.
        let err = DebugServer::bind(addr, f.state()).await.err().unwrap();
        assert!(err.to_string().contains(&addr.to_string()));

        stop_tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
}
