//! Continuous CPU profiler: a `perf_event` program samples every online CPU
//! at a fixed frequency (19 Hz by default) and counts stacks in the kernel;
//! the agent drains the counts on an interval, symbolizes them with blazesym
//! and keeps a rolling window that the control API cuts profiles from.
//!
//! Layout: `drain` (kernel maps -> batches), `by_route` (which HTTP route
//! each sample served), `symbolize` (addresses ->
//! frames, cached), `python` (CPython detection, `PY_PROCS`, splicing the
//! kernel's Python frames in place of the interpreter's), `procmaps`
//! (/proc/PID/maps, perf maps), `store` (the window), `pprof`, `render` and
//! `lines` (output formats).
//!
//! Workers: the new-pid announcements are a tokio task under the kit
//! (`Base::spawn`). The drain, the symbolizer and the unwind-table builder
//! are threads of their own, not tokio tasks: blazesym's symbolizer is not
//! `Send` (it must live on one thread), and the drain's map reads and the
//! table builds are long blocking work that would stall the two async
//! workers. They stop when the collector's token fires (the drain thread
//! gets `Cmd::Stop`, the others follow when their senders are gone).

pub mod by_route;
pub mod drain;
pub mod dwarf_size;
pub mod ksyms;
pub mod lines;
pub mod offcpu;
pub mod offcpu_demand;
pub mod pprof;
pub mod procmaps;
pub mod python;
pub mod render;
pub mod store;
pub mod symbolize;
pub mod unwind;

use std::{
    collections::HashMap,
    sync::mpsc,
    time::{Duration, Instant, SystemTime},
};

use aya::{
    Ebpf,
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, SamplePolicy, SoftwareEvent},
    },
};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use sonde_common::COMM_LEN;
use tokio::sync::oneshot;

use self::{
    drain::{DrainMetrics, KernelMaps, RawBatch, RawDrainer, Symbolizing},
    store::ProfileStore,
    symbolize::{DwarfBudget, Limits, Resolver, SymbolizeMetrics},
};
use super::{
    Base, Collector, CollectorError, ComponentHealth, Deps, SharedHealth, StartContext,
    kit::{
        attach::{Links, PerCpu, attach_per_cpu},
        budget, chain,
        counters::KernelCounters,
        program,
        ring::Ring,
        take_map,
    },
    routes,
};
use crate::{config::ProfileConfig, ebpf, process_table::ProcessTable};

pub const NAME: &str = "profile";

/// This collector's eBPF object.
pub const OBJECT: ebpf::Object = ebpf::object!("sonde-profile");

const PROGRAM: &str = "profile_cpu";

/// Processes the drain thread remembers having captured (then it forgets
/// them all and starts over).
const MAX_KNOWN: usize = 65_536;

/// How often newly onlined CPUs are looked for.
const HOTPLUG_CHECK: Duration = Duration::from_secs(30);
/// How long the symbolizer keeps a file's parsed symbols after its last
/// miss (see `Resolver::keep_parsed_for`).
const KEEP_PARSED: Duration = Duration::from_secs(60);

pub struct ProfileCollector {
    config: ProfileConfig,
    /// CPU by route, when the HTTP collector runs too.
    routes: Option<routes::RouteShare>,
    store: ProfileStore,
    /// The off-CPU window, and its on-demand switch.
    offcpu: offcpu::OffCpuStore,
    table: ProcessTable,
    base: Base,
}

impl ProfileCollector {
    /// Registers the [`ProfileStore`] profiles are served from.
    pub fn new(config: &ProfileConfig, deps: &Deps) -> Self {
        // ~40 rows per second per busy CPU at 19 Hz; a generous cap that
        // still bounds memory when thousands of stacks are live.
        let store = ProfileStore::new(config.window.get(), config.frequency_hz.get(), 2_000_000);
        deps.handles.register(store.clone());
        let offcpu = offcpu::OffCpuStore {
            store: ProfileStore::new(config.window.get(), 1, 2_000_000),
            demand: (!config.off_cpu).then(offcpu_demand::Demand::default),
        };
        deps.handles.register(offcpu.clone());
        Self {
            config: config.clone(),
            routes: deps.handles.get::<routes::RouteShare>(),
            store,
            offcpu,
            table: deps.processes.clone(),
            base: Base::new(),
        }
    }
}

