//! Off-CPU profiler hook: tp_btf `sched_switch(preempt, prev, next,
//! prev_state)`, in the profile object so that it shares the sampler's
//! stack maps, DWARF unwinder and Python walk.
//!
//! - **Switch-out** (`prev`, which is still the current task): a user
//!   thread's stack key is built by `profile::stack_key` (user registers
//!   from `bpf_task_pt_regs`, the kernel stack from the tracepoint's call
//!   site) and parked in the global `OFFCPU_PENDING` map under its thread
//!   id, with the time. Kernel threads and the idle task are skipped, and
//!   at most `OFFCPU_CAP_SLOT` stacks are taken per CPU per 1/16 s; the
//!   rest are counted as capped.
//! - **Switch-in** (`next`, read through `task_struct.pid`'s offset from
//!   the kernel's BTF): a parked entry is removed, and a block of at least
//!   `OFFCPU_MIN_BLOCK_SLOT` ns is added to the current generation's counts
//!   under the parked key. The thread may come back on another CPU, which
//!   is why the pending map is global.
//!
//! Every switch costs a few helper calls and one hash lookup; the stack
//! walks run only for the switches the cap lets through.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::bpf_get_current_task,
    },
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use sonde_common::{
    COMM_LEN,
    offcpu::{
        OFFCPU_CAP_SLOT, OFFCPU_CONTROL_ENTRIES, OFFCPU_COUNTERS, OFFCPU_FLAGS_OFF_SLOT,
        OFFCPU_MAX_KEYS, OFFCPU_MAX_PENDING, OFFCPU_MIN_BLOCK_SLOT, OFFCPU_PID_OFF_SLOT,
        OFFCPU_RATE_WINDOW_NS, OffCpuCounter, OffCpuKey, OffCpuPending, OffCpuRate, PF_KTHREAD,
    },
};

use crate::{
    counters::bump,
    profile::{ProfileError, add, announce_new, generation, stack_key},
};

/// Offsets and limits from the agent ([`OFFCPU_PID_OFF_SLOT`], ...).
#[map]
static OFFCPU_CONTROL: Array<u64> = Array::with_max_entries(OFFCPU_CONTROL_ENTRIES, 0);

/// Threads off CPU whose stack was taken, by thread id. LRU: a thread that
/// exits while parked is never switched in again, and its entry must not
/// hold a slot for ever (the agent also prunes entries of dead threads).
#[map]
static OFFCPU_PENDING: LruHashMap<u32, OffCpuPending> =
    LruHashMap::with_max_entries(OFFCPU_MAX_PENDING, 0);

/// Blocked nanoseconds per key, one map per generation like the sampler's.
#[map]
static OFFCPU_COUNTS_0: PerCpuHashMap<OffCpuKey, u64> =
    PerCpuHashMap::with_max_entries(OFFCPU_MAX_KEYS, 0);
#[map]
static OFFCPU_COUNTS_1: PerCpuHashMap<OffCpuKey, u64> =
    PerCpuHashMap::with_max_entries(OFFCPU_MAX_KEYS, 0);

#[map]
static OFFCPU_RATE: PerCpuArray<OffCpuRate> = PerCpuArray::with_max_entries(1, 0);

#[map]
static OFFCPU_COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(OFFCPU_COUNTERS, 0);

#[inline(always)]
fn count(c: OffCpuCounter) {
    bump(&OFFCPU_COUNTERS_MAP, c as u32);
}

#[inline(always)]
fn control(slot: u32) -> u64 {
    OFFCPU_CONTROL.get(slot).copied().unwrap_or(0)
}

/// The u32 at `off` in the task struct at `task`.
#[inline(always)]
fn task_u32(task: u64, off: u64) -> Option<u32> {
    // SAFETY: a fault-safe kernel read of 4 bytes at an offset the agent
    // took from the kernel's BTF for `struct task_struct`.
    unsafe { bpf_probe_read_kernel((task + off) as *const u32) }.ok()
}

