//! The pipeline: one decoded ring-buffer record in, finished spans out.
//!
//! [`Pipeline`] owns the connection table and takes each record through decoding, the
//! connection's byte streams, its protocol's parser, request assembly, span building and
//! enrichment, in arrival order, with no queue in between — except that a finished exchange
//! waits (in finishing order) while an enricher needs its side input to catch up (GPU samples
//! covering its end; the enricher bounds the wait).
//!
//! Pure: no aya or tokio types, no I/O of its own. What it needs of the node — what a process's
//! descriptor is, forgetting a socket or a process in the kernel maps, the monotonic time — it
//! asks through [`Node`]; finished spans leave through [`Output`]. The agent's pipeline task
//! (`driver`), the `records` fuzz target and the `records` benchmark all drive this same type.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::capture::clock::WallClock;
use crate::capture::decode::{decode, Record, Role};
use crate::conn::{ConnId, ConnTable, Finished, Origin};
use crate::enrich::Enrichers;
use crate::exchange::Work;
use crate::export::SpanSink;
use crate::probes::targets::FdKind;
use crate::stats::Stats;
use crate::trace::build::{BuildOptions, RandomIds};
use crate::trace::span::FinishedSpan;
use crate::trace::Built;

/// What the pipeline asks of the node it runs on.
pub trait Node {
    /// What descriptor `fd` of process `tgid` is now (a socket's addresses, or not TCP).
    fn classify_fd(&mut self, tgid: u32, fd: u32) -> FdKind;
    /// Whether the kernel's entry for `(tgid, fd)` is still connection `conn_id`. Asked after
    /// [`Node::classify_fd`] on an accepted descriptor: the number names that connection until
    /// it closes, so a yes says that what was read is its socket, not a later connection's that
    /// reused the number (its record read late, behind a busy ring buffer).
    fn still_names(&mut self, tgid: u32, fd: u32, conn_id: u64) -> bool;
    /// Stop copying a socket that turned out not to be TCP — only if the kernel's entry for
    /// `(tgid, fd)` is still connection `conn_id` (the number may have been reused since).
    fn untrace(&mut self, tgid: u32, fd: u32, conn_id: u64);
    /// A traced process exited at kernel monotonic `exit_ns`.
    fn process_exited(&mut self, tgid: u32, exit_ns: u64);
    /// Descriptors `lo..=hi` of `tgid` stopped naming what they named at `at_ns`
    /// (`close_range`, exec): forget the sockets there whose connection began before, and say
    /// which (fd, connection id, final stream positions when records of it were lost).
    fn forget_fds(&mut self, tgid: u32, lo: u32, hi: u32, at_ns: u64) -> Vec<ForgottenSocket>;
    /// A process exec'd (`was_target`: it was traced until then) or, with `listen`, started
    /// listening: targeting looks at it now.
    fn exec(&mut self, tgid: u32, was_target: bool, listen: bool);
    /// The kernel monotonic clock, in nanoseconds.
    fn now_ns(&self) -> u64;
    /// Whether an accepted connection from `peer` is the agent's own `/metrics` poll
    /// (`runtime_poll`): such a connection is not traced. Asked once per accepted connection;
    /// a match is claimed, so that a later client reusing the address is traced, and a
    /// connection accepted (`accepted_ns`, kernel monotonic) before the poll registered its
    /// address is not one.
    fn is_own_connection(&self, _peer: SocketAddr, _accepted_ns: u64) -> bool {
        false
    }
}

/// Where finished spans go.
pub trait Output {
    /// One finished span with its typed summary (for the metrics) and the times of its content
    /// chunks (an exchange's `content_chunk_ns`; empty for other work), whose gaps feed the
    /// inter-token histogram.
    fn submit(&mut self, built: Built, chunk_times_ns: &[u64]);
}

impl Output for SpanSink {
    fn submit(&mut self, built: Built, chunk_times_ns: &[u64]) {
        SpanSink::submit(self, built.span, &built.summary, chunk_times_ns);
    }
}

/// A socket that was open before tracing began (found in /proc by the targeting thread, which
/// gave it a connection id of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExistingSocket {
    pub pid: u32,
    pub fd: u32,
    pub conn_id: u64,
    pub role: Role,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// A socket userspace removed from the kernel's map because its descriptor went stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForgottenSocket {
    pub fd: u32,
    pub conn_id: u64,
    /// Final stream positions (ingress, egress) when records of the connection were lost since
    /// its last delivered data record.
    pub after_loss: Option<[u64; 2]>,
}

