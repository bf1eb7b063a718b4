//! TLS plaintext: uprobes on Go's `crypto/tls` and on OpenSSL's `SSL_read`/`SSL_write`.
//!
//! They read only registers, user memory and maps — no Go runtime or OpenSSL struct is read:
//!
//! - Which socket a TLS object (a `*tls.Conn` or an `SSL *`) runs over is learnt from the socket
//!   syscall the library itself makes inside a call on that object: the entry of the call notes
//!   the object in its thread's slot (`ThreadSlot::tls_active`), and the next traced-socket
//!   syscall of that thread matches the two (`match_socket`), stores the pair in `TLS_CONNS` and
//!   marks the socket TLS, so its ciphertext is no longer copied. OpenSSL over a memory BIO
//!   (Python's asyncio and uvloop) makes no syscall inside `SSL_read`: there the socket is the one
//!   the thread last read from (`ThreadSlot::last_rx`), since those event loops decrypt right
//!   after reading.
//! - Go (register ABI, amd64, Go ≥ 1.17): at the entry of `(*Conn).Read`/`Write` the receiver is in
//!   RAX and the `[]byte` in RBX (pointer) / RCX (length); the entry saves them keyed by goroutine
//!   (R14 holds the current `g`), since a goroutine may move between threads while it blocks.
//!   Return probes would break Go's stack growth (they overwrite the return address on a stack the
//!   runtime may move), so userspace attaches `go_tls_ret` at each RET instruction of the two
//!   functions, where RAX holds `n`.
//! - OpenSSL: entry probes save `(SSL *, buf, out length pointer)` per thread; return probes read
//!   the result.
//!
//! Plaintext leaves as ordinary data records of the socket's connection flagged `DATA_FLAG_TLS`,
//! with their own stream positions (`TlsConn::rx_pos`/`tx_pos`).

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use infertap_common::*;

use crate::data::{emit_buffer, Call};
use crate::maps::*;
use crate::targeted;

#[inline(always)]
fn regs(ctx: &ProbeContext) -> &pt_regs {
    // SAFETY: a uprobe's context is the saved user registers.
    unsafe { &*ctx.regs }
}

/// Whether the process has TLS uprobes attached (`TLS_TARGETS`): only then do its socket
/// syscalls look for TLS objects to pair.
#[inline(always)]
pub fn probed(pid_tgid: u64) -> bool {
    let (word, bit) = target_bit((pid_tgid >> 32) as u32);
    match TLS_TARGETS.get(word) {
        Some(w) => *w & bit != 0,
        None => false,
    }
}

/// A traced socket syscall on this thread (`slot`): if a TLS call on this thread is waiting to
/// learn its socket, this is it. Called by the data syscalls' exit programs.
#[inline(always)]
pub fn match_socket(slot: *mut ThreadSlot, key: ConnKey) {
    // SAFETY: the current thread's own slot, valid for this program run.
    let ptr = unsafe { (*slot).tls_active };
    if ptr == 0 {
        return;
    }
    // SAFETY: as above.
    unsafe { (*slot).tls_active = 0 };
    bind(key, ptr);
}

/// A traced socket's bytes were read on this thread (`slot`): OpenSSL over a memory BIO
/// decrypts them next. A field of the thread's own slot: no map update per read.
#[inline(always)]
pub fn note_read(slot: *mut ThreadSlot, fd: u32) {
    // SAFETY: as in `match_socket`.
    unsafe { (*slot).last_rx = fd.wrapping_add(1) };
}

/// Note `conn` as the TLS object waiting on this thread for its socket.
#[inline(always)]
fn set_active(conn: u64) {
    let slot = thread_slot(true);
    if !slot.is_null() {
        // SAFETY: the current thread's own slot, valid for this program run.
        unsafe { (*slot).tls_active = conn };
    }
}

