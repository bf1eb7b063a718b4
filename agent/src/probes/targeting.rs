//! The targeting thread and the kernel maps it writes.
//!
//! A plain thread (reading /proc blocks): every scan interval it asks the [`TargetSource`] which
//! processes to trace, sets and clears their bits in the kernel's target bitmap, inserts the TCP
//! sockets they already have open, plans their TLS uprobes, and tells the pipeline task what
//! changed ([`Control`], a bounded channel). [`KernelMaps`] is the one writer of the target
//! bitmaps and the socket map (shared with the pipeline task under a mutex); [`KernelNode`] is
//! what the pure pipeline asks of the node, answered from /proc and these maps.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use infertap_common::{
    target_bit, ConnInfo, ConnKey, Forgotten, CONN_FLAGS_LOST_ANY, CONN_FLAG_TLS,
    CONN_ID_TIME_MASK, ROLE_CLIENT, ROLE_SERVER,
};
use tokio::sync::mpsc;

use super::targets::{
    classify_fd, netns_of, start_time, tcp_sockets, FdKind, PortProxy, ProcSocket, Target,
    TargetSource,
};
use super::uprobe::{self, TlsPlan};
use crate::capture::clock::WallClock;
use crate::capture::decode::Role;
use crate::export::status::{PortProxyStatus, StatusSource, TargetStatus};
use crate::pipeline::{ExistingSocket, ForgottenSocket, Node};

/// Userspace-assigned connection ids (sockets found already open) have the top bit set, so they
/// never collide with the kernel's (timestamps); the rest is the monotonic time they were
/// found (`CONN_ID_TIME_MASK`), which the kernel compares with a `close_range` or an exec.
const USER_CONN_ID_BIT: u64 = !CONN_ID_TIME_MASK;

/// What the targeting thread tells the pipeline.
#[derive(Debug)]
pub enum Control {
    /// A process became a target; its listening sockets (fd → local address).
    Target {
        pid: u32,
        listeners: HashMap<u32, SocketAddr>,
        provider: &'static str,
    },
    /// A socket that was open before tracing began.
    Existing(ExistingSocket),
    /// A process is no longer a target.
    Gone { pid: u32 },
    /// Userspace found descriptors of a target that no longer name the sockets the kernel map
    /// had for them (`FORGET_RECONCILE`); their entries are removed already.
    Forgotten {
        pid: u32,
        sockets: Vec<ForgottenSocket>,
    },
    /// Files of a new target whose TLS can be probed (or why not), for the pipeline to attach.
    Tls { pid: u32, plans: Vec<TlsPlan> },
    /// A sample of a target's `/metrics` fetched by the agent's own poll (`runtime_poll`), taken
    /// at kernel monotonic `at_ns`.
    Runtime {
        pid: u32,
        at_ns: u64,
        sample: Box<crate::protocol::runtime_metrics::RuntimeSample>,
    },
}

/// The maps both the targeting thread and the pipeline write.
pub struct KernelMaps {
    /// The bitmap of targeted tgids (`infertap_common::target_bit`).
    targets: Array<MapData, u64>,
    /// The same bitmap for targets with TLS uprobes attached.
    tls_targets: Array<MapData, u64>,
    sockets: BpfHashMap<MapData, ConnKey, ConnInfo>,
    /// Descriptor ranges of targets that went stale in the kernel (`close_range`, exec), until
    /// swept.
    forgotten: BpfHashMap<MapData, u32, Forgotten>,
    /// When (kernel monotonic ns) each targeted pid's bit was set: an exit record older than
    /// that belongs to an earlier process with the same pid and must not untarget this one.
    targeted_at: HashMap<u32, u64>,
}

/// Set or clear a process's bit in a tgid bitmap (`infertap_common::target_bit`).
fn set_bit(map: &mut Array<MapData, u64>, pid: u32, on: bool) -> Result<(), aya::maps::MapError> {
    let (word, bit) = target_bit(pid);
    let cur = map.get(&word, 0)?;
    let new = if on { cur | bit } else { cur & !bit };
    map.set(word, new, 0)
}

