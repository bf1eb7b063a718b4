//! What `GET /status` (and the agent's part of `/metrics`) reports, and who fills which part.
//!
//! Two kinds of input, read at request time, never copied on a timer:
//! - [`AppStatus`], owned and written by the app through [`StatusSource::update`]: probes and
//!   their state, targeted processes, open connections, kernel drop counters per reason, GPU
//!   source state — things only the app's stages know.
//! - Counters read live from `Arc<Stats>` and the exporter's [`ExporterStateHandle`].
//!
//! [`StatusSource::snapshot`] joins them into a [`StatusSnapshot`], the JSON contract of `/status`.
//! Nothing here does I/O.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::otlp::ExporterStateHandle;
use super::prometheus::{self, MetricData, MetricFamily, MetricSource, Sample, AGENT_PREFIX};
use crate::stats::Stats;

/// The body of `GET /status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    pub version: String,
    pub started_at_unix_nano: u64,
    pub probes: Vec<ProbeStatus>,
    pub targets: Vec<TargetStatus>,
    /// Port-publishing proxies listening on a target port, not traced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_proxies: Vec<PortProxyStatus>,
    pub connections: ConnectionsStatus,
    pub records: RecordsStatus,
    pub http: HttpStatus,
    pub http2: Http2Status,
    pub exporter: ExporterStatus,
    pub gpu: GpuStatus,
    /// The Kubernetes source (Kubernetes mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesStatus>,
    #[serde(default)]
    pub tls: TlsStatus,
    /// The agent's own poll of targeted model servers' `/metrics` (`--runtime-poll-interval`).
    #[serde(default)]
    pub runtime_poll: RuntimePollSnapshot,
}

/// `/status` `runtime_poll`: the poll's setting and servers, and its counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimePollSnapshot {
    #[serde(flatten)]
    pub poll: crate::runtime_poll::RuntimePollStatus,
    pub failures_total: u64,
    pub connections_untraced_total: u64,
}

/// The Kubernetes source: the API server connection, the opted-in namespaces, this node's pods.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesStatus {
    /// Both watches (namespaces, pods) last received data rather than an error.
    pub connected: bool,
    /// Both watches have listed everything at least once.
    pub synced: bool,
    pub node: String,
    /// The label selector a namespace must match to be traced.
    pub namespace_selector: String,
    /// Namespaces matching it.
    pub watched_namespaces: Vec<String>,
    /// Pods on this node, in any namespace.
    pub pods_on_node: u64,
    /// `namespace/name` of this node's pods in watched namespaces.
    pub opted_in_pods: Vec<String>,
    pub last_error: Option<String>,
    pub last_error_unix_nano: Option<u64>,
}

/// One kernel program and whether it is attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub name: String,
    pub attached: bool,
    /// Why it is not attached (kernel support, verifier, permissions).
    pub error: Option<String>,
    /// Times the program ran, and its total run time, from the kernel's BPF statistics
    /// (`kernel.bpf_stats_enabled`, switched on while the agent runs).
    #[serde(default)]
    pub run_count: u64,
    #[serde(default)]
    pub run_time_ns: u64,
}

/// One targeted process and why it is targeted (`"port 8000"`, `"pid"`, `"cmdline"`, …).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub pid: u32,
    pub comm: String,
    pub reason: String,
    /// The process's network namespace (its inode, as `lsns -t net` and `/proc/<pid>/ns/net`
    /// show it): a port target may listen in any namespace of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
}

/// A host-side port-publishing proxy (`docker-proxy`, `rootlessport`, `slirp4netns`, `pasta`)
/// listening on a target port: recognised and deliberately not traced (the server behind it is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortProxyStatus {
    pub pid: u32,
    pub comm: String,
    pub port: u16,
    pub netns: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionsStatus {
    pub open: u64,
    pub opened_total: u64,
    pub closed_total: u64,
    pub evicted_total: u64,
    /// Dropped because the connection table was full.
    pub shed_total: u64,
    /// Connections whose open record the kernel could not deliver, picked up at their next
    /// delivered record with what came before counted as lost.
    pub after_loss_total: u64,
    /// Connections closed with records lost and their close record refused: counted by the
    /// kernel, the only trace of their unseen requests.
    pub lost_in_kernel_total: u64,
    /// Connections whose parse state was shed for holding too many unparsed bytes, by cause:
    /// `connection` (over `--conn-buffer-bytes`), `global` (all together over
    /// `--buffer-budget-bytes`).
    #[serde(default)]
    pub buffer_shed: BufferShedStatus,
    /// Entries of the kernel's socket map (traced sockets) found live at the last check against
    /// /proc (every 2 s).
    pub kernel_sockets: u64,
    /// Traced sockets forgotten because their descriptor number stopped naming them, by cause.
    pub forgotten: ForgottenStatus,
}

