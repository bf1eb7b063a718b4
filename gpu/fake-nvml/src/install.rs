//! Installing the fake as `libnvidia-ml.so.1` in a directory, with its timeline beside it and the
//! timeline's `missing_symbols` hidden.
//!
//! A cdylib exports every `#[no_mangle]` function, so "missing" is made in the installed copy:
//! the first byte of each missing name in the ELF `.dynstr` section is overwritten (`nvmlX…` →
//! `_vmlX…`). The dynamic loader compares names, so `dlsym("nvmlX")` fails exactly as it does
//! against an older `libnvidia-ml.so.1` that predates the entry point, and nvml-wrapper reports
//! `FailedToLoadSymbol` for that call only. Same-length renaming keeps every offset, hash table
//! and section intact; nothing is relinked, so no toolchain is needed at test time.
//!
//! Other degraded behaviours are answers, not absences, and are scripted as `errors`:
//! `NOT_SUPPORTED` (the entry point exists but the GPU lacks the feature, e.g. GPM before Hopper,
//! utilisation under MIG) and `FUNCTION_NOT_FOUND` (the library has the entry point but the
//! loaded kernel driver does not, as after a user-space-only upgrade).

use std::path::{Path, PathBuf};

use object::read::elf::{ElfFile64, SectionHeader};
use object::{Endianness, Object};

use crate::timeline::Timeline;

/// The file name NVML users load.
pub const LIBRARY_FILE: &str = "libnvidia-ml.so.1";
/// The timeline beside the installed library (used when `FAKE_NVML_TIMELINE` is unset).
pub const TIMELINE_FILE: &str = "fake-nvml-timeline.json";
/// The stats file beside the installed library (used when `FAKE_NVML_STATS` is unset).
pub const STATS_FILE: &str = "fake-nvml-stats.json";

/// Why the fake could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot read the built fake library {path}: {source} (build it with `cargo build -p fake-nvml`)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a 64-bit ELF shared library with a .dynstr section: {reason}")]
    NotElf { path: PathBuf, reason: String },
    #[error("missing symbol {0:?} is not an NVML name (nvml…)")]
    NotNvml(String),
    #[error("the timeline is not valid: {0}")]
    Timeline(String),
}

/// Copies the built library `built` (`target/<profile>/libnvidia_ml.so`) into `dir` as
/// `libnvidia-ml.so.1` with `timeline.missing_symbols` hidden, writes the timeline beside it and
/// returns the library's path. Names the fake never exported are missing already and accepted.
pub fn install(built: &Path, dir: &Path, timeline: &Timeline) -> Result<PathBuf, InstallError> {
    timeline
        .check()
        .map_err(|e| InstallError::Timeline(e.to_string()))?;
    let mut bytes = std::fs::read(built).map_err(|source| InstallError::Read {
        path: built.to_path_buf(),
        source,
    })?;
    let names: Vec<&str> = timeline
        .missing_symbols
        .iter()
        .map(String::as_str)
        .collect();
    hide_symbols(&mut bytes, &names).map_err(|reason| match reason {
        HideError::NotNvml(n) => InstallError::NotNvml(n),
        HideError::Elf(reason) => InstallError::NotElf {
            path: built.to_path_buf(),
            reason,
        },
    })?;
    let write = |path: PathBuf, data: &[u8]| {
        std::fs::write(&path, data).map_err(|source| InstallError::Write {
            path: path.clone(),
            source,
        })?;
        Ok::<_, InstallError>(path)
    };
    std::fs::create_dir_all(dir).map_err(|source| InstallError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let json = serde_json::to_vec_pretty(timeline).expect("a timeline serialises");
    write(dir.join(TIMELINE_FILE), &json)?;
    write(dir.join(LIBRARY_FILE), &bytes)
}

/// The file `cargo build -p fake-nvml` leaves in `target/<profile>/`.
pub const BUILT_FILE: &str = "libnvidia_ml.so";

/// The built library of the profile the running test or program was built with: the newer of
/// `target/<profile>/libnvidia_ml.so` (what `cargo build` leaves) and
/// `target/<profile>/deps/libnvidia_ml.so` (what `cargo test` leaves, not copied up).
pub fn find_built() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?;
    if dir.ends_with("deps") {
        dir = dir.parent()?;
    }
    [dir.join(BUILT_FILE), dir.join("deps").join(BUILT_FILE)]
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p)
}

#[derive(Debug, PartialEq)]
pub enum HideError {
    NotNvml(String),
    Elf(String),
}

/// Renames each of `names` in the dynamic string table of the ELF image `image` so that the
/// loader no longer finds it. Returns how many were present.
pub fn hide_symbols(image: &mut [u8], names: &[&str]) -> Result<usize, HideError> {
    if let Some(bad) = names.iter().find(|n| !n.starts_with("nvml")) {
        return Err(HideError::NotNvml(bad.to_string()));
    }
    let (start, end) = dynstr_range(image).map_err(HideError::Elf)?;
    let table = &mut image[start..end];
    let mut hidden = 0;
    for name in names {
        let needle: Vec<u8> = [b"\0", name.as_bytes(), b"\0"].concat();
        // Every occurrence: a name could in principle be stored twice.
        let mut from = 0;
        while let Some(pos) = find(&table[from..], &needle) {
            let at = from + pos + 1;
            table[at] = b'_';
            hidden += 1;
            from = at;
        }
    }
    Ok(hidden)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The file range of `.dynstr`.
fn dynstr_range(image: &[u8]) -> Result<(usize, usize), String> {
    let elf = ElfFile64::<Endianness>::parse(image).map_err(|e| e.to_string())?;
    let section = elf
        .section_by_name(".dynstr")
        .ok_or_else(|| "no .dynstr section".to_string())?;
    let header = section.elf_section_header();
    let endian = elf.endian();
    let (offset, size) = header
        .file_range(endian)
        .ok_or_else(|| ".dynstr has no file data".to_string())?;
    let (start, end) = (offset as usize, (offset + size) as usize);
    if end > image.len() {
        return Err(".dynstr lies past the end of the file".into());
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_nvml_names_and_non_elf_input() {
        let mut junk = b"not an elf".to_vec();
        assert_eq!(
            hide_symbols(&mut junk, &["malloc"]),
            Err(HideError::NotNvml("malloc".into()))
        );
        assert!(matches!(
            hide_symbols(&mut junk, &["nvmlInit_v2"]),
            Err(HideError::Elf(_))
        ));
    }
}
