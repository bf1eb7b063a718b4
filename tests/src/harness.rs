//! The harness of the root-only integration tests: the real agent, the vLLM stand-in, the traced
//! `openai` client, the bad-input client and an OTLP receiver, each started by the test and
//! stopped when its guard drops (also when the test panics).
//!
//! Every test starts with [`begin`]: it skips the test (or fails it, with
//! `INFERTAP_REQUIRE_ROOT=1`) when not root, and holds a process-wide lock so that tests run one
//! after the other whatever `--test-threads` says (the machine has two cores; timing assertions
//! need them). Every wait is bounded; ports come from the kernel (`127.0.0.1:0`).
//!
//! Paths come from `INFERTAP_BIN`, `INFERTAP_PYTHON` and `INFERTAP_PEERS` (set by `cargo xtask
//! test`), else `<workspace>/target/release/infertap`, `<workspace>/.venv/bin/python` and
//! `<workspace>/tests/peers`.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::otlp_receiver::{OtlpReceiver, ReceivedSpan};

/// Serialises the tests of one test binary.
static SERIAL: Mutex<()> = Mutex::new(());

/// Where the programs under test live.
#[derive(Clone, Debug)]
pub struct Paths {
    pub agent: PathBuf,
    pub python: PathBuf,
    pub peers: PathBuf,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn paths() -> Paths {
    let var = |name: &str, default: PathBuf| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or(default)
    };
    let ws = workspace();
    Paths {
        agent: var("INFERTAP_BIN", ws.join("target/release/infertap")),
        python: var("INFERTAP_PYTHON", ws.join(".venv/bin/python")),
        peers: var("INFERTAP_PEERS", ws.join("tests/peers")),
    }
}

/// The effective uid, from `/proc/self/status` (`Uid: real effective saved fs`).
pub fn euid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// One test's context: the serial lock and a scratch folder (kept, and its path printed, when the
/// test fails). Declare it first in the test so that it drops last.
pub struct TestCtx {
    pub name: String,
    dir: PathBuf,
    _serial: MutexGuard<'static, ()>,
}

/// Starts a test: `None` (the test returns at once) when not root and root is not required.
pub fn begin(name: &str) -> Option<TestCtx> {
    if euid() != Some(0) {
        if std::env::var("INFERTAP_REQUIRE_ROOT").as_deref() == Ok("1") {
            panic!(
                "{name}: needs root (eBPF), and INFERTAP_REQUIRE_ROOT=1 forbids skipping it; \
                 run `cargo xtask test` as root"
            );
        }
        println!("SKIPPED (needs root): {name}");
        return None;
    }
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = paths();
    for (what, path) in [
        ("agent binary (cargo xtask build)", &p.agent),
        ("python (cargo xtask setup)", &p.python),
    ] {
        assert!(
            path.exists(),
            "{name}: the {what} is missing at {}",
            path.display()
        );
    }
    assert!(
        p.peers.join("vllm_standin.py").exists(),
        "{name}: no vllm_standin.py in {}",
        p.peers.display()
    );
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "infertap-it-{}-{}-{}",
        name,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    Some(TestCtx {
        name: name.to_string(),
        dir,
        _serial: serial,
    })
}

impl TestCtx {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TestCtx {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}: test files kept in {}", self.name, self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Random lower-case hex from `/dev/urandom`, `bytes` bytes long.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("reading /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A port that was free a moment ago (bound to `127.0.0.1:0`, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// Polls `f` every 50 ms until it gives `Some`, or `None` after `timeout`.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process that is stopped (SIGTERM, then SIGKILL after 5 s) when dropped. When the test
/// is panicking, its log (stdout + stderr) is printed.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for it to exit, at most `timeout`; kills it (and panics) past that.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match poll(timeout, || self.exited()) {
            Some(s) => s,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not finish within {timeout:?}; its log:\n{}",
                    self.name,
                    tail(&self.log, 60)
                );
            }
        }
    }

    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if poll(Duration::from_secs(5), || self.exited()).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "----- {} log ({}), last 150 lines -----\n{}\n----- end of {} log -----",
                self.name,
                self.log.display(),
                tail(&self.log, 150),
                self.name
            );
        }
    }
}

/// A peer script (`tests/peers/<script>`), run directly.
pub fn python(script: &str) -> Command {
    python_in(&[], script)
}

