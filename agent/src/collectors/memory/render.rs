//! Renderings of an allocation report: a top table, folded stacks and
//! pprof (through the CPU profiler's encoder).

use std::time::Duration;

use super::session::{Report, StackRow};
use crate::collectors::profile::{
    pprof,
    render::folded_line,
    store::{Profile, Sample},
};

/// Human-readable bytes (binary units).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn signed_bytes(n: i64) -> String {
    if n < 0 {
        format!("-{}", bytes(n.unsigned_abs()))
    } else {
        format!("+{}", bytes(n as u64))
    }
}

/// Frames joined `leaf < caller < ...`, at most `depth` of them.
fn short_stack(r: &StackRow, depth: usize) -> String {
    let mut s: Vec<&str> = r.frames.iter().take(depth).map(String::as_str).collect();
    if r.frames.len() > depth {
        s.push("...");
    }
    s.join(" < ")
}

/// The report as a table, largest in-use (or growth, with `--diff`) first.
pub fn top(r: &Report, limit: usize) -> String {
    let est = if r.estimated { " (estimated)" } else { "" };
    let mut out = format!(
        "pid {} ({}) for {:.1}s, {}: {} in use in {} allocations{est}; {} allocated in {}; \
         leak suspects (older than {}ms): {} in {}\n",
        r.pid,
        r.comm,
        r.duration_ms as f64 / 1000.0,
        match r.ended {
            Some(super::session::Ended::Completed) | None => "completed",
            Some(super::session::Ended::Cancelled) => "cancelled",
            Some(super::session::Ended::TargetExited) => "target exited",
            Some(super::session::Ended::AgentShutdown) => "agent shut down",
        },
        bytes(r.total(|s| s.in_use_bytes)),
        r.total(|s| s.in_use_count),
        bytes(r.total(|s| s.alloc_bytes)),
        r.total(|s| s.alloc_count),
        r.min_age_ms,
        bytes(r.total(|s| s.leak_bytes)),
        r.total(|s| s.leak_count),
    );
    let single: Vec<&str> = r
        .probes
        .iter()
        .filter(|p| !p.emulated)
        .map(|p| p.function.as_str())
        .collect();
    if !single.is_empty() {
        out.push_str(&format!(
            "warning: probes on {} are single-stepped by the kernel (~20 µs per call)\n",
            single.join(", ")
        ));
    }
    let mut idx: Vec<usize> = (0..r.stacks.len()).collect();
    if r.diff_after_ms.is_some() {
        idx.sort_by_key(|&i| std::cmp::Reverse(r.stacks[i].growth_bytes.unwrap_or(0)));
    }
    let mut headers = vec!["IN USE", "OBJECTS", "ALLOCATED", "ALLOCS", "LEAK SUSPECT"];
    if r.diff_after_ms.is_some() {
        headers.push("GROWTH");
    }
    headers.push("STACK (allocating function first)");
    let rows: Vec<Vec<String>> = idx
        .into_iter()
        .take(limit)
        .map(|i| {
            let s = &r.stacks[i];
            let mut row = vec![
                bytes(s.in_use_bytes),
                s.in_use_count.to_string(),
                bytes(s.alloc_bytes),
                s.alloc_count.to_string(),
                bytes(s.leak_bytes),
            ];
            if r.diff_after_ms.is_some() {
                row.push(signed_bytes(s.growth_bytes.unwrap_or(0)));
            }
            row.push(short_stack(s, 4));
            row
        })
        .collect();
    out.push_str(&crate::cli::output::table(&headers, &rows));
    out
}

/// Which figure folded stacks and the default pprof view show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    InUse,
    Allocated,
    Leak,
    Growth,
}

impl Measure {
    fn of(self, s: &StackRow) -> u64 {
        match self {
            Self::InUse => s.in_use_bytes,
            Self::Allocated => s.alloc_bytes,
            Self::Leak => s.leak_bytes,
            Self::Growth => s.growth_bytes.unwrap_or(0).max(0) as u64,
        }
    }
}

/// The report as a [`Profile`] whose sample counts are `m` bytes.
pub fn profile(r: &Report, m: Measure) -> Profile {
    let comm: std::sync::Arc<str> = r.comm.as_str().into();
    Profile {
        samples: r
            .stacks
            .iter()
            .zip(&r.frames)
            .map(|(s, f)| Sample {
                pid: r.pid,
                comm: comm.clone(),
                service: comm.clone(),
                stack: f.clone(),
                count: m.of(s),
                route: None,
            })
            .collect(),
        start: super::session::started_at(Duration::from_millis(r.duration_ms)),
        duration: Duration::from_millis(r.duration_ms),
        period_ns: 1,
    }
}

/// Folded stacks weighted by `m` bytes; stacks with 0 are left out.
pub fn folded(r: &Report, m: Measure) -> String {
    let p = profile(r, m);
    let mut lines: Vec<String> = p
        .samples
        .iter()
        .filter(|s| s.count > 0)
        .map(|s| format!("{} {}", folded_line(s), s.count))
        .collect();
    lines.sort();
    let mut out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// pprof with Go-heap-profile sample types: inuse_space (default),
/// inuse_objects, alloc_space, alloc_objects, plus leak_space/leak_objects.
pub fn pprof(r: &Report) -> Vec<u8> {
    let p = profile(r, Measure::InUse);
    let msg = pprof::build_values(
        &p,
        &[
            ("inuse_space", "bytes"),
            ("inuse_objects", "count"),
            ("alloc_space", "bytes"),
            ("alloc_objects", "count"),
            ("leak_space", "bytes"),
            ("leak_objects", "count"),
        ],
        |i, _| {
            let s = &r.stacks[i];
            [
                s.in_use_bytes,
                s.in_use_count,
                s.alloc_bytes,
                s.alloc_count,
                s.leak_bytes,
                s.leak_count,
            ]
            .map(|v| v as i64)
            .to_vec()
        },
    );
    pprof::gzip(&msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_bytes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(64 * 1024), "64.0 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(signed_bytes(-2048), "-2.0 KiB");
    }

    #[test]
    fn top_table_lists_stacks() {
        let r = Report {
            summary: super::super::session::AllocReport {
                pid: 7,
                comm: "w".into(),
                duration_ms: 5000,
                min_age_ms: 1000,
                stacks: vec![StackRow {
                    frames: vec!["leak_fn".into(), "main".into()],
                    in_use_bytes: 65536,
                    in_use_count: 1,
                    alloc_bytes: 65536,
                    alloc_count: 1,
                    ..Default::default()
                }],
                ..Default::default()
            },
            frames: vec![std::sync::Arc::from([])],
        };
        let t = top(&r, 10);
        assert!(t.contains("leak_fn < main"), "{t}");
        assert!(t.contains("64.0 KiB"), "{t}");
        // No frames resolved: folded still names the process.
        assert_eq!(folded(&r, Measure::InUse), "w 65536\n");
    }
}
