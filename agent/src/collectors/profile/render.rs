//! Text renderings of a [`Profile`]: folded stacks, an SVG flamegraph
//! (inferno) and a `pstats`-like top table.

use std::collections::HashMap;

use super::store::{FrameKind, Profile, Sample};

/// A name as one field of a folded line: `;` would split it and a control
/// character (a newline in a comm or a symbol) break the line, so they are
/// replaced.
fn folded_name(s: &str) -> String {
    s.replace(';', ":").replace(char::is_control, "?")
}

/// One frame as folded stacks write it: kernel, JIT and inlined frames get
/// inferno's `_[k]`, `_[j]`, `_[i]` suffixes (it colours them).
fn folded_frame(f: &super::store::Frame) -> String {
    let name = folded_name(&f.function);
    match f.kind {
        FrameKind::Kernel => format!("{name}_[k]"),
        FrameKind::Jit => format!("{name}_[j]"),
        FrameKind::Python => format!("{name} ({}:{})", py_file(f), f.line),
        _ if f.inlined => format!("{name}_[i]"),
        _ => name,
    }
}

/// A frame's name in lists of names (`sonde alloc`'s rows): a Python
/// frame as `qualname (file.py:LINE)`, others by function.
pub fn frame_name(f: &super::store::Frame) -> String {
    match f.kind {
        FrameKind::Python => format!("{} ({}:{})", f.function, py_file(f), f.line),
        _ => f.function.to_string(),
    }
}

/// A Python frame's source file as shown: its base name.
fn py_file(f: &super::store::Frame) -> &str {
    let file = f.file.as_deref().unwrap_or("?");
    file.rsplit('/').next().unwrap_or(file)
}

pub fn folded_line(s: &Sample) -> String {
    let mut parts = Vec::with_capacity(s.stack.len() + 1);
    parts.push(folded_name(&s.comm));
    parts.extend(s.stack.iter().rev().map(folded_frame));
    parts.join(";")
}

/// Folded stacks: `process;root;...;leaf count`, one line per distinct
/// stack, sorted so output is stable.
pub fn folded(p: &Profile) -> String {
    folded_with(p, false)
}

/// [`folded`], with `by_route` the sample's route (`METHOD ROUTE`, or
/// `[no route]`) as the first frame, so a flamegraph splits by route first.
pub fn folded_with(p: &Profile, by_route: bool) -> String {
    let mut agg: HashMap<String, u64> = HashMap::new();
    for s in &p.samples {
        let line = if by_route {
            format!(
                "{};{}",
                super::by_route::root_frame(s.route.as_ref()).replace(';', ":"),
                folded_line(s)
            )
        } else {
            folded_line(s)
        };
        *agg.entry(line).or_default() += s.count;
    }
    let mut lines: Vec<(String, u64)> = agg.into_iter().collect();
    lines.sort();
    let mut out = String::new();
    for (stack, n) in lines {
        out.push_str(&stack);
        out.push(' ');
        out.push_str(&n.to_string());
        out.push('\n');
    }
    out
}

#[derive(Debug, thiserror::Error)]
#[error("rendering the flamegraph failed: {0}")]
pub struct SvgError(String);

/// An SVG flamegraph of the folded stacks.
pub fn svg(p: &Profile, title: &str) -> Result<Vec<u8>, SvgError> {
    svg_with(p, title, false, "samples")
}

/// [`svg`], split by route first with `by_route` (see [`folded_with`]),
/// with counts in `count_name` (`samples`, or `ns` off CPU).
pub fn svg_with(
    p: &Profile,
    title: &str,
    by_route: bool,
    count_name: &str,
) -> Result<Vec<u8>, SvgError> {
    let folded = folded_with(p, by_route);
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_owned();
    opts.count_name = count_name.to_owned();
    let mut out = Vec::new();
    if folded.is_empty() {
        // inferno refuses empty input; an empty profile is still an answer.
        return Ok(format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\">\
             <text x=\"10\" y=\"25\">{} : no samples</text></svg>\n",
            xml_escape(title)
        )
        .into_bytes());
    }
    inferno::flamegraph::from_lines(&mut opts, folded.lines(), &mut out)
        .map_err(|e| SvgError(e.to_string()))?;
    Ok(out)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One function's share, as `pstats` sorts by cumulative time.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct TopRow {
    pub function: String,
    pub module: String,
    /// Samples where it was the leaf.
    pub self_samples: u64,
    /// Samples where it was anywhere on the stack (counted once per stack).
    pub total_samples: u64,
    pub self_pct: f64,
    pub total_pct: f64,
}