/// `offcpu`: how off-CPU profiling runs, `Err` when it was asked for and
/// could not start.
fn describe(att: &PerCpu, hz: u64, offcpu: &Option<Result<String, String>>) -> ComponentHealth {
    let mut base = format!("perf_event cpu-clock at {hz} Hz on {} CPU(s)", att.ok.len());
    let mut degraded = !att.failed.is_empty();
    if degraded {
        base = format!("{base}; not attached on {}", att.failures());
    }
    match offcpu {
        Some(Ok(what)) => base = format!("{base}; {what}"),
        Some(Err(why)) => {
            base = format!("{base}; off-CPU not running: {why}");
            degraded = true;
        }
        None => {}
    }
    if degraded {
        ComponentHealth::degraded(base)
    } else {
        ComponentHealth::healthy(base)
    }
}

/// Attaches to each online CPU not yet attached. CPUs that fail are
/// reported, not fatal: the others keep sampling.
fn attach_cpus(obj: &mut Ebpf, hz: u64, att: &mut PerCpu) -> Result<(), CollectorError> {
    attach_per_cpu(
        program::<PerfEvent>(obj, PROGRAM)?,
        PerfEventConfig::Software(SoftwareEvent::CpuClock),
        SamplePolicy::Frequency(hz),
        att,
    )
}

fn metrics(t: &crate::telemetry::Telemetry) -> (DrainMetrics, IntGauge) {
    let samples = t.register(
        IntCounterVec::new(
            Opts::new(
                "sonde_profile_samples_total",
                "CPU samples recorded by the profiler, by service.",
            ),
            &["service_name"],
        )
        .expect("valid metric"),
    );
    let errors = t.register(
        IntCounterVec::new(
            Opts::new(
                "sonde_profile_errors_total",
                "Profiler sampling failures, by reason: user_stack_missing, \
                 stack_collision, stack_map_full, counts_map_full (sample dropped), \
                 stack_lost, new_pid_dropped.",
            ),
            &["reason"],
        )
        .expect("valid metric"),
    );
    let kernel_stack_absent = t.register(
        IntCounter::new(
            "sonde_profile_kernel_stack_absent_total",
            "Samples without a kernel stack (taken in user mode, or unreadable).",
        )
        .expect("valid metric"),
    );
    let drains = t.register(
        IntCounter::new(
            "sonde_profile_drains_total",
            "Times the agent drained the kernel's sample counts.",
        )
        .expect("valid metric"),
    );
    let cpus = t.gauge(
        "sonde_profile_cpus_attached",
        "CPUs the sampling program is attached to.",
    );
    (
        DrainMetrics {
            samples,
            errors,
            kernel_stack_absent,
            drains,
            python: python::PythonMetrics::new(t),
        },
        cpus,
    )
}

