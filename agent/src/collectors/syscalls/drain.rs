//! One attachment of the syscall hooks and its drain: loading and attaching
//! the object, and reading the kernel's cumulative counters into deltas,
//! the CLI window, the totals of `sonde top` and (always-on) Prometheus,
//! deleting the keys of processes that have exited.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuHashMap},
};
use prometheus::{IntCounterVec, IntGauge, Opts};
use sonde_common::syscalls::{ErrnoKey, SyscallCounter, SyscallKey, SyscallStats};
use sonde_wire::syscalls::{ProcessTotal, SyscallTotal, Totals};

use super::{
    NAME, OBJECT,
    aggregate::{Export, Reading, ServiceDelta, Tracker, Window, WindowEntry},
    names,
};
use crate::{
    collectors::{
        CollectorError,
        kit::{
            attach::{Hook, HookSet, attach_first},
            counters::KernelCounters,
            take_map,
        },
    },
    config::SyscallsConfig,
    ebpf::{self, KernelBtf},
    features::Features,
    process_table::ProcessTable,
    telemetry::Telemetry,
};

/// sched_switch and sched_process_exit first: enter may park a call in the
/// per-CPU slot, and exit a call in the per-CPU call cache, only once a
/// switch-out (or exit) is sure to move it on.
const RAW: HookSet = HookSet::new(
    Some("raw_tracepoint"),
    "raw_tracepoint sys_enter/sys_exit/sched_switch/sched_process_exit",
    &[
        Hook::Raw("syscalls_switch_raw", "sched_switch"),
        Hook::Raw("syscalls_task_exit_raw", "sched_process_exit"),
        Hook::Raw("syscalls_exit_raw", "sys_exit"),
        Hook::Raw("syscalls_enter_raw", "sys_enter"),
    ],
);
const TRACEPOINT: HookSet = HookSet::new(
    None,
    "tracepoint raw_syscalls:sys_enter/sys_exit, sched:sched_switch/sched_process_exit",
    &[
        Hook::Tp("syscalls_switch_tp", "sched", "sched_switch"),
        Hook::Tp("syscalls_task_exit_tp", "sched", "sched_process_exit"),
        Hook::Tp("syscalls_exit_tp", "raw_syscalls", "sys_exit"),
        Hook::Tp("syscalls_enter_tp", "raw_syscalls", "sys_enter"),
    ],
);

/// What every attachment shares with the collector and the API handle.
#[derive(Clone)]
pub(super) struct Shared {
    pub config: SyscallsConfig,
    pub table: ProcessTable,
    /// The Prometheus series; None in on-demand mode.
    pub export: Option<Arc<Mutex<Export>>>,
    pub window: Arc<Mutex<Window>>,
    pub totals: Arc<Mutex<Totals>>,
    /// Origin of `Totals::taken_ms`.
    pub epoch: Instant,
    pub self_metrics: SelfMetrics,
    /// What loading needs besides the config (kept from start-up for
    /// on-demand attachment).
    pub features: Features,
    pub log_level: u8,
}

/// The hooks attached (dropping it detaches them) and their drain.
pub(super) struct Attachment {
    _obj: Ebpf,
    pub drain: Drain,
    pub hook: &'static str,
    /// Time spent creating the maps and parsing the object (`load`), then
    /// verifying and attaching the programs (`attach`).
    pub load: Duration,
    pub attach: Duration,
}

