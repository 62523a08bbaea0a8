//! The `memory` collector (tier 1, always on): mmap/munmap/mremap/brk
//! seen where they take the mmap lock (tp_btf; the syscall exit where the
//! kernel lacks those tracepoints) and sampled page faults count bytes by
//! (process, user stack, kind) in the kernel; a drain thread flips the map
//! generation, symbolizes the rows into [`MemoryStore`], and keeps the
//! per-service metrics. CPython processes (detected when they first show
//! up in a drain, as the profiler does: profile/python.rs) are marked in
//! the object's `PY_PROCS`; their rows then carry the Python stack, spliced
//! into the native one.
//!
//! The drain is a thread, not a tokio task: each drain reads whole maps and
//! symbolizes with blazesym (not `Send`, and long blocking work that would
//! stall the two async workers). It ends when the collector's token fires
//! (its command channel closes).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuHashMap, StackTraceMap},
    programs::{
        PerfEvent,
        perf_event::{PerfEventConfig, SamplePolicy, SoftwareEvent},
    },
};
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};
use sonde_common::{
    memory::{
        MEM_FAULT_SAMPLE_SLOT, MEM_GEN_SLOT, MEM_PAGE_SIZE_SLOT, MEM_TOTAL_VM_OFF_SLOT, MemCounter,
        MemKey, MemKind, MemValue,
    },
    python::{PY_STACK_ID_BASE, PyFrameRecord, PyStack},
};
use tokio::sync::oneshot;

use super::{
    kernel_layout,
    store::{Group, MemoryStore, Update},
};
use crate::{
    collectors::{
        Base, Collector, CollectorError, ComponentHealth, Deps, SharedHealth, StartContext,
        kit::{
            attach::{Hook, HookSet, PerCpu, attach_per_cpu, attach_set, load_only},
            budget, chain, comm_str,
            counters::KernelCounters,
            program, take_map,
        },
        profile::{
            python::{self, PyTracker, PythonMetrics},
            symbolize::{Limits, Resolver, SymbolizeMetrics},
        },
    },
    config::{MemoryConfig, MemoryHook},
    ebpf::{self, KernelBtf},
    process_table::ProcessTable,
};

pub const NAME: &str = "memory";

/// This collector's eBPF object.
pub const OBJECT: ebpf::Object = ebpf::object!("sonde-memory");

/// Distinct Python stacks per generation (`PY_STACKS_*`, 3 KiB each): the
/// object's default is sized for the profiler; faults and mappings of
/// Python code see far fewer.
const PY_STACKS: u32 = 512;

/// Most distinct `service_name` label values; the rest go under `other`.
const MAX_SERVICE_LABELS: usize = 1000;

/// Address-space changes where they take the mmap lock (they need the
/// offset of `mm->total_vm`).
const LOCK: HookSet = HookSet::new(
    None,
    "tp_btf mmap_lock (mmap/munmap/mremap/brk)",
    &[
        Hook::TpBtf("mem_lock_acquired", "mmap_lock_acquire_returned"),
        Hook::TpBtf("mem_lock_released", "mmap_lock_released"),
    ],
);
/// ... else at the syscall exit.
const SYS_EXIT: HookSet = HookSet::new(
    None,
    "tp_btf sys_exit (mmap/munmap/mremap/brk)",
    &[Hook::TpBtf("mem_sys_exit", "sys_exit")],
);
/// ... else on the per-syscall tracepoints, for kernels without tp_btf.
/// Enabling any of them costs every syscall of every task (see
/// ebpf/sonde-ebpf/src/memory.rs), so they come last.
const SYSCALLS: HookSet = HookSet::new(
    None,
    "syscall tracepoints",
    &[
        Hook::Tp("mem_mmap", "syscalls", "sys_enter_mmap"),
        Hook::Tp("mem_munmap", "syscalls", "sys_enter_munmap"),
        Hook::Tp("mem_mremap", "syscalls", "sys_enter_mremap"),
        Hook::Tp("mem_brk", "syscalls", "sys_exit_brk"),
    ],
)
.partial();
/// Page faults: tp_btf with an in-kernel countdown, else a software perf
/// event per CPU (`mem_fault`) with the same period.
const FAULT: HookSet = HookSet::new(
    None,
    "tp_btf page_fault_user",
    &[Hook::TpBtf("mem_fault_btf", "page_fault_user")],
);

