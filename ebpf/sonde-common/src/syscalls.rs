//! Syscall accounting, aggregated in the kernel per (tgid, syscall).
//!
//! The hot path touches two maps: a per-thread start slot (enter timestamp
//! and syscall number) and a per-CPU stats slot keyed by [`SyscallKey`].
//! Nothing is sent to user space per event; the agent reads the maps on an
//! interval.
//!
//! Latency histogram: log-linear, 4 sub-buckets per power of two (each bucket
//! is at most 25 % wide), from 256 ns to 2^34 ns (~17 s):
//! - bucket 0 holds everything below 2^8 ns;
//! - bucket `1 + (e - 8) * 4 + s` holds `[2^e + s * 2^(e-2), 2^e + (s+1) * 2^(e-2))`
//!   for `8 <= e < 34`, `s` in 0..4;
//! - the last bucket holds everything from 2^34 ns up.

/// Values below `2^HIST_LO_SHIFT` ns share bucket 0.
pub const HIST_LO_SHIFT: u32 = 8;
/// Values from `2^HIST_HI_SHIFT` ns up share the last bucket.
pub const HIST_HI_SHIFT: u32 = 34;
/// Sub-buckets per power of two (a power of two itself).
pub const HIST_SUB: u32 = 4;
/// log2 of [`HIST_SUB`].
pub const HIST_SUB_BITS: u32 = 2;
/// Total number of histogram buckets.
pub const HIST_BUCKETS: usize = (2 + (HIST_HI_SHIFT - HIST_LO_SHIFT) * HIST_SUB) as usize;

/// Bucket index of a latency in nanoseconds (see the module docs). No loops:
/// the log2 is a fixed binary search so the verifier sees straight-line code.
#[inline(always)]
pub fn hist_bucket(ns: u64) -> usize {
    if ns < (1 << HIST_LO_SHIFT) {
        return 0;
    }
    if ns >= (1 << HIST_HI_SHIFT) {
        return HIST_BUCKETS - 1;
    }
    let mut v = ns;
    let mut e = 0u32;
    if v >= 1 << 32 {
        v >>= 32;
        e += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        e += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        e += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        e += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        e += 2;
    }
    if v >= 1 << 1 {
        e += 1;
    }
    let sub = ((ns >> (e - HIST_SUB_BITS)) & (HIST_SUB as u64 - 1)) as u32;
    (1 + (e - HIST_LO_SHIFT) * HIST_SUB + sub) as usize
}

/// Exclusive upper bound, in ns, of bucket `i` (`u64::MAX` for the last).
pub fn hist_upper_ns(i: usize) -> u64 {
    if i == 0 {
        return 1 << HIST_LO_SHIFT;
    }
    if i >= HIST_BUCKETS - 1 {
        return u64::MAX;
    }
    let j = (i - 1) as u32;
    let e = HIST_LO_SHIFT + j / HIST_SUB;
    let s = (j % HIST_SUB) as u64;
    (1u64 << e) + (s + 1) * (1u64 << (e - HIST_SUB_BITS))
}

/// Inclusive lower bound, in ns, of bucket `i`.
pub fn hist_lower_ns(i: usize) -> u64 {
    if i == 0 { 0 } else { hist_upper_ns(i - 1) }
}

/// Key of the per-CPU stats map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyscallKey {
    pub tgid: u32,
    /// Syscall number (x86_64 numbering on x86_64).
    pub nr: u32,
}
const _: () = assert!(core::mem::size_of::<SyscallKey>() == 8);

/// Per-CPU accounting of one (tgid, syscall). Counters only grow; the agent
/// computes deltas between reads. Histogram buckets are 32-bit and may wrap:
/// the agent subtracts per CPU with wrapping arithmetic, which is exact as
/// long as fewer than 2^32 calls land in one bucket on one CPU between two
/// reads (seconds apart).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallStats {
    pub count: u64,
    /// Calls that returned a negative value (-errno).
    pub errors: u64,
    pub total_ns: u64,
    pub hist: [u32; HIST_BUCKETS],
}
const _: () = assert!(core::mem::size_of::<SyscallStats>() == 24 + 4 * HIST_BUCKETS);
const _: () = assert!(core::mem::size_of::<SyscallStats>().is_multiple_of(8));

impl SyscallStats {
    pub const ZERO: Self = Self {
        count: 0,
        errors: 0,
        total_ns: 0,
        hist: [0; HIST_BUCKETS],
    };
}

/// Key of the error map: failures per (tgid, syscall, errno).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrnoKey {
    pub tgid: u32,
    pub nr: u32,
    /// Positive errno value (the syscall returned `-errno`).
    pub errno: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ErrnoKey>() == 16);

/// Per-thread state between sys_enter and sys_exit.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallStart {
    /// `bpf_ktime_get_ns()` at enter; 0 once consumed by exit.
    pub ts: u64,
    pub nr: u32,
    /// Owner of the slot: a thread killed inside a syscall leaves a slot
    /// behind, and its tid may be reused by another process.
    pub tgid: u32,
}
const _: () = assert!(core::mem::size_of::<SyscallStart>() == 16);

/// The call in flight on one CPU: sys_enter writes this CPU's slot, sys_exit
/// of the same thread consumes it. A thread that is switched out inside a
/// syscall has its slot moved to the per-thread map by the `sched_switch`
/// hook, which also disarms the slot, so an armed slot always belongs to
/// the thread running on that CPU (and needs no thread id).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallInflight {
    /// `bpf_ktime_get_ns()` at enter; 0 when no call is being timed.
    pub ts: u64,
    pub nr: u32,
    /// 1 from the running thread's sys_enter until its switch-out.
    pub armed: u32,
}
const _: () = assert!(core::mem::size_of::<SyscallInflight>() == 16);

crate::counters! {
    /// Indexes into the syscall collector's per-CPU counter array. Values are
    /// part of the ABI; never reuse one.
    pub enum SyscallCounter [SYSCALL_COUNTERS] {
        /// The per-thread start map refused an insert (syscall not timed).
        StartMapFull = 0 => "start",
        /// The stats map was full: a new (tgid, syscall) pair was not counted.
        StatsMapFull = 1 => "stats",
        /// The errno map was full: an error was counted but not its errno.
        ErrnoMapFull = 2 => "errno",
    }
}

/// Syscall numbers above this are not accounted (the syscall filter array
/// has this many slots). x86_64 uses fewer than 512.
pub const MAX_SYSCALL_NR: u32 = 1024;

crate::user_pod!(
    SyscallKey,
    SyscallStats,
    ErrnoKey,
    SyscallStart,
    SyscallInflight
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_contiguously() {
        for i in 1..HIST_BUCKETS {
            assert_eq!(hist_lower_ns(i), hist_upper_ns(i - 1));
            assert!(hist_upper_ns(i) > hist_lower_ns(i));
        }
        for ns in [
            0u64,
            1,
            255,
            256,
            300,
            511,
            512,
            1000,
            10_000_000,
            12_345_678,
            1 << 33,
            1 << 34,
            u64::MAX,
        ] {
            let b = hist_bucket(ns);
            assert!(b < HIST_BUCKETS);
            assert!(
                hist_lower_ns(b) <= ns && (ns < hist_upper_ns(b) || b == HIST_BUCKETS - 1),
                "{ns} -> {b}"
            );
        }
        // 10 ms falls in [8.389 ms, 10.486 ms).
        let b = hist_bucket(10_050_000);
        assert_eq!(
            (hist_lower_ns(b), hist_upper_ns(b)),
            (8_388_608, 10_485_760)
        );
    }
}
