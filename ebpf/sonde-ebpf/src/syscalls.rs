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
//!
//! Where the counts go (the other hash operation the hot path used to pay):
//! a call is first added to a per-CPU *call cache* ([`SYSCALL_CACHE`], an
//! array with one entry per syscall number, inlined lookups) and reaches the
//! per-(tgid, nr) stats hash [`SYSCALL_STATS`] — the only map the agent
//! reads — in a *flush*. The invariant that makes this exact: **a CPU's
//! cache only holds calls of the thread running on that CPU, and is flushed
//! before that thread is switched out or exits.** Flushes happen
//! - in `sched_switch`, while the outgoing thread is still `current`;
//! - in `sched_process_exit`, in the exiting thread, before its exit is
//!   visible to anyone (the process collector's event, /proc): so an
//!   exited process has all its counts in the hash when the agent reads it
//!   for the last time, and nothing of it is flushed after the agent has
//!   deleted its keys;
//! - in sys_exit, when the oldest pending call is older than
//!   [`FLUSH_AFTER_NS`] (so a thread that makes syscalls without being
//!   switched out still shows up in every drain), when a slot is needed by
//!   another syscall number (only numbers 512 apart share one), or when
//!   the list of pending slots is full.
//!
//! All writers of a CPU's cache are programs on that CPU that cannot
//! interleave: the syscall hooks run with preemption disabled and never in
//! interrupt context, and `sched_switch` runs with interrupts off, between
//! two threads. The agent never reads the cache, so it never races with
//! it: the hash values it reads are updated in place per CPU exactly as
//! before, only less often (see docs/ARCHITECTURE.md, "Syscall hot path").

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use sonde_common::syscalls::{
    ErrnoKey, HIST_BUCKETS, MAX_SYSCALL_NR, SYSCALL_COUNTERS, SyscallCounter, SyscallInflight,
    SyscallKey, SyscallStart, SyscallStats, hist_bucket,
};

use crate::{
    arch::nr,
    counters::{bump, bump_by},
};

/// Syscalls that never return: counted at enter, with no latency, and no
/// start slot is left behind.
const NR_EXIT: u32 = nr::EXIT as u32;
const NR_EXIT_GROUP: u32 = nr::EXIT_GROUP as u32;

/// The call in flight on each CPU (see the module docs).
#[map]
static SYSCALL_INFLIGHT: PerCpuArray<SyscallInflight> = PerCpuArray::with_max_entries(1, 0);

/// Slots of the per-CPU call cache: one per x86_64 syscall number (all
/// are below 512); numbers 512 apart share a slot, which flushes on a
/// change of number.
pub const CACHE_SLOTS: u32 = 512;

/// Most slots pending in one CPU's cache; calls of further syscall numbers
/// go straight to the stats hash until the next flush. A thread rarely
/// makes more distinct syscalls between two switches.
const DIRTY_MAX: usize = 32;

/// A thread that keeps making syscalls without being switched out flushes
/// its cache at its first sys_exit this long after the oldest pending call
/// (2^24 ns, ~17 ms: small against any drain interval).
pub const FLUSH_AFTER_NS: u64 = 1 << 24;

/// Calls of one syscall number not yet in [`SYSCALL_STATS`].
#[repr(C)]
pub struct CacheSlot {
    /// Syscall number the pending calls belong to (valid when
    /// `stats.count != 0`).
    nr: u32,
    /// Lowest and highest histogram bucket the pending calls touched: a
    /// flush merges only those (a whole histogram is 106 buckets, ~150 ns
    /// to merge, which a thread that blocks after a call or two would pay
    /// at every switch).
    lo: u8,
    hi: u8,
    _pad: u16,
    stats: SyscallStats,
}

/// Which slots of this CPU's cache hold calls, and of which process.
#[repr(C)]
pub struct CacheHead {
    /// `bpf_ktime_get_ns()` of the oldest pending call (0 if accounted at
    /// sys_enter: flushed at the next chance).
    since: u64,
    /// The running thread's process, once known (0 = not yet read since
    /// it was switched in); every pending call is its.
    tgid: u32,
    /// Entries used in `dirty`.
    n: u32,
    /// Indexes of the slots holding calls (each at most once).
    dirty: [u16; DIRTY_MAX],
}

/// This CPU's pending calls, by syscall number (see the module docs).
#[map]
static SYSCALL_CACHE: PerCpuArray<CacheSlot> = PerCpuArray::with_max_entries(CACHE_SLOTS, 0);

#[map]
static SYSCALL_CACHE_HEAD: PerCpuArray<CacheHead> = PerCpuArray::with_max_entries(1, 0);

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

