//! System packages that the integration tests need besides the Rust toolchain and the Python
//! venv, installed idempotently.
//!
//! - Prometheus (Debian's `prometheus` package, `/usr/bin/prometheus`): `tests/tests/promql.rs`
//!   runs its own Prometheus scraping the agent and evaluates the PromQL of `docs/operators.md`.
//!   The package's systemd service is stopped (and disabled) after the install: the tests run their
//!   own server on a free port and must not share the machine with a stray one.
//! - Go (Debian's `golang-go`, `/usr/bin/go`) and the `openssl` CLI: `tests/tests/tls.rs` builds its
//!   Go HTTPS peer (`tests/peers/go`) and makes certificates.

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

/// Where the TLS tests look for Go.
pub const GO: &str = "/usr/bin/go";

/// Installs Debian packages when `probe` is missing (apt index refreshed once on failure).
fn ensure_apt(probe: &str, packages: &[&str]) -> Result<()> {
    if Path::new(probe).exists() {
        return Ok(());
    }
    let install = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        cmd
    };
    if run(&mut install()).is_err() {
        let mut update = Command::new("apt-get");
        update
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        run(&mut update)?;
        run(&mut install())?;
    }
    if !Path::new(probe).exists() {
        bail!("apt-get installed {packages:?}, but {probe} is missing");
    }
    Ok(())
}

/// Where the page test (tests/tests/page.rs) looks for the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Debian's headless-capable Chromium (and a font for legible screenshots), unless present.
pub fn ensure_browser() -> Result<()> {
    ensure_apt(CHROMIUM, &["chromium", "fonts-liberation"])
}

/// Go (to build the TLS test peer) and the openssl CLI (test certificates), unless present.
pub fn ensure_tls_test_tools() -> Result<()> {
    ensure_apt(GO, &["golang-go"])?;
    ensure_apt("/usr/bin/openssl", &["openssl"])
}
