//! The `memory` collector (tier 1, always on): mmap/munmap/mremap/brk
//! seen where they take the mmap lock (tp_btf; the syscall exit where the
//! kernel lacks those tracepoints) and sampled page faults count bytes by
//! (process, user stack, kind) in the kernel; a drain thread flips the map
//! generation, symbolizes the rows into [`MemoryStore`], and keeps the
//! per-service metrics.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use aya::{
    Btf, Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, StackTraceMap},
    programs::{
        BtfTracePoint, PerfEvent, TracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};
use sonde_common::memory::{
    MEM_COUNTERS, MEM_FAULT_SAMPLE_SLOT, MEM_GEN_SLOT, MEM_PAGE_SIZE_SLOT, MEM_TOTAL_VM_OFF_SLOT,
    MemCounter, MemKey, MemKind, MemValue,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{
    kernel_layout,
    store::{Group, MemoryStore, Update},
};
use crate::{
    collectors::{
        Collector, CollectorError, ComponentHealth, SharedHealth, StartContext, chain,
        profile::symbolize::{Limits, Resolver, SymbolizeMetrics},
        take_map,
    },
    config::{MemoryConfig, MemoryHook},
    ebpf,
    process_table::ProcessTable,
};

pub const NAME: &str = "memory";

/// Most distinct `service_name` label values; the rest go under `other`.
const MAX_SERVICE_LABELS: usize = 1000;

/// The fallback hooks, for kernels without tp_btf: (program, tracepoint
/// category, name). Enabling any per-syscall tracepoint costs every syscall
/// of every task (see ebpf/sonde-ebpf/src/memory.rs), so they come second.
const HOOKS: [(&str, &str, &str); 4] = [
    ("mem_mmap", "syscalls", "sys_enter_mmap"),
    ("mem_munmap", "syscalls", "sys_enter_munmap"),
    ("mem_mremap", "syscalls", "sys_enter_mremap"),
    ("mem_brk", "syscalls", "sys_exit_brk"),
];

pub struct MemoryCollector {
    config: MemoryConfig,
    store: MemoryStore,
    table: ProcessTable,
    health: SharedHealth,
    shutdown: Option<CancellationToken>,
}

impl MemoryCollector {
    pub fn new(config: &MemoryConfig, store: MemoryStore, table: ProcessTable) -> Self {
        Self {
            config: config.clone(),
            store,
            table,
            health: SharedHealth::new(ComponentHealth::unhealthy("not started")),
            shutdown: None,
        }
    }
}

#[derive(Clone)]
struct Metrics {
    mapped: IntGaugeVec,
    resident: IntGaugeVec,
    map_bytes: IntCounterVec,
    faults: IntCounterVec,
    errors: IntCounterVec,
    drains: IntCounter,
}

impl Metrics {
    fn new(t: &crate::telemetry::Telemetry) -> Self {
        let gauge = |name: &str, help: &str| {
            t.register(IntGaugeVec::new(Opts::new(name, help), &["service_name"]).expect("valid"))
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            t.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid"))
        };
        Self {
            mapped: gauge(
                "sonde_memory_mapped_bytes",
                "Virtual memory mapped (VmSize) of the service's live processes that \
                 mapped memory or faulted since the agent started.",
            ),
            resident: gauge(
                "sonde_memory_resident_bytes",
                "Resident memory (VmRSS) of the same processes as sonde_memory_mapped_bytes.",
            ),
            map_bytes: counter(
                "sonde_memory_map_bytes_total",
                "Bytes of address space mapped and released, by service and op: mmap, \
                 munmap, brk_grow, brk_shrink, mremap_grow, mremap_shrink.",
                &["service_name", "op"],
            ),
            faults: counter(
                "sonde_memory_page_faults_total",
                "Page faults (minor + major, /proc/PID/stat) of the service's processes \
                 that the memory collector saw map memory or fault.",
                &["service_name"],
            ),
            errors: counter(
                "sonde_memory_errors_total",
                "Memory collector drops, by reason: counts_map_full (event not counted), \
                 stack_missing (counted without a stack), brk_map_full, slot_collision (an mmap-family call not counted: two threads shared a pending slot), store_full.",
                &["reason"],
            ),
            drains: t.register(
                IntCounter::new(
                    "sonde_memory_drains_total",
                    "Times the agent drained the memory collector's kernel counts.",
                )
                .expect("valid"),
            ),
        }
    }
}

impl Collector for MemoryCollector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn start(&mut self, ctx: StartContext<'_>) -> Result<(), CollectorError> {
        let r = self.start_inner(ctx);
        if let Err(e) = &r {
            self.health.set(ComponentHealth::unhealthy(chain(e)));
        }
        r
    }

    fn health(&self) -> ComponentHealth {
        self.health.get()
    }

    fn stop(&mut self) {
        if let Some(t) = self.shutdown.take() {
            t.cancel();
            self.store.set_flusher(None);
            self.health.set(ComponentHealth::unhealthy("stopped"));
        }
    }
}

