//! The kernel ↔ userspace ABI of infertap.
//!
//! Everything the eBPF programs write into the ring buffer or read from maps is laid out here:
//! `#[repr(C)]`, fixed-width fields, no `bool`, no implicit padding, sizes asserted at compile time.
//! The agent decodes these layouts from raw bytes (`agent/src/capture`); the programs in
//! `ebpf/probes` fill them. This crate does no I/O and has no dependencies unless the `user` feature
//! adds `aya::Pod` impls for map access from userspace.
#![no_std]

/// Largest payload a single data record carries, plus one. Payload lengths are masked with
/// `CHUNK_MAX - 1` so that the verifier sees a provable bound: a record carries at most
/// `CHUNK_MAX - 1` bytes.
pub const CHUNK_MAX: usize = 16384;
/// The most payload bytes one record carries.
pub const CHUNK_PAYLOAD_MAX: usize = CHUNK_MAX - 1;
/// Records emitted for the head of one contiguous buffer; past this, only the tail chunk is sent
/// (so a large non-streaming response still shows its last bytes, where `usage` sits). With the
/// tail chunk, a buffer of up to 65 × 16,383 bytes (1,064,895: just over 1 MiB) is copied whole.
/// Chunks stay at 16 KiB so that a record always fits a small ring (`--ring-buffer-size 65536`).
pub const HEAD_CHUNKS_PER_BUFFER: u32 = 64;
/// iovecs followed per `readv`/`writev`/`recvmsg`/`sendmsg`; the rest are reported as a gap.
pub const IOVECS_TRACED: u32 = 32;

/// Record kinds (`RecordHeader::kind`).
pub const RECORD_DATA: u32 = 1;
pub const RECORD_CONN_OPEN: u32 = 2;
pub const RECORD_CONN_CLOSE: u32 = 3;
pub const RECORD_PROC_EXIT: u32 = 4;
/// Descriptor numbers of a targeted process stopped naming what they named (`FdsForgottenRecord`):
/// `close_range(2)` or `exec`. Userspace forgets the process's sockets in the range.
pub const RECORD_FDS_FORGOTTEN: u32 = 5;
/// A process exec'd (`ProcEventRecord`): userspace decides whether it is (still) a target.
pub const RECORD_PROC_EXEC: u32 = 6;
/// A process called `listen(2)` (`ProcEventRecord`, any process on the node): userspace checks
/// at once whether it now listens on a selected port.
pub const RECORD_PROC_LISTEN: u32 = 7;

/// Why a socket's `SOCKETS` entry went (`ConnCloseRecord::flags` bits 8..16 and
/// `FdsForgottenRecord::cause`): its descriptor number stopped naming it.
pub const FORGET_CLOSE: u32 = 0;
/// `close_range(2)` (or `closefrom`) over its number.
pub const FORGET_CLOSE_RANGE: u32 = 1;
/// `dup2`/`dup3` onto its number.
pub const FORGET_DUP: u32 = 2;
/// The process exec'd: its close-on-exec descriptors are gone, and the rest are rediscovered.
pub const FORGET_EXEC: u32 = 3;
/// Userspace's periodic check against `/proc/<pid>/fd` found the number no longer names the
/// socket (closed where the kernel programs cannot see, e.g. through io_uring).
pub const FORGET_RECONCILE: u32 = 4;
pub const FORGET_CAUSES: usize = 5;
/// Names of the causes, index-aligned with `FORGET_*`.
pub const FORGET_NAMES: [&str; FORGET_CAUSES] =
    ["close", "close_range", "dup", "exec", "reconcile"];
/// `ConnCloseRecord::flags`: the cause (`FORGET_*`) sits in bits 8..16.
pub const CLOSE_CAUSE_SHIFT: u32 = 8;

/// `DataRecord::flags` bits.
pub const DATA_FLAG_EGRESS: u32 = 1;
/// This record is the last one emitted for its syscall.
pub const DATA_FLAG_LAST: u32 = 2;
/// The peer went away: a read returned 0, or a read or write failed with ECONNRESET/EPIPE (no payload).
pub const DATA_FLAG_EOF: u32 = 4;
/// Syscall kind is stored in bits 8..16 of `DataRecord::flags`.
pub const DATA_SYSCALL_SHIFT: u32 = 8;