impl KernelMaps {
    /// Set or clear a process's bit. Only this struct writes the bitmap, under its mutex, so the
    /// read-modify-write of a word is safe.
    pub fn set_target(&mut self, pid: u32, on: bool) -> Result<(), aya::maps::MapError> {
        set_bit(&mut self.targets, pid, on)?;
        if on {
            self.targeted_at.insert(pid, WallClock::monotonic_now());
        }
        Ok(())
    }

    /// A targeted process exited at `exit_ns`: forgotten, unless its pid was targeted again
    /// since (a new process reusing the pid).
    pub fn process_exited(&mut self, pid: u32, exit_ns: u64) {
        if self.targeted_at.get(&pid).is_some_and(|&t| t > exit_ns) {
            return;
        }
        self.forget_process(pid);
    }

    /// Mark a target as having TLS uprobes: its socket syscalls then pair TLS objects to sockets.
    pub fn set_tls_target(&mut self, pid: u32, on: bool) -> Result<(), aya::maps::MapError> {
        set_bit(&mut self.tls_targets, pid, on)
    }

    pub fn forget_process(&mut self, pid: u32) {
        self.targeted_at.remove(&pid);
        let _ = self.set_target(pid, false);
        let _ = self.set_tls_target(pid, false);
        let keys: Vec<ConnKey> = self
            .sockets
            .keys()
            .flatten()
            .filter(|k| k.tgid == pid)
            .collect();
        for k in keys {
            let _ = self.sockets.remove(&k);
        }
        let _ = self.forgotten.remove(&pid);
    }

    /// The sockets of `tgid` with a descriptor in `lo..=hi` whose connection began before
    /// `at_ns` are removed and returned; the process's `FORGOTTEN` entry goes if nothing newer
    /// was merged into it.
    pub fn forget_fds(&mut self, tgid: u32, lo: u32, hi: u32, at_ns: u64) -> Vec<ForgottenSocket> {
        let stale: Vec<(ConnKey, ConnInfo)> = self
            .sockets
            .iter()
            .flatten()
            .filter(|(k, v)| {
                k.tgid == tgid
                    && (lo..=hi).contains(&k.fd)
                    && v.conn_id & CONN_ID_TIME_MASK <= at_ns
            })
            .collect();
        let mut out = Vec::with_capacity(stale.len());
        for (k, v) in stale {
            if self.remove_if_same(k, v.conn_id) {
                out.push(forgotten_socket(k, &v));
            }
        }
        if self.forgotten.get(&tgid, 0).is_ok_and(|f| f.ts_ns <= at_ns) {
            let _ = self.forgotten.remove(&tgid);
        }
        out
    }

    /// Remove `key` if it is still connection `conn_id`; whether it was.
    fn remove_if_same(&mut self, key: ConnKey, conn_id: u64) -> bool {
        if self
            .sockets
            .get(&key, 0)
            .is_ok_and(|v| v.conn_id == conn_id)
        {
            return self.sockets.remove(&key).is_ok();
        }
        false
    }

    /// The kernel map's entries, grouped by process (one pass over the map).
    pub fn sockets_by_process(&self) -> HashMap<u32, Vec<(u32, ConnInfo)>> {
        let mut out: HashMap<u32, Vec<(u32, ConnInfo)>> = HashMap::new();
        for (k, v) in self.sockets.iter().flatten() {
            out.entry(k.tgid).or_default().push((k.fd, v));
        }
        out
    }
}

fn forgotten_socket(k: ConnKey, v: &ConnInfo) -> ForgottenSocket {
    ForgottenSocket {
        fd: k.fd,
        conn_id: v.conn_id,
        // TLS sockets' positions count ciphertext, not the plaintext userspace parses.
        after_loss: (v.flags & CONN_FLAGS_LOST_ANY != 0 && v.flags & CONN_FLAG_TLS == 0)
            .then_some([v.rx_pos, v.tx_pos]),
    }
}

impl KernelMaps {
    pub fn new(
        targets: Array<MapData, u64>,
        tls_targets: Array<MapData, u64>,
        sockets: BpfHashMap<MapData, ConnKey, ConnInfo>,
        forgotten: BpfHashMap<MapData, u32, Forgotten>,
    ) -> KernelMaps {
        KernelMaps {
            targets,
            tls_targets,
            sockets,
            forgotten,
            targeted_at: HashMap::new(),
        }
    }
}

