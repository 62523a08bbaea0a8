//! Results, docs/benchmarks.md and docs/benchmarks.json.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{
    Ctx,
    stats::{NOISY_SPREAD, Summary},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricResult {
    pub metric: String,
    pub unit: String,
    /// (variant, summary), in the order the variants ran.
    pub variants: Vec<(String, Summary)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ScenarioResult {
    pub name: String,
    pub what: String,
    /// Set when any run failed: then no figure is reported.
    pub failed: Option<String>,
    pub metrics: Vec<MetricResult>,
    /// Figures derived from the medians (ratios, added cost), with targets.
    pub derived: Vec<Derived>,
    pub commands: Vec<String>,
    /// What the scenario does not cover yet, and why.
    pub notes: Vec<String>,
    /// When and how it ran (absent in files written before it was kept).
    #[serde(default)]
    pub ran: Option<Ran>,
}

/// When a scenario ran, so a file can hold scenarios from different runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ran {
    /// UTC, e.g. "2026-11-22 15:40 UTC".
    pub at: String,
    pub reps: usize,
    pub quick: bool,
    pub seconds: f64,
    /// `git describe --always --dirty` of the tree the harness ran from.
    #[serde(default)]
    pub commit: Option<String>,
    /// The sonde binary measured: path and the start of its SHA-256.
    #[serde(default)]
    pub binary: Option<String>,
}

