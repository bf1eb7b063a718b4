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
    let call = take_call()?;
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
    let _ = SOCKETS.remove(key);
    if info.flags & CONN_FLAG_TLS != 0 {
        crate::tls::forget(key, &info);
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
        flags: if info.flags & CONN_FLAG_TLS == 0 {
            info.flags & CONN_FLAG_LOST
        } else {
            0
        },
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
    0
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
