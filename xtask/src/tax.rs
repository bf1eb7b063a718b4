//! `cargo xtask bench-tax`: what the agent costs the processes it does not trace. Syscall
//! tracepoints run for every process on the node; this measures, by wall clock (no `bpf_stats`,
//! whose own clock reads would be part of the figure), three loops of untargeted syscalls:
//!
//! - `dd if=/dev/zero of=/dev/null bs=1`: one `read` and one `write` per byte (file I/O);
//! - `getppid` in a loop: a syscall infertap attaches nothing to;
//! - a pipe ping-pong between two threads: one byte each way, two `write`s and two `read`s per
//!   round trip.
//!
//! Arms, interleaved in rounds: the agent off; the agent attached and targeting nothing (a
//! sleeping process); with `--baseline`, another build of the agent the same way. Reported: the
//! median time per syscall of each loop and arm, and what each agent adds per syscall.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench::median;
use crate::demo::{agent_command, free_port, wait_targeted, Kill};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arm {
    Off,
    Attached,
    Baseline,
}

const LOOPS: [&str; 3] = ["dd bs=1 (read+write)", "getppid", "pipe ping-pong"];

/// ns per syscall of loop `i`, `n` iterations.
fn measure(i: usize, n: u64) -> Result<f64> {
    match i {
        0 => {
            let start = Instant::now();
            let st = Command::new("dd")
                .args([
                    "if=/dev/zero",
                    "of=/dev/null",
                    "bs=1",
                    &format!("count={n}"),
                ])
                .stderr(Stdio::null())
                .status()
                .context("running dd")?;
            if !st.success() {
                bail!("dd failed: {st}");
            }
            Ok(start.elapsed().as_nanos() as f64 / (2 * n) as f64)
        }
        1 => {
            let start = Instant::now();
            for _ in 0..n {
                // SAFETY: getppid has no preconditions (the raw syscall: never cached by libc).
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            Ok(start.elapsed().as_nanos() as f64 / n as f64)
        }
        _ => {
            let (mut a_r, mut b_w) = pipe()?;
            let (mut b_r, mut a_w) = pipe()?;
            let echo = std::thread::spawn(move || -> std::io::Result<()> {
                let mut byte = [0u8; 1];
                for _ in 0..n {
                    a_r.read_exact(&mut byte)?;
                    a_w.write_all(&byte)?;
                }
                Ok(())
            });
            let start = Instant::now();
            let mut byte = [7u8; 1];
            for _ in 0..n {
                b_w.write_all(&byte)?;
                b_r.read_exact(&mut byte)?;
            }
            let ns = start.elapsed().as_nanos() as f64 / (4 * n) as f64;
            echo.join().map_err(|_| anyhow::anyhow!("echo thread"))??;
            Ok(ns)
        }
    }
}

/// A pipe: (read end, write end).
fn pipe() -> Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

pub fn run(rounds: usize, iterations: u64, baseline: Option<&Path>) -> Result<()> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let sleeper = Kill(Command::new("sleep").arg("100000").spawn()?);
    let mut arms = vec![Arm::Off, Arm::Attached];
    if baseline.is_some() {
        arms.push(Arm::Baseline);
    }
    // dd: two syscalls per byte; the ping-pong blocks on every byte (a thread wake-up each way),
    // so it runs a tenth as many round trips.
    let per_loop = |i: usize| match i {
        0 => iterations * 2,
        1 => iterations,
        _ => (iterations / 10).max(1),
    };
    // Warm up (page cache for dd, CPU frequency).
    for i in 0..LOOPS.len() {
        measure(i, per_loop(i) / 10)?;
    }
    let mut times: Vec<(Arm, usize, f64)> = Vec::new();
    for round in 0..rounds {
        for &arm in &arms {
            let debug = format!("127.0.0.1:{}", free_port()?);
            let agent = match arm {
                Arm::Off => None,
                Arm::Attached | Arm::Baseline => {
                    let mut cmd = agent_command(&debug);
                    if let (Arm::Baseline, Some(b)) = (arm, baseline) {
                        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
                        cmd = Command::new(b);
                        cmd.args(args);
                    }
                    let a = Kill(
                        cmd.args(["--target-pid", &sleeper.0.id().to_string()])
                            .env("RUST_LOG", "warn")
                            .spawn()?,
                    );
                    wait_targeted(&debug)?;
                    std::thread::sleep(Duration::from_millis(500));
                    Some(a)
                }
            };
            for (i, name) in LOOPS.iter().enumerate() {
                let ns = measure(i, per_loop(i))?;
                eprintln!("round {round}: {arm:?}: {name}: {ns:.1} ns per syscall");
                times.push((arm, i, ns));
            }
            drop(agent);
        }
    }
    let med = |arm: Arm, i: usize| {
        median(
            &mut times
                .iter()
                .filter(|(a, l, _)| *a == arm && *l == i)
                .map(|(_, _, t)| *t)
                .collect::<Vec<_>>(),
        )
    };
    println!("\n== {rounds} interleaved rounds, medians, ns per untargeted syscall");
    print!("{:<24}{:>12}{:>14}", "loop", "agent off", "attached");
    if baseline.is_some() {
        print!("{:>14}", "baseline");
    }
    println!("{:>16}", "added (attached)");
    for (i, name) in LOOPS.iter().enumerate() {
        let off = med(Arm::Off, i);
        let on = med(Arm::Attached, i);
        print!("{name:<24}{off:>12.1}{on:>14.1}");
        if baseline.is_some() {
            print!("{:>14.1}", med(Arm::Baseline, i));
        }
        print!("{:>16.1}", on - off);
        if baseline.is_some() {
            print!("   (baseline adds {:.1})", med(Arm::Baseline, i) - off);
        }
        println!();
    }
    Ok(())
}
