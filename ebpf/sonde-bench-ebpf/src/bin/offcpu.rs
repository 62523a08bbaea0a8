//! Benchmark-only: an empty program on the off-CPU profiler's hook (tp_btf
//! `sched_switch`), the floor of that hook: what any off-CPU profiler on it
//! pays per context switch before doing work. Loaded by `cargo xtask bench`
//! through xtask/bench-probes, never by the agent.
#![no_std]
#![no_main]

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use sonde_ebpf as _; // Its panic handler: the library holds nothing else.

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct
/// *next, unsigned int prev_state)`.
#[btf_tracepoint(function = "sched_switch")]
pub fn offcpu_floor(_ctx: BtfTracePointContext) -> i32 {
    0
}
