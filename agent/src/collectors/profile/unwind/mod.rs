//! DWARF unwind tables for the profiler's eBPF unwinder.
//!
//! A thread of its own receives the pids the kernel announces (first
//! sample, exec), reads their executable mappings, builds one table per
//! file (`table`), and loads it into the kernel's row array, which is
//! mapped into our memory (`BPF_F_MMAPABLE`) so loading is a copy, not a
//! syscall per row. The row array's size is the memory budget; when a new
//! table does not fit, the least recently used files are evicted
//! (`alloc` finds room). Exited processes are removed, and tables no
//! process uses any more are released after a grace period.

pub mod alloc;

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::mpsc,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use prometheus::{Counter, IntCounter, IntCounterVec, IntGauge, Opts};
use sonde_common::unwind::{
    UNWIND_MAX_FILES, UNWIND_MAX_MAPPINGS, UNWIND_NO_TABLE, UnwindCounter, UnwindFile,
    UnwindMapping, UnwindProc, UnwindRow,
};
use sonde_unwind_table as table;

use self::alloc::Space;
use super::procmaps::{Captured, FileKey};
use crate::collectors::kit::counters::KernelCounters;

const NAME: &str = super::NAME;

/// Bytes per row in the kernel's array.
pub const ROW_BYTES: u64 = std::mem::size_of::<UnwindRow>() as u64;
/// Files larger than this are not read for tables.
const MAX_FILE_BYTES: u64 = 1 << 30;
/// How often exited processes and changed mappings are looked for.
const SWEEP: Duration = Duration::from_secs(5);
/// How long a table no process uses stays loaded (a process that execs the
/// same binary again soon finds it).
const GRACE: Duration = Duration::from_secs(60);
/// Files remembered as having no usable table.
const MAX_FAILED: usize = 4096;
/// A table is not evicted before it has been loaded this long, and a file
/// that found no room is not built again before this long: when the hot
/// files do not fit the budget together, each new table evicted another
/// hot one, whose process then reloaded it, evicting the next. On a build
/// machine that rebuilt ~20 tables a second, half of the agent's CPU; now
/// each table is built at most once per this period.
const MIN_RESIDENCY: Duration = Duration::from_secs(10);
/// How often a busy process without any table has its maps read again.
/// Short: the usual cause is an announcement in the middle of an exec,
/// which the loader's mappings follow within milliseconds, and every
/// second before the next look is a second of frame-pointer stacks. A
/// look is one read of /proc/PID/maps (tens of µs; kernel threads fail at
/// once).
const TABLELESS_RELOOK: Duration = Duration::from_secs(1);

/// Work for the unwinder thread.
pub enum UnwindCmd {
    /// The kernel announced a process (first sample, or exec).
    Seen(u32),
    /// Samples per process in the last drain (serving order).
    Hot(Vec<(u32, u64)>),
}

/// The unwinder's kernel maps.
pub struct UnwindMaps {
    pub rows: MapData,
    pub files: Array<MapData, UnwindFile>,
    pub procs: BpfHashMap<MapData, u32, UnwindProc>,
    pub counters: KernelCounters<UnwindCounter>,
}

#[derive(Clone)]
pub struct UnwindMetrics {
    errors: IntCounterVec,
    walked: IntCounter,
    evictions: IntCounter,
    failures: IntCounterVec,
    built: IntCounter,
    build_seconds: Counter,
    bytes: IntGauge,
    tables: IntGauge,
    processes: IntGauge,
}

impl UnwindMetrics {
    pub fn new(t: &crate::telemetry::Telemetry, budget_bytes: u64) -> Self {
        let vec = |name: &str, help: &str| {
            t.register(
                IntCounterVec::new(Opts::new(name, help), &["reason"]).expect("valid metric"),
            )
        };
        let counter =
            |name: &str, help: &str| t.register(IntCounter::new(name, help).expect("valid metric"));
        t.gauge(
            "sonde_unwind_table_budget_bytes",
            "Memory budget of the DWARF unwind tables in the kernel.",
        )
        .set(budget_bytes as i64);
        Self {
            errors: vec(
                "sonde_unwind_errors_total",
                "DWARF unwinder events by reason: no_mapping, no_table, no_row (frame \
                 pointers tried there), unsupported_rule, read_fault, bad_frame (walk \
                 ended), max_depth (truncated), stack_collision, stack_map_full, \
                 no_registers (user stack dropped).",
            ),
            walked: counter(
                "sonde_unwind_stacks_total",
                "User stacks walked by the DWARF unwinder.",
            ),
            evictions: counter(
                "sonde_unwind_table_evictions_total",
                "Unwind tables evicted to fit the memory budget.",
            ),
            failures: vec(
                "sonde_unwind_table_failures_total",
                "Files without a loaded unwind table, by reason: no_cfi, not_elf, read, \
                 too_big (exceeds the budget), no_room, too_many_files.",
            ),
            built: counter(
                "sonde_unwind_tables_built_total",
                "Unwind tables built from .eh_frame/.debug_frame.",
            ),
            build_seconds: t.register(
                Counter::new(
                    "sonde_unwind_table_build_seconds_total",
                    "Time spent building unwind tables.",
                )
                .expect("valid metric"),
            ),
            bytes: t.gauge(
                "sonde_unwind_table_bytes",
                "Kernel memory used by loaded unwind tables.",
            ),
            tables: t.gauge("sonde_unwind_tables_loaded", "Unwind tables loaded."),
            processes: t.gauge(
                "sonde_unwind_processes",
                "Processes whose user stacks the DWARF unwinder walks.",
            ),
        }
    }
}

