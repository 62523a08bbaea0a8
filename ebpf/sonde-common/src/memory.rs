//! Memory ABI, two tiers.
//!
//! Tier 1 (the always-on `memory` collector): the address-space changes of
//! `mmap`, `munmap`, `mremap` and `brk` (seen where they take the mmap lock
//! for writing) and sampled user page faults count bytes and faults per
//! (process, user stack, kind) in the kernel, in two map generations the
//! agent flips and drains like the CPU profiler's.
//!
//! Tier 2 (`sonde alloc`, on demand): malloc-family uprobes on one process
//! track each live allocation (address -> size, stack, time) and per-stack
//! totals until the session ends.

use crate::COMM_LEN;

/// What a tier-1 row counts.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    /// Bytes `mmap` added to the address space (on the mmap_lock hooks: the
    /// growth of `total_vm`, so a mapping placed over an old one counts
    /// only what it added; on the syscall hooks: the length requested).
    Mmap = 0,
    /// Bytes `munmap` removed (the length asked, on the syscall hooks).
    Munmap = 1,
    /// `brk` growth of the heap (bytes).
    BrkGrow = 2,
    /// `brk` shrink of the heap (bytes).
    BrkShrink = 3,
    /// `mremap` growth (bytes).
    MremapGrow = 4,
    /// `mremap` shrink (bytes).
    MremapShrink = 5,
    /// Sampled page faults: each sample stands for `MEM_FAULT_SAMPLE_SLOT`
    /// faults, `bytes` is that many pages.
    FaultSampled = 6,
    /// Reserved (was: every fault counted by a tracepoint; too costly).
    FaultAll = 7,
}

/// Number of [`MemKind`] values.
pub const MEM_KINDS: u32 = 8;

impl MemKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Mmap,
            1 => Self::Munmap,
            2 => Self::BrkGrow,
            3 => Self::BrkShrink,
            4 => Self::MremapGrow,
            5 => Self::MremapShrink,
            6 => Self::FaultSampled,
            7 => Self::FaultAll,
            _ => return None,
        })
    }
}

/// Stack id used by rows that carry no stack on purpose.
pub const MEM_NO_STACK: i32 = -1_000_000;

/// Key of the tier-1 counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemKey {
    pub tgid: u32,
    /// `bpf_get_stackid` result: an id, `-errno`, or [`MEM_NO_STACK`].
    pub user_stack_id: i32,
    /// A [`MemKind`].
    pub kind: u32,
    /// The Python stack walked with a sampled fault of a CPython process
    /// the agent marked (an id of the generation's `PY_STACKS_*`, >=
    /// `PY_STACK_ID_BASE`), else 0 or `-errno`.
    pub python_stack_id: i32,
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(core::mem::size_of::<MemKey>() == 32);

/// Value of the tier-1 counts (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemValue {
    pub bytes: u64,
    pub count: u64,
}

const _: () = assert!(core::mem::size_of::<MemValue>() == 16);

/// Control array slots (tier 1).
pub const MEM_GEN_SLOT: u32 = 0;
/// The page-fault perf event's sample period (also each sample's weight).
pub const MEM_FAULT_SAMPLE_SLOT: u32 = 1;
/// Page size in bytes, written by the agent.
pub const MEM_PAGE_SIZE_SLOT: u32 = 2;
/// Byte offset of `total_vm` in the kernel's `struct mm_struct`, from the
/// kernel's BTF (0: unknown, the mmap_lock hooks count nothing).
pub const MEM_TOTAL_VM_OFF_SLOT: u32 = 3;
pub const MEM_CONTROL_ENTRIES: u32 = 4;

pub const MEM_MAX_KEYS: u32 = 16_384;
pub const MEM_MAX_STACKS: u32 = 8_192;
/// Processes whose last `brk` is remembered (LRU).
pub const MEM_MAX_BRK: u32 = 16_384;

crate::counters! {
    /// Tier-1 per-CPU counters. Values are ABI.
    pub enum MemCounter [MEM_COUNTERS] {
        /// Events seen (all hooks).
        Events = 0 => "events",
        /// A row could not be counted: the counts map was full.
        CountsFull = 1 => "counts_map_full",
        /// `bpf_get_stackid` failed (no frame pointers, collision, map full).
        StackMissing = 2 => "stack_missing",
        /// The brk map was full (a process's growth was not measured once).
        BrkFull = 3 => "brk_map_full",
        /// Two threads in an mmap-family call at once hashed to one pending
        /// slot of the mmap_lock hooks: the earlier call was not counted.
        SlotCollision = 4 => "slot_collision",
        /// Sampled faults of a CPython process: a Python walk was attempted.
        PythonWalks = 5 => "python_walks",
        /// A Python walk stopped at a failed read.
        PythonReadFault = 6 => "python_read_fault",
        /// A Python walk stopped at `PY_FRAMES_MAX` frames.
        PythonTruncated = 7 => "python_truncated",
        /// A walked Python stack was not stored (id collision, map full).
        PythonStackLost = 8 => "python_stack_lost",
    }
}