impl Collector for ProfileCollector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn base(&self) -> &Base {
        &self.base
    }

    fn base_mut(&mut self) -> &mut Base {
        &mut self.base
    }

    fn stop(&mut self) {
        self.store.set_flusher(None);
        self.offcpu.store.set_flusher(None);
        if let Some(d) = &self.offcpu.demand {
            d.set_drain(None);
        }
        self.base.stop();
    }

    fn start(&mut self, ctx: StartContext<'_>) -> Result<(), CollectorError> {
        let hz = self.config.frequency_hz.get();
        let rows = unwind_rows(&self.config);
        // Bounded by the config (at most 2^20 and 2^18): they fit a u32.
        let keys = self.config.max_keys.get() as u32;
        let stacks = self.config.max_stacks.get() as u32;
        let off_cpu = self.config.off_cpu;
        let mut obj =
            routes::load_with(self.routes.as_ref(), OBJECT, &ctx.kernel_log_level, |l| {
                l.map_max_entries("UNWIND_ROWS", rows);
                for m in ["PROFILE_COUNTS_0", "PROFILE_COUNTS_1"] {
                    l.map_max_entries(m, keys);
                }
                for m in [
                    "PROFILE_STACKS_0",
                    "PROFILE_STACKS_1",
                    "UNWIND_STACKS_0",
                    "UNWIND_STACKS_1",
                ] {
                    l.map_max_entries(m, stacks);
                }
                // The off-CPU program's task-local storage: aya 0.14 creates
                // the map but has no user-space type for it, which the agent
                // never reads.
                l.allow_unsupported_maps();
            })?;
        ebpf::spawn_kernel_logger(&mut obj, OBJECT.name);
        let maps = KernelMaps {
            control: take_map(&mut obj, "PROFILE_CONTROL")?,
            counts: [
                take_map(&mut obj, "PROFILE_COUNTS_0")?,
                take_map(&mut obj, "PROFILE_COUNTS_1")?,
            ],
            stacks: [
                take_map(&mut obj, "PROFILE_STACKS_0")?,
                take_map(&mut obj, "PROFILE_STACKS_1")?,
            ],
            counters: KernelCounters::new(take_map(&mut obj, "PROFILE_COUNTERS_MAP")?),
            unwound: [
                take_map(&mut obj, "UNWIND_STACKS_0")?,
                take_map(&mut obj, "UNWIND_STACKS_1")?,
            ],
            python: [
                take_map(&mut obj, "PY_STACKS_0")?,
                take_map(&mut obj, "PY_STACKS_1")?,
            ],
        };
        let py_procs = take_map(&mut obj, "PY_PROCS")?;
        let py_config = take_map(&mut obj, "PY_CONFIG")?;
        let unwind_maps = unwind::UnwindMaps {
            rows: match obj.take_map("UNWIND_ROWS") {
                Some(aya::maps::Map::Array(m)) => m,
                _ => return Err(CollectorError::missing_map("UNWIND_ROWS")),
            },
            files: take_map(&mut obj, "UNWIND_FILES")?,
            procs: take_map(&mut obj, "UNWIND_PROCS")?,
            counters: KernelCounters::new(take_map(&mut obj, "UNWIND_COUNTERS_MAP")?),
        };
        let new_pids = Ring::<u32>::new(NAME, take_map(&mut obj, "PROFILE_NEW_PIDS")?)?;
        let prog: &mut PerfEvent = program(&mut obj, PROGRAM)?;
        prog.load().map_err(|source| CollectorError::Program {
            what: PROGRAM.into(),
            source,
        })?;
        // How close the unwinder is to the verifier's 1M-instruction limit:
        // the figure that moved when a kernel build stopped pruning it
        // (0 when the kernel does not report it, before 5.16).
        let verified_insns = prog
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count())
            .unwrap_or(0);
        budget::record(PROGRAM, prog.info());
        // Before anything drops a map it took (the Python tracker drops
        // PY_CONFIG once set): the program's map references are the fds of
        // the object's maps, which must still be open when it loads.
        // Loaded in both modes, so that on demand only attaches; a failure
        // degrades the profiler only when off-CPU was asked to be always on.
        let (offcpu_maps, offcpu_links, offcpu_status) =
            match offcpu::prepare(&mut obj, ctx.btf, &self.config, ctx.telemetry) {
                Ok(mut m) if off_cpu => match m.switch_on(&mut obj) {
                    Ok(l) => (
                        Some(m),
                        Some(l),
                        Some(Ok(offcpu::describe(&self.config, true))),
                    ),
                    Err(e) => {
                        let why = chain(&e);
                        tracing::warn!(collector = NAME, "off-CPU profiling not running: {why}");
                        (None, None, Some(Err(why)))
                    }
                },
                Ok(m) => (
                    Some(m),
                    None,
                    Some(Ok(offcpu::describe(&self.config, false))),
                ),
                Err(e) => {
                    let why = chain(&e);
                    tracing::warn!(collector = NAME, "off-CPU profiling not available: {why}");
                    if off_cpu {
                        (None, None, Some(Err(why)))
                    } else {
                        (
                            None,
                            None,
                            Some(Ok(format!("off-CPU not available: {why}"))),
                        )
                    }
                }
            };
        let mut att = PerCpu::default();
        attach_cpus(&mut obj, hz, &mut att)?;
        if att.ok.is_empty() {
            return Err(CollectorError::NoHook(format!(
                "perf_event cpu-clock attached on no CPU: {}",
                att.failures()
            )));
        }
        let (dm, cpus) = metrics(ctx.telemetry);
        // Without a tracker PY_PROCS stays empty: the kernel walks nothing.
        let py_tracker = self
            .config
            .python
            .then(|| python::tracker(ctx.btf, py_procs, py_config, dm.python.clone(), NAME))
            .flatten();
        cpus.set(att.ok.len() as i64);
        self.base.set_health(describe(&att, hz, &offcpu_status));
        tracing::info!(collector = NAME, hz, cpus = ?att.ok, failed = att.failed.len(), verified_insns, "profiler attached");

        let limits = Limits {
            files: self.config.max_cached_files.get() as usize,
            symbols: self.config.max_cached_symbols.get() as usize,
            processes: self.config.max_processes.get() as usize,
        };
        let sym_metrics = SymbolizeMetrics::new(ctx.telemetry);
        let dwarf_budget = DwarfBudget::per_file_mib(self.config.dwarf_budget_mib.get());
        let unwind_tx = if self.config.unwind {
            let m = unwind::UnwindMetrics::new(ctx.telemetry, u64::from(rows) * unwind::ROW_BYTES);
            let u = unwind::Unwinder::new(unwind_maps, rows, m)?;
            let (utx, urx) = mpsc::channel();
            std::thread::Builder::new()
                .name("sonde-prof-unwind".into())
                .spawn(move || u.run(urx))?;
            Some(utx)
        } else {
            None
        };
        let (tx, rx) = mpsc::channel();
        let (sym_tx, sym_rx) = mpsc::channel();
        self.store.set_flusher(Some(tx.clone()));
        let offcpu_store = Some(self.offcpu.clone()).filter(|_| offcpu_maps.is_some());
        if let Some(o) = &offcpu_store {
            o.store.set_flusher(Some(tx.clone()));
            if let Some(d) = &o.demand {
                d.set_drain(Some(tx.clone()));
            }
        }
        let token = self.base.begin(&ctx);
        let samples = dm.samples.clone();
        let worker = Worker {
            raw: RawDrainer::new(maps, dm, offcpu_maps),
            obj,
            att,
            hz,
            offcpu: offcpu_status,
            offcpu_links,
            config: self.config.clone(),
            cpus,
            health: self.base.shared_health(),
        };
        let interval = self.config.drain_interval.get();
        let drain_out = sym_tx.clone();
        let hot = unwind_tx.clone();
        std::thread::Builder::new()
            .name("sonde-prof-drain".into())
            .spawn(move || run_drain(worker, interval, rx, drain_out, hot))?;
        // blazesym's symbolizer is not Send: it is built on, and never
        // leaves, a thread of its own.
        let (store, table) = (self.store.clone(), self.table.clone());
        let attribution = self
            .routes
            .clone()
            .map(|r| by_route::Attribution::new(r, ctx.telemetry, hz));
        std::thread::Builder::new()
            .name("sonde-prof-sym".into())
            .spawn(move || {
                let resolver = Resolver::new(limits, sym_metrics)
                    .keep_parsed_for(KEEP_PARSED, interval)
                    .dwarf_budget(dwarf_budget);
                let mut s = Symbolizing::new(resolver, store, table, samples);
                if let Some(t) = py_tracker {
                    s = s.with_python(t);
                }
                if let Some(a) = attribution {
                    s = s.with_routes(a);
                }
                if let Some(o) = offcpu_store {
                    s = s.with_offcpu(o);
                }
                run_symbolize(s, sym_rx);
            })?;
        self.base
            .spawn(new_pids.run(move |pids| forward_new_pids(pids, &sym_tx, unwind_tx.as_ref())));
        // Wake the drain thread at shutdown: it exits on `Stop`, and the
        // symbolizing thread follows when its senders are gone.
        tokio::spawn(async move {
            token.cancelled().await;
            let _ = tx.send(Cmd::Stop);
        });
        Ok(())
    }
}

