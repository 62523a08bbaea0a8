//! Per-CPU self-telemetry counters: every drop or failure in a program is
//! counted in a per-CPU array slot that the agent sums and exports.

use aya_ebpf::maps::PerCpuArray;

/// Adds one to slot `idx` of `map`. Per-CPU slots need no atomics.
#[inline(always)]
pub fn bump(map: &PerCpuArray<u64>, idx: u32) {
    if let Some(slot) = map.get_ptr_mut(idx) {
        // SAFETY: the pointer comes from a successful map lookup, so it points
        // at this CPU's 8-byte slot, which no other CPU writes, and programs do
        // not preempt each other on one CPU for these program types.
        unsafe { *slot += 1 };
    }
}

/// Adds `n` to slot `idx` of `map` (a drop of several counted events).
#[inline(always)]
pub fn bump_by(map: &PerCpuArray<u64>, idx: u32, n: u64) {
    if let Some(slot) = map.get_ptr_mut(idx) {
        // SAFETY: as in `bump`.
        unsafe { *slot += n };
    }
}
