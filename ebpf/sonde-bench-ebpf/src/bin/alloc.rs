//! Benchmark-only: programs that do nothing, attached at exactly the probe
//! points and kinds a `sonde alloc` session uses (entry uprobes, one return
//! probe, the `free` probe), so benchmarks can measure the floor: the
//! kernel's cost of the probe hits alone. Loaded by `cargo xtask bench`
//! through xtask/bench-probes, never by the agent.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use sonde_ebpf as _; // Its panic handler: the library holds nothing else.

#[uprobe]
pub fn alloc_noop(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe]
pub fn alloc_noop_return(_ctx: RetProbeContext) -> u32 {
    0
}
