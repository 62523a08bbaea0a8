//! `GET /api/v1/alerts[?all=true]` (`sonde alerts`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Label or annotation names to values.
pub type Labels = BTreeMap<String, String>;

/// Query of `GET /api/v1/alerts`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    /// Add the history of resolved alerts.
    #[serde(default)]
    pub all: bool,
}

/// What `GET /api/v1/alerts` returns.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AlertsReport {
    pub enabled: bool,
    pub rules: usize,
    pub interval_seconds: f64,
    pub evaluations: u64,
    pub last_evaluation: Option<String>,
    pub last_error: Option<String>,
    /// Pending and firing alerts.
    pub alerts: Vec<AlertOut>,
    /// Resolved alerts, newest first (only with `?all=true`).
    pub history: Vec<AlertOut>,
    pub receivers: Vec<ReceiverStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertOut {
    pub name: String,
    pub severity: String,
    pub state: AlertState,
    /// `None` when the value is not a finite number (e.g. x/0).
    pub value: Option<f64>,
    pub labels: Labels,
    pub annotations: Labels,
    pub active_at: String,
    /// Seconds in the current state (pending/firing) or that it lasted (resolved).
    pub since_seconds: f64,
    pub fired_at: Option<String>,
    pub resolved_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// Kind of notification receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    Alertmanager,
    Webhook,
}

/// Delivery status of one receiver.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReceiverStatus {
    pub kind: Option<ReceiverKind>,
    pub url: String,
    /// Alerts delivered (each alert of a batch counts once).
    pub sent: u64,
    /// Failed delivery attempts.
    pub failed: u64,
    /// Notifications dropped because the outbox was full.
    pub dropped: u64,
    /// Notifications waiting (for the receiver to come back).
    pub queued: u64,
    pub last_error: Option<String>,
    pub last_success: Option<String>,
}