impl Attachment {
    /// Loads the object (fresh maps: counting starts at zero), fills the
    /// config's filters and attaches the first hook set that works.
    pub fn attach(s: &Shared, btf: &KernelBtf) -> Result<Self, CollectorError> {
        let c = &s.config;
        let nrs: Vec<u32> = c.syscalls.iter().map(|s| s.nr()).collect();
        let pids_on: u8 = u8::from(!c.pids.is_empty() || !c.services.is_empty());
        let nrs_on: u8 = u8::from(!nrs.is_empty());
        let (pairs, threads, errnos) = (
            c.max_pairs.get() as u32,
            c.max_threads.get() as u32,
            c.max_errno_pairs.get() as u32,
        );
        let started = Instant::now();
        let mut obj = ebpf::load_with(OBJECT, &s.log_level, |l| {
            l.map_max_entries("SYSCALL_STATS", pairs)
                .map_max_entries("SYSCALL_START", threads)
                .map_max_entries("SYSCALL_ERRNO", errnos)
                .override_global("SYSCALL_FILTER_PIDS_ON", &pids_on, true)
                .override_global("SYSCALL_FILTER_NRS_ON", &nrs_on, true);
        })?;
        let stats: PerCpuHashMap<MapData, SyscallKey, SyscallStats> =
            take_map(&mut obj, "SYSCALL_STATS")?;
        let errno: PerCpuHashMap<MapData, ErrnoKey, u64> = take_map(&mut obj, "SYSCALL_ERRNO")?;
        let counters = KernelCounters::new(take_map(&mut obj, "SYSCALL_COUNTERS_MAP")?);
        let mut filter_tgids: BpfHashMap<MapData, u32, u8> =
            take_map(&mut obj, "SYSCALL_FILTER_TGIDS")?;
        let mut filter_nrs: Array<MapData, u8> = take_map(&mut obj, "SYSCALL_FILTER_NRS")?;
        for nr in &nrs {
            filter_nrs
                .set(*nr, 1, 0)
                .map_err(|source| CollectorError::Map {
                    what: "SYSCALL_FILTER_NRS".into(),
                    source,
                })?;
        }
        for pid in &c.pids {
            filter_tgids
                .insert(pid, 1, 0)
                .map_err(|source| CollectorError::Map {
                    what: "SYSCALL_FILTER_TGIDS".into(),
                    source,
                })?;
        }
        let loaded = Instant::now();
        let hook =
            attach_first(&mut obj, &s.features, btf, &[&RAW, &TRACEPOINT], Vec::new())?.label;
        let mut drain = Drain {
            stats,
            errno,
            counters,
            filter_tgids: (!c.services.is_empty()).then_some(filter_tgids),
            config: s.config.clone(),
            table: s.table.clone(),
            tracker: Tracker::default(),
            export: s.export.clone(),
            window: s.window.clone(),
            totals: s.totals.clone(),
            epoch: s.epoch,
            self_metrics: s.self_metrics.clone(),
            unnamed: HashMap::new(),
        };
        // Services first matched now, not at the first drain.
        drain.sync_service_filter();
        Ok(Self {
            _obj: obj,
            drain,
            hook,
            load: loaded - started,
            attach: loaded.elapsed(),
        })
    }
}

/// Registers `m` when the collector exports metrics; else keeps it private
/// (counted, never scraped).
fn maybe_register<M: prometheus::core::Collector + Clone + 'static>(
    t: &Telemetry,
    export: bool,
    m: M,
) -> M {
    if export { t.register(m) } else { m }
}

/// The collector's own metrics, registered only in always-on mode (in
/// on-demand mode no `sonde_syscalls_*` family is exported).
#[derive(Clone)]
pub(super) struct SelfMetrics {
    lost: prometheus::IntCounter,
    map_full: IntCounterVec,
    folded: prometheus::IntCounter,
    pairs: IntGauge,
    processes: IntGauge,
    dropped_processes: prometheus::IntCounter,
}

impl SelfMetrics {
    pub(super) fn new(t: &Telemetry, export: bool) -> Self {
        let reg = |m| maybe_register(t, export, m);
        let map_full = maybe_register(
            t,
            export,
            IntCounterVec::new(
                Opts::new(
                    "sonde_syscalls_map_full_total",
                    "Kernel-side updates refused because a syscall map was full (start: call not timed; stats: call not counted; errno: errno not recorded).",
                ),
                &["map"],
            )
            .expect("valid metric"),
        );
        for c in SyscallCounter::ALL {
            map_full.with_label_values(&[c.label()]);
        }
        let counter = |name: &str, help: &str| {
            maybe_register(
                t,
                export,
                prometheus::IntCounter::new(name, help).expect("valid metric"),
            )
        };
        Self {
            lost: t.events_lost.with_label_values(&[NAME]),
            map_full,
            folded: counter(
                "sonde_syscalls_labels_folded_total",
                "Calls exported under service_name, syscall or errno `other` because a label cap was reached.",
            ),
            pairs: reg(IntGauge::new(
                "sonde_syscalls_tracked_pairs",
                "(process, syscall) pairs held in the kernel stats map after the last drain.",
            )
            .expect("valid metric")),
            processes: reg(IntGauge::new(
                "sonde_syscalls_tracked_processes",
                "Processes with syscall counters in the kernel after the last drain.",
            )
            .expect("valid metric")),
            dropped_processes: counter(
                "sonde_syscalls_processes_released_total",
                "Exited processes whose final syscall counts were exported and whose kernel entries were deleted.",
            ),
        }
    }
}

