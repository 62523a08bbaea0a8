//! The CPU profiler's object: one `perf_event` program the agent attaches to
//! a `cpu-clock` event on every online CPU.
#![no_std]
#![no_main]

use aya_ebpf::{macros::perf_event, programs::PerfEventContext};

#[perf_event]
pub fn profile_cpu(ctx: PerfEventContext) -> u32 {
    sonde_ebpf::profile::sample(&ctx)
}