/// The pipeline's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_connections: usize,
    pub idle_timeout_ns: u64,
    /// Bounds on bytes held of what connections have not parsed yet.
    pub buffer_budget: crate::conn::BufferBudget,
    pub build: BuildOptions,
}

pub struct Pipeline<N: Node, O: Output> {
    table: ConnTable,
    /// (pid, listening fd) → local address, for accepted connections.
    listeners: HashMap<(u32, u32), SocketAddr>,
    stats: Arc<Stats>,
    clock: WallClock,
    opts: BuildOptions,
    /// Side inputs' contributions to each span (pod metadata, GPU figures).
    enrichers: Enrichers,
    done: Vec<Finished>,
    /// Finished exchanges waiting for an enricher's side input, in finishing order.
    waiting: VecDeque<Finished>,
    /// Prefill legs of disaggregated requests, waiting for their decode legs.
    pd_legs: crate::trace::pd::Legs,
    /// Serving processes' load figures from the scrapes of their `/metrics`.
    runtime: crate::trace::saturation::Runtime,
    /// The agent's own poll connections, untraced at their open: their records still in flight
    /// are dropped (bounded; ended by their close).
    own_conns: crate::trace::saturation::OwnConns,
    node: N,
    output: O,
}

impl<N: Node, O: Output> Pipeline<N, O> {
    pub fn new(
        settings: Settings,
        stats: Arc<Stats>,
        enrichers: Enrichers,
        node: N,
        output: O,
    ) -> Self {
        Pipeline {
            table: {
                let mut t = ConnTable::new(settings.max_connections, settings.idle_timeout_ns);
                t.set_budget(settings.buffer_budget);
                t
            },
            listeners: HashMap::new(),
            stats,
            clock: WallClock::measure(),
            opts: settings.build,
            enrichers,
            done: Vec::new(),
            waiting: VecDeque::new(),
            pd_legs: crate::trace::pd::Legs::new(),
            runtime: crate::trace::saturation::Runtime::new(),
            own_conns: Default::default(),
            node,
            output,
        }
    }

    pub fn output(&self) -> &O {
        &self.output
    }

    pub fn output_mut(&mut self) -> &mut O {
        &mut self.output
    }

    pub fn node_mut(&mut self) -> &mut N {
        &mut self.node
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.table.len()
    }

    /// One ring-buffer record, as the kernel wrote it; spans of what it finished are emitted
    /// (unless an enricher holds them).
    pub fn record(&mut self, bytes: &[u8]) {
        self.feed(bytes);
        self.emit();
    }

