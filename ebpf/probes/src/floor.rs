//! Bench-only programs (`cargo xtask bench-tax --floor`): the least each capture design can cost
//! a process that is not traced. Built into their own object (`infertap-floor`), which only the
//! benchmark loads; the agent never embeds or attaches it.
//!
//! Every program does what an untargeted run of the agent's programs does before it leaves: one
//! `TARGETS` bitmap load for the current process (the map is left empty: nothing is targeted).
//!
//! - `tp_*`: syscall tracepoints on `read`/`write` enter and exit (the design the agent uses, with
//!   nothing past the bitmap: its floor).
//! - `raw_*`: `raw_syscalls/sys_enter`/`sys_exit` raw tracepoints (one program for every syscall).
//! - `btf_*`: the same two as BTF-typed raw tracepoints (`tp_btf`): the program type of fentry
//!   without a trampoline, to tell which of the two a kernel refuses.
//! - `fentry_*`/`fexit_*`: BPF trampolines on `sock_recvmsg`/`sock_sendmsg`, which only socket
//!   I/O reaches (file and pipe `read`/`write` never do).
//! - `lsm_*`: BPF-LSM hooks `socket_recvmsg`/`socket_sendmsg` (called from the same functions,
//!   before the I/O; no exit hook: the bytes moved would need another program).
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fentry, fexit, lsm, map, raw_tracepoint, tracepoint},
    maps::Array,
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, LsmContext, RawTracePointContext,
        TracePointContext,
    },
};
use infertap_common::target_bit;

/// Same layout as the agent's `TARGETS`; left empty.
#[map]
static FLOOR_TARGETS: Array<u64> = Array::with_max_entries(65536, 0);

#[inline(always)]
fn untargeted() -> u32 {
    let (word, bit) = target_bit((bpf_get_current_pid_tgid() >> 32) as u32);
    match FLOOR_TARGETS.get(word) {
        Some(w) if *w & bit != 0 => 1,
        _ => 0,
    }
}

#[tracepoint]
pub fn tp_enter_read(_ctx: TracePointContext) -> u32 {
    untargeted()
}

#[tracepoint]
pub fn tp_exit_read(_ctx: TracePointContext) -> u32 {
    untargeted()
}

#[tracepoint]
pub fn tp_enter_write(_ctx: TracePointContext) -> u32 {
    untargeted()
}

#[tracepoint]
pub fn tp_exit_write(_ctx: TracePointContext) -> u32 {
    untargeted()
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn raw_enter(_ctx: RawTracePointContext) -> i32 {
    untargeted() as i32
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn raw_exit(_ctx: RawTracePointContext) -> i32 {
    untargeted() as i32
}

#[btf_tracepoint(function = "sys_enter")]
pub fn btf_enter(_ctx: BtfTracePointContext) -> i32 {
    untargeted() as i32
}

#[btf_tracepoint(function = "sys_exit")]
pub fn btf_exit(_ctx: BtfTracePointContext) -> i32 {
    untargeted() as i32
}

#[fentry(function = "sock_recvmsg")]
pub fn fentry_recvmsg(_ctx: FEntryContext) -> u32 {
    untargeted()
}

#[fexit(function = "sock_recvmsg")]
pub fn fexit_recvmsg(_ctx: FExitContext) -> u32 {
    untargeted()
}

#[fentry(function = "sock_sendmsg")]
pub fn fentry_sendmsg(_ctx: FEntryContext) -> u32 {
    untargeted()
}

#[fexit(function = "sock_sendmsg")]
pub fn fexit_sendmsg(_ctx: FExitContext) -> u32 {
    untargeted()
}

#[lsm(hook = "socket_recvmsg")]
pub fn lsm_recvmsg(_ctx: LsmContext) -> i32 {
    untargeted();
    0 // allow
}

#[lsm(hook = "socket_sendmsg")]
pub fn lsm_sendmsg(_ctx: LsmContext) -> i32 {
    untargeted();
    0 // allow
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
