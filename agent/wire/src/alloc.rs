//! `GET /api/v1/alloc?format=json` (`sonde alloc -f json`), `DELETE
//! /api/v1/alloc?pid=` and `GET /api/v1/alloc/sessions`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Query of `DELETE /api/v1/alloc`: end the session on `pid` early.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelQuery {
    pub pid: u32,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    Completed,
    Cancelled,
    TargetExited,
    AgentShutdown,
}

/// A probe as attached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeInfo {
    pub function: String,
    /// Bytes into the function.
    pub offset: u64,
    /// False: the kernel single-steps it (~20 µs a call here).
    pub emulated: bool,
}

/// One stack's figures. Byte figures are estimates when sampling by bytes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StackRow {
    /// Function names, leaf (the allocating caller) first.
    pub frames: Vec<String>,
    pub in_use_bytes: u64,
    pub in_use_count: u64,
    pub alloc_bytes: u64,
    pub alloc_count: u64,
    pub freed_bytes: u64,
    pub freed_count: u64,
    /// Live allocations older than `min_age` at the end.
    pub leak_bytes: u64,
    pub leak_count: u64,
    /// Live bytes at the end minus at the diff snapshot (`--diff`).
    pub growth_bytes: Option<i64>,
}

/// A session's result, as `GET /api/v1/alloc?format=json` returns it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AllocReport {
    pub pid: u32,
    pub comm: String,
    pub libc: String,
    pub duration_ms: u64,
    pub ended: Option<Ended>,
    pub sample_bytes: u64,
    /// True when byte figures are scaled estimates (sampling).
    pub estimated: bool,
    pub min_age_ms: u64,
    /// When recording started and stopped (CLOCK_MONOTONIC ns, the clock
    /// of `bpf_ktime_get_ns`), to line the session up with other events.
    pub started_ns: u64,
    pub ended_ns: u64,
    /// When the `--diff` snapshot was taken, ms into the session.
    pub diff_after_ms: Option<u64>,
    pub probes: Vec<ProbeInfo>,
    /// Kernel-side counters (allocs, frees, untracked frees, drops...).
    pub counters: BTreeMap<String, u64>,
    pub stacks: Vec<StackRow>,
}

impl AllocReport {
    /// Sum of `f` over the stacks.
    pub fn total(&self, f: impl Fn(&StackRow) -> u64) -> u64 {
        self.stacks.iter().map(f).sum()
    }
}

/// A running session, as `GET /api/v1/alloc/sessions` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    pub pid: u32,
    /// `attaching` or `tracking`.
    pub state: String,
    /// Since the session was requested.
    pub elapsed_ms: u64,
}
