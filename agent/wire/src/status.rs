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
