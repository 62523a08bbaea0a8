//! Benchmark-only: empty programs on the memory collector's preferred hooks
//! (tp_btf `mmap_lock_acquire_returned`/`mmap_lock_released` and
//! `page_fault_user`), the floor of those hooks. Loaded by `cargo xtask
//! bench` through xtask/bench-probes, never by the agent.
#![no_std]
#![no_main]

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use sonde_ebpf as _; // Its panic handler: the library holds nothing else.

#[btf_tracepoint(function = "mmap_lock_acquire_returned")]
pub fn mem_floor_lock_acquired(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "mmap_lock_released")]
pub fn mem_floor_lock_released(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "page_fault_user")]
pub fn mem_floor_fault_btf(_ctx: BtfTracePointContext) -> u32 {
    0
}