/// The row array. Rows are written through a temporary shared mapping of
/// just the pages they land in: a permanent mapping would count every
/// touched page of the table (kernel memory) in the agent's RSS.
struct Rows {
    len: usize,
    map: MapData,
}

impl Rows {
    fn new(map: MapData, len: u32) -> Self {
        Self {
            len: len as usize,
            map,
        }
    }

    fn write(&mut self, at: u32, rows: &[UnwindRow]) -> std::io::Result<()> {
        let at = at as usize;
        assert!(at + rows.len() <= self.len, "rows within the array");
        let row = ROW_BYTES as usize;
        let start = at * row;
        let page = start & !4095;
        let bytes = start + rows.len() * row - page;
        // SAFETY: a shared writable mapping of a BPF_F_MMAPABLE array's fd
        // is how the kernel exposes its values; the page-aligned range lies
        // within the array (bounds checked above).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.map.fd().as_fd().as_raw_fd(),
                page as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the destination is inside the fresh mapping (`start -
        // page` + rows fits in `bytes`), allocated to this file only.
        unsafe {
            std::ptr::copy_nonoverlapping(
                rows.as_ptr().cast::<u8>(),
                ptr.cast::<u8>().add(start - page),
                rows.len() * row,
            );
            libc::munmap(ptr, bytes);
        }
        Ok(())
    }
}

/// A table in the kernel.
struct Loaded {
    id: u32,
    first: u32,
    rows: u32,
    /// `(p_offset, p_vaddr, p_filesz)` of the file's segments.
    segs: Vec<(u64, u64, u64)>,
    /// Not evicted before [`MIN_RESIDENCY`] from here.
    loaded_at: Instant,
    last_used: u64,
    users: u32,
    idle_since: Option<Instant>,
}

/// A process in the kernel's table.
struct Proc {
    entry: Box<UnwindProc>,
    keys: Vec<Option<FileKey>>,
    /// `(start, end, inode)` of its executable mappings, to notice changes.
    sig: Vec<(u64, u64, u64)>,
    /// A file of it found no room: looked at again while it stays busy.
    short: bool,
    added: Instant,
}

/// A process none of whose mappings has a table.
struct Tableless {
    sig: Vec<(u64, u64, u64)>,
    /// A file of it found no room (not a file without CFI).
    short: bool,
    /// When its maps were last read.
    checked: Instant,
}

pub struct Unwinder {
    rows: Rows,
    files: Array<MapData, UnwindFile>,
    procs: BpfHashMap<MapData, u32, UnwindProc>,
    counters: KernelCounters<UnwindCounter>,
    space: Space,
    loaded: HashMap<FileKey, Loaded>,
    failed: HashMap<FileKey, &'static str>,
    /// Files that found no room, and when (see [`MIN_RESIDENCY`]).
    no_room: HashMap<FileKey, Instant>,
    free_ids: Vec<u32>,
    pids: HashMap<u32, Proc>,
    /// Processes without any table, with the mappings they had then.
    tableless: HashMap<u32, Tableless>,
    tick: u64,
    metrics: UnwindMetrics,
}

impl Unwinder {
    pub fn new(maps: UnwindMaps, capacity: u32, metrics: UnwindMetrics) -> std::io::Result<Self> {
        Ok(Self {
            rows: Rows::new(maps.rows, capacity),
            files: maps.files,
            procs: maps.procs,
            counters: maps.counters,
            space: Space::new(capacity),
            loaded: HashMap::new(),
            failed: HashMap::new(),
            no_room: HashMap::new(),
            free_ids: (0..UNWIND_MAX_FILES).rev().collect(),
            pids: HashMap::new(),
            tableless: HashMap::new(),
            tick: 0,
            metrics,
        })
    }

