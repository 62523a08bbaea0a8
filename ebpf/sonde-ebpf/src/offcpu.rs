//! Off-CPU profiler hook: tp_btf `sched_switch(preempt, prev, next,
//! prev_state)`, in the profile object so that it shares the sampler's
//! stack maps, DWARF unwinder and Python walk.
//!
//! Every context switch of the host runs it, so the common case must cost
//! next to nothing above the hook itself:
//! - **Switch-in** (`next`): one task-local storage lookup on `next`
//!   (`OFFCPU_PARKED`, no hashing, no pid read, no clock read); threads
//!   with nothing parked stop there. A parked block is added, if it lasted
//!   at least `OFFCPU_MIN_BLOCK_SLOT` ns, to the current generation's
//!   counts under its stack key. The thread may come back on another CPU:
//!   task-local storage follows the thread, not the CPU. A block parked
//!   before the time in `OFFCPU_ON_SLOT` (an earlier on-demand attachment)
//!   is dropped: it began outside this window.
//! - **Switch-out** (`prev`, which is still the current task): the idle
//!   task stops at once, then the per-CPU rate cap (at most
//!   `OFFCPU_CAP_SLOT` stacks per CPU per 1/16 s; the clock is read at
//!   most once per tick) stops switches past it, counted as capped. Kernel threads are
//!   skipped. A user thread within the cap gets its stack key built by
//!   `profile::stack_key` and parked, with the time, in its task-local
//!   storage and in `OFFCPU_PENDING` (a global hash by thread id, the
//!   agent's view: it keeps the stacks parked keys name, and prunes
//!   entries of threads that exited), unless the thread is being thinned
//!   (its blocks keep being short, see [`THIN_AFTER`]): then only the
//!   time is parked.

use aya_ebpf::{
    bindings::task_struct,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_current_task, bpf_get_current_task_btf, bpf_jiffies64},
    },
    macros::{btf_map, map},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use sonde_common::{
    COMM_LEN,
    offcpu::{
        OFFCPU_CAP_SLOT, OFFCPU_CONTROL_ENTRIES, OFFCPU_COUNTERS, OFFCPU_FLAGS_OFF_SLOT,
        OFFCPU_MAX_KEYS, OFFCPU_MAX_PENDING, OFFCPU_MIN_BLOCK_SLOT, OFFCPU_ON_SLOT,
        OFFCPU_RATE_WINDOW_NS, OffCpuCounter, OffCpuKey, OffCpuPending, OffCpuRate, PF_KTHREAD,
    },
};

use crate::{
    counters::bump,
    profile::{ProfileError, add, announce_new, generation, stack_key},
    task_storage::TaskStorage,
};

/// Offsets and limits from the agent ([`OFFCPU_ON_SLOT`], ...).
#[map]
static OFFCPU_CONTROL: Array<u64> = Array::with_max_entries(OFFCPU_CONTROL_ENTRIES, 0);

/// A thread's parked block, in its own task-local storage. Kernel-only:
/// the agent reads the `OFFCPU_PENDING` copy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Parked {
    pending: OffCpuPending,
    /// The thread id the `OFFCPU_PENDING` copy is under.
    tid: u32,
    /// [`WALKED`] while a block with a stack is parked, [`THINNED`] while
    /// one without is, else 0: the value is created once per thread and
    /// reused by its later blocks.
    parked: u32,
    /// Taken blocks in a row that proved short.
    short_streak: u32,
    /// Thinning of a thread that keeps blocking briefly: its stack is
    /// taken on one switch-out in 2^`thin` (0..=[`MAX_THIN`]).
    thin: u32,
    /// Switch-outs passed over since the last taken one.
    skipped: u32,
    /// Thinning starts after [`THIN_AFTER`] << `patience` short blocks in
    /// a row; one more (up to [`MAX_PATIENCE`]) each time a thinned block
    /// proves long, so a thread that alternates bursts of short blocks
    /// with long ones stops being thinned after a few lost blocks.
    patience: u32,
    /// When a thinned block began (`bpf_ktime_get_ns`, low half first).
    thinned_since: [u32; 2],
}

