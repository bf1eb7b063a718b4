//! Copying the bytes a syscall moved into bounded data records.
//!
//! Every length handed to a helper is masked with `CHUNK_MAX - 1`, so the verifier can prove it
//! in bounds. Each record carries its stream position: userspace turns anything missing (a record
//! the ring buffer refused, the middle of a large buffer, iovecs past `IOVECS_TRACED`) into an
//! exact gap.

use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf};
use infertap_common::*;

use crate::maps::*;

#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

/// Header fields shared by every record of one syscall (or TLS call).
pub(crate) struct Call {
    pub(crate) pid_tgid: u64,
    pub(crate) conn_id: u64,
    pub(crate) fd: u32,
    pub(crate) flags: u32,
    pub(crate) syscall_pos: u64,
    pub(crate) syscall_len: u64,
    pub(crate) ts_ns: u64,
}

/// `n` bytes moved by a syscall on the traced socket whose `SOCKETS` value is `info`.
#[inline(always)]
///
/// `SHAPE` is the program's (`SHAPE_BUF`, `SHAPE_IOV`, `SHAPE_MSG`), a constant: each program
/// carries, and the verifier explores, only its own path.
pub fn emit<const SHAPE: u32>(pid_tgid: u64, call: &ActiveCall, n: u64, info: *mut ConnInfo) {
    let egress = call.kind >= SYS_WRITE;
    // SAFETY: a map value pointer valid for this program's run. Two threads moving bytes on one
    // socket at once is a race in the application too; the position then only drifts.
    let (conn_id, pos) = unsafe {
        let pos = if egress {
            (*info).tx_pos
        } else {
            (*info).rx_pos
        };
        if egress {
            (*info).tx_pos = pos + n;
        } else {
            (*info).rx_pos = pos + n;
        }
        ((*info).conn_id, pos)
    };
    // SAFETY: as above.
    let conn_flags = unsafe { (*info).flags };
    if conn_flags & CONN_FLAG_TLS != 0 {
        return; // ciphertext: its plaintext comes from the TLS uprobes (`tls.rs`)
    }
    let after_loss = conn_flags & CONN_FLAG_LOST != 0;
    let c = Call {
        pid_tgid,
        conn_id,
        fd: call.fd,
        flags: (if egress { DATA_FLAG_EGRESS } else { 0 })
            | (if after_loss { DATA_FLAG_AFTER_LOSS } else { 0 })
            | (call.kind << DATA_SYSCALL_SHIFT),
        syscall_pos: pos,
        syscall_len: n,
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    // Whether every record of this syscall got through: the per-CPU count of refused data
    // records does not move (a program run stays on its CPU, and syscall tracepoints do not
    // nest). Read around the emission rather than carried through its loops, which would
    // double the states the verifier explores at every chunk.
    let refused_before = drops_of(DROP_RINGBUF_DATA);
    match SHAPE {
        SHAPE_BUF => emit_buffer(&c, call.ptr, n, 0),
        SHAPE_IOV => emit_iovecs(&c, call.ptr, call.len, n),
        SHAPE_MSG => {
            // struct msghdr (user ABI): msg_iov at 16, msg_iovlen at 24.
            // SAFETY: the helper copies from user memory and fails with an error on a bad address.
            let iov = unsafe { bpf_probe_read_user((call.ptr + 16) as *const u64) }.unwrap_or(0);
            // SAFETY: the helper copies from user memory and fails with an error on a bad address.
            let cnt = unsafe { bpf_probe_read_user((call.ptr + 24) as *const u64) }.unwrap_or(0);
            emit_iovecs(&c, iov, cnt, n)
        }
        _ => {}
    }
    let delivered = drops_of(DROP_RINGBUF_DATA) == refused_before;
    let dir_lost = if egress {
        CONN_FLAG_LOST_TX
    } else {
        CONN_FLAG_LOST_RX
    };
    // SAFETY: as above. `CONN_FLAG_LOST` stays set until a record after the loss got through;
    // the direction's bit until a record of that direction did (its position shows the gap).
    unsafe {
        if !delivered {
            (*info).flags |= CONN_FLAG_LOST | dir_lost;
        } else if conn_flags & (CONN_FLAG_LOST | dir_lost) != 0 {
            (*info).flags &= !(CONN_FLAG_LOST | dir_lost);
        }
    }
}

/// The peer closed its side: a payload-less record at the current ingress position.
#[inline(always)]
pub fn emit_eof(pid_tgid: u64, call: &ActiveCall, info: &ConnInfo) {
    let rec = DataRecord {
        header: RecordHeader {
            kind: RECORD_DATA,
            tgid: (pid_tgid >> 32) as u32,
            // SAFETY: bpf_ktime_get_ns has no preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        conn_id: info.conn_id,
        stream_pos: info.rx_pos,
        syscall_pos: info.rx_pos,
        syscall_len: 0,
        fd: call.fd,
        tid: pid_tgid as u32,
        len: 0,
        // Bytes read before the end and refused: the end's position is the only one to show it.
        flags: DATA_FLAG_EOF
            | DATA_FLAG_LAST
            | (call.kind << DATA_SYSCALL_SHIFT)
            | if info.flags & (CONN_FLAG_LOST_RX | CONN_FLAG_TLS) == CONN_FLAG_LOST_RX {
                DATA_FLAG_AFTER_LOSS
            } else {
                0
            },
    };
    if EVENTS.output::<DataRecord>(&rec, wakeup_flags()).is_err() {
        count_drop(DROP_RINGBUF_CONTROL);
    }
}

/// A contiguous buffer: up to `HEAD_CHUNKS_PER_BUFFER` chunks from its start, then its tail.
///
/// Each chunk's offset is computed from the loop index, never accumulated, so that the verifier
/// sees the same state at every iteration and can prune instead of exploring 2^n paths.
#[inline(always)]
pub(crate) fn emit_buffer(c: &Call, src: u64, total: u64, base: u64) {
    const MAX: u64 = CHUNK_PAYLOAD_MAX as u64;
    // Full chunks take the largest size class and nothing else, so that the verifier explores
    // one reservation per iteration; the one partial chunk picks its class after the loop.
    for i in 0..HEAD_CHUNKS_PER_BUFFER as u64 {
        let off = i * MAX;
        if off + MAX > total {
            break;
        }
        emit_full(c, src + off, base + off, off + MAX == total);
    }
    let head = HEAD_CHUNKS_PER_BUFFER as u64 * MAX;
    if total <= head {
        let whole = total - total % MAX;
        if whole < total {
            emit_chunk(c, src + whole, total - whole, base + whole, true);
        }
    } else if total - head >= MAX {
        // Past the head: the tail (a gap between them unless the buffer is whole with it).
        let at = total - MAX;
        emit_full(c, src + at, base + at, true);
    } else {
        emit_chunk(c, src + head, total - head, base + head, true);
    }
}

/// A chunk of exactly `CHUNK_PAYLOAD_MAX` bytes.
#[inline(never)]
fn emit_full(c: &Call, src: u64, offset: u64, last: bool) {
    if !emit_in::<CHUNK_MAX>(c, src, CHUNK_PAYLOAD_MAX as u64, offset, last) {
        count_drop(DROP_RINGBUF_DATA);
    }
}

/// An iovec array: the first chunk of each of the first `IOVECS_TRACED` iovecs.
#[inline(always)]
fn emit_iovecs(c: &Call, iov: u64, count: u64, total: u64) {
    let mut off: u64 = 0;
    for i in 0..IOVECS_TRACED as u64 {
        if i >= count || off >= total {
            return;
        }
        // SAFETY: the helper copies from user memory and fails with an error on a bad address.
        let v = match unsafe { bpf_probe_read_user((iov + i * 16) as *const IoVec) } {
            Ok(v) => v,
            Err(_) => {
                count_drop(DROP_READ_USER);
                return;
            }
        };
        let take = min(v.len, total - off);
        let len = min(take, CHUNK_PAYLOAD_MAX as u64);
        if len > 0 {
            emit_iovec_chunk(c, v.base, len, off, off + take >= total);
        }
        off += take;
    }
}

#[inline(always)]
fn min(a: u64, b: u64) -> u64 {
    if a < b {
        a
    } else {
        b
    }
}

/// One record: `len` bytes from `src`, at `offset` within the syscall's bytes.
///
/// Built in place in a ring buffer reservation: no scratch buffer (which a program preempted on
/// its CPU by another could share), no second copy. A reservation's size must be a constant, so
/// the record takes the smallest of a few size classes that holds its payload; the ring buffer
/// carries the slack, which userspace skips (a data record says its payload length).
#[inline(never)]
fn emit_chunk(c: &Call, src: u64, len: u64, offset: u64, last: bool) {
    let len = len & (CHUNK_MAX as u64 - 1);
    let delivered = if len < 256 {
        emit_in::<256>(c, src, len, offset, last)
    } else if len < 1024 {
        emit_in::<1024>(c, src, len, offset, last)
    } else if len < 4096 {
        emit_in::<4096>(c, src, len, offset, last)
    } else {
        emit_in::<CHUNK_MAX>(c, src, len, offset, last)
    };
    if !delivered {
        count_drop(DROP_RINGBUF_DATA);
    }
}

/// One iovec's chunk, in one of three size classes only: the verifier explores the choice for
/// each of the `IOVECS_TRACED` iovecs, and its time grows far faster than the classes (two: ~1
/// s of CPU at load; four: ~11 s). An iovec of a few hundred bytes — a server's head, a small
/// body — takes 576 bytes of the ring, not 4 KiB.
#[inline(never)]
fn emit_iovec_chunk(c: &Call, src: u64, len: u64, offset: u64, last: bool) {
    let len = len & (CHUNK_MAX as u64 - 1);
    let delivered = if len < 512 {
        emit_in::<512>(c, src, len, offset, last)
    } else if len < 4096 {
        emit_in::<4096>(c, src, len, offset, last)
    } else {
        emit_in::<CHUNK_MAX>(c, src, len, offset, last)
    };
    if !delivered {
        count_drop(DROP_RINGBUF_DATA);
    }
}

/// A data record with room for fewer than `N` payload bytes (`N` a power of two).
#[repr(C)]
struct DataEvent<const N: usize> {
    record: DataRecord,
    payload: [u8; N],
}

/// `emit_chunk` in the size class `N` (`len < N`); whether the ring buffer took the record.
#[inline(always)]
fn emit_in<const N: usize>(c: &Call, src: u64, len: u64, offset: u64, last: bool) -> bool {
    let Some(mut entry) = EVENTS.reserve::<DataEvent<N>>(0) else {
        return false;
    };
    let ev = entry.as_mut_ptr();
    // Read back through a volatile load, so that the compiler cannot drop the mask as redundant
    // with its own knowledge of `len`: the verifier needs to see the bound here.
    // SAFETY: a read of a local.
    let len = (unsafe { core::ptr::read_volatile(&len) } as usize) & (N - 1);
    // SAFETY: `ev` is this program's reservation, `size_of::<DataEvent<N>>()` bytes, submitted
    // below; `len` < N.
    unsafe {
        let r = &mut (*ev).record;
        r.header = RecordHeader {
            kind: RECORD_DATA,
            tgid: (c.pid_tgid >> 32) as u32,
            ts_ns: c.ts_ns,
        };
        r.conn_id = c.conn_id;
        r.stream_pos = c.syscall_pos + offset;
        r.syscall_pos = c.syscall_pos;
        r.syscall_len = c.syscall_len;
        r.fd = c.fd;
        r.tid = c.pid_tgid as u32;
        r.len = len as u32;
        r.flags = c.flags | if last { DATA_FLAG_LAST } else { 0 };
        let payload = &mut (*ev).payload;
        if bpf_probe_read_user_buf(src as *const u8, &mut payload[..len]).is_err() {
            count_drop(DROP_READ_USER);
            r.len = 0;
        }
    }
    // Large records ask whether enough waits to wake the reader; small ones never do (the
    // reader drains on a short timer), so no ring-fill query per record.
    let flags = if N >= CHUNK_MAX {
        wakeup_flags()
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags);
    true
}
