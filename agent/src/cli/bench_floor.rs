//! `sonde bench-floor` (hidden): attaches empty programs to the hooks the
//! syscall collector uses (raw tracepoints `sys_enter`/`sys_exit`) and
//! waits for SIGTERM/SIGINT. Benchmarks run it to show the floor of that
//! hook type: what any syscall tracer built on it pays before doing work.

use anyhow::Context as _;
use aya::programs::RawTracePoint;

pub fn run() -> anyhow::Result<()> {
    let mut obj = crate::ebpf::load(crate::ebpf::SYSCALLS, 0).context("loading sonde-syscalls")?;
    for (name, tp) in [
        ("syscalls_floor_enter", "sys_enter"),
        ("syscalls_floor_exit", "sys_exit"),
    ] {
        let p: &mut RawTracePoint = obj
            .program_mut(name)
            .with_context(|| format!("{name} missing from the object"))?
            .try_into()?;
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