/// Parse states shed over the buffer budget, by cause.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferShedStatus {
    pub connection: u64,
    pub global: u64,
}

/// `connections.forgotten`: why traced sockets' kernel entries went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgottenStatus {
    pub close: u64,
    pub close_range: u64,
    pub dup: u64,
    pub exec: u64,
    pub reconcile: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordsStatus {
    pub read: u64,
    pub bytes: u64,
    pub malformed: u64,
    pub lost_bytes: u64,
    /// Records the kernel could not deliver, per reason (the per-CPU drop counters, summed).
    pub kernel_dropped: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpStatus {
    pub parse_failures: u64,
    pub not_http_streams: u64,
    pub sse_parse_failures: u64,
    pub json_parse_failures: u64,
    pub requests_completed: u64,
    pub requests_cancelled: u64,
    pub requests_server_aborted: u64,
    pub requests_incomplete: u64,
    /// Requests whose head was lost before it reached the agent: no span, only counted.
    #[serde(default)]
    pub requests_lost: u64,
    /// HTTP/1 requests pipelined beyond the bound of open exchanges per connection: no span.
    #[serde(default)]
    pub requests_shed: u64,
}

/// HTTP/2, gRPC and ext_proc decoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Http2Status {
    pub connections: u64,
    pub frame_errors: u64,
    pub streams_shed: u64,
    /// Hostile traffic, by kind (each drops the connection's HTTP/2 state).
    #[serde(default)]
    pub header_lists_too_large: u64,
    #[serde(default)]
    pub continuation_floods: u64,
    #[serde(default)]
    pub settings_floods: u64,
    #[serde(default)]
    pub ping_floods: u64,
    #[serde(default)]
    pub rapid_reset_floods: u64,
    #[serde(default)]
    pub stream_floods: u64,
    /// Connections whose HTTP/2 state was dropped for hostile traffic.
    #[serde(default)]
    pub dropped: u64,
    pub grpc_messages: u64,
    pub grpc_messages_skipped: u64,
    pub ext_proc_decode_failures: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExporterStatus {
    /// `disabled`, `ok` or `failing: <error>`.
    pub state: String,
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub spans_exported: u64,
    pub spans_failed: u64,
    /// Shed because the export queue was full.
    pub spans_dropped: u64,
    /// Kept from export by `OTEL_TRACES_SAMPLER` (still on `/spans`).
    pub spans_not_sampled: u64,
    /// The trace sampler, and what the tail policy kept per reason.
    #[serde(default)]
    pub sampling: SamplingStatus,
    pub last_error: Option<String>,
    pub last_error_unix_nano: Option<u64>,
}

/// `OTEL_TRACES_SAMPLER` as the exporter applies it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingStatus {
    /// The sampler's name (`None` when export is disabled).
    pub sampler: Option<String>,
    pub ratio: Option<f64>,
    /// `infertap_tail`: spans exported per `infertap.sampling.reason`.
    pub kept: BTreeMap<String, u64>,
}

/// TLS plaintext capture: what was probed in each targeted process, and the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsStatus {
    pub attachments: Vec<TlsAttachStatus>,
    pub records: u64,
    pub bytes: u64,
    pub streams: u64,
    pub ciphertext_streams: u64,
    pub uprobes_attached: u64,
    pub attach_failures: u64,
}

/// One TLS library or Go binary of a targeted process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsAttachStatus {
    pub pid: u32,
    /// `go` or `openssl`.
    pub library: String,
    pub path: String,
    pub attached: bool,
    /// Go version and where its symbols came from, or the OpenSSL functions probed.
    pub detail: String,
    /// Why it is not probed (binary not readable, refused as a tenant's file — not a regular
    /// file, changed since mapped, on FUSE —, over a limit — file size, RETs or bytes per
    /// function —, symbol not found, Go version unsupported, …). `docs/tls.md` lists them.
    pub error: Option<String>,
}

/// The GPU source's state (`gpu::SourceStatus` in short; `GET /gpu` has the whole of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuStatus {
    /// `off`, `starting`, `ok`, `failing` or `failed`.
    pub state: String,
    pub reason: Option<String>,
    /// `nvml`, `dcgm` or `off`, once GPU telemetry started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Figures switched off, with the reason (a symbol missing from the NVML library, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disabled: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<u64>,
}

