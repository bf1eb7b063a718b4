//! Every map the programs share with userspace or with each other. Upper-case statics, one place.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use infertap_common::{ConnInfo, ConnKey, DataRecord, TlsConn, TlsKey, CHUNK_MAX, DROP_COUNTERS};

/// Processes to trace: a bitmap over tgids (`infertap_common::target_bit`), written by userspace
/// and sized by it from `kernel.pid_max`. Every program looks here first and leaves at once for
/// any other process.
#[map]
pub static TARGETS: Array<u64> = Array::with_max_entries(65536, 0);

/// Targeted processes with TLS uprobes attached (same layout as `TARGETS`, written by userspace
/// when it attaches them): only their socket syscalls do the TLS-object matching
/// (`tls::match_socket`, `tls::note_read`), so a plain-HTTP server pays nothing for it.
#[map]
pub static TLS_TARGETS: Array<u64> = Array::with_max_entries(65536, 0);

/// Sockets of targeted processes whose bytes are copied (TCP sockets only: accepted, connected,
/// or found open by userspace). Files, pipes and Unix sockets are never in here, so their I/O is
/// never copied.
#[map]
pub static SOCKETS: HashMap<ConnKey, ConnInfo> = HashMap::with_max_entries(65536, 0);

/// Arguments of the syscall in flight on each thread (key: pid_tgid), from enter to exit.
#[map]
pub static ACTIVE: HashMap<u64, ActiveCall> = HashMap::with_max_entries(16384, 0);

/// Records to userspace. Its size is set by userspace at load time (`--ring-buffer-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Why records could not be delivered, per CPU (indexes: `infertap_common::DROP_*`).
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_COUNTERS, 0);

/// Per-CPU scratch space where a data record is assembled before it is copied to `EVENTS`.
#[map]
pub static SCRATCH: PerCpuArray<DataEvent> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct DataEvent {
    pub record: DataRecord,
    pub payload: [u8; CHUNK_MAX],
}

/// What a syscall's enter program saves for its exit program.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ActiveCall {
    /// Buffer, iovec array, msghdr or sockaddr pointer, depending on `shape`.
    pub ptr: u64,
    /// Buffer length or iovec count.
    pub len: u64,
    pub fd: u32,
    /// `infertap_common::SYS_*` for data syscalls; `CALL_ACCEPT` / `CALL_CONNECT` otherwise.
    pub kind: u32,
    pub shape: u32,
    pub family: u32,
}

pub const SHAPE_BUF: u32 = 0;
pub const SHAPE_IOV: u32 = 1;
pub const SHAPE_MSG: u32 = 2;
pub const SHAPE_SOCKADDR: u32 = 3;

pub const CALL_ACCEPT: u32 = 100;
pub const CALL_CONNECT: u32 = 101;

#[inline(always)]
pub fn count_drop(reason: u32) {
    if let Some(c) = DROPS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot, touched only by this CPU.
        unsafe { *c += 1 };
    }
}

/// Ring buffer wake-ups cost a cross-CPU interrupt each (several microseconds on a VM): records
/// are written without one until this much data waits, and userspace also drains on a short
/// timer, so a quiet ring is still read within milliseconds.
const WAKEUP_BYTES: u64 = 256 * 1024;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

#[inline(always)]
pub fn wakeup_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// TLS objects (Go `*tls.Conn`, OpenSSL `SSL *`) matched to the socket they run over, with the
/// positions of their plaintext streams. LRU: an object freed without its socket being seen
/// closing ages out.
#[map]
pub static TLS_CONNS: LruHashMap<TlsKey, TlsConn> = LruHashMap::with_max_entries(65536, 0);

/// A TLS call in flight on a thread (key: pid_tgid → the TLS object): the next socket syscall of
/// that thread matches the object to its socket (`tls::match_socket`).
#[map]
pub static TLS_ACTIVE: LruHashMap<u64, u64> = LruHashMap::with_max_entries(16384, 0);

/// Arguments of a TLS call from its entry to its return, keyed by goroutine (Go: the `g` in R14)
/// or by thread (OpenSSL: pid_tgid) in `TlsKey::ptr`.
#[map]
pub static TLS_CALLS: LruHashMap<TlsKey, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// The traced socket each thread last read bytes from (pid_tgid → fd): OpenSSL used through a
/// memory BIO (Python's asyncio and uvloop) decrypts after the read, outside any SSL call.
#[map]
pub static LAST_RX: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// What a TLS call's entry saves for its return.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    /// The TLS object.
    pub conn: u64,
    /// The plaintext buffer.
    pub buf: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the byte count is written; 0 otherwise.
    pub out_len: u64,
    /// `SYS_GO_TLS_*` or `SYS_SSL_*`.
    pub kind: u32,
    pub _pad: u32,
}
