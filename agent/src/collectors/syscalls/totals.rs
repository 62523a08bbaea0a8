//! Cumulative per-process totals for `sonde top`: the agent publishes them
//! after every drain; the CLI takes two snapshots and divides the
//! difference by the agent-side time between them, so rates are exact for
//! any refresh interval and any number of clients (no state per client).

use serde::{Deserialize, Serialize};

/// Counters of one syscall of one process since the collector first saw
/// that (process, syscall) pair. They only grow while the process lives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallTotal {
    pub syscall: String,
    pub calls: u64,
    pub errors: u64,
    /// Time spent inside the calls (enter to exit), in nanoseconds.
    pub total_ns: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessTotal {
    pub pid: u32,
    pub comm: String,
    pub service: String,
    pub syscalls: Vec<SyscallTotal>,
}

/// What `GET /api/v1/syscalls/totals` returns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// When the counters were read, in milliseconds on the agent's
    /// monotonic clock (only differences between snapshots mean anything).
    pub taken_ms: u64,
    /// Live processes with syscall counters, by pid.
    pub processes: Vec<ProcessTotal>,
}
