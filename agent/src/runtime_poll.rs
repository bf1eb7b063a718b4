//! The optional bounded poll of each targeted model server's own `/metrics`
//! (`--runtime-poll-interval`, default 1 s; 0 turns it off): the same load figures the passive path
//! reads from scrapes crossing a traced socket (`protocol::runtime_metrics`), fetched by the agent
//! itself where nobody else scrapes often enough, and fed to the same per-process store
//! (`trace::saturation`) through a [`Control::Runtime`] message to the pipeline task.
//!
//! Where it connects: each target's listening socket (a wildcard address → the loopback of its
//! family, same port), from inside the target's network namespace (a short-lived thread enters
//! it to create the socket; the socket stays there), so a server in a container or a Kubernetes
//! pod is reached on its own loopback — no pod IP, Service or network policy involved.
//!
//! Bounds: one request in flight per server (a server that answers slowly is polled less often),
//! [`POLL_TIMEOUT`] for connect, write and each read, [`HEAD_MAX`] for the response head and
//! [`BODY_MAX`] for the body (read through the passive path's line scanner: nothing is kept but
//! the line in progress), at most [`SERVERS_MAX`] servers. A target whose `/metrics` fails or names
//! none of the figures read is retried after [`BACKOFF`]. Failures are counted
//! (`runtime_poll_failures`) with the last reason per server in `/status` `runtime_poll`.
//!
//! The agent's own poll crosses the traced server's socket too. It is not traced: the poll's
//! socket is bound to its source address before connecting, and registered in [`OwnConnections`];
//! the pipeline asks the node about every accepted connection's peer (`Node::is_own_connection`)
//! and stops copying a match at its open record (counted in `runtime_poll_connections_untraced`),
//! so the poll makes no span, no request metric and no second sample. A peer read from an
//! accepted descriptor after the fact counts only while the kernel still maps that number to the
//! connection (`Node::still_names`): a short client connection whose number the poll's
//! connection took over, its open record read late, is never taken for the poll.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::capture::clock::WallClock;
use crate::export::status::StatusSource;
use crate::probes::targeting::Control;
use crate::protocol::runtime_metrics::{RuntimeSample, RuntimeScan};
use crate::stats::Stats;

/// Connect, write and each read of one poll.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest response head read.
pub const HEAD_MAX: usize = 16 << 10;
/// Largest `/metrics` body read (vLLM's is tens of KiB; histograms per model and LoRA adapter).
pub const BODY_MAX: usize = 8 << 20;
/// Servers polled at once (each with at most one request in flight).
pub const SERVERS_MAX: usize = 256;
/// Wait before polling again a server whose last poll failed.
pub const BACKOFF: Duration = Duration::from_secs(30);
/// How often the targets are looked at for servers to poll.
const TARGETS_EVERY: Duration = Duration::from_millis(250);
/// How long an own connection's source address is remembered after its poll began, if the
/// pipeline never claims it (it claims it at the connection's open record, within milliseconds).
/// Short, and claimed once: on loopback the kernel reuses a source port still in TIME_WAIT
/// (`tcp_tw_reuse` = 2), so a client's connection can have the same address a moment later.
const OWN_TTL: Duration = Duration::from_secs(5);
/// Own connections remembered at once.
const OWN_MAX: usize = 4096;

/// Why one poll gave no sample.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("the process has no listening TCP socket")]
    NoListener,
    #[error("an endpoint picker, not a model server: not polled")]
    NotAModelServer,
    #[error("cannot enter the process's network namespace: {0}")]
    Netns(#[source] std::io::Error),
    #[error("connect, write or read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the response head is malformed or over {HEAD_MAX} bytes")]
    BadHead,
    #[error("/metrics answered HTTP {0}")]
    Status(u16),
    #[error("the body is over {BODY_MAX} bytes")]
    BodyTooLarge,
    #[error("the body names none of the load figures read (not a model server's /metrics?)")]
    NoFigures,
    #[error("the pipeline task's queue is full")]
    QueueFull,
}