/// Syscall kinds carried in data records (for statistics and debugging only).
pub const SYS_READ: u32 = 1;
pub const SYS_READV: u32 = 2;
pub const SYS_RECVFROM: u32 = 3;
pub const SYS_RECVMSG: u32 = 4;
pub const SYS_WRITE: u32 = 5;
pub const SYS_WRITEV: u32 = 6;
pub const SYS_SENDTO: u32 = 7;
pub const SYS_SENDMSG: u32 = 8;
/// Plaintext of a TLS library call (records flagged `DATA_FLAG_TLS`), not a syscall: Go's
/// `crypto/tls.(*Conn).Read`/`Write`, OpenSSL's `SSL_read`/`SSL_write` (and their `_ex` forms).
pub const SYS_GO_TLS_READ: u32 = 9;
pub const SYS_GO_TLS_WRITE: u32 = 10;
pub const SYS_SSL_READ: u32 = 11;
pub const SYS_SSL_WRITE: u32 = 12;

/// `DataRecord::flags`: the payload is TLS plaintext captured by a uprobe. Its stream positions
/// count plaintext bytes of the connection since the TLS object was matched to its socket; the
/// record's `conn_id` and `fd` are those of the socket.
pub const DATA_FLAG_TLS: u32 = 8;
/// `DataRecord::flags`: records of this connection were lost (ring buffer full) since its last
/// delivered data record — perhaps its open record. Userspace meeting a connection it does not
/// know through such a record counts what came before as lost instead of taking the connection
/// up mid-stream as one that predates tracing.
pub const DATA_FLAG_AFTER_LOSS: u32 = 16;

/// `ConnInfo::flags`: the socket carries TLS whose plaintext is captured by uprobes; the kernel
/// no longer copies its ciphertext (only end-of-stream is reported).
pub const CONN_FLAG_TLS: u32 = 1;
/// `ConnInfo::flags`: a record of this connection (its open record, or bytes) could not be
/// delivered since its last delivered data record. The next data record carries
/// `DATA_FLAG_AFTER_LOSS`.
pub const CONN_FLAG_LOST: u32 = 2;
/// `ConnInfo::flags`: bytes of the ingress (`_RX`) or egress (`_TX`) direction were refused
/// since that direction's last delivered record. Unlike `CONN_FLAG_LOST`, a record of the other
/// direction does not clear it: a direction whose last bytes were lost shows no later position
/// until it carries bytes again, so its end-of-stream record (`_RX`) and the close record say so.
pub const CONN_FLAG_LOST_RX: u32 = 4;
pub const CONN_FLAG_LOST_TX: u32 = 8;
/// Any of the loss bits: records of the connection went undelivered that no delivered record
/// has shown yet.
pub const CONN_FLAGS_LOST_ANY: u32 = CONN_FLAG_LOST | CONN_FLAG_LOST_RX | CONN_FLAG_LOST_TX;

/// Connection roles (`ConnInfo::role`, `ConnOpenRecord::role`).
pub const ROLE_SERVER: u32 = 1;
pub const ROLE_CLIENT: u32 = 2;
/// The role is not known yet (a connection inserted by userspace before it classified it).
pub const ROLE_UNKNOWN: u32 = 0;

/// `ConnOpenRecord::flags`: the kernel could not see the address family (accept with a NULL
/// address); userspace must check that the socket is TCP and drop it otherwise.
pub const OPEN_FLAG_FAMILY_UNKNOWN: u32 = 1;

