//! The pipeline task: the one task that owns the [`Pipeline`] and the loaded probes. It drains
//! the ring buffer into the pipeline (on the kernel's wake-up, and every [`DRAIN_INTERVAL_MS`]
//! when the kernel has not woken it), applies the targeting thread's [`Control`] messages after
//! the records that preceded them, attaches TLS uprobes (the probes own the programs), and once a
//! second runs the pipeline's housekeeping and publishes the kernel's drop counters and
//! per-program statistics to `/status`.
//!
//! The task runs on a thread of its own ([`spawn`]: an OS thread with a current-thread runtime),
//! never on the async workers that serve the debug endpoint, `/metrics` and the OTLP exporters:
//! what it does blocks — `pidfd_getfd` and /proc reads when it classifies a descriptor, the GPU
//! enricher's placement reads, TLS uprobe attachment in the kernel — and only this thread waits
//! for it (the records wait in the ring buffer). Its heartbeat still says when it stalls.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::export::status::{ProbeStatus, StatusSource, TlsAttachStatus};
use crate::export::SpanSink;
use crate::liveness::Heartbeat;
use crate::pipeline::Pipeline;
use crate::probes::targeting::{lock, Control, KernelMaps, KernelNode};
use crate::probes::uprobe::{AttachOutcome, TlsPlan};
use crate::probes::{kernel_drops, kernel_lost_connections, Probes};
use crate::stats::Stats;

/// How often the ring buffer is drained when the kernel has not woken us.
const DRAIN_INTERVAL_MS: u64 = 10;

/// How often free heap pages go back to the kernel (`malloc_trim`).
const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Records taken per wake-up before control messages and ticks get a turn.
const DRAIN_BATCH: usize = 65536;

/// Run the task `make` builds on a thread of its own (`infertap-pipeline`) with a
/// current-thread runtime (timers and the ring buffer's readiness), so that its blocking work
/// never holds one of the async workers. The thread ends when the task does.
pub fn spawn<F, Fut>(make: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("infertap-pipeline".into())
        .spawn(move || runtime.block_on(make()))
}

pub struct Driver {
    pub pipeline: Pipeline<KernelNode, SpanSink>,
    /// Held for the life of the task: dropping it detaches the programs.
    pub probes: Probes,
    pub maps: Arc<Mutex<KernelMaps>>,
    pub stats: Arc<Stats>,
    /// TLS uprobe attachments per targeted process, for `/status`.
    pub tls_status: Vec<TlsAttachStatus>,
    /// Beaten at every turn of the loop (`/healthz`).
    pub heartbeat: Heartbeat,
    /// `--capture-only`: records are read and dropped (benchmarks of the kernel side alone).
    pub capture_only: bool,
}

impl Driver {
    pub async fn run(
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
        let mut trim =
            tokio::time::interval_at(tokio::time::Instant::now() + TRIM_INTERVAL, TRIM_INTERVAL);
        loop {
            self.heartbeat.beat("waiting for records");
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
                    self.heartbeat.beat("housekeeping");
                    self.housekeeping(&drops, &status);
                }
                _ = trim.tick() => {
                    // Give the kernel back the free pages malloc keeps after a burst (a thousand
                    // connections' parse state, a batch of spans): the agent's steady RSS, not
                    // its peak, is what every node pays. A walk of malloc's free lists, whose
                    // length the buffer budgets bound.
                    // SAFETY: malloc_trim has no preconditions.
                    unsafe { libc::malloc_trim(0) };
                }
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        // Flush what the kernel already delivered, and every span still waiting.
        self.drain(ring.get_mut());
        self.pipeline.flush();
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        self.heartbeat.beat("draining the ring buffer");
        for _ in 0..DRAIN_BATCH {
            let Some(item) = ring.next() else { break };
            if !self.capture_only {
                self.pipeline.feed(&item);
            }
        }
        self.pipeline.emit();
    }

    fn control(&mut self, msg: Control) {
        match msg {
            Control::Target {
                pid,
                listeners,
                provider,
            } => self.pipeline.target(pid, listeners, provider),
            Control::Existing(socket) => self.pipeline.existing(socket),
            Control::Runtime { pid, at_ns, sample } => {
                self.pipeline.runtime_sample(pid, at_ns, *sample)
            }
            Control::Tls { pid, plans } => {
                // Attaching blocks (~8 ms a file, in the kernel): this thread is the pipeline's
                // own; the records wait in the ring buffer.
                self.heartbeat.beat("attaching TLS uprobes");
                self.attach_tls(pid, plans);
            }
            Control::Forgotten { pid, sockets } => {
                self.pipeline
                    .forgotten(pid, &sockets, infertap_common::FORGET_RECONCILE)
            }
            Control::Gone { pid } => {
                self.tls_status.retain(|t| t.pid != pid);
                let released = self.probes.release_tls(pid);
                if !released.is_empty() {
                    // Detaching blocks for up to a second per file: never on the pipeline task.
                    tokio::task::spawn_blocking(move || {
                        for r in released {
                            drop(r.links);
                            tracing::info!(pid, path = %r.path, "TLS uprobes detached: no target maps the file any more.");
                        }
                    });
                }
                self.pipeline.gone(pid);
            }
        }
    }

