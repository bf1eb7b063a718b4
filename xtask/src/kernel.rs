//! `cargo xtask bench-kernel`: what tracing adds to one socket syscall, measured two ways in one
//! run. A small process (this binary, hidden subcommand `syscall-loop`) makes round trips of
//! `--size` bytes over a loopback TCP connection to itself: each round trip is four socket
//! syscalls (the client's `sendto`, the server's `recvfrom` and `sendto`, the client's
//! `recvfrom`), the shape of an inference server's small reads and writes. Arms, interleaved in
//! rounds: no agent; the agent running but targeting another process; the agent targeting the
//! loop. Reported: the median wall-clock time per round trip of each arm, the difference per
//! syscall (everything tracing adds: tracepoint dispatch, the programs, the statistics' clock
//! reads), and the kernel's own figure per program run (`kernel.bpf_stats_enabled`, from the
//! agent's /status).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench::{add_stats, median, print_kernel_costs, probe_stats};
use crate::demo::{agent_command, free_port, get_json, wait_targeted, Kill};

/// The loop process: listens, then for each `go N` line on stdin opens a connection to itself,
/// makes N round trips and prints `NS_PER_ROUND_TRIP <ns>`.
pub fn syscall_loop(size: usize) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the loop's listener")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; size];
                while s.read_exact(&mut buf).is_ok() {
                    if s.write_all(&buf).is_err() {
                        break;
                    }
                }
            });
        }
    });
    println!("LISTENING {port}");
    std::io::stdout().flush()?;
    let payload = vec![b'x'; size];
    let mut back = vec![0u8; size];
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let n: u64 = line
            .strip_prefix("go ")
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("expected `go N`, got {line:?}"))?;
        let mut c = TcpStream::connect(("127.0.0.1", port))?;
        c.set_nodelay(true)?;
        let start = Instant::now();
        for _ in 0..n {
            c.write_all(&payload)?;
            c.read_exact(&mut back)?;
        }
        let ns = start.elapsed().as_nanos() as f64 / n as f64;
        println!("NS_PER_ROUND_TRIP {ns:.1}");
        std::io::stdout().flush()?;
    }
    Ok(())
}

struct Loop {
    _kill: Kill,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    port: u16,
}

impl Loop {
    fn start(size: usize) -> Result<Loop> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["syscall-loop", "--size", &size.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the syscall loop")?;
        let stdin = child.stdin.take().context("loop stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("loop stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let port = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("syscall loop said {line:?}"))?;
        Ok(Loop {
            _kill: Kill(child),
            stdin,
            stdout,
            port,
        })
    }

    fn go(&mut self, round_trips: u64) -> Result<f64> {
        writeln!(self.stdin, "go {round_trips}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        line.trim()
            .strip_prefix("NS_PER_ROUND_TRIP ")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("syscall loop said {line:?}"))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arm {
    Off,
    Untargeted,
    Targeted,
    /// `--baseline-agent`: another build of the agent targeting the loop (before/after in one run).
    Baseline,
}

pub fn run(rounds: usize, round_trips: u64, size: usize, baseline: Option<&Path>) -> Result<()> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let mut lp = Loop::start(size)?;
    lp.go(round_trips / 10)?; // warm up
    let sleeper = Kill(Command::new("sleep").arg("100000").spawn()?);
    let mut times: Vec<(Arm, f64)> = Vec::new();
    let mut kernel: Vec<(String, u64, u64)> = Vec::new();
    let mut kernel_untargeted: Vec<(String, u64, u64)> = Vec::new();
    let mut kernel_baseline: Vec<(String, u64, u64)> = Vec::new();
    let mut arms = vec![Arm::Off, Arm::Untargeted, Arm::Targeted];
    if baseline.is_some() {
        arms.push(Arm::Baseline);
    }
    for round in 0..rounds {
        for &arm in &arms {
            let debug = format!("127.0.0.1:{}", free_port()?);
            let agent = match arm {
                Arm::Off => None,
                Arm::Untargeted | Arm::Targeted | Arm::Baseline => {
                    let target = if arm != Arm::Untargeted {
                        ["--target-port".to_string(), lp.port.to_string()]
                    } else {
                        ["--target-pid".to_string(), sleeper.0.id().to_string()]
                    };
                    let mut cmd = agent_command(&debug);
                    if let (Arm::Baseline, Some(b)) = (arm, baseline) {
                        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
                        cmd = Command::new(b);
                        cmd.args(args);
                    } else {
                        // Statistics are off by default; the per-program figures need them.
                        cmd.arg("--bpf-stats");
                    }
                    let a = Kill(cmd.args(&target).env("RUST_LOG", "warn").spawn()?);
                    wait_targeted(&debug)?;
                    Some(a)
                }
            };
            let before = match &agent {
                Some(_) => probe_stats(&debug)?,
                None => Vec::new(),
            };
            let ns = lp.go(round_trips)?;
            if agent.is_some() {
                std::thread::sleep(Duration::from_millis(1200)); // the agent refreshes stats each second
                let after = probe_stats(&debug)?;
                let delta: Vec<(String, u64, u64)> = after
                    .into_iter()
                    .map(|(n, c, t)| {
                        let (c0, t0) = before
                            .iter()
                            .find(|(m, _, _)| *m == n)
                            .map(|(_, c, t)| (*c, *t))
                            .unwrap_or((0, 0));
                        (n, c.saturating_sub(c0), t.saturating_sub(t0))
                    })
                    .collect();
                if arm != Arm::Untargeted {
                    let st = get_json(&format!("http://{debug}/status"))?;
                    eprintln!(
                        "round {round}: targeted: kernel drops {}, http {}",
                        st["records"]["kernel_dropped"], st["http"]
                    );
                    if arm == Arm::Targeted {
                        add_stats(&mut kernel, delta);
                    } else {
                        add_stats(&mut kernel_baseline, delta);
                    }
                } else {
                    add_stats(&mut kernel_untargeted, delta);
                }
            }
            drop(agent);
            eprintln!("round {round}: {arm:?}: {ns:.0} ns per round trip");
            times.push((arm, ns));
        }
    }
    let med = |arm: Arm| {
        median(
            &mut times
                .iter()
                .filter(|(a, _)| *a == arm)
                .map(|(_, t)| *t)
                .collect::<Vec<_>>(),
        )
    };
    let off = med(Arm::Off);
    println!(
        "\n== {rounds} rounds of {round_trips} round trips of {size} bytes (4 socket syscalls each), medians"
    );
    println!("                          ns/round trip   added per syscall");
    for (label, arm) in [
        ("agent off", Arm::Off),
        ("agent on, not targeted", Arm::Untargeted),
        ("agent on, targeting", Arm::Targeted),
        ("baseline build, targeting", Arm::Baseline),
    ] {
        if !arms.contains(&arm) {
            continue;
        }
        let t = med(arm);
        println!("{label:<24} {t:>14.0}   {:>12.0} ns", (t - off) / 4.0);
    }
    for (label, k) in [
        ("targeting the loop", &kernel),
        ("baseline build targeting the loop", &kernel_baseline),
        (
            "not targeting (every run leaves at the first lookup)",
            &kernel_untargeted,
        ),
    ] {
        print_kernel_costs(&format!(" (bpf_stats), {label}"), k);
    }
    Ok(())
}
