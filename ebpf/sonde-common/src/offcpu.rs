//! Off-CPU profiler ABI: blocked time per stack, aggregated in the kernel.
//!
//! A tp_btf `sched_switch` program in the profile object takes the stack of
//! a user thread as it leaves the CPU (the same [`StackKey`] the CPU sampler
//! builds, in the same per-generation stack maps) and parks it in the
//! thread's task-local storage, with a copy in a global pending map under
//! the thread id for the agent; when the thread is switched back in, on
//! whatever CPU, the time it was away is added to the off-CPU counts of the
//! generation then current.
//!
//! A thread may stay blocked across several drains, so the pending key
//! remembers the generation whose stack maps hold its ids
//! ([`OffCpuKey::stack_gen`]); the agent keeps those ids when it clears that
//! generation's stack maps, as long as a pending entry names them.

use crate::profile::StackKey;

/// Key of the off-CPU counts: the stack as the CPU sampler keys it, and
/// the generation whose stack maps hold its ids.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OffCpuKey {
    pub stack: StackKey,
    /// 0 or 1: the generation that was current when the thread left the
    /// CPU (its stack ids are ids of that generation's maps).
    pub stack_gen: u32,
}

const _: () = assert!(core::mem::size_of::<OffCpuKey>() == core::mem::size_of::<StackKey>() + 4);
const _: () = assert!(core::mem::align_of::<OffCpuKey>() == 4);

/// A thread that left the CPU and has not come back yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffCpuPending {
    pub key: OffCpuKey,
    /// `bpf_ktime_get_ns` when it left, as two halves (low first) so the
    /// struct stays 4-aligned and padding-free whatever `StackKey` holds.
    pub since: [u32; 2],
}

const _: () =
    assert!(core::mem::size_of::<OffCpuPending>() == core::mem::size_of::<OffCpuKey>() + 8);

impl OffCpuPending {
    pub const fn since_ns(&self) -> u64 {
        self.since[0] as u64 | (self.since[1] as u64) << 32
    }
}

/// Slots of the off-CPU control array (`u64`s written by the agent).
/// 0 = off-CPU off (the program returns at once). Otherwise the
/// `bpf_ktime_get_ns()` time it was turned on: a block parked before it
/// (left over from an earlier on-demand attachment) is not counted.
pub const OFFCPU_ON_SLOT: u32 = 0;
/// `task_struct.flags`' offset, from the kernel's BTF.
pub const OFFCPU_FLAGS_OFF_SLOT: u32 = 1;
/// Shortest block counted, in nanoseconds.
pub const OFFCPU_MIN_BLOCK_SLOT: u32 = 2;
/// Most stacks taken per CPU per [`OFFCPU_RATE_WINDOW_NS`].
pub const OFFCPU_CAP_SLOT: u32 = 3;
/// Entries of the control array.
pub const OFFCPU_CONTROL_ENTRIES: u32 = 4;

/// The rate cap's window: 1/16 s, so a burst cannot take a whole second's
/// budget at once.
pub const OFFCPU_RATE_WINDOW_NS: u64 = 1_000_000_000 / 16;

/// Threads parked at once (blocked threads whose stack was taken).
pub const OFFCPU_MAX_PENDING: u32 = 16_384;
/// Distinct (stack, generation) keys per counts generation.
pub const OFFCPU_MAX_KEYS: u32 = 8_192;

/// `PF_KTHREAD` in `task_struct.flags`: kernel threads are not profiled
/// off CPU (they have no user stack, and idle workers would fill the
/// maps).
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// The per-CPU rate limiter's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuRate {
    /// Start of the current window (`bpf_ktime_get_ns`).
    pub window_start: u64,
    /// Stacks taken in it.
    pub taken: u64,
    /// `jiffies` when the clock was last read: the window can only have
    /// ended on a later tick, so switches within one tick skip the clock.
    pub last_tick: u64,
}

const _: () = assert!(core::mem::size_of::<OffCpuRate>() == 24);

crate::counters! {
    /// Indexes into the off-CPU per-CPU counter array. Values are ABI.
    pub enum OffCpuCounter [OFFCPU_COUNTERS] {
        /// A user thread left the CPU and its stack was taken.
        Taken = 0 => "taken",
        /// A user thread left the CPU past this CPU's rate cap: its block
        /// is not in the profile.
        Capped = 1 => "capped",
        /// A block shorter than the threshold: not counted.
        Short = 2 => "short",
        /// A block counted into the off-CPU counts.
        Counted = 3 => "counted",
        /// The pending map had no room (or evicted the entry, or the
        /// thread's task-local storage could not be created): the block is
        /// not in the profile.
        PendingFull = 4 => "pending_full",
        /// The counts map had no room: the block was dropped.
        CountsFull = 5 => "counts_map_full",
        /// The incoming task's pid or the outgoing task's flags could not
        /// be read.
        TaskRead = 6 => "task_read",
        /// A user thread whose recent blocks were all short left the CPU
        /// between the 1 in 2^k switch-outs whose stacks are taken: timed,
        /// no stack.
        Thinned = 7 => "thinned",
        /// A thinned block proved long: not in the profile, and the
        /// thread's thinning ends.
        ThinnedLong = 8 => "thinned_long",
    }
}

crate::user_pod!(OffCpuKey, OffCpuPending, OffCpuRate);
