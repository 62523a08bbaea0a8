//! `GET /api/v1/profile`: a CPU profile of the next `duration` (the handler
//! waits), or of the retained window with `last=true`, filtered by pid,
//! process name, service or HTTP route, as pprof, folded stacks, SVG, a
//! top table or per-line sample counts; `by=route` splits by route first;
//! `off_cpu=true` gives the off-CPU profile, the same formats weighted by
//! blocked nanoseconds; when off-CPU is on demand (the default), the
//! request attaches its hook for its window (profile/offcpu_demand.rs).

use std::time::{Duration, SystemTime};

use axum::{
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use sonde_wire::profile::ProfileQuery;

use super::{AppState, error};
use crate::{
    collectors::profile::{
        lines,
        offcpu::{self, OffCpuStore},
        pprof, render,
        store::{Filter, Profile},
    },
    duration::parse_duration,
};

/// Longest profile a request may wait for.
pub const MAX_DURATION: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pprof,
    Folded,
    Svg,
    Top,
    Lines,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pprof" => Self::Pprof,
            "folded" => Self::Folded,
            "svg" => Self::Svg,
            "top" => Self::Top,
            "lines" => Self::Lines,
            _ => return None,
        })
    }
}

pub async fn profile(State(s): State<AppState>, Query(q): Query<ProfileQuery>) -> Response {
    let format = match Format::parse(q.format.as_deref().unwrap_or("pprof")) {
        Some(f) => f,
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "format must be one of pprof, folded, svg, top, lines",
            );
        }
    };
    if q.off_cpu && format == Format::Lines {
        return error(
            StatusCode::BAD_REQUEST,
            "format lines is for CPU profiles; off-CPU profiles are pprof, folded, svg or top",
        );
    }
    let duration = match q.duration.as_deref().map(parse_duration).transpose() {
        Ok(d) => d.unwrap_or(Duration::from_secs(10)),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if duration.is_zero() || duration > MAX_DURATION {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "duration must be between 1ms and {}s",
                MAX_DURATION.as_secs()
            ),
        );
    }
    let by_route = match q.by.as_deref() {
        None => false,
        Some("route") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("by must be `route`, not {other:?}"),
            );
        }
    };
    let Some(store) = s
        .handles
        .get::<crate::collectors::profile::store::ProfileStore>()
    else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the profile collector is disabled (collectors.profile.enabled = false)",
        );
    };
    // On demand, the request holds the off-CPU hook attached for its
    // window (dropped with the handler, also when the client goes away).
    let mut _lease = None;
    let store = match s.handles.get::<OffCpuStore>() {
        Some(o) if q.off_cpu => {
            if let Some(d) = o.demand.as_ref().filter(|_| !q.last) {
                match d.acquire().await {
                    Ok(l) => _lease = Some(l),
                    Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                }
            }
            o.store
        }
        _ => store,
    };
    let not_running = |e: crate::collectors::profile::store::StoreError| {
        if q.off_cpu {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "off-CPU profiling is not running (see `sonde status`)",
            )
        } else {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    };
    if let Some(pid) = q.pid
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !store.has_pid(pid)
    {
        return error(
            StatusCode::NOT_FOUND,
            format!("no process with pid {pid}, and no samples of it in the retained window"),
        );
    }
    let filter = Filter {
        pid: q.pid,
        name: q.name.clone(),
        service: q.service.clone(),
        route: q.route.clone(),
    };
    let start = match store.flush().await {
        Ok(t) => t,
        Err(e) => return not_running(e),
    };
    let profile = if q.last {
        store.last_window(&filter)
    } else {
        // Wait out the rest of `duration` from the flip, however long the
        // flush itself took.
        let waited = SystemTime::now().duration_since(start).unwrap_or_default();
        tokio::time::sleep(duration.saturating_sub(waited)).await;
        let end = match store.flush().await {
            Ok(t) => t,
            Err(e) => return not_running(e),
        };
        store.cut(&filter, start, end)
    };
    if q.off_cpu {
        return respond_off_cpu(
            &profile,
            format,
            &title(&q),
            q.function.as_deref(),
            by_route,
        );
    }
    respond(
        &profile,
        format,
        &title(&q),
        q.function.as_deref(),
        by_route,
    )
}

fn title(q: &ProfileQuery) -> String {
    let what = match (q.pid, &q.name, &q.service) {
        (Some(p), _, _) => format!("pid {p}"),
        (_, Some(n), _) => n.clone(),
        (_, _, Some(svc)) => format!("service {svc}"),
        _ => "all processes".into(),
    };
    let kind = if q.off_cpu { "off-CPU" } else { "CPU" };
    format!("sonde {kind} profile: {what}")
}

/// An off-CPU profile: the formats of a CPU profile, weighted by blocked
/// nanoseconds (`X-Sonde-Samples` is then the total in nanoseconds).
fn respond_off_cpu(
    p: &Profile,
    format: Format,
    title: &str,
    function: Option<&str>,
    by_route: bool,
) -> Response {
    let (ctype, body): (&str, Vec<u8>) = match format {
        Format::Pprof => ("application/vnd.google.protobuf+gzip", offcpu::pprof(p)),
        Format::Top if by_route => (
            "text/plain; charset=utf-8",
            format!("{}\n{}", offcpu::routes_table(p), offcpu::top_table(p, 40)).into_bytes(),
        ),
        Format::Top => (
            "text/plain; charset=utf-8",
            offcpu::top_table(p, 40).into_bytes(),
        ),
        Format::Svg => match render::svg_with(p, title, by_route, "ns") {
            Ok(b) => ("image/svg+xml", b),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Format::Folded | Format::Lines => return respond(p, format, title, function, by_route),
    };
    (
        [
            (header::CONTENT_TYPE, ctype.to_owned()),
            (
                header::HeaderName::from_static("x-sonde-samples"),
                p.total().to_string(),
            ),
        ],
        body,
    )
        .into_response()
}

fn respond(
    p: &Profile,
    format: Format,
    title: &str,
    function: Option<&str>,
    by_route: bool,
) -> Response {
    let samples = p.total().to_string();
    let (ctype, body): (&str, Vec<u8>) = match format {
        Format::Pprof => ("application/vnd.google.protobuf+gzip", pprof::encode(p)),
        Format::Folded => (
            "text/plain; charset=utf-8",
            render::folded_with(p, by_route).into_bytes(),
        ),
        Format::Top if by_route => (
            "text/plain; charset=utf-8",
            format!("{}\n{}", render::routes_table(p), render::top_table(p, 40)).into_bytes(),
        ),
        Format::Top => (
            "text/plain; charset=utf-8",
            render::top_table(p, 40).into_bytes(),
        ),
        Format::Lines => (
            "text/plain; charset=utf-8",
            lines::lines_table(p, function, 60).into_bytes(),
        ),
        Format::Svg => match render::svg_with(p, title, by_route, "samples") {
            Ok(b) => ("image/svg+xml", b),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
    };
    (
        [
            (header::CONTENT_TYPE, ctype.to_owned()),
            (header::HeaderName::from_static("x-sonde-samples"), samples),
        ],
        body,
    )
        .into_response()
}