impl Default for GpuStatus {
    fn default() -> Self {
        Self {
            state: "off".into(),
            reason: Some("GPU telemetry is not built yet".into()),
            source: None,
            disabled: BTreeMap::new(),
            devices: None,
        }
    }
}

/// The parts of the status that the app owns and keeps current.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppStatus {
    pub probes: Vec<ProbeStatus>,
    pub targets: Vec<TargetStatus>,
    pub port_proxies: Vec<PortProxyStatus>,
    /// Connections in the connection table now.
    pub connections_open: u64,
    /// Entries of the kernel's socket map found live at the last reconciliation.
    pub kernel_sockets: u64,
    /// Kernel drop counters per reason, as last read from the per-CPU map.
    pub kernel_dropped: BTreeMap<String, u64>,
    pub gpu: GpuStatus,
    pub kubernetes: Option<KubernetesStatus>,
    /// TLS uprobe attachments of targeted processes.
    pub tls: Vec<TlsAttachStatus>,
    /// Written by the `/metrics` poll (`runtime_poll`) while it runs.
    pub runtime_poll: crate::runtime_poll::RuntimePollStatus,
}

/// Everything `/status` reads; cheap to clone, shared by the app (writer) and the debug server.
#[derive(Clone, Debug)]
pub struct StatusSource {
    version: &'static str,
    started_at_unix_nano: u64,
    app: Arc<RwLock<AppStatus>>,
    stats: Arc<Stats>,
    exporter: ExporterStateHandle,
}

