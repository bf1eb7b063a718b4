//! Idempotent installation of what builds and tests need, following shared/toolchain.md:
//! nightly `rust-src`, `bpf-linker` linked against the nightly's own libLLVM, and a Python venv
//! with the test peers' packages.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{root, run};

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

pub fn path_with_cargo_bin() -> String {
    let bin = cargo_home().join("bin");
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn nightly() -> Command {
    let mut c = Command::new("rustup");
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

/// nightly + rust-src + bpf-linker (built against the nightly's libLLVM).
pub fn toolchain() -> Result<()> {
    let sysroot = output(nightly().args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context("the nightly toolchain is needed to build the eBPF programs (rustup toolchain install nightly)")?;
    let installed =
        output(nightly().args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(nightly().args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }

    // The nightly's own LLVM, by file name, not hard-coded.
    let libdir = PathBuf::from(&sysroot).join("lib");
    let llvm = std::fs::read_dir(&libdir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let llvm_name = llvm.file_name().unwrap().to_string_lossy().to_string();
    let major = llvm_name
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or("")
        .to_string();

    // bpf-linker keeps an rpath to this prefix: it lives under CARGO_HOME, never under target/.
    let prefix = cargo_home().join("infertap-llvm");
    let link = prefix.join("lib/libLLVM.so");
    let stamp = prefix.join("bpf-linker.stamp");
    let want = format!("{}\n", llvm.display());
    let linker = cargo_home().join("bin/bpf-linker");
    let current = std::fs::read_to_string(&stamp).unwrap_or_default();
    if linker.exists() && current == want && link.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(prefix.join("lib"))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    run(Command::new("cargo")
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}")))?;
    std::fs::write(&stamp, want)?;
    Ok(())
}

/// A venv at `.venv` with tests/peers/requirements.txt installed; returns its python.
pub fn python_env() -> Result<PathBuf> {
    let venv = root().join(".venv");
    let python = venv.join("bin/python");
    let req = root().join("tests/peers/requirements.txt");
    let wanted =
        std::fs::read_to_string(&req).with_context(|| format!("reading {}", req.display()))?;
    let stamp = venv.join(".infertap-requirements");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&req))?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}