/// Functions by total (cumulative) share, then self share.
pub fn top(p: &Profile) -> Vec<TopRow> {
    let total = p.total().max(1) as f64;
    let mut rows: HashMap<(String, String), (u64, u64)> = HashMap::new();
    for s in &p.samples {
        let mut seen = std::collections::HashSet::new();
        for (i, f) in s.stack.iter().enumerate() {
            // Python functions by function, not line (the folded view
            // has the lines).
            let name = match f.kind {
                FrameKind::Python => format!("{} ({})", f.function, py_file(f)),
                _ => f.function.to_string(),
            };
            let key = (name, f.module.path.to_string());
            let e = rows.entry(key.clone()).or_default();
            if i == 0 {
                e.0 += s.count;
            }
            if seen.insert(key) {
                e.1 += s.count;
            }
        }
    }
    let mut out: Vec<TopRow> = rows
        .into_iter()
        .map(|((function, module), (self_s, total_s))| TopRow {
            function,
            module,
            self_samples: self_s,
            total_samples: total_s,
            self_pct: 100.0 * self_s as f64 / total,
            total_pct: 100.0 * total_s as f64 / total,
        })
        .collect();
    out.sort_by(|a, b| {
        b.total_samples
            .cmp(&a.total_samples)
            .then(b.self_samples.cmp(&a.self_samples))
            .then(a.function.cmp(&b.function))
    });
    out
}

/// One route's share of a profile (`--by route`).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteShareRow {
    /// `METHOD ROUTE`, or `[no route]`.
    pub route: String,
    pub samples: u64,
    pub pct: f64,
    pub cpu_seconds: f64,
}

/// Samples per route, largest first; unattributed samples as `[no route]`.
pub fn routes(p: &Profile) -> Vec<RouteShareRow> {
    let total = p.total().max(1) as f64;
    let mut agg: HashMap<String, u64> = HashMap::new();
    for s in &p.samples {
        *agg.entry(super::by_route::root_frame(s.route.as_ref()))
            .or_default() += s.count;
    }
    let mut out: Vec<RouteShareRow> = agg
        .into_iter()
        .map(|(route, samples)| RouteShareRow {
            route,
            samples,
            pct: 100.0 * samples as f64 / total,
            cpu_seconds: samples as f64 * p.period_ns as f64 / 1e9,
        })
        .collect();
    out.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.route.cmp(&b.route)));
    out
}

/// The route table of `--by route -f top`, printed above the functions.
pub fn routes_table(p: &Profile) -> String {
    let rows: Vec<Vec<String>> = routes(p)
        .into_iter()
        .map(|r| {
            vec![
                format!("{:.1}", r.pct),
                r.samples.to_string(),
                format!("{:.3}", r.cpu_seconds),
                r.route,
            ]
        })
        .collect();
    crate::cli::output::table(&["SHARE%", "SAMPLES", "CPU_S", "ROUTE"], &rows)
}