impl Ran {
    pub fn now(ctx: &Ctx, took: Duration) -> Ran {
        let at = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown time".into());
        let out = |prog: &str, args: &[&str]| {
            std::process::Command::new(prog)
                .args(args)
                .current_dir(crate::cmd::workspace_root())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        let sonde = ctx.sonde.display().to_string();
        let binary = out("sha256sum", &[&sonde])
            .and_then(|s| s.get(..12).map(str::to_owned))
            .map(|sha| format!("{sonde} (sha256 {sha}…)"));
        Ran {
            at,
            reps: ctx.reps,
            quick: ctx.quick,
            seconds: took.as_secs_f64(),
            commit: out("git", &["describe", "--always", "--dirty"]),
            binary,
        }
    }
}

/// The scenarios of an earlier benchmarks.json in `dir`, if any.
pub fn previous(dir: &Path) -> Vec<ScenarioResult> {
    std::fs::read_to_string(dir.join("benchmarks.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| serde_json::from_value(v.get("scenarios")?.clone()).ok())
        .unwrap_or_default()
}

/// A target for a derived figure: its text and the test of a value.
pub type Target = (&'static str, fn(f64) -> bool);

/// Whether a figure meets its target, judged on its whole range (of pairs,
/// or of runs), never on the median alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every pair (run) meets it.
    Met,
    /// No pair (run) meets it.
    NotMet,
    /// The range straddles the target: more runs are needed to decide.
    Inconclusive,
}

impl Verdict {
    /// The verdict of a target over a range `lo..=hi`: the test is
    /// monotonic in the value, so its two ends decide.
    pub fn of(ok: fn(f64) -> bool, lo: f64, hi: f64) -> Self {
        match (ok(lo), ok(hi)) {
            (true, true) => Verdict::Met,
            (false, false) => Verdict::NotMet,
            _ => Verdict::Inconclusive,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Derived {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub target: Option<String>,
    pub met: Option<bool>,
    /// For a ratio of paired runs: the lowest and highest pair.
    #[serde(default)]
    pub range: Option<(f64, f64)>,
    /// Judged on `range` when there is one (then `met` is `None` for an
    /// inconclusive range), else on `value`.
    #[serde(default)]
    pub verdict: Option<Verdict>,
}

impl ScenarioResult {
    pub fn failed(name: &str, what: &str, why: impl std::fmt::Display) -> Self {
        Self {
            name: name.into(),
            what: what.into(),
            failed: Some(why.to_string()),
            ..Default::default()
        }
    }

    /// The runs of `variant` for `metric`, in the order they ran.
    pub fn samples(&self, metric: &str, variant: &str) -> Option<&[f64]> {
        let m = self.metrics.iter().find(|m| m.metric == metric)?;
        m.variants
            .iter()
            .find(|(v, _)| v == variant)
            .map(|(_, s)| s.samples.as_slice())
    }

    pub fn median(&self, metric: &str, variant: &str) -> Option<f64> {
        let m = self.metrics.iter().find(|m| m.metric == metric)?;
        m.variants
            .iter()
            .find(|(v, _)| v == variant)
            .map(|(_, s)| s.median)
    }

    /// What `variant` adds to `base` in `metric`: the difference of medians.
    pub fn median_added(&self, metric: &str, variant: &str, base: &str) -> Option<f64> {
        Some(self.median(metric, variant)? - self.median(metric, base)?)
    }

    /// The ratio `num / den` of `metric` taken run by run (the runs of one
    /// repetition ran back to back, so slow drifts of a shared machine
    /// cancel): (median, lowest, highest) over the repetitions.
    pub fn paired_ratio(&self, metric: &str, num: &str, den: &str) -> Option<(f64, f64, f64)> {
        let (a, b) = (self.samples(metric, num)?, self.samples(metric, den)?);
        if a.len() != b.len() || a.is_empty() {
            return None;
        }
        let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
        let s = super::stats::summarize(&ratios);
        Some((s.median, s.min, s.max))
    }

    /// `derive` for a paired ratio: the median, with the pairs' range.
    pub fn derive_paired(
        &mut self,
        name: &str,
        ratio: Option<(f64, f64, f64)>,
        target: Option<Target>,
    ) {
        self.derive_range(name, ratio, "×", target);
    }

    /// A figure with the range of its runs (or pairs), judged on that
    /// range: "met" only when all of it meets the target.
    pub fn derive_range(
        &mut self,
        name: &str,
        figure: Option<(f64, f64, f64)>,
        unit: &str,
        target: Option<Target>,
    ) {
        let Some((median, lo, hi)) =
            figure.filter(|(m, l, h)| [m, l, h].iter().all(|v| v.is_finite()))
        else {
            return;
        };
        let verdict = target.map(|(_, ok)| Verdict::of(ok, lo, hi));
        self.derived.push(Derived {
            name: name.into(),
            value: median,
            unit: unit.into(),
            target: target.map(|(t, _)| t.to_owned()),
            met: verdict.and_then(|v| match v {
                Verdict::Met => Some(true),
                Verdict::NotMet => Some(false),
                Verdict::Inconclusive => None,
            }),
            range: Some((lo, hi)),
            verdict,
        });
    }

    /// `metric` of `variant` as (median, min, max) over its runs.
    pub fn spread(&self, metric: &str, variant: &str) -> Option<(f64, f64, f64)> {
        let m = self.metrics.iter().find(|m| m.metric == metric)?;
        let (_, s) = m.variants.iter().find(|(v, _)| v == variant)?;
        Some((s.median, s.min, s.max))
    }

    /// Runs actually made: the most of any variant of any metric.
    pub fn runs(&self) -> usize {
        self.metrics
            .iter()
            .flat_map(|m| m.variants.iter().map(|(_, s)| s.n))
            .max()
            .unwrap_or(0)
    }

    pub fn derive(
        &mut self,
        name: &str,
        value: Option<f64>,
        unit: &str,
        target: Option<(&str, bool)>,
    ) {
        if let Some(value) = value.filter(|v| v.is_finite()) {
            self.derived.push(Derived {
                name: name.into(),
                value,
                unit: unit.into(),
                target: target.map(|(t, _)| t.to_owned()),
                met: target.map(|(_, ok)| ok),
                range: None,
                verdict: target.map(|(_, ok)| if ok { Verdict::Met } else { Verdict::NotMet }),
            });
        }
    }
}

pub fn summary_line(r: &ScenarioResult) -> String {
    match &r.failed {
        Some(why) => format!("bench: {}: NOT REPORTED: {why}", r.name),
        None => {
            let d: Vec<String> = r
                .derived
                .iter()
                .map(|d| format!("{} = {:.3} {}", d.name, d.value, d.unit))
                .collect();
            format!("bench: {}: ok; {}", r.name, d.join("; "))
        }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split(':')
                    .nth(1)
                    .map(|m| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
            })
        })
        .unwrap_or(0.0)
        / 1024.0
        / 1024.0;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} × {cpu}, {mem:.0} GiB RAM, Linux {}", kernel.trim())
}

pub fn write(dir: &Path, results: &[ScenarioResult], ctx: &Ctx, took: Duration) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::json!({
        "machine": machine(),
        "quick": ctx.quick,
        "reps": ctx.reps,
        "noisy_spread": NOISY_SPREAD,
        "scenarios": results,
    });
    std::fs::write(
        dir.join("benchmarks.json"),
        serde_json::to_string_pretty(&json)?,
    )?;

    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Generated by `cargo xtask bench{}` (last run took {:.0?}; running some scenarios keeps \
         the others' earlier figures, and each section says when it ran). Machine: {}. Each \
         variant ran several times, alternating with the others; figures are medians with \
         min–max. A figure whose spread exceeds {:.0} % of its median is marked **noisy**: treat \
         it with care. A ratio shown with \"pairs\" is the median of the ratios of runs made \
         back to back in one repetition (which cancels the slow drifts of a shared machine), \
         with the lowest and highest pair. A derived figure's range is that of its pairs (or of its \
         runs); its target is met only when the whole range meets it, and \"inconclusive\" when \
         the range straddles it. A scenario with a failed run is not reported.\n",
        if ctx.quick { " --quick" } else { "" },
        took,
        machine(),
        NOISY_SPREAD * 100.0
    )?;
    if ctx.quick {
        writeln!(
            md,
            "> These are `--quick` figures (short runs): they check the harness, they are not for publishing.\n"
        )?;
    }
    for r in results {
        writeln!(md, "## {}\n\n{}\n", r.name, r.what)?;
        if let Some(ran) = &r.ran {
            writeln!(
                md,
                "_Ran {} in {:.0} s; {} runs per variant at most{}; commit {}, binary {}._\n",
                ran.at,
                ran.seconds,
                r.runs(),
                if ran.quick { ", `--quick`" } else { "" },
                ran.commit.as_deref().unwrap_or("unknown"),
                ran.binary.as_deref().unwrap_or("unknown"),
            )?;
        }
        if let Some(why) = &r.failed {
            writeln!(md, "**Not reported**: {why}\n")?;
            continue;
        }
        for m in &r.metrics {
            writeln!(
                md,
                "| {} ({}) | median | min–max | runs | |\n|---|---:|---:|---:|---|",
                m.metric, m.unit
            )?;
            for (v, s) in &m.variants {
                writeln!(
                    md,
                    "| {v} | {:.2} | {:.2}–{:.2} | {} | {} |",
                    s.median,
                    s.min,
                    s.max,
                    s.n,
                    if s.noisy { "**noisy**" } else { "" }
                )?;
            }
            writeln!(md)?;
        }
        if !r.derived.is_empty() {
            writeln!(md, "| derived | value | target | met |\n|---|---:|---|---|")?;
            for d in &r.derived {
                let range = d
                    .range
                    .map(|(lo, hi)| format!(" (range {lo:.3}–{hi:.3})"))
                    .unwrap_or_default();
                writeln!(
                    md,
                    "| {} | {:.3} {}{range} | {} | {} |",
                    d.name,
                    d.value,
                    d.unit,
                    d.target.as_deref().unwrap_or(""),
                    match d.verdict {
                        Some(Verdict::Met) => "yes",
                        Some(Verdict::NotMet) => "**no**",
                        Some(Verdict::Inconclusive) => "inconclusive",
                        None => "",
                    }
                )?;
            }
            writeln!(md)?;
        }
        for n in &r.notes {
            writeln!(md, "Note: {n}\n")?;
        }
        if !r.commands.is_empty() {
            writeln!(md, "How it was measured:\n")?;
            for c in &r.commands {
                writeln!(md, "- `{c}`")?;
            }
            writeln!(md)?;
        }
    }
    std::fs::write(dir.join("benchmarks.md"), md)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::summarize;

    /// Pairs are taken run by run: a drift that slows both runs of a
    /// repetition cancels, where a ratio of medians would not see pairs.
    #[test]
    fn paired_ratio_pairs_runs_of_one_repetition() {
        let r = ScenarioResult {
            metrics: vec![MetricResult {
                metric: "t".into(),
                unit: "x".into(),
                variants: vec![
                    ("base".into(), summarize(&[100.0, 50.0, 200.0])),
                    ("with".into(), summarize(&[90.0, 49.0, 150.0])),
                ],
            }],
            ..Default::default()
        };
        let (median, lo, hi) = r.paired_ratio("t", "with", "base").unwrap();
        assert_eq!((median, lo, hi), (0.9, 0.75, 0.98));
        assert!(r.paired_ratio("t", "with", "missing").is_none());
        let mut r = r;
        r.derive_paired(
            "ratio",
            Some((median, lo, hi)),
            Some(("≥ 0.95", |x| x >= 0.95)),
        );
        let d = r.derived.last().unwrap();
        // The median misses the target but the best pair meets it.
        assert_eq!((d.met, d.range), (None, Some((0.75, 0.98))));
        assert_eq!(d.verdict, Some(Verdict::Inconclusive));
    }

    /// A median that meets the target is not enough: the range decides.
    #[test]
    fn a_range_straddling_the_target_is_inconclusive() {
        let mut r = ScenarioResult::default();
        let ge = |x: f64| x >= 0.98;
        r.derive_range("a", Some((0.99, 0.97, 1.01)), "×", Some(("≥ 0.98", ge)));
        r.derive_range("b", Some((0.99, 0.985, 1.01)), "×", Some(("≥ 0.98", ge)));
        r.derive_range("c", Some((0.95, 0.93, 0.97)), "×", Some(("≥ 0.98", ge)));
        let v: Vec<_> = r.derived.iter().map(|d| (d.verdict, d.met)).collect();
        assert_eq!(
            v,
            [
                (Some(Verdict::Inconclusive), None),
                (Some(Verdict::Met), Some(true)),
                (Some(Verdict::NotMet), Some(false)),
            ]
        );
    }
}