/// Indexes of the per-CPU drop counters (`DROPS` map).
pub const DROP_RINGBUF_DATA: u32 = 0;
pub const DROP_RINGBUF_CONTROL: u32 = 1;
pub const DROP_READ_USER: u32 = 2;
pub const DROP_SOCKETS_FULL: u32 = 3;
pub const DROP_ACTIVE_FULL: u32 = 4;
/// TLS plaintext whose TLS object was never matched to a socket (no socket syscall was seen inside
/// a call on it yet): the bytes cannot be placed in a connection.
pub const DROP_TLS_UNMATCHED: u32 = 5;
pub const DROP_COUNTERS: u32 = 6;
/// Slot of the `DROPS` map after the record drop reasons: connections closed while records of
/// them were lost and whose close record was refused too — userspace saw nothing to account
/// their loss by (their requests have no span and no `requests_lost` count), so the kernel
/// counts them.
pub const LOST_CONNS_SLOT: u32 = DROP_COUNTERS;
/// Entries of the `DROPS` map: the record drop reasons and `LOST_CONNS_SLOT`.
pub const DROPS_ENTRIES: u32 = DROP_COUNTERS + 1;

/// Names of the drop counters, index-aligned with the `DROP_*` constants.
pub const DROP_NAMES: [&str; DROP_COUNTERS as usize] = [
    "ringbuf_full_data",
    "ringbuf_full_control",
    "read_user_failed",
    "sockets_map_full",
    "active_map_full",
    "tls_unmatched",
];

/// Start of every ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: u32,
    pub tgid: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds when the syscall returned.
    pub ts_ns: u64,
}

/// A chunk of bytes a targeted process read from or wrote to a traced socket.
/// Followed in the ring buffer by `len` payload bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataRecord {
    pub header: RecordHeader,
    pub conn_id: u64,
    /// Position of this record's first payload byte in the connection's byte stream of this
    /// direction (bytes since the kernel started tracing the socket).
    pub stream_pos: u64,
    /// Position of the syscall's first byte in the same stream.
    pub syscall_pos: u64,
    /// Bytes the syscall transferred (its return value).
    pub syscall_len: u64,
    pub fd: u32,
    pub tid: u32,
    /// Payload bytes that follow this header.
    pub len: u32,
    /// `DATA_FLAG_*` bits, syscall kind in bits 8..16.
    pub flags: u32,
}

/// A traced socket was accepted or connected by a targeted process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnOpenRecord {
    pub header: RecordHeader,
    pub conn_id: u64,
    pub fd: u32,
    /// The listening socket's fd for `accept`; `u32::MAX` for `connect`.
    pub listen_fd: u32,
    pub role: u32,
    pub flags: u32,
    /// The peer's raw `sockaddr` (`sockaddr_in` or `sockaddr_in6`), as the syscall saw it.
    pub addr: [u8; 32],
}

/// A traced socket was closed by a targeted process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCloseRecord {
    pub header: RecordHeader,
    pub conn_id: u64,
    pub fd: u32,
    /// `CONN_FLAG_LOST` when records of the connection were lost since its last delivered data
    /// record: userspace then counts what it did not see up to the final positions as lost.
    pub flags: u32,
    /// Final stream positions (`ConnInfo::rx_pos`, `tx_pos`).
    pub rx_pos: u64,
    pub tx_pos: u64,
}

/// A targeted process (thread-group leader) exited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcExitRecord {
    pub header: RecordHeader,
}

/// Descriptors `lo..=hi` of a targeted process stopped naming what they named at `header.ts_ns`
/// (`close_range`, or `0..=u32::MAX` at exec). Userspace forgets the process's sockets in that
/// range whose connection began before then, and deletes the process's `FORGOTTEN` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdsForgottenRecord {
    pub header: RecordHeader,
    pub lo: u32,
    pub hi: u32,
    /// `FORGET_*`.
    pub cause: u32,
    pub _pad: u32,
}

/// A process exec'd (`RECORD_PROC_EXEC`) or listened (`RECORD_PROC_LISTEN`): any process on the
/// node, so that userspace targets a new server as soon as it starts (or starts listening)
/// rather than at its next /proc scan.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEventRecord {
    pub header: RecordHeader,
    /// Whether the process was a target at the event (1) or not (0).
    pub was_target: u32,
    pub _pad: u32,
}

