//! `cargo xtask bench-tax`: what the agent costs the processes it does not trace. Syscall
//! tracepoints run for every process on the node; this measures, by wall clock (no `bpf_stats`,
//! whose own clock reads would be part of the figure), three loops of untargeted syscalls:
//!
//! - `dd if=/dev/zero of=/dev/null bs=1`: one `read` and one `write` per byte (file I/O);
//! - `getppid` in a loop: a syscall infertap attaches nothing to;
//! - a pipe ping-pong between two threads: one byte each way, two `write`s and two `read`s per
//!   round trip.
//!
//! - a loopback TCP ping-pong between two threads (`write`/`read` on sockets): the I/O the agent
//!   captures when the process is targeted, here untargeted.
//!
//! Arms, interleaved in rounds: the agent off; the agent attached and targeting nothing (a
//! sleeping process); with `--baseline`, another build of the agent the same way. Reported: the
//! median time per syscall of each loop and arm, and what each agent adds per syscall.
//!
//! With `--floor`, more arms load the bench-only object `infertap-floor`
//! (`ebpf/probes/src/floor.rs`; the agent never loads it) instead of the agent: programs that do
//! only what every untargeted run does (one `TARGETS` bitmap load) on (a) the `read`/`write`
//! syscall tracepoints — the floor of the agent's design; (b) the `raw_syscalls` raw tracepoints;
//! (c) the same as BTF-typed raw tracepoints (`tp_btf`); (d) BPF trampolines (fentry/fexit) on
//! `sock_recvmsg`/`sock_sendmsg`, which file and pipe I/O never reach; (e) BPF-LSM
//! `socket_recvmsg`/`socket_sendmsg`. A design the kernel refuses is reported and left out.

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
    /// `infertap-floor`: empty-bitmap programs on the `read`/`write` syscall tracepoints.
    FloorTracepoint,
    /// `infertap-floor`: the same on `raw_syscalls/sys_enter`/`sys_exit`.
    FloorRawTracepoint,
    /// `infertap-floor`: the same as BTF-typed raw tracepoints (`tp_btf`) on `sys_enter`/`sys_exit`.
    FloorBtfTracepoint,
    /// `infertap-floor`: the same as fentry/fexit on `sock_recvmsg`/`sock_sendmsg`.
    FloorFentry,
    /// `infertap-floor`: the same as BPF-LSM `socket_recvmsg`/`socket_sendmsg`.
    FloorLsm,
}

impl Arm {
    fn label(self) -> &'static str {
        match self {
            Arm::Off => "agent off",
            Arm::Attached => "attached",
            Arm::Baseline => "baseline",
            Arm::FloorTracepoint => "floor: tp",
            Arm::FloorRawTracepoint => "floor: raw tp",
            Arm::FloorBtfTracepoint => "floor: tp_btf",
            Arm::FloorFentry => "floor: fentry",
            Arm::FloorLsm => "floor: lsm",
        }
    }
}

const LOOPS: [&str; 4] = [
    "dd bs=1 (read+write)",
    "getppid",
    "pipe ping-pong",
    "TCP ping-pong",
];

/// The bench-only floor programs of one design, loaded and attached (detached on drop).
struct Floor {
    _ebpf: aya::Ebpf,
}

impl Floor {
    fn attach(arm: Arm) -> Result<Floor> {
        use aya::programs::{BtfTracePoint, FEntry, FExit, Lsm, RawTracePoint, TracePoint};
        let path =
            crate::root().join("ebpf/probes/target/bpfel-unknown-none/release/infertap-floor");
        let mut ebpf =
            aya::Ebpf::load_file(&path).with_context(|| format!("loading {}", path.display()))?;
        match arm {
            Arm::FloorTracepoint => {
                for (name, tp) in [
                    ("tp_enter_read", "sys_enter_read"),
                    ("tp_exit_read", "sys_exit_read"),
                    ("tp_enter_write", "sys_enter_write"),
                    ("tp_exit_write", "sys_exit_write"),
                ] {
                    let p: &mut TracePoint = program(&mut ebpf, name)?.try_into()?;
                    p.load()?;
                    p.attach("syscalls", tp)?;
                }
            }
            Arm::FloorRawTracepoint => {
                for (name, tp) in [("raw_enter", "sys_enter"), ("raw_exit", "sys_exit")] {
                    let p: &mut RawTracePoint = program(&mut ebpf, name)?.try_into()?;
                    p.load()?;
                    p.attach(tp)?;
                }
            }
            Arm::FloorBtfTracepoint => {
                let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
                for (name, tp) in [("btf_enter", "sys_enter"), ("btf_exit", "sys_exit")] {
                    let p: &mut BtfTracePoint = program(&mut ebpf, name)?.try_into()?;
                    p.load(tp, &btf)?;
                    p.attach()?;
                }
            }
            Arm::FloorFentry => {
                let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
                for f in ["recvmsg", "sendmsg"] {
                    let p: &mut FEntry = program(&mut ebpf, &format!("fentry_{f}"))?.try_into()?;
                    p.load(&format!("sock_{f}"), &btf)?;
                    p.attach()?;
                    let p: &mut FExit = program(&mut ebpf, &format!("fexit_{f}"))?.try_into()?;
                    p.load(&format!("sock_{f}"), &btf)?;
                    p.attach()?;
                }
            }
            Arm::FloorLsm => {
                let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
                for f in ["recvmsg", "sendmsg"] {
                    let p: &mut Lsm = program(&mut ebpf, &format!("lsm_{f}"))?.try_into()?;
                    p.load(&format!("socket_{f}"), &btf)?;
                    p.attach()?;
                }
            }
            _ => bail!("{arm:?} is not a floor arm"),
        }
        Ok(Floor { _ebpf: ebpf })
    }
}

