//! `GET /api/v1/http?pid=&name=&client=`: per-route RED summary.

use axum::{
    Json,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use sonde_wire::http::HttpQuery;

use super::{AppState, error};
use crate::collectors::http::HttpFilter;

pub async fn http(State(s): State<AppState>, Query(q): Query<HttpQuery>) -> Response {
    let f = HttpFilter {
        pid: q.pid,
        name: q.name,
        client: q.client,
    };
    let rows = s
        .handles
        .get::<crate::collectors::http::HttpQuery>()
        .and_then(|q| q.rows(&f, &s.processes));
    match rows {
        Some(rows) => Json(rows).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the http collector is not running (disabled, or it failed to attach: see `sonde status`)",
        ),
    }
}