/// This CPU's rate state when it may take one more stack in the current
/// window (the caller then counts it with [`take`]).
#[inline(always)]
fn within_rate(now: u64) -> Option<&'static mut OffCpuRate> {
    let cap = control(OFFCPU_CAP_SLOT);
    let r = OFFCPU_RATE.get_ptr_mut(0)?;
    // SAFETY: this CPU's own slot; sched_switch programs do not nest on
    // one CPU (they run with interrupts off).
    let r = unsafe { &mut *r };
    if now.wrapping_sub(r.window_start) >= OFFCPU_RATE_WINDOW_NS {
        r.window_start = now;
        r.taken = 0;
    }
    (r.taken < cap).then_some(r)
}

/// The incoming thread: account its block if it was parked.
#[inline(always)]
fn switch_in(next: u64, pid_off: u64, now: u64) {
    let Some(tid) = task_u32(next, pid_off) else {
        count(OffCpuCounter::TaskRead);
        return;
    };
    if tid == 0 {
        return;
    }
    let Some(p) = OFFCPU_PENDING.get_ptr(tid) else {
        return;
    };
    // SAFETY: a successful lookup's value, valid for this program run;
    // only this thread's own switches write its entry, and it is not
    // running anywhere else while it is being switched in here.
    let p = unsafe { *p };
    let blocked = now.wrapping_sub(p.since_ns());
    if blocked < control(OFFCPU_MIN_BLOCK_SLOT) || blocked > i64::MAX as u64 {
        count(OffCpuCounter::Short);
    } else {
        let counts = if generation() == 0 {
            &OFFCPU_COUNTS_0
        } else {
            &OFFCPU_COUNTS_1
        };
        match add(counts, &p.key, blocked) {
            Ok(()) => count(OffCpuCounter::Counted),
            Err(ProfileError::CountsFull) => count(OffCpuCounter::CountsFull),
        }
    }
    // Only now: the agent keeps a parked key's stacks while the entry or
    // a count names them, and looks at the entries first.
    let _ = OFFCPU_PENDING.remove(tid);
}

/// The outgoing thread (the current task): park its stack key.
#[inline(always)]
fn switch_out(ctx: &BtfTracePointContext, now: u64) {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if tgid == 0 {
        return;
    }
    // The cap first: past it (a switch-heavy CPU) nothing else is read.
    let Some(rate) = within_rate(now) else {
        count(OffCpuCounter::Capped);
        return;
    };
    // SAFETY: the helper returns the current task's address, used only as
    // the base of a fault-safe read.
    let task = unsafe { bpf_get_current_task() };
    match task_u32(task, control(OFFCPU_FLAGS_OFF_SLOT)) {
        Some(flags) if flags & PF_KTHREAD != 0 => return,
        Some(_) => {}
        None => {
            count(OffCpuCounter::TaskRead);
            return;
        }
    }
    rate.taken += 1;
    count(OffCpuCounter::Taken);
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    announce_new(tgid, &comm);
    let generation = generation();
    let stack = stack_key(
        ctx,
        crate::unwind::task_user_regs,
        false,
        tgid,
        comm,
        generation,
    );
    let pending = OffCpuPending {
        key: OffCpuKey {
            stack,
            stack_gen: generation,
        },
        since: [now as u32, (now >> 32) as u32],
    };
    if OFFCPU_PENDING.insert(tid, pending, 0).is_err() {
        count(OffCpuCounter::PendingFull);
    }
}

/// One context switch. Entry points call this.
#[inline(always)]
pub fn try_switch(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let pid_off = control(OFFCPU_PID_OFF_SLOT);
    if pid_off == 0 {
        // The agent has not configured (or has turned off) off-CPU.
        return Ok(());
    }
    // SAFETY: the helper takes no arguments and only reads the clock.
    let now = unsafe { bpf_ktime_get_ns() };
    // Argument 2 of sched_switch is `struct task_struct *next`. Read as
    // a plain number: the verifier refuses arithmetic with a run-time
    // offset (from BTF, in a map) on the typed pointer `ctx.arg` gives.
    // SAFETY: a fault-safe kernel read of the third u64 of the context
    // (the tracepoint's argument array).
    let next = unsafe { bpf_probe_read_kernel((ctx.as_ptr() as *const u64).wrapping_add(2)) };
    match next {
        Ok(next) => switch_in(next, pid_off, now),
        Err(_) => count(OffCpuCounter::TaskRead),
    }
    switch_out(ctx, now);
    Ok(())
}
