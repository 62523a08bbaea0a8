//! `GET /api/v1/syscalls` (`sonde syscalls`), `GET
//! /api/v1/syscalls/totals` (`sonde top`) and the leases both take on the
//! syscall hooks (`POST`/`DELETE /api/v1/syscalls/lease`, docs/cli.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Order of the rows of a [`Report`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortBy {
    /// Total time spent in the syscall (like `strace -c`).
    #[default]
    Time,
    /// Number of calls.
    Count,
    /// Number of failed calls.
    Errors,
}

/// Query of `GET /api/v1/syscalls`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyscallsQuery {
    pub pid: Option<u32>,
    /// Matches the comm or the service name.
    pub name: Option<String>,
    #[serde(default)]
    pub sort: SortBy,
    /// Report the calls since this lease was granted instead of the last
    /// `collectors.syscalls.window`.
    pub lease: Option<u64>,
}

/// How the agent runs syscall accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `collectors.syscalls.enabled = true`: attached from start-up to
    /// shutdown, exporting Prometheus metrics.
    AlwaysOn,
    /// Attached only while a client holds a lease.
    OnDemand,
}

/// Query of `POST /api/v1/syscalls/lease`: no `renew` takes a new lease
/// (attaching the hooks if none is live); `renew=ID` extends lease ID.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseQuery {
    pub renew: Option<u64>,
}

/// Query of `DELETE /api/v1/syscalls/lease`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseQuery {
    pub id: u64,
}

/// What `POST /api/v1/syscalls/lease` returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Lease {
    pub id: u64,
    pub mode: Mode,
    /// The lease ends this long after it was granted or last renewed
    /// (clients renew at a third of it).
    pub ttl_ms: u64,
    /// Live leases, this one included.
    pub clients: usize,
    /// How the hooks are attached (e.g. `raw_tracepoint sys_enter/...`).
    pub hook: String,
    /// When this request attached the hooks: how long loading and
    /// attaching took. None when they were already attached.
    pub attach_ms: Option<u64>,
}

/// One syscall's figures over the window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub syscall: String,
    pub calls: u64,
    pub errors: u64,
    pub total_seconds: f64,
    pub avg_seconds: f64,
    /// Upper bound of the histogram bucket holding the median.
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    /// Failures by errno name.
    pub errnos: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub comm: String,
    pub service: String,
}

/// What `GET /api/v1/syscalls` returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Span the rows cover (at most the configured window).
    pub window_seconds: f64,
    pub processes: Vec<ProcessRef>,
    pub rows: Vec<Row>,
    pub total: Row,
}

impl Report {
    /// The row of `syscall`, if it was called in the window.
    pub fn row(&self, syscall: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.syscall == syscall)
    }
}

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

/// What `GET /api/v1/syscalls/totals` returns: cumulative per-process
/// totals, published after every drain. `sonde top` takes two snapshots and
/// divides the difference by the agent-side time between them, so rates
/// are exact for any refresh interval and any number of clients (no state
/// per client).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// When the counters were read, in milliseconds on the agent's
    /// monotonic clock (only differences between snapshots mean anything).
    pub taken_ms: u64,
    /// Live processes with syscall counters, by pid.
    pub processes: Vec<ProcessTotal>,
}