/// Rows of the unwind table array: the memory budget, or one when
/// unwinding is off (the map must exist for the program to load).
fn unwind_rows(c: &ProfileConfig) -> u32 {
    if !c.unwind {
        return 1;
    }
    (c.unwind_table_budget_mib.get() * 1024 * 1024 / unwind::ROW_BYTES) as u32
}

/// Everything the drain thread owns; dropping it detaches the programs.
struct Worker {
    raw: RawDrainer,
    obj: Ebpf,
    att: PerCpu,
    hz: u64,
    offcpu: Option<Result<String, String>>,
    /// The off-CPU hook's links while it is attached.
    offcpu_links: Option<Links>,
    config: ProfileConfig,
    cpus: IntGauge,
    health: SharedHealth,
}

impl Worker {
    fn step(&mut self, check_hotplug: bool) -> RawBatch {
        if check_hotplug && let Err(e) = attach_cpus(&mut self.obj, self.hz, &mut self.att) {
            tracing::warn!(collector = NAME, "CPU hotplug check failed: {}", chain(&e));
        }
        self.cpus.set(self.att.ok.len() as i64);
        let r = self.raw.drain();
        let mut h = describe(&self.att, self.hz, &self.offcpu);
        if r.dropped > 0 {
            h = ComponentHealth::degraded(format!(
                "{}; {} samples dropped (counts map full) in the last drain",
                h.reason, r.dropped
            ));
        }
        self.health.set(h);
        r
    }