/// The EPP stand-in (`epp_standin.py`) on a free port, routing to `endpoint` (and asking for the
/// response phase), with `extra` arguments; its port once it listens.
pub fn start_epp(ctx: &TestCtx, endpoint: &str, extra: &[&str]) -> (Proc, u16) {
    let ready = ctx.file("epp.ready");
    let mut cmd = python("epp_standin.py");
    cmd.args(["--port", "0", "--ready-file"])
        .arg(&ready)
        .args(["--endpoint", endpoint])
        .args(extra);
    let mut proc = Proc::spawn("epp_standin.py", cmd, ctx.file("epp.log"));
    let port = poll(Duration::from_secs(60), || {
        if let Some(s) = proc.exited() {
            panic!("the EPP stand-in exited ({s}):\n{}", proc.log_text());
        }
        std::fs::read_to_string(&ready)
            .ok()?
            .trim()
            .parse::<u16>()
            .ok()
    })
    .unwrap_or_else(|| panic!("the EPP stand-in never listened:\n{}", proc.log_text()));
    (proc, port)
}

/// A peer script run through `wrapper` (a command that ends by exec'ing its arguments, e.g.
/// `ip netns exec NAME`), or directly when it is empty.
fn python_in(wrapper: &[String], script: &str) -> Command {
    let p = paths();
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(&p.python);
            c
        }
        None => Command::new(&p.python),
    };
    cmd.arg("-u").arg(p.peers.join(script));
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    // The client's own OTel SDK must not export anywhere; loopback traffic takes no proxy.
    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
        "OPENAI_BASE_URL",
        "http_proxy",
        "https_proxy",
        "grpc_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Options of `vllm_standin.py`.
#[derive(Clone, Debug)]
pub struct StandInOpts {
    pub ttft_ms: u64,
    pub token_interval_ms: u64,
    /// Idle keep-alive timeout (vLLM: 5 s).
    pub keep_alive_s: u64,
    pub model: String,
    /// Extra environment of the server process (e.g. `CUDA_VISIBLE_DEVICES`).
    pub env: Vec<(String, String)>,
    /// Serve HTTPS with this (key, certificate) PEM pair (uvicorn's `--ssl-keyfile/--ssl-certfile`).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Run the server, and the clients started against it, through this command (one that ends
    /// by exec'ing its arguments, e.g. `ip netns exec NAME`): empty, run directly.
    pub wrapper: Vec<String>,
}

impl Default for StandInOpts {
    fn default() -> Self {
        StandInOpts {
            ttft_ms: 50,
            token_interval_ms: 20,
            keep_alive_s: 5,
            model: "standin-model".into(),
            env: Vec::new(),
            tls: None,
            wrapper: Vec::new(),
        }
    }
}

/// The vLLM stand-in (FastAPI on uvicorn), listening on a free port of 127.0.0.1.
pub struct StandIn {
    pub proc: Proc,
    pub port: u16,
    pub opts: StandInOpts,
}

impl StandIn {
    pub fn start(ctx: &TestCtx, opts: StandInOpts) -> StandIn {
        StandIn::start_on(ctx, opts, 0, |_| true).expect("the pid check accepts any pid")
    }

    /// Starts the stand-in on `port` (0: a free one). `accept_pid` sees the new process's pid
    /// first: when it says no, the process is killed at once and `None` returned (a test that
    /// needs a particular pid retries).
    pub fn start_on(
        ctx: &TestCtx,
        opts: StandInOpts,
        port: u16,
        accept_pid: impl FnOnce(u32) -> bool,
    ) -> Option<StandIn> {
        let ready = ctx.file("standin.ready");
        let _ = fs::remove_file(&ready);
        let mut cmd = python_in(&opts.wrapper, "vllm_standin.py");
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--ready-file",
        ])
        .arg(&ready)
        .args(["--model", &opts.model])
        .args(["--ttft-ms", &opts.ttft_ms.to_string()])
        .args(["--token-interval-ms", &opts.token_interval_ms.to_string()])
        .args(["--timeout-keep-alive", &opts.keep_alive_s.to_string()]);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some((key, cert)) = &opts.tls {
            cmd.arg("--ssl-keyfile")
                .arg(key)
                .arg("--ssl-certfile")
                .arg(cert);
        }
        let mut proc = Proc::spawn("vllm_standin", cmd, ctx.file("standin.log"));
        if !accept_pid(proc.pid()) {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
            return None;
        }
        let port = poll(Duration::from_secs(30), || {
            if let Some(s) = proc.exited() {
                panic!(
                    "the stand-in exited ({s}) before it was ready:\n{}",
                    proc.log_text()
                );
            }
            fs::read_to_string(&ready)
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
                .filter(|p| *p != 0)
        })
        .unwrap_or_else(|| {
            panic!(
                "the stand-in wrote no ready file within 30 s:\n{}",
                proc.log_text()
            )
        });
        Some(StandIn { proc, port, opts })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn base_url(&self) -> String {
        let scheme = if self.opts.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}/v1", self.port)
    }
}

