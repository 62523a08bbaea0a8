//! The control API's request and response types (HTTP/JSON on the agent's
//! Unix socket) and the health report of the TCP listener. The agent's
//! handlers and collectors produce them, `sonde <command>` and the
//! end-to-end tests decode them, so the JSON has one definition. The field
//! names are the public `-o json` format documented in docs/cli.md.

pub mod alerts;
pub mod alloc;
pub mod http;
pub mod memory;
pub mod processes;
pub mod profile;
pub mod status;
pub mod syscalls;
pub mod top;

use serde::{Deserialize, Serialize};

/// Body of every control-API error: the CLI prints `error` as is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// Health of a component (collector, alert engine, start-up).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    /// Running with reduced function (e.g. a fallback hook, dropped events).
    Degraded,
    /// Not running.
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
        }
    }
}

#[cfg(test)]
mod tests {
    //! The JSON is a public interface (`-o json`, docs/cli.md): these pin
    //! the field names and shapes that moving the types must not change.

    use super::{
        HealthStatus,
        alloc::{AllocReport, Ended},
        status::{HealthReport, NamedHealth},
        syscalls::SortBy,
    };

    #[test]
    fn health_components_are_flat_name_status_reason() {
        let r = HealthReport {
            status: HealthStatus::Degraded,
            ready: true,
            components: vec![NamedHealth {
                name: "process".into(),
                status: HealthStatus::Healthy,
                reason: "tp_btf".into(),
            }],
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"status":"degraded","ready":true,"components":[{"name":"process","status":"healthy","reason":"tp_btf"}]}"#
        );
    }

    #[test]
    fn enums_are_lowercase_or_snake_case() {
        assert_eq!(
            serde_json::to_string(&Ended::TargetExited).unwrap(),
            r#""target_exited""#
        );
        assert_eq!(
            serde_json::from_str::<SortBy>(r#""errors""#).unwrap(),
            SortBy::Errors
        );
        let r = AllocReport::default();
        let v = serde_json::to_value(&r).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(!keys.contains(&"frames"), "{keys:?}");
        assert!(
            keys.contains(&"stacks") && keys.contains(&"diff_after_ms"),
            "{keys:?}"
        );
    }
}
