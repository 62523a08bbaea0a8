//! Process lifecycle events (exec and exit), sent through a ring buffer.

use crate::COMM_LEN;

/// What happened to a process. Values are part of the ABI; never reuse one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessEventKind {
    Exec = 1,
    Exit = 2,
}

impl ProcessEventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Exec),
            2 => Some(Self::Exit),
            _ => None,
        }
    }
}

/// One exec or exit of a thread-group leader.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessEvent {
    /// A [`ProcessEventKind`] value.
    pub kind: u32,
    /// Thread-group id (the user-visible PID).
    pub tgid: u32,
    /// `bpf_ktime_get_boot_ns()` when the event fired.
    pub ktime_ns: u64,
    /// cgroup v2 id of the task (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(core::mem::size_of::<ProcessEvent>() == 40);
const _: () = assert!(core::mem::align_of::<ProcessEvent>() == 8);

crate::counters! {
    /// Indexes into the process collector's per-CPU counter array.
    pub enum ProcessCounter [PROCESS_COUNTERS] {
        /// The ring buffer was full, so an event was dropped.
        RingbufFull = 0 => "ringbuf_full",
        /// Events seen, whether or not they were delivered.
        Seen = 1 => "seen",
    }
}

crate::user_pod!(ProcessEvent);
