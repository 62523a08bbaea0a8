//! `sonde-bench-probes`: the benchmark-only loader `cargo xtask bench`
//! builds and drives. It attaches the programs of ebpf/sonde-bench-ebpf
//! (floors: empty programs on the agent's hooks; part-by-part variants of
//! the syscall hot path), prints one line starting with `attached`, and
//! holds them until SIGTERM/SIGINT. `cycle` instead alternates variants
//! around a command and prints one line per run. The agent carries none of
//! these programs: they live only here.

mod cycle;

use std::num::NonZeroU32;

use anyhow::{Context as _, Result, bail};
use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, RawTracePoint, UProbe, uprobe::UProbeScope},
};
use clap::{Parser, Subcommand, ValueEnum};

/// One embedded object, built by build.rs from a `[[bin]]` of
/// sonde-bench-ebpf (empty when built with AYA_BUILD_SKIP=1).
struct Object {
    name: &'static str,
    bytes: &'static [u8],
}

macro_rules! object {
    ($name:literal) => {
        Object {
            name: $name,
            bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/", $name)),
        }
    };
}

const SYSCALLS: Object = object!("sonde-bench-syscalls");
const HTTP: Object = object!("sonde-bench-http");
const MEMORY: Object = object!("sonde-bench-memory");
const ALLOC: Object = object!("sonde-bench-alloc");
const OFFCPU: Object = object!("sonde-bench-offcpu");

fn load(obj: &Object) -> Result<Ebpf> {
    if obj.bytes.is_empty() {
        bail!(
            "eBPF object {} is empty: this loader was built with AYA_BUILD_SKIP=1",
            obj.name
        );
    }
    Ebpf::load(obj.bytes).with_context(|| format!("loading {}", obj.name))
}

#[derive(Debug, Parser)]
#[command(about = "Benchmark-only eBPF programs for `cargo xtask bench` (never shipped)")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Empty raw tracepoints on sys_enter/sys_exit (the syscall collector's
    /// hooks): the floor of that hook type.
    Syscalls,
    /// The syscall hot path part by part: for each repetition and each
    /// listed variant, attach its enter/exit pair, run the command, print
    /// `<rep> <variant> <first line of its output>`, detach. Attaching takes
    /// milliseconds, so the variants alternate quickly and share the
    /// machine's conditions.
    Cycle(cycle::CycleArgs),
    /// Programs on the HTTP collector's socket-layer hooks (tp_btf
    /// sock_send_length/sock_recv_length).
    Http {
        #[arg(value_enum)]
        mode: HttpFloor,
    },
    /// Empty programs on the memory collector's preferred hooks (tp_btf
    /// mmap_lock_acquire_returned/_released and page_fault_user).
    Memory,
    /// Programs that do nothing at exactly the probe points and kinds a
    /// `sonde alloc` session on `pid` uses (the floor of the uprobe
    /// machinery).
    Alloc {
        #[arg(long)]
        pid: u32,
    },
    /// An empty tp_btf sched_switch program (the off-CPU profiler's hook):
    /// the floor of any off-CPU profiler there.
    Offcpu,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum HttpFloor {
    /// Empty programs: what the hooks alone cost.
    Floor,
    /// Find each message's buffer and read its first 16 bytes, nothing
    /// else: the floor of any tracer of HTTP content there.
    #[value(name = "floor_read")]
    FloorRead,
}

