//! Benchmark-only programs on the syscall collector's hooks (raw
//! tracepoints `sys_enter`/`sys_exit`), loaded by `cargo xtask bench`
//! through xtask/bench-probes, never by the agent:
//! - `syscalls_floor_enter`/`_exit`: empty, the floor of the hook type (what
//!   any syscall tracer on it pays before doing work);
//! - `bench_<parts>_enter`/`_exit`: the hot path part by part (see
//!   `syscalls_bench.rs`);
//! - the collector's own programs, built from the same source as the
//!   agent's object, so a part-by-part cycle can compare them in one run.
#![no_std]
#![no_main]

#[allow(
    dead_code,
    reason = "shared by every object; each uses a few of these facts"
)]
#[path = "../../../sonde-ebpf/src/arch/mod.rs"]
mod arch;
#[path = "../../../sonde-ebpf/src/counters.rs"]
mod counters;
#[path = "../../../sonde-ebpf/src/syscalls.rs"]
mod syscalls;
#[path = "../syscalls_bench.rs"]
mod syscalls_bench;

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
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

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn syscalls_switch_raw(_ctx: RawTracePointContext) -> i32 {
    count_error(try_switch());
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn syscalls_task_exit_raw(_ctx: RawTracePointContext) -> i32 {
    count_error(try_task_exit());
    0
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscalls_floor_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn syscalls_floor_exit(_ctx: RawTracePointContext) -> i32 {
    0
}

/// `bench_<parts>_enter`/`_exit` with `pid` = `bpf_get_current_pid_tgid`,
/// `kt` = `bpf_ktime_get_ns` at both ends (`boot`/`tai`: the boot-time and
/// TAI clocks instead), `arr`/`hash`/`cache` = accounting into a
/// per-CPU array / straight into the per-CPU hash / the collector's call
/// cache.
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
