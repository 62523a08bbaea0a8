//! CPU profiler ABI: per-stack sample counts aggregated in the kernel.
//!
//! The kernel side writes into one of two map generations (counts + stack
//! traces) chosen by [`PROFILE_GEN_SLOT`] of the control array; the agent
//! flips the generation, lets in-flight samples land, then drains and clears
//! the idle one. Stack ids therefore never get reused under the agent's feet.
//!
//! The first sample of a process also sends its tgid (a `u32`) through a
//! small ring buffer, so the agent reads `/proc/PID/maps` while the process
//! still exists instead of at the next drain.

use crate::COMM_LEN;

/// Key of the in-kernel sample counts: one process, one user stack, one
/// kernel stack, one Python stack, one route tag. Negative stack ids are `-errno` of `bpf_get_stackid` (no
/// stack captured), kept so the sample still counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    /// Thread-group id (the user-visible PID).
    pub tgid: u32,
    pub user_stack_id: i32,
    pub kernel_stack_id: i32,
    /// The Python stack walked for this sample (an id of the generation's
    /// `PY_STACKS_*` map, `>= PY_STACK_ID_BASE`), `0` when the process is
    /// not a CPython the agent marked (or the thread has no Python state),
    /// `-errno` when the walk's stack was not stored.
    pub python_stack_id: i32,
    /// `comm` of the sampled thread.
    pub comm: [u8; COMM_LEN],
    /// The route tag of the request the thread (or, as a hint, its
    /// process) was serving (`crate::route::route_tag`), 0 for none.
    pub route_tag: u32,
    /// Where `route_tag` came from: `crate::route::src`.
    pub route_src: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<StackKey>() == 40);
const _: () = assert!(core::mem::align_of::<StackKey>() == 4);

/// Index of the generation selector (0 or 1) in the control array.
pub const PROFILE_GEN_SLOT: u32 = 0;
/// Entries of the control array.
pub const PROFILE_CONTROL_ENTRIES: u32 = 1;

/// Most distinct (process, stacks) keys per generation; beyond it samples
/// are dropped and counted as [`ProfileCounter::CountsFull`].
pub const PROFILE_MAX_KEYS: u32 = 8_192;
/// Most distinct stacks per generation and per kind (user and kernel share
/// one map).
pub const PROFILE_MAX_STACKS: u32 = 8_192;
/// Deepest stack captured (the kernel's `PERF_MAX_STACK_DEPTH`).
pub const PROFILE_STACK_DEPTH: usize = 127;

crate::counters! {
    /// Indexes into the profiler's per-CPU counter array. Values are ABI.
    pub enum ProfileCounter [PROFILE_COUNTERS] {
        /// Samples taken of a non-idle task (counted or not).
        Samples = 0 => "samples",
        /// Samples of the idle task, not recorded.
        Idle = 1 => "idle",
        /// `bpf_get_stackid` for the user stack failed (kernel thread, no frame
        /// pointer, unreadable user memory): the sample is kept without it.
        UserStackMissing = 2 => "user_stack_missing",
        /// No kernel stack: the sample hit user mode (normal), or the kernel
        /// stack could not be read.
        KernelStackAbsent = 3 => "kernel_stack_absent",
        /// A stack hashed to a bucket holding another stack (-EEXIST).
        StackCollision = 4 => "stack_collision",
        /// The stack trace map had no room (-ENOMEM).
        StackMapFull = 5 => "stack_map_full",
        /// The counts map had no room: the sample was dropped.
        CountsFull = 6 => "counts_map_full",
        /// A first-seen pid could not be announced (ring buffer full); its maps
        /// are then read at the next drain instead.
        NewPidDropped = 7 => "new_pid_dropped",
        /// Samples of a process in `PY_PROCS`: a Python walk was attempted.
        PythonWalks = 8 => "python_walks",
        /// A Python walk stopped at a read that failed (fsbase, thread state,
        /// frame); the frames before it are kept.
        PythonReadFault = 9 => "read_fault",
        /// A Python walk stopped at `PY_FRAMES_MAX` frames.
        PythonTruncated = 10 => "truncated",
        /// A walked Python stack was not stored (id collision, map full).
        PythonStackLost = 11 => "stack_lost",
    }
}

/// Processes remembered as already announced to the agent (LRU).
pub const PROFILE_MAX_SEEN: u32 = 16_384;

crate::user_pod!(StackKey);