/// Source addresses of the agent's own poll connections, registered (with the kernel's monotonic
/// time) before they connect; the pipeline's node asks it about the peer of every accepted
/// connection, with the time of its accept.
#[derive(Debug, Default)]
pub struct OwnConnections {
    addrs: Mutex<HashMap<SocketAddr, u64>>,
}

impl OwnConnections {
    pub fn register(&self, addr: SocketAddr) {
        self.register_at(addr, WallClock::monotonic_now());
    }

    fn register_at(&self, addr: SocketAddr, now_ns: u64) {
        let mut m = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = OWN_TTL.as_nanos() as u64;
        m.retain(|_, t| now_ns.saturating_sub(*t) < ttl);
        if m.len() < OWN_MAX {
            m.insert(addr, now_ns);
        }
    }

    /// Whether a connection accepted at `accepted_ns` whose peer is `peer` is one of the agent's
    /// own polls. A match is claimed (forgotten), so that a later client connection reusing the
    /// address is not taken for one; a connection accepted before the address was registered (a
    /// client that had the port earlier, its record still queued) is not one.
    pub fn claim(&self, peer: SocketAddr, accepted_ns: u64) -> bool {
        let mut m = self.addrs.lock().unwrap_or_else(|e| e.into_inner());
        if m.is_empty() {
            return false;
        }
        // An IPv4 client of a dual-stack listener shows as v4-mapped IPv6.
        let plain = match peer {
            SocketAddr::V6(v6) => v6
                .ip()
                .to_ipv4_mapped()
                .map(|ip| SocketAddr::new(IpAddr::V4(ip), v6.port())),
            SocketAddr::V4(_) => None,
        };
        let ttl = OWN_TTL.as_nanos() as u64;
        let mut take = |a: &SocketAddr| match m.get(a) {
            Some(&at) if accepted_ns >= at => {
                m.remove(a);
                accepted_ns - at < ttl
            }
            _ => false,
        };
        take(&peer) || plain.is_some_and(|p| take(&p))
    }
}

/// One polled server, for `/status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolledServer {
    pub pid: u32,
    /// Where its `/metrics` was asked for (in its own network namespace).
    pub address: Option<String>,
    pub polls: u64,
    pub failures: u64,
    /// Why the last poll failed (`None` after a success).
    pub last_error: Option<String>,
}

/// `/status` `runtime_poll`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimePollStatus {
    /// Seconds between polls of one server; `None`: the poll is off.
    pub interval_s: Option<f64>,
    pub servers: Vec<PolledServer>,
}

/// A target's listening address, re-read after a failure.
#[derive(Debug)]
struct Server {
    listener: Option<SocketAddr>,
    /// The connection kept from the last poll (none while a poll holds it).
    conn: Option<TcpStream>,
    next: Instant,
    status: PolledServer,
}

