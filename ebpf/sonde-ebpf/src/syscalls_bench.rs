//! Benchmark-only variants of the syscall hot path, to measure what each
//! part of it costs (`sonde bench-floor --cycle`, see `docs/benchmarks.md`).
//! The agent never attaches them. Each variant is an enter/exit pair built
//! from the same steps as [`crate::syscalls`], with one part left out:
//! - `ID`: 0 no thread id, 1 `bpf_get_current_pid_tgid`;
//! - `KT`: `bpf_ktime_get_ns` at both ends, or a constant;
//! - `ACC`: 0 no accounting, 1 into a per-CPU array indexed by syscall nr
//!   (inlined lookup), 2 into the real per-CPU hash (the collector's
//!   `account`).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::PerCpuArray,
};
use sonde_common::syscalls::{MAX_SYSCALL_NR, SyscallInflight, SyscallStats};

#[map]
static BENCH_SLOT: PerCpuArray<SyscallInflight> = PerCpuArray::with_max_entries(1, 0);

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
fn clock<const KT: bool>(constant: u64) -> u64 {
    if KT {
        // SAFETY: helper with no arguments, allowed in tracing programs.
        unsafe { bpf_ktime_get_ns() }
    } else {
        constant
    }
}

#[inline(always)]
pub fn enter<const ID: u8, const KT: bool>(nr: i64) {
    let Some(slot) = BENCH_SLOT.get_ptr_mut(0) else {
        return;
    };
    let id = id::<ID>();
    let ts = clock::<KT>(1);
    // SAFETY: this CPU's slot from a successful lookup; programs on one CPU
    // do not preempt each other.
    unsafe {
        *slot = SyscallInflight {
            ts,
            tid: id as u32,
            tgid: (id >> 32) as u32,
            nr: nr as u32,
            _pad: 0,
        };
    }
}

#[inline(always)]
pub fn exit<const ID: u8, const KT: bool, const ACC: u8>(ret: i64) {
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
    let ns = clock::<KT>(300).wrapping_sub(start);
    match ACC {
        1 => {
            if let Some(p) = BENCH_ACC.get_ptr_mut(nr) {
                // SAFETY: this CPU's value from a successful lookup.
                crate::syscalls::add_call(unsafe { &mut *p }, ns, ret);
            }
        }
        2 => {
            let _ = crate::syscalls::account(s.tgid, nr, ns, ret);
        }
        _ => {}
    }
}
