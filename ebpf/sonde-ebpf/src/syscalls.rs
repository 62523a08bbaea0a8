//! Syscall accounting: sys_enter stores (timestamp, nr) for the running
//! thread, sys_exit adds one call, its latency and its error to a per-CPU
//! slot keyed by (tgid, nr). Both hooks are a few map operations and no
//! event output.
//!
//! Where the enter timestamp lives (the hot path, measured): on this kernel
//! hash-map operations are out-of-line calls made costly by the return-stack
//! mitigations, while per-CPU array lookups are inlined by the verifier. So
//! enter writes a per-CPU in-flight slot ([`SYSCALL_INFLIGHT`]) and exit
//! reads it back: no hash operation unless the thread was switched out in
//! between. `sched_switch` runs while the outgoing thread is still
//! `current`; when that thread has a call in flight (it blocked or was
//! preempted inside a syscall) the hook moves the slot to the per-thread
//! LRU map [`SYSCALL_START`], where exit finds it, on whichever CPU the
//! thread resumes. Context switches are far rarer than syscalls and a call
//! that blocks is slow anyway.
//!
//! That invariant (a slot not cleared belongs to the running thread) also
//! saves exit its `bpf_get_current_pid_tgid`: the tgid comes from the slot.
//! The measured cost of each part is in docs/ARCHITECTURE.md.
//!
//! A per-thread slot is updated in place and never deleted (exit only
//! zeroes its timestamp), so the steady state costs no map allocation; slots
//! of dead threads go away through LRU eviction.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use sonde_common::syscalls::{
    ErrnoKey, MAX_SYSCALL_NR, SYSCALL_COUNTERS, SyscallCounter, SyscallInflight, SyscallKey,
    SyscallStart, SyscallStats, hist_bucket,
};

use crate::counters::bump;

/// x86_64 syscalls that never return: counted at enter, with no latency,
/// and no start slot is left behind.
const NR_EXIT: u32 = 60;
const NR_EXIT_GROUP: u32 = 231;

/// The call in flight on each CPU (see the module docs).
#[map]
static SYSCALL_INFLIGHT: PerCpuArray<SyscallInflight> = PerCpuArray::with_max_entries(1, 0);

/// Start slots of threads switched out inside a syscall (tid -> enter time,
/// nr). Size set by the agent.
#[map]
static SYSCALL_START: LruHashMap<u32, SyscallStart> = LruHashMap::with_max_entries(65_536, 0);

/// Per-(tgid, nr) accounting. Size set by the agent. Preallocated: with
/// BPF_F_NO_PREALLOC, inserts in bursts (fork storms) fail with ENOMEM once
/// the per-CPU allocation cache runs dry, which we measured as lost calls.
#[map]
static SYSCALL_STATS: PerCpuHashMap<SyscallKey, SyscallStats> =
    PerCpuHashMap::with_max_entries(8_192, 0);

/// Failures per (tgid, nr, errno); only touched when a call fails. Per-CPU
/// so the increment needs no atomic.
#[map]
static SYSCALL_ERRNO: PerCpuHashMap<ErrnoKey, u64> = PerCpuHashMap::with_max_entries(4_096, 0);

/// One zeroed value to insert from (too big for the 512-byte BPF stack).
#[map]
static SYSCALL_ZERO: PerCpuArray<SyscallStats> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SYSCALL_COUNTERS_MAP: PerCpuArray<u64> = PerCpuArray::with_max_entries(SYSCALL_COUNTERS, 0);

/// Tgids to trace when the pid filter is on (value unused).
#[map]
static SYSCALL_FILTER_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(1_024, 0);

/// Per syscall nr: 1 = trace, when the syscall filter is on.
#[map]
static SYSCALL_FILTER_NRS: Array<u8> = Array::with_max_entries(MAX_SYSCALL_NR, 0);

/// Patched by the agent at load time: 1 when `SYSCALL_FILTER_TGIDS` applies.
#[unsafe(no_mangle)]
static SYSCALL_FILTER_PIDS_ON: u8 = 0;
/// Patched by the agent at load time: 1 when `SYSCALL_FILTER_NRS` applies.
#[unsafe(no_mangle)]
static SYSCALL_FILTER_NRS_ON: u8 = 0;

pub enum SyscallError {
    StartMapFull,
    StatsMapFull,
}

