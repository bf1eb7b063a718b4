//! The only reader of command-line flags (and, through clap, their environment variables).
//! OTLP settings come from the standard `OTEL_*` variables, read in `export::otlp::config`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use regex::Regex;

use crate::export::otlp::tail::{SlowThresholds, Thresholds};
use crate::probes::targets::{Selector, DEFAULT_CMDLINE};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Standalone,
    Kubernetes,
    Auto,
}

/// infertap: zero-code eBPF telemetry for LLM inference servers.
///
/// Traces the sockets of targeted processes, rebuilds every HTTP request (streaming responses
/// token by token), and exports spans over OTLP (`OTEL_EXPORTER_OTLP_ENDPOINT`, …) and on a local
/// debug endpoint.
#[derive(Clone, Debug, Parser)]
#[command(name = "infertap", version)]
pub struct Config {
    /// Where targets come from: flags (standalone), the namespace label (kubernetes), or
    /// kubernetes when KUBERNETES_SERVICE_HOST is set (auto).
    #[arg(long, value_enum, default_value = "auto", env = "INFERTAP_MODE")]
    pub mode: Mode,

    /// Trace processes with a server socket listening on this port (repeatable).
    #[arg(long = "target-port", value_name = "PORT")]
    pub target_ports: Vec<u16>,

    /// Trace this process (repeatable).
    #[arg(long = "target-pid", value_name = "PID")]
    pub target_pids: Vec<u32>,

    /// Trace processes whose command line matches this regular expression. With no --target-*
    /// flag, processes that look like inference servers (vLLM, SGLang, llama.cpp, TGI) or EPPs.
    #[arg(long = "target-cmdline", value_name = "REGEX")]
    pub target_cmdline: Option<String>,

    /// Address of the debug endpoint (/healthz, /status, /spans, /metrics, /gpu).
    #[arg(long, default_value = "127.0.0.1:9464", env = "INFERTAP_DEBUG_ADDR")]
    pub debug_addr: SocketAddr,

    /// A second listener serving `/metrics` only, for Prometheus to scrape from off the node (the
    /// debug endpoint, which shows client addresses and request ids, stays on `--debug-addr`).
    /// Off unless set.
    #[arg(long, value_name = "ADDR", env = "INFERTAP_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Size of the kernel→agent ring buffer in bytes (a power of two, at least 4096). Kernel
    /// memory, and twice that in the agent's RSS (its pages are mapped twice). 16 MiB absorbs
    /// the faults suite's burst of 51 MB of noise (8 MiB overflowed under it) and keeps the
    /// agent's steady RSS under 50 MiB (docs/PERFORMANCE.md).
    #[arg(long, default_value_t = 16 << 20, value_parser = parse_ring_size)]
    pub ring_buffer_size: u32,

    /// Most connections tracked at once; more are counted and not traced.
    #[arg(long, default_value_t = 65536)]
    pub max_connections: usize,

    /// Most bytes one connection may hold of what it has not parsed yet (heads, SSE events in
    /// progress, JSON tails, HTTP/2 frames and HPACK tables, ext_proc messages); over it, its
    /// parse state is shed (counted in `buffer_sheds_connection`) and parsing resynchronises.
    #[arg(long, default_value_t = 8 << 20)]
    pub conn_buffer_bytes: usize,

    /// Most bytes all connections together may hold of what they have not parsed yet; over it,
    /// the connections holding the most are shed (counted in `buffer_sheds_global`).
    #[arg(long, default_value_t = 128 << 20)]
    pub buffer_budget_bytes: usize,

    /// Forget a connection after this many seconds without traffic.
    #[arg(long, default_value_t = 300)]
    pub idle_timeout_secs: u64,

    /// Spans kept for /spans.
    #[arg(long, default_value_t = 4096)]
    pub span_buffer: usize,

    /// Do not derive a trace id from `x-request-id` for requests without a `traceparent`.
    #[arg(long)]
    pub no_request_id_trace: bool,

    /// GPU telemetry source: NVML if the library loads, else a dcgm-exporter endpoint if
    /// --dcgm-exporter-url is set, else off (auto); or one of them; or off.
    #[arg(long, value_enum, default_value = "auto", env = "INFERTAP_GPU")]
    pub gpu: crate::gpu::GpuMode,

    /// The NVML library to load (default: libnvidia-ml.so.1 from the library path).
    #[arg(long, value_name = "PATH", env = "INFERTAP_NVML_LIB")]
    pub nvml_lib: Option<std::path::PathBuf>,

    /// A dcgm-exporter metrics endpoint (e.g. http://127.0.0.1:9400/metrics): enrichment where
    /// NVML lacks a figure, and the GPU source without NVML. Its figures have the exporter's
    /// update cadence (30 s by default), learned from how its values change.
    #[arg(long, value_name = "URL", env = "INFERTAP_DCGM_EXPORTER_URL")]
    pub dcgm_exporter_url: Option<String>,

