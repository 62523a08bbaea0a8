//! The memory collector's object: tp_btf programs on the mmap lock for
//! mmap, munmap, mremap and brk (a tp_btf `sys_exit` program, then
//! per-syscall tracepoints, as fallbacks) and on `page_fault_user` for
//! sampled faults (a perf_event program as the fallback); rows with a stack
//! of a marked CPython process also carry its Python stack (python.rs).
#![no_std]
#![no_main]

#[allow(
    dead_code,
    reason = "shared by every object; each uses a few of these facts"
)]
#[path = "../arch/mod.rs"]
mod arch;
#[allow(dead_code, reason = "shared by every object; not all use `bump_by`")]
#[path = "../counters.rs"]
mod counters;
#[path = "../memory.rs"]
mod memory;
#[allow(dead_code, reason = "the walk uses a few of the ABI helpers")]
#[path = "../python.rs"]
mod python;

use aya_ebpf::{
    macros::{btf_tracepoint, perf_event, tracepoint},
    programs::{BtfTracePointContext, PerfEventContext, TracePointContext},
};
use sonde_ebpf as _; // Its panic handler: the library holds nothing else.

#[btf_tracepoint(function = "mmap_lock_acquire_returned")]
pub fn mem_lock_acquired(ctx: BtfTracePointContext) -> u32 {
    memory::lock_acquired(&ctx)
}

#[btf_tracepoint(function = "mmap_lock_released")]
pub fn mem_lock_released(ctx: BtfTracePointContext) -> u32 {
    memory::lock_released(&ctx)
}

#[btf_tracepoint(function = "page_fault_user")]
pub fn mem_fault_btf(ctx: BtfTracePointContext) -> u32 {
    memory::fault_tick(&ctx)
}

/// `sys_exit(struct pt_regs *regs, long ret)`.
#[btf_tracepoint(function = "sys_exit")]
pub fn mem_sys_exit(ctx: BtfTracePointContext) -> u32 {
    memory::sys_exit(&ctx)
}

#[tracepoint]
pub fn mem_mmap(ctx: TracePointContext) -> u32 {
    memory::mmap(&ctx)
}

#[tracepoint]
pub fn mem_munmap(ctx: TracePointContext) -> u32 {
    memory::munmap(&ctx)
}

#[tracepoint]
pub fn mem_mremap(ctx: TracePointContext) -> u32 {
    memory::mremap(&ctx)
}

#[tracepoint]
pub fn mem_brk(ctx: TracePointContext) -> u32 {
    memory::brk(&ctx)
}

#[perf_event]
pub fn mem_fault(ctx: PerfEventContext) -> u32 {
    memory::fault_sample(&ctx)
}
