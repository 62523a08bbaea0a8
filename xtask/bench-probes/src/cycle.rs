//! `sonde-bench-probes cycle`: the syscall hot path part by part. Variants:
//! `bare` = nothing attached, `floor` = empty programs, `syscalls` = the
//! collector's own enter/exit (built from the agent's source), others = the
//! `bench_<name>_enter/_exit` programs of sonde-bench-syscalls.

use anyhow::{Context as _, Result, bail};
use aya::Ebpf;
use clap::Args;

use crate::raw_tp;

#[derive(Debug, Args)]
pub struct CycleArgs {
    /// Comma-separated variants to alternate, e.g.
    /// `bare,floor,slot,pid,kt,boot,tai,pidkt,pidktarr,pidkthash,pidktcache,syscalls`.
    variants: String,
    /// Repetitions of the whole cycle.
    #[arg(long, default_value_t = 15)]
    reps: usize,
    /// Command run once per variant and repetition (after `--`), e.g.
    /// `taskset -c 1 getppid_loop 300000`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Hooks the `syscalls` variant attaches first, as the agent does: its exit
/// trusts that every switch-out clears the per-CPU slot and flushes the
/// call cache.
const FLUSH_HOOKS: [(&str, &str); 2] = [
    ("syscalls_switch_raw", "sched_switch"),
    ("syscalls_task_exit_raw", "sched_process_exit"),
];

fn programs(variant: &str) -> [String; 2] {
    match variant {
        "floor" => ["syscalls_floor_enter".into(), "syscalls_floor_exit".into()],
        "syscalls" => ["syscalls_enter_raw".into(), "syscalls_exit_raw".into()],
        v => [format!("bench_{v}_enter"), format!("bench_{v}_exit")],
    }
}

pub fn run(args: &CycleArgs) -> Result<()> {
    let mut obj = crate::load(&crate::SYSCALLS)?;
    let obj = &mut obj;
    let Some((prog, prog_args)) = args.command.split_first() else {
        bail!("cycle needs a command after --");
    };
    let variants: Vec<&str> = args.variants.split(',').map(str::trim).collect();
    if variants.contains(&"syscalls") {
        for (name, tp) in FLUSH_HOOKS {
            raw_tp(obj, name)?
                .load()
                .with_context(|| format!("loading the {tp} hook"))?;
        }
    }
    for v in variants.iter().filter(|v| **v != "bare") {
        for name in programs(v) {
            raw_tp(obj, &name)?
                .load()
                .with_context(|| format!("loading {name}"))?;
        }
    }
    for rep in 0..args.reps {
        for v in &variants {
            let links = attach(obj, v)?;
            let out = std::process::Command::new(prog)
                .args(prog_args)
                .output()
                .with_context(|| format!("running {prog}"))?;
            for (name, link) in links {
                raw_tp(obj, &name)?.detach(link)?;
            }
            if !out.status.success() {
                bail!("{prog} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let out = String::from_utf8_lossy(&out.stdout);
            println!("{rep} {v} {}", out.lines().next().unwrap_or("").trim());
        }
    }
    Ok(())
}

type Links = Vec<(String, aya::programs::raw_trace_point::RawTracePointLinkId)>;

fn attach(obj: &mut Ebpf, variant: &str) -> Result<Links> {
    let mut links = Vec::new();
    if variant == "syscalls" {
        for (name, tp) in FLUSH_HOOKS {
            let link = raw_tp(obj, name)?
                .attach(tp)
                .with_context(|| format!("attaching the {tp} hook"))?;
            links.push((name.to_owned(), link));
        }
    }
    if variant != "bare" {
        for (name, tp) in programs(variant).into_iter().zip(["sys_enter", "sys_exit"]) {
            let link = raw_tp(obj, &name)?
                .attach(tp)
                .with_context(|| format!("attaching {name}"))?;
            links.push((name, link));
        }
    }
    Ok(links)
}
