//! Wiring: configuration → probes → (targeting thread, capture pipeline task) → export, with the
//! debug endpoint reading snapshots, and one shutdown signal.
//!
//! The pipeline is one task that owns the connection table: records are decoded, applied to
//! connections, parsed, assembled into exchanges and turned into spans in arrival order, with no
//! queue between those stages. Side inputs (targets found in /proc) reach it over a bounded
//! channel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use clap::Parser;
use infertap_common::{target_bit, ConnInfo, ConnKey, ROLE_CLIENT, ROLE_SERVER};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::capture::clock::WallClock;
use crate::capture::decode::{decode, Record, Role};
use crate::config::{Config, Mode};
use crate::conn::{ConnId, ConnTable, Finished, Origin};
use crate::enrich::kubernetes::{self, KubeSettings, KubernetesEnricher, ProcPods};
use crate::enrich::Enrichers;
use crate::export::debug::{DebugServer, DebugState, Readiness};
use crate::export::metrics::otlp::{MetricsOtlpConfig, OtlpMetricsExporter};
use crate::export::metrics::RequestMetrics;
use crate::export::otlp::{config::OtlpConfig, OtlpSpanExporter};
use crate::export::status::{ProbeStatus, StatusSource, TargetStatus, TlsAttachStatus};
use crate::export::store::SpanStore;
use crate::export::SpanSink;
use crate::probes::pod_targets::PodScanner;
use crate::probes::targets::{
    classify_fd, start_time, tcp_sockets, FdKind, Scanner, Target, TargetSource,
};
use crate::probes::uprobe::{self, AttachOutcome, TlsPlan};
use crate::probes::{kernel_drops, kernel_lost_connections, Probes};
use crate::stats::Stats;
use crate::trace::build::{build_span, BuildOptions, RandomIds};

/// Userspace-assigned connection ids (sockets found already open) have the top bit set, so they
/// never collide with the kernel's (timestamps).
const USER_CONN_ID_BIT: u64 = 1 << 63;

/// How often the ring buffer is drained when the kernel has not woken us.
const DRAIN_INTERVAL_MS: u64 = 10;

/// What the targeting thread tells the pipeline.
#[derive(Debug)]
enum Control {
    /// A process became a target; its listening sockets (fd → local address).
    Target {
        pid: u32,
        listeners: HashMap<u32, SocketAddr>,
        provider: &'static str,
    },
    /// A socket that was open before tracing began.
    Existing {
        pid: u32,
        fd: u32,
        conn_id: u64,
        role: Role,
        local: SocketAddr,
        peer: SocketAddr,
    },
    /// A process is no longer a target.
    Gone { pid: u32 },
    /// Files of a new target whose TLS can be probed (or why not), for the pipeline to attach.
    Tls { pid: u32, plans: Vec<TlsPlan> },
}

/// The maps both the targeting thread and the pipeline write.
struct KernelMaps {
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
    fn set_target(&mut self, pid: u32, on: bool) -> Result<(), aya::maps::MapError> {
        set_bit(&mut self.targets, pid, on)?;
        if on {
            self.targeted_at.insert(pid, WallClock::monotonic_now());
        }
        Ok(())
    }

    /// A targeted process exited at `exit_ns`: forgotten, unless its pid was targeted again
    /// since (a new process reusing the pid).
    fn process_exited(&mut self, pid: u32, exit_ns: u64) {
        if self.targeted_at.get(&pid).is_some_and(|&t| t > exit_ns) {
            return;
        }
        self.forget_process(pid);
    }

    /// Mark a target as having TLS uprobes: its socket syscalls then pair TLS objects to sockets.
    fn set_tls_target(&mut self, pid: u32, on: bool) -> Result<(), aya::maps::MapError> {
        set_bit(&mut self.tls_targets, pid, on)
    }