/// Match the TLS object `ptr` to the socket `key` (if it is a traced socket).
#[inline(always)]
fn bind(key: ConnKey, ptr: u64) {
    let info = match SOCKETS.get_ptr_mut(key) {
        Some(p) => p,
        None => return,
    };
    // SAFETY: a map value pointer valid for this program's run.
    let conn_id = unsafe { (*info).conn_id };
    let tk = TlsKey {
        tgid: key.tgid,
        _pad: 0,
        ptr,
    };
    // SAFETY: read-only lookup.
    if let Some(cur) = unsafe { TLS_CONNS.get(tk) } {
        if cur.conn_id == conn_id && cur.fd == key.fd {
            return; // already matched; keep its positions
        }
    }
    let tc = TlsConn {
        conn_id,
        fd: key.fd,
        _pad: 0,
        rx_pos: 0,
        tx_pos: 0,
    };
    let _ = TLS_CONNS.insert(tk, tc, 0);
    // SAFETY: as above.
    unsafe {
        (*info).flags |= CONN_FLAG_TLS;
        (*info).tls_ptr = ptr;
    }
}

/// The socket `key` closed: its TLS object's match goes too (the library may reuse the object's
/// address for a new connection, which must not inherit this one's identity and positions).
#[inline(always)]
pub fn forget(key: ConnKey, info: &ConnInfo) {
    let tk = TlsKey {
        tgid: key.tgid,
        _pad: 0,
        ptr: info.tls_ptr,
    };
    // SAFETY: read-only lookup.
    if unsafe { TLS_CONNS.get(tk) }.is_some_and(|t| t.conn_id == info.conn_id) {
        let _ = TLS_CONNS.remove(tk);
    }
}

#[inline(always)]
fn call_key(tgid: u32, id: u64) -> TlsKey {
    TlsKey {
        tgid,
        _pad: 0,
        ptr: id,
    }
}

#[inline(always)]
fn enter(pid_tgid: u64, id: u64, call: TlsCall) {
    set_active(call.conn);
    let _ = TLS_CALLS.insert(call_key((pid_tgid >> 32) as u32, id), call, 0);
}

/// Take back what the entry saved; forget a match request no syscall answered (the library had the
/// bytes buffered already), so it cannot pair with another goroutine's syscall later.
#[inline(always)]
fn leave(pid_tgid: u64, id: u64, keep_pending: bool) -> Option<TlsCall> {
    let key = call_key((pid_tgid >> 32) as u32, id);
    // SAFETY: plain value copied out before removal.
    let call = unsafe { TLS_CALLS.get(key) }.copied()?;
    let _ = TLS_CALLS.remove(key);
    if !keep_pending {
        let slot = thread_slot(false);
        // SAFETY: the current thread's own slot, valid for this program run.
        if !slot.is_null() && unsafe { (*slot).tls_active } == call.conn {
            // SAFETY: as above.
            unsafe { (*slot).tls_active = 0 };
        }
    }
    Some(call)
}

/// `n` plaintext bytes at `call.buf` moved through the TLS object `call.conn`.
#[inline(always)]
fn emit_plain(pid_tgid: u64, call: &TlsCall, n: u64) {
    let tk = TlsKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        ptr: call.conn,
    };
    let tc = match TLS_CONNS.get_ptr_mut(tk) {
        Some(p) => p,
        None => {
            count_drop(DROP_TLS_UNMATCHED);
            return;
        }
    };
    let egress = call.kind == SYS_GO_TLS_WRITE || call.kind == SYS_SSL_WRITE;
    // SAFETY: a map value pointer valid for this program's run; calls on one TLS object are
    // serialised by the library (Go: the Conn's in/out mutexes; OpenSSL: one SSL per thread).
    let (conn_id, fd, pos) = unsafe {
        let pos = if egress { (*tc).tx_pos } else { (*tc).rx_pos };
        if egress {
            (*tc).tx_pos = pos + n;
        } else {
            (*tc).rx_pos = pos + n;
        }
        ((*tc).conn_id, (*tc).fd, pos)
    };
    let c = Call {
        pid_tgid,
        conn_id,
        fd,
        flags: DATA_FLAG_TLS
            | (if egress { DATA_FLAG_EGRESS } else { 0 })
            | (call.kind << DATA_SYSCALL_SHIFT),
        syscall_pos: pos,
        syscall_len: n,
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    emit_buffer(&c, call.buf, n, 0);
}

// ---- Go crypto/tls --------------------------------------------------------------------------

#[inline(always)]
fn go_enter(ctx: &ProbeContext, kind: u32) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !targeted(pid_tgid) {
        return 0;
    }
    let r = regs(ctx);
    let call = TlsCall {
        conn: r.rax,
        buf: r.rbx,
        out_len: 0,
        kind,
        _pad: 0,
    };
    enter(pid_tgid, r.r14, call);
    0
}

