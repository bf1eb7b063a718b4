//! Project tasks: `cargo xtask <setup|build|test|lint|demo>`.
//!
//! Every task installs what it needs idempotently (nightly rust-src, bpf-linker linked to the
//! nightly's own LLVM, the Python venv for test peers), so a fresh machine needs nothing by hand.

mod bench;
mod demo;
mod deps;
mod dist;
mod fuzz;
mod gpu_check;
mod kernel;
mod rss;
mod setup;
mod stream;
mod tax;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the build and test toolchain pieces (idempotent).
    Setup,
    /// Build the eBPF programs and the agent (target/release/infertap with the object embedded).
    Build,
    /// Build, then split the shipped binary: target/dist/infertap (stripped) and
    /// target/dist/infertap.debug (its symbols and debug info, for symbolising).
    Dist,
    /// Run every test, root-only integration tests included.
    Test {
        /// Fail (instead of skipping) when root-only tests cannot run. Set automatically when CI=true.
        #[arg(long)]
        require_root: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter), after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Formatting, clippy (host and eBPF crates) and lock-file checks.
    Lint,
    /// Requests/s of a loopback inference server with the agent off, idle and tracing it
    /// (interleaved rounds, medians as ratios), and the kernel cost per program run; then nginx
    /// serving a static file, untraced vs traced, with the agent's CPU per request.
    BenchOverhead {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Another agent binary (an earlier build) to measure in the same rounds, targeting.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Which servers: `all`, `standin` (the uvicorn stand-in) or `nginx`.
        #[arg(long, default_value = "all", value_parser = ["all", "standin", "nginx"])]
        workload: String,
    },
    /// The agent's RSS at start and with many open keep-alive connections to a traced server.
    BenchRss {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Another agent binary (an earlier build) measured after this one, same steps.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// Extra agent flags, e.g. `--agent-arg=--ring-buffer-size=8388608` (repeatable).
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
    },
    /// Run the agent's NVML sampler against the machine's NVML (or `--nvml-lib`, or a fake with
    /// `--fake-gpus N`) and print per-call latency, sample spacing, GPM figures, the timestamp
    /// clock and the sampler's cost (docs/gpu.md). Under three minutes.
    GpuCheck {
        #[arg(long)]
        nvml_lib: Option<PathBuf>,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Build gpu/fake-nvml and run against this many scripted GPUs.
        #[arg(long)]
        fake_gpus: Option<u32>,
        /// Also print the /gpu JSON at the end.
        #[arg(long)]
        json: bool,
    },
    /// A streaming campaign: SSE chunks/s with and without the agent, every chunk counted, then
    /// beyond capacity (small ring buffer): drops counted, spans marked incomplete.
    BenchStream {
        /// Concurrent streams.
        #[arg(long, default_value_t = 64)]
        streams: usize,
        /// Token chunks per response.
        #[arg(long, default_value_t = 200)]
        chunks: usize,
        /// Pause between chunks of one stream, µs.
        #[arg(long, default_value_t = 2000)]
        interval_us: u64,
        /// Seconds per arm.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// What tracing adds to one socket syscall: wall-clock time per loopback round trip with the
    /// agent off, idle and targeting (interleaved rounds, medians), and the kernel's cost per
    /// program run (`bpf_stats`).
    BenchKernel {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Round trips per arm and round (4 socket syscalls each).
        #[arg(long, default_value_t = 200_000)]
        round_trips: u64,
        /// Bytes each way per round trip.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Another build of the agent (a binary) to run as a fourth arm, for before/after figures
        /// from one run.
        #[arg(long)]
        baseline_agent: Option<PathBuf>,
    },
    /// What the agent costs processes it does not trace: wall-clock ns per syscall of a `dd bs=1`
    /// loop, a `getppid` loop and a pipe ping-pong, agent off vs attached targeting nothing
    /// (interleaved rounds, medians).
    BenchTax {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Iterations per loop, arm and round (dd copies twice as many bytes; the pipe ping-pong
        /// makes a tenth as many round trips).
        #[arg(long, default_value_t = 1_000_000)]
        iterations: u64,
        /// Another build of the agent (a binary) as a third arm, for before/after in one run.
        #[arg(long)]
        baseline_agent: Option<PathBuf>,
        /// Also the floor of each capture design: the bench-only `infertap-floor` programs on
        /// syscall tracepoints, raw syscall tracepoints and fentry/fexit on the socket functions.
        #[arg(long)]
        floor: bool,
    },
    /// The loop process of bench-kernel (its own process, so that only it is traced).
    #[command(hide = true)]
    SyscallLoop {
        #[arg(long)]
        size: usize,
    },
    /// The SSE server of bench-stream (runs as its own process, so that only it is traced).
    #[command(hide = true)]
    StreamServer {
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long)]
        chunks: usize,
        #[arg(long)]
        interval_us: u64,
    },
    /// Run every cargo-fuzz target in fuzz/ for a fixed time (after replaying the saved
    /// regression inputs), and summarise runs, coverage and crashes.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (repeatable); default: all of them.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Only replay fuzz/regressions/<target>/ once, without fuzzing.
        #[arg(long)]
        replay: bool,
    },
    /// Start the agent, a stand-in vLLM server and a client; print the captured requests.
    Demo {
        /// Stop by itself after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
    },
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn ebpf_object() -> PathBuf {
    root().join("ebpf/probes/target/bpfel-unknown-none/release/infertap-probes")
}