/// Value of the `FORGOTTEN` map (key: tgid): sockets of the process with a descriptor in
/// `lo..=hi` whose connection id (its open time, `CONN_ID_TIME_MASK`) is not after `ts_ns` are
/// stale. Kept until userspace has swept them; a program that meets such an entry first drops it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    pub ts_ns: u64,
    pub lo: u32,
    pub hi: u32,
}

/// Connection ids are the kernel monotonic time of the connection's start; userspace-assigned
/// ids (sockets found already open) set the top bit on top of their time. Masked with this,
/// every id compares with a kernel timestamp.
pub const CONN_ID_TIME_MASK: u64 = !(1u64 << 63);

/// Key of the `SOCKETS` map: one traced socket of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Value of the `SOCKETS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    pub conn_id: u64,
    pub role: u32,
    /// `CONN_FLAG_*` bits.
    pub flags: u32,
    /// Bytes read so far (the ingress stream position).
    pub rx_pos: u64,
    /// Bytes written so far (the egress stream position).
    pub tx_pos: u64,
    /// With `CONN_FLAG_TLS`: the TLS object matched to this socket (its `TlsKey::ptr`), whose
    /// `TLS_CONNS` entry goes when the socket closes.
    pub tls_ptr: u64,
}

/// Key of the `TLS_CONNS` map: one TLS object (a Go `*tls.Conn` or an OpenSSL `SSL *`) of one
/// process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsKey {
    pub tgid: u32,
    pub _pad: u32,
    /// The object's address in the process.
    pub ptr: u64,
}

/// Value of the `TLS_CONNS` map: the socket a TLS object was matched to, and the positions of its
/// plaintext streams.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsConn {
    /// The socket's `ConnInfo::conn_id`.
    pub conn_id: u64,
    pub fd: u32,
    pub _pad: u32,
    /// Plaintext bytes read so far.
    pub rx_pos: u64,
    /// Plaintext bytes written so far.
    pub tx_pos: u64,
}

/// `TARGETS` is a bitmap over process ids: word `tgid / 64` of the array, bit `tgid % 64`. An
/// array lookup is inlined by the verifier into a bounds check and a load, so a process that is not
/// targeted costs a few instructions per syscall, not a hash lookup.
pub const TARGET_BITS_PER_WORD: u32 = 64;

/// The word and the bit of a tgid in the `TARGETS` bitmap.
#[inline(always)]
pub const fn target_bit(tgid: u32) -> (u32, u64) {
    (
        tgid / TARGET_BITS_PER_WORD,
        1u64 << (tgid % TARGET_BITS_PER_WORD),
    )
}

const _: () = assert!(core::mem::size_of::<RecordHeader>() == 16);
const _: () = assert!(core::mem::size_of::<DataRecord>() == 64);
const _: () = assert!(core::mem::size_of::<ConnOpenRecord>() == 72);
const _: () = assert!(core::mem::size_of::<ConnCloseRecord>() == 48);
const _: () = assert!(core::mem::size_of::<ProcExitRecord>() == 16);
const _: () = assert!(core::mem::size_of::<FdsForgottenRecord>() == 32);
const _: () = assert!(core::mem::size_of::<ProcEventRecord>() == 24);
const _: () = assert!(core::mem::size_of::<Forgotten>() == 16);
const _: () = assert!(core::mem::size_of::<ConnKey>() == 8);
const _: () = assert!(core::mem::size_of::<ConnInfo>() == 40);
const _: () = assert!(core::mem::size_of::<TlsKey>() == 16);
const _: () = assert!(core::mem::size_of::<TlsConn>() == 32);
const _: () = assert!(CHUNK_MAX.is_power_of_two());

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), made only of integers and byte arrays, with no padding
    // (sizes asserted above), so every bit pattern is valid.
    unsafe impl aya::Pod for ConnKey {}
    // SAFETY: as for ConnKey.
    unsafe impl aya::Pod for ConnInfo {}
    // SAFETY: as for ConnKey.
    unsafe impl aya::Pod for Forgotten {}
}
