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
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use infertap_common::{target_bit, ConnInfo, ConnKey, ROLE_CLIENT, ROLE_SERVER};
use tokio::sync::mpsc;

use super::targets::{
    classify_fd, netns_of, start_time, tcp_sockets, FdKind, Target, TargetSource,
};
use super::uprobe::{self, TlsPlan};
use crate::capture::clock::WallClock;
use crate::capture::decode::Role;
use crate::export::status::{PortProxyStatus, StatusSource, TargetStatus};
use crate::pipeline::{ExistingSocket, Node};

/// Userspace-assigned connection ids (sockets found already open) have the top bit set, so they
/// never collide with the kernel's (timestamps).
const USER_CONN_ID_BIT: u64 = 1 << 63;

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
    /// Files of a new target whose TLS can be probed (or why not), for the pipeline to attach.
    Tls { pid: u32, plans: Vec<TlsPlan> },
}

/// The maps both the targeting thread and the pipeline write.
pub struct KernelMaps {
    /// The bitmap of targeted tgids (`infertap_common::target_bit`).
    targets: Array<MapData, u64>,
    /// The same bitmap for targets with TLS uprobes attached.
    tls_targets: Array<MapData, u64>,
    sockets: BpfHashMap<MapData, ConnKey, ConnInfo>,
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
    }
}

impl KernelMaps {
    pub fn new(
        targets: Array<MapData, u64>,
        tls_targets: Array<MapData, u64>,
        sockets: BpfHashMap<MapData, ConnKey, ConnInfo>,
    ) -> KernelMaps {
        KernelMaps {
            targets,
            tls_targets,
            sockets,
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
}

impl Node for KernelNode {
    fn classify_fd(&mut self, tgid: u32, fd: u32) -> FdKind {
        classify_fd(tgid, fd)
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
    }

    fn now_ns(&self) -> u64 {
        WallClock::monotonic_now()
    }
}

/// The targeting thread's body: scans until `stop`, every `interval`.
pub fn targeting_loop(
    mut scanner: Box<dyn TargetSource>,
    kmaps: Arc<Mutex<KernelMaps>>,
    ctl: mpsc::Sender<Control>,
    status: StatusSource,
    interval: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
    heartbeat: crate::liveness::Heartbeat,
) {
    let mut current: BTreeMap<u32, Target> = BTreeMap::new();
    // Start time of each current target: a pid whose process changed is a new target.
    let mut started: HashMap<u32, Option<u64>> = HashMap::new();
    // Network namespace of each current target (for /status).
    let mut netns: HashMap<u32, Option<u64>> = HashMap::new();
    let mut known_proxies: Vec<super::targets::PortProxy> = Vec::new();
    let mut next_conn_id: u64 = 0;
    while !*stop.borrow() {
        heartbeat.beat("scanning for targets");
        let found = scanner.scan();
        let wanted: BTreeMap<u32, Target> = found.into_iter().map(|t| (t.pid, t)).collect();
        for pid in current.keys().copied().collect::<Vec<_>>() {
            let reused = wanted.contains_key(&pid)
                && started.get(&pid).copied().flatten() != start_time(pid);
            if !wanted.contains_key(&pid) || reused {
                current.remove(&pid);
                started.remove(&pid);
                netns.remove(&pid);
                lock(&kmaps).forget_process(pid);
                let _ = ctl.blocking_send(Control::Gone { pid });
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
        for (pid, t) in &wanted {
            if current.contains_key(pid) {
                continue;
            }
            // Trace first, then look for sockets already open: a socket accepted in between is
            // inserted by the kernel itself, and the insert below does not overwrite it.
            {
                let mut m = lock(&kmaps);
                if let Err(e) = m.set_target(*pid, true) {
                    tracing::warn!(pid, error = %e, "Cannot target process (pid above kernel.pid_max when the agent started?).");
                    continue;
                }
            }
            let socks = tcp_sockets(*pid);
            let listeners: HashMap<u32, SocketAddr> = socks
                .iter()
                .filter(|s| s.listening)
                .map(|s| (s.fd, s.local))
                .collect();
            let ports: Vec<u16> = listeners.values().map(|a| a.port()).collect();
            let _ = ctl.blocking_send(Control::Target {
                pid: *pid,
                listeners,
                provider: t.provider,
            });
            for s in socks.iter().filter(|s| !s.listening) {
                next_conn_id += 1;
                let conn_id = USER_CONN_ID_BIT | next_conn_id;
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
                    tgid: *pid,
                    fd: s.fd,
                };
                let inserted = lock(&kmaps)
                    .sockets
                    .insert(key, info, 1 /* BPF_NOEXIST */)
                    .is_ok();
                if inserted {
                    let _ = ctl.blocking_send(Control::Existing(ExistingSocket {
                        pid: *pid,
                        fd: s.fd,
                        conn_id,
                        role,
                        local: s.local,
                        peer: s.remote,
                    }));
                }
            }
            // TLS: find the uprobe sites here (reading and parsing binaries blocks); the pipeline,
            // which owns the programs, attaches them.
            heartbeat.beat("planning TLS uprobes");
            let plans = uprobe::plan(*pid);
            if !plans.is_empty() {
                let _ = ctl.blocking_send(Control::Tls { pid: *pid, plans });
            }
            let ns = netns_of(*pid);
            tracing::info!(pid, comm = %t.comm, reason = %t.reason, netns = ?ns, "Tracing process.");
            current.insert(*pid, t.clone());
            started.insert(*pid, start_time(*pid));
            netns.insert(*pid, ns);
        }
        let proxies = scanner.port_proxies();
        for p in proxies.iter().filter(|p| !known_proxies.contains(p)) {
            tracing::info!(pid = p.pid, comm = %p.comm, port = p.port, netns = ?p.netns, "Port-publishing proxy on a target port; not traced (the server behind it is).");
        }
        status.update(|s| {
            s.targets = current
                .values()
                .map(|t| TargetStatus {
                    pid: t.pid,
                    comm: t.comm.clone(),
                    reason: t.reason.clone(),
                    netns: netns.get(&t.pid).copied().flatten(),
                })
                .collect();
            s.port_proxies = proxies
                .iter()
                .map(|p| PortProxyStatus {
                    pid: p.pid,
                    comm: p.comm.clone(),
                    port: p.port,
                    netns: p.netns,
                })
                .collect();
        });
        known_proxies = proxies;
        heartbeat.beat("waiting for the next scan");
        std::thread::sleep(interval);
    }
}