    /// One record, its finished work kept for the next [`Pipeline::emit`] (a batch of records is
    /// fed, then emitted once).
    pub fn feed(&mut self, bytes: &[u8]) {
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
                if self.own_conns.holds(chunk.tgid, chunk.conn_id) {
                    return;
                }
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
                    // only trusted for addresses that agree with the listener, and only while
                    // the kernel still maps the number to this connection.
                    let listener = match (listen_fd, local) {
                        (_, Some(l)) => Some(l),
                        (Some(lfd), None) => match self.node.classify_fd(tgid, lfd) {
                            FdKind::Tcp { local: l, .. } => {
                                self.listeners.insert((tgid, lfd), l);
                                Some(l)
                            }
                            FdKind::Other => {
                                self.node.untrace(tgid, fd, conn_id);
                                return;
                            }
                            FdKind::Gone => None,
                        },
                        (None, None) => None,
                    };
                    match self.node.classify_fd(tgid, fd) {
                        // Read after the fact: only the connection's own socket if the number
                        // still names it now (else it closed, and the number may name a later
                        // connection on the same listener — the agent's own poll, say).
                        FdKind::Tcp { local: l, remote }
                            if listener.is_none_or(|li| li.port() == l.port())
                                && self.node.still_names(tgid, fd, conn_id) =>
                        {
                            local = Some(l);
                            peer = Some(remote);
                        }
                        // No listener to vouch for it (an accept whose enter the kernel did not
                        // see): a socket that is not TCP is not traced.
                        FdKind::Other if listen_fd.is_none() => {
                            self.node.untrace(tgid, fd, conn_id);
                            return;
                        }
                        _ => {}
                    }
                    local = local.or(listener);
                }
                if role == Role::Server
                    && peer.is_some_and(|p| self.node.is_own_connection(p, ts_ns))
                {
                    self.node.untrace(tgid, fd, conn_id);
                    self.own_conns.insert(tgid, conn_id);
                    stats
                        .runtime_poll_connections_untraced
                        .fetch_add(1, Ordering::Relaxed);
                    return;
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
                cause,
            } => {
                if self.own_conns.remove(tgid, conn_id) {
                    return;
                }
                stats
                    .socket_forgotten(cause)
                    .fetch_add(1, Ordering::Relaxed);
                self.table.closed(
                    ConnId { tgid, conn_id },
                    fd,
                    ts_ns,
                    after_loss.then_some(final_pos),
                    stats,
                    &mut self.done,
                );
            }
            Record::FdsForgotten {
                tgid,
                ts_ns,
                lo,
                hi,
                cause,
            } => {
                let sockets = self.node.forget_fds(tgid, lo, hi, ts_ns);
                end_forgotten(
                    &mut self.table,
                    stats,
                    &mut self.done,
                    tgid,
                    &sockets,
                    ts_ns,
                    cause,
                );
            }
            Record::ProcExec {
                tgid, was_target, ..
            } => self.node.exec(tgid, was_target, false),
            Record::ProcListen { tgid, .. } => self.node.exec(tgid, false, true),
            Record::ProcExit { tgid, ts_ns } => {
                self.own_conns.process_exit(tgid);
                self.table.process_exit(tgid, ts_ns, stats, &mut self.done);
                self.listeners.retain(|(pid, _), _| *pid != tgid);
                self.node.process_exited(tgid, ts_ns);
            }
        }
    }

    /// A process became a target: its server kind and its listening sockets (fd → address).
    pub fn target(
        &mut self,
        pid: u32,
        listeners: impl IntoIterator<Item = (u32, SocketAddr)>,
        provider: &'static str,
    ) {
        self.table.set_provider(pid, provider);
        for (fd, addr) in listeners {
            self.listeners.insert((pid, fd), addr);
        }
    }

    /// A socket that was open before tracing began: its first bytes may be mid-message.
    pub fn existing(&mut self, s: ExistingSocket) {
        let now = self.node.now_ns();
        self.table.open(
            ConnId {
                tgid: s.pid,
                conn_id: s.conn_id,
            },
            s.fd,
            s.role,
            Some(s.local),
            Some(s.peer),
            Origin::MidStream,
            now,
            &self.stats,
        );
    }

    /// Userspace found that descriptors of a target no longer name the sockets the kernel map
    /// had for them (`probes::targeting` reconciliation): their connections end now.
    pub fn forgotten(&mut self, tgid: u32, sockets: &[ForgottenSocket], cause: u32) {
        let now = self.node.now_ns();
        end_forgotten(
            &mut self.table,
            &self.stats,
            &mut self.done,
            tgid,
            sockets,
            now,
            cause,
        );
        self.emit();
    }

    /// A sample of a process's `/metrics` fetched by the agent's own poll, taken at `at_ns`.
    pub fn runtime_sample(
        &mut self,
        pid: u32,
        at_ns: u64,
        sample: crate::protocol::runtime_metrics::RuntimeSample,
    ) {
        self.runtime.remember(pid, at_ns, sample);
    }

    /// A process is no longer a target: every connection of it ends now.
    pub fn gone(&mut self, pid: u32) {
        let now = self.node.now_ns();
        self.table
            .process_exit(pid, now, &self.stats, &mut self.done);
        self.listeners.retain(|(p, _), _| *p != pid);
        self.emit();
    }

    /// Once a second: the wall clock re-measured, idle connections evicted, addresses of
    /// accepted connections resolved.
    pub fn tick(&mut self) {
        self.clock = WallClock::measure();
        let now = self.node.now_ns();
        self.table.evict_idle(now, &self.stats, &mut self.done);
        self.resolve_local_addresses();
        self.emit();
    }

    /// At shutdown: every span still waiting is built and emitted.
    pub fn flush(&mut self) {
        self.emit();
        self.emit_waiting(true);
    }

    /// Accepted connections on a wildcard listener learn their local address from the node.
    fn resolve_local_addresses(&mut self) {
        // A few syscalls per connection (pidfd_getfd); bounded per tick.
        for (id, fd, known_local) in self.table.missing_addrs().into_iter().take(256) {
            if let FdKind::Tcp { local, remote } = self.node.classify_fd(id.tgid, fd) {
                // The fd number may have been reused: only take addresses that agree.
                if known_local.is_none_or(|l| l.port() == local.port()) {
                    self.table.set_addrs(id, Some(local), Some(remote));
                }
            }
        }
    }

    /// What finished goes out: exchanges through the enrichers (and their wait), gRPC calls and
    /// routing decisions straight away.
    pub fn emit(&mut self) {
        // Taken and put back, so that the vector keeps its capacity across records.
        let mut done = std::mem::take(&mut self.done);
        for f in done.drain(..) {
            match f.work {
                Work::Exchange(_) => {
                    self.enrichers.observe(&f);
                    self.waiting.push_back(f);
                }
                Work::Call(_) | Work::Decision(_) => {
                    let built = crate::trace::span_of(
                        &f.work,
                        &f.meta,
                        &self.clock,
                        &self.opts,
                        &mut RandomIds,
                    );
                    self.output.submit(built, &[]);
                }
            }
        }
        self.done = done;
        self.emit_waiting(false);
    }

    /// Builds, enriches and submits the waiting exchanges whose enrichers are ready (all of them
    /// when `all`), oldest first.
    fn emit_waiting(&mut self, all: bool) {
        let now = if all { 0 } else { self.node.now_ns() };
        while let Some(f) = self.waiting.front() {
            if !all && !self.enrichers.ready(f, now) {
                break;
            }
            let Some(f) = self.waiting.pop_front() else {
                break;
            };
            let mut built =
                crate::trace::span_of(&f.work, &f.meta, &self.clock, &self.opts, &mut RandomIds);
            if let Some(ex) = f.exchange() {
                self.pd_legs.apply(ex, &mut built);
                if f.meta.server {
                    self.runtime.apply(f.meta.pid, ex, &mut built);
                }
            }
            self.enrichers
                .apply_in_context(&f, &self.clock, &self.table, &mut built);
            let chunks = f.exchange().map_or(&[][..], |ex| &ex.content_chunk_ns[..]);
            self.output.submit(built, chunks);
        }
    }
}