/// Polls every targeted model server every `interval` until `stop`.
pub async fn run(
    interval: Duration,
    status: StatusSource,
    ctl: mpsc::Sender<Control>,
    own: Arc<OwnConnections>,
    stats: Arc<Stats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut servers: HashMap<u32, Server> = HashMap::new();
    type Done = (
        u32,
        Option<SocketAddr>,
        Result<(), PollError>,
        Option<TcpStream>,
    );
    let mut in_flight: JoinSet<Done> = JoinSet::new();
    let mut busy: std::collections::HashSet<u32> = Default::default();
    loop {
        // Wake at the next poll due, and at least every TARGETS_EVERY for new targets.
        let now = Instant::now();
        let due = servers
            .iter()
            .filter(|(pid, _)| !busy.contains(pid))
            .map(|(_, s)| s.next)
            .min()
            .unwrap_or(now + TARGETS_EVERY)
            .clamp(now, now + TARGETS_EVERY);
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                let Ok((pid, listener, result, conn)) = done else { continue };
                busy.remove(&pid);
                let Some(s) = servers.get_mut(&pid) else { continue };
                s.status.polls += 1;
                s.conn = conn;
                match result {
                    Ok(()) => {
                        s.listener = listener;
                        s.status.last_error = None;
                    }
                    Err(PollError::NotAModelServer) => {
                        s.status.polls -= 1;
                        s.status.last_error = Some(PollError::NotAModelServer.to_string());
                        s.next = Instant::now() + Duration::from_secs(3600);
                    }
                    Err(e) => {
                        stats.runtime_poll_failures.fetch_add(1, Ordering::Relaxed);
                        s.status.failures += 1;
                        tracing::debug!(pid, error = %e, "Runtime poll failed.");
                        s.status.last_error = Some(e.to_string());
                        // A queue full is the pipeline's load, not the server's: no back-off.
                        if !matches!(e, PollError::QueueFull) {
                            s.next = Instant::now() + BACKOFF;
                            s.listener = None;
                        }
                    }
                }
                continue;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        let targets = status.app().targets;
        servers.retain(|pid, _| targets.iter().any(|t| t.pid == *pid));
        let now = Instant::now();
        for t in &targets {
            if servers.len() >= SERVERS_MAX && !servers.contains_key(&t.pid) {
                continue;
            }
            let s = servers.entry(t.pid).or_insert_with(|| Server {
                listener: None,
                conn: None,
                next: now,
                status: PolledServer {
                    pid: t.pid,
                    ..Default::default()
                },
            });
            if busy.contains(&t.pid) || s.next > now {
                continue;
            }
            s.next = now + interval;
            busy.insert(t.pid);
            let (pid, known, ctl, own) = (t.pid, s.listener, ctl.clone(), own.clone());
            let conn = s.conn.take();
            in_flight.spawn_blocking(move || {
                let listener = known.map(Ok).unwrap_or_else(|| listener_of(pid));
                let (result, conn, listener) = match listener {
                    Ok(addr) => {
                        let (r, c) = poll_once(pid, addr, &own, conn);
                        (r, c, Some(addr))
                    }
                    Err(e) => (Err(e), None, None),
                };
                let result = result.and_then(|(at_ns, sample)| {
                    ctl.try_send(Control::Runtime {
                        pid,
                        at_ns,
                        sample: Box::new(sample),
                    })
                    .map_err(|_| PollError::QueueFull)
                });
                (pid, listener, result, conn)
            });
            s.status.address = s.listener.map(|a| connect_addr(a).to_string());
        }
        let mut list: Vec<PolledServer> = servers
            .values()
            .map(|s| {
                let mut p = s.status.clone();
                p.address = s
                    .listener
                    .map(|a| connect_addr(a).to_string())
                    .or(p.address);
                p
            })
            .collect();
        list.sort_by_key(|p| p.pid);
        status.update(|a| {
            a.runtime_poll = RuntimePollStatus {
                interval_s: Some(interval.as_secs_f64()),
                servers: list,
            }
        });
    }
}

/// A target's listening TCP socket (the lowest port: vLLM has one); EPPs are not polled (their
/// `/metrics` has no engine figures).
fn listener_of(pid: u32) -> Result<SocketAddr, PollError> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if crate::probes::targets::provider_of(&cmdline) == "llm-d" {
        return Err(PollError::NotAModelServer);
    }
    crate::probes::targets::tcp_sockets(pid)
        .into_iter()
        .filter(|s| s.listening)
        .map(|s| s.local)
        .min_by_key(|a| a.port())
        .ok_or(PollError::NoListener)
}

/// Where to connect for a listener: its own address, or the loopback for a wildcard.
pub fn connect_addr(listener: SocketAddr) -> SocketAddr {
    let ip = match listener.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listener.port())
}

