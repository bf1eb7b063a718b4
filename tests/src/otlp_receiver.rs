//! A real OTLP/gRPC trace and metrics receiver for tests: the generated
//! `opentelemetry.proto.collector.trace.v1.TraceService` and
//! `opentelemetry.proto.collector.metrics.v1.MetricsService` servers from `opentelemetry-proto`,
//! served by tonic on `127.0.0.1:0`, keeping every span and metric data point it accepts.
//!
//! Tests point an exporter at [`OtlpReceiver::endpoint`], then [`OtlpReceiver::wait_for`] spans
//! or [`OtlpReceiver::wait_for_metric`] a data point.
//! For fault tests the receiver can refuse exports with `UNAVAILABLE` ([`OtlpReceiver::refuse`])
//! or hold them unanswered ([`OtlpReceiver::pause`]) until [`OtlpReceiver::accept`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, AggregationTemporality};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// One span as the receiver got it, with its resource and scope.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReceivedSpan {
    /// Lower-case hex.
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span (empty on the wire).
    pub parent_span_id: Option<String>,
    pub trace_state: String,
    /// OTLP span flags: the W3C trace flags in bits 0–7, "has is-remote" (bit 8) and "parent is
    /// remote" (bit 9).
    pub flags: u32,
    pub name: String,
    /// `"server"`, `"client"`, `"internal"`, `"producer"`, `"consumer"` or `"unspecified"`.
    pub kind: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// `"unset"`, `"ok"` or `"error"`.
    pub status_code: String,
    pub status_message: String,
    /// Attribute values as JSON (strings, numbers, booleans, arrays, objects; bytes as hex).
    pub attributes: Map<String, Value>,
    pub resource_attributes: Map<String, Value>,
    pub scope_name: String,
    pub scope_version: String,
}

impl ReceivedSpan {
    /// Whether the span's flags say its parent is remote.
    pub fn parent_is_remote(&self) -> bool {
        const HAS_IS_REMOTE: u32 = 0x100;
        const IS_REMOTE: u32 = 0x200;
        self.flags & HAS_IS_REMOTE != 0 && self.flags & IS_REMOTE != 0
    }
}

/// One metric data point as the receiver got it, with its metric's identity, resource and scope.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReceivedMetricPoint {
    pub name: String,
    pub unit: String,
    pub description: String,
    /// `"histogram"`, `"sum"`, `"gauge"`, `"exponential_histogram"` or `"summary"`.
    pub kind: String,
    /// `"cumulative"`, `"delta"` or `"unspecified"` (gauges).
    pub temporality: String,
    /// Sums only.
    pub is_monotonic: bool,
    pub attributes: Map<String, Value>,
    /// Sums and gauges: the value (integers as `f64`).
    pub value: Option<f64>,
    /// Histograms: bounds, per-bucket (not cumulative) counts, count and sum.
    pub explicit_bounds: Vec<f64>,
    pub bucket_counts: Vec<u64>,
    pub count: u64,
    pub sum: Option<f64>,
    pub time_unix_nano: u64,
    pub resource_attributes: Map<String, Value>,
    pub scope_name: String,
}

/// How the receiver answers exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Keep the spans, answer OK.
    Accept,
    /// Answer `UNAVAILABLE` and keep nothing.
    Refuse,
    /// Hold each request unanswered until the mode changes.
    Pause,
}

struct Shared {
    spans: Mutex<Vec<ReceivedSpan>>,
    arrived: watch::Sender<usize>,
    mode: watch::Sender<Mode>,
    requests: AtomicU64,
    /// Every metric export accepted, each as its data points, in arrival order.
    metric_exports: Mutex<Vec<Vec<ReceivedMetricPoint>>>,
    metrics_arrived: watch::Sender<usize>,
    metric_requests: AtomicU64,
}

impl Shared {
    /// Waits while paused; `Err` when refusing.
    async fn admit(&self) -> Result<(), Status> {
        let mut mode = self.mode.subscribe();
        let current = *mode
            .wait_for(|m| *m != Mode::Pause)
            .await
            .map_err(|_| Status::unavailable("receiver stopped"))?;
        if current == Mode::Refuse {
            return Err(Status::unavailable("test receiver refuses exports"));
        }
        Ok(())
    }
}

struct Service(Arc<Shared>);

