//! OTLP span export: a sampler in front of a bounded queue, and one task that batches the queue
//! into the OpenTelemetry SDK's OTLP exporter (gRPC or HTTP/protobuf).
//!
//! Owns: the export queue, batching (at most `max_batch` spans, or whatever waited
//! `batch_interval`), the per-request timeout, the counters `spans_exported`,
//! `spans_export_failed`, `spans_export_dropped` and `spans_not_sampled`, and the exporter state
//! shown on `/status`.
//!
//! Must never: block the thread that finishes spans (producers only `try_send`; a full queue sheds
//! and counts), hold more than `queue_capacity + max_batch` spans, wait on a collector longer
//! than `export_timeout`, or hand-build OTLP (the SDK's exporter does the encoding).

pub mod config;
pub mod convert;
pub mod sampler;
pub mod tail;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SpanExporter;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use config::{parse_resource_attributes, ConfigError, OtlpConfig, OtlpProtocol};
pub use convert::{scope, to_span_data, SCOPE_NAME};
pub use sampler::{SamplerConfig, SpanSampler, Verdict};
pub use tail::{KeepReason, SlowThresholds};

use crate::stats::Stats;
use crate::trace::span::FinishedSpan;
use crate::trace::summary::Summary;

/// Errors starting the exporter.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot build the OTLP {protocol} span exporter for {endpoint}")]
    Build {
        endpoint: String,
        protocol: &'static str,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// How the exporter is doing, as `/status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExporterHealth {
    /// No endpoint configured: nothing leaves the node.
    Disabled,
    /// Configured, and the last export (if any) succeeded.
    Ok,
    /// The last export failed with this error.
    Failing(String),
}

impl fmt::Display for ExporterHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExporterHealth::Disabled => f.write_str("disabled"),
            ExporterHealth::Ok => f.write_str("ok"),
            ExporterHealth::Failing(error) => write!(f, "failing: {error}"),
        }
    }
}