/// Locks the maps (a panicked holder left them consistent: every write is one map call).
pub fn lock(maps: &Mutex<KernelMaps>) -> std::sync::MutexGuard<'_, KernelMaps> {
    maps.lock().unwrap_or_else(|e| e.into_inner())
}

/// The node as the pipeline sees it: descriptors through /proc and `pidfd_getfd`, the kernel maps.
pub struct KernelNode {
    pub maps: Arc<Mutex<KernelMaps>>,
    /// The kernel socket map through its own handle: read without `maps`'s lock, which the
    /// targeting thread holds while it sweeps the whole map.
    pub sockets: BpfHashMap<MapData, ConnKey, ConnInfo>,
    /// Exec events for the targeting thread (`targeting_loop`).
    pub execs: std::sync::mpsc::Sender<Exec>,
    /// Source addresses of the agent's own `/metrics` polls (`runtime_poll`), never traced.
    pub own: Arc<crate::runtime_poll::OwnConnections>,
}

/// What the kernel reported of a process, for the targeting thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exec {
    pub pid: u32,
    pub was_target: bool,
    pub kind: ProcEvent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcEvent {
    /// `sched_process_exec`.
    Exec,
    /// `listen(2)` returned 0.
    Listen,
    /// A target exited (`sched_process_exit`).
    Exit,
}

impl Node for KernelNode {
    fn classify_fd(&mut self, tgid: u32, fd: u32) -> FdKind {
        classify_fd(tgid, fd)
    }

    fn still_names(&mut self, tgid: u32, fd: u32, conn_id: u64) -> bool {
        self.sockets
            .get(&ConnKey { tgid, fd }, 0)
            .is_ok_and(|v| v.conn_id == conn_id)
    }

    fn untrace(&mut self, tgid: u32, fd: u32, conn_id: u64) {
        let mut maps = lock(&self.maps);
        let key = ConnKey { tgid, fd };
        if maps
            .sockets
            .get(&key, 0)
            .is_ok_and(|v| v.conn_id == conn_id)
        {
            let _ = maps.sockets.remove(&key);
        }
    }

    fn process_exited(&mut self, tgid: u32, exit_ns: u64) {
        lock(&self.maps).process_exited(tgid, exit_ns);
        let _ = self.execs.send(Exec {
            pid: tgid,
            was_target: true,
            kind: ProcEvent::Exit,
        });
    }

    fn forget_fds(&mut self, tgid: u32, lo: u32, hi: u32, at_ns: u64) -> Vec<ForgottenSocket> {
        lock(&self.maps).forget_fds(tgid, lo, hi, at_ns)
    }

    fn exec(&mut self, tgid: u32, was_target: bool, listen: bool) {
        let _ = self.execs.send(Exec {
            pid: tgid,
            was_target,
            kind: if listen {
                ProcEvent::Listen
            } else {
                ProcEvent::Exec
            },
        });
    }

    fn now_ns(&self) -> u64 {
        WallClock::monotonic_now()
    }

    fn is_own_connection(&self, peer: SocketAddr, accepted_ns: u64) -> bool {
        self.own.claim(peer, accepted_ns)
    }
}

/// How often the kernel socket map is checked against `/proc/<pid>/fd`.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// Exec events are taken in batches gathered for up to this long (one check per batch).
const EXEC_BATCH: Duration = Duration::from_millis(20);

