//! Socket lifetime: accept/accept4 and connect add TCP sockets of targeted processes to
//! `SOCKETS`; close removes them; a targeted process's exit removes it from `TARGETS`.
//!
//! The address family comes from the `sockaddr` the syscall itself filled or read (user memory,
//! a stable ABI), so Unix sockets are never traced. When `accept` is given no address buffer the
//! family is unknown: the socket is traced provisionally and userspace checks it.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    programs::TracePointContext,
};
use infertap_common::*;

use aya_log_ebpf::{debug, warn};
use core::intrinsics::{atomic_and, atomic_or, AtomicOrdering};

use crate::{arg, maps::*, ret, targeted};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;

#[inline(always)]
fn save_sockaddr_call(ctx: &TracePointContext, kind: u32) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !targeted(pid_tgid) {
        return 0;
    }
    let call = ActiveCall {
        ptr: arg(ctx, 1),
        len: arg(ctx, 2),
        fd: arg(ctx, 0) as u32,
        kind,
        shape: SHAPE_SOCKADDR,
        family: 0,
    };
    save_call(call);
    0
}

#[inline(always)]
fn take_call_of(kind: u32) -> Option<ActiveCall> {
    let (call, _) = take_call()?;
    if call.kind == kind {
        Some(call)
    } else {
        None
    }
}

pub fn enter_accept(ctx: &TracePointContext) -> u32 {
    save_sockaddr_call(ctx, CALL_ACCEPT)
}

pub fn exit_accept(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !targeted(pid_tgid) {
        return 0;
    }
    let fd = ret(ctx);
    let call = take_call_of(CALL_ACCEPT);
    if fd < 0 {
        return 0;
    }
    match call {
        Some(call) => open(ctx, pid_tgid, fd as u32, call.fd, ROLE_SERVER, call.ptr),
        // The accept was already blocking when the process became a target (a thread-per-
        // connection server): its enter was not seen. Traced all the same, with the address
        // family unknown, so that userspace checks the socket is TCP.
        None => open(ctx, pid_tgid, fd as u32, u32::MAX, ROLE_SERVER, 0),
    }
    0
}

pub fn enter_connect(ctx: &TracePointContext) -> u32 {
    save_sockaddr_call(ctx, CALL_CONNECT)
}

pub fn exit_connect(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !targeted(pid_tgid) {
        return 0;
    }
    let call = match take_call_of(CALL_CONNECT) {
        Some(c) => c,
        None => return 0,
    };
    let r = ret(ctx);
    if r != 0 && r != -EINPROGRESS {
        return 0;
    }
    if call.ptr == 0 {
        return 0;
    }
    open(ctx, pid_tgid, call.fd, u32::MAX, ROLE_CLIENT, call.ptr);
    0
}

#[inline(always)]
fn open(ctx: &TracePointContext, pid_tgid: u64, fd: u32, listen_fd: u32, role: u32, sockaddr: u64) {
    let mut rec = ConnOpenRecord {
        header: RecordHeader {
            kind: RECORD_CONN_OPEN,
            tgid: (pid_tgid >> 32) as u32,
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        conn_id: 0,
        fd,
        listen_fd,
        role,
        flags: 0,
        addr: [0; 32],
    };
    if sockaddr == 0 {
        rec.flags |= OPEN_FLAG_FAMILY_UNKNOWN;
    } else {
        // SAFETY: the helper copies from user memory and fails with an error on a bad address.
        let family = unsafe { bpf_probe_read_user(sockaddr as *const u16) }.unwrap_or(0);
        let len = match family {
            AF_INET => 16,
            AF_INET6 => 28,
            _ => return, // Unix sockets, netlink, …: never traced
        };
        // SAFETY: the helper copies from user memory and fails with an error on a bad address.
        if unsafe { bpf_probe_read_user_buf(sockaddr as *const u8, &mut rec.addr[..len]) }.is_err()
        {
            rec.flags |= OPEN_FLAG_FAMILY_UNKNOWN;
        }
    }
    rec.conn_id = rec.header.ts_ns;
    let key = ConnKey {
        tgid: rec.header.tgid,
        fd,
    };
    let info = ConnInfo {
        conn_id: rec.conn_id,
        role,
        flags: 0,
        rx_pos: 0,
        tx_pos: 0,
        tls_ptr: 0,
    };
    // The number already has an entry: the socket it named is gone (a close_range or exec not
    // swept yet, or a close the programs did not see). It ends here, with its close record,
    // rather than being overwritten silently.
    // SAFETY: plain value copied out before removal.
    if let Some(old) = unsafe { SOCKETS.get(key) }.copied() {
        let cause = stale_cause(key, &old).unwrap_or(FORGET_CLOSE);
        forget(key, &old, cause);
    }
    if SOCKETS.insert(key, info, 0).is_err() {
        count_drop(DROP_SOCKETS_FULL);
        warn!(
            ctx,
            "SOCKETS map full: connection of pid {} fd {} is not traced", key.tgid, fd
        );
        return;
    }
    if EVENTS
        .output::<ConnOpenRecord>(&rec, wakeup_flags())
        .is_err()
    {
        count_drop(DROP_RINGBUF_CONTROL);
        if let Some(p) = SOCKETS.get_ptr_mut(key) {
            // SAFETY: a map value pointer valid for this program run.
            unsafe { (*p).flags |= CONN_FLAG_LOST };
        }
    }
}

pub fn enter_close(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !targeted(pid_tgid) {
        return 0;
    }
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: arg(ctx, 0) as u32,
    };
    // SAFETY: plain value copied out before removal.
    let info = match unsafe { SOCKETS.get(key) } {
        Some(i) => *i,
        None => return 0,
    };
    // A stale entry: the number was reused after a close_range or an exec, and this closes
    // whatever reused it.
    let cause = stale_cause(key, &info).unwrap_or(FORGET_CLOSE);
    forget(key, &info, cause);
    0
}

