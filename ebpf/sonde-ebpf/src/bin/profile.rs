//! The CPU profiler's object: one `perf_event` program the agent attaches to
//! a `cpu-clock` event on every online CPU.
#![no_std]
#![no_main]

#[allow(dead_code)]
#[path = "../counters.rs"]
mod counters;
#[allow(dead_code)]
#[path = "../profile.rs"]
mod profile;
#[allow(dead_code)]
#[path = "../python.rs"]
mod python;
#[allow(dead_code)]
#[path = "../unwind.rs"]
mod unwind;

use aya_ebpf::{macros::perf_event, programs::PerfEventContext};
use sonde_ebpf as _; // Its panic handler: the library holds nothing else.

#[perf_event]
pub fn profile_cpu(ctx: PerfEventContext) -> u32 {
    crate::profile::sample(&ctx)
}