/// The targeting thread's body: until `stop`, looks at every exec the kernel reports as it
/// happens, scans /proc for targets every `interval` (the safety net for whatever the events
/// miss: listeners on a selected port, a lost record), and every [`RECONCILE_EVERY`] checks the
/// kernel socket map against /proc.
#[allow(clippy::too_many_arguments)] // the thread's inputs, each from a different part of app::run
pub fn targeting_loop(
    scanner: Box<dyn TargetSource>,
    kmaps: Arc<Mutex<KernelMaps>>,
    ctl: mpsc::Sender<Control>,
    status: StatusSource,
    execs: std::sync::mpsc::Receiver<Exec>,
    interval: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
    heartbeat: crate::liveness::Heartbeat,
) {
    let mut t = Targeting {
        scanner,
        kmaps,
        ctl,
        status,
        current: BTreeMap::new(),
        started: HashMap::new(),
        last_conn_id: 0,
        inodes: HashMap::new(),
        netns: HashMap::new(),
        proxies: Vec::new(),
        heartbeat,
    };
    let interval = t.scanner.interval().map_or(interval, |i| i.min(interval));
    let mut next_scan = Instant::now();
    let mut next_reconcile = Instant::now() + RECONCILE_EVERY;
    while !*stop.borrow() {
        let now = Instant::now();
        if now >= next_scan || t.scanner.changed() {
            t.heartbeat.beat("scanning for targets");
            let found = t.scanner.scan();
            t.apply_scan(found);
            next_scan = now + interval;
        }
        if now >= next_reconcile {
            t.heartbeat.beat("reconciling traced sockets with /proc");
            t.reconcile();
            next_reconcile = now + RECONCILE_EVERY;
        }
        t.heartbeat.beat("waiting for the next scan or exec");
        // Wake for the next deadline, an exec, or (at the latest every 250 ms) to see `stop` and
        // whether what selects targets changed (`TargetSource::changed`).
        let wait = next_scan
            .min(next_reconcile)
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(250));
        match execs.recv_timeout(wait) {
            Ok(first) => {
                let mut batch = vec![first];
                let until = Instant::now() + EXEC_BATCH;
                while let Ok(e) =
                    execs.recv_timeout(until.saturating_duration_since(Instant::now()))
                {
                    batch.push(e);
                }
                t.apply_execs(&batch);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // No pipeline any more: scan on the timer alone.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
        }
    }
}

/// The targeting thread's state.
struct Targeting {
    scanner: Box<dyn TargetSource>,
    kmaps: Arc<Mutex<KernelMaps>>,
    ctl: mpsc::Sender<Control>,
    status: StatusSource,
    current: BTreeMap<u32, Target>,
    /// Start time of each current target: a pid whose process changed is a new target.
    started: HashMap<u32, Option<u64>>,
    /// The last userspace-assigned connection id (without `USER_CONN_ID_BIT`).
    last_conn_id: u64,
    /// The socket inode each traced (pid, fd, connection) had when reconciliation first saw it.
    inodes: HashMap<(u32, u32, u64), u64>,
    /// Network namespace of each current target (for /status).
    netns: HashMap<u32, Option<u64>>,
    /// Port-publishing proxies on target ports at the last scan (not traced; for /status).
    proxies: Vec<PortProxy>,
    heartbeat: crate::liveness::Heartbeat,
}

impl Targeting {
    /// A full scan's verdict: targets gone (or whose pid was reused) are dropped, new ones
    /// traced.
    fn apply_scan(&mut self, found: Vec<Target>) {
        let wanted: BTreeMap<u32, Target> = found.into_iter().map(|t| (t.pid, t)).collect();
        for pid in self.current.keys().copied().collect::<Vec<_>>() {
            let reused = wanted.contains_key(&pid)
                && self.started.get(&pid).copied().flatten() != start_time(pid);
            if !wanted.contains_key(&pid) || reused {
                self.drop_target(pid);
                if reused {
                    tracing::info!(
                        pid,
                        "Target exited and its pid was reused by a new process."
                    );
                } else {
                    tracing::info!(pid, "Target gone; no longer traced.");
                }
            }
        }
        for (pid, t) in wanted {
            if !self.current.contains_key(&pid) {
                self.add_target(t);
            }
        }
        let proxies = self.scanner.port_proxies();
        for p in proxies.iter().filter(|p| !self.proxies.contains(p)) {
            tracing::info!(pid = p.pid, comm = %p.comm, port = p.port, netns = ?p.netns, "Port-publishing proxy on a target port; not traced (the server behind it is).");
        }
        self.proxies = proxies;
        self.publish();
    }

