//! Probes: loading the embedded eBPF object, checking what the kernel and the process are
//! allowed to do, attaching the tracepoints, and the maps userspace writes (targets, sockets) or
//! reads (drop counters, per-program statistics).
//!
//! Minimum kernel: 5.12 (task-local storage in tracing programs; BPF ring buffer 5.8). Needs CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN), and
//! CAP_SYS_ADMIN to mount tracefs when it is missing.

pub mod pod_targets;
pub mod sock_diag;
pub mod targeting;
pub mod targets;
pub mod tracefs;
pub mod uprobe;

use std::os::fd::{AsFd, OwnedFd};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::TracePoint;
use aya::{Ebpf, EbpfLoader};
use infertap_common::{
    ConnInfo, ConnKey, Forgotten, DROP_COUNTERS, DROP_NAMES, LOST_CONNS_SLOT, TARGET_BITS_PER_WORD,
};

/// The object built by `cargo xtask build` (empty when the agent was built without it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/infertap-probes.o"));

/// Every tracepoint program and where it attaches.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("sys_enter_read", "syscalls"),
    ("sys_exit_read", "syscalls"),
    ("sys_enter_readv", "syscalls"),
    ("sys_exit_readv", "syscalls"),
    ("sys_enter_recvfrom", "syscalls"),
    ("sys_exit_recvfrom", "syscalls"),
    ("sys_enter_recvmsg", "syscalls"),
    ("sys_exit_recvmsg", "syscalls"),
    ("sys_enter_write", "syscalls"),
    ("sys_exit_write", "syscalls"),
    ("sys_enter_writev", "syscalls"),
    ("sys_exit_writev", "syscalls"),
    ("sys_enter_sendto", "syscalls"),
    ("sys_exit_sendto", "syscalls"),
    ("sys_enter_sendmsg", "syscalls"),
    ("sys_exit_sendmsg", "syscalls"),
    ("sys_enter_accept", "syscalls"),
    ("sys_exit_accept", "syscalls"),
    ("sys_enter_accept4", "syscalls"),
    ("sys_exit_accept4", "syscalls"),
    ("sys_enter_connect", "syscalls"),
    ("sys_exit_connect", "syscalls"),
    ("sys_enter_close", "syscalls"),
    ("sys_enter_dup2", "syscalls"),
    ("sys_enter_dup3", "syscalls"),
    ("sys_enter_close_range", "syscalls"),
    ("sys_exit_listen", "syscalls"),
    ("sched_process_exec", "sched"),
    ("sched_process_exit", "sched"),
];

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this infertap binary was built without its eBPF object; build it with `cargo xtask build` \
         (plain `cargo build` skips the kernel programs)"
    )]
    NoObject,
    #[error(
        "missing privileges: {missing}. Run infertap as root, or grant the capabilities \
         (e.g. `setcap cap_bpf,cap_perfmon,cap_sys_admin,cap_sys_ptrace,cap_dac_read_search+ep infertap`; \
         in Kubernetes add them to the container's securityContext)"
    )]
    Privileges { missing: String },
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error(
        "loading the eBPF object failed (kernel {kernel}; infertap needs Linux 5.12 or later with \
         BTF, for task-local storage in tracing programs): {source}"
    )]
    Load {
        kernel: String,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("the eBPF object lacks map {0}: the agent and its kernel programs do not match")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("no probe could be attached; first failure: {0}")]
    NothingAttached(String),
}

/// State of one attached (or failed) program, for `/status`.
#[derive(Clone, Debug)]
pub struct ProbeState {
    pub name: &'static str,
    pub attached: bool,
    pub error: Option<String>,
}

/// Loaded and attached kernel programs plus the maps userspace uses.
pub struct Probes {
    ebpf: Ebpf,
    /// Log records of the kernel programs (aya-log), forwarded to the agent's log.
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub states: Vec<ProbeState>,
    /// Keeps `kernel.bpf_stats_enabled` on while held (run time and count per program), with
    /// `--bpf-stats`.
    _stats: Option<OwnedFd>,
    /// TLS uprobes: files attached, programs loaded (`uprobe`).
    tls: uprobe::TlsAttachments,
}

/// Maps handed to the stages that use them.
pub struct Maps {
    /// Bitmap of targeted tgids.
    pub targets: Array<MapData, u64>,
    /// Bitmap of targeted tgids with TLS uprobes attached.
    pub tls_targets: Array<MapData, u64>,
    pub sockets: HashMap<MapData, ConnKey, ConnInfo>,
    /// The same map through a handle of its own, for lookups outside `KernelMaps`'s lock.
    pub sockets_reader: HashMap<MapData, ConnKey, ConnInfo>,
    /// Stale descriptor ranges per target (`close_range`, exec), until swept.
    pub forgotten: HashMap<MapData, u32, Forgotten>,
    pub drops: PerCpuArray<MapData, u64>,
    pub events: RingBuf<MapData>,
}

/// Words of the target bitmap: one bit per possible pid (`kernel.pid_max`, at most 2^22).
fn target_words() -> u32 {
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(1 << 22)
        .clamp(1 << 15, 1 << 22);
    pid_max.div_ceil(TARGET_BITS_PER_WORD)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn check_privileges() -> Result<(), ProbeError> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF (load programs and maps)");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON (attach tracepoints)");
    }
    Err(ProbeError::Privileges {
        missing: missing.join(", "),
    })
}

