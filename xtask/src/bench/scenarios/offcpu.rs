//! `offcpu`: what the off-CPU profiler's `sched_switch` program costs: its
//! run time per context switch, and the round-trip rate of a pipe
//! ping-pong (two processes, every round trip two blocking reads and four
//! switches) with the agent next to none.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{alternate, finish};
use crate::bench::{
    Ctx,
    agent::{Agent, BpfStats, build_c},
    report::ScenarioResult,
};

/// The program whose run time is measured (bpftool shows the name).
const PROGRAM: &str = "profile_offcpu";

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

/// (run_time_ns, run_cnt) of the program named `name` held by `pid`.
fn program_stats(pid: u32, name: &str) -> Result<(u64, u64)> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path()) {
            ids.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u64>().ok()),
            );
        }
    }
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("bpftool")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool JSON")?;
    let (mut ns, mut cnt) = (0, 0);
    for p in progs.as_array().into_iter().flatten() {
        let id = p["id"].as_u64().unwrap_or(0);
        if ids.contains(&id) && p["name"].as_str() == Some(name) {
            ns += p["run_time_ns"].as_u64().unwrap_or(0);
            cnt += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Ok((ns, cnt))
}

pub fn offcpu(ctx: &Ctx) -> ScenarioResult {
    let name = "offcpu";
    let what = "The off-CPU profiler's cost: the kernel's run time per context switch of the \
                profile object's tp_btf sched_switch program (kernel.bpf_stats_enabled, read \
                through bpftool, in a run of its own so the accounting does not slow the rate \
                runs), and the round-trip rate of a pipe ping-pong between two processes \
                (xtask/bench/pipe_pingpong.c, 4 context switches per round trip) with no agent, \
                with the default agent (off-CPU on) and with off-CPU off, run alternately; \
                ratios are taken run by run.";
    let run = || -> Result<ScenarioResult> {
        let bin = build_c("xtask/bench/pipe_pingpong.c", ctx.work.path())?;
        let n: u64 = if ctx.quick { 100_000 } else { 400_000 };
        let warm = Duration::from_secs(if ctx.quick { 2 } else { 5 });
        let with_agent =
            |env: &[(&str, String)], stats: bool| -> Result<Vec<(&'static str, f64)>> {
                let a = Agent::start(&ctx.sonde, ctx.work.path(), env)?;
                std::thread::sleep(warm);
                let (rate, cpu) = pingpong(&bin, n)?;
                let mut out = vec![("round trips", rate), ("CPU per round trip", cpu)];
                if stats {
                    let s = BpfStats::enable()?;
                    let (ns0, n0) = program_stats(a.pid(), PROGRAM)?;
                    pingpong(&bin, n / 2)?;
                    let (ns1, n1) = program_stats(a.pid(), PROGRAM)?;
                    drop(s);
                    if n1 <= n0 {
                        bail!("the {PROGRAM} program never ran (is off-CPU profiling attached?)");
                    }
                    out.push(("BPF time per switch", (ns1 - ns0) as f64 / (n1 - n0) as f64));
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
                ("agent, off-CPU on", Box::new(|| with_agent(&on, true))),
                ("agent, off-CPU off", Box::new(|| with_agent(&off, false))),
            ],
        )?;
        let mut r = ScenarioResult {
            metrics,
            ..Default::default()
        };
        let on = r.paired_ratio("round trips", "agent, off-CPU on", "no agent");
        r.derive_paired(
            "ping-pong rate, off-CPU on / no agent",
            on,
            Some(("≥ 0.97", |x| x >= 0.97)),
        );
        let off = r.paired_ratio("round trips", "agent, off-CPU off", "no agent");
        r.derive_paired("ping-pong rate, off-CPU off / no agent", off, None);
        let per = r.median("BPF time per switch", "agent, off-CPU on");
        r.derive("BPF time per context switch", per, "ns", None);
        r.commands = vec![
            format!(
                "xtask/bench/pipe_pingpong.c (gcc -O2) {n} round trips; sonde agent with the \
                 default config and SONDE_COLLECTORS__PROFILE__OFF_CPU=true (blocks >= 1 ms, \
                 <= 1000 stacks/s per CPU) or =false, after a {}s warm-up",
                warm.as_secs()
            ),
            format!(
                "BPF time per switch: run_time_ns / run_cnt of {PROGRAM} over a further {} round \
                 trips with kernel.bpf_stats_enabled=1",
                n / 2
            ),
        ];
        Ok(r)
    };
    finish(name, what, run())
}