    /// Seconds between scrapes of --dcgm-exporter-url: how soon a new reading of the exporter
    /// is seen (and the finest cadence that can be learned).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = crate::gpu::dcgm::SCRAPE_EVERY.as_secs_f64(),
        value_parser = parse_scrape_interval,
        env = "INFERTAP_DCGM_SCRAPE_INTERVAL"
    )]
    pub dcgm_scrape_interval: f64,

    /// The price of one GPU-hour (any currency): spans then carry the cost of their fair share
    /// of GPU time and the cost per million output tokens.
    #[arg(long, value_name = "PRICE", env = "INFERTAP_GPU_HOUR_COST")]
    pub gpu_hour_cost: Option<f64>,

    /// Seconds between polls of each targeted model server's own `/metrics` (its listening
    /// socket, asked from inside its network namespace), whose load figures join the requests
    /// (`infertap.runtime.*`) as the scrapes crossing a traced socket do; one request in flight
    /// per server, 1 s timeout, bounded body. 0 turns the poll off (the passive path alone).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 1.0,
        env = "INFERTAP_RUNTIME_POLL_INTERVAL"
    )]
    pub runtime_poll_interval: f64,

    /// Kubernetes mode: the label selector of the namespaces whose pods are traced.
    #[arg(
        long,
        default_value = "infertap.io/enabled=true",
        env = "INFERTAP_NAMESPACE_SELECTOR"
    )]
    pub namespace_selector: String,

    /// Kubernetes mode: this node's name (the DaemonSet sets NODE_NAME from spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// `OTEL_TRACES_SAMPLER=infertap_tail`: a request whose time to first token is over this
    /// many seconds is slow (always exported); 0 disables.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 2.0,
        env = "INFERTAP_SLOW_TTFT"
    )]
    pub slow_ttft: f64,

    /// `infertap_tail`: slow when the inter-token p95 is over this many seconds; 0 disables.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 0.25,
        env = "INFERTAP_SLOW_ITL"
    )]
    pub slow_itl: f64,

    /// `infertap_tail`: slow when the request took longer than this many seconds; 0 disables.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 60.0,
        env = "INFERTAP_SLOW_DURATION"
    )]
    pub slow_duration: f64,

    /// `infertap_tail`: per-model slow thresholds, one model per line
    /// (`MODEL ttft=S itl=S duration=S`; `*` for the default; docs/spans.md).
    #[arg(long, value_name = "FILE", env = "INFERTAP_SLOW_THRESHOLDS")]
    pub slow_thresholds: Option<std::path::PathBuf>,

    /// `/healthz` fails (503, naming the loop) when the pipeline task or the targeting thread has
    /// made no progress for this many seconds.
    #[arg(long, default_value_t = 30)]
    pub stall_secs: u64,

    /// Switch the kernel's BPF statistics on (`kernel.bpf_stats_enabled`) while the agent runs:
    /// run count and run time per program in `/status` `probes`. Off by default: with them on,
    /// every BPF program on the node pays two clock reads per run.
    #[arg(long, env = "INFERTAP_BPF_STATS")]
    pub bpf_stats: bool,

    /// Benchmarks only: records are taken from the ring buffer and dropped unparsed (no span, no
    /// metric), so that a run shows what the kernel side alone costs a traced server
    /// (`cargo xtask bench-overhead --workload nginx`, arm "capture only").
    #[arg(long, hide = true)]
    pub capture_only: bool,

    /// How often /proc is scanned for new and exited targets, in milliseconds: the safety net
    /// behind the kernel's exec, listen and exit reports, which find targets as they happen.
    #[arg(long, default_value_t = 5000, hide = true)]
    pub scan_interval_ms: u64,
}

fn parse_scrape_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.1..=3600.0).contains(&v) {
        return Err(format!("{v} is not between 0.1 and 3600 seconds"));
    }
    Ok(v)
}

impl Config {
    /// The `/metrics` poll's interval (at least 100 ms); `None` when it is off.
    pub fn runtime_poll(&self) -> Option<Duration> {
        (self.runtime_poll_interval.is_finite() && self.runtime_poll_interval > 0.0)
            .then(|| Duration::from_secs_f64(self.runtime_poll_interval.max(0.1)))
    }
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v < 4096 || !v.is_power_of_two() {
        return Err(format!(
            "{v} is not a power of two of at least 4096 bytes (e.g. 16777216)"
        ));
    }
    Ok(v)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--target-cmdline {pattern:?} is not a valid regular expression: {source}")]
    BadRegex {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error(
        "kubernetes mode needs this node's name to find its pods: set NODE_NAME (the DaemonSet in \
         deploy/kubernetes sets it from spec.nodeName) or pass --node-name"
    )]
    MissingNodeName,
    #[error("cannot read the slow thresholds file {path}")]
    SlowThresholdsFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("slow thresholds file {path}: {source}")]
    SlowThresholds {
        path: std::path::PathBuf,
        #[source]
        source: crate::export::otlp::tail::ThresholdsError,
    },
}

impl Config {
    pub fn resolved_mode(&self) -> Mode {
        match self.mode {
            Mode::Auto if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Mode::Kubernetes,
            Mode::Auto => Mode::Standalone,
            m => m,
        }
    }

