//! Every map the programs share with userspace or with each other. Upper-case statics, one place.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{
        bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE,
    },
    helpers::generated::{bpf_get_current_task_btf, bpf_task_storage_get},
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use infertap_common::{
    ConnInfo, ConnKey, Forgotten, TlsConn, TlsKey, DROPS_ENTRIES, DROP_ACTIVE_FULL,
};

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

/// Targeted processes with a `FORGOTTEN` entry (same layout as `TARGETS`; written by the kernel
/// programs only, with atomic bit operations): only their socket syscalls look there, so a
/// process that never used `close_range` or exec pays one array load.
#[map]
pub static STALE: Array<u64> = Array::with_max_entries(65536, 0);

/// Per targeted process, descriptor numbers that stopped naming what they named
/// (`infertap_common::Forgotten`): `close_range` and exec. Deleted by userspace once it has
/// swept the process's stale `SOCKETS` entries.
#[map]
pub static FORGOTTEN: HashMap<u32, Forgotten> = HashMap::with_max_entries(16384, 0);

/// Each thread's slot, from one syscall or TLS call to the next: task-local storage (5.12+ for
/// tracing programs), which lives and dies with the thread. It replaced hash maps keyed by
/// pid_tgid, whose insert, lookup and delete on every traced syscall cost about half of the
/// programs' run time (and, for a process with TLS uprobes, an LRU update under a lock on every
/// read): a task's slot is found through the task itself, and nothing has to be deleted (the
/// kernel frees it with the task).
#[btf_map]
pub static THREADS: TaskStorage<ThreadSlot> = TaskStorage::new();

/// What [`THREADS`] keeps for one thread.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThreadSlot {
    /// The syscall in flight, from its enter to its exit program (`kind == CALL_NONE`: none).
    pub call: ActiveCall,
    /// A TLS object whose call on this thread waits to learn its socket: the thread's next
    /// traced-socket syscall matches the two (`tls::match_socket`). 0: none.
    pub tls_active: u64,
    /// The traced socket this thread last read bytes from, plus one (0: none): OpenSSL used
    /// through a memory BIO (Python's asyncio and uvloop) decrypts after the read, outside any
    /// SSL call.
    pub last_rx: u32,
    pub _pad: u32,
}

/// The current thread's slot (created zeroed when `create`), or null.
#[inline(always)]
pub fn thread_slot(create: bool) -> *mut ThreadSlot {
    THREADS.current(create)
}

/// `BPF_MAP_TYPE_TASK_STORAGE` declared as a BTF map (aya-ebpf 0.2 has no type for it): the
/// layout aya-ebpf's own BTF maps use, which the loader reads from the object's BTF.
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: placeholder pointers the loader patches; never dereferenced from Rust.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        TaskStorage {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    /// The current thread's slot; created zeroed when `create` and missing.
    #[inline(always)]
    fn current(&self, create: bool) -> *mut T {
        // SAFETY: `bpf_get_current_task_btf` returns the running task, a trusted pointer the
        // helper accepts; a NULL result (no slot, or none could be allocated) is checked.
        unsafe {
            bpf_task_storage_get(
                self as *const Self as *mut c_void,
                bpf_get_current_task_btf(),
                ptr::null_mut(),
                if create {
                    BPF_LOCAL_STORAGE_GET_F_CREATE as u64
                } else {
                    0
                },
            )
            .cast()
        }
    }
}

/// Save a syscall's arguments for its exit program.
#[inline(always)]
pub fn save_call(call: ActiveCall) {
    let slot = thread_slot(true);
    if slot.is_null() {
        count_drop(DROP_ACTIVE_FULL);
        return;
    }
    // SAFETY: the current thread's own slot, valid for this program run.
    unsafe { (*slot).call = call };
}

/// Take back what the enter program of the current thread's syscall saved, if anything, with
/// the thread's slot (for the TLS fields).
#[inline(always)]
pub fn take_call() -> Option<(ActiveCall, *mut ThreadSlot)> {
    let slot = thread_slot(false);
    if slot.is_null() {
        return None;
    }
    // SAFETY: as in `save_call`.
    unsafe {
        let call = (*slot).call;
        if call.kind == CALL_NONE {
            return None;
        }
        (*slot).call.kind = CALL_NONE;
        Some((call, slot))
    }
}

/// Records to userspace. Its size is set by userspace at load time (`--ring-buffer-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Why records could not be delivered, per CPU (indexes: `infertap_common::DROP_*`), and the
/// connections lost whole (`LOST_CONNS_SLOT`).
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROPS_ENTRIES, 0);

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

/// `ActiveCall::kind` of an empty slot (data syscalls are `SYS_*`, from 1).
pub const CALL_NONE: u32 = 0;
pub const CALL_ACCEPT: u32 = 100;
pub const CALL_CONNECT: u32 = 101;

/// This CPU's count of drops for `reason`.
#[inline(always)]
pub fn drops_of(reason: u32) -> u64 {
    match DROPS.get(reason) {
        Some(c) => *c,
        None => 0,
    }
}

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
pub const BPF_RB_NO_WAKEUP: u64 = 1;
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;
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

/// Arguments of a TLS call from its entry to its return, keyed by goroutine (Go: the `g` in R14)
/// or by thread (OpenSSL: pid_tgid) in `TlsKey::ptr`.
#[map]
pub static TLS_CALLS: LruHashMap<TlsKey, TlsCall> = LruHashMap::with_max_entries(16384, 0);

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
