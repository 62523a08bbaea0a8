//! The memory collector's object: a tp_btf `sys_exit` program for mmap,
//! munmap, mremap and brk (per-syscall tracepoints as the fallback), and a
//! perf_event program sampling page faults.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{btf_tracepoint, perf_event, tracepoint},
    programs::{BtfTracePointContext, PerfEventContext, TracePointContext},
};
use sonde_ebpf::memory;

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

/// Empty programs on the same hooks (`collectors.memory.hook = "floor"`):
/// what the hooks alone cost, for the benchmark.
#[btf_tracepoint(function = "sys_exit")]
pub fn mem_floor_sys_exit(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[perf_event]
pub fn mem_floor_fault(_ctx: PerfEventContext) -> u32 {
    0
}
