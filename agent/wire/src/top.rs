//! The syscalls view of `sonde top -o json`: rates the CLI computes from
//! two `GET /api/v1/syscalls/totals` snapshots (one JSON document a frame).

use serde::{Deserialize, Serialize};

/// One row of the syscalls view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcRow {
    pub pid: u32,
    pub comm: String,
    pub service: String,
    pub calls_per_second: f64,
    pub errors_per_second: f64,
    /// Seconds spent inside syscalls per second of wall time (1.0 = one
    /// thread always in a syscall; blocking calls count while they wait).
    pub syscall_seconds_per_second: f64,
    /// The syscall with the most calls in the interval.
    pub top_syscall: String,
    pub top_syscall_calls_per_second: f64,
}

/// One frame of the syscalls view (also the `-o json` document).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyscallsFrame {
    /// Always `syscalls`.
    pub view: String,
    /// Agent-side time between the two snapshots.
    pub interval_seconds: f64,
    pub calls_per_second: f64,
    pub errors_per_second: f64,
    pub syscall_seconds_per_second: f64,
    /// Processes with at least one call in the interval (before --limit).
    pub active_processes: usize,
    pub processes: Vec<ProcRow>,
}