struct Kernel {
    control: Array<MapData, u64>,
    counts: [PerCpuHashMap<MapData, MemKey, MemValue>; 2],
    stacks: [StackTraceMap<MapData>; 2],
    counters: PerCpuArray<MapData, u64>,
}

impl MemoryCollector {
    fn start_inner(&mut self, ctx: StartContext<'_>) -> Result<(), CollectorError> {
        let mut obj = ebpf::load(ebpf::MEMORY, ctx.kernel_log_level)?;
        let mut k = Kernel {
            control: take_map(&mut obj, "MEM_CONTROL")?,
            counts: [
                take_map(&mut obj, "MEM_COUNTS_0")?,
                take_map(&mut obj, "MEM_COUNTS_1")?,
            ],
            stacks: [
                take_map(&mut obj, "MEM_STACKS_0")?,
                take_map(&mut obj, "MEM_STACKS_1")?,
            ],
            counters: take_map(&mut obj, "MEM_COUNTERS_MAP")?,
        };
        let map_err = |what: &str, source| CollectorError::Map {
            what: what.into(),
            source,
        };
        k.control
            .set(MEM_PAGE_SIZE_SLOT, page_size(), 0)
            .map_err(|e| map_err("MEM_CONTROL", e))?;
        k.control
            .set(
                MEM_FAULT_SAMPLE_SLOT,
                self.config.fault_sample_every.get(),
                0,
            )
            .map_err(|e| map_err("MEM_CONTROL", e))?;
        // Where `mm->total_vm` is on this kernel, for the mmap-lock hooks.
        let total_vm_off = kernel_layout::field_offset("mm_struct", "total_vm")
            .map_err(|e| e.to_string())
            .and_then(|off| {
                k.control
                    .set(MEM_TOTAL_VM_OFF_SLOT, off, 0)
                    .map(|()| off)
                    .map_err(|e| format!("MEM_CONTROL: {e}"))
            });
        let (ok, failed) = attach(
            &mut obj,
            self.config.fault_sample_every.get(),
            self.config.hook,
            total_vm_off,
        );
        if ok.is_empty() {
            return Err(CollectorError::NoHook(format!(
                "no memory hook attached: {}",
                failed.join("; ")
            )));
        }
        let health = if failed.is_empty() {
            ComponentHealth::healthy(format!(
                "{}; 1 page fault in {} sampled with its stack",
                ok.join(", "),
                self.config.fault_sample_every.get()
            ))
        } else {
            ComponentHealth::degraded(format!(
                "attached {}; not attached: {}",
                ok.join(", "),
                failed.join("; ")
            ))
        };
        self.health.set(health.clone());
        tracing::info!(collector = NAME, attached = ?ok, failed = failed.len(), "memory collector attached");
        let metrics = Metrics::new(ctx.telemetry);
        let (tx, rx) = mpsc::channel();
        self.store.set_flusher(Some(tx.clone()));
        let token = ctx.shutdown.child_token();
        let worker = Drainer {
            k,
            _obj: obj,
            generation: 0,
            last_counters: [0; MEM_COUNTERS as usize],
            metrics,
            store: self.store.clone(),
            table: self.table.clone(),
            services: HashSet::new(),
            procs: HashMap::new(),
            health: self.health.clone(),
            base_health: health,
        };
        let interval = self.config.drain_interval.get();
        std::thread::Builder::new()
            .name("sonde-mem-drain".into())
            .spawn(move || worker.run(interval, rx))?;
        tokio::spawn({
            let token = token.clone();
            async move {
                token.cancelled().await;
                // Dropping the sender ends the drain thread's wait.
                drop(tx);
            }
        });
        self.shutdown = Some(token);
        Ok(())
    }
}