    /// Processes that exec'd or listened: a target's sockets were all forgotten by the kernel (those that
    /// survived exec are found again here), and whether each process is (still) a target is
    /// decided now rather than at the next scan.
    fn apply_execs(&mut self, execs: &[Exec]) {
        let mut pids: Vec<u32> = execs.iter().map(|e| e.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        let wanted: HashMap<u32, Target> = self
            .scanner
            .check(&pids)
            .into_iter()
            .map(|t| (t.pid, t))
            .collect();
        let exec_of = |pid: u32| {
            execs
                .iter()
                .any(|e| e.pid == pid && e.kind == ProcEvent::Exec)
        };
        for pid in pids {
            // A new process with a target's pid (the old one exited and its exit record made the
            // kernel forget it): it is judged as a new process.
            let now_started = start_time(pid);
            if self.current.contains_key(&pid)
                && now_started.is_some()
                && self.started.get(&pid).copied().flatten() != now_started
            {
                self.drop_target(pid);
                tracing::info!(
                    pid,
                    "Target exited and its pid was reused by a new process."
                );
            }
            let exited = execs
                .iter()
                .any(|e| e.pid == pid && e.kind == ProcEvent::Exit);
            if exited && self.current.contains_key(&pid) {
                // Gone for good, unless a new process took the pid meanwhile (the scan decides).
                if !running(pid) {
                    self.drop_target(pid);
                    tracing::info!(pid, "Target exited; no longer traced.");
                }
                continue;
            }
            match (self.current.contains_key(&pid), wanted.get(&pid)) {
                // A target that listened: nothing changed for it.
                (true, _) if !exec_of(pid) => {}
                (true, Some(_)) => {
                    let socks = tcp_sockets(pid);
                    self.insert_existing(pid, &socks);
                }
                (true, None) => {
                    // Only a target found by its listening port may still be one: the next scan
                    // decides. Otherwise it no longer matches.
                    if !self.current[&pid].reason.starts_with("port") {
                        self.drop_target(pid);
                        tracing::info!(
                            pid,
                            "Target exec'd into a process that is not selected; no longer traced."
                        );
                    } else {
                        let socks = tcp_sockets(pid);
                        self.insert_existing(pid, &socks);
                    }
                }
                (false, Some(t)) => self.add_target(t.clone()),
                (false, None) => {}
            }
        }
        self.publish();
    }

    fn drop_target(&mut self, pid: u32) {
        self.current.remove(&pid);
        self.started.remove(&pid);
        self.netns.remove(&pid);
        self.inodes.retain(|(p, _, _), _| *p != pid);
        lock(&self.kmaps).forget_process(pid);
        let _ = self.ctl.blocking_send(Control::Gone { pid });
    }

    fn add_target(&mut self, t: Target) {
        let pid = t.pid;
        // Trace first, then look for sockets already open: a socket accepted in between is
        // inserted by the kernel itself, and the insert below does not overwrite it.
        if let Err(e) = lock(&self.kmaps).set_target(pid, true) {
            tracing::warn!(pid, error = %e, "Cannot target process (pid above kernel.pid_max when the agent started?).");
            return;
        }
        let socks = tcp_sockets(pid);
        let listeners: HashMap<u32, SocketAddr> = socks
            .iter()
            .filter(|s| s.listening)
            .map(|s| (s.fd, s.local))
            .collect();
        let _ = self.ctl.blocking_send(Control::Target {
            pid,
            listeners,
            provider: t.provider,
        });
        self.insert_existing(pid, &socks);
        // TLS: find the uprobe sites here (reading and parsing binaries blocks); the pipeline,
        // which owns the programs, attaches them.
        self.heartbeat.beat("planning TLS uprobes");
        let plans = uprobe::plan(pid);
        if !plans.is_empty() {
            let _ = self.ctl.blocking_send(Control::Tls { pid, plans });
        }
        let ns = netns_of(pid);
        tracing::info!(pid, comm = %t.comm, reason = %t.reason, netns = ?ns, "Tracing process.");
        self.current.insert(pid, t);
        self.started.insert(pid, start_time(pid));
        self.netns.insert(pid, ns);
    }

    /// Connected sockets of a target that the kernel map does not have yet.
    fn insert_existing(&mut self, pid: u32, socks: &[ProcSocket]) {
        let ports: Vec<u16> = socks
            .iter()
            .filter(|s| s.listening)
            .map(|s| s.local.port())
            .collect();
        for s in socks.iter().filter(|s| !s.listening) {
            // Unique, and not before now: the kernel compares it with close_range/exec times.
            self.last_conn_id = (self.last_conn_id + 1).max(WallClock::monotonic_now());
            let conn_id = USER_CONN_ID_BIT | self.last_conn_id;
            let role = if ports.contains(&s.local.port()) {
                Role::Server
            } else {
                Role::Client
            };
            let info = ConnInfo {
                conn_id,
                role: if role == Role::Server {
                    ROLE_SERVER
                } else {
                    ROLE_CLIENT
                },
                ..Default::default()
            };
            let key = ConnKey {
                tgid: pid,
                fd: s.fd,
            };
            let inserted = lock(&self.kmaps)
                .sockets
                .insert(key, info, 1 /* BPF_NOEXIST */)
                .is_ok();
            if inserted {
                self.inodes.insert((pid, s.fd, conn_id), s.inode);
                let _ = self.ctl.blocking_send(Control::Existing(ExistingSocket {
                    pid,
                    fd: s.fd,
                    conn_id,
                    role,
                    local: s.local,
                    peer: s.remote,
                }));
            }
        }
    }

    /// Check every entry of the kernel socket map against /proc: an entry whose descriptor is
    /// gone, is no socket, or is another socket than the one first seen there (closed where the
    /// kernel programs cannot see, e.g. through io_uring), and the entries of processes that are
    /// no longer targets, are removed. One `readlink` per entry.
    fn reconcile(&mut self) {
        let by_process = lock(&self.kmaps).sockets_by_process();
        let mut live = 0u64;
        let mut seen: std::collections::HashSet<(u32, u32, u64)> = Default::default();
        for (pid, entries) in by_process {
            if !self.current.contains_key(&pid) {
                lock(&self.kmaps).forget_process(pid);
                continue;
            }
            let mut gone = Vec::new();
            for (fd, info) in entries {
                let key = (pid, fd, info.conn_id);
                let stale = match (socket_inode(pid, fd), self.inodes.get(&key)) {
                    (FdNow::Unknown, _) => false,
                    (FdNow::NotASocket, _) => true,
                    (FdNow::Socket(now), Some(&first)) => now != first,
                    (FdNow::Socket(now), None) => {
                        self.inodes.insert(key, now);
                        false
                    }
                };
                if stale {
                    let k = ConnKey { tgid: pid, fd };
                    if lock(&self.kmaps).remove_if_same(k, info.conn_id) {
                        gone.push(forgotten_socket(k, &info));
                    }
                } else {
                    live += 1;
                    seen.insert(key);
                }
            }
            if !gone.is_empty() {
                tracing::debug!(
                    pid,
                    sockets = gone.len(),
                    "Descriptors no longer name their traced sockets; forgotten."
                );
                let _ = self
                    .ctl
                    .blocking_send(Control::Forgotten { pid, sockets: gone });
            }
        }
        self.inodes.retain(|k, _| seen.contains(k));
        self.status.update(|s| s.kernel_sockets = live);
    }

    fn publish(&self) {
        self.status.update(|s| {
            s.targets = self
                .current
                .values()
                .map(|t| TargetStatus {
                    pid: t.pid,
                    comm: t.comm.clone(),
                    reason: t.reason.clone(),
                    netns: self.netns.get(&t.pid).copied().flatten(),
                })
                .collect();
            s.port_proxies = self
                .proxies
                .iter()
                .map(|p| PortProxyStatus {
                    pid: p.pid,
                    comm: p.comm.clone(),
                    port: p.port,
                    netns: p.netns,
                })
                .collect();
        });
    }
}

/// Whether `pid` is a process that still runs (not gone, not a zombie waiting to be reaped).
fn running(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
}

/// What a descriptor names now, as reconciliation sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FdNow {
    /// A socket, by inode.
    Socket(u64),
    /// Gone, or a file, pipe or anything else.
    NotASocket,
    /// Not readable (no permission): left as it is.
    Unknown,
}

fn socket_inode(pid: u32, fd: u32) -> FdNow {
    match std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
        Ok(link) => link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|i| i.parse::<u64>().ok())
            .map_or(FdNow::NotASocket, FdNow::Socket),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => FdNow::Unknown,
        Err(_) => FdNow::NotASocket,
    }
}
