//! The connection table: one entry per traced socket, ordered byte streams per direction with
//! exact gap detection, each connection's protocol and request assembly, idle eviction.
//!
//! A connection's protocol is one value ([`Protocol`]): detecting (HTTP/1.x until shown
//! otherwise), HTTP/1.x, HTTP/2, or opaque. [`detect`] decides it from the bytes; TLS is not a
//! protocol but a property of where the bytes came from (`tls`: which bytes of a TLS connection
//! are parsed), and a TLS connection's plaintext goes through the same states.
//!
//! Owns connection state and nothing else: it does no I/O and builds no spans. Everything a
//! connection finishes leaves by one route, the `out` vector of each call, as one [`Finished`]
//! value ([`Work`]: an HTTP exchange, a gRPC call or a routing decision) with the connection's
//! metadata.
//!
//! Bounded memory: what a connection holds of bytes it has not parsed yet (heads spanning
//! segments, SSE events in progress, JSON tails after a loss, HTTP/2 frames and header blocks,
//! ext_proc messages being reassembled) and the HPACK dynamic tables (RFC 7541's size) are
//! measured after each record and charged to a [`BufferBudget`]: over its per-connection bound,
//! that connection's parse state is shed (its requests in flight end incomplete; HTTP/1
//! resynchronises at the next head, HTTP/2 streams at their next DATA frame, its header blocks
//! unknown from then on); over the bound for all connections together, the connections holding
//! the most are shed until a quarter of it is free. Other connections lose nothing. Each shed is
//! counted by cause (`buffer_sheds_connection`, `buffer_sheds_global`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::capture::decode::{DataChunk, Role, SocketDir};
use crate::exchange::{Exchange, ExchangeTracker, Outcome, Work};
use crate::protocol::http::HttpEvent;
use crate::protocol::http1::Http1Conn;
use crate::protocol::{Direction, Segment};
use crate::stats::Stats;

mod tls;
use tls::{Route, TlsMode};
mod h2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub tgid: u32,
    pub conn_id: u64,
}

/// Where a finished request was seen: what span building needs of its connection.
#[derive(Clone, Debug, Default)]
pub struct ConnMeta {
    pub pid: u32,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    /// The traced process served the request (SERVER span) rather than sent it (CLIENT span).
    pub server: bool,
    /// `gen_ai.provider.name`: the kind of server the process is (from its command line).
    pub provider: &'static str,
}

/// An HTTP/1.x connection's parser and the requests it assembles.
struct Http1 {
    parser: Http1Conn,
    exchanges: ExchangeTracker,
}

impl Http1 {
    fn new(mid_stream: bool) -> Http1 {
        Http1 {
            parser: Http1Conn::new(mid_stream),
            exchanges: ExchangeTracker::new(),
        }
    }
}

/// Bytes held of what connections have not parsed yet: per connection, and for all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferBudget {
    pub per_conn: usize,
    pub total: usize,
}

impl BufferBudget {
    /// 8 MiB per connection (one ext_proc message of gRPC's 4 MiB maximum, with room for the
    /// rest), 128 MiB in all (a quarter of the DaemonSet's 512 MiB memory limit).
    pub const DEFAULT: BufferBudget = BufferBudget {
        per_conn: 8 << 20,
        total: 128 << 20,
    };
}

impl Default for BufferBudget {
    fn default() -> BufferBudget {
        BufferBudget::DEFAULT
    }
}

/// Why a connection's parse state was shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ShedCause {
    /// It held more than [`BufferBudget::per_conn`].
    Connection,
    /// All connections together held more than [`BufferBudget::total`]; it held the most.
    Global,
}

/// What a connection's bytes are parsed as.
enum Protocol {
    /// HTTP/1.x until shown otherwise: its parser runs, and [`detect`] may still find HTTP/2 (at
    /// the first bytes of a connection seen from its start, or, on one picked up mid-stream, at a
    /// syscall boundary while no request is in flight). Leaves for `Http1` at the first request
    /// head.
    Detecting(Http1),
    /// HTTP/1.x: a request head was parsed.
    Http1(Http1),
    /// HTTP/2 (and gRPC, ext_proc over it).
    Http2(Box<h2::H2State>),
    /// Given up on: not HTTP. Its bytes are dropped unparsed.
    Opaque,
}