#[tonic::async_trait]
impl MetricsService for Service {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.0.metric_requests.fetch_add(1, Ordering::Relaxed);
        self.0.admit().await?;
        let points = flatten_metrics(request.into_inner());
        let total = {
            let mut stored = self.0.metric_exports.lock().unwrap();
            stored.push(points);
            stored.len()
        };
        self.0.metrics_arrived.send_replace(total);
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        self.0.admit().await?;
        let spans = flatten(request.into_inner());
        let total = {
            let mut stored = self.0.spans.lock().unwrap();
            stored.extend(spans);
            stored.len()
        };
        self.0.arrived.send_replace(total);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running receiver; stops when dropped or on [`OtlpReceiver::stop`].
pub struct OtlpReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl OtlpReceiver {
    /// Binds `127.0.0.1:0` and serves OTLP/gRPC traces and metrics, accepting.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?).await
    }

    /// Binds `addr` (e.g. the port of a receiver that was stopped, to play a collector that
    /// restarts) and serves OTLP/gRPC traces and metrics, accepting.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let incoming = TcpIncoming::bind(addr).context("binding the OTLP test receiver")?;
        let addr = incoming.local_addr()?;
        let shared = Arc::new(Shared {
            spans: Mutex::default(),
            arrived: watch::channel(0).0,
            mode: watch::channel(Mode::Accept).0,
            requests: AtomicU64::new(0),
            metric_exports: Mutex::default(),
            metrics_arrived: watch::channel(0).0,
            metric_requests: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(Service(shared.clone()));
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .add_service(MetricsServiceServer::new(Service(shared.clone())))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                }),
        );
        Ok(Self {
            addr,
            shared,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT` with protocol `grpc`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every span accepted so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.spans.lock().unwrap().clone()
    }

    /// Export requests seen so far, refused and held ones included.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` spans were accepted; fails after `timeout` saying how many came.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<ReceivedSpan>> {
        let mut arrived = self.shared.arrived.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            arrived.wait_for(|count| *count >= n).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(self.spans()),
            Ok(Err(_)) => bail!("OTLP test receiver stopped"),
            Err(_) => bail!(
                "waited {timeout:?} for {n} spans, got {}: {:#?}",
                self.spans().len(),
                self.spans()
            ),
        }
    }

    /// Every metric export accepted so far, each as its data points, in arrival order.
    pub fn metric_exports(&self) -> Vec<Vec<ReceivedMetricPoint>> {
        self.shared.metric_exports.lock().unwrap().clone()
    }

    /// Metric export requests seen so far, refused and held ones included.
    pub fn metric_requests(&self) -> u64 {
        self.shared.metric_requests.load(Ordering::Relaxed)
    }

    /// Waits until an accepted metric export holds a data point for which `matches` is true, and
    /// returns the first such point of the latest such export; fails after `timeout` showing the
    /// last export.
    pub async fn wait_for_metric(
        &self,
        timeout: Duration,
        matches: impl Fn(&ReceivedMetricPoint) -> bool,
    ) -> anyhow::Result<ReceivedMetricPoint> {
        let find = || {
            self.metric_exports()
                .iter()
                .rev()
                .find_map(|export| export.iter().find(|p| matches(p)).cloned())
        };
        let mut arrived = self.shared.metrics_arrived.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(point) = find() {
                return Ok(point);
            }
            match tokio::time::timeout_at(deadline, arrived.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("OTLP test receiver stopped"),
                Err(_) => bail!(
                    "waited {timeout:?} for a matching metric point; last export: {:#?}",
                    self.metric_exports().last()
                ),
            }
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// Keep spans and answer OK (also releases held requests).
    pub fn accept(&self) {
        self.set_mode(Mode::Accept);
    }

    /// Answer every export with `UNAVAILABLE` (also releases held requests, refusing them).
    pub fn refuse(&self) {
        self.set_mode(Mode::Refuse);
    }

    /// Hold every export unanswered until [`OtlpReceiver::accept`] or [`OtlpReceiver::refuse`].
    pub fn pause(&self) {
        self.set_mode(Mode::Pause);
    }

    /// Forgets the spans received so far.
    pub fn clear(&self) {
        self.shared.spans.lock().unwrap().clear();
        self.shared.arrived.send_replace(0);
    }

    /// Stops serving and waits for the server to end.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.accept();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Every span of a request, with its resource's and scope's data copied onto it.
fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource_attributes = resource_spans
            .resource
            .map(|r| attributes(r.attributes))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            let (scope_name, scope_version) = scope_spans
                .scope
                .map(|s| (s.name, s.version))
                .unwrap_or_default();
            for span in scope_spans.spans {
                let (status_code, status_message) = match span.status {
                    Some(status) => (
                        match StatusCode::try_from(status.code) {
                            Ok(StatusCode::Ok) => "ok",
                            Ok(StatusCode::Error) => "error",
                            _ => "unset",
                        },
                        status.message,
                    ),
                    None => ("unset", String::new()),
                };
                out.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex(&span.parent_span_id)),
                    trace_state: span.trace_state,
                    flags: span.flags,
                    name: span.name,
                    kind: kind_name(span.kind).to_string(),
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                    status_code: status_code.to_string(),
                    status_message,
                    attributes: attributes(span.attributes),
                    resource_attributes: resource_attributes.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                });
            }
        }
    }
    out
}

