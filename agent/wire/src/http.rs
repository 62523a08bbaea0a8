//! `GET /api/v1/http?pid=&name=&client=` (`sonde http`): per-route RED.

use serde::{Deserialize, Serialize};

/// Query of `GET /api/v1/http`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpQuery {
    pub pid: Option<u32>,
    /// Matches the service or the process name.
    pub name: Option<String>,
    /// Outgoing (client) requests instead of served ones.
    #[serde(default)]
    pub client: bool,
}

/// One row of `sonde http` (and of `/api/v1/http`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteRow {
    /// `server` or `client`.
    pub role: String,
    pub service: String,
    pub pids: Vec<u32>,
    pub method: String,
    pub route: String,
    /// Requests completed since the agent started.
    pub requests: u64,
    /// Requests per second over the last 10 s.
    pub rate: f64,
    /// Share of 5xx responses (server) or 4xx+5xx (client), in percent.
    pub error_pct: f64,
    pub p50_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    /// Requests in flight at the last scan of the kernel's connection table.
    pub in_flight: u64,
    /// CPU the route's requests used, in ms per request (server rows; CPU
    /// samples attributed to the route since the agent started, divided
    /// by `requests`). `None` when the profiler does not run.
    #[serde(default)]
    pub cpu_ms_per_request: Option<f64>,
}