/// What [`detect`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detected {
    /// Nothing that changes the protocol.
    Same,
    /// The connection is HTTP/2.
    Http2,
}

/// Whether a record's bytes show that a connection still [`Protocol::Detecting`] is HTTP/2:
/// the connection preface (or the server's SETTINGS) at the first byte of a connection seen from
/// its start, or HTTP/2 frames at a syscall boundary of one picked up mid-stream while no HTTP/1
/// request is in flight.
fn detect(c: &Conn, h: &Http1, chunk: &DataChunk<'_>, hdir: Direction) -> Detected {
    let d = chunk.dir as usize;
    let at_start = c.from_start && chunk.stream_pos == 0 && c.next_pos[d] == Some(0);
    if at_start && h2::starts_http2(hdir, chunk.payload) {
        return Detected::Http2;
    }
    let mid = !c.from_start
        && h.exchanges.in_flight() == 0
        && h2::frames_mid_stream(&Segment {
            ts_ns: chunk.ts_ns,
            data: chunk.payload,
            syscall_start: chunk.stream_pos == chunk.syscall_pos,
        });
    if mid {
        Detected::Http2
    } else {
        Detected::Same
    }
}

struct Conn {
    fd: u32,
    role: Role,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    proto: Protocol,
    /// Next expected stream position, per socket direction (ingress, egress); `None` until the
    /// first record of a connection picked up mid-stream.
    next_pos: [Option<u64>; 2],
    last_seen_ns: u64,
    provider: &'static str,
    /// Whether the stream is TLS, and which bytes of it are parsed (`tls`).
    tls: TlsMode,
    /// Seen from its first byte (not picked up mid-stream).
    from_start: bool,
    /// Bytes it held, not parsed yet, after its last record (charged to the budget).
    held: usize,
}

impl Conn {
    /// Bytes its protocol's state holds, not parsed yet.
    fn buffered(&self) -> usize {
        match &self.proto {
            Protocol::Detecting(h) | Protocol::Http1(h) => {
                h.parser.buffered() + h.exchanges.buffered()
            }
            Protocol::Http2(h) => h.buffered(),
            Protocol::Opaque => 0,
        }
    }

    /// Drops what its parse state holds: requests in flight end incomplete (into `done`); HTTP/1
    /// starts again as if picked up mid-stream (at the next syscall that begins a head), HTTP/2
    /// streams drop their buffers and pick messages up at their next DATA frame.
    fn shed(&mut self, ts_ns: u64, stats: &Stats, done: &mut Vec<Work>) {
        match &mut self.proto {
            Protocol::Detecting(h) | Protocol::Http1(h) => {
                let mut ended = Vec::new();
                h.exchanges.shed(ts_ns, &mut ended);
                count_shed(&mut h.parser, stats);
                done.extend(ended.into_iter().map(|e| Work::Exchange(Box::new(e))));
                self.proto = Protocol::Detecting(Http1::new(true));
                self.from_start = false;
            }
            Protocol::Http2(h) => h.shed_buffers(),
            Protocol::Opaque => {}
        }
    }

    fn meta(&self, tgid: u32) -> ConnMeta {
        ConnMeta {
            pid: tgid,
            local: self.local,
            peer: self.peer,
            server: self.role != Role::Client,
            provider: self.provider,
        }
    }

    fn http_dir(&self, dir: SocketDir) -> Direction {
        match (self.role, dir) {
            (Role::Client, SocketDir::Ingress)
            | (Role::Server | Role::Unknown, SocketDir::Egress) => Direction::Response,
            _ => Direction::Request,
        }
    }

    /// The HTTP/1.x state, while the connection is on that path.
    fn http1(&self) -> Option<&Http1> {
        match &self.proto {
            Protocol::Detecting(h) | Protocol::Http1(h) => Some(h),
            _ => None,
        }
    }
}