    /// Serves requests until every sender is gone. Announced processes
    /// wait in `pending`; the one with the most recent samples is served
    /// first, so a busy process is not stuck behind the tables of every
    /// idle process the agent saw at start.
    pub fn run(mut self, cmds: mpsc::Receiver<UnwindCmd>) {
        let mut last_sweep = Instant::now();
        let mut pending: HashMap<u32, u64> = HashMap::new();
        loop {
            let first = if pending.is_empty() {
                match cmds.recv_timeout(Duration::from_secs(1)) {
                    Ok(c) => Some(c),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                cmds.try_recv().ok()
            };
            for c in first
                .into_iter()
                .chain(std::iter::from_fn(|| cmds.try_recv().ok()))
            {
                match c {
                    UnwindCmd::Seen(pid) => {
                        pending.entry(pid).or_insert(0);
                    }
                    UnwindCmd::Hot(counts) => {
                        self.tick += 1;
                        for (pid, n) in counts {
                            self.touch(pid);
                            if self.worth_another_look(pid) {
                                pending.insert(pid, n);
                                continue;
                            }
                            if let Some(p) = pending.get_mut(&pid) {
                                *p = n; // the latest drain: who is busy now
                            } else if !self.pids.contains_key(&pid)
                                && !self.tableless.contains_key(&pid)
                            {
                                // Sampled but never served (its announcement
                                // was dropped, or it came before we started).
                                pending.insert(pid, n);
                            }
                        }
                    }
                }
            }
            if let Some((&pid, _)) = pending.iter().max_by_key(|(pid, n)| (**n, **pid)) {
                pending.remove(&pid);
                self.add(pid);
            }
            if last_sweep.elapsed() >= SWEEP {
                last_sweep = Instant::now();
                self.sweep();
            }
            self.export();
        }
    }

    /// Whether a busy process should have its maps read again:
    /// - it lost a table to eviction;
    /// - a file of it found no room, long enough ago for tables to have
    ///   become evictable;
    /// - it had no table at all when last read. An announcement can come
    ///   in the middle of an exec, when the comm is already the new one
    ///   but the loader has not mapped the libraries yet; nothing would
    ///   announce that process again (a whole-suite run lost a workload's
    ///   DWARF stacks for 60 s that way).
    fn worth_another_look(&self, pid: u32) -> bool {
        if let Some(p) = self.pids.get(&pid) {
            return p.sig.is_empty() || (p.short && p.added.elapsed() >= MIN_RESIDENCY);
        }
        self.tableless
            .get(&pid)
            .is_some_and(|t| t.checked.elapsed() >= TABLELESS_RELOOK)
    }

    /// Loads tables for `pid`'s executable files and tells the kernel its
    /// mappings (replacing what it had: the pid may have exec'd).
    pub fn add(&mut self, pid: u32) {
        let Some(maps) = super::procmaps::ProcMaps::read(pid) else {
            // Gone, or a kernel thread (no maps): nothing to unwind.
            self.remove(pid);
            self.set_tableless(pid, Vec::new(), false);
            return;
        };
        let sig: Vec<(u64, u64, u64)> = maps
            .maps
            .iter()
            .map(|m| (m.start, m.end, m.inode))
            .collect();
        if let Some(t) = self.tableless.get_mut(&pid) {
            t.checked = Instant::now();
        }
        let unchanged = self
            .pids
            .get(&pid)
            .is_some_and(|p| p.sig == sig && !p.short)
            || self
                .tableless
                .get(&pid)
                .is_some_and(|t| t.sig == sig && !t.short);
        if unchanged {
            return; // announced again (a thread with another comm): no change
        }
        let c = Captured::open(maps);
        self.tick += 1;
        let mut entry = Box::new(UnwindProc {
            len: 0,
            _pad: 0,
            maps: [UnwindMapping::default(); UNWIND_MAX_MAPPINGS],
        });
        let mut keys = Vec::new();
        let mut any = false;
        let mut short = false;
        for (m, f) in c.maps.maps.iter().zip(&c.files) {
            let i = entry.len as usize;
            if i >= UNWIND_MAX_MAPPINGS {
                continue; // the rest resolve to "no mapping": frame pointers
            }
            let mut slot = UnwindMapping {
                start: m.start,
                end: m.end,
                bias: 0,
                file: UNWIND_NO_TABLE,
                _pad: 0,
            };
            let mut key = None;
            if let Some((file, k)) = f
                && let Some(l) = self.ensure(*k, file)
                && let Some(bias) = table::bias_of(&l.segs, m.start, m.offset)
            {
                l.users += 1;
                l.idle_since = None;
                slot.file = l.id;
                slot.bias = bias;
                key = Some(*k);
                any = true;
            } else if let Some((_, k)) = f {
                short |= self.no_room.contains_key(k);
            }
            entry.maps[i] = slot;
            entry.len += 1;
            keys.push(key);
        }
        self.remove(pid);
        if !any {
            tracing::debug!(
                collector = NAME,
                pid,
                maps = sig.len(),
                short,
                "no unwind table"
            );
            self.set_tableless(pid, sig, short);
            return;
        }
        self.tableless.remove(&pid);
        if let Err(e) = self.procs.insert(pid, *entry, 0) {
            tracing::debug!(collector = NAME, pid, "unwind process table full: {e}");
            self.release_keys(&keys);
            return;
        }
        tracing::debug!(
            collector = NAME,
            pid,
            maps = entry.len,
            "unwind tables loaded"
        );
        self.pids.insert(
            pid,
            Proc {
                entry,
                keys,
                sig,
                short,
                added: Instant::now(),
            },
        );
        self.gauges();
    }

    /// The table for file `key`, built and loaded when missing.
    fn ensure(&mut self, key: FileKey, file: &std::fs::File) -> Option<&mut Loaded> {
        if self.loaded.contains_key(&key) {
            let l = self.loaded.get_mut(&key)?;
            l.last_used = self.tick;
            return Some(l);
        }
        if self.failed.contains_key(&key)
            || self
                .no_room
                .get(&key)
                .is_some_and(|t| t.elapsed() < MIN_RESIDENCY)
        {
            return None;
        }
        match self.load(key, file) {
            Ok(l) => {
                self.loaded.insert(key, l);
                self.gauges();
                self.loaded.get_mut(&key)
            }
            Err(reason) => {
                self.metrics.failures.with_label_values(&[reason]).inc();
                if self.failed.len() >= MAX_FAILED {
                    self.failed.clear();
                }
                // Running out of room is not the file's fault: try again
                // when another process needs it, once tables may have
                // become evictable.
                if reason != "no_room" && reason != "too_many_files" {
                    self.failed.insert(key, reason);
                } else {
                    if self.no_room.len() >= MAX_FAILED {
                        self.no_room.clear();
                    }
                    self.no_room.insert(key, Instant::now());
                }
                None
            }
        }
    }

    fn load(&mut self, key: FileKey, file: &std::fs::File) -> Result<Loaded, &'static str> {
        let size = file.metadata().map_err(|_| "read")?.len();
        if size > MAX_FILE_BYTES {
            return Err("too_big");
        }
        // The file is mapped, not read: only the pages of its headers and
        // CFI are touched, and they are page cache, not heap. A table the
        // row array could never hold is abandoned as soon as it is known
        // to be too big, not built whole first.
        let t0 = Instant::now();
        let (t, segs) =
            table::build_file(file, self.space.capacity() as usize).map_err(|e| match e {
                table::TableError::NoCfi => "no_cfi",
                table::TableError::TooBig(_) => "too_big",
                table::TableError::Io(_) => "read",
                _ => "not_elf",
            })?;
        self.metrics
            .build_seconds
            .inc_by(t0.elapsed().as_secs_f64());
        self.metrics.built.inc();
        let n = u32::try_from(t.rows.len()).map_err(|_| "too_big")?;
        if n > self.space.capacity() {
            return Err("too_big");
        }
        let first = loop {
            if let Some(at) = self.space.take(n) {
                break at;
            }
            if !self.evict_lru() {
                return Err("no_room");
            }
        };
        let id = loop {
            if let Some(id) = self.free_ids.pop() {
                break id;
            }
            if !self.evict_lru() {
                self.space.give(first, n);
                return Err("too_many_files");
            }
        };
        if self.rows.write(first, &t.rows).is_err()
            || self
                .files
                .set(id, UnwindFile { first, rows: n }, 0)
                .is_err()
        {
            self.space.give(first, n);
            self.free_ids.push(id);
            return Err("no_room");
        }
        tracing::debug!(
            collector = NAME,
            ?key,
            rows = n,
            fdes = t.fdes,
            ms = t0.elapsed().as_millis() as u64,
            "unwind table built"
        );
        self.no_room.remove(&key);
        Ok(Loaded {
            id,
            first,
            rows: n,
            segs,
            loaded_at: Instant::now(),
            last_used: self.tick,
            users: 0,
            idle_since: Some(Instant::now()),
        })
    }