fn program<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("no program {name} in infertap-floor"))
}

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
        3 => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let echo = std::thread::spawn(move || -> std::io::Result<()> {
                let (mut s, _) = listener.accept()?;
                let mut byte = [0u8; 1];
                for _ in 0..n {
                    s.read_exact(&mut byte)?;
                    s.write_all(&byte)?;
                }
                Ok(())
            });
            let mut c = std::net::TcpStream::connect(addr)?;
            c.set_nodelay(true)?;
            let start = Instant::now();
            let mut byte = [7u8; 1];
            for _ in 0..n {
                c.write_all(&byte)?;
                c.read_exact(&mut byte)?;
            }
            let ns = start.elapsed().as_nanos() as f64 / (4 * n) as f64;
            echo.join().map_err(|_| anyhow::anyhow!("echo thread"))??;
            Ok(ns)
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

pub fn run(rounds: usize, iterations: u64, baseline: Option<&Path>, floor: bool) -> Result<()> {
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let sleeper = Kill(Command::new("sleep").arg("100000").spawn()?);
    let mut arms = vec![Arm::Off, Arm::Attached];
    if baseline.is_some() {
        arms.push(Arm::Baseline);
    }
    if floor {
        // A design this kernel refuses (a program type it will not load or attach) is said so
        // and left out, not a failure of the benchmark.
        for arm in [
            Arm::FloorTracepoint,
            Arm::FloorRawTracepoint,
            Arm::FloorBtfTracepoint,
            Arm::FloorFentry,
            Arm::FloorLsm,
        ] {
            match Floor::attach(arm) {
                Ok(_) => arms.push(arm),
                Err(e) => println!("{}: this kernel refused it: {e:#}", arm.label()),
            }
        }
    }
    // dd: two syscalls per byte; the ping-pong blocks on every byte (a thread wake-up each way),
    // so it runs a tenth as many round trips.
    let per_loop = |i: usize| match i {
        0 => iterations * 2,
        1 => iterations,
        _ => (iterations / 10).max(1), // the ping-pongs
    };
    // Warm up (page cache for dd, CPU frequency).
    for i in 0..LOOPS.len() {
        measure(i, per_loop(i) / 10)?;
    }
    let mut times: Vec<(Arm, usize, f64)> = Vec::new();
    for round in 0..rounds {
        for &arm in &arms {
            let debug = format!("127.0.0.1:{}", free_port()?);
            let floor = match arm {
                Arm::Off | Arm::Attached | Arm::Baseline => None,
                _ => Some(Floor::attach(arm)?),
            };
            let agent = match arm {
                Arm::Off
                | Arm::FloorTracepoint
                | Arm::FloorRawTracepoint
                | Arm::FloorBtfTracepoint
                | Arm::FloorFentry
                | Arm::FloorLsm => None,
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
            drop(floor);
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
    print!("{:<24}", "loop");
    for arm in &arms {
        print!("{:>15}", arm.label());
    }
    println!();
    for (i, name) in LOOPS.iter().enumerate() {
        print!("{name:<24}");
        for &arm in &arms {
            print!("{:>15.1}", med(arm, i));
        }
        println!();
    }
    println!("\nadded per syscall (arm minus agent off):");
    for (i, name) in LOOPS.iter().enumerate() {
        let off = med(Arm::Off, i);
        print!("{name:<24}{:>15}", "");
        for &arm in arms.iter().skip(1) {
            print!("{:>+15.1}", med(arm, i) - off);
        }
        println!();
    }
    Ok(())
}
