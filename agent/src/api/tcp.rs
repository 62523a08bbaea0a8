//! TCP listener: /metrics, /health/live, /health/ready, /health.

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use super::AppState;
use crate::collectors::HealthStatus;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health", get(health))
        .route("/", get(index))
        .with_state(state)
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.telemetry.encode(),
    )
}

/// Liveness: the process serves requests. Never depends on collectors, so a
/// kernel that rejects a hook does not get the agent restarted in a loop.
async fn live() -> &'static str {
    "ok\n"
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    let r = s.health_report();
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(r))
}

async fn health(State(s): State<AppState>) -> impl IntoResponse {
    let r = s.health_report();
    let code = if r.status == HealthStatus::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(r))
}

async fn index() -> &'static str {
    "sonde agent\n\n/metrics        Prometheus metrics\n/health         component health (JSON)\n/health/live    liveness\n/health/ready   readiness\n"
}