    /// Attaches the off-CPU hook for on-demand requests (see
    /// offcpu_demand.rs).
    fn offcpu_on(&mut self) -> Result<(), String> {
        if self.offcpu_links.is_some() {
            return Ok(());
        }
        let Some(maps) = self.raw.offcpu_mut() else {
            return Err(match &self.offcpu {
                Some(Ok(s) | Err(s)) => s.clone(),
                None => "not loaded".into(),
            });
        };
        let links = maps.switch_on(&mut self.obj).map_err(|e| chain(&e))?;
        self.offcpu_links = Some(links);
        self.offcpu = Some(Ok(offcpu::describe(&self.config, true)));
        self.health.set(describe(&self.att, self.hz, &self.offcpu));
        tracing::info!(collector = NAME, "off-CPU hook attached on demand");
        Ok(())
    }

    /// Detaches the on-demand off-CPU hook (the last request ended).
    fn offcpu_off(&mut self) {
        let (Some(links), Some(maps)) = (self.offcpu_links.take(), self.raw.offcpu_mut()) else {
            return;
        };
        maps.switch_off(&mut self.obj, links);
        self.offcpu = Some(Ok(offcpu::describe(&self.config, false)));
        self.health.set(describe(&self.att, self.hz, &self.offcpu));
        tracing::info!(collector = NAME, "off-CPU hook detached (no request left)");
    }
}

/// Passes first-seen pids from the kernel to the symbolizing thread, with
/// their maps read and files opened here and now: the process may exit any
/// moment, and the symbolizing thread may be busy.
fn forward_new_pids(
    pids: &mut dyn Iterator<Item = u32>,
    tx: &mpsc::Sender<SymCmd>,
    unwind: Option<&mpsc::Sender<unwind::UnwindCmd>>,
) {
    for pid in pids {
        if let Some(u) = unwind {
            let _ = u.send(unwind::UnwindCmd::Seen(pid));
        }
        let Some(c) = procmaps::Captured::read(pid) else {
            tracing::debug!(collector = NAME, pid, "announced process already gone");
            continue;
        };
        tracing::debug!(
            collector = NAME,
            pid,
            maps = c.maps.maps.len(),
            "process announced"
        );
        let _ = tx.send(SymCmd::Seen(c));
    }
}