/// Loads and attaches each hook; returns (attached, failures with why).
/// `total_vm_off` is where `mm->total_vm` is (None: the mmap-lock hooks
/// cannot measure, the syscall hooks are used).
fn attach(
    obj: &mut Ebpf,
    fault_every: u64,
    hook: MemoryHook,
    total_vm_off: Result<u64, String>,
) -> (Vec<String>, Vec<String>) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    let btf = Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"));
    // Address-space changes: the mmap lock, else the syscall exit.
    let lock = if hook == MemoryHook::Syscall {
        Err("collectors.memory.hook = \"syscall\"".to_owned())
    } else {
        let progs: &[(&str, &str)] = &[
            ("mem_lock_acquired", "mmap_lock_acquire_returned"),
            ("mem_lock_released", "mmap_lock_released"),
        ];
        total_vm_off
            .map_err(|e| format!("mm_struct.total_vm: {e}"))
            .and_then(|_| attach_btf_all(obj, btf.as_ref(), progs))
    };
    match lock {
        Ok(()) => ok.push("tp_btf mmap_lock (mmap/munmap/mremap/brk)".to_owned()),
        Err(why) => attach_syscall_hooks(obj, btf.as_ref(), &why, &mut ok, &mut failed),
    }
    // Page faults: tp_btf page_fault_user with an in-kernel countdown, else
    // a software perf event per CPU with the same period.
    let fault_btf = if hook == MemoryHook::Syscall {
        Err("collectors.memory.hook = \"syscall\"".to_owned())
    } else {
        attach_btf_all(obj, btf.as_ref(), &[("mem_fault_btf", "page_fault_user")])
    };
    match fault_btf {
        Ok(()) => ok.push("tp_btf page_fault_user".to_owned()),
        Err(why) => {
            if hook != MemoryHook::Syscall {
                tracing::info!(collector = NAME, %why, "tp_btf page_fault_user unusable, sampling faults with a perf event");
            }
            match attach_fault_event(obj, fault_every) {
                Ok(n) => ok.push(format!("page-fault perf event on {n} CPU(s)")),
                Err(e) => failed.push(format!("page-fault perf event: {e} (tp_btf: {why})")),
            }
        }
    }
    (ok, failed)
}

/// tp_btf `sys_exit`, else the per-syscall tracepoints. `why` says why the
/// mmap-lock hooks are not used.
fn attach_syscall_hooks(
    obj: &mut Ebpf,
    btf: Result<&Btf, &String>,
    why: &str,
    ok: &mut Vec<String>,
    failed: &mut Vec<String>,
) {
    tracing::info!(collector = NAME, %why, "mmap_lock hooks unusable, using the syscall exit");
    let exit = attach_btf_all(obj, btf, &[("mem_sys_exit", "sys_exit")]);
    let Err(exit_why) = exit else {
        ok.push("tp_btf sys_exit (mmap/munmap/mremap/brk)".to_owned());
        return;
    };
    tracing::info!(collector = NAME, why = %exit_why, "tp_btf sys_exit unusable, using per-syscall tracepoints");
    for (prog, cat, tp) in HOOKS {
        let r = (|| -> Result<(), String> {
            let p: &mut TracePoint = obj
                .program_mut(prog)
                .ok_or_else(|| format!("{prog} missing from object"))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| chain(&e))?;
            p.load().map_err(|e| chain(&e))?;
            p.attach(cat, tp).map_err(|e| chain(&e))?;
            Ok(())
        })();
        match r {
            Ok(()) => ok.push(format!("{cat}:{tp}")),
            Err(e) => failed.push(format!(
                "{cat}:{tp}: {e} (mmap_lock: {why}; tp_btf sys_exit: {exit_why})"
            )),
        }
    }
}