    /// Marks the tables of a process sampled in the last drain as used now:
    /// eviction picks the tables of processes that were not busy lately.
    fn touch(&mut self, pid: u32) {
        let Some(p) = self.pids.get(&pid) else { return };
        for k in p.keys.iter().flatten() {
            if let Some(l) = self.loaded.get_mut(k) {
                l.last_used = self.tick;
            }
        }
    }

    /// Evicts the least recently used table not used by the process being
    /// added nor loaded less than [`MIN_RESIDENCY`] ago; false when there
    /// is none.
    fn evict_lru(&mut self) -> bool {
        let Some((&key, _)) = self
            .loaded
            .iter()
            .filter(|(_, l)| l.last_used < self.tick && l.loaded_at.elapsed() >= MIN_RESIDENCY)
            .min_by_key(|(_, l)| (l.users > 0, l.last_used))
        else {
            return false;
        };
        self.unload(key);
        self.metrics.evictions.inc();
        // Processes still mapping the file fall back to frame pointers
        // there; their entries must not name the id once it is reused.
        for (pid, p) in &mut self.pids {
            let mut changed = false;
            for (i, k) in p.keys.iter_mut().enumerate() {
                if *k == Some(key) {
                    *k = None;
                    p.entry.maps[i].file = UNWIND_NO_TABLE;
                    changed = true;
                }
            }
            if changed {
                let _ = self.procs.insert(*pid, *p.entry, 0);
                // Forget its mappings so that, once busy again, it is
                // served again (and gets the table back).
                p.sig.clear();
            }
        }
        true
    }

