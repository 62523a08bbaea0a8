//! The `alloc` scenario's CPython rows: what `sonde alloc` adds per
//! Python allocation, next to what tracemalloc adds to the same loop.
//!
//! `xtask/bench/py_alloc_loop.py` on pyenv's 3.12 (a shared libpython, so
//! the session probes CPython's allocator implementation functions), pinned
//! to the last CPU, in three variants: no tool; a `sonde alloc` session
//! (every allocation tracked with its native and Python stacks); and
//! tracemalloc started by the program itself (its default one-frame
//! traceback). Each loop iteration makes and drops one `bytearray(100)`:
//! two allocations (the object and its buffer) and their two frees, which
//! the session's counters confirm.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{alloc::control_get, alternate, last_cpu, script};
use crate::bench::{
    Ctx,
    agent::{Agent, signal},
    report::MetricResult,
};

/// The metric, in CPU ns per allocation (and its free).
pub const METRIC: &str = "CPython bytearray(100) made+freed";
/// Allocations per loop iteration.
const PER_ITERATION: f64 = 2.0;

/// pyenv's 3.12 interpreter.
fn python() -> Result<PathBuf> {
    let out = Command::new("pyenv")
        .args(["prefix", "3.12.1"])
        .output()
        .context("running pyenv")?;
    if !out.status.success() {
        bail!("pyenv has no 3.12.1");
    }
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin/python3.12");
    anyhow::ensure!(p.exists(), "{} missing", p.display());
    Ok(p)
}

/// Runs the loop once (`mode`: plain or tracemalloc), with a `sonde alloc`
/// session on it when `agent` is given; CPU ns per allocation.
fn run(py: &Path, mode: &str, n: u64, agent: Option<&Agent>, sonde: &Path) -> Result<f64> {
    let mut wl = Command::new("taskset")
        .args(["-c", &last_cpu()])
        .arg(py)
        .arg(script("py_alloc_loop.py"))
        .args([mode, &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(wl.stdout.take().context("workload stdout")?).lines();
    let ready = lines.next().context("workload exited")??;
    anyhow::ensure!(ready == "ready", "workload said {ready:?}");
    let pid = wl.id().to_string();
    let cli = match agent {
        Some(a) => {
            let cli = Command::new(sonde)
                .args([
                    "alloc", "--pid", &pid, "-d", "10m", "-f", "json", "--socket",
                ])
                .arg(&a.socket)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while !control_get(&a.socket, "/api/v1/alloc/sessions")?.contains("tracking") {
                if Instant::now() > deadline {
                    bail!("the sonde alloc session did not start within 30 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Some(cli)
        }
        None => None,
    };
    let mut stdin = wl.stdin.take().context("workload stdin")?;
    writeln!(stdin, "go")?;
    let first = lines.next().context("workload printed nothing")??;
    drop(stdin);
    wl.wait()?;
    if let Some(cli) = cli {
        signal(cli.id(), 2);
        let out = cli.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "sonde alloc failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The interpreter's allocator must have been probed, and every
        // allocation of the loop tracked, with its Python stack.
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let counters = &report["counters"];
        let allocs = counters["allocs"].as_u64().unwrap_or(0);
        let walks = counters["python_walks"].as_u64().unwrap_or(0);
        let want = (PER_ITERATION as u64) * n;
        anyhow::ensure!(
            allocs >= want && walks >= want,
            "the session saw {allocs} allocations ({walks} Python walks) of {want}"
        );
    }
    let per_iteration: f64 = first
        .rsplit([':', ' '])
        .next()
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("workload printed no number: {first:?}"))?;
    Ok(per_iteration / PER_ITERATION)
}

/// The three variants, alternated `ctx.reps` times.
pub fn python_alloc(ctx: &Ctx) -> Result<Vec<MetricResult>> {
    let py = python()?;
    // With every allocation probed each costs microseconds.
    let n = if ctx.quick { 50_000 } else { 300_000 };
    alternate(
        ctx.reps,
        &[(METRIC, "CPU ns/allocation")],
        vec![
            (
                "CPython: no tool",
                Box::new(|| Ok(vec![(METRIC, run(&py, "plain", n, None, &ctx.sonde)?)])),
            ),
            (
                "CPython: sonde alloc session",
                Box::new(|| {
                    let a = Agent::start(&ctx.sonde, ctx.work.path(), &[])?;
                    let v = run(&py, "plain", n, Some(&a), &ctx.sonde)?;
                    a.stop()?;
                    Ok(vec![(METRIC, v)])
                }),
            ),
            (
                "CPython: tracemalloc",
                Box::new(|| {
                    Ok(vec![(
                        METRIC,
                        run(&py, "tracemalloc", n, None, &ctx.sonde)?,
                    )])
                }),
            ),
        ],
    )
}

/// The command lines, for the report.
pub fn commands(quick: bool) -> Vec<String> {
    let n = if quick { 50_000 } else { 300_000 };
    vec![
        format!(
            "taskset -c LAST_CPU $(pyenv prefix 3.12.1)/bin/python3.12 xtask/bench/py_alloc_loop.py \
             plain|tracemalloc {n}  (CPU ns per iteration / 2 allocations)"
        ),
        format!(
            "... plain {n} & sonde alloc --pid $! -d 10m -f json  (the session ends when the \
             loop exits; allocs and python_walks >= 2 x {n} are checked)"
        ),
    ]
}
