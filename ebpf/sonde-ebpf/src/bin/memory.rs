//! The memory collector's object: syscall tracepoints for mmap, munmap,
//! mremap and brk, and a perf_event program sampling page faults.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{perf_event, tracepoint},
    programs::{PerfEventContext, TracePointContext},
};
use sonde_ebpf::memory;

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
