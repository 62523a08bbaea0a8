//! Control API (HTTP/JSON on the Unix socket): what `sonde <command>` asks.

use std::{
    io,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::Path,
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use sonde_wire::{
    alerts::{AlertsQuery, AlertsReport},
    processes::{ProcessInfo, ProcessQuery},
    status::{CollectorOut, FeatureOut, NamedHealth, Status},
    syscalls::{LeaseQuery, ReleaseQuery, SyscallsQuery},
};

use super::{AppState, error};
use crate::{
    collectors::syscalls::{Filter, Refused, SyscallsHandle},
    features::Feature,
};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/processes", get(processes))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/syscalls", get(syscalls))
        .route("/api/v1/syscalls/totals", get(syscall_totals))
        .route(
            "/api/v1/syscalls/lease",
            post(syscall_lease).delete(syscall_release),
        )
        .route("/api/v1/profile", get(super::profile::profile))
        .route("/api/v1/http", get(super::http::http))
        .route(
            "/api/v1/alloc",
            get(super::alloc::alloc).delete(super::alloc::cancel),
        )
        .route("/api/v1/alloc/sessions", get(super::alloc::sessions))
        .route("/api/v1/memory", get(super::memory::memory))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; this agent may be older than the CLI",
    )
}

fn feature_out(f: &Feature) -> FeatureOut {
    FeatureOut {
        name: f.name.to_owned(),
        available: f.available,
        detail: f.detail.clone(),
    }
}

fn collector_out(h: NamedHealth) -> CollectorOut {
    CollectorOut {
        name: h.name,
        status: h.status,
        reason: h.reason,
    }
}

async fn status(State(s): State<AppState>) -> Json<Status> {
    let report = s.health_report();
    let features = s.features.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_seconds: s.started.elapsed().as_secs_f64(),
        kernel: features.kernel.clone(),
        ready: report.ready,
        status: report.status,
        listen: s.config.api.listen.to_string(),
        socket: s.config.api.socket.display().to_string(),
        features: features.features.iter().map(feature_out).collect(),
        collectors: s
            .collector_health()
            .into_iter()
            .map(collector_out)
            .collect(),
        processes_tracked: s.processes.list().iter().filter(|p| !p.exited).count(),
        config: s.reload.status(),
    })
}

async fn processes(
    State(s): State<AppState>,
    Query(q): Query<ProcessQuery>,
) -> Json<Vec<ProcessInfo>> {
    let list = s
        .processes
        .list()
        .into_iter()
        .filter(|p| q.pid.is_none_or(|pid| p.pid == pid))
        .filter(|p| {
            q.name
                .as_deref()
                .is_none_or(|n| p.comm == n || p.service == n)
        })
        .collect();
    Json(list)
}

async fn alerts(State(s): State<AppState>, Query(q): Query<AlertsQuery>) -> Json<AlertsReport> {
    Json(match &s.alerts {
        Some(a) => a.report(q.all),
        None => AlertsReport::default(),
    })
}

/// The answer when syscall accounting is configured off entirely.
fn syscalls_off() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "syscall accounting is off (collectors.syscalls.enabled = false and on_demand = false)",
    )
}

fn refused(e: Refused) -> Response {
    let code = match e {
        Refused::NotAttached => StatusCode::CONFLICT,
        Refused::UnknownLease(_) => StatusCode::NOT_FOUND,
        Refused::AttachFailed(_) | Refused::Stopped => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(code, e.to_string())
}

/// `sonde syscalls`: an `strace -c` table for the last window, or for the
/// calls since a lease was granted.
async fn syscalls(State(s): State<AppState>, Query(q): Query<SyscallsQuery>) -> Response {
    let Some(handle) = s.handles.get::<SyscallsHandle>() else {
        return syscalls_off();
    };
    let filter = Filter {
        pid: q.pid,
        name: q.name,
    };
    match handle.report(&filter, q.sort, q.lease).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => refused(e),
    }
}

/// `sonde top`: cumulative per-process syscall totals (drained now).
async fn syscall_totals(State(s): State<AppState>) -> Response {
    let Some(handle) = s.handles.get::<SyscallsHandle>() else {
        return syscalls_off();
    };
    match handle.totals().await {
        Ok(t) => Json(t).into_response(),
        Err(e) => refused(e),
    }
}

/// A lease on the syscall hooks (attaching them in on-demand mode), or its
/// renewal.
async fn syscall_lease(State(s): State<AppState>, Query(q): Query<LeaseQuery>) -> Response {
    let Some(handle) = s.handles.get::<SyscallsHandle>() else {
        return syscalls_off();
    };
    match handle.acquire(q.renew).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => refused(e),
    }
}

/// Ends a lease (detaching the hooks in on-demand mode if it was the last).
async fn syscall_release(State(s): State<AppState>, Query(q): Query<ReleaseQuery>) -> Response {
    let Some(handle) = s.handles.get::<SyscallsHandle>() else {
        return syscalls_off();
    };
    match handle.release(q.id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => refused(Refused::UnknownLease(q.id)),
        Err(e) => refused(e),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another sonde agent is already serving {0}")]
    InUse(String),
    #[error("{path} exists and is not a socket; refusing to remove it")]
    NotSocket { path: String },
    #[error(
        "cannot create the control socket {path}: {source} (set api.socket or SONDE_API__SOCKET)"
    )]
    Io { path: String, source: io::Error },
}

/// Binds the control socket with mode 0600, replacing a stale socket left by
/// an agent that died, but never one that a live agent still serves.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, SocketError> {
    let p = path.display().to_string();
    let io_err = |source| SocketError::Io {
        path: p.clone(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(SocketError::NotSocket { path: p });
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse(p)),
            Err(_) => {
                tracing::info!(socket = %p, "removing stale control socket");
                std::fs::remove_file(path).map_err(io_err)?;
            }
        }
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    // Create it private from the start: umask 077 around bind, so there is
    // no window in which another user could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let listener = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}