/// `dup2`/`dup3` onto a traced socket's number: the socket behind that number is closed first.
/// Forgotten before the syscall runs (a failed dup2 leaves the socket untraced, never a file
/// traced).
pub fn enter_dup(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !targeted(pid_tgid) {
        return 0;
    }
    let (old, new) = (arg(ctx, 0) as u32, arg(ctx, 1) as u32);
    if old == new {
        return 0;
    }
    let key = ConnKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: new,
    };
    // SAFETY: plain value copied out before removal.
    let info = match unsafe { SOCKETS.get(key) } {
        Some(i) => *i,
        None => return 0,
    };
    forget(key, &info, FORGET_DUP);
    0
}

const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;

/// `close_range(first, last, flags)`: the numbers in the range are stale from now on. With
/// `CLOSE_RANGE_CLOEXEC` they still name their sockets until the process execs, which forgets
/// every socket of the process anyway.
pub fn enter_close_range(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !targeted(pid_tgid) {
        return 0;
    }
    if arg(ctx, 2) & CLOSE_RANGE_CLOEXEC != 0 {
        return 0;
    }
    let (lo, hi) = (arg(ctx, 0) as u32, arg(ctx, 1) as u32);
    if lo > hi {
        return 0; // EINVAL
    }
    mark_forgotten((pid_tgid >> 32) as u32, lo, hi, FORGET_CLOSE_RANGE);
    0
}

