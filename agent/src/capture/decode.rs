//! Pure decoding of ring buffer records (`infertap_common` layouts) into typed values.
//! Short records and unknown kinds are errors the caller counts; nothing here panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use infertap_common::*;

/// Which way bytes moved through a socket, from the traced process's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketDir {
    /// Read by the process.
    Ingress,
    /// Written by the process.
    Egress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
    Unknown,
}

impl Role {
    pub fn from_abi(role: u32) -> Role {
        match role {
            ROLE_SERVER => Role::Server,
            ROLE_CLIENT => Role::Client,
            _ => Role::Unknown,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataChunk<'a> {
    pub tgid: u32,
    pub tid: u32,
    pub ts_ns: u64,
    pub conn_id: u64,
    pub fd: u32,
    pub dir: SocketDir,
    /// Last record of its syscall.
    pub last: bool,
    /// The read returned 0: the peer closed its side (no payload).
    pub eof: bool,
    /// Records of this connection were lost in the kernel since its last delivered data record
    /// (`DATA_FLAG_AFTER_LOSS`), perhaps its open record.
    pub after_loss: bool,
    pub syscall: u32,
    pub stream_pos: u64,
    pub syscall_pos: u64,
    pub syscall_len: u64,
    pub payload: &'a [u8],
}

impl DataChunk<'_> {
    /// TLS plaintext captured by a uprobe (Go `crypto/tls`, OpenSSL), not bytes of a syscall.
    #[inline]
    pub fn is_tls(&self) -> bool {
        (SYS_GO_TLS_READ..=SYS_SSL_WRITE).contains(&self.syscall)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Data(DataChunk<'a>),
    Open {
        tgid: u32,
        ts_ns: u64,
        conn_id: u64,
        fd: u32,
        listen_fd: Option<u32>,
        role: Role,
        peer: Option<SocketAddr>,
        /// The kernel could not see the address family: userspace must check the socket is TCP.
        family_unknown: bool,
    },
    Close {
        tgid: u32,
        ts_ns: u64,
        conn_id: u64,
        fd: u32,
        /// Records of the connection were lost since its last delivered data record: the
        /// final positions below tell how much userspace did not see.
        after_loss: bool,
        /// Final stream positions (ingress, egress).
        final_pos: [u64; 2],
        /// Why the kernel forgot the socket (`FORGET_*`: close, dup2 onto its number, …).
        cause: u32,
    },
    /// Descriptors `lo..=hi` of a targeted process stopped naming what they named at `ts_ns`
    /// (`close_range`, or every descriptor at exec): its sockets there are stale.
    FdsForgotten {
        tgid: u32,
        ts_ns: u64,
        lo: u32,
        hi: u32,
        cause: u32,
    },
    /// A process exec'd (any process on the node).
    ProcExec {
        tgid: u32,
        ts_ns: u64,
        was_target: bool,
    },
    /// A process started listening on a socket (any process on the node).
    ProcListen {
        tgid: u32,
        ts_ns: u64,
    },
    ProcExit {
        tgid: u32,
        ts_ns: u64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its header ({need} bytes)")]
    Short { len: usize, need: usize },
    #[error("record kind {0} is unknown: the eBPF object and the agent disagree on the ABI")]
    UnknownKind(u32),
    #[error("data record says {declared} payload bytes but carries {actual}")]
    PayloadMismatch { declared: usize, actual: usize },
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked; T is a repr(C) integer-only ABI struct valid for any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[inline]
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    let header: RecordHeader = read(bytes)?;
    match header.kind {
        RECORD_DATA => {
            let r: DataRecord = read(bytes)?;
            let start = std::mem::size_of::<DataRecord>();
            let payload = &bytes[start..];
            let declared = r.len as usize;
            // The ring buffer pads records to 8 bytes: more bytes than declared is fine.
            if payload.len() < declared {
                return Err(DecodeError::PayloadMismatch {
                    declared,
                    actual: payload.len(),
                });
            }
            Ok(Record::Data(DataChunk {
                tgid: r.header.tgid,
                tid: r.tid,
                ts_ns: r.header.ts_ns,
                conn_id: r.conn_id,
                fd: r.fd,
                dir: if r.flags & DATA_FLAG_EGRESS != 0 {
                    SocketDir::Egress
                } else {
                    SocketDir::Ingress
                },
                last: r.flags & DATA_FLAG_LAST != 0,
                eof: r.flags & DATA_FLAG_EOF != 0,
                after_loss: r.flags & DATA_FLAG_AFTER_LOSS != 0,
                syscall: (r.flags >> DATA_SYSCALL_SHIFT) & 0xff,
                stream_pos: r.stream_pos,
                syscall_pos: r.syscall_pos,
                syscall_len: r.syscall_len,
                payload: &payload[..declared],
            }))
        }
        RECORD_CONN_OPEN => {
            let r: ConnOpenRecord = read(bytes)?;
            Ok(Record::Open {
                tgid: r.header.tgid,
                ts_ns: r.header.ts_ns,
                conn_id: r.conn_id,
                fd: r.fd,
                listen_fd: (r.listen_fd != u32::MAX).then_some(r.listen_fd),
                role: Role::from_abi(r.role),
                peer: sockaddr(&r.addr),
                family_unknown: r.flags & OPEN_FLAG_FAMILY_UNKNOWN != 0,
            })
        }
        RECORD_CONN_CLOSE => {
            let r: ConnCloseRecord = read(bytes)?;
            Ok(Record::Close {
                tgid: r.header.tgid,
                ts_ns: r.header.ts_ns,
                conn_id: r.conn_id,
                fd: r.fd,
                after_loss: r.flags & CONN_FLAG_LOST != 0,
                final_pos: [r.rx_pos, r.tx_pos],
                cause: (r.flags >> CLOSE_CAUSE_SHIFT) & 0xff,
            })
        }
        RECORD_FDS_FORGOTTEN => {
            let r: FdsForgottenRecord = read(bytes)?;
            Ok(Record::FdsForgotten {
                tgid: r.header.tgid,
                ts_ns: r.header.ts_ns,
                lo: r.lo,
                hi: r.hi,
                cause: r.cause,
            })
        }
        RECORD_PROC_LISTEN => {
            let r: ProcEventRecord = read(bytes)?;
            Ok(Record::ProcListen {
                tgid: r.header.tgid,
                ts_ns: r.header.ts_ns,
            })
        }
        RECORD_PROC_EXEC => {
            let r: ProcEventRecord = read(bytes)?;
            Ok(Record::ProcExec {
                tgid: r.header.tgid,
                ts_ns: r.header.ts_ns,
                was_target: r.was_target != 0,
            })
        }
        RECORD_PROC_EXIT => Ok(Record::ProcExit {
            tgid: header.tgid,
            ts_ns: header.ts_ns,
        }),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// A raw `sockaddr_in` / `sockaddr_in6` as the kernel's user ABI lays it out.
pub fn sockaddr(raw: &[u8; 32]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    match family {
        2 => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7])),
            port,
        )),
        10 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&raw[8..24]);
            let v6 = Ipv6Addr::from(a);
            let ip = match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            };
            Some(SocketAddr::new(ip, port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a repr(C) ABI struct.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn data_record_round_trip() {
        let r = DataRecord {
            header: RecordHeader {
                kind: RECORD_DATA,
                tgid: 42,
                ts_ns: 7,
            },
            conn_id: 9,
            stream_pos: 100,
            syscall_pos: 90,
            syscall_len: 20,
            fd: 5,
            tid: 43,
            len: 3,
            flags: DATA_FLAG_EGRESS | DATA_FLAG_LAST | (SYS_SENDTO << DATA_SYSCALL_SHIFT),
        };
        let mut b = bytes_of(&r);
        b.extend_from_slice(b"abc\0\0\0\0\0"); // ring buffer padding
        let Record::Data(d) = decode(&b).unwrap() else {
            panic!("not data")
        };
        assert_eq!(d.payload, b"abc");
        assert_eq!(d.dir, SocketDir::Egress);
        assert!(d.last);
        assert_eq!(d.syscall, SYS_SENDTO);
        assert_eq!((d.stream_pos, d.syscall_pos, d.syscall_len), (100, 90, 20));
    }

    #[test]
    fn tls_plaintext_records_are_told_apart_from_syscall_bytes() {
        for (kind, egress, tls) in [
            (SYS_GO_TLS_READ, false, true),
            (SYS_GO_TLS_WRITE, true, true),
            (SYS_SSL_READ, false, true),
            (SYS_SSL_WRITE, true, true),
            (SYS_READ, false, false),
            (SYS_SENDMSG, true, false),
        ] {
            let r = DataRecord {
                header: RecordHeader {
                    kind: RECORD_DATA,
                    tgid: 1,
                    ts_ns: 1,
                },
                len: 2,
                flags: (if tls { DATA_FLAG_TLS } else { 0 })
                    | (if egress { DATA_FLAG_EGRESS } else { 0 })
                    | (kind << DATA_SYSCALL_SHIFT),
                ..Default::default()
            };
            let mut b = bytes_of(&r);
            b.extend_from_slice(b"hi");
            let Record::Data(d) = decode(&b).unwrap() else {
                panic!("not data")
            };
            assert_eq!(d.is_tls(), tls, "kind {kind}");
            assert_eq!(d.dir == SocketDir::Egress, egress, "kind {kind}");
        }
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert!(matches!(decode(&[1, 2, 3]), Err(DecodeError::Short { .. })));
        let h = RecordHeader {
            kind: 99,
            tgid: 1,
            ts_ns: 1,
        };
        assert_eq!(decode(&bytes_of(&h)), Err(DecodeError::UnknownKind(99)));
        let r = DataRecord {
            header: RecordHeader {
                kind: RECORD_DATA,
                ..h
            },
            len: 10,
            ..Default::default()
        };
        assert!(matches!(
            decode(&bytes_of(&r)),
            Err(DecodeError::PayloadMismatch {
                declared: 10,
                actual: 0
            })
        ));
    }

    #[test]
    fn open_record_decodes_ipv4_and_mapped_ipv6_peers() {
        let mut addr = [0u8; 32];
        addr[..2].copy_from_slice(&2u16.to_ne_bytes());
        addr[2..4].copy_from_slice(&8000u16.to_be_bytes());
        addr[4..8].copy_from_slice(&[127, 0, 0, 1]);
        let r = ConnOpenRecord {
            header: RecordHeader {
                kind: RECORD_CONN_OPEN,
                tgid: 1,
                ts_ns: 2,
            },
            conn_id: 2,
            fd: 7,
            listen_fd: 3,
            role: ROLE_SERVER,
            flags: 0,
            addr,
        };
        let Record::Open {
            peer,
            listen_fd,
            role,
            ..
        } = decode(&bytes_of(&r)).unwrap()
        else {
            panic!()
        };
        assert_eq!(peer, Some("127.0.0.1:8000".parse().unwrap()));
        assert_eq!(listen_fd, Some(3));
        assert_eq!(role, Role::Server);

        let mut a6 = [0u8; 32];
        a6[..2].copy_from_slice(&10u16.to_ne_bytes());
        a6[2..4].copy_from_slice(&443u16.to_be_bytes());
        a6[8..24].copy_from_slice(&"::ffff:10.1.2.3".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(sockaddr(&a6), Some("10.1.2.3:443".parse().unwrap()));
    }

    #[test]
    fn every_truncation_of_a_record_is_an_error_not_a_panic() {
        let r = ConnCloseRecord {
            header: RecordHeader {
                kind: RECORD_CONN_CLOSE,
                tgid: 1,
                ts_ns: 1,
            },
            ..Default::default()
        };
        let b = bytes_of(&r);
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err());
        }
        assert!(decode(&b).is_ok());
    }
}
