//! `cargo xtask dist`: the binary as it ships — `target/dist/infertap`, stripped of symbols and
//! debug info, with a `.gnu_debuglink` to `target/dist/infertap.debug`, which keeps them
//! (compressed) for symbolising profiles and crash addresses. Both carry the same GNU build id,
//! so `perf`, `gdb` and debuginfod-style lookups (`/usr/lib/debug/.build-id/xx/yyyy.debug`)
//! pair them. `target/release/infertap` is left whole for local profiling.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{agent_binary, root, run};

/// The directory `dist` writes to.
pub fn dist_dir() -> PathBuf {
    root().join("target/dist")
}

fn size(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("reading {}", p.display()))?
        .len())
}

pub fn dist() -> Result<()> {
    let whole = agent_binary();
    let dir = dist_dir();
    std::fs::create_dir_all(&dir)?;
    let debug = dir.join("infertap.debug");
    let stripped = dir.join("infertap");
    run(Command::new("objcopy")
        .args(["--only-keep-debug", "--compress-debug-sections=zlib"])
        .arg(&whole)
        .arg(&debug))?;
    // The debug link names the file only; debuggers look for it beside the binary, in
    // /usr/lib/debug, or by build id.
    run(Command::new("objcopy")
        .current_dir(&dir)
        .arg("--strip-all")
        .arg("--add-gnu-debuglink=infertap.debug")
        .arg(&whole)
        .arg(&stripped))?;
    println!(
        "{}: {} bytes (with debug info)\n{}: {} bytes (shipped: stripped, debug link)\n{}: {} bytes (symbols and debug info, for symbolising)",
        whole.display(),
        size(&whole)?,
        stripped.display(),
        size(&stripped)?,
        debug.display(),
        size(&debug)?
    );
    Ok(())
}
