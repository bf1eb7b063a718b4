//! Listening TCP sockets of a network namespace through `NETLINK_SOCK_DIAG` (`inet_diag`).
//!
//! Asked for the LISTEN state only, the kernel walks only its listening hash; reading
//! `/proc/<pid>/net/tcp{,6}` instead walks every bucket of the established hash (shared by all
//! namespaces) once per namespace read, which was most of the agent's idle CPU on a busy node.
//! A namespace other than the caller's is queried by a socket created inside it: the calling
//! thread enters the namespace (`setns`, a per-thread change for network namespaces), opens the
//! netlink socket, and returns at once.
//!
//! Linux 4.2 (`inet_diag_req_v2` with `SOCK_DIAG_BY_FAMILY`); where the kernel has no `inet_diag`
//! the caller falls back to /proc.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A listening TCP socket: its inode (as `/proc/<pid>/fd` links show it) and local port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenSocket {
    pub inode: u64,
    pub port: u16,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_LISTEN: u32 = 10;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`: family, state, timer, retrans (4), id (48), expires, rqueue, wqueue,
/// uid, inode (20).
const MSG_LEN: usize = 72;

/// A `NETLINK_SOCK_DIAG` socket in the caller's network namespace.
fn open() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the returned fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setns(ns: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: setns(2) on a namespace descriptor; changes only this thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A `NETLINK_SOCK_DIAG` socket in the namespace `ns` (a descriptor of `/proc/<pid>/ns/net`),
/// or in the caller's when `ns` is `None`. `own` is the caller's namespace, to return to.
pub fn open_in(ns: Option<&std::fs::File>, own: &std::fs::File) -> io::Result<OwnedFd> {
    let Some(ns) = ns else { return open() };
    setns(ns)?;
    let sock = open();
    // Back to our own namespace whatever happened: everything else this thread does is by path
    // under /proc/<pid>, which does not depend on it, but the next query would.
    setns(own)?;
    sock
}

/// The listening TCP sockets (IPv4 and IPv6) of the namespace `sock` was opened in.
pub fn listening(sock: &OwnedFd) -> io::Result<Vec<ListenSocket>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        dump(sock, family, &mut out)?;
    }
    Ok(out)
}

fn dump(sock: &OwnedFd, family: u8, out: &mut Vec<ListenSocket>) -> io::Result<()> {
    let mut req = [0u8; NLMSG_HDR + REQ_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence
    req[NLMSG_HDR] = family;
    req[NLMSG_HDR + 1] = libc::IPPROTO_TCP as u8;
    req[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // SAFETY: send(2) of a buffer we own, on a socket we own.
    let sent = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: recv(2) into a buffer we own, of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(());
        }
        if parse(&buf[..n as usize], out)? {
            return Ok(());
        }
    }
}

/// Parses one datagram of netlink messages into `out`; `true` once the dump is done.
fn parse(mut data: &[u8], out: &mut Vec<ListenSocket>) -> io::Result<bool> {
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    while data.len() >= NLMSG_HDR {
        let len = u32_at(data, 0) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDR || len > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        let body = &data[NLMSG_HDR..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = if body.len() >= 4 {
                    -(u32_at(body, 0) as i32)
                } else {
                    libc::EIO
                };
                return Err(io::Error::from_raw_os_error(errno));
            }
            SOCK_DIAG_BY_FAMILY if body.len() >= MSG_LEN => {
                // id.sport is big-endian at offset 4; idiag_inode is the last field.
                let port = u16::from_be_bytes([body[4], body[5]]);
                let inode = u64::from(u32_at(body, MSG_LEN - 4));
                out.push(ListenSocket { inode, port });
            }
            _ => {}
        }
        let aligned = (len + 3) & !3;
        data = &data[aligned.min(data.len())..];
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_listener_of_this_process_with_its_inode() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l6 = std::net::TcpListener::bind("[::1]:0").ok();
        let port = l.local_addr().unwrap().port();
        let inode = |fd: i32| {
            let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
            let link = link.to_str().unwrap().to_string();
            link.trim_start_matches("socket:[")
                .trim_end_matches(']')
                .parse::<u64>()
                .unwrap()
        };
        let own = std::fs::File::open("/proc/self/ns/net").unwrap();
        let sock = open_in(None, &own).unwrap();
        let found = listening(&sock).unwrap();
        assert!(
            found.contains(&ListenSocket {
                inode: inode(l.as_raw_fd()),
                port
            }),
            "{found:?}"
        );
        if let Some(l6) = l6 {
            let p6 = l6.local_addr().unwrap().port();
            assert!(found.contains(&ListenSocket {
                inode: inode(l6.as_raw_fd()),
                port: p6
            }));
        }
        // A connected socket is not a listener.
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let local = c.local_addr().unwrap().port();
        assert!(!listening(&sock).unwrap().iter().any(|s| s.port == local));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let mut out = Vec::new();
        assert!(parse(&[0u8; 3], &mut out).is_ok_and(|done| !done));
        let mut bad = [0u8; 20];
        bad[0..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(parse(&bad, &mut out).is_err());
        let mut err = [0u8; 20];
        err[0..4].copy_from_slice(&20u32.to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse(&err, &mut out).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        assert!(out.is_empty());
    }
}
