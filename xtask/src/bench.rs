//! `cargo xtask bench-overhead`: requests/s of a loopback inference server (the uvicorn stand-in)
//! under `wrk`, with the agent off, on but not targeting it, and targeting it — interleaved in
//! rounds, medians reported as ratios — plus the kernel's own cost per program run
//! (`kernel.bpf_stats_enabled`, read from the agent's /status).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::demo::{free_port, get_json, start_standin, wait_targeted, Kill};
use crate::{agent_binary, run};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arm {
    Off,
    Untargeted,
    Targeted,
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

fn wrk(port: u16, seconds: u64, script: Option<&Path>) -> Result<f64> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t", "1", "-c", "8", "-d", &format!("{seconds}s")]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}/health"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn run_bench(python: &Path, rounds: usize, seconds: u64) -> Result<()> {
    ensure_wrk()?;
    let port = free_port()?;
    let _server = start_standin(
        python,
        port,
        &["--ttft-ms", "0", "--token-interval-ms", "0"],
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
        let mut results: Vec<(Arm, f64)> = Vec::new();
        let mut kernel: Vec<(String, u64, u64)> = Vec::new();
        let mut kernel_untargeted: Vec<(String, u64, u64)> = Vec::new();
        wrk(port, 1, script)?; // warm up
        for round in 0..rounds {
            for arm in [Arm::Off, Arm::Untargeted, Arm::Targeted] {
                let debug_port = free_port()?;
                let debug = format!("127.0.0.1:{debug_port}");
                let agent = match arm {
                    Arm::Off => None,
                    Arm::Untargeted | Arm::Targeted => {
                        let target = if arm == Arm::Targeted {
                            vec!["--target-port".to_string(), port.to_string()]
                        } else {
                            vec!["--target-pid".to_string(), sleeper.0.id().to_string()]
                        };
                        let a = Kill(
                            Command::new(agent_binary())
                                .args(["--mode", "standalone", "--debug-addr", &debug])
                                .args(&target)
                                .env("RUST_LOG", "warn")
                                .spawn()?,
                        );
                        wait_targeted(&debug)?;
                        Some(a)
                    }
                };
                let rps = wrk(port, seconds, script)?;
                if agent.is_some() {
                    std::thread::sleep(Duration::from_millis(1200)); // one housekeeping tick
                    let st = get_json(&format!("http://{debug}/status"))?;
                    let probes: Vec<(String, u64, u64)> = st["probes"]
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
                        .unwrap_or_default();
                    let dest = if arm == Arm::Targeted {
                        &mut kernel
                    } else {
                        &mut kernel_untargeted
                    };
                    for (n, c, t) in probes {
                        match dest.iter_mut().find(|(m, _, _)| *m == n) {
                            Some(e) => {
                                e.1 += c;
                                e.2 += t;
                            }
                            None => dest.push((n, c, t)),
                        }
                    }
                    if arm == Arm::Targeted {
                        let spans: Value = get_json(&format!("http://{debug}/status"))?;
                        eprintln!("round {round}: targeted: http = {}", spans["http"]);
                    }
                }
                drop(agent);
                eprintln!("round {round}: {arm:?}: {rps:.0} req/s");
                results.push((arm, rps));
            }
        }
        let med = |arm: Arm| {
            median(
                &mut results
                    .iter()
                    .filter(|(a, _)| *a == arm)
                    .map(|(_, r)| *r)
                    .collect::<Vec<_>>(),
            )
        };
        let off = med(Arm::Off);
        let untargeted = med(Arm::Untargeted);
        let targeted = med(Arm::Targeted);
        println!("\n== {name}: {rounds} rounds of {seconds}s, wrk -t1 -c8, medians");
        println!("agent off              {off:>10.0} req/s   1.000");
        println!(
            "agent on, not targeted {untargeted:>10.0} req/s   {:.3}",
            untargeted / off
        );
        println!(
            "agent on, targeting    {targeted:>10.0} req/s   {:.3}",
            targeted / off
        );
        for (label, k) in [
            ("targeting the server", &kernel),
            (
                "not targeting (every run leaves at the first lookup)",
                &kernel_untargeted,
            ),
        ] {
            println!("kernel cost per program run, {label}:");
            for (n, c, t) in k.iter().filter(|(_, c, _)| *c > 0) {
                println!(
                    "  {n:<22} {c:>10} runs {:>8.0} ns/run",
                    *t as f64 / *c as f64
                );
            }
        }
    }
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    Ok(())
}
