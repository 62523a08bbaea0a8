//! The profiler's object: the CPU sampler (a `perf_event` program the agent
//! attaches to a `cpu-clock` event on every online CPU) and the off-CPU
//! `sched_switch` program, which share the stack maps, the unwinder and
//! the Python walk.
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
#[path = "../offcpu.rs"]
mod offcpu;
#[path = "../profile.rs"]
mod profile;
#[allow(dead_code, reason = "the walk uses a few of the ABI helpers")]
#[path = "../python.rs"]
mod python;
#[path = "../route_tag.rs"]
mod route_tag;
#[path = "../task_storage.rs"]
mod task_storage;
#[path = "../unwind.rs"]
mod unwind;

use aya_ebpf::{
    macros::{btf_tracepoint, perf_event},
    programs::{BtfTracePointContext, PerfEventContext},
};
use sonde_ebpf as _; // Its panic handler: the library holds nothing else.

#[perf_event]
pub fn profile_cpu(ctx: PerfEventContext) -> u32 {
    crate::profile::sample(&ctx)
}

#[btf_tracepoint(function = "sched_switch")]
pub fn profile_offcpu(ctx: BtfTracePointContext) -> i32 {
    let _ = crate::offcpu::try_switch(&ctx);
    0
}
