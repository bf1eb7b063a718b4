//! Which processes are traced (standalone mode), found by scanning /proc: by pid, by a listening
//! port (in any network namespace; host-side port-publishing proxies such as `docker-proxy` are
//! recognised and left out), or by command line (by default: processes that look like OpenAI-compatible inference
//! servers or EPPs). Also the TCP sockets a process already has open when it becomes a target, so
//! that connections opened before the agent are traced from their next request on.
//!
//! Reads /proc only; writing the kernel maps is the caller's job.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use procfs::net::TcpState;
use procfs::process::{FDTarget, Process};
use regex::Regex;

/// Command lines targeted when no selector is given.
pub const DEFAULT_CMDLINE: &str = r"(?i)(vllm|sglang|llama-server|llama\.cpp|text-generation-(launcher|router|server)|(^|/)epp(\s|$)|endpoint-picker)";

#[derive(Clone, Debug, Default)]
pub struct Selector {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    pub cmdline: Option<Regex>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub pid: u32,
    pub comm: String,
    /// Why it is targeted: `pid`, `port 8000`, `cmdline`.
    pub reason: String,
    /// The server kind its command line shows (`gen_ai.provider.name`).
    pub provider: &'static str,
}

/// The server kind a command line shows: `vllm`, `sglang`, `llama.cpp`, `tgi`, `llm-d` (an EPP),
/// or `openai_compatible` when nothing is recognisable.
pub fn provider_of(cmdline: &str) -> &'static str {
    let c = cmdline.to_ascii_lowercase();
    if c.contains("vllm") {
        "vllm"
    } else if c.contains("sglang") {
        "sglang"
    } else if c.contains("llama-server") || c.contains("llama.cpp") || c.contains("llama_cpp") {
        "llama.cpp"
    } else if c.contains("text-generation") {
        "tgi"
    } else if c.contains("epp") || c.contains("endpoint-picker") {
        "llm-d"
    } else {
        "openai_compatible"
    }
}

fn target(p: &Process, reason: String) -> Target {
    let cmdline = p.cmdline().map(|a| a.join(" ")).unwrap_or_default();
    Target {
        pid: p.pid as u32,
        comm: comm(p),
        reason,
        provider: provider_of(&cmdline),
    }
}

/// When a process started (`starttime` of `/proc/<pid>/stat`, clock ticks since boot): with the
/// pid, it tells a process apart from a later one that reuses its pid.
pub fn start_time(pid: u32) -> Option<u64> {
    Process::new(pid as i32)
        .ok()?
        .stat()
        .ok()
        .map(|s| s.starttime)
}

/// A TCP socket of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcSocket {
    pub fd: u32,
    pub inode: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub listening: bool,
}

fn comm(p: &Process) -> String {
    p.stat().map(|s| s.comm).unwrap_or_default()
}

/// TCP sockets (IPv4 and IPv6) of one process, in its own network namespace: listening,
/// established and half-closed ones. Each socket descriptor is asked itself (`pidfd_getfd`: a few
/// syscalls per socket of the process); where that is not allowed, the process's TCP tables in
/// /proc are read — a walk of the kernel's whole established-connection hash, shared by every
/// namespace, which on a busy node costs far more than the process's own sockets.
pub fn tcp_sockets(pid: u32) -> Vec<ProcSocket> {
    let Ok(p) = Process::new(pid as i32) else {
        return Vec::new();
    };
    let sockets = socket_descriptors(&p);
    tcp_sockets_by_pidfd(pid, &sockets).unwrap_or_else(|| tcp_sockets_from_tables(&p, &sockets))
}

/// A process's descriptors that name sockets: (fd, socket inode).
pub fn socket_descriptors(p: &Process) -> Vec<(u32, u64)> {
    let Ok(fds) = p.fd() else { return Vec::new() };
    fds.flatten()
        .filter_map(|fd| match fd.target {
            FDTarget::Socket(inode) => Some((fd.fd as u32, inode)),
            _ => None,
        })
        .collect()
}

