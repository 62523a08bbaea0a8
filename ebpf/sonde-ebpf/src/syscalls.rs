//! Syscall accounting: sys_enter stores (timestamp, nr) per thread, sys_exit
//! adds one call, its latency and its error to a per-CPU slot keyed by
//! (tgid, nr). Both hooks are a few map operations and no event output.
//!
//! The start slot of a thread is updated in place and never deleted (exit
//! only zeroes its timestamp), so the steady state costs no map allocation;
//! slots of dead threads go away through LRU eviction.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use sonde_common::syscalls::{
    ErrnoKey, MAX_SYSCALL_NR, SYSCALL_COUNTERS, SyscallCounter, SyscallKey, SyscallStart,
    SyscallStats, hist_bucket,
};

use crate::counters::bump;

/// x86_64 syscalls that never return: counted at enter, with no latency,
/// and no start slot is left behind.
const NR_EXIT: u32 = 60;
const NR_EXIT_GROUP: u32 = 231;

/// Per-thread start slots (tid -> enter time, nr). Size set by the agent.
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
    if nr < 0 || nr >= MAX_SYSCALL_NR as i64 {
        return Ok(());
    }
    let nr = nr as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !wanted(tgid, nr) {
        return Ok(());
    }
    if nr == NR_EXIT || nr == NR_EXIT_GROUP {
        return account(tgid, nr, 0, 0);
    }
    let tid = pid_tgid as u32;
    // SAFETY: helper with no arguments, allowed in tracing programs.
    let ts = unsafe { bpf_ktime_get_ns() };
    match SYSCALL_START.get_ptr_mut(tid) {
        Some(slot) => {
            // SAFETY: the pointer is from a successful lookup; only this
            // thread (running on this CPU now) writes its own slot.
            unsafe {
                (*slot).ts = ts;
                (*slot).nr = nr;
                (*slot).tgid = tgid;
            }
            Ok(())
        }
        None => SYSCALL_START
            .insert(tid, SyscallStart { ts, nr, tgid }, 0)
            .map_err(|_| SyscallError::StartMapFull),
    }
}

/// sys_exit: account the call that this thread entered.
#[inline(always)]
pub fn try_exit(ret: i64) -> Result<(), SyscallError> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let Some(slot) = SYSCALL_START.get_ptr_mut(tid) else {
        return Ok(());
    };
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: pointer from a successful lookup of this thread's own slot.
    let (start, nr, owner) = unsafe { ((*slot).ts, (*slot).nr, (*slot).tgid) };
    if start == 0 || owner != tgid {
        // No matching enter: the thread was in this syscall at attach time,
        // a fork child is returning, the call was filtered out, or the slot
        // was left by a killed thread whose tid is now reused.
        return Ok(());
    }
    // SAFETY: as above.
    unsafe { (*slot).ts = 0 };
    // SAFETY: helper with no arguments, allowed in tracing programs.
    let now = unsafe { bpf_ktime_get_ns() };
    account(tgid, nr, now.saturating_sub(start), ret)
}

#[inline(always)]
fn account(tgid: u32, nr: u32, ns: u64, ret: i64) -> Result<(), SyscallError> {
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
    let b = hist_bucket(ns);
    // SAFETY: per-CPU value from a successful lookup; programs of this type
    // do not preempt each other on one CPU, so no other writer exists.
    unsafe {
        (*stats).count += 1;
        (*stats).total_ns += ns;
        if let Some(h) = (*stats).hist.get_mut(b) {
            *h = h.wrapping_add(1);
        }
        if ret < 0 {
            (*stats).errors += 1;
        }
    }
    if ret < 0 {
        count_errno(tgid, nr, (-ret) as u32);
    }
    Ok(())
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
