//! `offcpu`: what the off-CPU profiler's `sched_switch` program costs: its
//! run time per context switch, and the round-trip rate of a pipe
//! ping-pong (two processes, every round trip two blocking reads and four
//! switches) with the agent next to none and next to the floor, an empty
//! tp_btf `sched_switch` program (ebpf/sonde-bench-ebpf, attached by
//! xtask/bench-probes): what any off-CPU profiler on that hook pays.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{alternate, finish};
use crate::bench::{
    Ctx,
    agent::{Agent, BpfStats, bpf_run_stats_named, build_c},
    probes::Probes,
    report::ScenarioResult,
};

/// The program whose run time is measured (bpftool shows the name).
const PROGRAM: &str = "profile_offcpu";
/// The floor's program (xtask/bench-probes `offcpu`).
const FLOOR: &str = "offcpu_floor";

/// (round trips per second from wall time, CPU ns per round trip).
fn pingpong(bin: &std::path::Path, n: u64) -> Result<(f64, f64)> {
    let out = Command::new(bin).arg(n.to_string()).output()?;
    if !out.status.success() {
        bail!(
            "pipe_pingpong failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let number = |prefix: &str| -> Result<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.trim().parse().ok())
            .with_context(|| format!("pipe_pingpong printed no {prefix:?}: {text}"))
    };
    let cpu = number("pingpong cpu ns/roundtrip")?;
    let wall = number("wall ns/roundtrip")?;
    Ok((1e9 / wall, cpu))
}

pub fn offcpu(ctx: &Ctx) -> ScenarioResult {
    let name = "offcpu";
    let what = "The off-CPU profiler's cost: the kernel's run time per context switch of the \
                profile object's tp_btf sched_switch program (kernel.bpf_stats_enabled, read \
                through bpftool, in a run of its own so the accounting does not slow the rate \
                runs), and the round-trip rate of a pipe ping-pong between two processes \
                (xtask/bench/pipe_pingpong.c, 4 context switches per round trip) with no agent, \
                with the floor (an empty tp_btf sched_switch program, benchmark-only), with the \
                default agent and off-CPU on, and with off-CPU off, run alternately; ratios \
                are taken run by run.";
    let run = || -> Result<ScenarioResult> {
        let bin = build_c("xtask/bench/pipe_pingpong.c", ctx.work.path())?;
        let n: u64 = if ctx.quick { 100_000 } else { 400_000 };
        let warm = Duration::from_secs(if ctx.quick { 2 } else { 5 });
        // The run time per switch of `program` held by `pid`, over a ping-pong
        // of its own: the accounting adds two clock reads per run, which must
        // not slow the rate runs.
        let per_switch = |pid: u32, program: &str| -> Result<f64> {
            let s = BpfStats::enable()?;
            let (ns0, n0) = bpf_run_stats_named(pid, "tracing", program)?;
            pingpong(&bin, n / 2)?;
            let (ns1, n1) = bpf_run_stats_named(pid, "tracing", program)?;
            drop(s);
            if n1 <= n0 {
                bail!("the {program} program never ran (is it attached to sched_switch?)");
            }
            Ok((ns1 - ns0) as f64 / (n1 - n0) as f64)
        };
        let with_agent =
            |env: &[(&str, String)], stats: bool| -> Result<Vec<(&'static str, f64)>> {
                let a = Agent::start(&ctx.sonde, ctx.work.path(), env)?;
                std::thread::sleep(warm);
                let (rate, cpu) = pingpong(&bin, n)?;
                let mut out = vec![("round trips", rate), ("CPU per round trip", cpu)];
                if stats {
                    out.push(("BPF time per switch", per_switch(a.pid(), PROGRAM)?));
                }
                a.stop()?;
                Ok(out)
            };
        let on = vec![("SONDE_COLLECTORS__PROFILE__OFF_CPU", "true".to_owned())];
        let off = vec![("SONDE_COLLECTORS__PROFILE__OFF_CPU", "false".to_owned())];
        let metrics = alternate(
            ctx.reps,
            &[
                ("round trips", "/s"),
                ("CPU per round trip", "ns"),
                ("BPF time per switch", "ns"),
            ],
            vec![
                (
                    "no agent",
                    Box::new(|| {
                        let (rate, cpu) = pingpong(&bin, n)?;
                        Ok(vec![("round trips", rate), ("CPU per round trip", cpu)])
                    }),
                ),
                (
                    "empty sched_switch (floor)",
                    Box::new(|| {
                        let p = Probes::start(&ctx.probes, &["offcpu"])?;
                        let (rate, cpu) = pingpong(&bin, n)?;
                        let bpf = per_switch(p.pid(), FLOOR)?;
                        drop(p);
                        Ok(vec![
                            ("round trips", rate),
                            ("CPU per round trip", cpu),
                            ("BPF time per switch", bpf),
                        ])
                    }),
                ),
                ("agent, off-CPU on", Box::new(|| with_agent(&on, true))),
                ("agent, off-CPU off", Box::new(|| with_agent(&off, false))),
            ],
        )?;
        let mut r = ScenarioResult {
            metrics,
            ..Default::default()
        };
        let ratio = |num: &str, den: &str| r.paired_ratio("round trips", num, den);
        let on = ratio("agent, off-CPU on", "no agent");
        let floor = ratio("empty sched_switch (floor)", "no agent");
        let above = ratio("agent, off-CPU on", "empty sched_switch (floor)");
        let program = ratio("agent, off-CPU on", "agent, off-CPU off");
        let off = ratio("agent, off-CPU off", "no agent");
        r.derive_paired(
            "ping-pong rate, off-CPU on / no agent",
            on,
            Some(("≥ 0.97", |x| x >= 0.97)),
        );
        r.derive_paired(
            "ping-pong rate, floor (empty sched_switch) / no agent",
            floor,
            None,
        );
        r.derive_paired(
            "ping-pong rate, off-CPU on / floor (sonde's share above it)",
            above,
            None,
        );
        r.derive_paired(
            "ping-pong rate, off-CPU on / off-CPU off (the program alone)",
            program,
            None,
        );
        r.derive_paired("ping-pong rate, off-CPU off / no agent", off, None);
        let per = r.median("BPF time per switch", "agent, off-CPU on");
        let floor_per = r.median("BPF time per switch", "empty sched_switch (floor)");
        r.derive("BPF time per context switch", per, "ns", None);
        r.derive("BPF time per switch, floor", floor_per, "ns", None);
        r.derive(
            "BPF time per switch above the floor",
            per.zip(floor_per).map(|(a, b)| a - b),
            "ns",
            None,
        );
        r.commands = vec![
            format!(
                "xtask/bench/pipe_pingpong.c (gcc -O2) {n} round trips; sonde agent with the \
                 default config and SONDE_COLLECTORS__PROFILE__OFF_CPU=true (blocks >= 1 ms, \
                 <= 1000 stacks/s per CPU) or =false, after a {}s warm-up",
                warm.as_secs()
            ),
            format!(
                "BPF time per switch: run_time_ns / run_cnt of {PROGRAM} (or {FLOOR}) over a \
                 further {} round trips with kernel.bpf_stats_enabled=1",
                n / 2
            ),
            "floor: sonde-bench-probes offcpu (an empty tp_btf sched_switch program)".to_owned(),
        ];
        Ok(r)
    };
    finish(name, what, run())
}
