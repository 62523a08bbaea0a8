//! `GET /api/v1/alloc`: runs a `sonde alloc` session on one process (the
//! handler waits for it) and answers with its report as a top table,
//! folded stacks, pprof or JSON. `DELETE /api/v1/alloc?pid=P` ends the
//! session on P early; its GET then answers with what was gathered.

use std::time::Duration;

use axum::{
    Json,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use sonde_wire::alloc::CancelQuery;

use super::{AppState, error};
use crate::{
    collectors::memory::{
        libc::LibcError,
        render::{self, Measure},
        session::{MAX_DURATION, Request, SessionError},
    },
    duration::parse_duration,
};

/// Largest `sample_bytes`.
pub const MAX_SAMPLE_BYTES: u64 = 1 << 30;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocQuery {
    pub pid: Option<u32>,
    /// Default 30s, at most 10m.
    pub duration: Option<String>,
    /// Mean bytes between sampled allocations; 0 (default): all.
    pub sample_bytes: Option<u64>,
    /// Default 1s.
    pub min_age: Option<String>,
    #[serde(default)]
    pub diff: bool,
    /// top (default), folded, pprof, json.
    pub format: Option<String>,
    /// For folded: in_use (default), allocated, leak, growth.
    pub measure: Option<String>,
}

fn bad(msg: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, msg)
}

fn bad_boxed(msg: impl Into<String>) -> Box<Response> {
    Box::new(bad(msg))
}

fn parse_request(q: &AllocQuery) -> Result<Request, Box<Response>> {
    let pid = match q.pid {
        Some(0) | None => return Err(bad_boxed("pid is required (a process id > 0)")),
        Some(p) => p,
    };
    let duration = q
        .duration
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(bad_boxed)?
        .unwrap_or(Duration::from_secs(30));
    if duration < Duration::from_millis(100) || duration > MAX_DURATION {
        return Err(bad_boxed(format!(
            "duration must be between 100ms and {}s",
            MAX_DURATION.as_secs()
        )));
    }
    let min_age = q
        .min_age
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(bad_boxed)?
        .unwrap_or(Duration::from_secs(1));
    let sample_bytes = q.sample_bytes.unwrap_or(0);
    if sample_bytes > MAX_SAMPLE_BYTES {
        return Err(bad_boxed(format!(
            "sample_bytes must be at most {MAX_SAMPLE_BYTES}"
        )));
    }
    Ok(Request {
        pid,
        duration,
        sample_bytes,
        min_age,
        diff: q.diff,
    })
}

pub async fn alloc(State(s): State<AppState>, Query(q): Query<AllocQuery>) -> Response {
    let format = q.format.as_deref().unwrap_or("top");
    if !matches!(format, "top" | "folded" | "pprof" | "json") {
        return bad("format must be one of top, folded, pprof, json");
    }
    let measure = match q.measure.as_deref().unwrap_or("in_use") {
        "in_use" => Measure::InUse,
        "allocated" => Measure::Allocated,
        "leak" => Measure::Leak,
        "growth" => Measure::Growth,
        _ => return bad("measure must be one of in_use, allocated, leak, growth"),
    };
    let req = match parse_request(&q) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let report = match s.alloc.run(req).await {
        Ok(r) => r,
        Err(SessionError::Target(e @ (LibcError::NoProcess(_) | LibcError::NoLibc(_)))) => {
            return bad(e.to_string());
        }
        Err(e @ SessionError::Busy(_)) => return error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let text = "text/plain; charset=utf-8";
    let (ctype, body): (&str, Vec<u8>) = match format {
        "json" => return Json(&report.summary).into_response(),
        "folded" => (text, render::folded(&report, measure).into_bytes()),
        "pprof" => (
            "application/vnd.google.protobuf+gzip",
            render::pprof(&report),
        ),
        _ => (text, render::top(&report, 30).into_bytes()),
    };
    ([(header::CONTENT_TYPE, ctype.to_owned())], body).into_response()
}

/// Ends the session on `pid` early.
pub async fn cancel(State(s): State<AppState>, Query(q): Query<CancelQuery>) -> Response {
    if s.alloc.cancel(q.pid) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!("no allocation session on pid {}", q.pid),
        )
    }
}

/// The sessions running now (pid, attaching/tracking).
pub async fn sessions(State(s): State<AppState>) -> Response {
    Json(s.alloc.list()).into_response()
}
