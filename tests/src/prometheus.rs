//! A real Prometheus for the root tests (Debian's `prometheus` package: `xtask`'s
//! `deps::ensure_prometheus`, or `INFERTAP_PROMETHEUS`), scraping one target.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{free_port, http_get, poll, Proc, TestCtx};

pub fn prometheus_bin() -> PathBuf {
    std::env::var_os("INFERTAP_PROMETHEUS")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"))
}

/// Percent-encodes a query string value.
fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A real Prometheus scraping one target's `/metrics` every second as job `job`; stopped when
/// dropped.
pub struct Prometheus {
    pub proc: Proc,
    pub addr: SocketAddr,
    job: &'static str,
}

impl Prometheus {
    pub fn start(ctx: &TestCtx, job: &'static str, target: SocketAddr) -> Prometheus {
        let bin = prometheus_bin();
        assert!(
            bin.exists(),
            "{} is missing: install Debian's prometheus package (cargo xtask setup / \
             deps::ensure_prometheus, or apt-get install -y prometheus), or set INFERTAP_PROMETHEUS",
            bin.display()
        );
        let config = ctx.file("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: {job}\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let data = ctx.file("prometheus-data");
        fs::create_dir_all(&data).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let mut proc = Proc::spawn("prometheus", cmd, ctx.file("prometheus.log"));
        let ready = poll(Duration::from_secs(30), || {
            if let Some(s) = proc.exited() {
                panic!("prometheus exited ({s}):\n{}", proc.log_text());
            }
            matches!(http_get(addr, "/-/ready"), Ok((200, _))).then_some(())
        });
        assert!(
            ready.is_some(),
            "prometheus was not ready within 30 s:\n{}",
            proc.log_text()
        );
        Prometheus { proc, addr, job }
    }

    /// `/api/v1/query`: the result vector (instant query, now). Panics on an error.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", urlencode(expr));
        let (code, body) = http_get(self.addr, &path)
            .unwrap_or_else(|e| panic!("querying prometheus ({expr}): {e}"));
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus answered {code} with bad JSON ({e}): {body}"));
        assert!(
            code == 200 && v["status"] == "success",
            "query failed ({code}): {expr}\n{body}"
        );
        match &v["data"]["result"] {
            Value::Array(a) => a.clone(),
            Value::Object(_) | Value::String(_) => vec![v["data"]["result"].clone()],
            other => panic!("unexpected result {other} for {expr}"),
        }
    }

    /// Scrapes of the target that Prometheus has stored so far.
    pub fn scrapes(&self) -> usize {
        self.query(&format!("count_over_time(up{{job=\"{}\"}}[10m])", self.job))
            .first()
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
            .unwrap_or(0.0) as usize
    }

    /// Waits until `n` more scrapes than now are stored.
    pub fn wait_scrapes(&self, n: usize) {
        let start = self.scrapes();
        let done = poll(Duration::from_secs(30), || {
            (self.scrapes() >= start + n).then_some(())
        });
        assert!(
            done.is_some(),
            "prometheus stored fewer than {n} new scrapes within 30 s:\n{}\ntargets: {:?}",
            self.proc.log_text(),
            http_get(self.addr, "/api/v1/targets")
        );
    }
}
