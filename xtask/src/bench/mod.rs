//! `cargo xtask bench`: overhead and footprint, measured side by side.
//!
//! Every scenario runs its variants (no tracing, the floor, sonde, a peer)
//! alternately, repetition after repetition, so drift on a noisy machine hits
//! all variants alike. A scenario with any failed run is reported as failed,
//! with the reason, and no figures. A figure whose min–max spread exceeds
//! 10 % of its median is labelled noisy.
//!
//! The floors' programs are benchmark-only: the loader xtask/bench-probes
//! (built here, see probes.rs) attaches them; the shipped agent has none.

mod agent;
mod probes;
mod report;
mod scenarios;
mod stats;

use std::{path::PathBuf, time::Instant};

use anyhow::Result;
pub use report::ScenarioResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Syscalls,
    Http,
    Profiler,
    Python,
    OffCpu,
    Alloc,
    Footprint,
    All,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Scenarios to run.
    #[arg(value_enum, default_values_t = [Which::All])]
    pub which: Vec<Which>,
    /// Short runs and fewer repetitions (under 3 minutes in all); for
    /// checking the harness, not for publishing figures.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions per variant (default 5, or 3 with --quick).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Directory for benchmarks.md and benchmarks.json (default docs/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The sonde binary to measure (default: a fresh release build).
    #[arg(long, env = "SONDE_BENCH_BIN")]
    pub bin: Option<PathBuf>,
}

/// What every scenario gets.
pub struct Ctx {
    pub quick: bool,
    pub reps: usize,
    pub sonde: PathBuf,
    /// The benchmark-only loader of floors and variants (see probes.rs).
    pub probes: PathBuf,
    pub work: tempfile::TempDir,
}

pub fn run(args: BenchArgs) -> Result<()> {
    anyhow::ensure!(
        crate::cmd::is_root(),
        "benchmarks load eBPF programs: run as root"
    );
    let release = args.bin.is_none();
    let sonde = match args.bin {
        Some(b) => b,
        None => {
            crate::cmd::cargo(&["build", "--release", "--package", "sonde"])?;
            crate::cmd::workspace_root().join("target/release/sonde")
        }
    };
    let probes = probes::build(release)?;
    let ctx = Ctx {
        quick: args.quick,
        reps: args.reps.unwrap_or(if args.quick { 3 } else { 5 }).max(1),
        sonde,
        probes,
        work: tempfile::tempdir()?,
    };
    // Left on by an earlier tool, run-time accounting would inflate every
    // tracing variant; it is switched on only where it is measured.
    let _stats_off = agent::BpfStats::disable()?;
    let all = args.which.contains(&Which::All);
    let want = |w: Which| all || args.which.contains(&w);
    let started = Instant::now();
    let mut results = Vec::new();
    type Scenario = fn(&Ctx) -> ScenarioResult;
    let list: [(Which, Scenario); 7] = [
        (Which::Syscalls, scenarios::syscalls),
        (Which::Http, scenarios::http),
        (Which::Profiler, scenarios::profiler),
        (Which::Python, scenarios::python),
        (Which::OffCpu, scenarios::offcpu),
        (Which::Alloc, scenarios::alloc),
        (Which::Footprint, scenarios::footprint),
    ];
    let out = args
        .out
        .unwrap_or_else(|| crate::cmd::workspace_root().join("docs"));
    // Scenarios not run this time keep their earlier figures (with their
    // own run time), so `bench alloc` updates one section, not the file.
    let mut earlier = if all || args.quick {
        Vec::new()
    } else {
        report::previous(&out)
    };
    for (w, f) in list {
        let name = format!("{w:?}").to_lowercase();
        if want(w) {
            eprintln!("bench: {w:?} ...");
            let t = Instant::now();
            let mut r = f(&ctx);
            r.ran = Some(report::Ran::now(&ctx, t.elapsed()));
            eprintln!("{}", report::summary_line(&r));
            results.push(r);
        } else if let Some(i) = earlier.iter().position(|r| r.name == name) {
            results.push(earlier.swap_remove(i));
        }
    }
    report::write(&out, &results, &ctx, started.elapsed())?;
    eprintln!(
        "bench: wrote {}/benchmarks.md and benchmarks.json in {:.0?}",
        out.display(),
        started.elapsed()
    );
    Ok(())
}