/// Entry of `crypto/tls.(*Conn).Read(b []byte) (int, error)`.
#[uprobe]
pub fn go_tls_read_enter(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, SYS_GO_TLS_READ)
}

/// Entry of `crypto/tls.(*Conn).Write(b []byte) (int, error)`.
#[uprobe]
pub fn go_tls_write_enter(ctx: ProbeContext) -> u32 {
    go_enter(&ctx, SYS_GO_TLS_WRITE)
}

/// Entry of `crypto/tls.(*Conn).handshakeContext`: the handshake's first syscall matches the
/// connection to its socket before any plaintext moves (and before its ciphertext is copied).
#[uprobe]
pub fn go_tls_handshake_enter(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !targeted(pid_tgid) {
        return 0;
    }
    set_active(regs(&ctx).rax);
    0
}

/// At each RET of `(*Conn).Read` and `(*Conn).Write`: RAX holds `n`.
#[uprobe]
pub fn go_tls_ret(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !targeted(pid_tgid) {
        return 0;
    }
    let r = regs(&ctx);
    let n = r.rax as i64;
    let call = match leave(pid_tgid, r.r14, false) {
        Some(c) => c,
        None => return 0,
    };
    if n > 0 {
        emit_plain(pid_tgid, &call, n as u64);
    }
    0
}

// ---- OpenSSL -------------------------------------------------------------------------------

#[inline(always)]
fn ssl_enter(ctx: &ProbeContext, kind: u32, ex: bool) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !targeted(pid_tgid) {
        return 0;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let call = TlsCall {
        conn: ssl,
        buf: ctx.arg(1).unwrap_or(0),
        out_len: if ex { ctx.arg(3).unwrap_or(0) } else { 0 },
        kind,
        _pad: 0,
    };
    if kind == SYS_SSL_READ {
        let tk = TlsKey {
            tgid: (pid_tgid >> 32) as u32,
            _pad: 0,
            ptr: ssl,
        };
        // SAFETY: read-only lookups.
        if unsafe { TLS_CONNS.get(tk) }.is_none() {
            let slot = thread_slot(false);
            let last_rx = if slot.is_null() {
                0
            } else {
                // SAFETY: the current thread's own slot, valid for this program run.
                unsafe { (*slot).last_rx }
            };
            if last_rx != 0 {
                // A memory BIO: the ciphertext was read just before, on this thread. A socket BIO
                // corrects this at the syscall inside the call.
                bind(
                    ConnKey {
                        tgid: tk.tgid,
                        fd: last_rx - 1,
                    },
                    ssl,
                );
            }
        }
    }
    enter(pid_tgid, pid_tgid, call);
    0
}

#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, SYS_SSL_READ, false)
}

#[uprobe]
pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, SYS_SSL_READ, true)
}

#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, SYS_SSL_WRITE, false)
}

#[uprobe]
pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, SYS_SSL_WRITE, true)
}

/// Return of any of the four: `SSL_read`/`SSL_write` return the byte count; the `_ex` forms
/// return 1 on success and write the count through their fourth argument.
#[uretprobe]
pub fn ssl_ret(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !targeted(pid_tgid) {
        return 0;
    }
    let r: i64 = ctx.ret();
    // A write through a memory BIO sends its ciphertext after returning: keep its match request
    // for the send that follows.
    // SAFETY: plain value copied out.
    let call = match unsafe { TLS_CALLS.get(call_key((pid_tgid >> 32) as u32, pid_tgid)) } {
        Some(c) => *c,
        None => return 0,
    };
    let call = match leave(pid_tgid, pid_tgid, call.kind == SYS_SSL_WRITE) {
        Some(c) => c,
        None => return 0,
    };
    let n = if call.out_len != 0 {
        if r != 1 {
            return 0;
        }
        // SAFETY: user memory the library just wrote.
        unsafe { bpf_probe_read_user(call.out_len as *const u64) }.unwrap_or(0)
    } else if r > 0 {
        r as u64
    } else {
        0
    };
    if n > 0 {
        emit_plain(pid_tgid, &call, n);
    }
    0
}