/// Resident memory (VmRSS) of a process, KiB; 0 when it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A minimal HTTP/1.1 GET (`Connection: close`): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size_text = String::from_utf8_lossy(&rest[..eol]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size + 2 {
                return Err(bad("short chunk"));
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The agent, `--mode standalone`, with its own debug endpoint; stderr goes to `agent.log`.
pub struct Agent {
    pub proc: Proc,
    pub debug_addr: SocketAddr,
}

impl Agent {
    /// Starts the agent targeting `server`'s port, and waits until `/healthz` answers 200 and
    /// `/status` lists the server's pid as a target. `env`: extra environment (OTEL_*, RUST_LOG).
    pub fn start(ctx: &TestCtx, server: &StandIn, args: &[&str], env: &[(&str, String)]) -> Agent {
        let port = server.port.to_string();
        let mut all = vec!["--target-port", port.as_str()];
        all.extend_from_slice(args);
        Agent::start_with(ctx, &all, env, Some(server.pid()))
    }

    /// Starts the agent with `args` (plus `--mode standalone --debug-addr …`); waits for
    /// `/healthz` and, when given, for `target_pid` in `/status` targets.
    pub fn start_with(
        ctx: &TestCtx,
        args: &[&str],
        env: &[(&str, String)],
        target_pid: Option<u32>,
    ) -> Agent {
        Agent::start_full(ctx, &[], "standalone", args, env, target_pid)
    }

    /// [`Agent::start_with`] in another `--mode` (`kubernetes`: give `KUBECONFIG` and `NODE_NAME`
    /// in `env`).
    pub fn start_in_mode(
        ctx: &TestCtx,
        mode: &str,
        args: &[&str],
        env: &[(&str, String)],
        target_pid: Option<u32>,
    ) -> Agent {
        Agent::start_full(ctx, &[], mode, args, env, target_pid)
    }

