//! System packages that the integration tests need besides the Rust toolchain and the Python
//! venv, installed idempotently.
//!
//! - Prometheus (Debian's `prometheus` package, `/usr/bin/prometheus`): `tests/tests/promql.rs`
//!   runs its own Prometheus scraping the agent and evaluates the PromQL of `docs/operators.md`.
//!   The package's systemd service is stopped (and disabled) after the install: the tests run their
//!   own server on a free port and must not share the machine with a stray one.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Result};

use crate::run;

/// Where the tests look for Prometheus.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Installs Debian's `prometheus` package unless `/usr/bin/prometheus` exists. Needs root (or a
/// root-less `apt-get` that works) when it has to install.
pub fn ensure_prometheus() -> Result<()> {
    if Path::new(PROMETHEUS).exists() {
        return Ok(());
    }
    let apt_get = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        cmd
    };
    // A stale package index makes the install fail on a fresh machine.
    if run(&mut apt_get(&[
        "install",
        "-y",
        "--no-install-recommends",
        "prometheus",
    ]))
    .is_err()
    {
        run(&mut apt_get(&["update"]))?;
        run(&mut apt_get(&[
            "install",
            "-y",
            "--no-install-recommends",
            "prometheus",
        ]))?;
    }
    if !Path::new(PROMETHEUS).exists() {
        bail!("apt-get installed prometheus, but {PROMETHEUS} is missing");
    }
    // The package starts (and enables) its service where systemd runs; the tests need it gone.
    // Best effort: without systemd (containers, policy-rc.d) nothing was started.
    for args in [["stop", "prometheus"], ["disable", "prometheus"]] {
        let _ = Command::new("systemctl")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    Ok(())
}