    fn housekeeping(&mut self, drops: &PerCpuArray<MapData, u64>, status: &StatusSource) {
        self.pipeline.tick();
        let kernel = kernel_drops(drops);
        let dropped: u64 = kernel.iter().map(|(_, v)| *v).sum();
        self.stats
            .records_dropped_in_kernel
            .fetch_max(dropped, Ordering::Relaxed);
        self.stats
            .connections_lost_in_kernel
            .fetch_max(kernel_lost_connections(drops), Ordering::Relaxed);
        let open = self.pipeline.connections() as u64;
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
                let _ = lock(&self.maps).set_tls_target(pid, true);
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
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::mpsc as std_mpsc;

    use infertap_common::{
        ConnOpenRecord, RecordHeader, OPEN_FLAG_FAMILY_UNKNOWN, RECORD_CONN_OPEN,
    };

    use super::*;
    use crate::enrich::Enrichers;
    use crate::export::debug::{DebugServer, DebugState, Readiness};
    use crate::export::otlp::ExporterStateHandle;
    use crate::export::store::SpanStore;
    use crate::liveness::Liveness;
    use crate::pipeline::{ForgottenSocket, Node, Settings};
    use crate::probes::targets::FdKind;
    use crate::trace::span::FinishedSpan;

    /// How long the node blocks in `classify_fd` (a `pidfd_getfd` or a /proc read stuck on a
    /// hostile or frozen process).
    const BLOCKED: Duration = Duration::from_secs(3);

    /// A node whose `classify_fd` blocks, saying when it starts to.
    struct Blocking {
        started: std_mpsc::Sender<()>,
    }

    impl Node for Blocking {
        fn classify_fd(&mut self, _tgid: u32, _fd: u32) -> FdKind {
            let _ = self.started.send(());
            std::thread::sleep(BLOCKED);
            FdKind::Gone
        }
        fn still_names(&mut self, _: u32, _: u32, _: u64) -> bool {
            false
        }
        fn untrace(&mut self, _: u32, _: u32, _: u64) {}
        fn process_exited(&mut self, _: u32, _: u64) {}
        fn forget_fds(&mut self, _: u32, _: u32, _: u32, _: u64) -> Vec<ForgottenSocket> {
            Vec::new()
        }
        fn exec(&mut self, _: u32, _: bool, _: bool) {}
        fn now_ns(&self) -> u64 {
            0
        }
    }

    /// An accept without an address buffer: the pipeline asks the node what the descriptor is.
    fn accept_without_address() -> Vec<u8> {
        let record = ConnOpenRecord {
            header: RecordHeader {
                kind: RECORD_CONN_OPEN,
                tgid: 42,
                ts_ns: 1,
            },
            conn_id: 1,
            fd: 7,
            listen_fd: 3,
            role: infertap_common::ROLE_SERVER,
            flags: OPEN_FLAG_FAMILY_UNKNOWN,
            addr: [0; 32],
        };
        // SAFETY: a view of a repr(C), integer-only ABI struct (sizes asserted in
        // infertap-common).
        unsafe {
            std::slice::from_raw_parts(
                (&record as *const ConnOpenRecord).cast::<u8>(),
                std::mem::size_of::<ConnOpenRecord>(),
            )
        }
        .to_vec()
    }

    fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
        let mut conn = std::net::TcpStream::connect(addr)?;
        conn.set_read_timeout(Some(Duration::from_secs(1)))?;
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        conn.read_to_string(&mut response)?;
        Ok(response)
    }

    /// The pipeline blocked in `classify_fd` for seconds while another task on the app's runtime
    /// is busy (an OTLP batch being encoded, say): the debug endpoint still answers at once, and
    /// `/healthz` names the stalled pipeline. With the pipeline task on one of the app's two
    /// workers, nothing would be left to answer until the node returned.
    #[test]
    fn a_pipeline_blocked_on_the_node_leaves_the_debug_endpoint_answering() {
        let runtime = crate::app::runtime().unwrap();
        let liveness = Liveness::new();
        let heartbeat = liveness.register("pipeline task", Duration::from_millis(200));
        let readiness = Readiness::new("nothing");
        readiness.set_ready();
        let state = DebugState::new(
            Arc::new(SpanStore::new(4)),
            StatusSource::new(Arc::new(Stats::default()), ExporterStateHandle::disabled()),
            readiness,
        )
        .with_liveness(liveness);
        let server = runtime
            .block_on(DebugServer::bind("127.0.0.1:0".parse().unwrap(), state))
            .unwrap();
        let addr = server.local_addr();
        runtime.spawn(server.serve(std::future::pending()));
        assert!(get(addr, "/healthz").unwrap().ends_with("\r\n\r\nok"));

        let (started, blocked) = std_mpsc::channel();
        let mut pipeline: Pipeline<Blocking, Vec<FinishedSpan>> = Pipeline::new(
            Settings {
                max_connections: 16,
                idle_timeout_ns: u64::MAX,
                buffer_budget: crate::conn::BufferBudget::DEFAULT,
                build: Default::default(),
            },
            Arc::new(Stats::default()),
            Enrichers::default(),
            Blocking { started },
            Vec::new(),
        );
        pipeline.target(42, [], "vllm");
        let thread = spawn(move || async move {
            heartbeat.beat("draining the ring buffer");
            pipeline.record(&accept_without_address());
        })
        .unwrap();
        blocked.recv_timeout(Duration::from_secs(5)).unwrap();

        let (busy_tx, busy) = std_mpsc::channel();
        runtime.spawn(async move {
            let _ = busy_tx.send(());
            std::thread::sleep(BLOCKED);
        });
        busy.recv_timeout(Duration::from_secs(5)).unwrap();
        std::thread::sleep(Duration::from_millis(400));

        let asked = std::time::Instant::now();
        let response = get(addr, "/healthz").expect("the debug endpoint answers");
        assert!(
            asked.elapsed() < Duration::from_millis(900),
            "{:?}",
            asked.elapsed()
        );
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
        assert!(
            response.contains("pipeline task: no progress for")
                && response.ends_with("while draining the ring buffer"),
            "{response}"
        );
        thread.join().unwrap();
    }
}