    /// As [`Agent::start_with`], with the agent run through `wrapper` (a command that ends by
    /// exec'ing its arguments, e.g. `setpriv …` or `unshare -m …`), so that the process the test
    /// holds is the agent itself.
    pub fn start_wrapped(
        ctx: &TestCtx,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, String)],
        target_pid: Option<u32>,
    ) -> Agent {
        Agent::start_full(ctx, wrapper, "standalone", args, env, target_pid)
    }

    /// The agent in `mode`, run through `wrapper` when one is given.
    pub fn start_full(
        ctx: &TestCtx,
        wrapper: &[&str],
        mode: &str,
        args: &[&str],
        env: &[(&str, String)],
        target_pid: Option<u32>,
    ) -> Agent {
        let debug_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(paths().agent);
                c
            }
            None => Command::new(paths().agent),
        };
        cmd.args(["--mode", mode, "--debug-addr", &debug_addr.to_string()])
            .args(args);
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_SERVICE_NAME",
            "OTEL_RESOURCE_ATTRIBUTES",
            "OTEL_TRACES_SAMPLER",
            "OTEL_TRACES_SAMPLER_ARG",
            "INFERTAP_MODE",
            "INFERTAP_DEBUG_ADDR",
            "KUBERNETES_SERVICE_HOST",
            "KUBECONFIG",
            "NODE_NAME",
            "INFERTAP_NAMESPACE_SELECTOR",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut agent = Agent {
            proc: Proc::spawn("infertap", cmd, ctx.file("agent.log")),
            debug_addr,
        };
        let started = Instant::now();
        let healthy = poll(Duration::from_secs(20), || {
            if let Some(s) = agent.proc.exited() {
                panic!(
                    "the agent exited ({s}) before /healthz answered:\n{}",
                    agent.proc.log_text()
                );
            }
            matches!(http_get(debug_addr, "/healthz"), Ok((200, _))).then_some(())
        });
        assert!(
            healthy.is_some(),
            "the agent's /healthz did not answer 200 within 20 s"
        );
        if let Some(pid) = target_pid {
            let targeted = poll(Duration::from_secs(10), || {
                let status = agent.try_status()?;
                status["targets"]
                    .as_array()?
                    .iter()
                    .any(|t| t["pid"].as_u64() == Some(u64::from(pid)))
                    .then_some(())
            });
            assert!(
                targeted.is_some(),
                "/status did not list pid {pid} as a target within 10 s: {}",
                agent.status()
            );
        }
        eprintln!("agent ready in {:?}", started.elapsed());
        agent
    }

    pub fn alive(&mut self) -> bool {
        self.proc.exited().is_none()
    }

    /// GET `path` on the debug endpoint; panics unless 200.
    pub fn get(&self, path: &str) -> String {
        match http_get(self.debug_addr, path) {
            Ok((200, body)) => body,
            Ok((code, body)) => panic!("GET {path}: {code} {body}"),
            Err(e) => {
                let pid = self.proc.pid();
                let state = fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| s.rsplit(") ").next().and_then(|r| r.chars().next()));
                let alive = matches!(state, Some(c) if c != 'Z' && c != 'X');
                panic!(
                    "GET {path} on the agent's debug endpoint: {e} (agent pid {pid} {}; its log follows)",
                    if alive { "still running" } else { "has exited" }
                )
            }
        }
    }

    fn try_status(&self) -> Option<Value> {
        match http_get(self.debug_addr, "/status") {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.get("/status")).expect("/status is JSON")
    }

    /// Whether `/status` lists `pid` among its targets.
    pub fn targets_pid(&self, pid: u32) -> bool {
        self.status()["targets"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["pid"].as_u64() == Some(u64::from(pid))))
    }

    /// Waits (30 s) until `/status` lists `pid` among its targets; panics naming `what`.
    pub fn wait_targeted(&self, pid: u32, what: &str) {
        poll(Duration::from_secs(30), || {
            self.targets_pid(pid).then_some(())
        })
        .unwrap_or_else(|| panic!("{what} is never targeted: {:#}", self.status()));
    }

    /// `/status` `http.<name>` as a number.
    pub fn http_counter(&self, name: &str) -> u64 {
        self.status()["http"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("/status has no http.{name}"))
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics")
    }

    /// The newest spans (`/spans?limit=4096`), oldest first as the endpoint orders them.
    pub fn spans(&self) -> Vec<Value> {
        match serde_json::from_str(&self.get("/spans?limit=4096")).expect("/spans is JSON") {
            Value::Array(spans) => spans,
            other => panic!("/spans is not an array: {other}"),
        }
    }

    /// Waits until `/spans` holds at least `n` spans.
    pub fn wait_spans(&self, n: usize, timeout: Duration) -> Vec<Value> {
        poll(timeout, || Some(self.spans()).filter(|s| s.len() >= n)).unwrap_or_else(|| {
            panic!(
                "waited {timeout:?} for {n} spans on /spans, have {}: {:#?}",
                self.spans().len(),
                self.spans()
            )
        })
    }

    /// Waits until every client request in `records` has a span (by trace and parent), then a
    /// little longer so that duplicates would show, and gives every span.
    pub fn wait_spans_for(&self, records: &[Value], timeout: Duration) -> Vec<Value> {
        let all_there = |spans: &[Value]| records.iter().all(|r| !spans_for(spans, r).is_empty());
        if poll(timeout, || Some(self.spans()).filter(|s| all_there(s))).is_none() {
            let spans = self.spans();
            let missing: Vec<&Value> = records
                .iter()
                .filter(|r| spans_for(&spans, r).is_empty())
                .collect();
            panic!(
                "waited {timeout:?}: {} of {} client requests have no span.\nmissing: {:#?}\nspans: {:#?}",
                missing.len(),
                records.len(),
                missing,
                spans
            );
        }
        thread::sleep(Duration::from_millis(300));
        self.spans()
    }
}