/// A TCP socket bound to `source` (port 0: the kernel picks), created in the network namespace
/// of `pid` when it is not the agent's own.
fn socket_in(pid: u32, source: SocketAddr) -> Result<socket2::Socket, PollError> {
    let make = move || -> Result<socket2::Socket, PollError> {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(source),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.bind(&source.into())?;
        Ok(s)
    };
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net"));
    let ours = std::fs::metadata("/proc/self/ns/net");
    use std::os::unix::fs::MetadataExt;
    let same = match (&theirs, &ours) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => true,
    };
    if same {
        return make();
    }
    // setns(2) changes the calling thread's namespace: a thread of its own, which ends with it.
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let ns =
                    std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(PollError::Netns)?;
                use std::os::fd::AsRawFd;
                // SAFETY: setns(2) on a namespace descriptor we own; it changes only this
                // thread's network namespace, and the thread ends right after.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(PollError::Netns(std::io::Error::last_os_error()));
                }
                make()
            })
            .join()
            .unwrap_or_else(|_| Err(PollError::Netns(std::io::Error::other("thread panicked"))))
    })
}

/// One `GET /metrics` of the server listening on `listener`, on `conn` (the connection kept from
/// the last poll) or a new one: the sample, stamped with the kernel monotonic time its body ended,
/// and the connection to keep for the next poll.
///
/// The connection is kept open between polls (HTTP/1.1 keep-alive; a server closes it after its
/// idle timeout, vLLM's is 5 s, and the next poll opens another): one accepted connection per
/// server rather than one a poll, and the server still holds it when the pipeline looks at it.
pub fn poll_once(
    pid: u32,
    listener: SocketAddr,
    own: &OwnConnections,
    conn: Option<TcpStream>,
) -> (Result<(u64, RuntimeSample), PollError>, Option<TcpStream>) {
    let addr = connect_addr(listener);
    if let Some(mut stream) = conn {
        match exchange(&mut stream, addr) {
            Ok((at, sample, keep)) => return (Ok((at, sample)), keep.then_some(stream)),
            // The server closed the idle connection, or it broke: once more on a new one.
            Err(PollError::Io(_) | PollError::BadHead) => {}
            Err(e) => return (Err(e), None),
        }
    }
    let fresh = || -> Result<(TcpStream, (u64, RuntimeSample, bool)), PollError> {
        let sock = socket_in(pid, SocketAddr::new(addr.ip(), 0))?;
        if let Some(local) = sock.local_addr()?.as_socket() {
            own.register(local);
        }
        sock.connect_timeout(&addr.into(), POLL_TIMEOUT)?;
        let mut stream: TcpStream = sock.into();
        stream.set_read_timeout(Some(POLL_TIMEOUT))?;
        stream.set_write_timeout(Some(POLL_TIMEOUT))?;
        let r = exchange(&mut stream, addr)?;
        Ok((stream, r))
    };
    match fresh() {
        Ok((stream, (at, sample, keep))) => (Ok((at, sample)), keep.then_some(stream)),
        Err(e) => (Err(e), None),
    }
}

/// One request and its response on `stream`.
fn exchange(
    stream: &mut TcpStream,
    addr: SocketAddr,
) -> Result<(u64, RuntimeSample, bool), PollError> {
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: infertap/{} (runtime poll)\r\nAccept: text/plain;version=0.0.4\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(req.as_bytes())?;
    read_response(stream)
}

