//! `cargo xtask bench-overhead`: requests/s of a loopback inference server (the uvicorn stand-in)
//! under `wrk`, with the agent off, on but not targeting it, and targeting it — interleaved in
//! rounds, medians reported as ratios — plus the kernel's own cost per program run
//! (`kernel.bpf_stats_enabled`, read from the agent's /status). A fourth arm is the alternative
//! infertap replaces: the same server traced in-process by the OpenTelemetry Python SDK (FastAPI
//! instrumentation, spans batched and discarded), without the agent. With `--baseline BIN`, a fifth
//! arm targets the server with another agent binary (an earlier build), interleaved with the
//! others, so a change is measured before/after in one run. The nginx arm (`run_nginx`): Debian's
//! nginx serving a 500-byte file to `wrk -c16`, untraced vs traced (and the baseline binary),
//! interleaved; every request must be a span, and the agent's CPU per request is read from
//! `/proc/<pid>/stat`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::demo::{free_port, get_json, start_standin, wait_targeted, Kill};
use crate::run;
use crate::{agent_binary, agent_command_of};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arm {
    Off,
    Untargeted,
    Targeted,
    /// A second stand-in, instrumented in-process with the OpenTelemetry SDK; no agent.
    InProcess,
    /// Targeting it with the `--baseline` agent binary.
    Baseline,
    /// This build targeting it with `--capture-only`: every record read from the ring buffer and
    /// dropped, so that the arm shows what the kernel side alone costs (nginx arm).
    CaptureOnly,
}

fn ensure_wrk() -> Result<()> {
    if Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
    {
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq", "wrk"]))
}

/// One wrk run: requests/s and the p50 and p99 latency in ms.
fn wrk(port: u16, seconds: u64, script: Option<&Path>) -> Result<(f64, f64, f64)> {
    let run = wrk_run(
        &format!("http://127.0.0.1:{port}/health"),
        8,
        seconds,
        script,
    )?;
    Ok((run.rps, run.p50_ms, run.p99_ms))
}

/// What one wrk run measured.
struct WrkRun {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Responses received (`N requests in …`).
    requests: u64,
}

/// One wrk run (one thread, `connections` connections) against `url`.
fn wrk_run(url: &str, connections: u32, seconds: u64, script: Option<&Path>) -> Result<WrkRun> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        "1",
        "-c",
        &connections.to_string(),
        "--latency",
        "-d",
        &format!("{seconds}s"),
    ]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let pct = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .and_then(|v| wrk_ms(v.trim()))
            .with_context(|| format!("no {p} latency in wrk output:\n{text}"))
    };
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("no request count in wrk output:\n{text}"))?;
    Ok(WrkRun {
        rps,
        p50_ms: pct("50%")?,
        p99_ms: pct("99%")?,
        requests,
    })
}

/// wrk's latency figures (`850.00us`, `1.23ms`, `1.02s`, `2.00m`) in ms.
fn wrk_ms(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|x| x * scale)
}