/// Something a connection finished, with where it was seen.
#[derive(Debug)]
pub struct Finished {
    pub conn: ConnId,
    pub meta: ConnMeta,
    pub work: Work,
}

impl Finished {
    /// The HTTP exchange, when that is what finished.
    pub fn exchange(&self) -> Option<&Exchange> {
        match &self.work {
            Work::Exchange(ex) => Some(ex),
            _ => None,
        }
    }
}

pub struct ConnTable {
    /// Keyed by kernel-assigned ids (pid, open time), looked up on every record: foldhash, seeded
    /// per table, instead of SipHash.
    conns: HashMap<ConnId, Conn, foldhash::fast::RandomState>,
    /// The server kind of each targeted process (`gen_ai.provider.name`).
    providers: HashMap<u32, &'static str>,
    max_conns: usize,
    idle_timeout_ns: u64,
    budget: BufferBudget,
    /// The sum of every connection's `held`.
    held: usize,
}

/// How a connection became known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Seen from its first byte (accept/connect traced).
    Start,
    /// Already open when tracing began: its first bytes may be mid-message.
    MidStream,
}

impl ConnTable {
    pub fn new(max_conns: usize, idle_timeout_ns: u64) -> ConnTable {
        ConnTable {
            conns: HashMap::default(),
            providers: HashMap::new(),
            max_conns,
            idle_timeout_ns,
            budget: BufferBudget::DEFAULT,
            held: 0,
        }
    }

    /// Sets the bounds on bytes held of what connections have not parsed yet.
    pub fn set_budget(&mut self, budget: BufferBudget) {
        self.budget = budget;
    }

    /// Bytes all connections hold, not parsed yet.
    pub fn buffered(&self) -> usize {
        self.held
    }