/// The agent's spans that are children of a client request's span (same trace, parent = the
/// client's span id).
pub fn spans_for<'a>(spans: &'a [Value], record: &Value) -> Vec<&'a Value> {
    let trace = record["trace_id"]
        .as_str()
        .expect("client record has a trace_id");
    let parent = record["span_id"]
        .as_str()
        .expect("client record has a span_id");
    spans
        .iter()
        .filter(|s| {
            s["trace_id"].as_str() == Some(trace) && s["parent_span_id"].as_str() == Some(parent)
        })
        .collect()
}

/// The one span of a client request; panics (showing both) unless there is exactly one.
pub fn one_span_for<'a>(spans: &'a [Value], record: &Value) -> &'a Value {
    let found = spans_for(spans, record);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one span for client request {record}, found {found:#?}"
    );
    found[0]
}

/// `attributes[key]` of a `/spans` span (`Value::Null` when absent).
pub fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// Span duration from its timestamps, in seconds.
pub fn span_secs(span: &Value) -> f64 {
    let start = span["start_time_unix_nano"].as_u64().expect("start time");
    let end = span["end_time_unix_nano"].as_u64().expect("end time");
    end.saturating_sub(start) as f64 / 1e9
}

/// Reads JSON lines.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

static CLIENT_RUNS: AtomicU64 = AtomicU64::new(0);

/// What a run of `client.py` left.
pub struct ClientRun {
    pub status: ExitStatus,
    pub records: Vec<Value>,
    pub log: String,
}

/// Runs `client.py --base-url <server> --out … <args>` to the end (at most `timeout`).
pub fn client_run(ctx: &TestCtx, server: &StandIn, args: &[&str], timeout: Duration) -> ClientRun {
    let n = CLIENT_RUNS.fetch_add(1, Ordering::Relaxed);
    let out = ctx.file(&format!("client-{n}.jsonl"));
    let mut cmd = python_in(&server.opts.wrapper, "client.py");
    cmd.args(["--base-url", &server.base_url(), "--out"])
        .arg(&out)
        .args(args);
    let mut proc = Proc::spawn("client.py", cmd, ctx.file(&format!("client-{n}.log")));
    let status = proc.wait(timeout);
    ClientRun {
        status,
        records: read_jsonl(&out),
        log: proc.log_text(),
    }
}

/// Runs `client.py` and insists that every request behaved as its scenario expects.
pub fn client(ctx: &TestCtx, server: &StandIn, args: &[&str]) -> Vec<Value> {
    let run = client_run(ctx, server, args, Duration::from_secs(180));
    let bad: Vec<&Value> = run
        .records
        .iter()
        .filter(|r| r["ok"] != Value::Bool(true))
        .collect();
    assert!(
        run.status.success() && bad.is_empty() && !run.records.is_empty(),
        "client.py {args:?} failed ({}): unexpected {bad:#?}\nlog:\n{}",
        run.status,
        run.log
    );
    run.records
}

/// `client.py --hold-connection`: the first request opens a keep-alive connection, `READY` is
/// printed, the client waits for its wait-file, then sends the rest over the same connection.
pub struct HeldClient {
    proc: Proc,
    out: PathBuf,
    wait_file: PathBuf,
    ready: mpsc::Receiver<()>,
}

impl HeldClient {
    pub fn start(ctx: &TestCtx, server: &StandIn, args: &[&str]) -> HeldClient {
        let n = CLIENT_RUNS.fetch_add(1, Ordering::Relaxed);
        let out = ctx.file(&format!("client-{n}.jsonl"));
        let wait_file = ctx.file(&format!("client-{n}.go"));
        let log = ctx.file(&format!("client-{n}.log"));
        let mut cmd = python("client.py");
        cmd.args(["--base-url", &server.base_url(), "--out"])
            .arg(&out)
            .args(["--hold-connection", "--wait-timeout", "120", "--wait-file"])
            .arg(&wait_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("starting client.py");
        let stdout = child.stdout.take().unwrap();
        let (tx, ready) = mpsc::channel();
        // Copies stdout into the log and says when READY came.
        let log_copy = log.clone();
        thread::spawn(move || {
            let mut copy = fs::OpenOptions::new().append(true).open(log_copy).ok();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(f) = copy.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if line.trim() == "READY" {
                    let _ = tx.send(());
                }
            }
        });
        HeldClient {
            proc: Proc {
                name: "client.py --hold-connection".into(),
                child,
                log,
            },
            out,
            wait_file,
            ready,
        }
    }