/// The median of a non-empty set of measurements.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Per-program (name, runs, run time ns) from the agent's /status (`kernel.bpf_stats_enabled`).
pub fn probe_stats(debug: &str) -> Result<Vec<(String, u64, u64)>> {
    let st = get_json(&format!("http://{debug}/status"))?;
    Ok(st["probes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or("").to_string(),
                        p["run_count"].as_u64().unwrap_or(0),
                        p["run_time_ns"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Adds per-program runs and run time to a running total.
pub fn add_stats(into: &mut Vec<(String, u64, u64)>, from: Vec<(String, u64, u64)>) {
    for (n, c, t) in from {
        match into.iter_mut().find(|(m, _, _)| *m == n) {
            Some(e) => {
                e.1 += c;
                e.2 += t;
            }
            None => into.push((n, c, t)),
        }
    }
}

/// Prints ns per run of every program that ran.
pub fn print_kernel_costs(label: &str, k: &[(String, u64, u64)]) {
    println!("kernel cost per program run{label}:");
    for (n, c, t) in k.iter().filter(|(_, c, _)| *c > 0) {
        println!(
            "  {n:<22} {c:>10} runs {:>8.0} ns/run",
            *t as f64 / *c as f64
        );
    }
}

pub fn run_bench(
    python: &Path,
    rounds: usize,
    seconds: u64,
    baseline: Option<PathBuf>,
) -> Result<()> {
    ensure_wrk()?;
    let port = free_port()?;
    let _server = start_standin(
        python,
        port,
        &["--ttft-ms", "0", "--token-interval-ms", "0"],
    )?;
    let otel_port = free_port()?;
    let _otel_server = start_standin(
        python,
        otel_port,
        &[
            "--ttft-ms",
            "0",
            "--token-interval-ms",
            "0",
            "--otel-instrument",
        ],
    )?;
    let script = std::env::temp_dir().join("infertap-bench-chat.lua");
    std::fs::write(
        &script,
        r#"wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"standin-model","messages":[{"role":"user","content":"hello there general kenobi"}],"max_tokens":16,"stream":true}'
"#,
    )?;
    let sleeper = Kill(Command::new("sleep").arg("100000").spawn()?);

    let workloads: [(&str, Option<&Path>); 2] = [
        ("GET /health", None),
        ("POST chat stream 16 tokens", Some(&script)),
    ];
    for (name, script) in workloads {
        let mut results: Vec<(Arm, (f64, f64, f64))> = Vec::new();
        let mut kernel: Vec<(String, u64, u64)> = Vec::new();
        let mut kernel_untargeted: Vec<(String, u64, u64)> = Vec::new();
        wrk(port, 1, script)?; // warm up
        wrk(otel_port, 1, script)?;
        for round in 0..rounds {
            let arms = [
                Arm::Off,
                Arm::Untargeted,
                Arm::Targeted,
                Arm::InProcess,
                Arm::Baseline,
            ];
            for arm in arms
                .into_iter()
                .filter(|a| *a != Arm::Baseline || baseline.is_some())
            {
                let debug_port = free_port()?;
                let debug = format!("127.0.0.1:{debug_port}");
                let agent = match arm {
                    // Not an arm of the stand-in workload.
                    Arm::Off | Arm::InProcess | Arm::CaptureOnly => None,
                    Arm::Untargeted | Arm::Targeted | Arm::Baseline => {
                        let bin = match (&baseline, arm) {
                            (Some(b), Arm::Baseline) => b.clone(),
                            _ => agent_binary(),
                        };
                        let target = if arm != Arm::Untargeted {
                            vec!["--target-port".to_string(), port.to_string()]
                        } else {
                            vec!["--target-pid".to_string(), sleeper.0.id().to_string()]
                        };
                        let mut cmd = agent_command_of(&bin, &debug);
                        if arm != Arm::Baseline {
                            // Statistics are off by default; the per-program figures need them.
                            cmd.arg("--bpf-stats");
                        }
                        let a = Kill(cmd.args(&target).env("RUST_LOG", "warn").spawn()?);
                        wait_targeted(&debug)?;
                        Some(a)
                    }
                };
                let server_port = if arm == Arm::InProcess {
                    otel_port
                } else {
                    port
                };
                let measured = wrk(server_port, seconds, script)?;
                if agent.is_some() {
                    std::thread::sleep(Duration::from_millis(1200)); // one housekeeping tick
                    let probes = probe_stats(&debug)?;
                    match arm {
                        Arm::Targeted => add_stats(&mut kernel, probes),
                        Arm::Untargeted => add_stats(&mut kernel_untargeted, probes),
                        _ => {}
                    }
                    if arm == Arm::Targeted {
                        let spans: Value = get_json(&format!("http://{debug}/status"))?;
                        eprintln!("round {round}: targeted: http = {}", spans["http"]);
                    }
                }
                drop(agent);
                eprintln!(
                    "round {round}: {arm:?}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
                    measured.0, measured.1, measured.2
                );
                results.push((arm, measured));
            }
        }
        let med = |arm: Arm, field: fn(&(f64, f64, f64)) -> f64| {
            median(
                &mut results
                    .iter()
                    .filter(|(a, _)| *a == arm)
                    .map(|(_, m)| field(m))
                    .collect::<Vec<_>>(),
            )
        };
        let row = |arm: Arm| (med(arm, |m| m.0), med(arm, |m| m.1), med(arm, |m| m.2));
        let off = row(Arm::Off);
        println!("\n== {name}: {rounds} rounds of {seconds}s, wrk -t1 -c8, medians");
        println!("                            req/s   ratio   p50 ms   p99 ms");
        for (label, arm) in [
            ("agent off", Arm::Off),
            ("agent on, not targeted", Arm::Untargeted),
            ("agent on, targeting", Arm::Targeted),
            ("in-process OTel SDK", Arm::InProcess),
            ("baseline binary, targeting", Arm::Baseline),
        ] {
            if arm == Arm::Baseline && baseline.is_none() {
                continue;
            }
            let (rps, p50, p99) = row(arm);
            println!(
                "{label:<24} {rps:>10.0}   {:.3}   {p50:>6.2}   {p99:>6.2}",
                rps / off.0
            );
        }
        println!(
            "infertap targeting / in-process OTel SDK: {:.3} (req/s)",
            row(Arm::Targeted).0 / row(Arm::InProcess).0
        );
        if baseline.is_some() {
            println!(
                "this build targeting / baseline binary targeting: {:.3} (req/s)",
                row(Arm::Targeted).0 / row(Arm::Baseline).0
            );
        }
        for (label, k) in [
            ("targeting the server", &kernel),
            (
                "not targeting (every run leaves at the first lookup)",
                &kernel_untargeted,
            ),
        ] {
            print_kernel_costs(&format!(", {label}"), k);
        }
    }
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    Ok(())
}

/// nginx (Debian's package) serving one static file of `NGINX_FILE_BYTES`, from its own
/// configuration in a temporary directory, on 127.0.0.1: a fast C server, where the agent's cost
/// per request is not hidden behind the server's own.
struct Nginx {
    master: std::process::Child,
    dir: PathBuf,
}

const NGINX_FILE_BYTES: usize = 500;

impl Nginx {
    /// The worker process (`worker_processes 1`): the master's child.
    fn worker(&self) -> Result<u32> {
        let master = self.master.id();
        let mut worker = None;
        crate::demo::wait_until("the nginx worker", Duration::from_secs(10), || {
            worker = child_of(master);
            worker.is_some()
        })?;
        worker.context("nginx has no worker process")
    }

    fn start(port: u16) -> Result<Nginx> {
        let dir = std::env::temp_dir().join(format!("infertap-bench-nginx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www"))?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        std::fs::write(dir.join("www/file.html"), vec![b'x'; NGINX_FILE_BYTES])?;
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\n\
             daemon off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/tmp/body;\n\
               proxy_temp_path {d}/tmp/proxy;\n\
               fastcgi_temp_path {d}/tmp/fastcgi;\n\
               uwsgi_temp_path {d}/tmp/uwsgi;\n\
               scgi_temp_path {d}/tmp/scgi;\n\
               keepalive_requests 1000000;\n\
               server {{ listen 127.0.0.1:{port}; root {d}/www; }}\n\
             }}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let master = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let n = Nginx { master, dir };
        crate::demo::wait_until("nginx", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        Ok(n)
    }
}

/// The first process whose parent is `pid`.
fn child_of(pid: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&p| stat_fields(p).get(1).and_then(|v| v.parse().ok()) == Some(pid))
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces): the state
/// is index 0, the parent 1, utime 11, stime 12. Empty if the process is gone.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace().map(str::to_owned).collect()
}

/// CPU seconds (user, system) of this process's reaped children so far.
fn children_cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage writes into the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime))
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker (SIGKILL would leave the worker listening).
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.master.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.master.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ensure_nginx() -> Result<()> {
    if Command::new("nginx")
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .is_ok()
    {
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "nginx"]))
}