/// `tcp_sockets` through the process's pidfd, for its socket descriptors `sockets` (fd, inode);
/// `None` when pidfds are not usable here. Public for the `targets` benchmark.
pub fn tcp_sockets_by_pidfd(pid: u32, sockets: &[(u32, u64)]) -> Option<Vec<ProcSocket>> {
    let pidfd = match Pidfd::open(pid) {
        Ok(p) => p,
        Err(None) => return None,
        Err(Some(_gone)) => return Some(Vec::new()),
    };
    let mut out = Vec::new();
    for &(fd, inode) in sockets {
        match pidfd.ask(fd) {
            Asked::Tcp {
                local,
                remote,
                state,
            } => {
                let listening = state == TCP_LISTEN;
                let remote = match remote {
                    Some(r) => r,
                    // A listening socket has no peer: the tables show the unspecified address.
                    None if listening => SocketAddr::new(unspecified_like(local), 0),
                    None => continue,
                };
                if listening || state == TCP_ESTABLISHED || state == TCP_CLOSE_WAIT {
                    out.push(ProcSocket {
                        fd,
                        inode,
                        local,
                        remote,
                        listening,
                    });
                }
            }
            Asked::Other | Asked::Gone => {}
            Asked::Unusable => return None,
        }
    }
    Some(out)
}

/// `tcp_sockets` from the process's TCP tables in /proc (the fallback). Public for the
/// `targets` benchmark.
pub fn tcp_sockets_from_tables(p: &Process, sockets: &[(u32, u64)]) -> Vec<ProcSocket> {
    let mut by_inode: HashMap<u64, (SocketAddr, SocketAddr, bool)> = HashMap::new();
    for entries in [p.tcp(), p.tcp6()].into_iter().flatten() {
        for e in entries {
            let listening = e.state == TcpState::Listen;
            if listening || e.state == TcpState::Established || e.state == TcpState::CloseWait {
                by_inode.insert(e.inode, (e.local_address, e.remote_address, listening));
            }
        }
    }
    sockets
        .iter()
        .filter_map(|&(fd, inode)| {
            by_inode
                .get(&inode)
                .map(|&(local, remote, listening)| ProcSocket {
                    fd,
                    inode,
                    local,
                    remote,
                    listening,
                })
        })
        .collect()
}

