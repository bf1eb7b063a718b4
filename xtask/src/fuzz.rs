//! `cargo xtask fuzz`: every cargo-fuzz target in `fuzz/` for a fixed time each, then a summary
//! (runs, coverage, crashes); `--replay` only runs the saved regression inputs.
//!
//! Inputs that once crashed live in `fuzz/regressions/<target>/` (committed) and are replayed by
//! every run before fuzzing starts, so a fixed crash stays fixed; the crash itself also becomes a
//! unit test next to the parser it broke. The growing corpus (`fuzz/corpus/<target>/`) and new
//! crash artifacts (`fuzz/artifacts/<target>/`) are not committed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{root, run};

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

fn cargo_fuzz() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(fuzz_dir())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .args(["+nightly", "fuzz"]);
    c
}

/// Installs cargo-fuzz when missing.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    Ok(())
}

fn targets() -> Result<Vec<String>> {
    let out = cargo_fuzz()
        .arg("list")
        .output()
        .context("running `cargo fuzz list`")?;
    if !out.status.success() {
        bail!(
            "`cargo fuzz list` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// What one target's run ended with.
struct Outcome {
    target: String,
    ok: bool,
    /// libFuzzer's last `#N ... cov: C ... exec/s: E` status line.
    last_status: String,
    crashes: Vec<PathBuf>,
}

/// libFuzzer limits for every run, replays included. The parsers bound their memory and their
/// work per byte (a few MiB of buffers, a constant factor per input byte), so an input that makes
/// one use hundreds of MiB or seconds of CPU is an amplification bug (an HPACK bomb, a quadratic
/// rescan): these small limits make it trip as a crash (an OOM or timeout artifact) instead of
/// passing slowly.
const LIMITS: [&str; 2] = ["-rss_limit_mb=512", "-timeout=5"];

fn fuzz_one(target: &str, seconds: u64) -> Result<Outcome> {
    let artifacts = fuzz_dir().join("artifacts").join(target);
    let before = files_in(&artifacts);
    let corpus = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let regressions = fuzz_dir().join("regressions").join(target);
    let mut cmd = cargo_fuzz();
    cmd.args(["run", "-O", target])
        .arg(&corpus)
        .args(regressions.is_dir().then_some(&regressions))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(LIMITS)
        .arg("-print_final_stats=1");
    eprintln!("+ {cmd:?}");
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running fuzz target {target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let last_status = log
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.contains("cov:"))
        .unwrap_or("")
        .to_string();
    let crashes: Vec<PathBuf> = files_in(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!(
            "--- {target} failed; last lines:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(Outcome {
        target: target.to_string(),
        ok: out.status.success() && crashes.is_empty(),
        last_status,
        crashes,
    })
}

/// Runs every saved regression input of every target once.
fn replay(targets: &[String]) -> Result<()> {
    for t in targets {
        let dir = fuzz_dir().join("regressions").join(t);
        if files_in(&dir).is_empty() {
            eprintln!("{t}: no regression inputs");
            continue;
        }
        run(cargo_fuzz()
            .args(["run", "-O", t])
            .arg(&dir)
            .args(["--", "-runs=0"])
            .args(LIMITS))?;
    }
    Ok(())
}

pub fn fuzz(seconds: u64, only: &[String], replay_only: bool) -> Result<()> {
    ensure_cargo_fuzz()?;
    let all = targets()?;
    let chosen: Vec<String> = if only.is_empty() {
        all.clone()
    } else {
        for t in only {
            if !all.contains(t) {
                bail!("no fuzz target {t:?}; the targets are {all:?}");
            }
        }
        only.to_vec()
    };
    if replay_only {
        return replay(&chosen);
    }
    run(cargo_fuzz().args(["build", "-O"]))?;
    let mut outcomes = Vec::new();
    for t in &chosen {
        outcomes.push(fuzz_one(t, seconds)?);
    }
    println!("\nfuzzing, {seconds} s per target:");
    for o in &outcomes {
        println!(
            "  {:<10} {}  {}",
            o.target,
            if o.ok { "ok     " } else { "CRASHED" },
            o.last_status
        );
        for c in &o.crashes {
            println!(
                "    crash input: {} — reproduce with `cd fuzz && cargo +nightly fuzz run {} {}`; \
                 once fixed, copy it to fuzz/regressions/{}/ and add a unit test with its bytes",
                c.display(),
                o.target,
                c.display(),
                o.target
            );
        }
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.target.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("fuzz targets crashed: {failed:?}");
    }
    Ok(())
}