/// Let the embedded object's pages go once it is loaded: aya and the kernel hold what they need
/// from it, so its megabyte of ELF need not stay resident for the agent's life. The pages are
/// part of the binary's read-only data, file-backed and never written: a later read, if any,
/// faults them back in from the file.
fn release_object_pages() {
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return,
    };
    let start = OBJECT.as_ptr() as usize;
    let first = start.div_ceil(page) * page;
    let end = (start + OBJECT.len()) / page * page;
    if end > first {
        // SAFETY: whole pages inside a read-only static; MADV_DONTNEED only drops their
        // mappings, and their contents come back from the file on the next access.
        unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED) };
    }
}

impl Probes {
    /// Load and attach. `ring_bytes` sets the ring buffer size (a power of two multiple of the page size);
    /// `bpf_stats` switches the kernel's per-program statistics on while the probes live.
    pub fn load(ring_bytes: u32, bpf_stats: bool) -> Result<(Probes, Maps), ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        check_privileges()?;
        let tracefs = tracefs::ensure_mounted()?;
        if let Some(path) = tracefs.mounted_by_us {
            tracing::info!(path = %path.display(), "tracefs was not mounted; mounted it.");
        }
        let _ = rlimit_memlock();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", ring_bytes)
            .map_max_entries("TARGETS", target_words())
            .map_max_entries("TLS_TARGETS", target_words())
            .map_max_entries("STALE", target_words())
            // `THREADS` is task-local storage, which aya creates but has no userspace type for
            // (the agent never reads it).
            .allow_unsupported_maps()
            .load(OBJECT)
            .map_err(|source| ProbeError::Load {
                kernel: kernel_release(),
                source: Box::new(source),
            })?;

        // Before the programs load: they reference the log map.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!(error = %e, "Kernel program logs are not available.");
                None
            }
        };
        let stats = if bpf_stats {
            aya::sys::enable_stats(aya::sys::Stats::RunTime).ok()
        } else {
            None
        };
        let mut states = Vec::new();
        for (name, category) in PROGRAMS {
            let result = (|| -> Result<(), String> {
                let prog = ebpf
                    .program_mut(name)
                    .ok_or_else(|| "not in the eBPF object".to_string())?;
                let tp: &mut TracePoint = prog.try_into().map_err(|e| format!("{e}"))?;
                tp.load().map_err(|e| format!("{e:#}"))?;
                tp.attach(category, name).map_err(|e| format!("{e:#}"))?;
                Ok(())
            })();
            states.push(ProbeState {
                name,
                attached: result.is_ok(),
                error: result.err(),
            });
        }
        if let Some(failed) = states.iter().find(|s| !s.attached) {
            if states.iter().all(|s| !s.attached) {
                return Err(ProbeError::NothingAttached(format!(
                    "{}: {}",
                    failed.name,
                    failed.error.clone().unwrap_or_default()
                )));
            }
        }
        for s in states.iter().filter(|s| !s.attached) {
            tracing::warn!(
                probe = s.name,
                error = s.error.as_deref().unwrap_or(""),
                "Probe not attached; its syscall is not traced."
            );
        }

        let targets = take_map(&mut ebpf, "TARGETS")?;
        let tls_targets = take_map(&mut ebpf, "TLS_TARGETS")?;
        let sockets = take_map(&mut ebpf, "SOCKETS")?;
        // A second handle on the same map for the pipeline's lookups, which then never wait for
        // the targeting thread's writes and sweeps under its lock.
        let sockets_reader = second_handle(&sockets).map_err(|source| ProbeError::Map {
            name: "SOCKETS",
            source: Box::new(source),
        })?;
        let forgotten = take_map(&mut ebpf, "FORGOTTEN")?;
        let drops = take_map(&mut ebpf, "DROPS")?;
        let events = take_map(&mut ebpf, "EVENTS")?;
        release_object_pages();
        Ok((
            Probes {
                ebpf,
                logger,
                states,
                _stats: stats,
                tls: uprobe::TlsAttachments::default(),
            },
            Maps {
                targets,
                tls_targets,
                sockets,
                sockets_reader,
                forgotten,
                drops,
                events,
            },
        ))
    }

    /// Run count and total run time per attached program (from the kernel's BPF statistics).
    pub fn program_stats(&self) -> Vec<(String, u64, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                p.info().ok().map(|i| {
                    (
                        name.to_string(),
                        i.run_count(),
                        i.run_time().as_nanos() as u64,
                    )
                })
            })
            .collect()
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
    T::try_from(map).map_err(|source| ProbeError::Map {
        name,
        source: Box::new(source),
    })
}

/// Another handle on the same hash map: its descriptor duplicated.
fn second_handle<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
) -> Result<HashMap<MapData, K, V>, aya::maps::MapError> {
    use aya::maps::IterableMap;
    let fd = map
        .map()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|io_error| aya::sys::SyscallError {
            call: "dup",
            io_error,
        })?;
    HashMap::try_from(aya::maps::Map::HashMap(MapData::from_fd(fd)?))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn rlimit_memlock() -> std::io::Result<()> {
    let rl = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Connections the kernel closed with records lost and its close record refused (summed over
/// CPUs): their losses reached userspace in no other way.
pub fn kernel_lost_connections(drops: &PerCpuArray<MapData, u64>) -> u64 {
    drops
        .get(&LOST_CONNS_SLOT, 0)
        .map(|v| v.iter().sum::<u64>())
        .unwrap_or(0)
}

/// Per-reason kernel drop counters, summed over CPUs.
pub fn kernel_drops(drops: &PerCpuArray<MapData, u64>) -> Vec<(&'static str, u64)> {
    (0..DROP_COUNTERS)
        .map(|i| {
            let total = drops.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
            (DROP_NAMES[i as usize], total)
        })
        .collect()
}