/// A node with nothing to ask: descriptors unknown, no kernel maps, a clock that the caller sets
/// (fuzzing, benchmarks, tests).
#[derive(Debug, Default)]
pub struct Detached {
    pub now_ns: u64,
}

impl Node for Detached {
    fn classify_fd(&mut self, _tgid: u32, _fd: u32) -> FdKind {
        FdKind::Gone
    }
    fn still_names(&mut self, _tgid: u32, _fd: u32, _conn_id: u64) -> bool {
        false
    }
    fn untrace(&mut self, _tgid: u32, _fd: u32, _conn_id: u64) {}
    fn process_exited(&mut self, _tgid: u32, _exit_ns: u64) {}
    fn forget_fds(&mut self, _: u32, _: u32, _: u32, _: u64) -> Vec<ForgottenSocket> {
        Vec::new()
    }
    fn exec(&mut self, _tgid: u32, _was_target: bool, _listen: bool) {}
    fn now_ns(&self) -> u64 {
        self.now_ns
    }
}

impl Output for Vec<FinishedSpan> {
    fn submit(&mut self, built: Built, _chunk_times_ns: &[u64]) {
        self.push(built.span);
    }
}

/// Sockets whose descriptor numbers stopped naming them (`cause`: how the kernel or the
/// reconciliation found out): each counted, its connection ended as closed at `at_ns`.
fn end_forgotten(
    table: &mut ConnTable,
    stats: &Stats,
    done: &mut Vec<Finished>,
    tgid: u32,
    sockets: &[ForgottenSocket],
    at_ns: u64,
    cause: u32,
) {
    for f in sockets {
        stats
            .socket_forgotten(cause)
            .fetch_add(1, Ordering::Relaxed);
        let id = ConnId {
            tgid,
            conn_id: f.conn_id,
        };
        table.closed(id, f.fd, at_ns, f.after_loss, stats, done);
    }
}

#[cfg(test)]
mod tests;