fn unspecified_like(a: SocketAddr) -> std::net::IpAddr {
    match a {
        SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// What an fd of a process is, as far as /proc can tell now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdKind {
    Tcp {
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// Something else: a Unix socket, a pipe, a file.
    Other,
    /// The fd (or the process) is gone already: nothing can be said.
    Gone,
}

/// Classify one fd of another process. The socket itself is duplicated into the agent
/// (`pidfd_getfd`, Linux 5.6, needs ptrace access) and asked for its protocol and addresses: a few
/// syscalls, whatever the number of sockets on the machine. Where that is not allowed, /proc is
/// read instead (a walk of the whole TCP table: much slower on a busy node).
pub fn classify_fd(pid: u32, fd: u32) -> FdKind {
    match classify_by_pidfd(pid, fd) {
        Some(kind) => kind,
        None => classify_by_proc(pid, fd),
    }
}

fn sockaddr_of(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let mut raw = [0u8; 32];
    // SAFETY: sockaddr_storage is at least 128 bytes; copy the first 32 as plain bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts((storage as *const libc::sockaddr_storage).cast::<u8>(), 32)
    };
    raw.copy_from_slice(bytes);
    crate::capture::decode::sockaddr(&raw)
}

/// `None` when pidfds are not usable here (old kernel, no ptrace access).
fn classify_by_pidfd(pid: u32, fd: u32) -> Option<FdKind> {
    let pidfd = match Pidfd::open(pid) {
        Ok(p) => p,
        Err(gone) => return gone,
    };
    match pidfd.ask(fd) {
        Asked::Tcp { local, remote, .. } => Some(FdKind::Tcp {
            local,
            // A listening socket has no peer: report its local address both ways.
            remote: remote.unwrap_or(local),
        }),
        Asked::Other => Some(FdKind::Other),
        Asked::Gone => Some(FdKind::Gone),
        Asked::Unusable => None,
    }
}

/// `tcpi_state` values (`include/net/tcp_states.h`).
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LISTEN: u8 = 10;

/// What one descriptor of another process is, asked of the socket itself.
enum Asked {
    Tcp {
        local: SocketAddr,
        /// `None`: not connected (listening, or closed).
        remote: Option<SocketAddr>,
        state: u8,
    },
    Other,
    Gone,
    /// `pidfd_getfd` is not allowed here (no ptrace access).
    Unusable,
}

/// A process's pidfd (`pidfd_open`, Linux 5.3; `pidfd_getfd`, 5.6).
struct Pidfd(std::os::fd::OwnedFd);

impl Pidfd {
    /// `Err(Some(Gone))` when the process is gone, `Err(None)` when pidfds are not usable here.
    fn open(pid: u32) -> Result<Pidfd, Option<FdKind>> {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: a plain syscall; the fd returned is owned and closed by OwnedFd.
        unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) as libc::c_int;
            if pidfd < 0 {
                return Err(match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::ESRCH) => Some(FdKind::Gone),
                    _ => None,
                });
            }
            Ok(Pidfd(OwnedFd::from_raw_fd(pidfd)))
        }
    }

    /// Duplicates `fd` into the agent and asks it for its protocol, addresses and TCP state.
    fn ask(&self, fd: u32) -> Asked {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: plain syscalls on descriptors this function owns (the duplicate is closed by
        // OwnedFd); every out-pointer is a local of the size passed with it.
        unsafe {
            let dup = libc::syscall(
                libc::SYS_pidfd_getfd,
                self.0.as_raw_fd(),
                fd as libc::c_int,
                0,
            ) as libc::c_int;
            if dup < 0 {
                return match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EBADF) | Some(libc::ESRCH) => Asked::Gone,
                    _ => Asked::Unusable,
                };
            }
            let sock = OwnedFd::from_raw_fd(dup);
            let raw = sock.as_raw_fd();
            let mut proto: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            if libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_PROTOCOL,
                (&mut proto as *mut libc::c_int).cast(),
                &mut len,
            ) != 0
                || proto != libc::IPPROTO_TCP
            {
                return Asked::Other; // not a socket, or not TCP
            }
            // `struct tcp_info` begins with `tcpi_state`; the kernel copies what fits.
            let mut info = [0u8; 8];
            let mut ilen = info.len() as libc::socklen_t;
            let state = if libc::getsockopt(
                raw,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut ilen,
            ) == 0
            {
                info[0]
            } else {
                0
            };
            let mut local: libc::sockaddr_storage = std::mem::zeroed();
            let mut remote: libc::sockaddr_storage = std::mem::zeroed();
            let mut llen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let mut rlen = llen;
            let l_ok = libc::getsockname(
                raw,
                (&mut local as *mut libc::sockaddr_storage).cast(),
                &mut llen,
            ) == 0;
            let r_ok = libc::getpeername(
                raw,
                (&mut remote as *mut libc::sockaddr_storage).cast(),
                &mut rlen,
            ) == 0;
            match l_ok.then(|| sockaddr_of(&local)).flatten() {
                Some(local) => Asked::Tcp {
                    local,
                    remote: r_ok.then(|| sockaddr_of(&remote)).flatten(),
                    state,
                },
                None => Asked::Other,
            }
        }
    }
}

/// Classify one fd: one readlink, then the process's TCP tables only if it is a socket.
fn classify_by_proc(pid: u32, fd: u32) -> FdKind {
    let link = match std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
        Ok(l) => l,
        Err(_) => return FdKind::Gone,
    };
    let Some(inode) = link
        .to_str()
        .and_then(|l| l.strip_prefix("socket:["))
        .and_then(|l| l.strip_suffix(']'))
        .and_then(|i| i.parse::<u64>().ok())
    else {
        return FdKind::Other;
    };
    let Ok(p) = Process::new(pid as i32) else {
        return FdKind::Gone;
    };
    for entries in [p.tcp(), p.tcp6()].into_iter().flatten() {
        if let Some(e) = entries.into_iter().find(|e| e.inode == inode) {
            return FdKind::Tcp {
                local: e.local_address,
                remote: e.remote_address,
            };
        }
    }
    FdKind::Other
}

