//! TLS uprobes: which files of a targeted process to probe (a Go binary linking `crypto/tls`, the
//! libssl it maps), where in them (`golang`, `openssl`, over `elf` and `gopclntab`), and
//! attaching the kernel programs of `ebpf/probes/src/tls.rs` there.
//!
//! Uprobes attach to a file, not a process: every process running that file hits them, and the
//! programs leave at once for processes not in `TARGETS`. A file is attached once (keyed by the
//! device and inode of its mapping) and detached when the last target using it is gone
//! ([`Probes::release_tls`]).
//!
//! Finding the sites reads and parses whole binaries: the targeting thread does it
//! ([`plan`]), the pipeline only attaches ([`Probes::attach_tls`]). The files are a tenant's:
//! `file` opens them so the process cannot substitute another (and attaching goes through the
//! descriptor that was read), and parsing is linear in the file and capped ([`file::MAX_FILE_BYTES`],
//! [`golang::MAX_RETS`], [`golang::MAX_FUNCTION_BYTES`]); a file over a cap is reported and skipped.

pub mod elf;
pub mod file;
pub mod golang;
pub mod gopclntab;
pub mod openssl;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use aya::programs::uprobe::{UProbeLinkId, UProbeScope};
use aya::programs::UProbe;

use super::Probes;
use golang::GoTlsSites;
use openssl::SslSites;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum UprobeError {
    #[error("cannot read the binary: {0}")]
    File(file::OpenError),
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
    #[error(
        "{function} has {found} RET instructions, over the {limit} probed per function; \
         this binary is skipped (not a regular Go build?)"
    )]
    TooManyReturns {
        function: &'static str,
        found: usize,
        limit: usize,
    },
    #[error(
        "{function} is {size} bytes long, over the {limit}-byte limit decoded per function; \
         this binary is skipped (not a regular Go build?)"
    )]
    FunctionTooLarge {
        function: &'static str,
        size: u64,
        limit: u64,
    },
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
    /// The file as read, held open until attached: attaching goes through this descriptor
    /// (`/proc/self/fd/<n>`), so the inode probed is the inode analysed. `None` when `sites` is
    /// an error.
    pub opened: Option<Arc<file::OpenedFile>>,
    /// (device, inode) of the mapping: a file is probed once however many processes run it.
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

/// Open a mapped file of `pid` (see `file`), then analyse it through positioned reads of that
/// descriptor (only what the analysis looks at is read).
fn read_mapping<T>(
    pid: u32,
    m: &file::Mapping,
    analyze: impl FnOnce(&object::ReadCache<&std::fs::File>) -> Result<T, UprobeError>,
) -> (Option<Arc<file::OpenedFile>>, Result<T, UprobeError>) {
    let opened = match file::open_mapping(pid, m) {
        Ok(f) => f,
        Err(e) => return (None, Err(UprobeError::File(e))),
    };
    let result = match opened.reader(file::MAX_FILE_BYTES) {
        Ok(cache) => analyze(&cache),
        Err(e) => return (None, Err(UprobeError::File(e))),
    };
    let keep = result.is_ok().then(|| Arc::new(opened));
    (keep, result)
}