/// Whether to trace this call. Reads the caller's tgid only when the pid
/// filter is on (returned so the caller need not read it again; 0 = not
/// read).
#[inline(always)]
fn wanted(nr: u32) -> Option<u32> {
    if flag(&SYSCALL_FILTER_NRS_ON) {
        match SYSCALL_FILTER_NRS.get(nr) {
            Some(v) if *v != 0 => {}
            _ => return None,
        }
    }
    if flag(&SYSCALL_FILTER_PIDS_ON) {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        SYSCALL_FILTER_TGIDS.get_ptr(tgid)?;
        return Some(tgid);
    }
    Some(0)
}

/// sys_enter: remember when and which syscall this thread entered.
///
/// No thread id is read (measured ~13 ns per `bpf_get_current_pid_tgid`
/// here): the armed slot belongs to the running thread until its switch-out
/// (see [`try_switch`]), which reads the id itself in the rare case a call
/// is in flight then.
#[inline(always)]
pub fn try_enter(nr: i64) -> Result<(), SyscallError> {
    let Some(slot) = SYSCALL_INFLIGHT.get_ptr_mut(0) else {
        return Ok(());
    };
    let mut ts = 0;
    let mut nr32 = 0;
    if nr >= 0
        && nr < MAX_SYSCALL_NR as i64
        && let Some(tgid) = wanted(nr as u32)
    {
        nr32 = nr as u32;
        if nr32 == NR_EXIT || nr32 == NR_EXIT_GROUP {
            account(tgid, nr32, 0, 0, 0);
            return Ok(());
        }
        // SAFETY: helper with no arguments, allowed in tracing programs.
        ts = unsafe { bpf_ktime_get_ns() };
        flush_if_stale(ts);
    }
    // An untraced call leaves `ts == 0` in an armed slot, which tells its
    // exit "nothing to account" without a hash lookup.
    //
    // SAFETY: this CPU's slot from a successful lookup; programs on one CPU
    // do not preempt each other, so nothing else writes it meanwhile. A
    // call still in the slot is one whose exit never came (the thread was
    // killed in it, or the agent attached mid-call): overwriting drops it,
    // as its exit would not have matched anyway.
    unsafe {
        *slot = SyscallInflight {
            ts,
            nr: nr32,
            armed: 1,
        };
    }
    Ok(())
}