pub struct MemoryCollector {
    config: MemoryConfig,
    store: MemoryStore,
    table: ProcessTable,
    base: Base,
}

impl MemoryCollector {
    /// Registers the [`MemoryStore`] for `sonde memory`.
    pub fn new(config: &MemoryConfig, deps: &Deps) -> Self {
        let store = MemoryStore::new(config.max_rows.get() as usize);
        deps.handles.register(store.clone());
        Self {
            config: config.clone(),
            store,
            table: deps.processes.clone(),
            base: Base::new(),
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
    python_walks: IntCounter,
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
                 stack_missing (counted without a stack), brk_map_full, slot_collision (an mmap-family call not counted: two threads shared a pending slot), store_full, \
                 python_read_fault, python_truncated, python_stack_lost (a Python stack \
                 not walked whole or not stored).",
                &["reason"],
            ),
            drains: t.register(
                IntCounter::new(
                    "sonde_memory_drains_total",
                    "Times the agent drained the memory collector's kernel counts.",
                )
                .expect("valid"),
            ),
            python_walks: t.register(
                IntCounter::new(
                    "sonde_memory_python_walks_total",
                    "Memory events of CPython processes whose Python frames the kernel walked.",
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

    fn base(&self) -> &Base {
        &self.base
    }

    fn base_mut(&mut self) -> &mut Base {
        &mut self.base
    }

    fn stop(&mut self) {
        self.store.set_flusher(None);
        self.base.stop();
    }

    fn start(&mut self, ctx: StartContext<'_>) -> Result<(), CollectorError> {
        self.start_inner(ctx)
    }
}

struct Kernel {
    control: Array<MapData, u64>,
    counts: [PerCpuHashMap<MapData, MemKey, MemValue>; 2],
    stacks: [StackTraceMap<MapData>; 2],
    /// Python stacks walked by the kernel (ids >= PY_STACK_ID_BASE).
    py_stacks: [BpfHashMap<MapData, u32, PyStack>; 2],
    counters: KernelCounters<MemCounter>,
}

impl MemoryCollector {
    fn start_inner(&mut self, ctx: StartContext<'_>) -> Result<(), CollectorError> {
        let level = ctx.kernel_log_level;
        let mut obj = ebpf::load_with(OBJECT, &level, |l| {
            l.map_max_entries("PY_STACKS_0", PY_STACKS);
            l.map_max_entries("PY_STACKS_1", PY_STACKS);
        })?;
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
            py_stacks: [
                take_map(&mut obj, "PY_STACKS_0")?,
                take_map(&mut obj, "PY_STACKS_1")?,
            ],
            counters: KernelCounters::new(take_map(&mut obj, "MEM_COUNTERS_MAP")?),
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
        let total_vm_off = ctx
            .btf
            .raw()
            .map_err(str::to_owned)
            .and_then(|raw| {
                kernel_layout::field_offset_in(raw, "mm_struct", "total_vm")
                    .map_err(|e| e.to_string())
            })
            .and_then(|off| {
                k.control
                    .set(MEM_TOTAL_VM_OFF_SLOT, off, 0)
                    .map(|()| off)
                    .map_err(|e| format!("MEM_CONTROL: {e}"))
            });
        let (ok, failed) = attach(
            &mut obj,
            ctx.btf,
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
        self.base.set_health(health.clone());
        tracing::info!(collector = NAME, attached = ?ok, failed = failed.len(), "memory collector attached");
        let python = python::tracker(
            ctx.btf,
            take_map(&mut obj, "PY_PROCS")?,
            take_map(&mut obj, "PY_CONFIG")?,
            PythonMetrics::unregistered(),
            NAME,
        );
        let metrics = Metrics::new(ctx.telemetry);
        let (tx, rx) = mpsc::channel();
        self.store.set_flusher(Some(tx.clone()));
        let token = self.base.begin(&ctx);
        let worker = Drainer {
            k,
            _obj: obj,
            python,
            generation: 0,
            metrics,
            store: self.store.clone(),
            table: self.table.clone(),
            services: HashSet::new(),
            procs: HashMap::new(),
            health: self.base.shared_health(),
            base_health: health,
        };
        let interval = self.config.drain_interval.get();
        std::thread::Builder::new()
            .name("sonde-mem-drain".into())
            .spawn(move || worker.run(interval, rx))?;
        tokio::spawn(async move {
            token.cancelled().await;
            // Dropping the sender ends the drain thread's wait.
            drop(tx);
        });
        Ok(())
    }
}

/// Loads and attaches each hook; returns (attached, failures with why).
/// `total_vm_off` is where `mm->total_vm` is (an error: the mmap-lock hooks
/// cannot measure, the syscall hooks are used).
fn attach(
    obj: &mut Ebpf,
    btf: &KernelBtf,
    fault_every: u64,
    hook: MemoryHook,
    total_vm_off: Result<u64, String>,
) -> (Vec<String>, Vec<String>) {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    let syscall_only = hook == MemoryHook::Syscall;
    let config_says = || "collectors.memory.hook = \"syscall\"".to_owned();
    // Address-space changes: the mmap lock, else the syscall exit.
    let lock = if syscall_only {
        Err(config_says())
    } else {
        total_vm_off
            .map_err(|e| format!("mm_struct.total_vm: {e}"))
            .and_then(|_| attach_set(obj, btf, &LOCK).map_err(|e| chain(&e)))
    };
    match lock {
        Ok(_) => ok.push(LOCK.label.to_owned()),
        Err(why) => attach_syscall_hooks(obj, btf, &why, &mut ok, &mut failed),
    }
    let fault_btf = if syscall_only {
        Err(config_says())
    } else {
        attach_set(obj, btf, &FAULT).map_err(|e| chain(&e))
    };
    match fault_btf {
        Ok(_) => ok.push(FAULT.label.to_owned()),
        Err(why) => {
            if !syscall_only {
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
    btf: &KernelBtf,
    why: &str,
    ok: &mut Vec<String>,
    failed: &mut Vec<String>,
) {
    tracing::info!(collector = NAME, %why, "mmap_lock hooks unusable, using the syscall exit");
    let exit_why = match attach_set(obj, btf, &SYS_EXIT) {
        Ok(_) => {
            ok.push(SYS_EXIT.label.to_owned());
            if budget::verify_fallbacks() {
                load_only(obj, btf, &SYSCALLS);
            }
            return;
        }
        Err(e) => chain(&e),
    };
    tracing::info!(collector = NAME, why = %exit_why, "tp_btf sys_exit unusable, using per-syscall tracepoints");
    let context = format!("(mmap_lock: {why}; tp_btf sys_exit: {exit_why})");
    match attach_set(obj, btf, &SYSCALLS) {
        Ok(missing) => {
            for h in SYSCALLS.hooks {
                let d = h.describe();
                if !missing.iter().any(|m| m.starts_with(&format!("{d}:"))) {
                    ok.push(d);
                }
            }
            failed.extend(missing.into_iter().map(|m| format!("{m} {context}")));
        }
        Err(e) => failed.push(format!("{}: {} {context}", SYSCALLS.label, chain(&e))),
    }
}

/// The fallback fault sampler: a software perf event per CPU that runs
/// the program on every N-th fault.
fn attach_fault_event(obj: &mut Ebpf, every: u64) -> Result<usize, String> {
    let p: &mut PerfEvent = program(obj, "mem_fault").map_err(|e| chain(&e))?;
    p.load().map_err(|e| chain(&e))?;
    budget::record("mem_fault", p.info());
    let mut att = PerCpu::default();
    attach_per_cpu(
        p,
        PerfEventConfig::Software(SoftwareEvent::PageFaults),
        SamplePolicy::Period(every),
        &mut att,
    )
    .map_err(|e| chain(&e))?;
    if att.ok.is_empty() {
        return Err(att.failures());
    }
    Ok(att.ok.len())
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
    /// The comm of its rows at the last drain, to notice an exec.
    comm: [u8; sonde_common::COMM_LEN],
    /// When a comm change last made it detected afresh.
    redetected: Option<Instant>,
}

/// A process whose threads carry different comms would look like it
/// exec'd at every drain: it is detected afresh at most this often.
const REDETECT_EVERY: Duration = Duration::from_secs(30);

/// minflt + majflt of a process (/proc/PID/stat fields 10 and 12).
fn faults(pid: u32) -> Option<u64> {
    let stat = crate::process_table::read_lossy(format!("/proc/{pid}/stat"))?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(7)?.parse::<u64>().ok()? + f.get(9)?.parse::<u64>().ok()?)
}

struct Drainer {
    k: Kernel,
    /// Holds the programs attached; dropped (detached) when the thread ends.
    _obj: Ebpf,
    /// Python frames for CPython processes (None without BTF).
    python: Option<PyTracker>,
    generation: u64,
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
        let py_stacks = &mut self.k.py_stacks[idle];
        let mut python: HashMap<i32, Vec<PyFrameRecord>> = HashMap::new();
        for (k, _, _) in &rows {
            let id = k.python_stack_id;
            if id >= PY_STACK_ID_BASE
                && !python.contains_key(&id)
                && let Ok(s) = py_stacks.get(&(id as u32), 0)
            {
                let n = (s.len as usize).min(s.frames.len());
                python.insert(id, s.frames[..n].to_vec());
            }
        }
        let ids: Vec<u32> = py_stacks.keys().filter_map(Result::ok).collect();
        for id in ids {
            let _ = py_stacks.remove(&id);
        }
        if let Some(py) = &mut self.python {
            py.sweep();
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
                // Detected once (again while its interpreter starts): its
                // next rows carry Python frames. A process that was not a
                // walked CPython and changed its comm exec'd (a shell
                // wrapper exec'ing python): detect it afresh.
                if let Some(py) = &mut self.python {
                    let exec = py.interpreter(pid).is_none()
                        && self.procs.get(&pid).is_some_and(|p| {
                            p.comm != k.comm
                                && p.redetected.is_none_or(|t| t.elapsed() >= REDETECT_EVERY)
                        });
                    if exec {
                        if let Some(p) = self.procs.get_mut(&pid) {
                            p.redetected = Some(Instant::now());
                        }
                        py.announced(pid);
                    } else {
                        py.sampled(pid);
                    }
                }
            }
            let mut stack = traces
                .get(&k.user_stack_id)
                .map(|ips| resolver.user(pid, ips))
                .unwrap_or_default();
            if let (Some(py), Some(records)) = (&mut self.python, python.get(&k.python_stack_id)) {
                stack = py.splice(pid, stack, records);
            }
            updates.push(Update {
                pid,
                comm: comm.into(),
                service: service.clone(),
                group,
                stack: stack.into(),
                bytes,
                events: n,
            });
            self.procs
                .entry(pid)
                .or_insert_with(|| ProcState {
                    label,
                    ..Default::default()
                })
                .comm = k.comm;
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
        let d = self.k.counters.export(
            &self.metrics.errors,
            &[MemCounter::Events, MemCounter::PythonWalks],
        );
        self.metrics
            .python_walks
            .inc_by(d.get(MemCounter::PythonWalks));
        let lost = d.get(MemCounter::CountsFull);
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