    /// Waits for `READY` (the first request is done and the connection is held).
    pub fn wait_ready(&mut self, timeout: Duration) {
        if self.ready.recv_timeout(timeout).is_err() {
            panic!(
                "client.py printed no READY within {timeout:?}:\n{}",
                self.proc.log_text()
            );
        }
    }

    /// Lets the client send the rest, waits for it, and gives every request's record.
    pub fn release_and_finish(mut self, timeout: Duration) -> Vec<Value> {
        File::create(&self.wait_file).unwrap();
        let status = self.proc.wait(timeout);
        let records = read_jsonl(&self.out);
        let bad: Vec<&Value> = records
            .iter()
            .filter(|r| r["ok"] != Value::Bool(true))
            .collect();
        assert!(
            status.success() && bad.is_empty(),
            "held client failed ({status}): unexpected {bad:#?}\nlog:\n{}",
            self.proc.log_text()
        );
        records
    }
}

/// Runs one `badclient.py` case against `port`; gives its JSON line.
pub fn badclient(ctx: &TestCtx, port: u16, case: &str, extra: &[&str]) -> Value {
    let out = ctx.file(&format!("bad-{case}.jsonl"));
    let _ = fs::remove_file(&out);
    let mut cmd = python("badclient.py");
    cmd.args(["--port", &port.to_string(), "--case", case, "--out"])
        .arg(&out)
        .args(extra);
    let mut proc = Proc::spawn("badclient.py", cmd, ctx.file(&format!("bad-{case}.log")));
    let status = proc.wait(Duration::from_secs(60));
    let lines = read_jsonl(&out);
    assert!(
        status.success() && lines.len() == 1,
        "badclient.py --case {case}: {status}, {} lines:\n{}",
        lines.len(),
        proc.log_text()
    );
    lines.into_iter().next().unwrap()
}

/// The OTLP/gRPC test receiver on its own small runtime, for synchronous tests.
pub struct Receiver {
    inner: Option<OtlpReceiver>,
    rt: tokio::runtime::Runtime,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::start_on(0)
    }

    /// A receiver on `127.0.0.1:port` (0: any free port), e.g. a restarted collector on the port
    /// of one that was stopped.
    pub fn start_on(port: u16) -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let inner = rt
            .block_on(OtlpReceiver::start_on(addr))
            .unwrap_or_else(|e| panic!("starting the OTLP receiver on {addr}: {e:#}"));
        Receiver {
            inner: Some(inner),
            rt,
        }
    }

    fn inner(&self) -> &OtlpReceiver {
        self.inner.as_ref().unwrap()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.inner().endpoint()
    }

    /// The agent's environment for exporting here over gRPC.
    pub fn agent_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ]
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.inner().spans()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.inner().addr().port()
    }

    /// Export requests seen so far, refused and held ones included.
    pub fn requests(&self) -> u64 {
        self.inner().requests()
    }

    /// Answer every export with `UNAVAILABLE` (see [`OtlpReceiver::refuse`]).
    pub fn refuse(&self) {
        self.inner().refuse();
    }

    /// Hold every export unanswered (see [`OtlpReceiver::pause`]).
    pub fn pause(&self) {
        self.inner().pause();
    }

    /// Keep spans and answer OK again.
    pub fn accept(&self) {
        self.inner().accept();
    }

    /// Waits until every span id in `ids` arrived; panics after `timeout` naming the missing.
    pub fn wait_for_ids(&self, ids: &[String], timeout: Duration) -> Vec<ReceivedSpan> {
        let has_all =
            |got: &[ReceivedSpan]| ids.iter().all(|id| got.iter().any(|s| &s.span_id == id));
        match poll(timeout, || Some(self.spans()).filter(|s| has_all(s))) {
            Some(spans) => spans,
            None => {
                let got = self.spans();
                let missing: Vec<&String> = ids
                    .iter()
                    .filter(|id| !got.iter().any(|s| &s.span_id == *id))
                    .collect();
                panic!(
                    "waited {timeout:?}: {} of {} spans never reached the OTLP receiver ({} export requests, {} spans received): {missing:?}",
                    missing.len(),
                    ids.len(),
                    self.inner().requests(),
                    got.len()
                );
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), inner.stop()).await
            });
        }
    }
}

/// Median and extremes of a sample (sorted copy).
pub fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (v[0], v[v.len() / 2], v[v.len() - 1])
}