/// User and system CPU time a process has used, in seconds (`/proc/<pid>/stat`).
pub fn cpu_seconds(pid: u32) -> (f64, f64) {
    let f: Vec<u64> = stat_fields(pid)
        .iter()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    match f[..] {
        [user, sys] => (user as f64 / hz, sys as f64 / hz),
        _ => (0.0, 0.0),
    }
}

/// What one nginx arm of one round measured.
struct NginxRun {
    arm: Arm,
    rps: f64,
    requests: u64,
    /// Spans the agent finished (its `requests_completed`), for the targeting arms.
    spans: u64,
    /// Agent CPU over the run, user and system.
    agent_user_s: f64,
    agent_sys_s: f64,
    /// nginx's worker's CPU over the run (user, system): where the kernel programs of its
    /// traced syscalls are paid.
    nginx_s: (f64, f64),
    /// wrk's CPU over the run (user, system): an untargeted process's tax.
    wrk_s: (f64, f64),
}

/// The nginx arm: untraced vs traced (and the `--baseline` binary), interleaved in rounds.
pub fn run_nginx(rounds: usize, seconds: u64, baseline: Option<&Path>) -> Result<()> {
    ensure_wrk()?;
    ensure_nginx()?;
    let port = free_port()?;
    let nginx = Nginx::start(port)?;
    let worker = nginx.worker()?;
    let url = format!("http://127.0.0.1:{port}/file.html");
    wrk_run(&url, 16, 1, None)?; // warm up
    let mut results: Vec<NginxRun> = Vec::new();
    for round in 0..rounds {
        for arm in [Arm::Off, Arm::Targeted, Arm::CaptureOnly, Arm::Baseline] {
            let bin = match arm {
                Arm::Off => None,
                Arm::Baseline => match baseline {
                    Some(b) => Some(b.to_path_buf()),
                    None => continue,
                },
                _ => Some(agent_binary()),
            };
            let debug = format!("127.0.0.1:{}", free_port()?);
            let agent = match &bin {
                None => None,
                Some(bin) => {
                    let mut cmd = agent_command_of(bin, &debug);
                    cmd.args(["--target-port", &port.to_string()])
                        .env("RUST_LOG", "warn");
                    if arm == Arm::CaptureOnly {
                        cmd.arg("--capture-only");
                    }
                    let a = Kill(cmd.spawn()?);
                    wait_targeted(&debug)?;
                    // Master and worker both hold the listener: wait for the owner scan.
                    std::thread::sleep(Duration::from_millis(1500));
                    Some(a)
                }
            };
            let before = agent
                .as_ref()
                .map(|a| (cpu_seconds(a.0.id()), completed(&debug)));
            let nginx0 = cpu_seconds(worker);
            let children0 = children_cpu_seconds();
            let w = wrk_run(&url, 16, seconds, None)?;
            // wrk is the only child reaped during its run: the agent is reaped at its drop below.
            let children1 = children_cpu_seconds();
            let nginx1 = cpu_seconds(worker);
            let nginx_s = (nginx1.0 - nginx0.0, nginx1.1 - nginx0.1);
            let wrk_s = (children1.0 - children0.0, children1.1 - children0.1);
            let (mut spans, mut agent_user_s, mut agent_sys_s) = (0, 0.0, 0.0);
            if let (Some(a), Some(((user0, sys0), done0))) = (&agent, before) {
                std::thread::sleep(Duration::from_millis(1200)); // one housekeeping tick
                let (user, sys) = cpu_seconds(a.0.id());
                (agent_user_s, agent_sys_s) = (user - user0, sys - sys0);
                spans = completed(&debug).saturating_sub(done0);
                let st = get_json(&format!("http://{debug}/status"))?;
                eprintln!(
                    "round {round}: {arm:?}: kernel dropped {}, lost bytes {}",
                    st["records"]["kernel_dropped"], st["records"]["lost_bytes"]
                );
            }
            drop(agent);
            eprintln!(
                "round {round}: nginx {arm:?}: {:.0} req/s, {} responses, {} spans, agent CPU user {:.2} s sys {:.2} s",
                w.rps, w.requests, spans, agent_user_s, agent_sys_s
            );
            results.push(NginxRun {
                arm,
                rps: w.rps,
                requests: w.requests,
                spans,
                agent_user_s,
                agent_sys_s,
                nginx_s,
                wrk_s,
            });
        }
    }
    let med = |arm: Arm, f: &dyn Fn(&NginxRun) -> f64| {
        median(
            &mut results
                .iter()
                .filter(|r| r.arm == arm)
                .map(f)
                .collect::<Vec<_>>(),
        )
    };
    let off = med(Arm::Off, &|r| r.rps);
    println!(
        "\n== nginx, {NGINX_FILE_BYTES}-byte static file: {rounds} rounds of {seconds}s, wrk -t1 -c16, medians (arms interleaved)"
    );
    println!(
        "                          req/s   ratio   spans/responses   agent µs/request: user    sys   nginx µs/request: user    sys   wrk µs/request: user    sys"
    );
    // A figure in CPU seconds over the run, as µs per response.
    let per_req =
        |arm: Arm, f: fn(&NginxRun) -> f64| med(arm, &|r| f(r) * 1e6 / r.requests.max(1) as f64);
    let others = |arm: Arm| {
        format!(
            "   {:>22.2} {:>6.2}   {:>20.2} {:>6.2}",
            per_req(arm, |r| r.nginx_s.0),
            per_req(arm, |r| r.nginx_s.1),
            per_req(arm, |r| r.wrk_s.0),
            per_req(arm, |r| r.wrk_s.1)
        )
    };
    for (label, arm) in [
        ("agent off", Arm::Off),
        ("agent targeting nginx", Arm::Targeted),
        ("capture only", Arm::CaptureOnly),
        ("baseline binary", Arm::Baseline),
    ] {
        if !results.iter().any(|r| r.arm == arm) {
            continue;
        }
        let rps = med(arm, &|r| r.rps);
        if arm == Arm::Off {
            println!(
                "{label:<22} {rps:>10.0}   1.000   {:>15}   {:>22} {:>6}{}",
                "",
                "",
                "",
                others(arm)
            );
            continue;
        }
        let coverage = med(arm, &|r| r.spans as f64 / r.requests.max(1) as f64);
        // Per response, as nginx's and wrk's: a build that makes no span still has a cost.
        let user = per_req(arm, |r| r.agent_user_s);
        let sys = per_req(arm, |r| r.agent_sys_s);
        println!(
            "{label:<22} {rps:>10.0}   {:.3}   {coverage:>15.4}   {user:>22.2} {sys:>6.2}{}",
            rps / off,
            others(arm)
        );
    }
    Ok(())
}

/// Requests the agent has finished (`/status` `http.requests_*` that end in a span).
fn completed(debug: &str) -> u64 {
    get_json(&format!("http://{debug}/status"))
        .map(|st| {
            [
                "requests_completed",
                "requests_cancelled",
                "requests_server_aborted",
                "requests_incomplete",
            ]
            .iter()
            .filter_map(|k| st["http"][k].as_u64())
            .sum()
        })
        .unwrap_or(0)
}