/// Every data point of a metrics request, with its metric's, resource's and scope's data.
fn flatten_metrics(request: ExportMetricsServiceRequest) -> Vec<ReceivedMetricPoint> {
    let mut out = Vec::new();
    for resource_metrics in request.resource_metrics {
        let resource_attributes = resource_metrics
            .resource
            .map(|r| attributes(r.attributes))
            .unwrap_or_default();
        for scope_metrics in resource_metrics.scope_metrics {
            let scope_name = scope_metrics.scope.map(|s| s.name).unwrap_or_default();
            for m in scope_metrics.metrics {
                let point =
                    |kind: &str, temporality: i32, is_monotonic: bool| ReceivedMetricPoint {
                        name: m.name.clone(),
                        unit: m.unit.clone(),
                        description: m.description.clone(),
                        kind: kind.to_string(),
                        temporality: match AggregationTemporality::try_from(temporality) {
                            Ok(AggregationTemporality::Cumulative) => "cumulative",
                            Ok(AggregationTemporality::Delta) => "delta",
                            _ => "unspecified",
                        }
                        .to_string(),
                        is_monotonic,
                        attributes: Map::new(),
                        value: None,
                        explicit_bounds: Vec::new(),
                        bucket_counts: Vec::new(),
                        count: 0,
                        sum: None,
                        time_unix_nano: 0,
                        resource_attributes: resource_attributes.clone(),
                        scope_name: scope_name.clone(),
                    };
                let number = |v: Option<number_data_point::Value>| match v {
                    Some(number_data_point::Value::AsDouble(d)) => Some(d),
                    Some(number_data_point::Value::AsInt(i)) => Some(i as f64),
                    None => None,
                };
                match &m.data {
                    Some(metric::Data::Histogram(h)) => {
                        for p in &h.data_points {
                            out.push(ReceivedMetricPoint {
                                attributes: attributes(p.attributes.clone()),
                                explicit_bounds: p.explicit_bounds.clone(),
                                bucket_counts: p.bucket_counts.clone(),
                                count: p.count,
                                sum: p.sum,
                                time_unix_nano: p.time_unix_nano,
                                ..point("histogram", h.aggregation_temporality, false)
                            });
                        }
                    }
                    Some(metric::Data::Sum(s)) => {
                        for p in &s.data_points {
                            out.push(ReceivedMetricPoint {
                                attributes: attributes(p.attributes.clone()),
                                value: number(p.value),
                                time_unix_nano: p.time_unix_nano,
                                ..point("sum", s.aggregation_temporality, s.is_monotonic)
                            });
                        }
                    }
                    Some(metric::Data::Gauge(g)) => {
                        for p in &g.data_points {
                            out.push(ReceivedMetricPoint {
                                attributes: attributes(p.attributes.clone()),
                                value: number(p.value),
                                time_unix_nano: p.time_unix_nano,
                                ..point("gauge", 0, false)
                            });
                        }
                    }
                    Some(metric::Data::ExponentialHistogram(e)) => out.push(point(
                        "exponential_histogram",
                        e.aggregation_temporality,
                        false,
                    )),
                    Some(metric::Data::Summary(_)) => out.push(point("summary", 0, false)),
                    None => {}
                }
            }
        }
    }
    out
}

fn kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Internal) => "internal",
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        _ => "unspecified",
    }
}

fn attributes(kvs: Vec<KeyValue>) -> Map<String, Value> {
    // Sorted, so that comparisons do not depend on the sender's order.
    let sorted: BTreeMap<String, Value> = kvs
        .into_iter()
        .map(|kv| (kv.key, any_value_json(kv.value)))
        .collect();
    sorted.into_iter().collect()
}

fn any_value_json(value: Option<AnyValue>) -> Value {
    use any_value::Value as V;
    match value.and_then(|v| v.value) {
        None => Value::Null,
        Some(V::StringValue(s)) => Value::String(s),
        Some(V::BoolValue(b)) => Value::Bool(b),
        Some(V::IntValue(i)) => Value::from(i),
        Some(V::DoubleValue(f)) => Value::from(f),
        Some(V::BytesValue(b)) => Value::String(hex(&b)),
        Some(V::ArrayValue(a)) => Value::Array(
            a.values
                .into_iter()
                .map(|v| any_value_json(Some(v)))
                .collect(),
        ),
        Some(V::KvlistValue(kvs)) => Value::Object(attributes(kvs.values)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