const WALKED: u32 = 1;
const THINNED: u32 = 2;

/// Short blocks are the bulk of context switches (a ping-pong, a lock
/// handed back and forth) and are not counted, so their stack walks were
/// spent for nothing. After [`THIN_AFTER`] taken blocks in a row proved
/// short, a thread's stack is taken on 1 switch-out in 2, then 4, ... up
/// to 2^[`MAX_THIN`]; the others are only timed. The first of those that
/// proves long (a block left out, counted as `thinned_long`) and every
/// taken long block end the thinning, and the former makes the thread
/// more patient (see `patience`). No block is weighted or guessed: what is
/// counted is exact, what is left out is counted.
const THIN_AFTER: u32 = 16;
const MAX_THIN: u32 = 6;
/// 16 << 8: a thread that has lost 8 long blocks to thinning is thinned
/// only after 4096 short blocks in a row.
const MAX_PATIENCE: u32 = 8;

#[btf_map]
static OFFCPU_PARKED: TaskStorage<Parked> = TaskStorage::new();

/// Threads off CPU whose stack was taken, by thread id: the agent's view of
/// the parked keys. LRU: a thread that exits while parked is never switched
/// in again, and its entry must not hold a slot for ever (the agent also
/// prunes entries of dead threads).
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

/// This CPU's rate state when it may take one more stack in the current
/// window (the caller then counts it in `taken`).
#[inline(always)]
fn within_rate() -> Option<&'static mut OffCpuRate> {
    let r = OFFCPU_RATE.get_ptr_mut(0)?;
    // SAFETY: this CPU's own slot; sched_switch programs do not nest on
    // one CPU (they run with interrupts off).
    let r = unsafe { &mut *r };
    // The clock is read once per tick at most: `jiffies` is a plain load,
    // and a window can only have ended on a tick not seen yet. (The coarse
    // clock helper is refused to tracing programs.)
    // SAFETY: the helper takes no arguments and reads `jiffies_64`.
    let tick = unsafe { bpf_jiffies64() };
    if tick != r.last_tick {
        r.last_tick = tick;
        // SAFETY: the helper takes no arguments and only reads the clock.
        let now = unsafe { bpf_ktime_get_ns() };
        if now.wrapping_sub(r.window_start) >= OFFCPU_RATE_WINDOW_NS {
            r.window_start = now;
            r.taken = 0;
        }
    }
    (r.taken < control(OFFCPU_CAP_SLOT)).then_some(r)
}

/// The incoming thread: account its block if one is parked since `on`
/// (the time off-CPU was turned on).
#[inline(always)]
fn switch_in(next: *mut task_struct, on: u64) {
    let Some(p) = OFFCPU_PARKED.get_mut(next) else {
        return;
    };
    let parked = p.parked;
    if parked == 0 {
        return;
    }
    p.parked = 0;
    if parked == THINNED {
        // SAFETY: the helper takes no arguments and only reads the clock.
        let now = unsafe { bpf_ktime_get_ns() };
        let since = p.thinned_since[0] as u64 | (p.thinned_since[1] as u64) << 32;
        if since >= on && now.wrapping_sub(since) >= control(OFFCPU_MIN_BLOCK_SLOT) {
            count(OffCpuCounter::ThinnedLong);
            p.short_streak = 0;
            p.thin = 0;
            if p.patience < MAX_PATIENCE {
                p.patience += 1;
            }
        }
        return;
    }
    if p.pending.since_ns() < on {
        // Parked during an earlier attachment (on demand): the thread
        // blocked before this window began. The agent cleared its
        // `OFFCPU_PENDING` copy when it detached.
        return;
    }
    // SAFETY: the helper takes no arguments and only reads the clock.
    let now = unsafe { bpf_ktime_get_ns() };
    let blocked = now.wrapping_sub(p.pending.since_ns());
    // The agent's copy is gone if it was evicted (a full map): the agent
    // may then have cleared the parked stacks, so the key would name
    // stacks that are no longer there.
    if OFFCPU_PENDING.get_ptr(p.tid).is_none() {
        count(OffCpuCounter::PendingFull);
        return;
    }
    if blocked < control(OFFCPU_MIN_BLOCK_SLOT) || blocked > i64::MAX as u64 {
        count(OffCpuCounter::Short);
        p.short_streak = p.short_streak.saturating_add(1);
        if p.short_streak >= THIN_AFTER << (p.patience & 15) && p.thin < MAX_THIN {
            p.thin += 1;
        }
    } else {
        p.short_streak = 0;
        p.thin = 0;
        let counts = if generation() == 0 {
            &OFFCPU_COUNTS_0
        } else {
            &OFFCPU_COUNTS_1
        };
        match add(counts, &p.pending.key, blocked) {
            Ok(()) => count(OffCpuCounter::Counted),
            Err(ProfileError::CountsFull) => count(OffCpuCounter::CountsFull),
        }
    }
    // Only now: the agent keeps a parked key's stacks while the entry or
    // a count names them, and looks at the entries first.
    let _ = OFFCPU_PENDING.remove(p.tid);
}