    pub fn selector(&self) -> Result<Selector, ConfigError> {
        let explicit = !self.target_ports.is_empty()
            || !self.target_pids.is_empty()
            || self.target_cmdline.is_some();
        let pattern = match (&self.target_cmdline, explicit) {
            (Some(p), _) => Some(p.clone()),
            (None, false) => Some(DEFAULT_CMDLINE.to_string()),
            (None, true) => None,
        };
        let cmdline = pattern
            .map(|p| {
                Regex::new(&p).map_err(|source| ConfigError::BadRegex {
                    pattern: p.clone(),
                    source,
                })
            })
            .transpose()?;
        Ok(Selector {
            pids: self.target_pids.clone(),
            ports: self.target_ports.clone(),
            cmdline,
        })
    }

    /// Kubernetes mode: the command lines targeted in opted-in pods (--target-cmdline, else
    /// inference servers and EPPs), and the node's name.
    pub fn kubernetes(&self) -> Result<(Regex, String), ConfigError> {
        let node = self
            .node_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .ok_or(ConfigError::MissingNodeName)?;
        let pattern = self
            .target_cmdline
            .clone()
            .unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
        let re = Regex::new(&pattern).map_err(|source| ConfigError::BadRegex {
            pattern: pattern.clone(),
            source,
        })?;
        Ok((re, node))
    }

    /// What `infertap_tail` counts as slow: the --slow-* flags, then --slow-thresholds' lines.
    pub fn slow_thresholds(&self) -> Result<SlowThresholds, ConfigError> {
        let secs = |s: f64| (s.is_finite() && s > 0.0).then_some(s);
        let flags = SlowThresholds {
            default: Thresholds {
                ttft_s: secs(self.slow_ttft),
                itl_p95_s: secs(self.slow_itl),
                duration_s: secs(self.slow_duration),
            },
            per_model: Default::default(),
        };
        let Some(path) = &self.slow_thresholds else {
            return Ok(flags);
        };
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::SlowThresholdsFile {
                path: path.clone(),
                source,
            })?;
        flags
            .with_file(&text)
            .map_err(|source| ConfigError::SlowThresholds {
                path: path.clone(),
                source,
            })
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_targets_inference_servers_and_explicit_flags_replace_it() {
        let c = Config::parse_from(["infertap"]);
        assert!(c
            .selector()
            .unwrap()
            .cmdline
            .unwrap()
            .is_match("vllm serve x"));
        let c = Config::parse_from(["infertap", "--target-port", "8000"]);
        let s = c.selector().unwrap();
        assert_eq!(s.ports, vec![8000]);
        assert!(s.cmdline.is_none());
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let c = Config::parse_from(["infertap", "--target-cmdline", "("]);
        let e = c.selector().unwrap_err().to_string();
        assert!(e.contains("not a valid regular expression"), "{e}");
        let e = Config::try_parse_from(["infertap", "--ring-buffer-size", "1000"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("power of two"), "{e}");
        let e = Config::try_parse_from(["infertap", "--dcgm-scrape-interval", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("between 0.1 and 3600 seconds"), "{e}");
        let c = Config::parse_from(["infertap", "--dcgm-scrape-interval", "0.5"]);
        assert_eq!(c.dcgm_scrape_interval, 0.5);
        assert_eq!(Config::parse_from(["infertap"]).dcgm_scrape_interval, 5.0);
    }

    #[test]
    fn slow_thresholds_from_flags_then_the_file() {
        let c = Config::parse_from(["infertap", "--slow-ttft", "0.5", "--slow-duration", "0"]);
        let t = c.slow_thresholds().unwrap();
        assert_eq!(t.default.ttft_s, Some(0.5));
        assert_eq!(t.default.itl_p95_s, Some(0.25));
        assert_eq!(t.default.duration_s, None);
        let dir = std::env::temp_dir().join(format!("infertap-slow-{}", std::process::id()));
        std::fs::write(&dir, "big ttft=9\n").unwrap();
        let c = Config::parse_from([
            "infertap",
            "--slow-ttft",
            "0.5",
            "--slow-thresholds",
            dir.to_str().unwrap(),
        ]);
        let t = c.slow_thresholds().unwrap();
        assert_eq!(t.of(Some("big")).ttft_s, Some(9.0));
        assert_eq!(t.of(Some("other")).ttft_s, Some(0.5));
        std::fs::write(&dir, "big ttft=x\n").unwrap();
        let e = c.slow_thresholds().unwrap_err().to_string();
        assert!(e.contains("slow thresholds file"), "{e}");
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn kubernetes_mode_needs_the_node_name_and_keeps_the_cmdline_default() {
        let c = Config::parse_from(["infertap", "--mode", "kubernetes"]);
        if std::env::var_os("NODE_NAME").is_none() {
            let e = c.kubernetes().unwrap_err().to_string();
            assert!(e.contains("NODE_NAME"), "{e}");
        }
        let c = Config::parse_from(["infertap", "--node-name", "gpu-1"]);
        let (re, node) = c.kubernetes().unwrap();
        assert_eq!(node, "gpu-1");
        assert!(re.is_match("vllm serve x") && !re.is_match("bash"));
        assert_eq!(c.namespace_selector, "infertap.io/enabled=true");
    }
}
