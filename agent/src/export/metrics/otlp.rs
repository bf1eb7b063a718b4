//! OTLP metric export of [`RequestMetrics`]: the SDK's `SdkMeterProvider` with a `PeriodicReader`
//! over opentelemetry-otlp's `MetricExporter` (gRPC or HTTP/protobuf), cumulative temporality,
//! explicit bucket boundaries per instrument.
//!
//! Owns: the meaning of `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`,
//! `OTEL_METRIC_EXPORT_INTERVAL` (ms, default 60000), `OTEL_METRIC_EXPORT_TIMEOUT` (ms, default
//! 30000) and `OTEL_METRICS_EXPORTER=none`, on top of the shared `OTEL_*` settings of
//! [`OtlpConfig`] (base endpoint, protocol, service name, resource); the counters
//! `metrics_exported` and `metrics_export_failed`.
//!
//! The SDK's reader exports from its own thread with a plain executor; the exporter is wrapped
//! so that every poll of an export runs inside the agent's Tokio runtime (the gRPC and HTTP
//! clients need its reactor), and so that every result is counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use tokio::runtime::Handle;
use tracing::{info, warn};

use super::{InstrumentKind, OtelInstrument, RequestMetrics, INSTRUMENTS};
use crate::export::otlp::{convert, ConfigError, OtlpConfig, OtlpProtocol};
use crate::stats::Stats;

/// Everything the OTLP metric exporter needs; see [`MetricsOtlpConfig::from_lookup`].
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsOtlpConfig {
    /// The metrics endpoint as the exporter uses it (for HTTP, a base endpoint gets
    /// `/v1/metrics`). `None`: metric export is off.
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    /// Time between exports (`OTEL_METRIC_EXPORT_INTERVAL`).
    pub interval: Duration,
    /// Longest one export may take (`OTEL_METRIC_EXPORT_TIMEOUT`).
    pub timeout: Duration,
    /// Service name and resource attributes, shared with trace export.
    pub shared: OtlpConfig,
}

const METRICS_PATH: &str = "/v1/metrics";
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(60_000);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(30_000);

impl MetricsOtlpConfig {
    /// Reads the standard `OTEL_*` variables of this process.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the standard `OTEL_*` variables through `lookup` (empty values count as unset). The
    /// metric-specific endpoint and protocol win over the general ones; the trace-specific ones
    /// are ignored.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        // The shared settings, read as if the metric-specific protocol were the trace one.
        let shared = OtlpConfig::from_lookup(|name| match name {
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" => get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => None,
            other => get(other),
        })
        .map_err(|e| match e {
            ConfigError::UnsupportedProtocol { var, value } => ConfigError::UnsupportedProtocol {
                var: if var == "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" {
                    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
                } else {
                    var
                },
                value,
            },
        })?;
        let protocol = shared.protocol;
        let disabled = get("OTEL_METRICS_EXPORTER").is_some_and(|v| v == "none");
        let endpoint = match get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
            _ if disabled => None,
            Some(metrics) => Some(metrics),
            None => get("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| match protocol {
                OtlpProtocol::Grpc => base,
                OtlpProtocol::HttpProtobuf => {
                    format!("{}{METRICS_PATH}", base.trim_end_matches('/'))
                }
            }),
        };
        let millis = |name: &str, default: Duration| match get(name) {
            None => default,
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    warn!(variable = name, value = %v, "Not a positive number of milliseconds; using the default.");
                    default
                }
            },
        };
        Ok(Self {
            endpoint,
            protocol,
            interval: millis("OTEL_METRIC_EXPORT_INTERVAL", DEFAULT_INTERVAL),
            timeout: millis("OTEL_METRIC_EXPORT_TIMEOUT", DEFAULT_TIMEOUT),
            shared,
        })
    }
}

