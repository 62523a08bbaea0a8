//! The syscall collector's object: raw tracepoints `sys_enter`/`sys_exit`,
//! `sched_switch` and `sched_process_exit` (no tracefs, cheapest), with the
//! classic `raw_syscalls` and `sched` tracepoints as a fallback. The agent attaches
//! whichever set loads.
#![no_std]
#![no_main]

#[allow(dead_code)]
#[path = "../counters.rs"]
mod counters;
#[allow(dead_code)]
#[path = "../syscalls.rs"]
mod syscalls;
#[allow(dead_code)]
#[path = "../syscalls_bench.rs"]
mod syscalls_bench;

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use sonde_ebpf as _; // Its panic handler: the library holds nothing else.

use crate::syscalls::{count_error, try_enter, try_exit, try_switch, try_task_exit};

/// `sys_enter(struct pt_regs *regs, long id)`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscalls_enter_raw(ctx: RawTracePointContext) -> i32 {
    count_error(try_enter(ctx.arg::<i64>(1)));
    0
}

/// `sys_exit(struct pt_regs *regs, long ret)`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn syscalls_exit_raw(ctx: RawTracePointContext) -> i32 {
    count_error(try_exit(ctx.arg::<i64>(1)));
    0
}

/// `sched_switch(bool preempt, struct task_struct *prev, ...)`, run while
/// `prev` is still `current`.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn syscalls_switch_raw(_ctx: RawTracePointContext) -> i32 {
    count_error(try_switch());
    0
}

#[tracepoint]
pub fn syscalls_switch_tp(_ctx: TracePointContext) -> u32 {
    count_error(try_switch());
    0
}

/// `sched_process_exit(struct task_struct *p)`, run by the exiting thread:
/// flushes this CPU's call cache before the exit is visible.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn syscalls_task_exit_raw(_ctx: RawTracePointContext) -> i32 {
    count_error(try_task_exit());
    0
}

#[tracepoint]
pub fn syscalls_task_exit_tp(_ctx: TracePointContext) -> u32 {
    count_error(try_task_exit());
    0
}

/// Offsets in the `raw_syscalls:sys_enter`/`sys_exit` records (after the
/// 8-byte common header): `long id` at 8; `long ret` at 16 for sys_exit.
const TP_ID: usize = 8;
const TP_RET: usize = 16;

#[tracepoint]
pub fn syscalls_enter_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset is the `id` field of the raw_syscalls:sys_enter
    // record (stable tracepoint format); read_at copies through a helper.
    if let Ok(id) = unsafe { ctx.read_at::<i64>(TP_ID) } {
        count_error(try_enter(id));
    }
    0
}

#[tracepoint]
pub fn syscalls_exit_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: the `ret` field of the raw_syscalls:sys_exit record.
    if let Ok(ret) = unsafe { ctx.read_at::<i64>(TP_RET) } {
        count_error(try_exit(ret));
    }
    0
}

/// Empty programs on the same hooks: `sonde bench-floor syscalls` attaches
/// them so benchmarks can show what the hook type itself costs (the floor
/// any syscall tracer with this hook pays). The agent never attaches them.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscalls_floor_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn syscalls_floor_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Benchmark-only variants of the hot path (`sonde bench-floor --cycle`):
/// `bench_<parts>_enter`/`_exit` with `pid` = `bpf_get_current_pid_tgid`,
/// `kt` = `bpf_ktime_get_ns` at both ends (`boot`/`tai`: the boot-time and
/// TAI clocks instead), `arr`/`hash`/`cache` = accounting into a
/// per-CPU array / straight into the per-CPU hash / the collector's call
/// cache. The agent never attaches them.
macro_rules! bench_variant {
    ($en:ident, $ex:ident, $id:literal, $kt:literal, $acc:literal) => {
        #[raw_tracepoint(tracepoint = "sys_enter")]
        pub fn $en(ctx: RawTracePointContext) -> i32 {
            crate::syscalls_bench::enter::<$id, $kt>(ctx.arg::<i64>(1));
            0
        }
        #[raw_tracepoint(tracepoint = "sys_exit")]
        pub fn $ex(ctx: RawTracePointContext) -> i32 {
            crate::syscalls_bench::exit::<$id, $kt, $acc>(ctx.arg::<i64>(1));
            0
        }
    };
}
bench_variant!(bench_slot_enter, bench_slot_exit, 0, 0, 0);
bench_variant!(bench_pid_enter, bench_pid_exit, 1, 0, 0);
bench_variant!(bench_kt_enter, bench_kt_exit, 0, 1, 0);
bench_variant!(bench_boot_enter, bench_boot_exit, 0, 2, 0);
bench_variant!(bench_tai_enter, bench_tai_exit, 0, 3, 0);
bench_variant!(bench_pidkt_enter, bench_pidkt_exit, 1, 1, 0);
bench_variant!(bench_pidktarr_enter, bench_pidktarr_exit, 1, 1, 1);
bench_variant!(bench_pidhash_enter, bench_pidhash_exit, 1, 0, 2);
bench_variant!(bench_pidkthash_enter, bench_pidkthash_exit, 1, 1, 2);
bench_variant!(bench_pidktcache_enter, bench_pidktcache_exit, 1, 1, 3);