impl StatusSource {
    /// A source for an agent starting now.
    pub fn new(stats: Arc<Stats>, exporter: ExporterStateHandle) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            version: env!("CARGO_PKG_VERSION"),
            started_at_unix_nano: now,
            app: Arc::default(),
            stats,
            exporter,
        }
    }

    /// Changes the app-owned part, e.g. `status.update(|s| s.connections_open = n)`.
    pub fn update(&self, change: impl FnOnce(&mut AppStatus)) {
        change(&mut self.app.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// A copy of the app-owned part.
    pub fn app(&self) -> AppStatus {
        self.app.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        let app = self.app();
        let s = &*self.stats;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
        let exporter = self.exporter.get();
        StatusSnapshot {
            version: self.version.to_string(),
            started_at_unix_nano: self.started_at_unix_nano,
            probes: app.probes,
            targets: app.targets,
            port_proxies: app.port_proxies,
            connections: ConnectionsStatus {
                open: app.connections_open,
                opened_total: get(&s.connections_opened),
                closed_total: get(&s.connections_closed),
                evicted_total: get(&s.connections_evicted),
                shed_total: get(&s.connections_shed),
                after_loss_total: get(&s.connections_after_loss),
                lost_in_kernel_total: get(&s.connections_lost_in_kernel),
                buffer_shed: BufferShedStatus {
                    connection: get(&s.buffer_sheds_connection),
                    global: get(&s.buffer_sheds_global),
                },
                kernel_sockets: app.kernel_sockets,
                forgotten: ForgottenStatus {
                    close: get(&s.sockets_forgotten_close),
                    close_range: get(&s.sockets_forgotten_close_range),
                    dup: get(&s.sockets_forgotten_dup),
                    exec: get(&s.sockets_forgotten_exec),
                    reconcile: get(&s.sockets_forgotten_reconcile),
                },
            },
            records: RecordsStatus {
                read: get(&s.records_read),
                bytes: get(&s.bytes_read),
                malformed: get(&s.records_malformed),
                lost_bytes: get(&s.bytes_lost),
                kernel_dropped: app.kernel_dropped,
            },
            http: HttpStatus {
                parse_failures: get(&s.http_parse_failures),
                not_http_streams: get(&s.streams_not_http),
                sse_parse_failures: get(&s.sse_parse_failures),
                json_parse_failures: get(&s.json_parse_failures),
                requests_completed: get(&s.requests_completed),
                requests_cancelled: get(&s.requests_cancelled),
                requests_server_aborted: get(&s.requests_server_aborted),
                requests_incomplete: get(&s.requests_incomplete),
                requests_lost: get(&s.requests_lost),
                requests_shed: get(&s.http_requests_shed),
            },
            http2: Http2Status {
                connections: get(&s.http2_connections),
                frame_errors: get(&s.http2_frame_errors),
                streams_shed: get(&s.http2_streams_shed),
                header_lists_too_large: get(&s.http2_header_lists_too_large),
                continuation_floods: get(&s.http2_continuation_floods),
                settings_floods: get(&s.http2_settings_floods),
                ping_floods: get(&s.http2_ping_floods),
                rapid_reset_floods: get(&s.http2_rapid_reset_floods),
                stream_floods: get(&s.http2_stream_floods),
                dropped: get(&s.http2_connections_dropped),
                grpc_messages: get(&s.grpc_messages),
                grpc_messages_skipped: get(&s.grpc_messages_skipped),
                ext_proc_decode_failures: get(&s.ext_proc_decode_failures),
            },
            exporter: ExporterStatus {
                state: exporter.health.to_string(),
                endpoint: exporter.endpoint,
                protocol: exporter.protocol.map(str::to_string),
                spans_exported: get(&s.spans_exported),
                spans_failed: get(&s.spans_export_failed),
                spans_dropped: get(&s.spans_export_dropped),
                spans_not_sampled: get(&s.spans_not_sampled),
                sampling: SamplingStatus {
                    sampler: exporter.sampler.map(str::to_string),
                    ratio: exporter.sampler_ratio,
                    kept: crate::export::otlp::KeepReason::ALL
                        .iter()
                        .map(|r| (r.as_str().to_string(), get(r.counter(s))))
                        .collect(),
                },
                last_error: exporter.last_error,
                last_error_unix_nano: exporter.last_error_unix_nano,
            },
            gpu: app.gpu,
            kubernetes: app.kubernetes,
            tls: TlsStatus {
                attachments: app.tls,
                records: get(&s.tls_records),
                bytes: get(&s.tls_bytes),
                streams: get(&s.tls_streams),
                ciphertext_streams: get(&s.tls_ciphertext_streams),
                uprobes_attached: get(&s.tls_uprobes_attached),
                attach_failures: get(&s.tls_attach_failures),
            },
            runtime_poll: RuntimePollSnapshot {
                poll: app.runtime_poll,
                failures_total: get(&s.runtime_poll_failures),
                connections_untraced_total: get(&s.runtime_poll_connections_untraced),
            },
        }
    }
}

/// The agent's own metrics: every [`Stats`] counter, kernel drops per reason, open connections
/// and probe attachment.
impl MetricSource for StatusSource {
    fn collect(&self, out: &mut Vec<MetricFamily>) {
        out.extend(prometheus::stats_families(&self.stats));
        let app = self.app();
        out.push(MetricFamily {
            name: format!("{AGENT_PREFIX}kernel_records_dropped_total"),
            help: "Records the kernel could not deliver to the agent, per reason.".into(),
            data: MetricData::Counter(
                app.kernel_dropped
                    .iter()
                    .map(|(reason, n)| Sample {
                        labels: vec![("reason".into(), reason.clone())],
                        value: *n as f64,
                    })
                    .collect(),
            ),
        });
        out.push(MetricFamily::gauge(
            format!("{AGENT_PREFIX}connections_open"),
            "Connections of targeted processes being followed now.",
            app.connections_open as f64,
        ));
        out.push(MetricFamily {
            name: format!("{AGENT_PREFIX}probe_attached"),
            help: "Whether each kernel program is attached (1) or not (0).".into(),
            data: MetricData::Gauge(
                app.probes
                    .iter()
                    .map(|p| Sample {
                        labels: vec![("probe".into(), p.name.clone())],
                        value: if p.attached { 1.0 } else { 0.0 },
                    })
                    .collect(),
            ),
        });
        if let Some(k) = &app.kubernetes {
            out.push(MetricFamily::gauge(
                format!("{AGENT_PREFIX}kubernetes_connected"),
                "Whether the Kubernetes watches last received data (1) or an error (0).",
                if k.connected { 1.0 } else { 0.0 },
            ));
            out.push(MetricFamily::gauge(
                format!("{AGENT_PREFIX}kubernetes_opted_in_pods"),
                "Pods on this node in namespaces that opted in.",
                k.opted_in_pods.len() as f64,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn snapshot_joins_app_parts_and_live_counters() {
        let stats = Arc::new(Stats::default());
        let source = StatusSource::new(stats.clone(), ExporterStateHandle::disabled());
        source.update(|s| {
            s.probes.push(ProbeStatus {
                name: "sys_enter_read".into(),
                attached: true,
                error: None,
                run_count: 0,
                run_time_ns: 0,
            });
            s.targets.push(TargetStatus {
                pid: 42,
                comm: "vllm".into(),
                reason: "port 8000".into(),
                netns: None,
            });
            s.connections_open = 3;
            s.kernel_dropped.insert("ringbuf_full".into(), 5);
        });
        stats.records_read.store(10, Relaxed);
        stats.spans_export_dropped.store(2, Relaxed);
        stats.streams_not_http.store(1, Relaxed);

        let mut value = serde_json::to_value(source.snapshot()).unwrap();
        assert!(value["started_at_unix_nano"].as_u64().unwrap() > 0);
        value["started_at_unix_nano"] = json!(0);
        assert_eq!(
            value,
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "started_at_unix_nano": 0,
                "probes": [{"name": "sys_enter_read", "attached": true, "error": null, "run_count": 0, "run_time_ns": 0}],
                "targets": [{"pid": 42, "comm": "vllm", "reason": "port 8000"}],
                "connections": {"open": 3, "opened_total": 0, "closed_total": 0,
                                "evicted_total": 0, "shed_total": 0, "after_loss_total": 0,
                                "lost_in_kernel_total": 0, "kernel_sockets": 0,
                                "buffer_shed": {"connection": 0, "global": 0},
                                "forgotten": {"close": 0, "close_range": 0, "dup": 0,
                                              "exec": 0, "reconcile": 0}},
                "records": {"read": 10, "bytes": 0, "malformed": 0, "lost_bytes": 0,
                            "kernel_dropped": {"ringbuf_full": 5}},
                "http": {"parse_failures": 0, "not_http_streams": 1, "sse_parse_failures": 0, "json_parse_failures": 0,
                         "requests_completed": 0, "requests_cancelled": 0, "requests_server_aborted": 0,
                         "requests_incomplete": 0, "requests_lost": 0, "requests_shed": 0},
                "http2": {"connections": 0, "frame_errors": 0, "streams_shed": 0,
                          "header_lists_too_large": 0, "continuation_floods": 0, "settings_floods": 0,
                          "ping_floods": 0, "rapid_reset_floods": 0, "stream_floods": 0, "dropped": 0,
                          "grpc_messages": 0,
                          "grpc_messages_skipped": 0, "ext_proc_decode_failures": 0},
                "exporter": {"state": "disabled", "endpoint": null, "protocol": null,
                             "spans_exported": 0, "spans_failed": 0, "spans_dropped": 2,
                             "spans_not_sampled": 0, "last_error": null,
                             "sampling": {"sampler": null, "ratio": null, "kept": {
                                 "error": 0, "server_aborted": 0, "cancelled": 0, "incomplete": 0,
                                 "slow_ttft": 0, "slow_itl": 0, "slow_duration": 0, "ratio": 0}},
                             "last_error_unix_nano": null},
                "gpu": {"state": "off", "reason": "GPU telemetry is not built yet"},
                "tls": {"attachments": [], "records": 0, "bytes": 0, "streams": 0,
                        "ciphertext_streams": 0, "uprobes_attached": 0, "attach_failures": 0},
                "runtime_poll": {"interval_s": null, "servers": [], "failures_total": 0,
                                 "connections_untraced_total": 0}
            })
        );
        // Counters are read at request time, not copied.
        stats.records_read.store(11, Relaxed);
        assert_eq!(source.snapshot().records.read, 11);
    }

    #[test]
    fn agent_metrics_include_kernel_drops_connections_and_probes() {
        let source = StatusSource::new(Arc::default(), ExporterStateHandle::disabled());
        source.update(|s| {
            s.kernel_dropped.insert("ringbuf_full".into(), 5);
            s.kernel_dropped.insert("copy_failed".into(), 1);
            s.connections_open = 2;
            s.probes.push(ProbeStatus {
                name: "sys_exit_read".into(),
                attached: false,
                error: Some("no such tracepoint".into()),
                run_count: 0,
                run_time_ns: 0,
            });
        });
        let mut families = Vec::new();
        source.collect(&mut families);
        let text = prometheus::encode(&families);
        assert!(text.contains(
            "# TYPE infertap_kernel_records_dropped_total counter\n\
             infertap_kernel_records_dropped_total{reason=\"copy_failed\"} 1\n\
             infertap_kernel_records_dropped_total{reason=\"ringbuf_full\"} 5\n"
        ));
        assert!(text.contains("\ninfertap_connections_open 2\n"));
        assert!(text.contains("\ninfertap_probe_attached{probe=\"sys_exit_read\"} 0\n"));
        assert!(text.contains("\ninfertap_spans_export_dropped_total 0\n"));
    }
}