pub fn agent_binary() -> PathBuf {
    root().join("target/release/infertap")
}

/// The agent `bin` in standalone mode with its debug endpoint on `debug`.
pub fn agent_command_of(bin: &Path, debug: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--mode", "standalone", "--debug-addr", debug]);
    cmd
}

fn build_ebpf() -> Result<()> {
    setup::toolchain()?;
    run(Command::new("cargo")
        .current_dir(root().join("ebpf/probes"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .env("PATH", setup::path_with_cargo_bin())
        .args([
            "+nightly",
            "build",
            "--locked",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ]))
}

fn build() -> Result<()> {
    build_ebpf()?;
    run(Command::new("cargo")
        .current_dir(root())
        .env("INFERTAP_EBPF_OBJECT", ebpf_object())
        .args(["build", "--locked", "--release", "-p", "infertap"]))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn test(require_root: bool, args: &[String]) -> Result<()> {
    let ci = std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false);
    let require_root = require_root || ci;
    build()?;
    let python = setup::python_env()?;
    if is_root() {
        deps::ensure_prometheus()?;
        deps::ensure_tls_test_tools()?;
        deps::ensure_browser()?;
    }
    if !is_root() {
        if require_root {
            bail!("the root-only integration tests must run, but this is not root: run `sudo -E cargo xtask test`");
        }
        eprintln!("xtask: not root — the eBPF integration tests will be SKIPPED (run as root to include them)");
    }
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .env("INFERTAP_EBPF_OBJECT", ebpf_object())
        .env("INFERTAP_BIN", agent_binary())
        .env("INFERTAP_PYTHON", &python)
        .env("INFERTAP_PEERS", root().join("tests/peers"))
        // Every test binary runs even after one fails: one CI run shows every failure.
        .args([
            "test",
            "--locked",
            "--release",
            "--workspace",
            "--no-fail-fast",
        ]);
    if require_root {
        cmd.env("INFERTAP_REQUIRE_ROOT", "1");
    }
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    run(&mut cmd)
}

/// The lines of TOML table `[name]` in `text`, comments and blank lines left out.
fn toml_table(text: &str, name: &str) -> Option<Vec<String>> {
    let header = format!("[{name}]");
    let mut lines = text.lines().map(str::trim);
    lines.find(|l| *l == header)?;
    Some(
        lines
            .take_while(|l| !l.starts_with('['))
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
    )
}

/// The lint levels live in `[workspace.lints]` of the root Cargo.toml: every member inherits them
/// (`[lints] workspace = true`), and the crates that are workspaces of their own (ebpf/probes,
/// fuzz) restate them in `[lints.rust]` and `[lints.clippy]`, which must match.
fn check_lint_tables() -> Result<()> {
    let read = |rel: &str| {
        std::fs::read_to_string(root().join(rel)).with_context(|| format!("reading {rel}"))
    };
    let ws = read("Cargo.toml")?;
    let mut problems = Vec::new();
    let members = toml_table(&ws, "workspace")
        .and_then(|t| t.into_iter().find(|l| l.starts_with("members")))
        .context("no `members` in the root Cargo.toml's [workspace]")?;
    for member in members.split('"').skip(1).step_by(2) {
        let manifest = format!("{member}/Cargo.toml");
        if toml_table(&read(&manifest)?, "lints") != Some(vec!["workspace = true".to_string()]) {
            problems.push(format!(
                "{manifest}: needs `[lints]` with `workspace = true` (the policy is [workspace.lints] in Cargo.toml)"
            ));
        }
    }
    for group in ["rust", "clippy"] {
        let policy = toml_table(&ws, &format!("workspace.lints.{group}"))
            .with_context(|| format!("the root Cargo.toml has no [workspace.lints.{group}]"))?;
        for manifest in ["ebpf/probes/Cargo.toml", "fuzz/Cargo.toml"] {
            if toml_table(&read(manifest)?, &format!("lints.{group}")).as_ref() != Some(&policy) {
                problems.push(format!(
                    "{manifest}: [lints.{group}] must restate [workspace.lints.{group}] of the root Cargo.toml line for line"
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!("lint policy out of step:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

fn lint() -> Result<()> {
    check_lint_tables()?;
    setup::toolchain()?;
    run(Command::new("cargo")
        .current_dir(root())
        .args(["fmt", "--all", "--check"]))?;
    // Which lints are on, and at which level, is [workspace.lints] in Cargo.toml (inherited by
    // every member); `-D warnings` only makes CI fail on anything that policy warns about.
    run(Command::new("cargo").current_dir(root()).args([
        "clippy",
        "--locked",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // ebpf/probes/rust-toolchain.toml selects the nightly (RUSTUP_TOOLCHAIN, when set, would
    // override it, so it is removed); its [lints] restate the workspace's.
    run(Command::new("cargo")
        .current_dir(root().join("ebpf/probes"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("PATH", setup::path_with_cargo_bin())
        .args(["fmt", "--check"]))?;
    run(Command::new("cargo")
        .current_dir(root().join("ebpf/probes"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("PATH", setup::path_with_cargo_bin())
        .args([
            "clippy",
            "--locked",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => {
            setup::toolchain()?;
            setup::python_env()?;
            if is_root() {
                deps::ensure_prometheus()?;
                deps::ensure_tls_test_tools()?;
                deps::ensure_browser()?;
            }
            Ok(())
        }
        Cmd::Build => build(),
        Cmd::Dist => {
            build()?;
            dist::dist()
        }
        Cmd::Test { require_root, args } => test(require_root, &args),
        Cmd::BenchStream {
            streams,
            chunks,
            interval_us,
            seconds,
        } => {
            build()?;
            stream::run_stream(streams, chunks, interval_us, seconds)
        }
        Cmd::BenchTax {
            rounds,
            iterations,
            baseline_agent,
            floor,
        } => {
            build()?;
            if !is_root() {
                bail!("the benchmark loads eBPF programs and must run as root");
            }
            tax::run(rounds, iterations, baseline_agent.as_deref(), floor)
        }
        Cmd::BenchKernel {
            rounds,
            round_trips,
            size,
            baseline_agent,
        } => {
            build()?;
            if !is_root() {
                bail!("the benchmark loads eBPF programs and must run as root");
            }
            kernel::run(rounds, round_trips, size, baseline_agent.as_deref())
        }
        Cmd::SyscallLoop { size } => kernel::syscall_loop(size),
        Cmd::StreamServer {
            port,
            chunks,
            interval_us,
        } => stream::serve(port, chunks, interval_us),
        Cmd::Fuzz {
            seconds,
            targets,
            replay,
        } => fuzz::fuzz(seconds, &targets, replay),
        Cmd::Lint => lint(),
        Cmd::BenchRss {
            connections,
            baseline,
            agent_args,
        } => {
            build()?;
            let python = setup::python_env()?;
            if !is_root() {
                bail!("the benchmark loads eBPF programs and must run as root");
            }
            rss::run_rss(&python, connections, &agent_binary(), &agent_args)?;
            if let Some(b) = baseline {
                println!("\n-- baseline binary {}", b.display());
                rss::run_rss(&python, connections, &b, &agent_args)?;
            }
            Ok(())
        }
        Cmd::BenchOverhead {
            rounds,
            seconds,
            baseline,
            workload,
        } => {
            build()?;
            let python = setup::python_env()?;
            if !is_root() {
                bail!("the benchmark loads eBPF programs and must run as root");
            }
            if workload != "nginx" {
                bench::run_bench(&python, rounds, seconds, baseline.clone())?;
            }
            if workload != "standin" {
                bench::run_nginx(rounds, seconds, baseline.as_deref())?;
            }
            Ok(())
        }
        Cmd::GpuCheck {
            nvml_lib,
            seconds,
            fake_gpus,
            json,
        } => gpu_check::gpu_check(gpu_check::Options {
            nvml_lib,
            seconds,
            fake_gpus,
            json,
        }),
        Cmd::Demo { duration } => {
            build()?;
            let python = setup::python_env()?;
            if !is_root() {
                bail!(
                    "the demo loads eBPF programs and must run as root: `sudo -E cargo xtask demo`"
                );
            }
            demo::run(&python, duration)
        }
    }
}