#[inline(always)]
fn flag(f: &u8) -> bool {
    // SAFETY: reading a global the loader patched; volatile so the compiler
    // does not fold the load-time constant into its default value.
    unsafe { core::ptr::read_volatile(f) != 0 }
}

#[inline(always)]
fn wanted(tgid: u32, nr: u32) -> bool {
    if flag(&SYSCALL_FILTER_PIDS_ON) && SYSCALL_FILTER_TGIDS.get_ptr(tgid).is_none() {
        return false;
    }
    if flag(&SYSCALL_FILTER_NRS_ON) {
        match SYSCALL_FILTER_NRS.get(nr) {
            Some(v) if *v != 0 => {}
            _ => return false,
        }
    }
    true
}

/// sys_enter: remember when and which syscall this thread entered.
#[inline(always)]
pub fn try_enter(nr: i64) -> Result<(), SyscallError> {
    let Some(slot) = SYSCALL_INFLIGHT.get_ptr_mut(0) else {
        return Ok(());
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    let mut ts = 0;
    let mut nr32 = 0;
    if nr >= 0 && nr < MAX_SYSCALL_NR as i64 && wanted(tgid, nr as u32) {
        nr32 = nr as u32;
        if nr32 == NR_EXIT || nr32 == NR_EXIT_GROUP {
            return account(tgid, nr32, 0, 0);
        }
        // SAFETY: helper with no arguments, allowed in tracing programs.
        ts = unsafe { bpf_ktime_get_ns() };
    }
    // An untraced call leaves `ts == 0` with this thread's tid, which tells
    // its exit "nothing to account" without a hash lookup.
    //
    // SAFETY: this CPU's slot from a successful lookup; programs on one CPU
    // do not preempt each other, so nothing else writes it meanwhile. A
    // call still in the slot is one whose exit never came (the thread was
    // killed in it, or the agent attached mid-call): overwriting drops it,
    // as its exit would not have matched anyway.
    unsafe {
        *slot = SyscallInflight {
            ts,
            tid,
            tgid,
            nr: nr32,
            _pad: 0,
        };
    }
    Ok(())
}

/// sched_switch, while the outgoing thread is still `current`: the slot of
/// this CPU belongs to it (or is empty); a call in flight (it blocked or was
/// preempted inside the syscall) moves to the per-thread map for its exit to
/// find, and the slot is cleared.
#[inline(always)]
pub fn try_switch() -> Result<(), SyscallError> {
    let Some(slot) = SYSCALL_INFLIGHT.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: this CPU's slot; no other program writes it meanwhile.
    let s = unsafe { &mut *slot };
    if s.tid == 0 {
        return Ok(());
    }
    // Whatever happens below, the slot matches no thread afterwards (tid 0
    // is the idle task, which makes no syscalls): the outgoing thread's next
    // exit, on whichever CPU, must not take a stale slot for its own.
    let tid = s.tid;
    s.tid = 0;
    if s.ts == 0 {
        return Ok(());
    }
    let start = SyscallStart {
        ts: s.ts,
        nr: s.nr,
        tgid: s.tgid,
    };
    s.ts = 0;
    match SYSCALL_START.get_ptr_mut(tid) {
        Some(p) => {
            // SAFETY: pointer from a successful lookup; only the owner
            // thread's own hooks write its slot, and it is not running.
            unsafe { *p = start };
            Ok(())
        }
        None => SYSCALL_START
            .insert(tid, start, 0)
            .map_err(|_| SyscallError::StartMapFull),
    }
}

/// sys_exit: account the call that this thread entered.
///
/// The fast path calls no helper but the clock: this CPU's slot, when not
/// cleared (`tid != 0`), was written by the running thread's own enter, since
/// every switch-out clears it (see [`try_switch`]) and `sched_switch` is
/// attached before `sys_enter`. So the slot's tgid is the caller's, with no
/// `bpf_get_current_pid_tgid` (measured ~11 ns per call here). Only a thread
/// switched out during its call finds the slot cleared and looks itself up
/// in the per-thread map.
#[inline(always)]
pub fn try_exit(ret: i64) -> Result<(), SyscallError> {
    let Some(p) = SYSCALL_INFLIGHT.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: this CPU's slot; no other program writes it meanwhile.
    let s = unsafe { &mut *p };
    let (start, tgid, nr) = if s.tid != 0 {
        // `ts == 0`: the call was not traced, or its enter was missed.
        if s.ts == 0 {
            return Ok(());
        }
        let v = (s.ts, s.tgid, s.nr);
        s.ts = 0;
        v
    } else {
        let pid_tgid = bpf_get_current_pid_tgid();
        let tgid = (pid_tgid >> 32) as u32;
        match from_thread_map(pid_tgid as u32, tgid) {
            Some((start, nr)) => (start, tgid, nr),
            None => return Ok(()),
        }
    };
    // SAFETY: helper with no arguments, allowed in tracing programs.
    let now = unsafe { bpf_ktime_get_ns() };
    account(tgid, nr, now.saturating_sub(start), ret)
}

/// Slow path of exit: the thread was switched out during the call.
#[inline(always)]
fn from_thread_map(tid: u32, tgid: u32) -> Option<(u64, u32)> {
    let slot = SYSCALL_START.get_ptr_mut(tid)?;
    // SAFETY: pointer from a successful lookup of this thread's own slot.
    let (start, nr, owner) = unsafe { ((*slot).ts, (*slot).nr, (*slot).tgid) };
    if start == 0 || owner != tgid {
        // No matching enter: the thread was in this syscall at attach time,
        // a fork child is returning, the call was filtered out, or the slot
        // was left by a killed thread whose tid is now reused.
        return None;
    }
    // SAFETY: as above.
    unsafe { (*slot).ts = 0 };
    Some((start, nr))
}

#[inline(always)]
pub(crate) fn account(tgid: u32, nr: u32, ns: u64, ret: i64) -> Result<(), SyscallError> {
    let key = SyscallKey { tgid, nr };
    let stats = match SYSCALL_STATS.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            let zero = SYSCALL_ZERO.get_ptr(0).ok_or(SyscallError::StatsMapFull)?;
            // SAFETY: `zero` is this CPU's slot of a one-entry array that
            // nothing ever writes, so it is a valid all-zero value.
            let zero = unsafe { &*zero };
            // BPF_NOEXIST: another CPU may have created it meanwhile; that is
            // fine, the lookup below finds whichever won.
            let _ = SYSCALL_STATS.insert(key, zero, 1);
            SYSCALL_STATS
                .get_ptr_mut(key)
                .ok_or(SyscallError::StatsMapFull)?
        }
    };
    // SAFETY: per-CPU value from a successful lookup; programs of this type
    // do not preempt each other on one CPU, so no other writer exists.
    add_call(unsafe { &mut *stats }, ns, ret);
    if ret < 0 {
        count_errno(tgid, nr, (-ret) as u32);
    }
    Ok(())
}

