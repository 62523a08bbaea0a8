//! `GET /api/v1/status` (`sonde status`) and the TCP listener's `/health`
//! and `/health/ready`.

use serde::{Deserialize, Serialize};

use crate::HealthStatus;

/// What `GET /api/v1/status` returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: f64,
    pub kernel: String,
    pub ready: bool,
    pub status: HealthStatus,
    pub listen: String,
    pub socket: String,
    pub features: Vec<FeatureOut>,
    pub collectors: Vec<CollectorOut>,
    pub processes_tracked: usize,
    /// The config file and the outcome of the last reload (SIGHUP).
    #[serde(default)]
    pub config: ConfigStatus,
}

/// Where the running config came from and what reloads did to it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// The file given with `--config` (none: built-in defaults).
    pub path: Option<String>,
    /// Reloads applied, and refused because the file was invalid.
    pub reloads_ok: u64,
    pub reloads_rejected: u64,
    pub last_reload: Option<ReloadOut>,
    /// Keys whose value in the file differs from the running one because
    /// they only take effect at start (dotted names, e.g.
    /// `collectors.profile.frequency_hz`).
    pub restart_needed: Vec<String>,
}

/// One reload attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadOut {
    /// RFC 3339 time of the attempt.
    pub at: String,
    /// `ok` or `rejected`.
    pub result: String,
    /// Why the file was refused (names the key and line).
    pub error: Option<String>,
    /// Keys changed by this reload and applied at once.
    pub applied: Vec<String>,
}

/// A kernel feature as probed at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeatureOut {
    pub name: String,
    pub available: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectorOut {
    pub name: String,
    pub status: HealthStatus,
    pub reason: String,
}

/// One component of the health report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamedHealth {
    pub name: String,
    pub status: HealthStatus,
    /// Why it is not healthy, or a short note on what it does.
    pub reason: String,
}

/// What `/health` and `/health/ready` return.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthReport {
    pub status: HealthStatus,
    pub ready: bool,
    pub components: Vec<NamedHealth>,
}

impl Status {
    /// The feature called `name`, if the agent probed it.
    pub fn feature(&self, name: &str) -> Option<&FeatureOut> {
        self.features.iter().find(|f| f.name == name)
    }

    /// The collector called `name`, if it is configured.
    pub fn collector(&self, name: &str) -> Option<&CollectorOut> {
        self.collectors.iter().find(|c| c.name == name)
    }
}