    /// Sheds the connections holding the most (all together over the total budget) until a quarter of the total budget is free (one
    /// pass, so that refilling it takes that many bytes).
    fn shed_most(&mut self, ts_ns: u64, stats: &Stats, out: &mut Vec<Finished>) {
        let goal = self.budget.total - self.budget.total / 4;
        let mut by_size: Vec<(usize, ConnId)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.held > 0)
            .map(|(id, c)| (c.held, *id))
            .collect();
        by_size.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        for (_, id) in by_size {
            if self.held <= goal {
                break;
            }
            if let Some(c) = self.conns.get_mut(&id) {
                let held = shed(id, c, ShedCause::Global, ts_ns, stats, out);
                self.held = (self.held + held).saturating_sub(c.held);
                c.held = held;
            }
        }
    }

    /// Takes a connection out of the table, its bytes off the budget.
    fn remove(&mut self, id: &ConnId) -> Option<Conn> {
        let c = self.conns.remove(id)?;
        self.held = self.held.saturating_sub(c.held);
        Some(c)
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &mut self,
        id: ConnId,
        fd: u32,
        role: Role,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
        origin: Origin,
        ts_ns: u64,
        stats: &Stats,
    ) {
        if let Some(c) = self.conns.get_mut(&id) {
            // Data arrived before the open (userspace found it while the kernel already traced it).
            c.role = if role == Role::Unknown { c.role } else { role };
            c.local = local.or(c.local);
            c.peer = peer.or(c.peer);
            return;
        }
        if self.conns.len() >= self.max_conns {
            stats.connections_shed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        self.conns.insert(
            id,
            Conn {
                fd,
                role,
                local,
                peer,
                proto: Protocol::Detecting(Http1::new(origin == Origin::MidStream)),
                next_pos: [Some(0), Some(0)],
                last_seen_ns: ts_ns,
                provider: self
                    .providers
                    .get(&id.tgid)
                    .copied()
                    .unwrap_or("openai_compatible"),
                tls: TlsMode::Unknown,
                from_start: origin == Origin::Start,
                held: 0,
            },
        );
    }

    /// Bytes moved on a traced socket.
    pub fn data(&mut self, chunk: &DataChunk<'_>, stats: &Stats, out: &mut Vec<Finished>) {
        if chunk.eof && chunk.after_loss {
            // The end of a direction whose last bytes the kernel refused (perhaps all of them,
            // while records of the other direction got through): its position is the first to
            // show the gap.
            let mark = DataChunk {
                eof: false,
                last: false,
                syscall_pos: chunk.stream_pos,
                syscall_len: 0,
                payload: &[],
                ..*chunk
            };
            self.data(&mark, stats, out);
        }
        let id = ConnId {
            tgid: chunk.tgid,
            conn_id: chunk.conn_id,
        };
        // One lookup for the records of a known connection (nearly all).
        let c = match self.conns.get_mut(&id) {
            Some(c) => {
                if chunk.after_loss {
                    // The kernel refused records of this connection since its last delivered
                    // one: where a direction's syscall lost its last records, no position shows
                    // it until that direction carries bytes again, so what is in flight now is
                    // marked here (HTTP/2 streams see the gap in their own direction's
                    // positions: its reads and writes are continuous).
                    if let Protocol::Detecting(h) | Protocol::Http1(h) = &mut c.proto {
                        h.exchanges.lost_somewhere();
                    }
                }
                c
            }
            None => {
                if chunk.eof {
                    return; // the end of a connection we never saw
                }
                // Its open record was lost, or it was evicted while idle: pick it up here.
                let role = match chunk.dir {
                    SocketDir::Ingress => Role::Server,
                    SocketDir::Egress => Role::Client,
                };
                // Flagged after a kernel loss, the kernel traced it from its first byte: its
                // streams start at 0, and what came before this record is a loss (bytes, and a
                // request where a request head was due). Otherwise it predates tracing (or was
                // evicted while idle) and positions before this record are not a loss.
                let origin = if chunk.after_loss {
                    stats.connections_after_loss.fetch_add(1, Ordering::Relaxed);
                    Origin::Start
                } else {
                    Origin::MidStream
                };
                self.open(id, chunk.fd, role, None, None, origin, chunk.ts_ns, stats);
                let Some(c) = self.conns.get_mut(&id) else {
                    return; // not opened: the table is full (counted as shed)
                };
                c.from_start = false;
                if !chunk.after_loss {
                    c.next_pos = [None, None];
                }
                c
            }
        };
        c.last_seen_ns = chunk.ts_ns;
        if chunk.eof {
            match &mut c.proto {
                Protocol::Detecting(h) | Protocol::Http1(h) => h.exchanges.peer_closed(),
                Protocol::Http2(h) => h.peer_closed = true,
                Protocol::Opaque => {}
            }
            return;
        }
        let d = chunk.dir as usize;
        let stream_start = chunk.stream_pos == 0 || c.next_pos[d].is_none();
        match tls::route(&mut c.tls, chunk, stream_start) {
            Route::Parse => {}
            Route::Skip => return,
            Route::StartCiphertext => {
                stats.tls_ciphertext_streams.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Route::Restart => {
                // The plaintext stream has positions of its own, from 0 when its TLS object was
                // matched to the socket: at the handshake for a connection seen from its start.
                stats.tls_streams.fetch_add(1, Ordering::Relaxed);
                let from_start = c.from_start && chunk.stream_pos == 0;
                c.proto = Protocol::Detecting(Http1::new(!from_start));
                c.from_start = from_start;
                c.next_pos = if from_start {
                    [Some(0), Some(0)]
                } else {
                    [None, None]
                };
            }
        }
        let hdir = c.http_dir(chunk.dir);
        if let Protocol::Detecting(h) = &c.proto {
            if detect(c, h, chunk, hdir) == Detected::Http2 {
                c.proto = Protocol::Http2(Box::new(h2::H2State::new(c.from_start, stats)));
            }
        }
        let mut done = Vec::new();
        let expected = c.next_pos[d];
        let next = match &mut c.proto {
            Protocol::Opaque => return,
            Protocol::Http2(h) => sequence(expected, chunk, stats, |piece| match piece {
                Piece::Gap(lost) => h.gap(hdir, lost, stats, &mut done),
                Piece::Bytes(seg) => h.feed(hdir, seg, stats, &mut done),
            }),
            Protocol::Detecting(h) | Protocol::Http1(h) => {
                let (mut not_http, mut saw_request) = (false, false);
                let mut exchanges_done = Vec::new();
                let Http1 { parser, exchanges } = h;
                let mut on_event = |ev: HttpEvent<'_>| {
                    saw_request |= matches!(ev, HttpEvent::RequestHead { .. });
                    let fx = exchanges.on_event(ev, &mut exchanges_done);
                    count_http1(&fx, stats);
                    not_http |= fx.not_http;
                };
                let next = sequence(expected, chunk, stats, |piece| match piece {
                    Piece::Gap(lost) => parser.gap(hdir, chunk.ts_ns, lost, &mut on_event),
                    Piece::Bytes(seg) => parser.feed(hdir, seg, &mut on_event),
                });
                count_shed(parser, stats);
                done.extend(
                    exchanges_done
                        .into_iter()
                        .map(|e| Work::Exchange(Box::new(e))),
                );
                if not_http {
                    stats.streams_not_http.fetch_add(1, Ordering::Relaxed);
                    c.proto = Protocol::Opaque;
                } else if saw_request {
                    if let Protocol::Detecting(h) = &mut c.proto {
                        c.proto = Protocol::Http1(std::mem::replace(h, Http1::new(false)));
                    }
                }
                next
            }
        };
        c.next_pos[d] = Some(next);
        if !done.is_empty() {
            // Only when something finished: most records finish nothing.
            finish(id, &c.meta(chunk.tgid), done, stats, out);
        }
        // What it holds now, charged to the budget (with the lookup above: this runs per record).
        let mut held = c.buffered();
        if held > self.budget.per_conn {
            held = shed(id, c, ShedCause::Connection, chunk.ts_ns, stats, out);
        }
        self.held = (self.held + held).saturating_sub(c.held);
        c.held = held;
        if self.held > self.budget.total {
            self.shed_most(chunk.ts_ns, stats, out);
        }
    }

    /// The socket was closed: in-flight exchanges end here.
    pub fn close(&mut self, id: ConnId, ts_ns: u64, stats: &Stats, out: &mut Vec<Finished>) {
        if let Some(c) = self.remove(&id) {
            stats.connections_closed.fetch_add(1, Ordering::Relaxed);
            flush(id, c, ts_ns, stats, out);
        }
    }

    /// The process closed a traced socket (its close record). `lost_until`: the kernel lost
    /// records of the connection since its last delivered data record, and these are its final
    /// positions (ingress, egress).
    #[allow(clippy::too_many_arguments)]
    pub fn closed(
        &mut self,
        id: ConnId,
        fd: u32,
        ts_ns: u64,
        lost_until: Option<[u64; 2]>,
        stats: &Stats,
        out: &mut Vec<Finished>,
    ) {
        if let Some(final_pos) = lost_until {
            self.lost_until(id, fd, ts_ns, final_pos, stats, out);
        }
        self.close(id, ts_ns, stats, out);
    }

    /// Whatever userspace has not seen of a connection up to `final_pos` is a gap, counted as
    /// lost bytes (and a lost request where a request head was due), marking what is in flight
    /// incomplete. A connection userspace never saw is taken as traced from its first byte.
    fn lost_until(
        &mut self,
        id: ConnId,
        fd: u32,
        ts_ns: u64,
        final_pos: [u64; 2],
        stats: &Stats,
        out: &mut Vec<Finished>,
    ) {
        for dir in [SocketDir::Ingress, SocketDir::Egress] {
            let at = final_pos[dir as usize];
            let known = self.conns.get(&id);
            if at == 0 || known.is_some_and(|c| c.next_pos[dir as usize].is_none_or(|p| p >= at)) {
                continue;
            }
            let mark = DataChunk {
                tgid: id.tgid,
                tid: id.tgid,
                ts_ns,
                conn_id: id.conn_id,
                fd,
                dir,
                last: false,
                eof: false,
                after_loss: true,
                syscall: 0,
                stream_pos: at,
                syscall_pos: at,
                syscall_len: 0,
                payload: &[],
            };
            self.data(&mark, stats, out);
        }
    }

    /// What kind of server a process is; applies to its connections opened from now on.
    pub fn set_provider(&mut self, tgid: u32, provider: &'static str) {
        self.providers.insert(tgid, provider);
    }

    /// The process exited: every connection of it ends.
    pub fn process_exit(&mut self, tgid: u32, ts_ns: u64, stats: &Stats, out: &mut Vec<Finished>) {
        self.providers.remove(&tgid);
        let ids: Vec<ConnId> = self
            .conns
            .keys()
            .filter(|k| k.tgid == tgid)
            .copied()
            .collect();
        for id in ids {
            self.close(id, ts_ns, stats, out);
        }
    }

    /// Evict connections idle for longer than the timeout.
    pub fn evict_idle(&mut self, now_ns: u64, stats: &Stats, out: &mut Vec<Finished>) {
        let timeout = self.idle_timeout_ns;
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_seen_ns) > timeout)
            .map(|(k, _)| *k)
            .collect();
        for id in ids {
            if let Some(c) = self.remove(&id) {
                stats.connections_evicted.fetch_add(1, Ordering::Relaxed);
                flush(id, c, now_ns, stats, out);
            }
        }
    }

    /// Requests of process `tgid` still in flight, with the content chunk times they wrote at or
    /// after `since_ns`: `(start_ns, chunk times)`. Server connections only.
    pub fn in_flight_chunks(&self, tgid: u32, since_ns: u64) -> Vec<(u64, Vec<u64>)> {
        self.conns
            .iter()
            .filter(|(id, c)| id.tgid == tgid && c.role != Role::Client)
            .filter_map(|(_, c)| c.http1())
            .flat_map(|h| h.exchanges.in_flight_chunks())
            .map(|(start, chunks)| {
                let from = chunks.partition_point(|&t| t < since_ns);
                (start, chunks[from..].to_vec())
            })
            .collect()
    }

    /// Fill in addresses found later (e.g. from /proc).
    pub fn set_addrs(&mut self, id: ConnId, local: Option<SocketAddr>, peer: Option<SocketAddr>) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.local = local.or(c.local);
            c.peer = peer.or(c.peer);
        }
    }

    /// Connections whose addresses are not fully known yet (to be resolved from the process):
    /// `(id, fd, local address if known)`.
    pub fn missing_addrs(&self) -> Vec<(ConnId, u32, Option<SocketAddr>)> {
        self.conns
            .iter()
            .filter(|(_, c)| c.peer.is_none() || c.local.is_none_or(|a| a.ip().is_unspecified()))
            .map(|(k, c)| (*k, c.fd, c.local))
            .collect()
    }
}