/// `sched/sched_process_exec`: every descriptor of a targeted process is stale (close-on-exec
/// ones are gone; userspace rediscovers the sockets that survived). Every exec on the node is
/// reported, so that userspace can target a new server when it starts.
pub fn process_exec(_ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let was_target = targeted(pid_tgid);
    if was_target {
        mark_forgotten(tgid, 0, u32::MAX, FORGET_EXEC);
    }
    let rec = ProcEventRecord {
        header: RecordHeader {
            kind: RECORD_PROC_EXEC,
            tgid,
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        was_target: was_target as u32,
        _pad: 0,
    };
    if EVENTS
        .output::<ProcEventRecord>(&rec, BPF_RB_FORCE_WAKEUP)
        .is_err()
    {
        count_drop(DROP_RINGBUF_CONTROL);
    }
    0
}

/// `listen(2)` returned: any process on the node that starts listening is reported (rare), so
/// that a server selected by its port is targeted when it listens, not at the next scan.
pub fn exit_listen(ctx: &TracePointContext) -> u32 {
    if ret(ctx) != 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let rec = ProcEventRecord {
        header: RecordHeader {
            kind: RECORD_PROC_LISTEN,
            tgid: (pid_tgid >> 32) as u32,
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        was_target: targeted(pid_tgid) as u32,
        _pad: 0,
    };
    if EVENTS
        .output::<ProcEventRecord>(&rec, BPF_RB_FORCE_WAKEUP)
        .is_err()
    {
        count_drop(DROP_RINGBUF_CONTROL);
    }
    0
}

/// Record that `lo..=hi` of `tgid` went stale now (merged with what is not swept yet), flag the
/// process in `STALE`, and tell userspace to sweep.
#[inline(always)]
fn mark_forgotten(tgid: u32, lo: u32, hi: u32, cause: u32) {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut f = Forgotten { ts_ns: now, lo, hi };
    // SAFETY: read-only copy of a map value.
    if let Some(prev) = unsafe { FORGOTTEN.get(tgid) } {
        // Not swept yet: the hull of both ranges (a socket opened in between in the hull but in
        // neither range is forgotten too: untraced, never a file traced).
        f.lo = if prev.lo < lo { prev.lo } else { lo };
        f.hi = if prev.hi > hi { prev.hi } else { hi };
    }
    if FORGOTTEN.insert(tgid, f, 0).is_err() {
        count_drop(DROP_SOCKETS_FULL);
    }
    let (word, bit) = target_bit(tgid);
    if let Some(w) = STALE.get_ptr_mut(word) {
        // SAFETY: a map value pointer valid for this program run; other CPUs write other bits of
        // the word, hence the atomic operation.
        unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(w, bit) };
    }
    let rec = FdsForgottenRecord {
        header: RecordHeader {
            kind: RECORD_FDS_FORGOTTEN,
            tgid,
            ts_ns: now,
        },
        lo,
        hi,
        cause,
        _pad: 0,
    };
    if EVENTS
        .output::<FdsForgottenRecord>(&rec, BPF_RB_FORCE_WAKEUP)
        .is_err()
    {
        count_drop(DROP_RINGBUF_CONTROL);
    }
}

/// Whether a `SOCKETS` entry went stale (its number was in a `close_range` or the process
/// exec'd after the connection began); the cause if so. One array load unless the process is
/// flagged in `STALE`.
#[inline(always)]
pub fn stale_cause(key: ConnKey, info: &ConnInfo) -> Option<u32> {
    let (word, bit) = target_bit(key.tgid);
    let w = STALE.get_ptr_mut(word)?;
    // SAFETY: a map value pointer valid for this program run.
    if unsafe { *w } & bit == 0 {
        return None;
    }
    // SAFETY: read-only copy of a map value.
    let f = match unsafe { FORGOTTEN.get(key.tgid) } {
        Some(f) => *f,
        None => {
            // Swept by userspace: the process is clean again.
            // SAFETY: as above; atomic for the other bits of the word.
            unsafe { atomic_and::<u64, u64, { AtomicOrdering::Relaxed }>(w, !bit) };
            return None;
        }
    };
    if key.fd < f.lo || key.fd > f.hi || info.conn_id & CONN_ID_TIME_MASK > f.ts_ns {
        return None;
    }
    Some(if f.lo == 0 && f.hi == u32::MAX {
        FORGET_EXEC
    } else {
        FORGET_CLOSE_RANGE
    })
}

/// Remove a socket's entry and tell userspace the connection ended (`cause`: `FORGET_*`).
#[inline(always)]
pub fn forget(key: ConnKey, info: &ConnInfo, cause: u32) {
    let _ = SOCKETS.remove(key);
    if info.flags & CONN_FLAG_TLS != 0 {
        crate::tls::forget(key, info);
    }
    let rec = ConnCloseRecord {
        header: RecordHeader {
            kind: RECORD_CONN_CLOSE,
            tgid: key.tgid,
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        conn_id: info.conn_id,
        fd: key.fd,
        // TLS sockets' positions count ciphertext, not the plaintext userspace parses.
        flags: (if info.flags & CONN_FLAG_TLS == 0 && info.flags & CONN_FLAGS_LOST_ANY != 0 {
            CONN_FLAG_LOST
        } else {
            0
        }) | (cause << CLOSE_CAUSE_SHIFT),
        rx_pos: info.rx_pos,
        tx_pos: info.tx_pos,
    };
    if EVENTS
        .output::<ConnCloseRecord>(&rec, wakeup_flags())
        .is_err()
    {
        count_drop(DROP_RINGBUF_CONTROL);
        if rec.flags & CONN_FLAG_LOST != 0 {
            // Nothing will tell userspace what it missed of this connection: count it here.
            count_drop(LOST_CONNS_SLOT);
        }
    }
}

pub fn process_exit(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if pid_tgid as u32 != tgid || !targeted(pid_tgid) {
        return 0; // a thread, or a process we do not trace
    }
    // Userspace clears the target bit (one writer for the bitmap; the kernel never writes it).
    debug!(ctx, "targeted process {} exited", tgid);
    let rec = ProcExitRecord {
        header: RecordHeader {
            kind: RECORD_PROC_EXIT,
            tgid,
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
    };
    if EVENTS
        .output::<ProcExitRecord>(&rec, wakeup_flags())
        .is_err()
    {
        count_drop(DROP_RINGBUF_CONTROL);
    }
    0
}