/// One call into this CPU's accumulator.
#[inline(always)]
pub(crate) fn add_call(stats: &mut SyscallStats, ns: u64, ret: i64) {
    stats.count += 1;
    stats.total_ns += ns;
    if let Some(h) = stats.hist.get_mut(hist_bucket(ns)) {
        *h = h.wrapping_add(1);
    }
    if ret < 0 {
        stats.errors += 1;
    }
}

/// Rare path: a failed call, counted per errno.
#[inline(always)]
fn count_errno(tgid: u32, nr: u32, errno: u32) {
    let key = ErrnoKey {
        tgid,
        nr,
        errno,
        _pad: 0,
    };
    match SYSCALL_ERRNO.get_ptr_mut(key) {
        Some(p) => {
            // SAFETY: this CPU's value from a successful lookup; no other
            // writer can run on this CPU meanwhile.
            unsafe { *p += 1 };
        }
        None => {
            // BPF_NOEXIST. Inserting a per-CPU value sets this CPU's slot
            // to 1 and the others to 0. If another CPU created it first,
            // add to it instead.
            if SYSCALL_ERRNO.insert(key, 1u64, 1).is_err() {
                match SYSCALL_ERRNO.get_ptr_mut(key) {
                    // SAFETY: as above.
                    Some(p) => unsafe { *p += 1 },
                    None => bump(&SYSCALL_COUNTERS_MAP, SyscallCounter::ErrnoMapFull as u32),
                }
            }
        }
    }
}

/// Entry points call this and turn errors into counted drops.
#[inline(always)]
pub fn count_error(r: Result<(), SyscallError>) {
    match r {
        Ok(()) => {}
        Err(SyscallError::StartMapFull) => {
            bump(&SYSCALL_COUNTERS_MAP, SyscallCounter::StartMapFull as u32)
        }
        Err(SyscallError::StatsMapFull) => {
            bump(&SYSCALL_COUNTERS_MAP, SyscallCounter::StatsMapFull as u32)
        }
    }
}
