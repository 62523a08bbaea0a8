//! Benchmark-only variants of the syscall hot path, to measure what each
//! part of it costs (`sonde-bench-probes cycle`, see `docs/benchmarks.md`).
//! The agent never attaches them. Each variant is an enter/exit pair built
//! from the same steps as [`crate::syscalls`], with one part left out:
//! - `ID`: 0 no thread id, 1 `bpf_get_current_pid_tgid`;
//! - `KT`: the clock read at both ends: 0 a constant, 1 `bpf_ktime_get_ns`,
//!   2 `bpf_ktime_get_boot_ns`, 3 `bpf_ktime_get_tai_ns`
//!   (`bpf_ktime_get_coarse_ns`, jiffy resolution, is not even allowed in
//!   raw tracepoint programs: the verifier rejects it);
//! - `ACC`: 0 no accounting, 1 into a per-CPU array indexed by syscall nr
//!   (inlined lookup), 2 straight into the real per-CPU hash (what the
//!   collector did before its call cache), 3 the collector's `account`
//!   (per-CPU call cache, flushed to the hash).

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_ktime_get_ns, bpf_ktime_get_tai_ns,
    },
    macros::map,
    maps::PerCpuArray,
};
use sonde_common::syscalls::{MAX_SYSCALL_NR, SyscallKey, SyscallStats};

/// The in-flight slot as the collector kept it before it stopped reading
/// the thread id on the hot path.
#[repr(C)]
pub struct BenchSlot {
    ts: u64,
    tid: u32,
    tgid: u32,
    nr: u32,
    _pad: u32,
}

#[map]
static BENCH_SLOT: PerCpuArray<BenchSlot> = PerCpuArray::with_max_entries(1, 0);

#[map]
static BENCH_ACC: PerCpuArray<SyscallStats> = PerCpuArray::with_max_entries(MAX_SYSCALL_NR, 0);

#[inline(always)]
fn id<const ID: u8>() -> u64 {
    if ID == 1 {
        bpf_get_current_pid_tgid()
    } else {
        1
    }
}

#[inline(always)]
fn clock<const KT: u8>(constant: u64) -> u64 {
    // SAFETY: helpers with no arguments, allowed in tracing programs.
    unsafe {
        match KT {
            1 => bpf_ktime_get_ns(),
            2 => bpf_ktime_get_boot_ns(),
            3 => bpf_ktime_get_tai_ns(),
            _ => constant,
        }
    }
}

#[inline(always)]
pub fn enter<const ID: u8, const KT: u8>(nr: i64) {
    let Some(slot) = BENCH_SLOT.get_ptr_mut(0) else {
        return;
    };
    let id = id::<ID>();
    let ts = clock::<KT>(1);
    // SAFETY: this CPU's slot from a successful lookup; programs on one CPU
    // do not preempt each other.
    unsafe {
        *slot = BenchSlot {
            ts,
            tid: id as u32,
            tgid: (id >> 32) as u32,
            nr: nr as u32,
            _pad: 0,
        };
    }
}

#[inline(always)]
pub fn exit<const ID: u8, const KT: u8, const ACC: u8>(ret: i64) {
    let id = id::<ID>();
    let Some(slot) = BENCH_SLOT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `enter`.
    let s = unsafe { &mut *slot };
    if s.tid != id as u32 || s.ts == 0 {
        return;
    }
    let (start, nr) = (s.ts, s.nr);
    s.ts = 0;
    let now = clock::<KT>(300);
    let ns = now.wrapping_sub(start);
    match ACC {
        1 => {
            if let Some(p) = BENCH_ACC.get_ptr_mut(nr) {
                // SAFETY: this CPU's value from a successful lookup.
                crate::syscalls::add_call(unsafe { &mut *p }, ns, ret);
            }
        }
        2 => {
            let key = SyscallKey { tgid: s.tgid, nr };
            if let Ok(p) = crate::syscalls::stats_of(key) {
                // SAFETY: this CPU's value from a successful lookup.
                crate::syscalls::add_call(unsafe { &mut *p }, ns, ret);
            }
        }
        3 => {
            crate::syscalls::account(s.tgid, nr, ns, ret, now);
        }
        _ => {}
    }
}