/// The exporter's state at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExporterState {
    /// `disabled`, `ok` or `failing: <error>`.
    #[serde(serialize_with = "display")]
    pub health: ExporterHealth,
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`; `None` when disabled.
    pub protocol: Option<&'static str>,
    /// `OTEL_TRACES_SAMPLER`'s name and ratio (`None` when disabled).
    pub sampler: Option<&'static str>,
    pub sampler_ratio: Option<f64>,
    /// The most recent export error, kept after the exporter recovers.
    pub last_error: Option<String>,
    pub last_error_unix_nano: Option<u64>,
}

fn display<S: serde::Serializer>(v: &impl fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A shared, cheap-to-clone view of the exporter's state.
#[derive(Clone, Debug)]
pub struct ExporterStateHandle(Arc<Mutex<ExporterState>>);

impl ExporterStateHandle {
    fn new(state: ExporterState) -> Self {
        Self(Arc::new(Mutex::new(state)))
    }

    /// The state of a node with no endpoint configured.
    pub fn disabled() -> Self {
        Self::new(ExporterState {
            health: ExporterHealth::Disabled,
            endpoint: None,
            protocol: None,
            sampler: None,
            sampler_ratio: None,
            last_error: None,
            last_error_unix_nano: None,
        })
    }

    pub fn get(&self) -> ExporterState {
        self.lock().clone()
    }

    fn record_success(&self) {
        let mut state = self.lock();
        if let ExporterHealth::Failing(_) = state.health {
            info!(endpoint = ?state.endpoint, "OTLP export recovered.");
        }
        state.health = ExporterHealth::Ok;
    }

    fn record_failure(&self, error: String, spans: usize) {
        let mut state = self.lock();
        if state.health == ExporterHealth::Ok {
            // Logged on the transition only, so a down collector does not flood the log; the
            // counters and `/status` say how much was lost since.
            warn!(endpoint = ?state.endpoint, %error, spans, "OTLP export failing; spans are being lost.");
        }
        state.health = ExporterHealth::Failing(error.clone());
        state.last_error = Some(error);
        state.last_error_unix_nano = Some(unix_nanos_now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ExporterState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The producer side: samples each finished span and queues it for export without ever waiting.
/// Cheap to clone; a disabled exporter's sender does nothing.
#[derive(Clone, Debug)]
pub struct SpanSender {
    inner: Option<SenderInner>,
}

#[derive(Clone, Debug)]
struct SenderInner {
    tx: mpsc::Sender<FinishedSpan>,
    sampler: SpanSampler,
    stats: Arc<Stats>,
}

impl SpanSender {
    /// A sender that exports nothing.
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues a copy of `span` for export if the sampler keeps it. Never waits: when the queue is
    /// full (or the exporter has shut down) the span is shed and counted in
    /// `spans_export_dropped`; a span the sampler rejects is counted in `spans_not_sampled`.
    /// With the tail policy (`infertap_tail`), a kept span gets `infertap.sampling.reason` (on
    /// `/spans` too) and is counted per reason (`spans_kept_*`).
    pub fn send(&self, span: &mut FinishedSpan, summary: &Summary) {
        let Some(inner) = &self.inner else { return };
        match inner.sampler.decide(span, summary) {
            Verdict::Drop => {
                Stats::add(&inner.stats.spans_not_sampled, 1);
                return;
            }
            Verdict::Export(None) => {}
            Verdict::Export(Some(reason)) => {
                Stats::add(reason.counter(&inner.stats), 1);
                span.attributes.push((
                    crate::schema::attr::INFERTAP_SAMPLING_REASON.into(),
                    crate::trace::span::AttrValue::Str(reason.as_str().to_string()),
                ));
            }
        }
        if inner.tx.try_send(span.clone()).is_err() {
            Stats::add(&inner.stats.spans_export_dropped, 1);
        }
    }
}

enum Control {
    Flush(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// The running exporter: hands out [`SpanSender`]s and the state, flushes and shuts down.
#[derive(Debug)]
pub struct OtlpSpanExporter {
    sender: SpanSender,
    state: ExporterStateHandle,
    control: Option<mpsc::Sender<Control>>,
    task: Option<JoinHandle<()>>,
    /// Bound on `flush` and `shutdown`: the longest a final export may take, plus slack.
    wait_limit: Duration,
}

impl OtlpSpanExporter {
    /// Starts exporting as `config` says, with the SDK's OTLP exporter; with no endpoint, starts
    /// nothing and reports `disabled`. Must be called inside a Tokio runtime.
    pub fn spawn(config: &OtlpConfig, stats: Arc<Stats>) -> Result<Self, ExportError> {
        let Some(endpoint) = config.endpoint.clone() else {
            return Ok(Self::spawn_with(None::<NoExporter>, config, stats));
        };
        let build_error = |source| ExportError::Build {
            endpoint: config::redacted(&endpoint),
            protocol: config.protocol.as_str(),
            source,
        };
        let exporter = match config.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(config.export_timeout)
                .build(),
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(endpoint.clone())
                .with_timeout(config.export_timeout)
                .build(),
        }
        .map_err(build_error)?;
        Ok(Self::spawn_with(Some(exporter), config, stats))
    }

    /// Starts exporting through `exporter` (any SDK span exporter; tests pass their own), or
    /// starts nothing when it is `None`. `config.endpoint` and `protocol` are only reported.
    pub fn spawn_with<E>(exporter: Option<E>, config: &OtlpConfig, stats: Arc<Stats>) -> Self
    where
        E: SpanExporter + Send + Sync + 'static,
    {
        let wait_limit = config.export_timeout * 2 + Duration::from_secs(1);
        let Some(mut exporter) = exporter else {
            return Self {
                sender: SpanSender::disabled(),
                state: ExporterStateHandle::disabled(),
                control: None,
                task: None,
                wait_limit,
            };
        };
        exporter.set_resource(&config.resource());
        let state = ExporterStateHandle::new(ExporterState {
            health: ExporterHealth::Ok,
            endpoint: config.endpoint.as_deref().map(config::redacted),
            protocol: Some(config.protocol.as_str()),
            sampler: Some(config.sampler.name()),
            sampler_ratio: config.sampler.ratio(),
            last_error: None,
            last_error_unix_nano: None,
        });
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (control_tx, control_rx) = mpsc::channel(4);
        let worker = Worker {
            exporter,
            scope: convert::scope(),
            max_batch: config.max_batch.max(1),
            batch_interval: config.batch_interval,
            export_timeout: config.export_timeout,
            state: state.clone(),
            stats: stats.clone(),
        };
        let task = tokio::spawn(worker.run(rx, control_rx));
        Self {
            sender: SpanSender {
                inner: Some(SenderInner {
                    tx,
                    sampler: SpanSampler::with_thresholds(&config.sampler, config.slow.clone()),
                    stats,
                }),
            },
            state,
            control: Some(control_tx),
            task: Some(task),
            wait_limit,
        }
    }

    pub fn sender(&self) -> SpanSender {
        self.sender.clone()
    }

    pub fn state(&self) -> ExporterStateHandle {
        self.state.clone()
    }

    /// Exports every span queued so far, and returns when that is done (or failed, or the wait
    /// limit passed).
    pub async fn flush(&self) {
        self.request(Control::Flush).await;
    }

    /// Exports what is queued, then stops the task; later spans are shed and counted. Bounded by
    /// twice the export timeout.
    pub async fn shutdown(mut self) {
        self.request(Control::Shutdown).await;
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(self.wait_limit, task).await.is_err() {
                warn!("OTLP export task did not stop in time; spans still queued are lost.");
            }
        }
    }

    async fn request(&self, make: fn(oneshot::Sender<()>) -> Control) {
        let Some(control) = &self.control else { return };
        let (ack_tx, ack_rx) = oneshot::channel();
        let sent = async {
            if control.send(make(ack_tx)).await.is_ok() {
                let _ = ack_rx.await;
            }
        };
        if tokio::time::timeout(self.wait_limit, sent).await.is_err() {
            warn!("OTLP flush did not finish in time.");
        }
    }
}

/// Stands in for "no exporter" in `spawn_with(None, …)`.
#[derive(Debug)]
enum NoExporter {}

impl SpanExporter for NoExporter {
    async fn export(
        &self,
        _batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        match *self {}
    }
}

struct Worker<E> {
    exporter: E,
    scope: opentelemetry::InstrumentationScope,
    max_batch: usize,
    batch_interval: Duration,
    export_timeout: Duration,
    state: ExporterStateHandle,
    stats: Arc<Stats>,
}

impl<E: SpanExporter> Worker<E> {
    async fn run(
        mut self,
        mut spans: mpsc::Receiver<FinishedSpan>,
        mut control: mpsc::Receiver<Control>,
    ) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut tick = tokio::time::interval(self.batch_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // The first tick is immediate.
        loop {
            tokio::select! {
                biased;
                Some(request) = control.recv() => match request {
                    Control::Flush(ack) => {
                        self.drain(&mut spans, &mut batch).await;
                        let _ = ack.send(());
                    }
                    Control::Shutdown(ack) => {
                        spans.close();
                        self.drain(&mut spans, &mut batch).await;
                        let _ = self.exporter.shutdown();
                        let _ = ack.send(());
                        return;
                    }
                },
                span = spans.recv() => match span {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= self.max_batch {
                            self.export(&mut batch).await;
                        }
                    }
                    // Every sender and the handle are gone: export what is left and stop.
                    None => {
                        self.export(&mut batch).await;
                        return;
                    }
                },
                _ = tick.tick() => self.export(&mut batch).await,
            }
        }
    }

    /// Exports the batch and everything queued behind it, in batches of `max_batch`.
    async fn drain(&self, spans: &mut mpsc::Receiver<FinishedSpan>, batch: &mut Vec<FinishedSpan>) {
        while let Ok(span) = spans.try_recv() {
            batch.push(span);
            if batch.len() >= self.max_batch {
                self.export(batch).await;
            }
        }
        self.export(batch).await;
    }

    async fn export(&self, batch: &mut Vec<FinishedSpan>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        let data = batch
            .drain(..)
            .map(|span| convert::to_span_data(span, &self.scope))
            .collect();
        let error =
            match tokio::time::timeout(self.export_timeout, self.exporter.export(data)).await {
                Ok(Ok(())) => {
                    Stats::add(&self.stats.spans_exported, n as u64);
                    self.state.record_success();
                    return;
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("export timed out after {:?}", self.export_timeout),
            };
        Stats::add(&self.stats.spans_export_failed, n as u64);
        self.state.record_failure(error, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::store::tests::span;
    use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
    use opentelemetry_sdk::trace::SpanData;
    use std::sync::atomic::Ordering::Relaxed;

    /// What a scripted exporter does with each batch.
    #[derive(Clone, Copy, Debug)]
    enum Behaviour {
        Accept,
        Fail,
        Hang,
    }

    #[derive(Clone, Debug)]
    struct Scripted {
        behaviour: Arc<Mutex<Behaviour>>,
        batches: Arc<Mutex<Vec<Vec<SpanData>>>>,
        resource: Arc<Mutex<Option<opentelemetry_sdk::Resource>>>,
    }

    impl Scripted {
        fn new(behaviour: Behaviour) -> Self {
            Self {
                behaviour: Arc::new(Mutex::new(behaviour)),
                batches: Arc::default(),
                resource: Arc::default(),
            }
        }
        fn batch_sizes(&self) -> Vec<usize> {
            self.batches.lock().unwrap().iter().map(Vec::len).collect()
        }
    }

    impl SpanExporter for Scripted {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let behaviour = *self.behaviour.lock().unwrap();
            match behaviour {
                Behaviour::Accept => {
                    self.batches.lock().unwrap().push(batch);
                    Ok(())
                }
                Behaviour::Fail => Err(OTelSdkError::InternalFailure("collector said no".into())),
                Behaviour::Hang => std::future::pending().await,
            }
        }
        fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
            *self.resource.lock().unwrap() = Some(resource.clone());
        }
    }

    fn config() -> OtlpConfig {
        OtlpConfig {
            endpoint: Some("http://collector.test:4317".into()),
            sampler: SamplerConfig::AlwaysOn,
            ..OtlpConfig::default()
        }
    }

    fn start(exporter: &Scripted, config: &OtlpConfig) -> (OtlpSpanExporter, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        let e = OtlpSpanExporter::spawn_with(Some(exporter.clone()), config, stats.clone());
        (e, stats)
    }

    #[tokio::test]
    async fn batches_by_size_and_flushes_the_rest() {
        let scripted = Scripted::new(Behaviour::Accept);
        let cfg = OtlpConfig {
            max_batch: 4,
            batch_interval: Duration::from_secs(3600),
            ..config()
        };
        let (exporter, stats) = start(&scripted, &cfg);
        let sender = exporter.sender();
        for n in 0..10 {
            sender.send(&mut span(n), &Summary::default());
        }
        exporter.flush().await;
        assert_eq!(scripted.batch_sizes(), [4, 4, 2]);
        assert_eq!(stats.spans_exported.load(Relaxed), 10);
        assert_eq!(exporter.state().get().health, ExporterHealth::Ok);
        let resource = scripted.resource.lock().unwrap().clone().unwrap();
        assert_eq!(
            resource.get(&opentelemetry::Key::new("service.name")),
            Some("infertap".into())
        );
        let first = &scripted.batches.lock().unwrap()[0][0];
        assert_eq!(first.span_context.span_id().to_bytes(), [0; 8]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_goes_out_after_the_interval() {
        let scripted = Scripted::new(Behaviour::Accept);
        let (exporter, stats) = start(&scripted, &config());
        exporter.sender().send(&mut span(1), &Summary::default());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(scripted.batch_sizes().is_empty());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(scripted.batch_sizes(), [1]);
        assert_eq!(stats.spans_exported.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn failures_are_counted_and_reported_then_recovery() {
        let scripted = Scripted::new(Behaviour::Fail);
        let (exporter, stats) = start(&scripted, &config());
        for n in 0..3 {
            exporter.sender().send(&mut span(n), &Summary::default());
        }
        exporter.flush().await;
        assert_eq!(stats.spans_export_failed.load(Relaxed), 3);
        let state = exporter.state().get();
        assert_eq!(
            state.health.to_string(),
            "failing: Operation failed: collector said no"
        );
        assert!(state.last_error_unix_nano.unwrap() > 0);

        *scripted.behaviour.lock().unwrap() = Behaviour::Accept;
        exporter.sender().send(&mut span(9), &Summary::default());
        exporter.flush().await;
        let state = exporter.state().get();
        assert_eq!(state.health, ExporterHealth::Ok);
        assert_eq!(
            state.last_error.as_deref(),
            Some("Operation failed: collector said no")
        );
        assert_eq!(stats.spans_exported.load(Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_collector_times_out_and_the_queue_sheds() {
        let scripted = Scripted::new(Behaviour::Hang);
        let cfg = OtlpConfig {
            queue_capacity: 2,
            max_batch: 1,
            ..config()
        };
        let (exporter, stats) = start(&scripted, &cfg);
        let sender = exporter.sender();
        // The task has not run yet: two spans fit in the queue, eight are shed at once.
        for n in 0..10 {
            sender.send(&mut span(n), &Summary::default());
        }
        assert_eq!(stats.spans_export_dropped.load(Relaxed), 8);
        // Each of the two queued spans waits out its own export timeout, then fails.
        tokio::time::sleep(Duration::from_secs(21)).await;
        assert_eq!(stats.spans_export_failed.load(Relaxed), 2);
        assert!(exporter
            .state()
            .get()
            .health
            .to_string()
            .starts_with("failing: export timed out after 10s"));
    }

    #[tokio::test]
    async fn the_sampler_keeps_spans_from_the_queue() {
        let scripted = Scripted::new(Behaviour::Accept);
        let cfg = OtlpConfig {
            sampler: SamplerConfig::AlwaysOff,
            ..config()
        };
        let (exporter, stats) = start(&scripted, &cfg);
        exporter.sender().send(&mut span(1), &Summary::default());
        exporter.flush().await;
        assert!(scripted.batch_sizes().is_empty());
        assert_eq!(stats.spans_not_sampled.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn the_tail_policy_exports_failed_and_slow_spans_with_their_reason() {
        let scripted = Scripted::new(Behaviour::Accept);
        let cfg = OtlpConfig {
            sampler: SamplerConfig::InfertapTail(0.0),
            ..config()
        };
        let (exporter, stats) = start(&scripted, &cfg);
        let ordinary = Summary {
            ttft_s: Some(0.1),
            ..Summary::default()
        };
        let slow = Summary {
            ttft_s: Some(5.0),
            ..Summary::default()
        };
        let failed = Summary {
            failed: true,
            ..Summary::default()
        };
        let sender = exporter.sender();
        let mut spans = [span(1), span(2), span(3)];
        sender.send(&mut spans[0], &ordinary);
        sender.send(&mut spans[1], &slow);
        sender.send(&mut spans[2], &failed);
        exporter.flush().await;
        let reasons: Vec<_> = scripted.batches.lock().unwrap()[0]
            .iter()
            .map(|s| {
                s.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == "infertap.sampling.reason")
                    .map(|kv| kv.value.to_string())
            })
            .collect();
        assert_eq!(
            reasons,
            [Some("slow_ttft".to_string()), Some("error".to_string())]
        );
        // The caller's span carries the reason too (it goes on to `/spans`).
        assert!(spans[0].attr("infertap.sampling.reason").is_none());
        assert!(spans[1].attr("infertap.sampling.reason").is_some());
        assert_eq!(stats.spans_not_sampled.load(Relaxed), 1);
        assert_eq!(stats.spans_kept_slow_ttft.load(Relaxed), 1);
        assert_eq!(stats.spans_kept_error.load(Relaxed), 1);
        assert_eq!(stats.spans_kept_ratio.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn shutdown_flushes_then_later_spans_are_dropped() {
        let scripted = Scripted::new(Behaviour::Accept);
        let (exporter, stats) = start(&scripted, &config());
        let sender = exporter.sender();
        sender.send(&mut span(1), &Summary::default());
        sender.send(&mut span(2), &Summary::default());
        exporter.shutdown().await;
        assert_eq!(scripted.batch_sizes(), [2]);
        sender.send(&mut span(3), &Summary::default());
        assert_eq!(stats.spans_export_dropped.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn no_endpoint_means_disabled_and_nothing_counted() {
        let stats = Arc::new(Stats::default());
        let exporter = OtlpSpanExporter::spawn(&OtlpConfig::default(), stats.clone()).unwrap();
        let sender = exporter.sender();
        assert!(!sender.is_enabled());
        sender.send(&mut span(1), &Summary::default());
        exporter.flush().await;
        let state = exporter.state().get();
        assert_eq!(state.health, ExporterHealth::Disabled);
        assert_eq!(state.health.to_string(), "disabled");
        assert_eq!(state.protocol, None);
        assert!(stats.snapshot().iter().all(|(_, v)| *v == 0));
        exporter.shutdown().await;
    }

    /// OTLP/HTTP end to end against a stand-in collector: the base endpoint gets `/v1/traces`,
    /// the body is protobuf, and the async client works inside the runtime.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_protobuf_posts_to_v1_traces() {
        use axum::http::{HeaderMap, StatusCode};
        type Seen = Arc<Mutex<Vec<(String, usize)>>>;
        let seen: Seen = Arc::default();
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(
                    |axum::extract::State(seen): axum::extract::State<Seen>,
                     headers: HeaderMap,
                     body: axum::body::Bytes| async move {
                        let content_type = headers
                            .get("content-type")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        seen.lock().unwrap().push((content_type, body.len()));
                        StatusCode::OK
                    },
                ),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_string()),
        ];
        let cfg = OtlpConfig::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
        let stats = Arc::new(Stats::default());
        let exporter = OtlpSpanExporter::spawn(&cfg, stats.clone()).unwrap();
        exporter.sender().send(&mut span(1), &Summary::default());
        exporter.flush().await;
        assert_eq!(
            stats.spans_exported.load(Relaxed),
            1,
            "{:?}",
            exporter.state().get()
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, "application/x-protobuf");
        assert!(seen[0].1 > 50, "{seen:?}");
        exporter.shutdown().await;
    }

    #[tokio::test]
    async fn real_exporters_build_for_both_protocols() {
        for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
            let cfg = OtlpConfig {
                protocol,
                endpoint: Some("http://127.0.0.1:1".into()),
                ..OtlpConfig::default()
            };
            let exporter = OtlpSpanExporter::spawn(&cfg, Arc::new(Stats::default())).unwrap();
            let state = exporter.state().get();
            assert_eq!(state.protocol, Some(protocol.as_str()));
            assert_eq!(state.endpoint.as_deref(), Some("http://127.0.0.1:1"));
            exporter.shutdown().await;
        }
        let bad = OtlpConfig {
            endpoint: Some("not a uri".into()),
            ..OtlpConfig::default()
        };
        let err = OtlpSpanExporter::spawn(&bad, Arc::new(Stats::default())).unwrap_err();
        assert!(err.to_string().contains("not a uri"), "{err}");
    }
}
