//! The syscall collector's object: raw tracepoints `sys_enter`/`sys_exit`,
//! `sched_switch` and `sched_process_exit` (no tracefs, cheapest), with the
//! classic `raw_syscalls` and `sched` tracepoints as a fallback. The agent attaches
//! whichever set loads.
#![no_std]
#![no_main]

#[allow(
    dead_code,
    reason = "shared by every object; each uses a few of these facts"
)]
#[path = "../arch/mod.rs"]
mod arch;
#[path = "../counters.rs"]
mod counters;
#[path = "../syscalls.rs"]
mod syscalls;

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use sonde_ebpf as _; // Its panic handler: the library holds nothing else.

use crate::syscalls::{count_error, try_enter, try_exit, try_switch, try_task_exit};

/// `sys_enter(struct pt_regs *regs, long id)`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscalls_enter_raw(ctx: RawTracePointContext) -> i32 {
    count_error(try_enter(ctx.arg::<i64>(1)));
    0
}

/// `sys_exit(struct pt_regs *regs, long ret)`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn syscalls_exit_raw(ctx: RawTracePointContext) -> i32 {
    count_error(try_exit(ctx.arg::<i64>(1)));
    0
}

/// `sched_switch(bool preempt, struct task_struct *prev, ...)`, run while
/// `prev` is still `current`.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn syscalls_switch_raw(_ctx: RawTracePointContext) -> i32 {
    count_error(try_switch());
    0
}

#[tracepoint]
pub fn syscalls_switch_tp(_ctx: TracePointContext) -> u32 {
    count_error(try_switch());
    0
}

/// `sched_process_exit(struct task_struct *p)`, run by the exiting thread:
/// flushes this CPU's call cache before the exit is visible.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn syscalls_task_exit_raw(_ctx: RawTracePointContext) -> i32 {
    count_error(try_task_exit());
    0
}

#[tracepoint]
pub fn syscalls_task_exit_tp(_ctx: TracePointContext) -> u32 {
    count_error(try_task_exit());
    0
}

/// Offsets in the `raw_syscalls:sys_enter`/`sys_exit` records (after the
/// 8-byte common header): `long id` at 8; `long ret` at 16 for sys_exit.
const TP_ID: usize = 8;
const TP_RET: usize = 16;

#[tracepoint]
pub fn syscalls_enter_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset is the `id` field of the raw_syscalls:sys_enter
    // record (stable tracepoint format); read_at copies through a helper.
    if let Ok(id) = unsafe { ctx.read_at::<i64>(TP_ID) } {
        count_error(try_enter(id));
    }
    0
}

#[tracepoint]
pub fn syscalls_exit_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: the `ret` field of the raw_syscalls:sys_exit record.
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(TP_RET) } {
        count_error(try_exit(ret));
    }
    0
}