    fn unload(&mut self, key: FileKey) {
        let Some(l) = self.loaded.remove(&key) else {
            return;
        };
        let _ = self.files.set(l.id, UnwindFile::default(), 0);
        self.space.give(l.first, l.rows);
        self.free_ids.push(l.id);
        self.gauges();
    }

    fn release_keys(&mut self, keys: &[Option<FileKey>]) {
        for k in keys.iter().flatten() {
            if let Some(l) = self.loaded.get_mut(k) {
                l.users = l.users.saturating_sub(1);
                if l.users == 0 {
                    l.idle_since = Some(Instant::now());
                }
            }
        }
    }

    /// Remembers `pid` as having no table, with the mappings it had.
    fn set_tableless(&mut self, pid: u32, sig: Vec<(u64, u64, u64)>, short: bool) {
        if self.tableless.len() >= MAX_FAILED {
            self.tableless.clear();
        }
        let checked = Instant::now();
        self.tableless.insert(
            pid,
            Tableless {
                sig,
                short,
                checked,
            },
        );
    }

    /// Forgets `pid` in the kernel and here.
    fn remove(&mut self, pid: u32) {
        if let Some(p) = self.pids.remove(&pid) {
            let _ = self.procs.remove(&pid);
            self.release_keys(&p.keys);
            self.gauges();
        }
    }

    /// Drops exited processes, reloads changed ones (dlopen, munmap),
    /// releases tables unused for the grace period.
    fn sweep(&mut self) {
        let pids: Vec<u32> = self.pids.keys().copied().collect();
        for pid in pids {
            match super::procmaps::ProcMaps::read(pid) {
                None => self.remove(pid),
                Some(m) => {
                    let sig: Vec<(u64, u64, u64)> =
                        m.maps.iter().map(|m| (m.start, m.end, m.inode)).collect();
                    if self
                        .pids
                        .get(&pid)
                        .is_some_and(|p| !p.sig.is_empty() && p.sig != sig)
                    {
                        self.add(pid); // dlopen, munmap
                    }
                }
            }
        }
        let stale: Vec<FileKey> = self
            .loaded
            .iter()
            .filter(|(_, l)| l.users == 0 && l.idle_since.is_some_and(|t| t.elapsed() >= GRACE))
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.unload(k);
        }
        self.no_room.retain(|_, t| t.elapsed() < MIN_RESIDENCY);
    }

    fn gauges(&self) {
        let used = u64::from(self.space.capacity()) - self.space.free_slots();
        self.metrics.bytes.set((used * ROW_BYTES) as i64);
        self.metrics.tables.set(self.loaded.len() as i64);
        self.metrics.processes.set(self.pids.len() as i64);
    }

    /// Exports the kernel's per-CPU counters as deltas.
    fn export(&mut self) {
        let d = self
            .counters
            .export(&self.metrics.errors, &[UnwindCounter::Walked]);
        self.metrics.walked.inc_by(d.get(UnwindCounter::Walked));
    }
}
