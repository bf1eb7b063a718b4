//! infertap's kernel programs.
//!
//! Syscall tracepoints (`syscalls/sys_enter_*`, `syscalls/sys_exit_*`) on the socket I/O of
//! targeted processes, and `sched/sched_process_exit`. They read only syscall arguments, return
//! values, user memory the syscall itself moved, and maps: no kernel struct, no CO-RE, no kprobe.
//!
//! Flow: an enter program checks `TARGETS` (every other process leaves here) and saves the
//! arguments in the thread's `CALLS` slot. The exit program takes them back, looks the
//! descriptor up in `SOCKETS` once (only traced TCP sockets go on; files, pipes and Unix sockets
//! never do), and for a positive return value copies the bytes moved into `EVENTS` as data
//! records built in ring-buffer reservations (buffers up to 1 MiB whole, then head and tail),
//! each stamped with its position in the connection's byte stream so that userspace sees every
//! loss exactly.
//!
//! Descriptor numbers that stop naming a traced socket drop its `SOCKETS` entry: `close`,
//! `dup2`/`dup3` onto it at once; `close_range` and exec mark a range of the process's numbers
//! stale (`FORGOTTEN`, flagged in `STALE`), which the next syscall on such an entry and
//! userspace's sweep both honour (`conn.rs`).
//!
//! `tls.rs`: uprobes on Go's `crypto/tls` and OpenSSL that copy TLS plaintext into the same data
//! records, matched to their socket through the syscalls the TLS library makes.
//!
//! Minimum kernel version: 5.12 (task-local storage in tracing programs); the ring buffer needs
//! 5.8, bounded loops 5.3.
#![no_std]
#![no_main]
// Atomic or/and on the `STALE` bitmap (the BPF target has no `AtomicU64::fetch_or`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod conn;
mod data;
mod maps;
mod tls;

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext, EbpfContext,
};
use infertap_common::*;
use maps::*;

/// `syscalls/sys_enter_*`: the n-th syscall argument (n < 6).
///
/// Read straight from the tracepoint record: a tracepoint program may load from its context at
/// a constant offset, which costs one instruction where `bpf_probe_read_kernel` (what
/// `TracePointContext::read_at` does) costs a helper call.
#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: syscall enter tracepoints lay out `__syscall_nr` at 8 and the six arguments as
    // 8-byte slots from offset 16; the verifier checks the constant offset against the record.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u64).add(2 + n)) }
}

/// `syscalls/sys_exit_*`: the return value (read as `arg` reads).
#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: `ret` sits at offset 16 of every syscall exit tracepoint.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const i64).add(2)) }
}

#[inline(always)]
fn targeted(pid_tgid: u64) -> bool {
    let (word, bit) = target_bit((pid_tgid >> 32) as u32);
    match TARGETS.get(word) {
        Some(w) => *w & bit != 0,
        None => false,
    }
}

const MSG_PEEK: u64 = 2;
const ECONNRESET: i64 = 104;
const EPIPE: i64 = 32;

/// Save a data syscall's arguments if the process is targeted. Whether the descriptor is a
/// traced socket is decided once, at exit: one `SOCKETS` lookup per syscall.
#[inline(always)]
fn enter_data(
    ctx: &TracePointContext,
    kind: u32,
    shape: u32,
    peek_flags_arg: Option<usize>,
) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !targeted(pid_tgid) {
        return 0;
    }
    if let Some(n) = peek_flags_arg {
        if arg(ctx, n) & MSG_PEEK != 0 {
            return 0; // peeked bytes are read again later: copying them would duplicate them
        }
    }
    let call = ActiveCall {
        ptr: arg(ctx, 1),
        len: arg(ctx, 2),
        fd: arg(ctx, 0) as u32,
        kind,
        shape,
        family: 0,
    };
    save_call(call);
    0
}