/// The top table as text, at most `limit` rows.
pub fn top_table(p: &Profile, limit: usize) -> String {
    let rows: Vec<Vec<String>> = top(p)
        .into_iter()
        .take(limit)
        .map(|r| {
            vec![
                format!("{:.1}", r.total_pct),
                format!("{:.1}", r.self_pct),
                r.total_samples.to_string(),
                r.self_samples.to_string(),
                r.function,
                std::path::Path::new(&r.module)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or(r.module),
            ]
        })
        .collect();
    let mut out = format!(
        "{} samples over {:.1}s\n",
        p.total(),
        p.duration.as_secs_f64()
    );
    out.push_str(&crate::cli::output::table(
        &["TOTAL%", "SELF%", "TOTAL", "SELF", "FUNCTION", "MODULE"],
        &rows,
    ));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        sync::Arc,
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::collectors::profile::store::{Frame, Module};

    pub fn frame(name: &str, kind: FrameKind, line: u32) -> Frame {
        Frame {
            function: name.into(),
            file: (line > 0).then(|| Arc::from("w.c")),
            line,
            kind,
            module: Arc::new(Module {
                path: "/bin/w".into(),
                build_id: Some("abcd".into()),
            }),
            addr: line as u64,
            inlined: false,
        }
    }

    pub fn sample_profile() -> Profile {
        let leafy = |names: &[(&str, FrameKind)], count| Sample {
            pid: 7,
            comm: "work".into(),
            service: "work".into(),
            stack: names
                .iter()
                .rev()
                .enumerate()
                .map(|(i, (n, k))| frame(n, *k, i as u32 + 1))
                .collect::<Vec<_>>()
                .into(),
            count,
            route: None,
        };
        Profile {
            samples: vec![
                leafy(
                    &[
                        ("main", FrameKind::User),
                        ("a", FrameKind::User),
                        ("b", FrameKind::User),
                        ("c", FrameKind::User),
                    ],
                    8,
                ),
                leafy(
                    &[
                        ("main", FrameKind::User),
                        ("a", FrameKind::User),
                        ("b", FrameKind::User),
                        ("c", FrameKind::User),
                    ],
                    1,
                ),
                leafy(
                    &[
                        ("main", FrameKind::User),
                        ("do_syscall_64", FrameKind::Kernel),
                    ],
                    1,
                ),
            ],
            start: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(1),
            period_ns: 1_000_000_000 / 19,
        }
    }

    #[test]
    fn folded_is_root_first_with_process_root_and_merged() {
        let f = folded(&sample_profile());
        assert_eq!(
            f, "work;main;a;b;c 9\nwork;main;do_syscall_64_[k] 1\n",
            "{f}"
        );
    }

    #[test]
    fn a_hostile_comm_or_symbol_stays_one_folded_field() {
        let mut p = sample_profile();
        p.samples.truncate(1);
        p.samples[0].comm = "a;b\nc\u{1b}[7m".into();
        let mut stack = p.samples[0].stack.to_vec();
        stack[0].function = "c\nfake 99".into();
        p.samples[0].stack = stack.into();
        let f = folded(&p);
        assert_eq!(f, "a:b?c?[7m;main;a;b;c?fake 99 8\n", "{f}");
    }

    #[test]
    fn top_has_self_and_total() {
        let t = top(&sample_profile());
        assert_eq!(t[0].function, "main");
        assert_eq!(t[0].total_samples, 10);
        assert_eq!(t[0].self_samples, 0);
        let c = t.iter().find(|r| r.function == "c").unwrap();
        assert_eq!(c.self_samples, 9);
        assert!((c.self_pct - 90.0).abs() < 1e-9);
    }

    #[test]
    fn svg_renders() {
        let mut by = sample_profile();
        by.samples[0].route = Some(super::super::store::RouteLabel {
            method: "GET",
            route: "/items/{id}".into(),
        });
        let f = folded_with(&by, true);
        assert!(
            f.lines().any(|l| l.starts_with("GET /items/{id};work;")),
            "{f}"
        );
        assert!(f.lines().any(|l| l.starts_with("[no route];work;")), "{f}");
        let r = routes(&by);
        assert_eq!(r.iter().map(|r| r.samples).sum::<u64>(), by.total());
        assert!(routes_table(&by).contains("GET /items/{id}"));
        let s = String::from_utf8(svg(&sample_profile(), "t").unwrap()).unwrap();
        assert!(s.contains("<svg") && s.contains("a"), "{s}");
        let empty = Profile {
            samples: vec![],
            ..sample_profile()
        };
        assert!(
            String::from_utf8(svg(&empty, "t").unwrap())
                .unwrap()
                .contains("no samples")
        );
    }
}