/// Where the targeting thread gets the processes to trace: [`Scanner`] (standalone mode, flags)
/// or `pod_targets::PodScanner` (Kubernetes mode, opted-in pods).
pub trait TargetSource: Send {
    /// The processes that should be traced now.
    fn scan(&mut self) -> Vec<Target>;

    /// Port-publishing proxies recognised on a selected port and left untraced.
    fn port_proxies(&self) -> Vec<PortProxy> {
        Vec::new()
    }

    /// How often this source wants a full scan, where it must be more often than the agent's
    /// interval (Kubernetes: a process that joins a pod's cgroup without an exec is seen only
    /// by a scan).
    fn interval(&self) -> Option<Duration> {
        None
    }

    /// Whether what selects targets changed since the last call (Kubernetes: a namespace or pod
    /// event), so a scan should run now rather than at the next interval.
    fn changed(&mut self) -> bool {
        false
    }

    /// Which of `pids` (processes that just exec'd) should be traced now. By default one full
    /// scan; a source that can judge one process cheaply does so.
    fn check(&mut self, pids: &[u32]) -> Vec<Target> {
        self.scan()
            .into_iter()
            .filter(|t| pids.binary_search(&t.pid).is_ok())
            .collect()
    }
}

impl TargetSource for Scanner {
    fn scan(&mut self) -> Vec<Target> {
        Scanner::scan(self)
    }

    fn port_proxies(&self) -> Vec<PortProxy> {
        Scanner::port_proxies(self)
    }

    /// By pid, command line or listening port, one process at a time (its own sockets: the
    /// process just exec'd or listened).
    fn check(&mut self, pids: &[u32]) -> Vec<Target> {
        let mut out = Vec::new();
        for &pid in pids {
            if pid == self.self_pid {
                continue;
            }
            let Ok(p) = Process::new(pid as i32) else {
                continue;
            };
            if self.selector.pids.contains(&pid) {
                out.push(target(&p, "pid".into()));
                continue;
            }
            if !self.selector.ports.is_empty() {
                let port = tcp_sockets(pid)
                    .into_iter()
                    .filter(|s| s.listening)
                    .map(|s| s.local.port())
                    .find(|port| self.selector.ports.contains(port));
                // A port-publishing proxy (docker-proxy, …) is not the server behind it.
                if let Some(port) = port.filter(|_| is_port_proxy(pid).is_none()) {
                    out.push(target(&p, format!("port {port}")));
                    continue;
                }
            }
            if let Some(re) = &self.selector.cmdline {
                let Ok(args) = p.cmdline() else { continue };
                if !args.is_empty() && re.is_match(&args.join(" ")) {
                    out.push(target(&p, "cmdline".into()));
                }
            }
        }
        out
    }
}

const LISTEN_SCAN_EVERY: std::time::Duration = std::time::Duration::from_millis(900);
const OWNER_SCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The network namespace of a process: the inode of `/proc/<pid>/ns/net` (`net:[N]`).
pub fn netns_of(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    link.to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Executable names of host-side port-publishing proxies: they listen on a container's published
/// port in the host's namespace and forward to the server in the container's, so the server,
/// not the proxy, is the target (tracing both would count every request twice).
const PORT_PROXIES: &[&str] = &[
    "docker-proxy",
    "rootlessport",
    "rootlessport-child",
    "slirp4netns",
    "pasta",
    "pasta.avx2",
];

/// Whether a process is a port-publishing proxy, by its command name (`comm`, the name it was
/// executed as, at most 15 bytes) or its executable's file name.
pub fn is_port_proxy(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default();
    let is_proxy = |name: &str| {
        PORT_PROXIES
            .iter()
            .any(|p| name == *p || (name.len() == 15 && p.starts_with(name)))
    };
    if is_proxy(&comm) {
        return Some(comm);
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = exe.file_name()?.to_str()?;
    is_proxy(name).then(|| name.to_string())
}

/// A port-publishing proxy listening on a selected port, not targeted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortProxy {
    pub pid: u32,
    pub comm: String,
    pub port: u16,
    pub netns: Option<u64>,
}

/// A listening socket on a selected port: its port and network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listener {
    port: u16,
    netns: u64,
}