/// Sheds connection `c`'s parse state (counted by cause); returns what it holds after.
fn shed(
    id: ConnId,
    c: &mut Conn,
    cause: ShedCause,
    ts_ns: u64,
    stats: &Stats,
    out: &mut Vec<Finished>,
) -> usize {
    let counter = match cause {
        ShedCause::Connection => &stats.buffer_sheds_connection,
        ShedCause::Global => &stats.buffer_sheds_global,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let mut done = Vec::new();
    c.shed(ts_ns, stats, &mut done);
    if !done.is_empty() {
        finish(id, &c.meta(id.tgid), done, stats, out);
    }
    c.buffered()
}

/// A connection ends: what is in flight finishes here.
fn flush(id: ConnId, c: Conn, ts_ns: u64, stats: &Stats, out: &mut Vec<Finished>) {
    let meta = c.meta(id.tgid);
    let mut done = Vec::new();
    match c.proto {
        Protocol::Http2(mut h) => h.close(ts_ns, &mut done),
        Protocol::Detecting(Http1 {
            mut parser,
            mut exchanges,
        })
        | Protocol::Http1(Http1 {
            mut parser,
            mut exchanges,
        }) => {
            exchanges.closing();
            let mut exchanges_done = Vec::new();
            parser.close(ts_ns, &mut |ev| {
                let fx = exchanges.on_event(ev, &mut exchanges_done);
                if fx.parse_errors > 0 {
                    stats
                        .http_parse_failures
                        .fetch_add(fx.parse_errors, Ordering::Relaxed);
                }
            });
            done.extend(
                exchanges_done
                    .into_iter()
                    .map(|e| Work::Exchange(Box::new(e))),
            );
            count_shed(&mut parser, stats);
        }
        // Nothing was parsed: nothing is in flight.
        Protocol::Opaque => {}
    }
    finish(id, &meta, done, stats, out);
}

/// Counts the pipelined requests the parser shed (past its bound; they have no span).
fn count_shed(parser: &mut Http1Conn, stats: &Stats) {
    let shed = parser.take_shed();
    if shed > 0 {
        stats.http_requests_shed.fetch_add(shed, Ordering::Relaxed);
    }
}

/// Counts what one HTTP/1 event did.
fn count_http1(fx: &crate::exchange::Effects, stats: &Stats) {
    if fx.parse_errors > 0 {
        stats
            .http_parse_failures
            .fetch_add(fx.parse_errors, Ordering::Relaxed);
    }
    if fx.requests_lost > 0 {
        stats
            .requests_lost
            .fetch_add(fx.requests_lost, Ordering::Relaxed);
    }
}

/// What one record adds to a direction's byte stream.
enum Piece<'a> {
    /// Bytes that were never delivered: before this record, or the rest of its syscall.
    Gap(u64),
    /// Bytes not seen before (a record overlapping what was already fed is cut).
    Bytes(Segment<'a>),
}

/// The stream-position bookkeeping every protocol path shares: given the position expected next
/// (`None`: the direction's first record), hands `on` the gap before the record (counted in
/// `bytes_lost`), its new bytes, and the gap after it when the kernel did not copy the rest of
/// its syscall; returns the position expected next.
fn sequence<'a>(
    expected: Option<u64>,
    chunk: &DataChunk<'a>,
    stats: &Stats,
    mut on: impl FnMut(Piece<'a>),
) -> u64 {
    let expected = expected.unwrap_or(chunk.syscall_pos);
    let mut data = chunk.payload;
    let mut pos = chunk.stream_pos;
    if pos > expected {
        let lost = pos - expected;
        stats.bytes_lost.fetch_add(lost, Ordering::Relaxed);
        on(Piece::Gap(lost));
    } else if pos < expected {
        let skip = (expected - pos).min(data.len() as u64) as usize;
        data = &data[skip..];
        pos += skip as u64;
    }
    if !data.is_empty() {
        on(Piece::Bytes(Segment {
            ts_ns: chunk.ts_ns,
            data,
            syscall_start: pos == chunk.syscall_pos,
        }));
    }
    let mut next = (pos + data.len() as u64).max(expected);
    let syscall_end = chunk.syscall_pos.saturating_add(chunk.syscall_len);
    if chunk.last && next < syscall_end {
        let lost = syscall_end - next;
        stats.bytes_lost.fetch_add(lost, Ordering::Relaxed);
        on(Piece::Gap(lost));
        next = syscall_end;
    }
    next
}

/// Counts what finished and hands it out with the connection's metadata.
fn finish(id: ConnId, meta: &ConnMeta, done: Vec<Work>, stats: &Stats, out: &mut Vec<Finished>) {
    for work in done {
        if let Work::Exchange(ex) = &work {
            match ex.outcome {
                Outcome::Completed => stats.requests_completed.fetch_add(1, Ordering::Relaxed),
                Outcome::Cancelled { .. } => {
                    stats.requests_cancelled.fetch_add(1, Ordering::Relaxed)
                }
                Outcome::ServerAborted { .. } => stats
                    .requests_server_aborted
                    .fetch_add(1, Ordering::Relaxed),
                Outcome::Abandoned => 0,
            };
            if ex.incomplete {
                stats.requests_incomplete.fetch_add(1, Ordering::Relaxed);
            }
            if ex.sse_failures > 0 {
                stats
                    .sse_parse_failures
                    .fetch_add(ex.sse_failures, Ordering::Relaxed);
            }
            if ex.json_error.is_some() {
                stats.json_parse_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        out.push(Finished {
            conn: id,
            meta: meta.clone(),
            work,
        });
    }
}

#[cfg(test)]
pub(crate) mod tests;
