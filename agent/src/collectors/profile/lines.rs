//! The line-level view of a profile (`sonde profile -f lines`): samples per
//! source line, optionally of one function only, for Python frames and
//! native frames with debug info.

use std::collections::{HashMap, HashSet};

use super::store::{Frame, FrameKind, Profile};

/// Samples of one source line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRow {
    pub function: String,
    pub file: String,
    pub line: u32,
    /// Samples where this line was running: the youngest Python frame, or
    /// the leaf for native code.
    pub self_samples: u64,
    /// Samples with this line anywhere on the stack (once per stack).
    pub total_samples: u64,
}

fn has_line(f: &Frame) -> bool {
    f.line > 0 && f.file.is_some()
}

/// Lines by total, then self samples; `function` keeps only the lines of
/// functions with that (qualified) name.
pub fn lines(p: &Profile, function: Option<&str>) -> Vec<LineRow> {
    let mut rows: HashMap<(&str, &str, u32), (u64, u64)> = HashMap::new();
    for s in &p.samples {
        let youngest_py = s.stack.iter().position(|f| f.kind == FrameKind::Python);
        let mut seen = HashSet::new();
        for (i, f) in s.stack.iter().enumerate() {
            if !has_line(f) || function.is_some_and(|n| n != &*f.function) {
                continue;
            }
            let key = (&*f.function, f.file.as_deref().unwrap_or(""), f.line);
            let e = rows.entry(key).or_default();
            let running = match f.kind {
                FrameKind::Python => youngest_py == Some(i),
                _ => i == 0,
            };
            if running {
                e.0 += s.count;
            }
            if seen.insert(key) {
                e.1 += s.count;
            }
        }
    }
    let mut out: Vec<LineRow> = rows
        .into_iter()
        .map(|((function, file, line), (s, t))| LineRow {
            function: function.to_owned(),
            file: file.to_owned(),
            line,
            self_samples: s,
            total_samples: t,
        })
        .collect();
    out.sort_by(|a, b| {
        b.total_samples
            .cmp(&a.total_samples)
            .then(b.self_samples.cmp(&a.self_samples))
            .then((&a.file, a.line).cmp(&(&b.file, b.line)))
    });
    out
}

/// The line view as text, at most `limit` rows.
pub fn lines_table(p: &Profile, function: Option<&str>, limit: usize) -> String {
    let total = p.total().max(1) as f64;
    let rows: Vec<Vec<String>> = lines(p, function)
        .into_iter()
        .take(limit)
        .map(|r| {
            vec![
                format!("{:.1}", 100.0 * r.total_samples as f64 / total),
                format!("{:.1}", 100.0 * r.self_samples as f64 / total),
                r.total_samples.to_string(),
                r.self_samples.to_string(),
                format!("{}:{}", r.file, r.line),
                r.function,
            ]
        })
        .collect();
    let mut out = format!(
        "{} samples over {:.1}s\n",
        p.total(),
        p.duration.as_secs_f64()
    );
    out.push_str(&crate::cli::output::table(
        &["TOTAL%", "SELF%", "TOTAL", "SELF", "LINE", "FUNCTION"],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::collectors::profile::{render::tests::frame, store::Sample};

    fn py(name: &str, line: u32) -> Frame {
        let mut f = frame(name, FrameKind::Python, line);
        f.file = Some(Arc::from("/app/x.py"));
        f
    }

    #[test]
    fn counts_running_and_enclosing_lines() {
        let sample = |stack: Vec<Frame>, count| Sample {
            pid: 1,
            comm: "python".into(),
            service: "python".into(),
            stack: stack.into(),
            count,
            route: None,
        };
        let p = Profile {
            samples: vec![
                // A C function (no line) called from hot:12.
                sample(
                    vec![
                        frame("cfunc", FrameKind::User, 0),
                        py("hot", 12),
                        py("outer", 30),
                    ],
                    3,
                ),
                sample(vec![py("hot", 13), py("outer", 30)], 1),
            ],
            start: std::time::SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(1),
            period_ns: 1,
        };
        let all = lines(&p, None);
        assert_eq!(
            all.iter()
                .map(|r| (r.function.as_str(), r.line, r.self_samples, r.total_samples))
                .collect::<Vec<_>>(),
            [("outer", 30, 0, 4), ("hot", 12, 3, 3), ("hot", 13, 1, 1)]
        );
        let hot = lines(&p, Some("hot"));
        assert_eq!(hot.len(), 2);
        assert!(lines_table(&p, Some("hot"), 10).contains("/app/x.py:12"));
    }
}