/// How a response body is delimited.
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// The status line, head and body of one `/metrics` response read from `r`: the sample, its
/// time, and whether the connection may carry the next request.
pub fn read_response(r: &mut impl Read) -> Result<(u64, RuntimeSample, bool), PollError> {
    let deadline = Instant::now() + POLL_TIMEOUT * 2;
    let mut buf = vec![0u8; 16 << 10];
    let mut head = Vec::new();
    let (status, framing, close, body_start) = loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Err(PollError::BadHead);
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&head) {
            Ok(httparse::Status::Complete(len)) => {
                let value = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(|v| v.trim().to_ascii_lowercase())
                };
                let framing = if value("transfer-encoding").is_some_and(|v| v.ends_with("chunked"))
                {
                    Framing::Chunked
                } else if let Some(n) = value("content-length").and_then(|v| v.parse().ok()) {
                    Framing::Length(n)
                } else {
                    Framing::Close
                };
                let close = value("connection").is_some_and(|v| v.contains("close"))
                    || resp.version == Some(0);
                break (resp.code.unwrap_or(0), framing, close, len);
            }
            Ok(httparse::Status::Partial) if head.len() < HEAD_MAX => {}
            _ => return Err(PollError::BadHead),
        }
    };
    let mut body = Body {
        r,
        pending: head[body_start..].to_vec(),
        deadline,
        read: 0,
    };
    let mut scan = RuntimeScan::new();
    match framing {
        Framing::Length(n) if n > BODY_MAX => return Err(PollError::BodyTooLarge),
        Framing::Length(n) => body.copy(n, &mut scan, &mut buf)?,
        Framing::Close => while body.copy(BODY_MAX + 1, &mut scan, &mut buf).is_ok() {},
        Framing::Chunked => loop {
            let line = body.line()?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| PollError::BadHead)?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !body.line()?.is_empty() {}
                break;
            }
            body.copy(size, &mut scan, &mut buf)?;
            if !body.line()?.is_empty() {
                return Err(PollError::BadHead);
            }
        },
    }
    if body.read > BODY_MAX {
        return Err(PollError::BodyTooLarge);
    }
    if status != 200 {
        return Err(PollError::Status(status));
    }
    let at_ns = WallClock::monotonic_now();
    let keep = !close && !matches!(framing, Framing::Close);
    scan.finish()
        .map(|s| (at_ns, s, keep))
        .ok_or(PollError::NoFigures)
}

/// A response body being read: bytes already read past the head first, then the reader.
struct Body<'a, R: Read> {
    r: &'a mut R,
    pending: Vec<u8>,
    deadline: Instant,
    /// Body bytes (chunk data) read so far.
    read: usize,
}