/// Reads the kernel maps of one attachment into the window, the totals and
/// (always-on) the Prometheus series.
pub(super) struct Drain {
    stats: PerCpuHashMap<MapData, SyscallKey, SyscallStats>,
    errno: PerCpuHashMap<MapData, ErrnoKey, u64>,
    counters: KernelCounters<SyscallCounter>,
    /// Set when the service filter must be kept in sync with the process table.
    filter_tgids: Option<BpfHashMap<MapData, u32, u8>>,
    config: SyscallsConfig,
    table: ProcessTable,
    tracker: Tracker,
    /// The Prometheus series; None in on-demand mode.
    export: Option<Arc<Mutex<Export>>>,
    window: Arc<Mutex<Window>>,
    totals: Arc<Mutex<Totals>>,
    /// Origin of `Totals::taken_ms`.
    epoch: Instant,
    self_metrics: SelfMetrics,
    /// Drains so far for which a process could not be named.
    unnamed: HashMap<u32, u32>,
}

/// Longest wait for the process collector to apply the exec events that
/// preceded a read; past it, names come from the table as it is.
const CATCH_UP_WAIT: Duration = Duration::from_millis(250);

/// Drains to wait for the process table to name a process (see drain_once).
const UNNAMED_RETRIES: u32 = 2;
/// ... and at most this many while the process collector is still applying
/// exec events from before the read (a fork storm on a busy machine), so a
/// lost exec event cannot hold a process's counts back for long.
const UNNAMED_MAX_RETRIES: u32 = 30;

impl Drain {
    /// One drain; returns the syscalls the kernel could not account since
    /// the last one (a map was full).
    pub(super) fn drain_once(&mut self) -> u64 {
        let now = Instant::now();
        // Decide who has exited *before* reading: a process gone now made
        // its last syscall before this read, so the read holds its final
        // counts, and deleting its keys afterwards loses nothing.
        let mut gone: HashSet<u32> = self
            .tracker
            .tgids()
            .into_iter()
            .filter(|t| !alive(&self.table, *t))
            .collect();
        let read_at = Instant::now();
        let (cur, cur_err) = self.read_maps();
        // Every exec before the read into the table, so that a process's
        // first counts after its exec are not named after the program it
        // replaced (see ProcessTable::catch_up).
        let lagging =
            !self.table.catch_up(CATCH_UP_WAIT) && !self.table.events_applied_since(read_at);
        // Name every process now. One the process table does not know and
        // /proc no longer has is usually a short-lived child whose exec
        // event the process collector has not handled yet: leave its counts
        // in the kernel for up to UNNAMED_RETRIES drains, or longer while
        // that collector is still behind the read, before calling it
        // `unknown`.
        let mut names: HashMap<u32, (Arc<str>, Arc<str>)> = HashMap::new();
        let mut deferred = HashSet::new();
        for tgid in cur.keys().map(|k| k.tgid).collect::<HashSet<u32>>() {
            match self.table.get(tgid) {
                Some(p) => {
                    names.insert(tgid, (p.comm.into(), p.service.into()));
                }
                None => {
                    let tries = self.unnamed.entry(tgid).or_insert(0);
                    *tries += 1;
                    if *tries <= UNNAMED_RETRIES || (lagging && *tries <= UNNAMED_MAX_RETRIES) {
                        deferred.insert(tgid);
                    } else {
                        names.insert(tgid, ("?".into(), "unknown".into()));
                    }
                }
            }
        }
        self.unnamed.retain(|t, _| deferred.contains(t));
        gone.retain(|t| !deferred.contains(t));
        let (deltas, errs) = self.tracker.update(cur, cur_err, &deferred);
        let name_of = |tgid: u32| -> (Arc<str>, Arc<str>) {
            names
                .get(&tgid)
                .cloned()
                .unwrap_or_else(|| ("?".into(), "unknown".into()))
        };
        let mut per_service: HashMap<Arc<str>, ServiceDelta> = HashMap::new();
        let mut errs_by_key: HashMap<(u32, u32), Vec<(u32, u64)>> = HashMap::new();
        for (k, n) in &errs {
            let (_, service) = name_of(k.tgid);
            *per_service
                .entry(service)
                .or_default()
                .errnos
                .entry((k.nr, k.errno))
                .or_default() += n;
            errs_by_key
                .entry((k.tgid, k.nr))
                .or_default()
                .push((k.errno, *n));
        }
        let mut entries = Vec::with_capacity(deltas.len());
        for (k, d) in deltas {
            let (comm, service) = name_of(k.tgid);
            per_service
                .entry(service.clone())
                .or_default()
                .by_nr
                .entry(k.nr)
                .or_default()
                .add(&d);
            let errnos = errs_by_key.remove(&(k.tgid, k.nr)).unwrap_or_default();
            entries.push(WindowEntry::new(k.tgid, comm, service, k.nr, &d, errnos));
        }
        if let Some(export) = &self.export {
            let mut export = export.lock().unwrap_or_else(|e| e.into_inner());
            let before = export.folded;
            for (svc, d) in &per_service {
                export.apply(svc, d);
            }
            self.self_metrics.folded.inc_by(export.folded - before);
        }
        self.window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(now, entries);
        self.publish_totals(now, &names, &gone);

        self.release(&gone);
        self.sync_service_filter();
        self.self_metrics.pairs.set(self.tracker.len() as i64);
        self.self_metrics
            .processes
            .set(self.tracker.tgids().len() as i64);
        self.export_counters()
    }