fn main() -> Result<()> {
    match Cli::parse().what {
        What::Syscalls => {
            let mut obj = load(&SYSCALLS)?;
            for (name, tp) in [
                ("syscalls_floor_enter", "sys_enter"),
                ("syscalls_floor_exit", "sys_exit"),
            ] {
                let p = raw_tp(&mut obj, name)?;
                p.load().with_context(|| format!("loading {name}"))?;
                p.attach(tp)
                    .with_context(|| format!("attaching {name} to {tp}"))?;
            }
            hold(obj, "empty raw tracepoints sys_enter/sys_exit")
        }
        What::Cycle(args) => cycle::run(&args),
        What::Http { mode } => {
            let mut obj = load(&HTTP)?;
            let (send, recv, what) = match mode {
                HttpFloor::Floor => (
                    "http_floor_send",
                    "http_floor_recv",
                    "empty tp_btf sock_send_length/sock_recv_length",
                ),
                HttpFloor::FloorRead => (
                    "http_floor_read_send",
                    "http_floor_read_recv",
                    "16-byte reads on tp_btf sock_send_length/sock_recv_length",
                ),
            };
            attach_btf(
                &mut obj,
                &[(send, "sock_send_length"), (recv, "sock_recv_length")],
            )?;
            hold(obj, what)
        }
        What::Memory => {
            let mut obj = load(&MEMORY)?;
            attach_btf(
                &mut obj,
                &[
                    ("mem_floor_lock_acquired", "mmap_lock_acquire_returned"),
                    ("mem_floor_lock_released", "mmap_lock_released"),
                    ("mem_floor_fault_btf", "page_fault_user"),
                ],
            )?;
            hold(obj, "empty tp_btf mmap_lock and page_fault_user")
        }
        What::Alloc { pid } => {
            let obj = attach_alloc(pid)?;
            hold(obj.0, &format!("{} empty uprobes on pid {pid}", obj.1))
        }
        What::Offcpu => {
            let mut obj = load(&OFFCPU)?;
            attach_btf(&mut obj, &[("offcpu_floor", "sched_switch")])?;
            hold(obj, "empty tp_btf sched_switch")
        }
    }
}

fn raw_tp<'a>(obj: &'a mut Ebpf, name: &str) -> Result<&'a mut RawTracePoint> {
    Ok(obj
        .program_mut(name)
        .with_context(|| format!("{name} missing from the object"))?
        .try_into()?)
}

fn attach_btf(obj: &mut Ebpf, progs: &[(&str, &str)]) -> Result<()> {
    let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
    for (name, tp) in progs {
        let p: &mut BtfTracePoint = obj
            .program_mut(name)
            .with_context(|| format!("{name} missing from the object"))?
            .try_into()?;
        p.load(tp, &btf)
            .with_context(|| format!("loading {name} for {tp}"))?;
        p.attach().with_context(|| format!("attaching {name}"))?;
    }
    Ok(())
}

/// The alloc floor: the same libc, probe points (an entry probe and a
/// return probe per allocation function, `free`'s entry) and scope as a
/// session, from the agent's own lookup, with no-op programs. Returns the
/// object and how many probes it attached.
fn attach_alloc(pid: u32) -> Result<(Ebpf, usize)> {
    let libc = sonde::collectors::memory::libc::find(pid)?;
    let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).context("pid 0")?);
    let mut obj = load(&ALLOC)?;
    for name in ["alloc_noop", "alloc_noop_return"] {
        uprobe(&mut obj, name)?
            .load()
            .with_context(|| format!("loading {name}"))?;
    }
    let mut attach = |prog: &str, t: &sonde::collectors::memory::libc::Target| -> Result<()> {
        uprobe(&mut obj, prog)?
            .attach(t.file_offset, &libc.host_path, scope)
            .with_context(|| format!("{prog} at {}+{}", t.function, t.point.offset))?;
        Ok(())
    };
    // Return probes first, as a session attaches them.
    for t in &libc.allocs {
        attach("alloc_noop_return", t)?;
    }
    for t in &libc.allocs {
        attach("alloc_noop", t)?;
    }
    attach("alloc_noop", &libc.free)?;
    Ok((obj, 2 * libc.allocs.len() + 1))
}

fn uprobe<'a>(obj: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    Ok(obj
        .program_mut(name)
        .with_context(|| format!("{name} missing from the object"))?
        .try_into()?)
}

/// Says what is attached, then keeps it so until SIGTERM/SIGINT.
fn hold(obj: Ebpf, what: &str) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().context("blocking signals")?;
    println!("attached {what}; stop with SIGTERM");
    set.wait().context("waiting for a signal")?;
    drop(obj);
    Ok(())
}