#[inline(always)]
fn exit_data<const SHAPE: u32>(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !targeted(pid_tgid) {
        return 0;
    }
    let (call, slot) = match take_call() {
        Some(c) => c,
        None => return 0,
    };
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: call.fd,
    };
    // Files, pipes and untraced sockets leave here.
    let info = match SOCKETS.get_ptr_mut(key) {
        Some(p) => p,
        None => return 0,
    };
    // SAFETY: a map value pointer valid for this program run.
    if let Some(cause) = conn::stale_cause(key, unsafe { &*info }) {
        // The number was reused after a close_range or an exec: whatever it names now is not
        // the socket.
        // SAFETY: as above; copied before the entry is removed.
        let copy = unsafe { *info };
        conn::forget(key, &copy, cause);
        return 0;
    }
    let tls_probed = tls::probed(pid_tgid);
    if tls_probed {
        tls::match_socket(slot, key);
    }
    let n = ret(ctx);
    // The peer went away: an orderly close (a read of 0 bytes), a reset, or a write to a
    // connection it closed.
    let eof = n == 0 && call.kind < SYS_WRITE && (call.shape != SHAPE_BUF || call.len > 0);
    if eof || n == -ECONNRESET || n == -EPIPE {
        // SAFETY: as above.
        data::emit_eof(pid_tgid, &call, unsafe { &*info });
        return 0;
    }
    if n <= 0 {
        return 0;
    }
    // A plaintext socket's bytes read: OpenSSL over a memory BIO decrypts them next. Noted here,
    // not inside `emit`: a pointer kept live through its unrolled chunk loops multiplies the
    // states the verifier explores (load time went from 2 s to 70 s).
    // SAFETY: a map value pointer valid for this program run.
    if tls_probed && call.kind < SYS_WRITE && unsafe { (*info).flags } & CONN_FLAG_TLS == 0 {
        tls::note_read(slot, call.fd);
    }
    data::emit::<SHAPE>(pid_tgid, &call, n as u64, info);
    0
}

macro_rules! data_syscall {
    ($enter:ident, $exit:ident, $kind:expr, $shape:expr, $peek:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            enter_data(&ctx, $kind, $shape, $peek)
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit_data::<{ $shape }>(&ctx)
        }
    };
}

data_syscall!(sys_enter_read, sys_exit_read, SYS_READ, SHAPE_BUF, None);
data_syscall!(sys_enter_readv, sys_exit_readv, SYS_READV, SHAPE_IOV, None);
data_syscall!(
    sys_enter_recvfrom,
    sys_exit_recvfrom,
    SYS_RECVFROM,
    SHAPE_BUF,
    Some(3)
);
data_syscall!(
    sys_enter_recvmsg,
    sys_exit_recvmsg,
    SYS_RECVMSG,
    SHAPE_MSG,
    Some(2)
);
data_syscall!(sys_enter_write, sys_exit_write, SYS_WRITE, SHAPE_BUF, None);
data_syscall!(
    sys_enter_writev,
    sys_exit_writev,
    SYS_WRITEV,
    SHAPE_IOV,
    None
);
data_syscall!(
    sys_enter_sendto,
    sys_exit_sendto,
    SYS_SENDTO,
    SHAPE_BUF,
    None
);
data_syscall!(
    sys_enter_sendmsg,
    sys_exit_sendmsg,
    SYS_SENDMSG,
    SHAPE_MSG,
    None
);

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    conn::enter_accept(&ctx)
}
#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    conn::exit_accept(&ctx)
}
#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    conn::enter_accept(&ctx)
}
#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    conn::exit_accept(&ctx)
}
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    conn::enter_connect(&ctx)
}
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    conn::exit_connect(&ctx)
}
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    conn::enter_close(&ctx)
}
#[tracepoint]
pub fn sys_enter_dup2(ctx: TracePointContext) -> u32 {
    conn::enter_dup(&ctx)
}
#[tracepoint]
pub fn sys_enter_dup3(ctx: TracePointContext) -> u32 {
    conn::enter_dup(&ctx)
}
#[tracepoint]
pub fn sys_enter_close_range(ctx: TracePointContext) -> u32 {
    conn::enter_close_range(&ctx)
}
#[tracepoint]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    conn::exit_listen(&ctx)
}
#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    conn::process_exec(&ctx)
}
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    conn::process_exit(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