/// Errors starting the metric exporter.
#[derive(Debug, thiserror::Error)]
pub enum MetricsExportError {
    #[error("cannot build the OTLP {protocol} metric exporter for {endpoint}")]
    Build {
        endpoint: String,
        protocol: &'static str,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// The running metric export (or none, when disabled). Shut it down at exit to send the last
/// values.
#[derive(Debug)]
pub struct OtlpMetricsExporter {
    provider: Option<SdkMeterProvider>,
    endpoint: Option<String>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl OtlpMetricsExporter {
    /// Exports nothing.
    pub fn disabled() -> Self {
        Self {
            provider: None,
            endpoint: None,
            last_error: Arc::default(),
        }
    }

    /// Starts exporting `metrics` as `config` says; with no endpoint, starts nothing. Must be
    /// called inside a multi-threaded Tokio runtime.
    pub fn spawn(
        config: &MetricsOtlpConfig,
        metrics: &RequestMetrics,
        stats: Arc<Stats>,
    ) -> Result<Self, MetricsExportError> {
        let Some(endpoint) = config.endpoint.clone() else {
            return Ok(Self::disabled());
        };
        let build_error = |source| MetricsExportError::Build {
            endpoint: crate::export::otlp::config::redacted(&endpoint),
            protocol: config.protocol.as_str(),
            source,
        };
        let exporter = match config.protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(config.timeout)
                .with_temporality(Temporality::Cumulative)
                .build(),
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(endpoint.clone())
                .with_timeout(config.timeout)
                .with_temporality(Temporality::Cumulative)
                .build(),
        }
        .map_err(build_error)?;
        let last_error = Arc::<Mutex<Option<String>>>::default();
        let stats_for_counters = stats.clone();
        let exporter = InRuntime {
            inner: exporter,
            handle: Handle::current(),
            stats,
            last_error: last_error.clone(),
        };
        let reader = PeriodicReader::builder(exporter)
            .with_interval(config.interval)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_resource(config.shared.resource())
            .with_reader(reader)
            .build();
        metrics.attach_otel(instruments(&provider));
        agent_counters(&provider, stats_for_counters);
        let shown = crate::export::otlp::config::redacted(&endpoint);
        info!(endpoint = %shown, protocol = config.protocol.as_str(), interval = ?config.interval, "OTLP metric export on.");
        Ok(Self {
            provider: Some(provider),
            endpoint: Some(shown),
            last_error,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// The meter provider, for other parts of the agent to register instruments (GPU gauges).
    pub fn meter_provider(&self) -> Option<&SdkMeterProvider> {
        self.provider.as_ref()
    }

    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The most recent export error, kept after recovery.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Collects and exports now; returns when the export finished (or failed).
    pub async fn flush(&self) {
        if let Some(provider) = self.provider.clone() {
            // The SDK waits on its reader thread: not on a runtime worker.
            let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        }
    }

    /// Exports the last values and stops the reader thread.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// One SDK instrument per entry of [`INSTRUMENTS`], with its bucket boundaries.
fn instruments(provider: &SdkMeterProvider) -> Vec<OtelInstrument> {
    let meter = provider.meter_with_scope(convert::scope());
    INSTRUMENTS
        .iter()
        .map(|spec| match spec.kind {
            InstrumentKind::Histogram(bounds) => OtelInstrument::Histogram(
                meter
                    .f64_histogram(spec.otel_name)
                    .with_unit(spec.unit)
                    .with_description(spec.description)
                    .with_boundaries(bounds.to_vec())
                    .build(),
            ),
            InstrumentKind::Counter => OtelInstrument::Counter(
                meter
                    .u64_counter(spec.otel_name)
                    .with_unit(spec.unit)
                    .with_description(spec.description)
                    .build(),
            ),
        })
        .collect()
}

/// The OTLP exporter, polled inside the Tokio runtime, with every result counted.
#[derive(Debug)]
struct InRuntime<E> {
    inner: E,
    handle: Handle,
    stats: Arc<Stats>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl<E: PushMetricExporter> PushMetricExporter for InRuntime<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = Entered {
            handle: &self.handle,
            future: Box::pin(self.inner.export(metrics)),
        }
        .await;
        match &result {
            Ok(()) => Stats::add(&self.stats.metrics_exported, 1),
            Err(error) => {
                Stats::add(&self.stats.metrics_export_failed, 1);
                let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_none() {
                    warn!(%error, "OTLP metric export failing.");
                }
                *last = Some(error.to_string());
            }
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// A future polled with the runtime's context entered (its reactor and timers reachable).
struct Entered<'a, F> {
    handle: &'a Handle,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for Entered<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _guard = self.handle.enter();
        self.future.as_mut().poll(cx)
    }
}

/// The agent's own counters (`Stats`: records read and lost, parse failures, cancellations, spans
/// exported and failed, …) as OTLP observable counters named `infertap.<counter>`, read at each
/// export. The callbacks live as long as the meter provider.
fn agent_counters(provider: &SdkMeterProvider, stats: Arc<Stats>) {
    use opentelemetry::metrics::MeterProvider as _;
    let meter = provider.meter("infertap");
    for (name, doc) in Stats::descriptions() {
        let stats = stats.clone();
        let name: &'static str = name;
        let _counter = meter
            .u64_observable_counter(format!("infertap.{name}"))
            .with_description(doc.join(" ").trim().to_string())
            .with_callback(move |observer| {
                if let Some(v) = stats.get(name) {
                    observer.observe(v, &[]);
                }
            })
            .build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<MetricsOtlpConfig, ConfigError> {
        MetricsOtlpConfig::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn nothing_set_means_disabled_with_default_interval() {
        let c = config(&[]).unwrap();
        assert_eq!(c.endpoint, None);
        assert_eq!(c.interval, Duration::from_secs(60));
        assert_eq!(c.timeout, Duration::from_secs(30));
    }

    #[test]
    fn base_endpoint_gets_the_metrics_path_for_http_only() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://c:4317"));
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/t"),
        ])
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://c:4318/v1/metrics"));
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
    }

    #[test]
    fn metric_specific_settings_win() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:1/custom"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
            ("OTEL_METRIC_EXPORT_TIMEOUT", "junk"),
            ("OTEL_SERVICE_NAME", "svc"),
        ])
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://m:1/custom"));
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.interval, Duration::from_millis(1500));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.shared.service_name, "svc");
    }

    #[test]
    fn exporter_none_disables_and_bad_protocol_names_the_metrics_variable() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ])
        .unwrap();
        assert_eq!(c.endpoint, None);
        assert_eq!(
            config(&[("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json")]),
            Err(ConfigError::UnsupportedProtocol {
                var: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
                value: "http/json".into()
            })
        );
    }

    #[tokio::test]
    async fn disabled_exporter_attaches_nothing() {
        let metrics = RequestMetrics::new();
        let exporter =
            OtlpMetricsExporter::spawn(&config(&[]).unwrap(), &metrics, Arc::default()).unwrap();
        assert!(!exporter.is_enabled());
        assert!(metrics.otel.get().is_none());
        exporter.shutdown().await;
    }
}