    fn read_maps(&self) -> (HashMap<SyscallKey, Reading>, HashMap<ErrnoKey, u64>) {
        let mut cur = HashMap::new();
        for item in self.stats.iter() {
            match item {
                Ok((k, v)) => {
                    cur.insert(k, Reading::sum_cpus(&v));
                }
                // A key deleted while iterating; the next drain sees the rest.
                Err(e) => tracing::debug!(collector = NAME, "reading stats map: {e}"),
            }
        }
        let mut cur_err = HashMap::new();
        for (k, v) in self.errno.iter().flatten() {
            cur_err.insert(k, v.iter().sum());
        }
        (cur, cur_err)
    }

    /// Cumulative counters of the named, live processes for `sonde top`.
    /// Processes not yet named (deferred) appear once they are.
    fn publish_totals(
        &self,
        now: Instant,
        names: &HashMap<u32, (Arc<str>, Arc<str>)>,
        gone: &HashSet<u32>,
    ) {
        let mut by_pid: std::collections::BTreeMap<u32, ProcessTotal> =
            std::collections::BTreeMap::new();
        for (k, r) in self.tracker.readings() {
            if gone.contains(&k.tgid) {
                continue;
            }
            let Some((comm, service)) = names.get(&k.tgid) else {
                continue;
            };
            by_pid
                .entry(k.tgid)
                .or_insert_with(|| ProcessTotal {
                    pid: k.tgid,
                    comm: comm.to_string(),
                    service: service.to_string(),
                    syscalls: Vec::new(),
                })
                .syscalls
                .push(SyscallTotal {
                    syscall: names::syscall_name(k.nr),
                    calls: r.count,
                    errors: r.errors,
                    total_ns: r.total_ns,
                });
        }
        let t = Totals {
            taken_ms: now.duration_since(self.epoch).as_millis() as u64,
            processes: by_pid.into_values().collect(),
        };
        *self.totals.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    /// Deletes the kernel entries of exited processes (already exported).
    fn release(&mut self, gone: &HashSet<u32>) {
        if gone.is_empty() {
            return;
        }
        let (keys, ekeys) = self.tracker.keys_of(gone);
        for k in &keys {
            let _ = self.stats.remove(k);
        }
        for k in &ekeys {
            let _ = self.errno.remove(k);
        }
        self.tracker.forget(gone);
        self.self_metrics
            .dropped_processes
            .inc_by(gone.len() as u64);
    }

    /// Service filter: put the pids of matching services into the kernel's
    /// tgid filter (new processes are picked up at the next drain).
    fn sync_service_filter(&mut self) {
        let Some(map) = self.filter_tgids.as_mut() else {
            return;
        };
        let want: HashSet<u32> = self
            .table
            .list()
            .into_iter()
            .filter(|p| {
                !p.exited
                    && (self.config.services.contains(&p.service)
                        || self.config.services.contains(&p.comm))
            })
            .map(|p| p.pid)
            .chain(self.config.pids.iter().copied())
            .collect();
        let have: HashSet<u32> = map.keys().flatten().collect();
        for pid in have.difference(&want) {
            let _ = map.remove(pid);
        }
        for pid in want.difference(&have) {
            if let Err(e) = map.insert(pid, 1, 0) {
                tracing::debug!(collector = NAME, pid, "pid filter full: {e}");
            }
        }
    }

    fn export_counters(&mut self) -> u64 {
        let d = self.counters.export(&self.self_metrics.map_full, &[]);
        // An errno not recorded still has its call counted.
        let lost_now = d.get(SyscallCounter::StartMapFull) + d.get(SyscallCounter::StatsMapFull);
        self.self_metrics.lost.inc_by(lost_now);
        lost_now
    }
}

/// Whether `tgid` may still make syscalls: not marked exited in the process
/// table, and still in /proc.
fn alive(table: &ProcessTable, tgid: u32) -> bool {
    let in_proc = std::path::Path::new("/proc")
        .join(tgid.to_string())
        .exists();
    in_proc && table.get(tgid).is_none_or(|p| !p.exited)
}