/// Listening TCP sockets of `pid`'s network namespace, from its TCP tables in /proc.
fn proc_listeners(pid: u32) -> Vec<super::sock_diag::ListenSocket> {
    let Ok(p) = Process::new(pid as i32) else {
        return Vec::new();
    };
    [p.tcp(), p.tcp6()]
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.state == TcpState::Listen)
        .map(|e| super::sock_diag::ListenSocket {
            inode: e.inode,
            port: e.local_address.port(),
        })
        .collect()
}

/// Scans /proc for targets. Keeps a cache of listening-socket owners so that port selection
/// does not read every process's fds on every scan.
pub struct Scanner {
    selector: Selector,
    self_pid: u32,
    /// Listening socket inode → the processes holding it (forked workers share one), for port
    /// selection.
    listen_owner: HashMap<u64, Vec<u32>>,
    /// Listening socket inode → its port and namespace, as of the last read of the TCP tables.
    listeners: HashMap<u64, Listener>,
    /// Proxies found holding a selected port's listener, as of the last owner scan.
    proxies: Vec<PortProxy>,
    last_listen_scan: Option<std::time::Instant>,
    last_owner_scan: Option<std::time::Instant>,
    /// `sock_diag` failed once (and said so): /proc is read instead.
    sock_diag_failed: bool,
}

impl Scanner {
    pub fn new(selector: Selector) -> Scanner {
        Scanner {
            selector,
            self_pid: std::process::id(),
            listen_owner: HashMap::new(),
            listeners: HashMap::new(),
            proxies: Vec::new(),
            last_listen_scan: None,
            last_owner_scan: None,
            sock_diag_failed: false,
        }
    }

    /// Port-publishing proxies on a selected port, which are not targeted.
    pub fn port_proxies(&self) -> Vec<PortProxy> {
        self.proxies.clone()
    }

    /// The processes that should be traced now.
    pub fn scan(&mut self) -> Vec<Target> {
        let mut out: HashMap<u32, Target> = HashMap::new();
        for &pid in &self.selector.pids {
            if let Ok(p) = Process::new(pid as i32) {
                out.insert(pid, target(&p, "pid".into()));
            }
        }
        if !self.selector.ports.is_empty() {
            for (pid, port) in self.port_owners() {
                if let Ok(p) = Process::new(pid as i32) {
                    out.entry(pid)
                        .or_insert_with(|| target(&p, format!("port {port}")));
                }
            }
        }
        if let Some(re) = &self.selector.cmdline {
            if let Ok(all) = procfs::process::all_processes() {
                for p in all.flatten() {
                    let pid = p.pid as u32;
                    if pid == self.self_pid || out.contains_key(&pid) {
                        continue;
                    }
                    // Kernel threads have an empty cmdline.
                    let Ok(args) = p.cmdline() else { continue };
                    if args.is_empty() {
                        continue;
                    }
                    if re.is_match(&args.join(" ")) {
                        out.insert(pid, target(&p, "cmdline".into()));
                    }
                }
            }
        }
        out.remove(&self.self_pid);
        let mut v: Vec<Target> = out.into_values().collect();
        v.sort_by_key(|t| t.pid);
        v
    }