    fn forget_process(&mut self, pid: u32) {
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

pub fn main() -> Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // kube-rs logs every failed request of a retrying watch at ERROR; the Kubernetes
                // source reports the outage once and its end itself (RUST_LOG overrides this).
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("infertap")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> Result<()> {
    let kubernetes = match config.resolved_mode() {
        Mode::Kubernetes => Some(config.kubernetes()?),
        _ => None,
    };
    let selector = config.selector()?;
    let stats = Arc::new(Stats::default());

    // Export first, so the debug endpoint can answer while probes load.
    let otlp_config = OtlpConfig::from_env().context("reading the OTEL_* configuration")?;
    let exporter = OtlpSpanExporter::spawn(&otlp_config, stats.clone())
        .context("starting the OTLP exporter")?;
    let request_metrics = Arc::new(RequestMetrics::new());
    let metrics_config =
        MetricsOtlpConfig::from_env().context("reading the OTEL_* metrics configuration")?;
    let metrics_exporter =
        OtlpMetricsExporter::spawn(&metrics_config, &request_metrics, stats.clone())
            .context("starting the OTLP metrics exporter")?;
    let store = Arc::new(SpanStore::new(config.span_buffer));
    let sink = SpanSink::new(store.clone(), exporter.sender(), stats.clone())
        .with_metrics(request_metrics.clone());
    let status = StatusSource::new(stats.clone(), exporter.state());
    let readiness = Readiness::new("the eBPF probes to attach");
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    // GPU telemetry: never fails the agent; what cannot start is off, with the reason.
    let gpu = crate::gpu::start(
        config.gpu,
        config.nvml_lib.clone(),
        config.dcgm_exporter_url.clone(),
        stats.clone(),
        shutdown_rx.clone(),
    );
    crate::gpu::view::publish_status(&gpu.hub, &status);
    if let Some(provider) = metrics_exporter.meter_provider() {
        crate::gpu::view::register_otlp(provider, &gpu.hub);
    }
    {
        let (hub, status, mut stop) = (gpu.hub.clone(), status.clone(), shutdown_rx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        crate::gpu::view::publish_status(&hub, &status);
                        hub.sync_targets(status.app().targets.iter().map(|t| t.pid));
                    }
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
    }
    let debug_state = DebugState::new(store, status.clone(), readiness.clone())
        .with_metric_source(request_metrics)
        .with_metric_source(Arc::new(crate::gpu::view::GpuMetrics {
            hub: gpu.hub.clone(),
        }))
        .with_gpu(gpu.hub.clone());
    let server = DebugServer::bind(config.debug_addr, debug_state).await?;
    tracing::info!(addr = %server.local_addr(), "Debug endpoint listening.");
    let mut debug_shutdown = shutdown_rx.clone();
    let debug_task = tokio::spawn(server.serve(async move {
        let _ = debug_shutdown.wait_for(|s| *s).await;
    }));

    // Where targets come from: flags (standalone) or the opted-in pods of this node (kubernetes).
    let mut enrichers = Enrichers::default();
    let source: Box<dyn TargetSource> = match kubernetes {
        Some((cmdline, node)) => {
            if !config.target_pids.is_empty() || !config.target_ports.is_empty() {
                tracing::warn!("--target-pid and --target-port are ignored in kubernetes mode; use the pod annotations infertap.io/target and infertap.io/ports.");
            }
            let settings = KubeSettings {
                node,
                namespace_selector: config.namespace_selector.clone(),
            };
            let cache = kubernetes::start(&settings, status.clone(), shutdown_rx.clone()).await?;
            let procs = ProcPods::default();
            enrichers.push(Box::new(KubernetesEnricher {
                cache: cache.clone(),
                procs: procs.clone(),
            }));
            Box::new(PodScanner::new(cache, procs, cmdline))
        }
        None => Box::new(Scanner::new(selector)),
    };

    let (mut probes, maps) = Probes::load(config.ring_buffer_size)?;
    if let Some(logger) = probes.logger.take() {
        // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd holds it.
        match unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) } {
            Ok(mut fd) => {
                tokio::spawn(async move {
                    while let Ok(mut guard) = fd.readable_mut().await {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
            }
            Err(e) => tracing::debug!(error = %e, "Cannot poll kernel program logs."),
        }
    }
    status.update(|s| {
        s.probes = probes
            .states
            .iter()
            .map(|p| ProbeStatus {
                name: p.name.to_string(),
                attached: p.attached,
                error: p.error.clone(),
                run_count: 0,
                run_time_ns: 0,
            })
            .collect()
    });
    let attached = probes.states.iter().filter(|p| p.attached).count();
    tracing::info!(attached, total = probes.states.len(), "Probes attached.");
    readiness.set_ready();

    let kmaps = Arc::new(Mutex::new(KernelMaps {
        targets: maps.targets,
        tls_targets: maps.tls_targets,
        sockets: maps.sockets,
        targeted_at: HashMap::new(),
    }));
    let (ctl_tx, ctl_rx) = mpsc::channel::<Control>(4096);

    // Targeting: a plain thread, since /proc reads block.
    let targeting = {
        let kmaps = kmaps.clone();
        let status = status.clone();
        let stop = shutdown_rx.clone();
        let interval = Duration::from_millis(config.scan_interval_ms);
        std::thread::Builder::new()
            .name("infertap-targets".into())
            .spawn(move || targeting_loop(source, kmaps, ctl_tx, status, interval, stop))?
    };

    let mut pipeline = Pipeline {
        table: ConnTable::new(
            config.max_connections,
            config.idle_timeout().as_nanos() as u64,
        ),
        listeners: HashMap::new(),
        stats: stats.clone(),
        sink,
        clock: WallClock::measure(),
        opts: BuildOptions {
            derive_trace_from_request_id: !config.no_request_id_trace,
        },
        kmaps: kmaps.clone(),
        done: Vec::new(),
        enrichers,
        waiting: VecDeque::new(),
        probes,
        tls_status: Vec::new(),
    };
    if gpu.is_on() {
        pipeline
            .enrichers
            .push(Box::new(crate::gpu::enricher::GpuEnricher::new(
                gpu.hub.clone(),
            )));
    }
    let pipeline_task = tokio::spawn(pipeline.run(
        maps.events,
        maps.drops,
        ctl_rx,
        status.clone(),
        shutdown_rx.clone(),
    ));

    shutdown_signal().await;
    tracing::info!("Shutting down.");
    let _ = shutdown_tx.send(true);
    let _ = pipeline_task.await;
    let _ = targeting.join();
    gpu.shutdown().await;
    exporter.shutdown().await;
    metrics_exporter.shutdown().await;
    let _ = debug_task.await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn targeting_loop(
    mut scanner: Box<dyn TargetSource>,
    kmaps: Arc<Mutex<KernelMaps>>,
    ctl: mpsc::Sender<Control>,
    status: StatusSource,
    interval: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut current: BTreeMap<u32, Target> = BTreeMap::new();
    // Start time of each current target: a pid whose process changed is a new target.
    let mut started: HashMap<u32, Option<u64>> = HashMap::new();
    let mut next_conn_id: u64 = 0;
    while !*stop.borrow() {
        let found = scanner.scan();
        let wanted: BTreeMap<u32, Target> = found.into_iter().map(|t| (t.pid, t)).collect();
        for pid in current.keys().copied().collect::<Vec<_>>() {
            let reused = wanted.contains_key(&pid)
                && started.get(&pid).copied().flatten() != start_time(pid);
            if !wanted.contains_key(&pid) || reused {
                current.remove(&pid);
                started.remove(&pid);
                kmaps
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget_process(pid);
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
                let mut m = kmaps.lock().unwrap_or_else(|e| e.into_inner());
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
                let inserted = kmaps
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sockets
                    .insert(key, info, 1 /* BPF_NOEXIST */)
                    .is_ok();
                if inserted {
                    let _ = ctl.blocking_send(Control::Existing {
                        pid: *pid,
                        fd: s.fd,
                        conn_id,
                        role,
                        local: s.local,
                        peer: s.remote,
                    });
                }
            }
            // TLS: find the uprobe sites here (reading and parsing binaries blocks); the pipeline,
            // which owns the programs, attaches them.
            let plans = uprobe::plan(*pid);
            if !plans.is_empty() {
                let _ = ctl.blocking_send(Control::Tls { pid: *pid, plans });
            }
            tracing::info!(pid, comm = %t.comm, reason = %t.reason, "Tracing process.");
            current.insert(*pid, t.clone());
            started.insert(*pid, start_time(*pid));
        }
        status.update(|s| {
            s.targets = current
                .values()
                .map(|t| TargetStatus {
                    pid: t.pid,
                    comm: t.comm.clone(),
                    reason: t.reason.clone(),
                })
                .collect()
        });
        std::thread::sleep(interval);
    }
}

struct Pipeline {
    table: ConnTable,
    /// (pid, listening fd) → local address, for accepted connections.
    listeners: HashMap<(u32, u32), SocketAddr>,
    stats: Arc<Stats>,
    sink: SpanSink,
    clock: WallClock,
    opts: BuildOptions,
    kmaps: Arc<Mutex<KernelMaps>>,
    done: Vec<Finished>,
    /// Side inputs' contributions to each span (pod metadata, GPU figures).
    enrichers: Enrichers,
    /// Finished exchanges waiting for an enricher's side input (GPU samples covering their end;
    /// each enricher bounds its wait), in finishing order.
    waiting: VecDeque<Finished>,
    /// Held for the life of the pipeline: dropping it detaches the programs.
    probes: Probes,
    /// TLS uprobe attachments per targeted process, for `/status`.
    tls_status: Vec<TlsAttachStatus>,
}

impl Pipeline {
    async fn run(
        mut self,
        events: RingBuf<MapData>,
        drops: PerCpuArray<MapData, u64>,
        mut ctl: mpsc::Receiver<Control>,
        status: StatusSource,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        // SAFETY: the RingBuf owns its fd and keeps it open for as long as the AsyncFd holds it.
        let registered =
            unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) };
        let mut ring = match registered {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "Cannot poll the ring buffer; nothing will be traced.");
                return;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // The kernel side wakes us only when a lot of data waits (wake-ups are expensive there),
        // so a quiet ring is drained on this timer.
        let mut poll = tokio::time::interval(Duration::from_millis(DRAIN_INTERVAL_MS));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let Ok(mut guard) = guard else { break };
                    self.drain(guard.get_inner_mut());
                    guard.clear_ready();
                }
                msg = ctl.recv() => {
                    // Drain the ring first: records before the message must be applied before it.
                    self.drain(ring.get_mut());
                    match msg {
                        Some(m) => self.control(m),
                        None => break,
                    }
                }
                _ = poll.tick() => {
                    self.drain(ring.get_mut());
                }
                _ = tick.tick() => {
                    self.drain(ring.get_mut());
                    self.housekeeping(&drops, &status);
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        // Flush what the kernel already delivered, and every span still waiting.
        self.drain(ring.get_mut());
        self.emit_waiting(true);
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        // Bounded per wake-up so control messages and ticks are not starved.
        for _ in 0..65536 {
            let Some(item) = ring.next() else { break };
            self.record(&item);
        }
        self.emit();
    }

    fn record(&mut self, bytes: &[u8]) {
        let stats = &*self.stats;
        let rec = match decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                stats.records_malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "Malformed record.");
                return;
            }
        };
        stats.records_read.fetch_add(1, Ordering::Relaxed);
        match rec {
            Record::Data(chunk) => {
                stats
                    .bytes_read
                    .fetch_add(chunk.payload.len() as u64, Ordering::Relaxed);
                if chunk.is_tls() {
                    stats.tls_records.fetch_add(1, Ordering::Relaxed);
                    stats
                        .tls_bytes
                        .fetch_add(chunk.payload.len() as u64, Ordering::Relaxed);
                }
                self.table.data(&chunk, stats, &mut self.done);
            }
            Record::Open {
                tgid,
                ts_ns,
                conn_id,
                fd,
                listen_fd,
                role,
                peer,
                family_unknown,
            } => {
                let mut local = listen_fd.and_then(|l| self.listeners.get(&(tgid, l)).copied());
                let mut peer = peer;
                if family_unknown {
                    // accept() without an address buffer (libuv, hence uvicorn and vLLM, does
                    // this). Whether it is TCP follows from the listening socket, which lives
                    // long; the accepted fd may already be closed and its number reused, so it is
                    // only trusted for addresses that agree with the listener.
                    let listener = match (listen_fd, local) {
                        (_, Some(l)) => Some(l),
                        (Some(lfd), None) => match classify_fd(tgid, lfd) {
                            FdKind::Tcp { local: l, .. } => {
                                self.listeners.insert((tgid, lfd), l);
                                Some(l)
                            }
                            FdKind::Other => {
                                self.untrace(tgid, fd, conn_id);
                                return;
                            }
                            FdKind::Gone => None,
                        },
                        (None, None) => None,
                    };
                    match classify_fd(tgid, fd) {
                        FdKind::Tcp { local: l, remote }
                            if listener.is_none_or(|li| li.port() == l.port()) =>
                        {
                            local = Some(l);
                            peer = Some(remote);
                        }
                        // No listener to vouch for it (an accept whose enter the kernel did not
                        // see): a socket that is not TCP is not traced.
                        FdKind::Other if listen_fd.is_none() => {
                            self.untrace(tgid, fd, conn_id);
                            return;
                        }
                        _ => {}
                    }
                    local = local.or(listener);
                }
                let id = ConnId { tgid, conn_id };
                self.table
                    .open(id, fd, role, local, peer, Origin::Start, ts_ns, stats);
            }
            Record::Close {
                tgid,
                ts_ns,
                conn_id,
                fd,
                after_loss,
                final_pos,
            } => {
                self.table.closed(
                    ConnId { tgid, conn_id },
                    fd,
                    ts_ns,
                    after_loss.then_some(final_pos),
                    stats,
                    &mut self.done,
                );
            }
            Record::ProcExit { tgid, ts_ns } => {
                self.table.process_exit(tgid, ts_ns, stats, &mut self.done);
                self.listeners.retain(|(pid, _), _| *pid != tgid);
                self.kmaps
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .process_exited(tgid, ts_ns);
            }
        }
    }

    /// Stop copying a socket that turned out not to be TCP — only if the kernel's entry is still
    /// this connection's (the fd number may have been reused since).
    fn untrace(&mut self, tgid: u32, fd: u32, conn_id: u64) {
        let mut maps = self.kmaps.lock().unwrap_or_else(|e| e.into_inner());
        let key = ConnKey { tgid, fd };
        if maps
            .sockets
            .get(&key, 0)
            .is_ok_and(|v| v.conn_id == conn_id)
        {
            let _ = maps.sockets.remove(&key);
        }
    }

    fn control(&mut self, msg: Control) {
        match msg {
            Control::Target {
                pid,
                listeners,
                provider,
            } => {
                self.table.set_provider(pid, provider);
                for (fd, addr) in listeners {
                    self.listeners.insert((pid, fd), addr);
                }
            }
            Control::Existing {
                pid,
                fd,
                conn_id,
                role,
                local,
                peer,
            } => {
                let id = ConnId { tgid: pid, conn_id };
                self.table.open(
                    id,
                    fd,
                    role,
                    Some(local),
                    Some(peer),
                    Origin::MidStream,
                    WallClock::monotonic_now(),
                    &self.stats,
                );
            }
            Control::Tls { pid, plans } => self.attach_tls(pid, plans),
            Control::Gone { pid } => {
                self.tls_status.retain(|t| t.pid != pid);
                self.table.process_exit(
                    pid,
                    WallClock::monotonic_now(),
                    &self.stats,
                    &mut self.done,
                );
                self.listeners.retain(|(p, _), _| *p != pid);
                self.emit();
            }
        }
    }

    fn housekeeping(&mut self, drops: &PerCpuArray<MapData, u64>, status: &StatusSource) {
        self.clock = WallClock::measure();
        self.table
            .evict_idle(WallClock::monotonic_now(), &self.stats, &mut self.done);
        self.resolve_local_addresses();
        self.emit();
        let kernel = kernel_drops(drops);
        let dropped: u64 = kernel.iter().map(|(_, v)| *v).sum();
        self.stats
            .records_dropped_in_kernel
            .fetch_max(dropped, Ordering::Relaxed);
        self.stats
            .connections_lost_in_kernel
            .fetch_max(kernel_lost_connections(drops), Ordering::Relaxed);
        let open = self.table.len() as u64;
        let runs = self.probes.program_stats();
        let tls_programs = self.probes.tls_programs();
        status.update(|s| {
            // TLS uprobe programs appear once attached somewhere, with their run statistics.
            for name in tls_programs {
                if !s.probes.iter().any(|p| p.name == name) {
                    s.probes.push(ProbeStatus {
                        name: name.to_string(),
                        attached: true,
                        error: None,
                        run_count: 0,
                        run_time_ns: 0,
                    });
                }
            }
            for p in s.probes.iter_mut() {
                if let Some((_, count, ns)) = runs.iter().find(|(n, _, _)| *n == p.name) {
                    p.run_count = *count;
                    p.run_time_ns = *ns;
                }
            }
            s.connections_open = open;
            s.tls = self.tls_status.clone();
            s.kernel_dropped = kernel.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        });
    }

    /// Attach the TLS uprobes of a new target's files (each file once) and record the outcome.
    fn attach_tls(&mut self, pid: u32, plans: Vec<TlsPlan>) {
        for plan in plans {
            let result = self.probes.attach_tls(&plan);
            let (attached, error) = match &result {
                Ok(AttachOutcome::Attached(n)) => {
                    self.stats
                        .tls_uprobes_attached
                        .fetch_add(*n as u64, Ordering::Relaxed);
                    tracing::info!(pid, library = plan.library, path = %plan.path, uprobes = n, detail = %plan.detail(), "TLS plaintext capture attached.");
                    (true, None)
                }
                Ok(AttachOutcome::AlreadyAttached) => (true, None),
                Err(e) => {
                    self.stats
                        .tls_attach_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(pid, library = plan.library, path = %plan.path, error = %e, "TLS plaintext cannot be captured; this process's TLS connections are not decoded.");
                    (false, Some(e.clone()))
                }
            };
            if attached {
                let _ = self
                    .kmaps
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_tls_target(pid, true);
            }
            self.tls_status.push(TlsAttachStatus {
                pid,
                library: plan.library.to_string(),
                path: plan.path.clone(),
                attached,
                detail: if attached {
                    plan.detail()
                } else {
                    String::new()
                },
                error,
            });
        }
    }

    /// Accepted connections on a wildcard listener learn their local address from /proc.
    fn resolve_local_addresses(&mut self) {
        // A few syscalls per connection (pidfd_getfd); bounded per tick.
        for (id, fd, known_local) in self.table.missing_addrs().into_iter().take(256) {
            if let FdKind::Tcp { local, remote } = classify_fd(id.tgid, fd) {
                // The fd number may have been reused: only take addresses that agree.
                if known_local.is_none_or(|l| l.port() == local.port()) {
                    self.table.set_addrs(id, Some(local), Some(remote));
                }
            }
        }
    }

    fn emit(&mut self) {
        for f in self.done.drain(..) {
            self.enrichers.observe(&f);
            self.waiting.push_back(f);
        }
        self.emit_waiting(false);
    }

    /// Builds, enriches and submits the waiting exchanges whose enrichers are ready (all of them
    /// when `all`), oldest first.
    fn emit_waiting(&mut self, all: bool) {
        let now = WallClock::monotonic_now();
        while let Some(f) = self.waiting.front() {
            if !all && !self.enrichers.ready(f, now) {
                break;
            }
            let Some(f) = self.waiting.pop_front() else {
                break;
            };
            let mut span = build_span(
                &f.exchange,
                &f.meta,
                &self.clock,
                &self.opts,
                &mut RandomIds,
            );
            self.enrichers
                .apply_in_context(&f, &self.clock, &self.table, &mut span);
            self.sink
                .submit_with_chunk_times(span, &f.exchange.content_chunk_ns);
        }
        // gRPC calls and routing decisions of HTTP/2 connections.
        for r in self.table.drain_rpc() {
            let span = match &r.item {
                crate::conn::H2Done::Decision(d) => crate::epp::span::build_decision_span(
                    d,
                    &r.meta,
                    &self.clock,
                    &self.opts,
                    &mut RandomIds,
                ),
                crate::conn::H2Done::Call(c) => crate::trace::rpc::build_grpc_span(
                    c,
                    &r.meta,
                    &self.clock,
                    &self.opts,
                    &mut RandomIds,
                ),
                crate::conn::H2Done::Exchange(_) => continue, // these leave as `Finished`
            };
            self.sink.submit(span);
        }
    }
}