impl<R: Read> Body<'_, R> {
    /// More bytes into `pending`; false at the end of the stream.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, PollError> {
        if Instant::now() > self.deadline {
            return Err(PollError::Io(std::io::ErrorKind::TimedOut.into()));
        }
        let n = self.r.read(buf)?;
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n > 0)
    }

    /// `n` body bytes through `scan`; an error at a premature end.
    fn copy(&mut self, n: usize, scan: &mut RuntimeScan, buf: &mut [u8]) -> Result<(), PollError> {
        let mut left = n;
        while left > 0 {
            if self.pending.is_empty() && !self.fill(buf)? {
                return Err(PollError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let take = left.min(self.pending.len());
            scan.feed(&self.pending[..take]);
            self.pending.drain(..take);
            left -= take;
            self.read += take;
            if self.read > BODY_MAX {
                return Err(PollError::BodyTooLarge);
            }
        }
        Ok(())
    }

    /// One CRLF-ended line of chunked framing (at most 1 KiB), without its end.
    fn line(&mut self) -> Result<String, PollError> {
        let mut scratch = [0u8; 1024];
        loop {
            if let Some(i) = self.pending.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.pending[..i]).into_owned();
                self.pending.drain(..i + 2);
                return Ok(line);
            }
            if self.pending.len() > 1024 || !self.fill(&mut scratch)? {
                return Err(PollError::BadHead);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(body: &str, split: usize) -> Result<(u64, RuntimeSample, bool), PollError> {
        let whole = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        // A reader that hands the response out in two reads, split at `split`.
        let (a, b) = whole.as_bytes().split_at(split.min(whole.len()));
        let mut r = std::io::Cursor::new(a.to_vec()).chain(std::io::Cursor::new(b.to_vec()));
        read_response(&mut r)
    }

    #[test]
    fn a_vllm_metrics_response_gives_its_figures_at_every_split() {
        let body = "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 7\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.75\nvllm:num_preemptions_total{model_name=\"m\"} 3\n";
        for split in 0..200 {
            let (_, s, keep) =
                response(body, split).unwrap_or_else(|e| panic!("split {split}: {e}"));
            assert!(keep);
            assert_eq!(s.requests_waiting, Some(7.0));
            assert_eq!(s.kv_cache_usage, Some(0.75));
            assert_eq!(s.preemptions_total, Some(3.0));
        }
    }

    #[test]
    fn chunked_and_close_delimited_bodies_are_read() {
        let body = "vllm:num_requests_waiting 7\nvllm:kv_cache_usage_perc 0.5\n";
        let (a, b) = body.split_at(20);
        let chunked = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        for split in 0..chunked.len() {
            let (x, y) = chunked.as_bytes().split_at(split);
            let mut r = std::io::Cursor::new(x.to_vec()).chain(std::io::Cursor::new(y.to_vec()));
            let (_, s, keep) = read_response(&mut r).unwrap_or_else(|e| panic!("{split}: {e}"));
            assert_eq!(
                (s.requests_waiting, s.kv_cache_usage, keep),
                (Some(7.0), Some(0.5), true)
            );
        }
        let close = format!("HTTP/1.0 200 OK\r\n\r\n{body}");
        let (_, s, keep) = read_response(&mut std::io::Cursor::new(close)).unwrap();
        assert_eq!((s.requests_waiting, keep), (Some(7.0), false));
    }

    #[test]
    fn failures_say_why() {
        let mut r = std::io::Cursor::new(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        assert!(matches!(read_response(&mut r), Err(PollError::Status(404))));
        assert!(matches!(
            response("# nothing here\nprocess_cpu_seconds_total 3\n", 10),
            Err(PollError::NoFigures)
        ));
        let mut r = std::io::Cursor::new(b"garbage\r\n\r\n".to_vec());
        assert!(matches!(read_response(&mut r), Err(PollError::BadHead)));
        let big = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            BODY_MAX + 1
        );
        let mut r = std::io::Cursor::new(big.into_bytes());
        assert!(matches!(
            read_response(&mut r),
            Err(PollError::BodyTooLarge)
        ));
        let endless = std::io::Cursor::new(b"HTTP/1.1 200 OK\r\nx: y\r\n".to_vec())
            .chain(std::io::repeat(b'a'));
        assert!(matches!(
            read_response(&mut endless.take(1 << 20)),
            Err(PollError::BadHead)
        ));
    }

    #[test]
    fn own_connections_match_v4_mapped_peers_and_are_claimed_once() {
        let own = OwnConnections::default();
        let a: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert!(!own.claim(a, 1_000));
        own.register_at(a, 1_000);
        assert!(!own.claim("127.0.0.1:40001".parse().unwrap(), 2_000));
        // A client accepted before the poll took the port (its record still queued) is not it.
        assert!(!own.claim(a, 999));
        assert!(own.claim("[::ffff:127.0.0.1]:40000".parse().unwrap(), 2_000));
        // Claimed: a client's connection that reuses the source port (loopback reuses ports in
        // TIME_WAIT) is not taken for the agent's own.
        assert!(!own.claim(a, 3_000));
        own.register_at(a, 4_000);
        assert!(!own.claim(a, 4_000 + OWN_TTL.as_nanos() as u64));
    }

    #[test]
    fn wildcard_listeners_are_reached_on_the_loopback() {
        assert_eq!(
            connect_addr("0.0.0.0:8000".parse().unwrap()),
            "127.0.0.1:8000".parse().unwrap()
        );
        assert_eq!(
            connect_addr("[::]:8000".parse().unwrap()),
            "[::1]:8000".parse().unwrap()
        );
        assert_eq!(
            connect_addr("10.1.2.3:8000".parse().unwrap()),
            "10.1.2.3:8000".parse().unwrap()
        );
    }
}