/// The files of process `pid` that carry TLS: its executable when it is a Go program linking
/// `crypto/tls`, and the libssl it maps. Opens, reads and parses them (blocking). An executable
/// that cannot be opened safely or is over a size cap is reported as `go` (it cannot be told
/// apart from one without reading it).
pub fn plan(pid: u32) -> Vec<TlsPlan> {
    let mut out = Vec::new();
    let maps =
        file::parse_maps(&std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default());
    let exe_name = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if let Some(m) = maps
        .iter()
        .find(|m| !exe_name.is_empty() && m.path == exe_name)
    {
        let (opened, result) = read_mapping(pid, m, |c| golang::analyze(c));
        match result {
            Ok(None) => {}
            // As before the safe open: an executable the agent cannot open at all (no such
            // file, no permission) is not reported; one refused for what it is, is.
            Err(UprobeError::File(file::OpenError::Open { error, .. })) => {
                tracing::debug!(pid, path = %exe_name, %error, "Cannot open the executable for TLS analysis.");
            }
            result => out.push(TlsPlan {
                pid,
                library: "go",
                path: exe_name,
                opened,
                file: (m.dev, m.ino),
                sites: result.map(|s| Sites::Go(s.expect("Some: None matched above"))),
            }),
        }
    }
    if let Some(m) = openssl::mapped_libssl(&maps) {
        let (opened, sites) = read_mapping(pid, m, |c| openssl::analyze(c));
        out.push(TlsPlan {
            pid,
            library: "openssl",
            path: m.path.clone(),
            opened,
            file: (m.dev, m.ino),
            sites: sites.map(Sites::OpenSsl),
        });
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

/// The uprobes of a file no target maps any more, taken from their programs: dropping them
/// detaches them, which takes the kernel up to a second (`uprobe_unregister` waits for RCU), so
/// the caller drops them off the pipeline task.
pub struct Released {
    pub path: String,
    pub links: Vec<aya::programs::uprobe::UProbeLink>,
}

/// One attached file: its links and the targets using it.
struct AttachedFile {
    path: String,
    links: Vec<(&'static str, UProbeLinkId)>,
    users: BTreeSet<u32>,
}

/// Files attached (by device and inode of the mapping), and programs already loaded.
#[derive(Default)]
pub struct TlsAttachments {
    files: HashMap<(u64, u64), AttachedFile>,
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

    fn attach_at(
        &mut self,
        name: &'static str,
        plan: &TlsPlan,
        target: &std::path::Path,
        offset: u64,
        links: &mut Vec<(&'static str, UProbeLinkId)>,
    ) -> Result<(), String> {
        let id = self
            .uprobe(name)?
            .attach(offset, target, UProbeScope::AllProcesses)
            .map_err(|e| format!("attaching {name} at {:#x} of {}: {e:#}", offset, plan.path))?;
        links.push((name, id));
        Ok(())
    }

    fn detach_links(&mut self, links: Vec<(&'static str, UProbeLinkId)>, path: &str) {
        for (name, id) in links {
            let result = self
                .uprobe(name)
                .and_then(|p| p.detach(id).map_err(|e| e.to_string()));
            if let Err(e) = result {
                tracing::warn!(program = name, %path, error = %e, "Cannot detach TLS uprobe.");
            }
        }
    }

    /// The TLS programs loaded so far (attached somewhere), sorted.
    pub fn tls_programs(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.tls.loaded.iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// Attach the TLS programs at a plan's sites (once per file), through the descriptor the
    /// plan read, and count the plan's process as a user of the file. On error, the probes
    /// attached for the file so far are detached.
    pub fn attach_tls(&mut self, plan: &TlsPlan) -> Result<AttachOutcome, String> {
        let sites = plan.sites.as_ref().map_err(|e| e.to_string())?;
        if let Some(f) = self.tls.files.get_mut(&plan.file) {
            f.users.insert(plan.pid);
            return Ok(AttachOutcome::AlreadyAttached);
        }
        let opened = plan
            .opened
            .as_ref()
            .ok_or_else(|| format!("{}: the file is no longer held open", plan.path))?;
        // The held descriptor stays open (plan, and so `opened`, outlive this call).
        let target = opened.proc_path();
        let mut links = Vec::new();
        let result = (|| -> Result<(), String> {
            match sites {
                Sites::Go(g) => {
                    self.attach_at(GO_HANDSHAKE_ENTER, plan, &target, g.handshake, &mut links)?;
                    self.attach_at(GO_READ_ENTER, plan, &target, g.read.entry, &mut links)?;
                    self.attach_at(GO_WRITE_ENTER, plan, &target, g.write.entry, &mut links)?;
                    for &ret in g.read.rets.iter().chain(&g.write.rets) {
                        self.attach_at(GO_RET, plan, &target, ret, &mut links)?;
                    }
                }
                Sites::OpenSsl(s) => {
                    for &(function, off) in &s.functions {
                        self.attach_at(
                            ssl_enter_program(function),
                            plan,
                            &target,
                            off,
                            &mut links,
                        )?;
                        self.attach_at(SSL_RET, plan, &target, off, &mut links)?;
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.detach_links(links, &plan.path);
            return Err(e);
        }
        let n = links.len();
        self.tls.files.insert(
            plan.file,
            AttachedFile {
                path: plan.path.clone(),
                links,
                users: BTreeSet::from([plan.pid]),
            },
        );
        Ok(AttachOutcome::Attached(n))
    }

    /// Process `pid` is no longer a target: it stops using its files, and the uprobes of a file
    /// no target uses any more are detached. Returns the files detached (paths).
    pub fn release_tls(&mut self, pid: u32) -> Vec<Released> {
        let unused: Vec<(u64, u64)> = self
            .tls
            .files
            .iter_mut()
            .filter_map(|(key, f)| (f.users.remove(&pid) && f.users.is_empty()).then_some(*key))
            .collect();
        let mut out = Vec::new();
        for key in unused {
            if let Some(f) = self.tls.files.remove(&key) {
                let mut links = Vec::with_capacity(f.links.len());
                for (name, id) in f.links {
                    match self
                        .uprobe(name)
                        .and_then(|p| p.take_link(id).map_err(|e| e.to_string()))
                    {
                        Ok(link) => links.push(link),
                        Err(e) => {
                            tracing::warn!(program = name, path = %f.path, error = %e, "Cannot detach TLS uprobe.")
                        }
                    }
                }
                out.push(Released {
                    path: f.path,
                    links,
                });
            }
        }
        out
    }

    /// Files with TLS uprobes attached now.
    pub fn tls_files_attached(&self) -> usize {
        self.tls.files.len()
    }
}

#[cfg(test)]
mod tests;
