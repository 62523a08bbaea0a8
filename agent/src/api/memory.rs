//! `GET /api/v1/memory`: the memory collector's growth by stack (resident
//! growth from page faults, mapped or unmapped bytes), cumulative since the
//! agent started, for a pid, a process/service name or everything, as a
//! top table, folded stacks, pprof (`space`/`bytes`) or JSON.

use axum::{
    Json,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use sonde_wire::memory::{Group, MemoryAnswer, MemoryQuery, MemoryRow};

use super::{AppState, error};
use crate::collectors::{
    memory::render::bytes,
    profile::{pprof, render::folded_line, store::Filter},
};

pub async fn memory(State(s): State<AppState>, Query(q): Query<MemoryQuery>) -> Response {
    let Some(group) = Group::parse(q.kind.as_deref().unwrap_or("rss")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "kind must be one of rss, mapped, unmapped",
        );
    };
    let format = q.format.as_deref().unwrap_or("top");
    if !matches!(format, "top" | "folded" | "pprof" | "json") {
        return error(
            StatusCode::BAD_REQUEST,
            "format must be one of top, folded, pprof, json",
        );
    }
    let Some(memory) = s
        .handles
        .get::<crate::collectors::memory::store::MemoryStore>()
    else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the memory collector is disabled (collectors.memory.enabled = false)",
        );
    };
    if let Some(pid) = q.pid
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !memory.has_pid(pid)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("no process with pid {pid}, and no memory rows of it"),
        );
    }
    if let Err(e) = memory.flush().await {
        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    let filter = Filter {
        pid: q.pid,
        name: q.name.clone(),
        service: None,
        route: None,
    };
    let (p, events) = memory.profile(group, &filter);
    let mut order: Vec<usize> = (0..p.samples.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(p.samples[i].count));
    let text = "text/plain; charset=utf-8";
    match format {
        "json" => Json(MemoryAnswer {
            kind: group,
            seconds: p.duration.as_secs_f64(),
            rows: order
                .iter()
                .map(|&i| {
                    let x = &p.samples[i];
                    MemoryRow {
                        pid: x.pid,
                        comm: x.comm.to_string(),
                        service: x.service.to_string(),
                        bytes: x.count,
                        events: events[i],
                        frames: x.stack.iter().map(|f| f.function.to_string()).collect(),
                    }
                })
                .collect(),
        })
        .into_response(),
        "folded" => {
            let mut lines: Vec<String> = p
                .samples
                .iter()
                .map(|x| format!("{} {}", folded_line(x), x.count))
                .collect();
            lines.sort();
            let mut body = lines.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            ([(header::CONTENT_TYPE, text)], body).into_response()
        }
        "pprof" => {
            let msg =
                pprof::build_values(&p, &[("space", "bytes"), ("events", "count")], |i, x| {
                    vec![x.count as i64, events[i] as i64]
                });
            (
                [(header::CONTENT_TYPE, "application/vnd.google.protobuf+gzip")],
                pprof::gzip(&msg),
            )
                .into_response()
        }
        _ => {
            let what = match group {
                Group::Rss => "resident growth (page faults x page size, sampled)",
                Group::Mapped => "address space mapped (mmap, brk, mremap growth)",
                Group::Unmapped => "address space released (munmap, brk, mremap shrink)",
            };
            let total: u64 = p.samples.iter().map(|x| x.count).sum();
            let mut out = format!(
                "{what} over the last {:.0}s: {} in {} stacks\n",
                p.duration.as_secs_f64(),
                bytes(total),
                p.samples.len()
            );
            let rows: Vec<Vec<String>> = order
                .iter()
                .take(30)
                .map(|&i| {
                    let x = &p.samples[i];
                    let mut st: Vec<&str> = x.stack.iter().take(4).map(|f| &*f.function).collect();
                    if x.stack.len() > 4 {
                        st.push("...");
                    }
                    if st.is_empty() {
                        st.push("[no stack]");
                    }
                    vec![
                        bytes(x.count),
                        events[i].to_string(),
                        x.pid.to_string(),
                        x.comm.to_string(),
                        st.join(" < "),
                    ]
                })
                .collect();
            out.push_str(&crate::cli::output::table(
                &["BYTES", "EVENTS", "PID", "COMM", "STACK (leaf first)"],
                &rows,
            ));
            ([(header::CONTENT_TYPE, text)], out).into_response()
        }
    }
}