/// Loads and attaches tp_btf programs, all or none: (program, tracepoint).
fn attach_btf_all(
    obj: &mut Ebpf,
    btf: Result<&Btf, &String>,
    progs: &[(&str, &str)],
) -> Result<(), String> {
    let btf = btf.map_err(|e| e.clone())?;
    let mut links = Vec::new();
    for (prog, tp) in progs {
        let r = (|| -> Result<_, String> {
            let p: &mut BtfTracePoint = obj
                .program_mut(prog)
                .ok_or_else(|| format!("{prog} missing from object"))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| chain(&e))?;
            p.load(tp, btf)
                .map_err(|e| format!("{tp}: {}", chain(&e)))?;
            let link = p.attach().map_err(|e| format!("{tp}: {}", chain(&e)))?;
            Ok((*prog, link))
        })();
        match r {
            Ok(l) => links.push(l),
            Err(e) => {
                // Half a pair would count nothing (or leave slots behind):
                // detach what was attached.
                for (prog, link) in links {
                    if let Some(p) = obj.program_mut(prog)
                        && let Ok(p) = <&mut BtfTracePoint>::try_from(p)
                    {
                        let _ = p.detach(link);
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The fallback fault sampler: a software perf event per CPU that runs
/// the program on every N-th fault.
fn attach_fault_event(obj: &mut Ebpf, every: u64) -> Result<usize, String> {
    let cpus = aya::util::online_cpus().map_err(|(path, e)| format!("reading {path}: {e}"))?;
    let p: &mut PerfEvent = obj
        .program_mut("mem_fault")
        .ok_or("mem_fault missing from object")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| chain(&e))?;
    p.load().map_err(|e| chain(&e))?;
    let mut n = 0;
    let mut errs = Vec::new();
    for cpu in cpus {
        match p.attach(
            PerfEventConfig::Software(SoftwareEvent::PageFaults),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Period(every),
            false,
        ) {
            Ok(_) => n += 1,
            Err(e) => errs.push(format!("cpu{cpu}: {}", chain(&e))),
        }
    }
    if n == 0 {
        return Err(errs.join("; "));
    }
    Ok(n)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { ::libc::sysconf(::libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

/// (VmSize, VmRSS) in bytes from /proc/PID/statm.
fn statm(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let mut it = s.split_whitespace();
    let size: u64 = it.next()?.parse().ok()?;
    let rss: u64 = it.next()?.parse().ok()?;
    let page = page_size();
    Some((size * page, rss * page))
}

#[derive(Default)]
struct ProcState {
    label: Arc<str>,
    size: u64,
    rss: u64,
    faults: Option<u64>,
}

/// minflt + majflt of a process (/proc/PID/stat fields 10 and 12).
fn faults(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(7)?.parse::<u64>().ok()? + f.get(9)?.parse::<u64>().ok()?)
}

struct Drainer {
    k: Kernel,
    /// Holds the programs attached; dropped (detached) when the thread ends.
    _obj: Ebpf,
    generation: u64,
    last_counters: [u64; MEM_COUNTERS as usize],
    metrics: Metrics,
    store: MemoryStore,
    table: ProcessTable,
    services: HashSet<Arc<str>>,
    /// Live processes seen: their service label, last statm, and fault
    /// count (minflt + majflt) last read.
    procs: HashMap<u32, ProcState>,
    health: SharedHealth,
    base_health: ComponentHealth,
}

impl Drainer {
    fn run(mut self, interval: Duration, cmds: mpsc::Receiver<oneshot::Sender<()>>) {
        // Function names are enough here, and DWARF dominates a resolver's
        // memory: ELF symbols only, which keeps a file cheap enough to hold
        // many (every process that maps or faults is symbolized, and an
        // evicted file leaves its process's frames unresolved).
        let mut resolver = Resolver::new(
            Limits {
                files: 256,
                symbols: 50_000,
                processes: 4096,
            },
            SymbolizeMetrics::unregistered(),
        )
        .without_debug_info();
        let mut next = Instant::now() + interval;
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            let reply = match cmds.recv_timeout(wait) {
                Ok(r) => Some(r),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    next = Instant::now() + interval;
                    None
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            self.drain(&mut resolver);
            // Parsed files live for one drain (see `Resolver::release`).
            resolver.release();
            if let Some(r) = reply {
                let _ = r.send(());
            }
        }
    }

    fn label(&mut self, service: &Arc<str>) -> Arc<str> {
        if self.services.contains(service) {
            service.clone()
        } else if self.services.len() < MAX_SERVICE_LABELS {
            self.services.insert(service.clone());
            service.clone()
        } else {
            "other".into()
        }
    }

    fn drain(&mut self, resolver: &mut Resolver) {
        let idle = self.generation as usize;
        self.generation ^= 1;
        if let Err(e) = self.k.control.set(MEM_GEN_SLOT, self.generation, 0) {
            tracing::warn!(collector = NAME, "cannot flip map generation: {e}");
            self.generation ^= 1;
            return;
        }
        // Let programs that read the old generation finish.
        std::thread::sleep(Duration::from_millis(2));
        self.metrics.drains.inc();
        resolver.next_drain();
        let counts = &mut self.k.counts[idle];
        let keys: Vec<MemKey> = counts.keys().filter_map(Result::ok).collect();
        let mut rows = Vec::with_capacity(keys.len());
        for k in &keys {
            if let Ok(v) = counts.get(k, 0) {
                let (b, n) = v
                    .iter()
                    .fold((0u64, 0u64), |(b, n), x| (b + x.bytes, n + x.count));
                if n > 0 {
                    rows.push((*k, b, n));
                }
            }
            let _ = counts.remove(k);
        }
        let stacks = &mut self.k.stacks[idle];
        let mut traces: HashMap<i32, Vec<u64>> = HashMap::new();
        for (k, _, _) in &rows {
            let id = k.user_stack_id;
            if id >= 0
                && !traces.contains_key(&id)
                && let Ok(t) = stacks.get(&(id as u32), 0)
            {
                traces.insert(id, t.frames().iter().map(|f| f.ip).collect());
            }
        }
        let ids: Vec<u32> = stacks.stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            let _ = stacks.remove(&id);
        }

        let mut updates = Vec::new();
        let mut active: HashSet<u32> = HashSet::new();
        // Processes whose maps were looked at this drain: once each, since
        // for a process that is gone every `see` retries /proc/PID/maps,
        // and it can have many rows.
        let mut seen: HashSet<u32> = HashSet::new();
        for (k, bytes, n) in rows {
            let pid = k.tgid;
            active.insert(pid);
            let mut comm = comm_str(&k.comm);
            if comm.is_empty() {
                comm = self.table.get(pid).map(|p| p.comm).unwrap_or_default();
            }
            let service: Arc<str> = self
                .table
                .get(pid)
                .map(|p| p.service)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| comm.clone())
                .into();
            let label = self.label(&service);
            let Some(kind) = MemKind::from_u32(k.kind) else {
                continue;
            };
            let (group, op) = match kind {
                MemKind::FaultAll => continue,
                MemKind::FaultSampled => (Group::Rss, None),
                MemKind::Mmap => (Group::Mapped, Some("mmap")),
                MemKind::BrkGrow => (Group::Mapped, Some("brk_grow")),
                MemKind::MremapGrow => (Group::Mapped, Some("mremap_grow")),
                MemKind::Munmap => (Group::Unmapped, Some("munmap")),
                MemKind::BrkShrink => (Group::Unmapped, Some("brk_shrink")),
                MemKind::MremapShrink => (Group::Unmapped, Some("mremap_shrink")),
            };
            if let Some(op) = op {
                self.metrics
                    .map_bytes
                    .with_label_values(&[&*label, op])
                    .inc_by(bytes);
            }
            if seen.insert(pid) {
                resolver.see(pid);
            }
            let stack = traces
                .get(&k.user_stack_id)
                .map(|ips| resolver.user(pid, ips))
                .unwrap_or_default();
            updates.push(Update {
                pid,
                comm: comm.into(),
                service: service.clone(),
                group,
                stack: stack.into(),
                bytes,
                events: n,
            });
            self.procs.entry(pid).or_insert_with(|| ProcState {
                label,
                ..Default::default()
            });
        }
        let dropped = self.store.add(updates);
        if dropped > 0 {
            self.metrics
                .errors
                .with_label_values(&["store_full"])
                .inc_by(dropped);
        }
        self.refresh_gauges(&active);
        self.export_counters();
        self.store
            .prune(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    /// Re-reads statm and fault counts of processes active in this drain,
    /// forgets exited ones, and sets the per-service gauges and counters.
    fn refresh_gauges(&mut self, active: &HashSet<u32>) {
        let mut gone = Vec::new();
        for (pid, p) in self.procs.iter_mut() {
            if !(active.contains(pid) || p.size == 0) {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    gone.push(*pid);
                }
                continue;
            }
            match (statm(*pid), faults(*pid)) {
                (Some((s, r)), Some(f)) => {
                    (p.size, p.rss) = (s, r);
                    // The first reading counts the faults since the
                    // process started; later ones the difference.
                    let delta = f.saturating_sub(p.faults.unwrap_or(0));
                    p.faults = Some(f);
                    self.metrics
                        .faults
                        .with_label_values(&[&*p.label])
                        .inc_by(delta);
                }
                _ => gone.push(*pid),
            }
        }
        for pid in gone {
            self.procs.remove(&pid);
        }
        let mut by: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
        for p in self.procs.values() {
            let e = by.entry(p.label.clone()).or_default();
            e.0 += p.size;
            e.1 += p.rss;
        }
        // Services whose processes all exited lose their series.
        for svc in self.services.iter() {
            if !by.contains_key(svc) {
                let _ = self.metrics.mapped.remove_label_values(&[svc]);
                let _ = self.metrics.resident.remove_label_values(&[svc]);
            }
        }
        for (svc, (s, r)) in by {
            self.metrics
                .mapped
                .with_label_values(&[&*svc])
                .set(s as i64);
            self.metrics
                .resident
                .with_label_values(&[&*svc])
                .set(r as i64);
        }
    }

    fn export_counters(&mut self) {
        let mut lost = 0;
        for c in MemCounter::ALL {
            let idx = c as u32;
            let delta = crate::collectors::counter_delta(
                &self.k.counters,
                idx,
                &mut self.last_counters[idx as usize],
            );
            if delta == 0 {
                continue;
            }
            let reason = match c {
                MemCounter::Events => continue,
                MemCounter::CountsFull => {
                    lost += delta;
                    "counts_map_full"
                }
                MemCounter::StackMissing => "stack_missing",
                MemCounter::BrkFull => "brk_map_full",
                MemCounter::SlotCollision => "slot_collision",
            };
            self.metrics
                .errors
                .with_label_values(&[reason])
                .inc_by(delta);
        }
        let h = if lost > 0 {
            ComponentHealth::degraded(format!(
                "{}; {lost} events not counted (counts map full) in the last drain",
                self.base_health.reason
            ))
        } else {
            self.base_health.clone()
        };
        self.health.set(h);
    }
}

fn comm_str(c: &[u8]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}