// ---------------------------------------------------------------- tier 2

/// Which allocation function a pending call is in. Values are ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocFn {
    Malloc = 0,
    Calloc = 1,
    Realloc = 2,
    Memalign = 3,
    PosixMemalign = 4,
}

/// A thread's allocation call between its entry and its return. The entry
/// stays (idle, `depth` 0) after the return, so the thread's next call
/// updates it in place instead of inserting and deleting a map entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocPending {
    /// Requested size in bytes.
    pub size: u64,
    /// `realloc`: the old pointer; `posix_memalign`: where the result goes.
    pub arg: u64,
    /// An [`AllocFn`].
    pub func: u32,
    /// Allocation calls in flight on the thread: 0 idle, 1 the tracked
    /// one, more for calls nested in it (realloc(NULL, n) calls malloc),
    /// whose probes are ignored.
    pub depth: u32,
}

const _: () = assert!(core::mem::size_of::<AllocPending>() == 24);

/// One live (allocated, not yet freed) allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocLive {
    /// Requested size in bytes.
    pub size: u64,
    /// Bytes it stands for: `size`, or more when sampling by bytes.
    pub weight: u64,
    /// `bpf_ktime_get_ns` at allocation.
    pub ts_ns: u64,
    pub stack_id: i32,
    /// The Python stack walked at the allocation (CPython processes the
    /// agent marked): an id of `PY_STACKS_0`, else 0 or `-errno`.
    pub python_stack_id: i32,
}

const _: () = assert!(core::mem::size_of::<AllocLive>() == 32);

/// Key of the per-stack totals: the native and the Python stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocStackKey {
    pub stack_id: i32,
    pub python_stack_id: i32,
}

const _: () = assert!(core::mem::size_of::<AllocStackKey>() == 8);

/// Per-stack totals of a session (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocTotals {
    /// Allocations made (weighted bytes, count).
    pub alloc_bytes: u64,
    pub alloc_count: u64,
    /// Of those, freed during the session.
    pub free_bytes: u64,
    pub free_count: u64,
}

const _: () = assert!(core::mem::size_of::<AllocTotals>() == 32);

/// Tier-2 control slots.
/// Mean bytes between samples; 0: every allocation.
pub const ALLOC_SAMPLE_BYTES_SLOT: u32 = 0;
/// Non-zero while the session records allocations. Set once every probe
/// is attached and cleared before any is detached, so the session has
/// clean edges: no allocation whose free probe was not yet (or no longer)
/// attached. Frees are handled whatever its value.
pub const ALLOC_ACTIVE_SLOT: u32 = 1;
pub const ALLOC_CONTROL_ENTRIES: u32 = 2;

pub const ALLOC_MAX_LIVE: u32 = 262_144;
pub const ALLOC_MAX_PENDING: u32 = 16_384;
pub const ALLOC_MAX_STACKS: u32 = 16_384;

crate::counters! {
    /// Tier-2 per-CPU counters. Values are ABI.
    pub enum AllocCounter [ALLOC_COUNTERS] {
        Allocs = 0 => "allocs",
        Frees = 1 => "frees",
        /// Frees of addresses not tracked (allocated before the session, or
        /// not sampled).
        FreeUntracked = 2 => "free_untracked",
        /// The live map was full: an allocation went untracked.
        LiveFull = 3 => "live_map_full",
        /// The per-stack totals map was full.
        TotalsFull = 4 => "totals_map_full",
        /// No user stack (no frame pointers, collision, map full).
        StackMissing = 5 => "stack_missing",
        /// The pending map was full: a call went untracked.
        PendingFull = 6 => "pending_map_full",
        /// A return without its entry (probe attached mid-call).
        ReturnWithoutEntry = 7 => "return_without_entry",
        /// Allocations skipped by byte sampling.
        SampledOut = 8 => "sampled_out",
        /// Failed allocations (NULL returned).
        Failed = 9 => "failed",
        /// Allocations returned while the session was not recording (during
        /// attach or detach).
        Inactive = 10 => "outside_session",
        /// Allocations of a CPython process: a Python walk was attempted.
        PythonWalks = 11 => "python_walks",
        /// A Python walk stopped at a failed read.
        PythonReadFault = 12 => "python_read_fault",
        /// A Python walk stopped at `PY_FRAMES_MAX` frames.
        PythonTruncated = 13 => "python_truncated",
        /// A walked Python stack was not stored (id collision, map full).
        PythonStackLost = 14 => "python_stack_lost",
    }
}

crate::user_pod!(
    MemKey,
    MemValue,
    AllocPending,
    AllocLive,
    AllocStackKey,
    AllocTotals
);