/// The outgoing thread (the current task): park its stack key.
#[inline(always)]
fn switch_out(ctx: &BtfTracePointContext) {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if tgid == 0 {
        return;
    }
    // The cap first: past it (a switch-heavy CPU) nothing else is read.
    let Some(rate) = within_rate() else {
        count(OffCpuCounter::Capped);
        return;
    };
    // SAFETY: the helper returns the current task's address, used only as
    // the base of a fault-safe read.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: a fault-safe kernel read of 4 bytes at an offset the agent
    // took from the kernel's BTF for `struct task_struct`.
    let flags =
        unsafe { bpf_probe_read_kernel((task + control(OFFCPU_FLAGS_OFF_SLOT)) as *const u32) };
    match flags {
        Ok(flags) if flags & PF_KTHREAD != 0 => return,
        Ok(_) => {}
        Err(_) => {
            count(OffCpuCounter::TaskRead);
            return;
        }
    }
    // The cap counts the switch-outs looked at (thinned ones too): it
    // bounds this path's cost whatever the threads do.
    rate.taken += 1;
    // SAFETY: the helper takes no arguments and returns the current task
    // as a trusted BTF pointer, which task storage helpers accept.
    let current = unsafe { bpf_get_current_task_btf() };
    let Some(p) = OFFCPU_PARKED.get_or_create(current) else {
        count(OffCpuCounter::PendingFull);
        return;
    };
    if p.thin > 0 {
        p.skipped += 1;
        if p.skipped < 1 << (p.thin & 7) {
            // SAFETY: the helper takes no arguments and only reads the clock.
            let now = unsafe { bpf_ktime_get_ns() };
            p.thinned_since = [now as u32, (now >> 32) as u32];
            p.parked = THINNED;
            count(OffCpuCounter::Thinned);
            return;
        }
    }
    p.skipped = 0;
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
    // SAFETY: the helper takes no arguments and only reads the clock.
    let now = unsafe { bpf_ktime_get_ns() };
    let pending = OffCpuPending {
        key: OffCpuKey {
            stack,
            stack_gen: generation,
        },
        since: [now as u32, (now >> 32) as u32],
    };
    // The agent's copy first: the switch-in accounts a block only while
    // it is there.
    if OFFCPU_PENDING.insert(tid, pending, 0).is_err() {
        count(OffCpuCounter::PendingFull);
        return;
    }
    p.pending = pending;
    p.tid = tid;
    p.parked = WALKED;
}

/// One context switch. Entry points call this.
#[inline(always)]
pub fn try_switch(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let on = control(OFFCPU_ON_SLOT);
    if on == 0 {
        // The agent has not configured (or has turned off) off-CPU.
        return Ok(());
    }
    // Argument 2 of sched_switch is `struct task_struct *next`, a trusted
    // BTF pointer for the verifier (read straight from the context).
    switch_in(ctx.arg::<*mut task_struct>(2), on);
    switch_out(ctx);
    Ok(())
}