    /// Listening sockets on a selected port in every network namespace of the node: each
    /// distinct namespace is asked once, through one of its processes — by `sock_diag` (the
    /// kernel's listening hash only), or where that fails by its TCP tables in /proc.
    fn selected_listeners(&mut self) -> HashMap<u64, Listener> {
        let mut namespaces: HashMap<u64, u32> = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(ns) = netns_of(pid) {
                    namespaces.entry(ns).or_insert(pid);
                }
            }
        }
        let own_ns = netns_of(self.self_pid);
        let own = std::fs::File::open("/proc/self/ns/net").ok();
        let mut wanted: HashMap<u64, Listener> = HashMap::new();
        for (netns, pid) in namespaces {
            let by_diag = own.as_ref().and_then(|own| {
                let ns = if Some(netns) == own_ns {
                    None
                } else {
                    Some(std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?)
                };
                let found = super::sock_diag::open_in(ns.as_ref(), own)
                    .and_then(|sock| super::sock_diag::listening(&sock));
                match found {
                    Ok(found) => Some(found),
                    Err(e) => {
                        if !self.sock_diag_failed {
                            self.sock_diag_failed = true;
                            tracing::info!(error = %e, "Listening sockets cannot be asked of the kernel (sock_diag); reading /proc/<pid>/net/tcp instead.");
                        }
                        None
                    }
                }
            });
            let found = by_diag.unwrap_or_else(|| proc_listeners(pid));
            for l in found {
                if self.selector.ports.contains(&l.port) {
                    wanted.insert(
                        l.inode,
                        Listener {
                            port: l.port,
                            netns,
                        },
                    );
                }
            }
        }
        wanted
    }

    /// Pids listening on a selected port (in any network namespace), proxies left out.
    fn port_owners(&mut self) -> Vec<(u32, u16)> {
        // Reading the TCP tables walks every socket of the machine: at most once a second (new
        // servers are still found within the second the issue asks for).
        let now = std::time::Instant::now();
        let due = self
            .last_listen_scan
            .is_none_or(|t| now.duration_since(t) >= LISTEN_SCAN_EVERY);
        if due {
            self.last_listen_scan = Some(now);
            let wanted = self.selected_listeners();
            self.listen_owner
                .retain(|inode, _| wanted.contains_key(inode));
            let unknown = wanted.keys().any(|i| !self.listen_owner.contains_key(i));
            // Processes sharing a known listener (forked workers) appear without a new inode:
            // look for them now and then too.
            let stale = self
                .last_owner_scan
                .is_none_or(|t| now.duration_since(t) >= OWNER_SCAN_EVERY);
            if wanted.is_empty() {
                self.proxies.clear();
            } else if unknown || stale {
                self.last_owner_scan = Some(now);
                let mut owners: HashMap<u64, Vec<u32>> = HashMap::new();
                let mut proxies = Vec::new();
                if let Ok(all) = procfs::process::all_processes() {
                    for p in all.flatten() {
                        let Ok(fds) = p.fd() else { continue };
                        let pid = p.pid as u32;
                        let mut proxy: Option<Option<String>> = None;
                        for fd in fds.flatten() {
                            let FDTarget::Socket(inode) = fd.target else {
                                continue;
                            };
                            let Some(l) = wanted.get(&inode) else {
                                continue;
                            };
                            match proxy.get_or_insert_with(|| is_port_proxy(pid)) {
                                Some(comm) => proxies.push(PortProxy {
                                    pid,
                                    comm: comm.clone(),
                                    port: l.port,
                                    netns: Some(l.netns),
                                }),
                                None => owners.entry(inode).or_default().push(pid),
                            }
                        }
                    }
                }
                proxies.sort_by_key(|p| (p.pid, p.port));
                proxies.dedup();
                self.proxies = proxies;
                // A listener held only by proxies is known too (not looked for again).
                for inode in wanted.keys() {
                    owners.entry(*inode).or_default();
                }
                self.listen_owner = owners;
            }
            self.listeners = wanted;
        }
        let mut out: Vec<(u32, u16)> = self
            .listen_owner
            .iter()
            .filter_map(|(inode, pids)| self.listeners.get(inode).map(|l| (pids, l.port)))
            .flat_map(|(pids, port)| pids.iter().map(move |pid| (*pid, port)))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn finds_this_process_sockets_and_targets_by_port_and_pid() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_s, _) = l.accept().unwrap();
        let socks = tcp_sockets(std::process::id());
        assert!(socks.iter().any(|s| s.listening && s.local.port() == port));
        assert!(socks
            .iter()
            .any(|s| !s.listening && s.remote == c.local_addr().unwrap()));
        // Asked socket by socket, or read from the TCP tables: the same sockets. A half-closed
        // one (its peer shut down) is still there; a socket never connected is not.
        let half = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (peer, _) = l.accept().unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        let _unconnected = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // Only this test's sockets: other tests in this binary open and close theirs meanwhile.
        use std::os::fd::AsRawFd;
        let mine = [
            l.as_raw_fd(),
            c.as_raw_fd(),
            _s.as_raw_fd(),
            half.as_raw_fd(),
            peer.as_raw_fd(),
            _unconnected.as_raw_fd(),
        ];
        let me = Process::new(std::process::id() as i32).unwrap();
        let mut fds = socket_descriptors(&me);
        fds.retain(|(fd, _)| mine.contains(&(*fd as i32)));
        assert_eq!(fds.len(), mine.len());
        let key = |s: &ProcSocket| (s.fd, s.inode, s.local, s.remote, s.listening);
        let mut asked: Vec<_> = tcp_sockets_by_pidfd(std::process::id(), &fds)
            .expect("pidfd_getfd on the agent's own process")
            .iter()
            .map(key)
            .collect();
        let mut tables: Vec<_> = tcp_sockets_from_tables(&me, &fds).iter().map(key).collect();
        asked.sort();
        tables.sort();
        assert_eq!(asked, tables);
        let half_fd = half.as_raw_fd() as u32;
        assert!(asked.iter().any(|s| s.0 == half_fd), "close-wait is kept");
        // The listener, the two ends of the first connection, the half-closed end; not the
        // end in FIN_WAIT2 nor the socket never connected.
        assert_eq!(asked.len(), 4, "{asked:?}");

        // One fd at a time: TCP with both addresses, a file is something else, a closed fd is gone.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&c) as u32;
        assert_eq!(
            classify_fd(std::process::id(), fd),
            FdKind::Tcp {
                local: c.local_addr().unwrap(),
                remote: c.peer_addr().unwrap()
            }
        );
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let ffd = std::os::fd::AsRawFd::as_raw_fd(&file) as u32;
        assert_eq!(classify_fd(std::process::id(), ffd), FdKind::Other);
        assert_eq!(classify_fd(std::process::id(), 99_999), FdKind::Gone);
        // The /proc fallback agrees.
        assert_eq!(
            classify_by_proc(std::process::id(), fd),
            classify_fd(std::process::id(), fd)
        );
        assert_eq!(classify_by_proc(std::process::id(), ffd), FdKind::Other);

        // The scanner never targets the agent itself; a child process by pid is found.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let mut s = Scanner::new(Selector {
            pids: vec![child.id()],
            ports: vec![port],
            cmdline: None,
        });
        let t = s.scan();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].pid, child.id());
        assert_eq!(t[0].reason, "pid");
        let mut s = Scanner::new(Selector {
            cmdline: Some(Regex::new("^sleep 5$").unwrap()),
            ..Default::default()
        });
        assert!(s
            .scan()
            .iter()
            .any(|t| t.pid == child.id() && t.reason == "cmdline"));
        child.kill().unwrap();
        let _ = child.wait();
    }

    #[test]
    fn provider_follows_the_command_line() {
        assert_eq!(
            provider_of("python3 -m vllm.entrypoints.openai.api_server"),
            "vllm"
        );
        assert_eq!(provider_of("python -m sglang.launch_server"), "sglang");
        assert_eq!(provider_of("/app/llama-server -m x.gguf"), "llama.cpp");
        assert_eq!(provider_of("text-generation-launcher --model-id x"), "tgi");
        assert_eq!(provider_of("/epp --pool-name p"), "llm-d");
        assert_eq!(provider_of("python3 app.py"), "openai_compatible");
    }

    #[test]
    fn default_cmdline_matches_inference_servers_only() {
        let re = Regex::new(DEFAULT_CMDLINE).unwrap();
        for yes in [
            "/usr/bin/python3 -m vllm.entrypoints.openai.api_server --model x",
            "vllm serve meta-llama/Llama-3-8B",
            "python -m sglang.launch_server",
            "/app/llama-server -m model.gguf",
            "text-generation-launcher --model-id x",
            "/epp --pool-name x",
        ] {
            assert!(re.is_match(yes), "{yes}");
        }
        for no in [
            "bash",
            "python3 app.py",
            "/usr/sbin/sshd -D",
            "sleep 100",
            "prepper",
        ] {
            assert!(!re.is_match(no), "{no}");
        }
    }
}
