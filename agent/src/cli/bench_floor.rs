//! `sonde bench-floor` (hidden): attaches empty programs to the hooks the
//! syscall collector uses (raw tracepoints `sys_enter`/`sys_exit`) and
//! waits for SIGTERM/SIGINT. Benchmarks run it to show the floor of that
//! hook type: what any syscall tracer built on it pays before doing work.
//!
//! With `--cycle`, it measures the syscall hot path part by part instead:
//! for each repetition and each listed variant (`bare` = nothing attached,
//! `floor` = empty programs, `syscalls` = the collector's own enter/exit,
//! others = the `bench_<name>_enter/_exit` programs of the object), it
//! attaches the pair, runs the command, prints `<rep> <variant> <first line
//! of the command's output>` and detaches. Attaching takes milliseconds, so
//! the variants alternate quickly and share the machine's conditions.

use anyhow::{Context as _, bail};
use aya::programs::RawTracePoint;
use clap::Args;

#[derive(Debug, Args)]
pub struct BenchFloorArgs {
    /// Comma-separated variants to alternate, e.g.
    /// `bare,floor,slot,pid,kt,boot,tai,pidkt,pidktarr,pidkthash,pidktcache,syscalls`.
    #[arg(long, requires = "command")]
    pub cycle: Option<String>,
    /// Repetitions of the whole cycle.
    #[arg(long, default_value_t = 15)]
    pub reps: usize,
    /// Command run once per variant and repetition (after `--`), e.g.
    /// `taskset -c 1 getppid_loop 300000`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Hooks the `syscalls` variant attaches first, as the agent does.
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

fn raw_tp<'a>(obj: &'a mut aya::Ebpf, name: &str) -> anyhow::Result<&'a mut RawTracePoint> {
    Ok(obj
        .program_mut(name)
        .with_context(|| format!("{name} missing from the object"))?
        .try_into()?)
}

pub fn run(args: &BenchFloorArgs) -> anyhow::Result<()> {
    let mut obj = crate::ebpf::load(crate::collectors::syscalls::OBJECT, 0)
        .context("loading sonde-syscalls")?;
    if let Some(list) = &args.cycle {
        return cycle(&mut obj, list, args.reps, &args.command);
    }
    for (name, tp) in [
        ("syscalls_floor_enter", "sys_enter"),
        ("syscalls_floor_exit", "sys_exit"),
    ] {
        let p = raw_tp(&mut obj, name)?;
        p.load().with_context(|| format!("loading {name}"))?;
        p.attach(tp)
            .with_context(|| format!("attaching {name} to {tp}"))?;
    }
    println!("attached empty raw tracepoints sys_enter/sys_exit; stop with SIGTERM");
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.add(nix::sys::signal::Signal::SIGINT);
    set.thread_block().context("blocking signals")?;
    set.wait().context("waiting for a signal")?;
    drop(obj);
    Ok(())
}

/// The `syscalls` variant also attaches the collector's `sched_switch` and
/// `sched_process_exit` hooks (first, as the agent does): its exit trusts
/// that every switch-out clears the per-CPU slot and flushes the call cache.
fn cycle(obj: &mut aya::Ebpf, list: &str, reps: usize, command: &[String]) -> anyhow::Result<()> {
    let Some((prog, prog_args)) = command.split_first() else {
        bail!("--cycle needs a command after --");
    };
    let variants: Vec<&str> = list.split(',').map(str::trim).collect();
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
    for rep in 0..reps {
        for v in &variants {
            let mut links = Vec::new();
            if *v == "syscalls" {
                for (name, tp) in FLUSH_HOOKS {
                    let link = raw_tp(obj, name)?
                        .attach(tp)
                        .with_context(|| format!("attaching the {tp} hook"))?;
                    links.push((name.to_owned(), link));
                }
            }
            if *v != "bare" {
                for (name, tp) in programs(v).into_iter().zip(["sys_enter", "sys_exit"]) {
                    let link = raw_tp(obj, &name)?
                        .attach(tp)
                        .with_context(|| format!("attaching {name}"))?;
                    links.push((name, link));
                }
            }
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
