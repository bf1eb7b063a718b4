//! TLS uprobes: which files of a targeted process to probe (a Go binary linking `crypto/tls`, the
//! libssl it maps), where in them (`golang`, `openssl`, over `elf` and `gopclntab`), and
//! attaching the kernel programs of `ebpf/probes/src/tls.rs` there.
//!
//! Uprobes attach to a file, not a process: every process running that file hits them, and the
//! programs leave at once for processes not in `TARGETS`. A file is attached once (keyed by device
//! and inode) and stays attached while the agent runs.
//!
//! Finding the sites reads and parses whole binaries: the targeting thread does it
//! ([`plan`]), the pipeline only attaches ([`Probes::attach_tls`]).

pub mod elf;
pub mod golang;
pub mod gopclntab;
pub mod openssl;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use aya::programs::uprobe::UProbeScope;
use aya::programs::UProbe;

use super::Probes;
use golang::GoTlsSites;
use openssl::SslSites;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum UprobeError {
    #[error("cannot read the binary: {0}")]
    Read(String),
    #[error("not an ELF file: {0}")]
    NotElf(String),
    #[error("Go version {0} is not supported for TLS capture (needs go1.18 or later)")]
    GoVersion(String),
    #[error("the Go build information (.go.buildinfo) is malformed")]
    GoBuildInfo,
    #[error("TLS capture supports x86-64 binaries only")]
    Arch,
    #[error("symbol {0} not found (neither in the symbol table nor in .gopclntab)")]
    SymbolNotFound(&'static str),
    #[error("no RET instruction found in {0}")]
    NoReturn(&'static str),
    #[error("cannot read the Go function table: {0}")]
    Pclntab(gopclntab::PclntabError),
}

/// Which TLS library a plan probes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sites {
    Go(GoTlsSites),
    OpenSsl(SslSites),
}

/// One file of a targeted process to probe, and where.
#[derive(Clone, Debug)]
pub struct TlsPlan {
    pub pid: u32,
    /// `go` or `openssl`.
    pub library: &'static str,
    /// The path as the process sees it (for status and logs).
    pub path: String,
    /// A path this agent can open that names the same file (`/proc/<pid>/exe`,
    /// `/proc/<pid>/root/<path>`), for attaching.
    pub attach_path: PathBuf,
    /// (device, inode): a file is probed once however many processes run it.
    pub file: (u64, u64),
    /// What was found or why nothing can be probed.
    pub sites: Result<Sites, UprobeError>,
}

impl TlsPlan {
    /// A one-line description for status: version and symbol source, or the error.
    pub fn detail(&self) -> String {
        match &self.sites {
            Ok(Sites::Go(g)) => format!(
                "{} ({} RET sites, symbols from {})",
                g.version,
                g.read.rets.len() + g.write.rets.len(),
                g.symbols
            ),
            Ok(Sites::OpenSsl(s)) => s
                .functions
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => e.to_string(),
        }
    }
}

fn file_key(path: &std::path::Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The files of process `pid` that carry TLS: its executable when it is a Go program linking
/// `crypto/tls`, and the libssl it maps. Reads and parses them (blocking).
pub fn plan(pid: u32) -> Vec<TlsPlan> {
    let mut out = Vec::new();
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    let exe_name = std::fs::read_link(&exe)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if let (Some(file), Ok(data)) = (file_key(&exe), std::fs::read(&exe)) {
        match golang::analyze(&data) {
            Ok(None) => {}
            result => out.push(TlsPlan {
                pid,
                library: "go",
                path: exe_name,
                attach_path: exe.clone(),
                file,
                sites: result.map(|s| Sites::Go(s.expect("Some: None matched above"))),
            }),
        }
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    if let Some(lib) = openssl::mapped_libssl(&maps) {
        let attach_path = PathBuf::from(format!("/proc/{pid}/root{}", lib.display()));
        let sites = std::fs::read(&attach_path)
            .map_err(|e| UprobeError::Read(e.to_string()))
            .and_then(|d| openssl::analyze(&d))
            .map(Sites::OpenSsl);
        if let Some(file) = file_key(&attach_path) {
            out.push(TlsPlan {
                pid,
                library: "openssl",
                path: lib.display().to_string(),
                attach_path,
                file,
                sites,
            });
        }
    }
    out
}

/// Programs of `ebpf/probes/src/tls.rs`.
pub const GO_READ_ENTER: &str = "go_tls_read_enter";
pub const GO_WRITE_ENTER: &str = "go_tls_write_enter";
pub const GO_HANDSHAKE_ENTER: &str = "go_tls_handshake_enter";
pub const GO_RET: &str = "go_tls_ret";
pub const SSL_RET: &str = "ssl_ret";

fn ssl_enter_program(function: &str) -> &'static str {
    match function {
        "SSL_read" => "ssl_read_enter",
        "SSL_read_ex" => "ssl_read_ex_enter",
        "SSL_write" => "ssl_write_enter",
        _ => "ssl_write_ex_enter",
    }
}

/// Files already attached, and programs already loaded.
#[derive(Default)]
pub struct TlsAttachments {
    files: HashSet<(u64, u64)>,
    loaded: HashSet<&'static str>,
}

/// What attaching a plan did.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachOutcome {
    /// Probes attached now (count).
    Attached(usize),
    /// The file was attached for an earlier process.
    AlreadyAttached,
}

impl Probes {
    fn uprobe(&mut self, name: &'static str) -> Result<&mut UProbe, String> {
        let loaded = self.tls.loaded.contains(name);
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} is not in the eBPF object"))?;
        let up: &mut UProbe = prog.try_into().map_err(|e| format!("{name}: {e}"))?;
        if !loaded {
            up.load().map_err(|e| format!("loading {name}: {e:#}"))?;
            self.tls.loaded.insert(name);
        }
        Ok(up)
    }

    fn attach_at(&mut self, name: &'static str, plan: &TlsPlan, offset: u64) -> Result<(), String> {
        self.uprobe(name)?
            .attach(offset, &plan.attach_path, UProbeScope::AllProcesses)
            .map(|_| ())
            .map_err(|e| format!("attaching {name} at {:#x} of {}: {e:#}", offset, plan.path))
    }

    /// The TLS programs loaded so far (attached somewhere), sorted.
    pub fn tls_programs(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.tls.loaded.iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// Attach the TLS programs at a plan's sites (once per file). On error, the probes already
    /// attached for the file stay (they only ever add plaintext).
    pub fn attach_tls(&mut self, plan: &TlsPlan) -> Result<AttachOutcome, String> {
        let sites = plan.sites.as_ref().map_err(|e| e.to_string())?;
        if self.tls.files.contains(&plan.file) {
            return Ok(AttachOutcome::AlreadyAttached);
        }
        let mut n = 0;
        match sites {
            Sites::Go(g) => {
                self.attach_at(GO_HANDSHAKE_ENTER, plan, g.handshake)?;
                self.attach_at(GO_READ_ENTER, plan, g.read.entry)?;
                self.attach_at(GO_WRITE_ENTER, plan, g.write.entry)?;
                n += 3;
                for &ret in g.read.rets.iter().chain(&g.write.rets) {
                    self.attach_at(GO_RET, plan, ret)?;
                    n += 1;
                }
            }
            Sites::OpenSsl(s) => {
                for &(function, off) in &s.functions {
                    self.attach_at(ssl_enter_program(function), plan, off)?;
                    self.attach_at(SSL_RET, plan, off)?;
                    n += 2;
                }
            }
        }
        self.tls.files.insert(plan.file);
        Ok(AttachOutcome::Attached(n))
    }
}

#[cfg(test)]
mod tests;
