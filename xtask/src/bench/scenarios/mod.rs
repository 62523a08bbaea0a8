//! The scenarios, one module each. Each returns a `ScenarioResult`; any
//! failed run makes the whole scenario "not reported" with the reason.

mod alloc;
mod footprint;
mod http;
mod offcpu;
mod profiler;
mod pyalloc;
mod python;
mod syscalls;

pub use alloc::alloc;
use std::{
    path::Path,
    process::{Child, Command},
};

use anyhow::{Context as _, Result};
pub use footprint::footprint;
pub use http::http;
pub use offcpu::offcpu;
pub use profiler::profiler;
pub use python::python;
pub use syscalls::syscalls;

use super::{
    report::{MetricResult, ScenarioResult},
    stats::summarize,
};

type Run<'a> = Box<dyn FnMut() -> Result<Vec<(&'static str, f64)>> + 'a>;

/// Runs every variant once per repetition, in turn.
fn alternate(
    reps: usize,
    units: &[(&str, &str)],
    variants: Vec<(&str, Run<'_>)>,
) -> Result<Vec<MetricResult>> {
    alternate_until(reps, reps, units, variants, |_| false)
}

/// Like [`alternate`], then one more repetition at a time, up to
/// `max_reps`, while `undecided` says the figures so far cannot decide a
/// target (a paired range straddling it): the budget is spent on the
/// verdicts that need it, and the report counts the runs actually made.
fn alternate_until(
    reps: usize,
    max_reps: usize,
    units: &[(&str, &str)],
    mut variants: Vec<(&str, Run<'_>)>,
    undecided: impl Fn(&ScenarioResult) -> bool,
) -> Result<Vec<MetricResult>> {
    let mut samples: Vec<(String, String, Vec<f64>)> = Vec::new(); // (metric, variant, values)
    let collect = |samples: &[(String, String, Vec<f64>)]| -> Vec<MetricResult> {
        units
            .iter()
            .map(|(metric, unit)| MetricResult {
                metric: metric.to_string(),
                unit: unit.to_string(),
                variants: samples
                    .iter()
                    .filter(|(m, _, _)| m == metric)
                    .map(|(_, v, vals)| (v.clone(), summarize(vals)))
                    .collect(),
            })
            .collect()
    };
    let mut rep = 0;
    loop {
        if rep >= reps {
            let so_far = ScenarioResult {
                metrics: collect(&samples),
                ..Default::default()
            };
            if rep >= max_reps || !undecided(&so_far) {
                return Ok(so_far.metrics);
            }
            eprintln!("bench: a target is undecided after {rep} repetitions: one more");
        }
        for (name, run) in variants.iter_mut() {
            let values =
                run().with_context(|| format!("variant {name:?}, repetition {}", rep + 1))?;
            for (metric, v) in values {
                match samples
                    .iter_mut()
                    .find(|(m, var, _)| m == metric && var == name)
                {
                    Some(s) => s.2.push(v),
                    None => samples.push((metric.to_owned(), name.to_string(), vec![v])),
                }
            }
        }
        rep += 1;
    }
}

fn script(name: &str) -> std::path::PathBuf {
    crate::cmd::workspace_root().join("xtask/bench").join(name)
}

/// The last CPU: pinned CPU-time microbenchmarks run there (see the lead's
/// note in the brief: perf-event tracepoints add work on CPU 0 only).
fn last_cpu() -> String {
    std::thread::available_parallelism()
        .map(|n| n.get() - 1)
        .unwrap_or(0)
        .to_string()
}

fn finish(name: &str, what: &str, r: Result<ScenarioResult>) -> ScenarioResult {
    match r {
        Ok(mut r) => {
            r.name = name.into();
            r.what = what.into();
            r
        }
        Err(e) => ScenarioResult::failed(name, what, format!("{e:#}")),
    }
}

/// Spins on every CPU until dropped.
struct Busy(Vec<Child>);

impl Busy {
    fn start() -> Result<Busy> {
        Self::start_with(Path::new("sh"), &["-c", "while :; do :; done"])
    }

    /// One `prog args` per CPU.
    fn start_with(prog: &Path, args: &[&str]) -> Result<Busy> {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let kids = (0..n)
            .map(|_| Command::new(prog).args(args).spawn())
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Busy(kids))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
