//! The only reader of command-line flags (and, through clap, their environment variables).
//! OTLP settings come from the standard `OTEL_*` variables, read in `export::otlp::config`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use regex::Regex;

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

    /// Size of the kernel→agent ring buffer in bytes (a power of two, at least 4096).
    #[arg(long, default_value_t = 16 << 20, value_parser = parse_ring_size)]
    pub ring_buffer_size: u32,

    /// Most connections tracked at once; more are counted and not traced.
    #[arg(long, default_value_t = 65536)]
    pub max_connections: usize,

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
    /// NVML lacks a figure, and the GPU source without NVML. Its figures have 30 s resolution.
    #[arg(long, value_name = "URL", env = "INFERTAP_DCGM_EXPORTER_URL")]
    pub dcgm_exporter_url: Option<String>,

    /// The price of one GPU-hour (any currency): spans then carry the cost of their fair share
    /// of GPU time and the cost per million output tokens.
    #[arg(long, value_name = "PRICE", env = "INFERTAP_GPU_HOUR_COST")]
    pub gpu_hour_cost: Option<f64>,

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

    /// How often /proc is scanned for new and exited targets, in milliseconds.
    #[arg(long, default_value_t = 250, hide = true)]
    pub scan_interval_ms: u64,
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
