//! The agent's HTTP surfaces: metrics and health on TCP (safe to expose to a
//! scraper), the control API on a Unix socket (stacks and paths are
//! sensitive, so it is never on TCP unless configured).

pub mod alloc;
pub mod control;
pub mod http;
pub mod memory;
pub mod profile;
pub mod tcp;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use sonde_wire::ApiError;
pub use sonde_wire::status::{HealthReport, NamedHealth};

use crate::{
    collectors::{Collector, ComponentHealth, HealthStatus},
    config::Config,
    features::Features,
    process_table::ProcessTable,
    telemetry::Telemetry,
};

/// Everything the handlers read. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub telemetry: Telemetry,
    pub config: Arc<Config>,
    pub started: Instant,
    pub features: Arc<Mutex<Features>>,
    pub collectors: Arc<Mutex<Vec<Box<dyn Collector>>>>,
    pub processes: ProcessTable,
    /// The collectors' query handles (`ProfileStore`, `HttpQuery`,
    /// `SyscallsHandle`, `MemoryStore`); absent when a collector is
    /// disabled.
    pub handles: crate::collectors::kit::Handles,
    /// Set once every enabled collector has been started (or has failed).
    pub startup_done: Arc<AtomicBool>,
    /// The alert rule engine, when `alerts.enabled`.
    pub alerts: Option<crate::alerts::AlertEngine>,
    /// `sonde alloc` sessions (one per pid).
    pub alloc: crate::collectors::memory::session::Sessions,
    /// The running config and the outcome of reloads (SIGHUP).
    pub reload: crate::reload::Reloader,
}

/// A control-API error answer: `code` with `{"error": msg}`, which the CLI
/// prints as is.
pub fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(ApiError { error: msg.into() })).into_response()
}

fn named(name: impl Into<String>, health: ComponentHealth) -> NamedHealth {
    NamedHealth {
        name: name.into(),
        status: health.status,
        reason: health.reason,
    }
}

impl AppState {
    pub fn collector_health(&self) -> Vec<NamedHealth> {
        let collectors = self.collectors.lock().unwrap_or_else(|e| e.into_inner());
        collectors
            .iter()
            .map(|c| named(c.name(), c.health()))
            .collect()
    }

    /// Ready when start-up is over and at least one always-on collector is
    /// running: an agent with nothing attached (an on-demand collector at
    /// most) should not receive traffic or be considered rolled out.
    pub fn health_report(&self) -> HealthReport {
        let (mut components, any_running) = {
            let collectors = self.collectors.lock().unwrap_or_else(|e| e.into_inner());
            let running = collectors
                .iter()
                .any(|c| c.always_on() && c.health().status != HealthStatus::Unhealthy);
            let health: Vec<NamedHealth> = collectors
                .iter()
                .map(|c| named(c.name(), c.health()))
                .collect();
            (health, running)
        };
        let startup_done = self.startup_done.load(Ordering::Acquire);
        let ready = startup_done && any_running;
        if let Some(a) = &self.alerts {
            components.push(named("alerts", a.health()));
        }
        components.push(named("config", self.reload.health()));
        components.push(named(
            "startup",
            if startup_done {
                ComponentHealth::healthy("collectors started")
            } else {
                ComponentHealth::degraded("starting collectors")
            },
        ));
        let worst = components
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Healthy);
        // The agent as a whole is unhealthy only when nothing runs; a single
        // failed collector makes it degraded.
        let status = match worst {
            HealthStatus::Unhealthy if any_running => HealthStatus::Degraded,
            s => s,
        };
        HealthReport {
            status,
            ready,
            components,
        }
    }
}