/// Requests to the drain thread besides its periodic drain.
pub enum Cmd {
    /// Drain now; answered with the flip time once the batch is in the
    /// window.
    Flush(oneshot::Sender<SystemTime>),
    /// Attach the on-demand off-CPU hook; answered once it runs.
    OffCpuOn(oneshot::Sender<Result<(), String>>),
    /// Detach the on-demand off-CPU hook.
    OffCpuOff,
    Stop,
}

/// Work for the symbolizing thread.
pub enum SymCmd {
    /// A process was sampled for the first time: its maps and files.
    Seen(procmaps::Captured),
    /// A drained batch, and who waits for it to be in the window.
    Batch(Box<RawBatch>, Option<oneshot::Sender<SystemTime>>),
}

/// Drains every `interval` and on every flush request; returns (dropping
/// the object, which detaches the programs) on `Stop` or when every sender
/// is gone.
fn run_drain(
    mut w: Worker,
    interval: Duration,
    cmds: mpsc::Receiver<Cmd>,
    out: mpsc::Sender<SymCmd>,
    hot: Option<mpsc::Sender<unwind::UnwindCmd>>,
) {
    let mut next = Instant::now() + interval;
    let mut last_hotplug = Instant::now();
    let mut known: HashMap<u32, [u8; COMM_LEN]> = HashMap::new();
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        let reply = match cmds.recv_timeout(wait) {
            Ok(Cmd::Flush(r)) => Some(r),
            Ok(Cmd::OffCpuOn(r)) => {
                let _ = r.send(w.offcpu_on());
                continue;
            }
            Ok(Cmd::OffCpuOff) => {
                w.offcpu_off();
                continue;
            }
            Ok(Cmd::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                next = Instant::now() + interval;
                None
            }
        };
        let hotplug = last_hotplug.elapsed() >= HOTPLUG_CHECK;
        if hotplug {
            last_hotplug = Instant::now();
        }
        let batch = w.step(hotplug);
        // Capture processes new to this thread before handing the batch
        // over, so their maps are in before their samples even when the
        // ring-buffer announcement is late.
        // Off-CPU rows name every thread that blocked, each with its own
        // comm: a new comm there is not an exec, only a new pid is news.
        let cpu = batch.rows.iter().map(|(k, _)| (k, false));
        let off = batch.offcpu.iter().chain(&batch.offcpu_late.rows);
        for (k, off) in cpu.chain(off.map(|(k, _)| (k, true))) {
            let seen = known.get(&k.tgid);
            if seen == Some(&k.comm) || (off && seen.is_some()) {
                continue;
            }
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
            known.insert(k.tgid, k.comm);
            if let Some(c) = procmaps::Captured::read(k.tgid)
                && out.send(SymCmd::Seen(c)).is_err()
            {
                return;
            }
        }
        if let Some(h) = &hot {
            let mut per_pid: HashMap<u32, u64> = HashMap::new();
            for (k, n) in &batch.rows {
                *per_pid.entry(k.tgid).or_default() += n;
            }
            // A process that only blocks is busy too: its off-CPU stacks
            // need its tables as much (one per stack; the values are ns).
            for (k, _) in batch.offcpu.iter().chain(&batch.offcpu_late.rows) {
                *per_pid.entry(k.tgid).or_default() += 1;
            }
            let _ = h.send(unwind::UnwindCmd::Hot(per_pid.into_iter().collect()));
        }
        if out.send(SymCmd::Batch(Box::new(batch), reply)).is_err() {
            return;
        }
    }
}

fn run_symbolize(mut s: Symbolizing, cmds: mpsc::Receiver<SymCmd>) {
    while let Ok(cmd) = cmds.recv() {
        match cmd {
            SymCmd::Seen(c) => s.seen(c),
            SymCmd::Batch(raw, reply) => {
                let at = raw.at.unwrap_or_else(SystemTime::now);
                s.process(*raw);
                if let Some(r) = reply {
                    let _ = r.send(at);
                }
            }
        }
    }
}