/// sched_switch, while the outgoing thread is still `current`: its pending
/// calls go to the stats hash, and the in-flight slot of this CPU (which
/// belongs to it, or is disarmed) is disarmed; a call in flight (it blocked
/// or was preempted inside the syscall) moves to the per-thread map for its
/// exit to find.
#[inline(always)]
pub fn try_switch() -> Result<(), SyscallError> {
    flush_cache();
    let Some(slot) = SYSCALL_INFLIGHT.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: this CPU's slot; no other program writes it meanwhile.
    let s = unsafe { &mut *slot };
    if s.armed == 0 {
        return Ok(());
    }
    // Whatever happens below, the slot belongs to no thread afterwards: the
    // outgoing thread's next exit, on whichever CPU, must not take a stale
    // slot for its own.
    s.armed = 0;
    if s.ts == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let start = SyscallStart {
        ts: s.ts,
        nr: s.nr,
        tgid: (pid_tgid >> 32) as u32,
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
/// The fast path calls no helper but the clock: this CPU's slot, when armed,
/// was written by the running thread's own enter, since every switch-out
/// disarms it (see [`try_switch`]) and `sched_switch` is attached before
/// `sys_enter`. Only a thread switched out during its call finds the slot
/// disarmed and looks itself up in the per-thread map. The caller's tgid
/// comes from the call cache (see [`account`]).
#[inline(always)]
pub fn try_exit(ret: i64) -> Result<(), SyscallError> {
    let Some(p) = SYSCALL_INFLIGHT.get_ptr_mut(0) else {
        return Ok(());
    };
    // SAFETY: this CPU's slot; no other program writes it meanwhile.
    let s = unsafe { &mut *p };
    let (start, tgid, nr) = if s.armed != 0 {
        // `ts == 0`: the call was not traced, or its enter was missed.
        if s.ts == 0 {
            return Ok(());
        }
        let v = (s.ts, 0, s.nr);
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
    account(tgid, nr, now.saturating_sub(start), ret, now);
    Ok(())
}

/// sched_process_exit, in the exiting thread: its pending calls go to the
/// stats hash before anyone can see it exit (see the module docs).
#[inline(always)]
pub fn try_task_exit() -> Result<(), SyscallError> {
    flush_cache();
    Ok(())
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

/// One call of the running thread into this CPU's cache. `tgid` is the
/// caller's process when already known, else 0; `now` is the exit time (0
/// when accounted at sys_enter).
///
/// The cache head remembers the running thread's tgid from its first call
/// after it was switched in (switch-out and exit forget it), so a thread
/// reads its id once per time slice instead of once per syscall.
#[inline(always)]
pub(crate) fn account(tgid: u32, nr: u32, ns: u64, ret: i64, now: u64) {
    let (Some(head), Some(slot)) = (
        SYSCALL_CACHE_HEAD.get_ptr_mut(0),
        SYSCALL_CACHE.get_ptr_mut(nr & (CACHE_SLOTS - 1)),
    ) else {
        return;
    };
    // SAFETY: this CPU's entries from successful lookups; the programs that
    // write them cannot interleave on one CPU (module docs).
    let (h, e) = unsafe { (&mut *head, &mut *slot) };
    if h.tgid == 0 {
        h.tgid = if tgid != 0 {
            tgid
        } else {
            (bpf_get_current_pid_tgid() >> 32) as u32
        };
    }
    if ret < 0 {
        count_errno(h.tgid, nr, (-ret) as u32);
    }
    let b = hist_bucket(ns);
    if e.stats.count == 0 {
        if h.n as usize >= DIRTY_MAX {
            // More distinct syscalls pending than the list holds: this one
            // goes straight to the hash, as every call did before the cache.
            // (No flush of the whole cache here: sys_exit has no call site
            // of `flush_all`, which keeps it within the verifier's budget.)
            match stats_of(SyscallKey { tgid: h.tgid, nr }) {
                // SAFETY: this CPU's value from a successful lookup.
                Ok(p) => add_call(unsafe { &mut *p }, ns, ret),
                Err(_) => bump(&SYSCALL_COUNTERS_MAP, SyscallCounter::StatsMapFull as u32),
            }
            return;
        }
        if h.n == 0 {
            h.since = now;
        }
        if let Some(d) = h.dirty.get_mut(h.n as usize) {
            *d = (nr & (CACHE_SLOTS - 1)) as u16;
            h.n += 1;
        }
        (e.nr, e.lo, e.hi) = (nr, b as u8, b as u8);
    } else if e.nr != nr {
        // Still listed as pending: it stays so with the new number.
        flush_slot(h.tgid, e);
        (e.nr, e.lo, e.hi) = (nr, b as u8, b as u8);
    } else if (b as u8) < e.lo {
        e.lo = b as u8;
    } else if (b as u8) > e.hi {
        e.hi = b as u8;
    }
    let st = &mut e.stats;
    st.count += 1;
    st.total_ns += ns;
    if let Some(h) = st.hist.get_mut(b) {
        *h = h.wrapping_add(1);
    }
    if ret < 0 {
        st.errors += 1;
    }
}

/// A thread that keeps making syscalls without being switched out flushes
/// its pending calls once the oldest is [`FLUSH_AFTER_NS`] old, so that
/// every drain sees it. Checked at sys_enter, which has the clock already.
#[inline(always)]
fn flush_if_stale(now: u64) {
    if let Some(head) = SYSCALL_CACHE_HEAD.get_ptr_mut(0) {
        // SAFETY: this CPU's entry; no other writer can run meanwhile.
        let h = unsafe { &mut *head };
        if h.n != 0 && now.wrapping_sub(h.since) > FLUSH_AFTER_NS {
            flush_all(h);
        }
    }
}

/// Flushes this CPU's cache and forgets whose it was (sched_switch,
/// sched_process_exit: the running thread is leaving).
#[inline(always)]
fn flush_cache() {
    if let Some(head) = SYSCALL_CACHE_HEAD.get_ptr_mut(0) {
        // SAFETY: this CPU's entry; no other writer can run meanwhile.
        let h = unsafe { &mut *head };
        if h.n != 0 {
            flush_all(h);
        }
        h.tgid = 0;
    }
}

/// Moves every pending slot into the stats hash and empties the list. Not
/// inlined: it is off the hot path, and one copy serves every caller.
#[inline(never)]
fn flush_all(h: &mut CacheHead) {
    for i in 0..DIRTY_MAX {
        if i >= h.n as usize {
            break;
        }
        let Some(slot) = h
            .dirty
            .get(i)
            .and_then(|d| SYSCALL_CACHE.get_ptr_mut(*d as u32))
        else {
            continue;
        };
        // SAFETY: this CPU's slot; no other writer can run meanwhile.
        let e = unsafe { &mut *slot };
        if e.stats.count != 0 {
            flush_slot(h.tgid, e);
        }
    }
    h.n = 0;
}

/// Adds one slot's pending calls to (tgid, slot nr) in the stats hash and
/// zeroes the slot. A full hash drops them, counted per call.
#[inline(always)]
fn flush_slot(tgid: u32, e: &mut CacheSlot) {
    let (lo, hi) = (e.lo as usize, e.hi as usize);
    let src = &mut e.stats;
    match stats_of(SyscallKey { tgid, nr: e.nr }) {
        Ok(p) => {
            // SAFETY: this CPU's value from a successful lookup; no other
            // writer can run on this CPU meanwhile.
            let dst = unsafe { &mut *p };
            dst.count += src.count;
            dst.errors += src.errors;
            dst.total_ns += src.total_ns;
            // Only the touched buckets when they are few. Field by field
            // (no 448-byte copies on the 512-byte BPF stack) and unrolled
            // (a loop here is walked by the verifier at every flush site,
            // for every pending slot, and exhausts its budget).
            if hi.wrapping_sub(lo) < 8 {
                merge_window!(dst, src, lo, hi; 0 1 2 3 4 5 6 7);
            } else {
                merge_buckets!(dst, src;
                    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22
                    23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42
                    43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62
                    63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82
                    83 84 85 86 87 88 89 90 91 92 93 94 95 96 97 98 99 100 101
                    102 103 104 105);
            }
        }
        Err(_) => {
            bump_by(
                &SYSCALL_COUNTERS_MAP,
                SyscallCounter::StatsMapFull as u32,
                src.count,
            );
            zero_buckets!(src;
                0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22
                23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42
                43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62
                63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82
                83 84 85 86 87 88 89 90 91 92 93 94 95 96 97 98 99 100 101
                102 103 104 105);
        }
    }
    zero(&mut src.count);
    zero(&mut src.errors);
    zero(&mut src.total_ns);
}

/// `dst.hist[i] += src.hist[i]; src.hist[i] = 0` for each listed `i`.
macro_rules! merge_buckets {
    ($d:ident, $s:ident; $($i:literal)*) => {
        $(
            $d.hist[$i] = $d.hist[$i].wrapping_add($s.hist[$i]);
            zero(&mut $s.hist[$i]);
        )*
    };
}
use merge_buckets;

/// `src.hist[i] = 0` for each listed `i`.
macro_rules! zero_buckets {
    ($s:ident; $($i:literal)*) => {
        $( zero(&mut $s.hist[$i]); )*
    };
}
use zero_buckets;

/// [`merge_buckets!`] for buckets `lo + k`, each listed `k`, up to `hi`.
macro_rules! merge_window {
    ($d:ident, $s:ident, $lo:ident, $hi:ident; $($k:literal)*) => {
        $(
            let b = opaque($lo + $k);
            if b <= $hi && b < HIST_BUCKETS {
                $d.hist[b] = $d.hist[b].wrapping_add($s.hist[b]);
                zero(&mut $s.hist[b]);
            }
        )*
    };
}
use merge_window;
const _: () = assert!(HIST_BUCKETS == 106, "update the bucket lists");

/// `*x = 0` as a volatile store: LLVM turns runs of plain zero stores into
/// a `memset` call, which aya-ebpf implements as a byte loop that the
/// verifier then walks byte by byte at every flush.
#[inline(always)]
fn zero<T: Default>(x: &mut T) {
    // SAFETY: writing through a valid exclusive reference.
    unsafe { core::ptr::write_volatile(x, T::default()) }
}

/// `x`, through memory, so the compiler cannot fold the bound check that
/// follows into another register than the one used to index (the verifier
/// tracks the bound on the register it was checked on).
#[inline(always)]
fn opaque(x: usize) -> usize {
    // SAFETY: reading a local through a valid pointer.
    unsafe { core::ptr::read_volatile(&x) }
}

/// This CPU's stats value of `key`, created (zeroed) if missing.
#[inline(always)]
pub(crate) fn stats_of(key: SyscallKey) -> Result<*mut SyscallStats, SyscallError> {
    if let Some(p) = SYSCALL_STATS.get_ptr_mut(key) {
        return Ok(p);
    }
    let zero = SYSCALL_ZERO.get_ptr(0).ok_or(SyscallError::StatsMapFull)?;
    // SAFETY: `zero` is this CPU's slot of a one-entry array that nothing
    // ever writes, so it is a valid all-zero value.
    let zero = unsafe { &*zero };
    // BPF_NOEXIST: another CPU may have created it meanwhile; that is fine,
    // the lookup below finds whichever won.
    let _ = SYSCALL_STATS.insert(key, zero, 1);
    SYSCALL_STATS
        .get_ptr_mut(key)
        .ok_or(SyscallError::StatsMapFull)
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
