//! `footprint`: the agent's RSS with every default collector on.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{Busy, alternate, finish};
use crate::bench::{
    Ctx,
    agent::{Agent, CpuMeter, build_c, run_number, status_mib},
    report::ScenarioResult,
    stats::summarize,
};

pub fn footprint(ctx: &Ctx) -> ScenarioResult {
    let name = "footprint";
    let what = "The agent's RSS with every default collector on: peak during start-up (VmHWM \
                after readiness), steady state (median VmRSS after the first 90 s, once the \
                60 s windows and caches have filled; sampled every ~0.5 s) and the last VmRSS \
                of the run, while a mixed workload runs (a syscall loop, short-lived \
                processes, a busy CPU); and the CPU the agent used to become ready \
                (schedstat ns of its threads).";
    let secs = if ctx.quick { 8 } else { 180 };
    // Samples before this are start-up, not steady state.
    let settle = Duration::from_secs(if ctx.quick { 4 } else { 90 });
    let run = || -> Result<ScenarioResult> {
        let loop_bin = build_c("tests/workloads/getppid_loop.c", ctx.work.path())?;
        let metrics = alternate(
            if ctx.quick {
                ctx.reps.min(2)
            } else {
                ctx.reps.min(3)
            },
            &[
                ("startup peak RSS", "MiB"),
                ("steady RSS", "MiB"),
                ("RSS at the end", "MiB"),
                ("startup CPU", "ms"),
            ],
            vec![(
                "all collectors",
                Box::new(|| {
                    let a = Agent::start(&ctx.sonde, ctx.work.path(), &[])?;
                    let peak = status_mib(a.pid(), "VmHWM:")?;
                    // Everything the agent did to become ready: BTF,
                    // loading and verifying programs, the first /proc scan.
                    let startup_ms = CpuMeter::from_birth(a.pid()).seconds()? * 1000.0;
                    let _busy = Busy::start()?;
                    let mut rss = Vec::new();
                    let t0 = Instant::now();
                    while t0.elapsed() < Duration::from_secs(secs) {
                        run_number(&loop_bin, &["100000".into()])?;
                        for _ in 0..20 {
                            Command::new("true").status()?;
                        }
                        let now = status_mib(a.pid(), "VmRSS:")?;
                        if t0.elapsed() >= settle {
                            rss.push(now);
                        }
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    a.stop()?;
                    Ok(vec![
                        ("startup peak RSS", peak),
                        ("steady RSS", summarize(&rss).median),
                        ("RSS at the end", rss.last().copied().unwrap_or(0.0)),
                        ("startup CPU", startup_ms),
                    ])
                }),
            )],
        )?;
        let mut r = ScenarioResult {
            metrics,
            ..Default::default()
        };
        let steady = r.spread("steady RSS", "all collectors");
        r.derive_range(
            "steady RSS",
            steady,
            "MiB",
            Some(("≤ 64 MiB", |m| m <= 64.0)),
        );
        let ratio = r
            .samples("startup peak RSS", "all collectors")
            .zip(r.samples("steady RSS", "all collectors"))
            .map(|(p, s)| {
                let v: Vec<f64> = p.iter().zip(s).map(|(p, s)| p / s).collect();
                let s = summarize(&v);
                (s.median, s.min, s.max)
            });
        r.derive_range(
            "startup peak / steady RSS",
            ratio,
            "×",
            Some(("≤ 1.5×", |x| x <= 1.5)),
        );
        let end = r.spread("RSS at the end", "all collectors");
        r.derive_range(
            "RSS at the end",
            end,
            "MiB",
            Some(("≤ 64 MiB", |m| m <= 64.0)),
        );
        let cpu = r.spread("startup CPU", "all collectors");
        r.derive_range("startup CPU", cpu, "ms", None);
        r.commands = vec![format!(
            "sonde agent (default config) for {secs} s under a mixed workload; steady RSS: \
             the median of VmRSS samples after {} s",
            settle.as_secs()
        )];
        Ok(r)
    };
    finish(name, what, run())
}
