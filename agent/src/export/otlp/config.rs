//! OTLP export settings from the standard `OTEL_*` variables, and the resource they describe.
//!
//! Owns the meaning of `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`), `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`(`_ARG`), the batch processor's
//! `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY` and the
//! export timeout (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_BSP_EXPORT_TIMEOUT`, milliseconds). Parsing takes a lookup function,
//! so tests never touch the process environment; only [`OtlpConfig::from_env`] reads it.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::resource::TelemetryResourceDetector;
use opentelemetry_sdk::Resource;
use tracing::warn;

use super::sampler::SamplerConfig;

/// Wire protocol of the OTLP exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`grpc`, the default).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`).
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The value of `OTEL_EXPORTER_OTLP_PROTOCOL` that selects this protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Configuration errors an operator must fix before anything can be exported.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{var}={value:?} is not supported: use `grpc` or `http/protobuf`")]
    UnsupportedProtocol { var: &'static str, value: String },
}

/// Everything the OTLP span exporter needs; see [`OtlpConfig::from_env`].
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// The traces endpoint, as the exporter will use it (for HTTP, with `/v1/traces` already
    /// appended to a base `OTEL_EXPORTER_OTLP_ENDPOINT`). `None`: nothing goes over the network.
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    /// `service.name` of the resource (default `infertap`).
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`, decoded, in order.
    pub resource_attributes: Vec<(String, String)>,
    pub sampler: SamplerConfig,
    /// What `infertap_tail` counts as slow (flags and `--slow-thresholds`, set by the app).
    pub slow: super::tail::SlowThresholds,
    /// Spans waiting for export; past this the sender sheds (and counts) them.
    pub queue_capacity: usize,
    /// Most spans in one export request.
    pub max_batch: usize,
    /// A partial batch is exported after waiting this long.
    pub batch_interval: Duration,
    /// Longest one export request may take before it counts as failed.
    pub export_timeout: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: OtlpProtocol::Grpc,
            service_name: DEFAULT_SERVICE_NAME.to_string(),
            resource_attributes: Vec::new(),
            sampler: SamplerConfig::default(),
            slow: Default::default(),
            queue_capacity: 2048,
            max_batch: 512,
            batch_interval: Duration::from_secs(1),
            export_timeout: Duration::from_secs(10),
        }
    }
}

pub const DEFAULT_SERVICE_NAME: &str = "infertap";
const TRACES_PATH: &str = "/v1/traces";

impl OtlpConfig {
    /// Reads the standard `OTEL_*` variables of this process.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the standard `OTEL_*` variables through `lookup` (empty values count as unset).
    ///
    /// Unknown sampler names and bad sampler arguments are warned about and replaced by the
    /// defaults, as the OpenTelemetry SDKs do; an unsupported protocol is an error.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };

        let (protocol_var, protocol) = match get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(v)),
            None => (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                get("OTEL_EXPORTER_OTLP_PROTOCOL"),
            ),
        };
        let protocol = match protocol.as_deref() {
            None | Some("grpc") => OtlpProtocol::Grpc,
            Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some(other) => {
                return Err(ConfigError::UnsupportedProtocol {
                    var: protocol_var,
                    value: other.to_string(),
                })
            }
        };

        // The signal-specific endpoint is used as given; the base endpoint gets the signal's
        // path for OTLP/HTTP (gRPC has no path: the service name routes the call).
        let endpoint = match get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(traces) => Some(traces),
            None => get("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| match protocol {
                OtlpProtocol::Grpc => base,
                OtlpProtocol::HttpProtobuf => {
                    format!("{}{TRACES_PATH}", base.trim_end_matches('/'))
                }
            }),
        };

        let resource_attributes = get("OTEL_RESOURCE_ATTRIBUTES")
            .map(|v| parse_resource_attributes(&v))
            .unwrap_or_default();
        let service_name = get("OTEL_SERVICE_NAME")
            .or_else(|| {
                resource_attributes
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());

        let (sampler, problem) = SamplerConfig::parse(
            get("OTEL_TRACES_SAMPLER").as_deref(),
            get("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        );
        if let Some(problem) = problem {
            warn!(%problem, "Trace sampler settings not understood; using the fallback.");
        }

        let defaults = Self::default();
        let queue_capacity = positive(&get, "OTEL_BSP_MAX_QUEUE_SIZE")
            .map_or(defaults.queue_capacity, |n| n as usize);
        let max_batch = positive(&get, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
            .map_or(defaults.max_batch, |n| n as usize)
            .min(queue_capacity);
        let batch_interval = positive(&get, "OTEL_BSP_SCHEDULE_DELAY")
            .map_or(defaults.batch_interval, Duration::from_millis);
        let export_timeout = positive(&get, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| positive(&get, "OTEL_EXPORTER_OTLP_TIMEOUT"))
            .or_else(|| positive(&get, "OTEL_BSP_EXPORT_TIMEOUT"))
            .map_or(defaults.export_timeout, Duration::from_millis);

        Ok(Self {
            endpoint,
            protocol,
            service_name,
            resource_attributes,
            sampler,
            slow: Default::default(),
            queue_capacity,
            max_batch,
            batch_interval,
            export_timeout,
        })
    }

    /// The resource of every exported span: `service.name`, `host.name`, `telemetry.sdk.*` (as the
    /// SDK sets them) and `OTEL_RESOURCE_ATTRIBUTES`. `service.name` wins over the attributes.
    pub fn resource(&self) -> Resource {
        let mut builder =
            Resource::builder_empty().with_detector(Box::new(TelemetryResourceDetector));
        if let Some(host) = host_name() {
            builder = builder.with_attribute(KeyValue::new("host.name", host));
        }
        builder
            .with_attributes(
                self.resource_attributes
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_service_name(self.service_name.clone())
            .build()
    }
}

/// A positive integer variable (milliseconds or a count, as the OTel specification defines it);
/// anything else is warned about and ignored, so the default applies.
fn positive(get: &impl Fn(&str) -> Option<String>, name: &str) -> Option<u64> {
    let value = get(name)?;
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            warn!(variable = name, %value, "Not a positive integer; using the default.");
            None
        }
    }
}

/// `key1=value1,key2=value2` with percent-encoded values (W3C Baggage octets); malformed pairs
/// are skipped.
pub fn parse_resource_attributes(value: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim();
            if key.is_empty() {
                return None;
            }
            Some((key.to_string(), percent_decode(value.trim())?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// This node's host name (`uname -n`), as the OTel host detector reports it.
/// An endpoint as the agent shows it (`/status`, logs, errors): credentials in the URL's user
/// part and its query string (where some collectors take tokens) are replaced by `***`.
pub fn redacted(endpoint: &str) -> String {
    let (scheme, rest) = match endpoint.find("://") {
        Some(i) => endpoint.split_at(i + 3),
        None => ("", endpoint),
    };
    let (rest, query) = match rest.find(['?', '#']) {
        Some(i) => (&rest[..i], true),
        None => (rest, false),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    let query = if query { "?***" } else { "" };
    format!("{scheme}{authority}{path}{query}")
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_an_endpoint_are_never_shown() {
        for (raw, shown) in [
            ("http://collector:4317", "http://collector:4317"),
            (
                "https://user:s3cret@otlp.example:443/v1/traces",
                "https://***@otlp.example:443/v1/traces",
            ),
            ("https://token@host", "https://***@host"),
            (
                "http://host:4318/v1/traces?api_key=s3cret",
                "http://host:4318/v1/traces?***",
            ),
            ("host:4317", "host:4317"),
            ("http://a@b@host/p#frag", "http://***@host/p?***"),
        ] {
            assert_eq!(super::redacted(raw), shown, "{raw}");
            assert!(!super::redacted(raw).contains("s3cret"));
        }
    }

    use super::*;
    use crate::export::otlp::sampler::SamplerConfig;
    use opentelemetry::Key;

    fn config(vars: &[(&str, &str)]) -> Result<OtlpConfig, ConfigError> {
        OtlpConfig::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn queue_batch_delay_and_timeout_follow_the_standard_variables() {
        let c = config(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1500"),
        ])
        .unwrap();
        assert_eq!(c.queue_capacity, 64);
        assert_eq!(c.max_batch, 64, "a batch never exceeds the queue");
        assert_eq!(c.batch_interval, Duration::from_millis(250));
        assert_eq!(c.export_timeout, Duration::from_millis(1500));
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1500"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "zero"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
        ])
        .unwrap();
        assert_eq!(c.export_timeout, Duration::from_millis(700));
        assert_eq!(c.queue_capacity, OtlpConfig::default().queue_capacity);
        assert_eq!(c.batch_interval, OtlpConfig::default().batch_interval);
    }

    #[test]
    fn nothing_set_means_disabled_grpc_infertap() {
        let c = config(&[]).unwrap();
        assert_eq!(c.endpoint, None);
        assert_eq!(c.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.service_name, "infertap");
        assert_eq!(c.sampler, SamplerConfig::ParentBasedAlwaysOn);
        assert_eq!(c.max_batch, 512);
        assert_eq!(c.export_timeout, Duration::from_secs(10));
    }

    #[test]
    fn grpc_uses_the_base_endpoint_as_is() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://collector:4317"));
    }

    #[test]
    fn http_appends_the_traces_path_to_the_base_endpoint_only() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            c.endpoint.as_deref(),
            Some("http://collector:4318/v1/traces")
        );

        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://other:4318/custom",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://other:4318/custom"));
    }

    #[test]
    fn empty_endpoint_counts_as_unset() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap();
        assert_eq!(c.endpoint, None);
    }

    #[test]
    fn unsupported_protocol_is_an_error() {
        assert_eq!(
            config(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]),
            Err(ConfigError::UnsupportedProtocol {
                var: "OTEL_EXPORTER_OTLP_PROTOCOL",
                value: "http/json".into()
            })
        );
    }

    #[test]
    fn resource_attributes_are_decoded_and_service_name_wins() {
        let c = config(&[
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs, k8s.cluster.name=a%20b,broken,=x",
            ),
            ("OTEL_SERVICE_NAME", "svc"),
        ])
        .unwrap();
        assert_eq!(
            c.resource_attributes,
            [
                ("service.name".to_string(), "from-attrs".to_string()),
                ("k8s.cluster.name".to_string(), "a b".to_string())
            ]
        );
        assert_eq!(c.service_name, "svc");
        let r = c.resource();
        assert_eq!(r.get(&Key::new("service.name")), Some("svc".into()));
        assert_eq!(r.get(&Key::new("k8s.cluster.name")), Some("a b".into()));
        assert_eq!(
            r.get(&Key::new("telemetry.sdk.name")),
            Some("opentelemetry".into())
        );
        assert_eq!(
            r.get(&Key::new("telemetry.sdk.language")),
            Some("rust".into())
        );
        assert!(r.get(&Key::new("host.name")).is_some());
    }

    #[test]
    fn service_name_falls_back_to_resource_attributes_then_default() {
        let c = config(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs")]).unwrap();
        assert_eq!(c.service_name, "from-attrs");
    }

    #[test]
    fn sampler_settings_are_read_with_fallbacks() {
        let c = config(&[("OTEL_TRACES_SAMPLER", "jaeger_remote")]).unwrap();
        assert_eq!(c.sampler, SamplerConfig::ParentBasedAlwaysOn);
        let c = config(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "lots"),
        ])
        .unwrap();
        assert_eq!(c.sampler, SamplerConfig::ParentBasedTraceIdRatio(1.0));
        let c = config(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap();
        assert_eq!(c.sampler, SamplerConfig::TraceIdRatio(0.25));
    }
}
