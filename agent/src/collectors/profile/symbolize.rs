//! Turns raw stack addresses into frames with blazesym, cheaply in steady
//! state: results are cached per file (dev, inode, mtime) and offset, files
//! are kept open from the moment a process is first seen (so stacks of
//! processes that have exited since still resolve, containers included via
//! `/proc/PID/root`), and every cache is bounded.
//!
//! What blazesym parses to answer a miss (ELF symbol tables, DWARF units,
//! the file mapped whole) is by far the biggest part of the agent's memory,
//! and it is only needed while new addresses come in. So each open file
//! has its own blazesym symbolizer, and [`Resolver::release`] drops the
//! parsed state of every file (and of the kernel's symbol table) that had
//! no miss for a while ([`Resolver::keep_parsed_for`]), then returns the freed heap
//! to the kernel. Resolved frames stay cached, also past their file's
//! eviction from the open files, so a steady workload holds no parsed
//! files at all, while a burst of new addresses parses each file once, not
//! once per drain.

use std::{
    collections::HashMap,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};
use prometheus::{IntCounter, IntCounterVec, IntGauge};

use super::{
    ksyms::KernelSymbols,
    procmaps::{Captured, FileKey, PerfMap, ProcMaps},
    store::{Frame, FrameKind, Module},
};
use crate::telemetry::Telemetry;

/// Drains without a miss after which a file's (or the kernel's) parsed
/// symbols are dropped, unless the owner asks for a longer time with
/// [`Resolver::keep_parsed_for`].
pub const KEEP_PARSED_DRAINS: u64 = 3;

/// Default for [`Resolver::dwarf_budget`] (`collectors.profile.
/// dwarf_budget_mib = 16`): the most DWARF (uncompressed section bytes)
/// one file may bring, and twice that parsed at once. The agent runs at
/// ~48 MiB without parsed DWARF against a 64 MiB budget, so one file is
/// allowed that headroom. Measured here: libc's separate debug file 9.5
/// MiB, pyenv's libpython3.11 15.9 MiB, the workspace's own debug-built
/// `xtask` 19.3 MiB (names from its ELF symbols, no lines).
pub const DWARF_BUDGET: DwarfBudget = DwarfBudget::per_file_mib(16);

/// See [`DWARF_BUDGET`].
#[derive(Debug, Clone, Copy)]
pub struct DwarfBudget {
    pub total: u64,
    pub per_file: u64,
}

impl DwarfBudget {
    pub const fn per_file_mib(mib: u64) -> Self {
        Self {
            total: 2 * (mib << 20),
            per_file: mib << 20,
        }
    }
}

/// The name of a frame [`Resolver::user_eliding`] did not symbolize.
pub const ELIDED: &str = "[not symbolized]";

struct OpenFile {
    /// Held open so the path below stays valid after the process exits.
    _file: File,
    /// `/proc/self/fd/N`: what blazesym opens.
    fd_path: PathBuf,
    module: Arc<Module>,
    last_used: u64,
    /// What blazesym parsed of this file, while misses keep coming.
    sym: Option<Symbolizer>,
    /// Whether `sym` reads the file's DWARF (it was admitted under the
    /// budget), or only its ELF symbols.
    with_dwarf: bool,
    /// The file's DWARF bytes (`dwarf_size`), read at its first miss.
    dwarf: Option<u64>,
    /// Drain (`tick`) of the last miss.
    last_miss: u64,
}

struct ProcEntry {
    maps: ProcMaps,
    /// File identity of each mapping in `maps` (None: anonymous/unopenable).
    files: Vec<Option<FileKey>>,
    perf_map: Option<PerfMap>,
    last_used: u64,
    /// Drain in which the maps were last re-read (one refresh per drain).
    refreshed: u64,
}

#[derive(Clone)]
pub struct SymbolizeMetrics {
    results: IntCounterVec,
    evictions: IntCounterVec,
    symbols_cached: IntGauge,
    files_cached: IntGauge,
    files_parsed: IntGauge,
    processes_mapped: IntGauge,
    dwarf_refused: IntCounter,
    dwarf_held: IntGauge,
}

impl SymbolizeMetrics {
    pub fn new(t: &Telemetry) -> Self {
        let results = t.register(
            IntCounterVec::new(
                prometheus::Opts::new(
                    "sonde_profile_symbolize_total",
                    "Frame addresses symbolized, by result: cached, resolved, unknown, elided \
                     (eval-loop addresses replaced by Python frames, not symbolized).",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let evictions = t.register(
            IntCounterVec::new(
                prometheus::Opts::new(
                    "sonde_profile_cache_evictions_total",
                    "Entries dropped from the profiler's bounded caches, by cache.",
                ),
                &["cache"],
            )
            .expect("valid metric"),
        );
        Self {
            results,
            evictions,
            symbols_cached: t.gauge(
                "sonde_profile_symbol_cache_entries",
                "Resolved addresses held in the symbol cache.",
            ),
            files_cached: t.gauge(
                "sonde_profile_files_cached",
                "ELF files held open for symbolization.",
            ),
            files_parsed: t.gauge(
                "sonde_profile_files_parsed",
                "Open files whose parsed symbols are held (a miss in the last few drains).",
            ),
            processes_mapped: t.gauge(
                "sonde_profile_processes_mapped",
                "Processes whose memory maps the profiler remembers.",
            ),
            dwarf_refused: t.register(
                IntCounter::new(
                    "sonde_profile_dwarf_refused_total",
                    "Files symbolized from their ELF symbols only (no lines, no inlined \
                     frames) because their DWARF did not fit the budget next to the DWARF \
                     already parsed.",
                )
                .expect("valid metric"),
            ),
            dwarf_held: t.gauge(
                "sonde_profile_dwarf_bytes",
                "DWARF bytes of the files whose parsed debug info is held.",
            ),
        }
    }
    /// The same metrics, registered nowhere: for short-lived resolvers
    /// (`sonde alloc` sessions) whose counts are not exported.
    pub fn unregistered() -> Self {
        let vec = |name: &str, label: &str| {
            IntCounterVec::new(prometheus::Opts::new(name, "unexported"), &[label])
                .expect("valid metric")
        };
        let gauge = |name: &str| IntGauge::new(name, "unexported").expect("valid metric");
        Self {
            results: vec("results", "result"),
            evictions: vec("evictions", "cache"),
            symbols_cached: gauge("symbols"),
            files_cached: gauge("files"),
            files_parsed: gauge("parsed"),
            processes_mapped: gauge("processes"),
            dwarf_refused: IntCounter::new("dwarf_refused", "unexported").expect("valid metric"),
            dwarf_held: gauge("dwarf"),
        }
    }

    fn result(&self, r: &str) -> IntCounter {
        self.results.with_label_values(&[r])
    }
}

pub struct Limits {
    pub files: usize,
    pub symbols: usize,
    pub processes: usize,
}

pub struct Resolver {
    /// The kernel's symbols; dropped after the keep period without a
    /// kernel miss.
    ksym: Option<KernelSymbols>,
    /// Drain (`tick`) of the last kernel miss.
    ksym_used: u64,
    procs: HashMap<u32, ProcEntry>,
    files: HashMap<FileKey, OpenFile>,
    user_cache: HashMap<(FileKey, u64), Arc<[Frame]>>,
    kernel_cache: HashMap<u64, Arc<[Frame]>>,
    kernel_module: Arc<Module>,
    limits: Limits,
    metrics: SymbolizeMetrics,
    /// Drain counter, for least-recently-used eviction.
    tick: u64,
    /// Read DWARF (lines, inlined frames), not only ELF symbols.
    debug_syms: bool,
    /// Most DWARF bytes (by `dwarf_size`) of files parsed with debug info
    /// at once, and of one file; a file that does not fit is symbolized
    /// from its ELF symbols while it does not.
    dwarf_budget: DwarfBudget,
    /// Drains without a miss before parsed state is dropped.
    keep_parsed: u64,
}

impl Resolver {
    pub fn new(limits: Limits, metrics: SymbolizeMetrics) -> Self {
        Self {
            ksym: None,
            ksym_used: 0,
            procs: HashMap::new(),
            files: HashMap::new(),
            user_cache: HashMap::new(),
            kernel_cache: HashMap::new(),
            kernel_module: Arc::new(Module {
                path: "[kernel.kallsyms]".into(),
                build_id: None,
            }),
            limits,
            metrics,
            tick: 0,
            debug_syms: true,
            dwarf_budget: DWARF_BUDGET,
            keep_parsed: KEEP_PARSED_DRAINS,
        }
    }

    /// Keeps parsed state for about `period` without a miss, given one
    /// drain every `drain_interval` (never less than
    /// [`KEEP_PARSED_DRAINS`]). Re-parsing is what a miss costs once the
    /// state is gone: on a quiet host the profiler misses a few times a
    /// second spread over a handful of files (the kernel's ~120k symbols,
    /// libc with its separate DWARF, the agent itself), and with a
    /// 3-drain (6 s) lifetime it re-parsed them over and over: 1.2 % of a
    /// core at 19 Hz on an idle machine, against ~0.5 % with 60 s, for a
    /// median RSS of 38 vs 56 MiB idle and no change when busy (where the
    /// hot files stay parsed anyway): docs/profiling.md.
    pub fn keep_parsed_for(mut self, period: Duration, drain_interval: Duration) -> Self {
        let drains = period.as_millis() / drain_interval.as_millis().max(1);
        self.keep_parsed = (drains as u64).max(KEEP_PARSED_DRAINS);
        self
    }

    /// Parses DWARF of at most `budget` (by section sizes).
    pub fn dwarf_budget(mut self, budget: DwarfBudget) -> Self {
        self.dwarf_budget = budget;
        self
    }

    /// Function names from ELF symbols only, no DWARF: far less memory per
    /// cached file, for callers that need no line numbers.
    pub fn without_debug_info(mut self) -> Self {
        self.debug_syms = false;
        self
    }

    /// Marks the start of a drain; refreshes gauges and enforces bounds.
    pub fn next_drain(&mut self) {
        self.tick += 1;
        self.evict();
        self.metrics
            .symbols_cached
            .set((self.user_cache.len() + self.kernel_cache.len()) as i64);
        self.metrics.files_cached.set(self.files.len() as i64);
        self.metrics.processes_mapped.set(self.procs.len() as i64);
    }

    /// Ends a drain: drops what blazesym parsed of files (and of the
    /// kernel) that had no miss for the keep period (see
    /// [`Resolver::keep_parsed_for`]), and
    /// returns the freed heap to the kernel.
    pub fn release(&mut self) {
        let idle = |last: u64| self.tick >= last + self.keep_parsed;
        let mut freed = false;
        for f in self.files.values_mut() {
            if f.sym.is_some() && idle(f.last_miss) {
                f.sym = None;
                freed = true;
            }
        }
        if self.ksym.is_some() && idle(self.ksym_used) {
            self.ksym = None;
            freed = true;
        }
        if freed {
            crate::heap::trim();
        }
        self.metrics
            .files_parsed
            .set(self.files.values().filter(|f| f.sym.is_some()).count() as i64);
        self.metrics.dwarf_held.set(self.dwarf_held() as i64);
    }

    /// Whether the DWARF of `key` fits the budget next to what is held.
    fn admit_dwarf(&mut self, key: FileKey) -> bool {
        let held = self.dwarf_held();
        let Some(file) = self.files.get_mut(&key) else {
            return false;
        };
        let size = match file.dwarf {
            Some(n) => n,
            None => {
                let n = super::dwarf_size::dwarf_bytes(&file.fd_path);
                file.dwarf = Some(n);
                n
            }
        };
        let fits = size <= self.dwarf_budget.per_file && held + size <= self.dwarf_budget.total;
        if !fits {
            self.metrics.dwarf_refused.inc();
            tracing::debug!(
                path = %file.module.path,
                size,
                held,
                "DWARF over the budget: ELF symbols only"
            );
        }
        fits
    }

    /// DWARF bytes of the files parsed with debug info now.
    fn dwarf_held(&self) -> u64 {
        self.files
            .values()
            .filter(|f| f.sym.is_some() && f.with_dwarf)
            .map(|f| f.dwarf.unwrap_or(0))
            .sum()
    }

    /// Captures the maps of `pid` if nothing did yet. Later changes are
    /// caught elsewhere, at no per-drain cost: an exec changes the comm, so
    /// the kernel announces the process again; a `dlopen` or a reused pid
    /// makes an address miss, which re-reads the maps (see `refresh`).
    pub fn see(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.last_used = self.tick;
            return;
        }
        if let Some(c) = Captured::read(pid) {
            self.adopt(c);
        }
    }

    /// Takes in maps captured (and files opened) elsewhere, e.g. right
    /// when the kernel announced the process.
    pub fn adopt(&mut self, c: Captured) {
        let pid = c.maps.pid;
        let entry = self.capture(c);
        self.procs.insert(pid, entry);
    }

    fn capture(&mut self, c: Captured) -> ProcEntry {
        let files = c
            .files
            .into_iter()
            .zip(&c.maps.maps)
            .map(|(f, m)| {
                let (file, key) = f?;
                self.keep_file(file, key, &m.path);
                Some(key)
            })
            .collect();
        ProcEntry {
            perf_map: c.perf_map,
            maps: c.maps,
            files,
            last_used: self.tick,
            refreshed: self.tick,
        }
    }

    /// Keeps `file` open under `key` unless an equal file already is.
    fn keep_file(&mut self, file: File, key: FileKey, shown: &str) {
        if let Some(f) = self.files.get_mut(&key) {
            f.last_used = self.tick;
            return;
        }
        let fd_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let build_id = blazesym::helper::read_elf_build_id(&fd_path)
            .ok()
            .flatten()
            .map(|b| Arc::from(hex(&b)));
        self.files.insert(
            key,
            OpenFile {
                _file: file,
                fd_path,
                module: Arc::new(Module {
                    path: shown.into(),
                    build_id,
                }),
                last_used: self.tick,
                sym: None,
                with_dwarf: false,
                dwarf: None,
                last_miss: self.tick,
            },
        );
    }

    /// Frames of a user stack, leaf first.
    pub fn user(&mut self, pid: u32, ips: &[u64]) -> Vec<Frame> {
        self.user_eliding(pid, ips, &|_, _| false)
    }

    /// Like [`Resolver::user`], but an address that `elide` accepts (by the
    /// path its file is shown with and the file offset) and that is not
    /// cached yet is not symbolized: it becomes one frame named
    /// [`ELIDED`] in that file at that offset. For frames the caller
    /// replaces anyway (the Python interpreter's eval loop): a miss there
    /// is a DWARF lookup through a large function full of inlined code.
    pub fn user_eliding(
        &mut self,
        pid: u32,
        ips: &[u64],
        elide: &dyn Fn(&str, u64) -> bool,
    ) -> Vec<Frame> {
        let mut out = Vec::with_capacity(ips.len());
        for (i, &ip) in ips.iter().enumerate() {
            // Return addresses point after the call; step back into it so
            // the line is the call's (perf does the same). Not for the leaf.
            let addr = if i == 0 { ip } else { ip.saturating_sub(1) };
            out.extend(self.user_one(pid, addr, elide).iter().cloned());
        }
        out
    }

    fn user_one(&mut self, pid: u32, addr: u64, elide: &dyn Fn(&str, u64) -> bool) -> Arc<[Frame]> {
        let mut found = self.locate(pid, addr);
        // Frames are cached by file identity, so they outlive the file's
        // eviction: a hot address of an evicted file needs neither the maps
        // re-read nor the file reopened and parsed again.
        if let Some(Located::File { key, offset, .. }) = &found {
            if let Some(f) = self.cached(*key, *offset) {
                return f;
            }
            if let Some(file) = self.files.get(key)
                && elide(&file.module.path, *offset)
            {
                self.metrics.result("elided").inc();
                return Arc::from([Frame {
                    function: Arc::from(ELIDED),
                    file: None,
                    line: 0,
                    kind: FrameKind::User,
                    module: file.module.clone(),
                    addr: *offset,
                    inlined: false,
                }]);
            }
        }
        // No mapping holds it (a dlopen since), or its file was evicted
        // while the process lives (a busy host churns through more files
        // than the bound): re-capture the maps, which reopens the files.
        let stale = match &found {
            None => true,
            Some(Located::File { key, .. }) => !self.files.contains_key(key),
            _ => false,
        };
        if stale && self.refresh(pid) {
            found = self.locate(pid, addr);
        }
        match found {
            Some(Located::File { key, offset, map }) => {
                if !self.files.contains_key(&key) {
                    self.reopen(pid, map, key);
                }
                self.file_frames(key, offset)
            }
            Some(Located::Jit(name)) => {
                self.metrics.result("resolved").inc();
                Arc::from([Frame {
                    function: name.into(),
                    file: None,
                    line: 0,
                    kind: FrameKind::Jit,
                    module: Arc::new(Module {
                        path: format!("/tmp/perf-{pid}.map").into(),
                        build_id: None,
                    }),
                    addr,
                    inlined: false,
                }])
            }
            Some(Located::Unknown { module, offset }) => {
                self.metrics.result("unknown").inc();
                unknown(module, offset)
            }
            None => {
                tracing::trace!(pid, addr, "address in no known mapping");
                self.metrics.result("unknown").inc();
                unknown(
                    Arc::new(Module {
                        path: "[unknown]".into(),
                        build_id: None,
                    }),
                    addr,
                )
            }
        }
    }

    /// Re-reads the maps of a live process (a library loaded since we first
    /// saw it), at most once per drain. False when nothing changed.
    fn refresh(&mut self, pid: u32) -> bool {
        if self
            .procs
            .get(&pid)
            .is_some_and(|p| p.refreshed == self.tick)
        {
            return false;
        }
        let Some(c) = Captured::read(pid) else {
            if let Some(p) = self.procs.get_mut(&pid) {
                p.refreshed = self.tick;
            }
            return false;
        };
        self.adopt(c);
        true
    }

    fn locate(&mut self, pid: u32, addr: u64) -> Option<Located> {
        let p = self.procs.get_mut(&pid)?;
        p.last_used = self.tick;
        if let Some((i, m)) = p
            .maps
            .maps
            .iter()
            .enumerate()
            .find(|(_, m)| m.start <= addr && addr < m.end)
        {
            let offset = addr - m.start + m.offset;
            if let Some(key) = p.files[i] {
                return Some(Located::File {
                    key,
                    offset,
                    map: i,
                });
            }
            if let Some(name) = p.perf_map.as_ref().and_then(|pm| pm.find(addr)) {
                return Some(Located::Jit(name.to_owned()));
            }
            let path = if m.path.is_empty() { "[anon]" } else { &m.path };
            return Some(Located::Unknown {
                module: Arc::new(Module {
                    path: path.into(),
                    build_id: None,
                }),
                offset,
            });
        }
        // JIT code often lives in anonymous memory that perf maps describe.
        let name = p.perf_map.as_ref()?.find(addr)?.to_owned();
        Some(Located::Jit(name))
    }

    /// Opens again the file of mapping `map` of live process `pid` when it
    /// is still the file `key`. The last resort when the file was evicted
    /// and re-reading the maps was not possible this drain (it is done at
    /// most once per drain and process), so that a busy host's file churn
    /// never leaves a live process's frames unresolved.
    fn reopen(&mut self, pid: u32, map: usize, key: FileKey) {
        let Some(m) = self.procs.get(&pid).and_then(|p| p.maps.maps.get(map)) else {
            return;
        };
        let path = m.path.clone();
        let mapped = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let Ok(f) = File::open(mapped) else { return };
        let same = f
            .metadata()
            .is_ok_and(|meta| (meta.dev(), meta.ino(), meta.mtime()) == key);
        if same {
            tracing::debug!(pid, path, "evicted file opened again");
            self.keep_file(f, key, &path);
        }
    }

    /// The cached frames at `offset` in file `key`.
    fn cached(&mut self, key: FileKey, offset: u64) -> Option<Arc<[Frame]>> {
        let f = self.user_cache.get(&(key, offset))?.clone();
        self.metrics.result("cached").inc();
        // A hit uses the file too: without this a hot, fully cached file
        // looked idle and was the first evicted.
        if let Some(file) = self.files.get_mut(&key) {
            file.last_used = self.tick;
        }
        Some(f)
    }

    fn file_frames(&mut self, key: FileKey, offset: u64) -> Arc<[Frame]> {
        if let Some(f) = self.cached(key, offset) {
            return f;
        }
        let Some(file) = self.files.get(&key) else {
            return unknown(
                Arc::new(Module {
                    path: "[evicted]".into(),
                    build_id: None,
                }),
                offset,
            );
        };
        // Parsed state is built at a miss that finds none: the file's
        // DWARF is admitted (or not) then, for as long as it is held.
        if file.sym.is_none() {
            let with = self.debug_syms && self.admit_dwarf(key);
            if let Some(f) = self.files.get_mut(&key) {
                f.with_dwarf = with;
            }
        }
        let file = self
            .files
            .get_mut(&key)
            .expect("looked up above, and admitting removes no file");
        file.last_used = self.tick;
        let module = file.module.clone();
        let mut elf = Elf::new(file.fd_path.clone());
        elf.debug_syms = file.with_dwarf;
        let src = Source::Elf(elf);
        file.last_miss = self.tick;
        let sym = file.sym.get_or_insert_with(Symbolizer::new);
        let frames: Arc<[Frame]> = match sym.symbolize_single(&src, Input::FileOffset(offset)) {
            Ok(Symbolized::Sym(sym)) => {
                self.metrics.result("resolved").inc();
                frames_of(&sym, &module, offset, FrameKind::User).into()
            }
            Ok(Symbolized::Unknown(_)) | Err(_) => {
                self.metrics.result("unknown").inc();
                unknown(module, offset)
            }
        };
        self.user_cache.insert((key, offset), frames.clone());
        frames
    }

    /// Frames of a kernel stack, leaf first.
    pub fn kernel(&mut self, ips: &[u64]) -> Vec<Frame> {
        let missing: Vec<u64> = ips
            .iter()
            .copied()
            .filter(|ip| !self.kernel_cache.contains_key(ip))
            .collect();
        if !missing.is_empty() {
            self.ksym_used = self.tick;
            let ksym = self.ksym.get_or_insert_with(|| {
                KernelSymbols::read().unwrap_or_else(|e| {
                    tracing::debug!("cannot read /proc/kallsyms: {e}");
                    KernelSymbols::default()
                })
            });
            for &ip in &missing {
                let frames: Arc<[Frame]> = match ksym.find(ip) {
                    Some(name) => {
                        self.metrics.result("resolved").inc();
                        Arc::from([Frame {
                            function: name.into(),
                            file: None,
                            line: 0,
                            kind: FrameKind::Kernel,
                            module: self.kernel_module.clone(),
                            addr: ip,
                            inlined: false,
                        }])
                    }
                    None => {
                        self.metrics.result("unknown").inc();
                        unknown(self.kernel_module.clone(), ip)
                    }
                };
                self.kernel_cache.insert(ip, frames);
            }
        }
        self.metrics
            .result("cached")
            .inc_by((ips.len() - missing.len()) as u64);
        ips.iter()
            .flat_map(|ip| {
                self.kernel_cache
                    .get(ip)
                    .map(|f| f.to_vec())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Keeps every cache within its bound. An evicted file takes its own
    /// blazesym symbolizer with it, so a reused `/proc/self/fd/N` path
    /// never meets a stale parse; its resolved frames stay (keyed by the
    /// file's identity, they are still right, and bounded with the rest).
    fn evict(&mut self) {
        if self.procs.len() > self.limits.processes {
            let n = evict_lru(&mut self.procs, self.limits.processes, |p| p.last_used);
            self.metrics
                .evictions
                .with_label_values(&["processes"])
                .inc_by(n);
        }
        if self.files.len() > self.limits.files {
            let n = evict_lru(&mut self.files, self.limits.files, |f| f.last_used);
            self.metrics
                .evictions
                .with_label_values(&["files"])
                .inc_by(n);
        }
        // Resolved addresses are cheap to recompute: drop them wholesale.
        let symbols = self.user_cache.len() + self.kernel_cache.len();
        if symbols > self.limits.symbols {
            self.user_cache.clear();
            self.kernel_cache.clear();
            self.metrics
                .evictions
                .with_label_values(&["symbols"])
                .inc_by(symbols as u64);
        }
    }
}

enum Located {
    /// `map`: the mapping's index in the process's maps.
    File {
        key: FileKey,
        offset: u64,
        map: usize,
    },
    Jit(String),
    Unknown {
        module: Arc<Module>,
        offset: u64,
    },
}

/// Removes the least recently used entries until `keep` remain (keeping
/// 90% so eviction happens in batches, not on every insert).
fn evict_lru<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    keep: usize,
    used: impl Fn(&V) -> u64,
) -> u64 {
    let target = keep - keep / 10;
    let mut by_age: Vec<(u64, K)> = map.iter().map(|(k, v)| (used(v), k.clone())).collect();
    by_age.sort_by_key(|(t, _)| *t);
    let n = map.len().saturating_sub(target);
    for (_, k) in by_age.into_iter().take(n) {
        map.remove(&k);
    }
    n as u64
}

/// Leaf-first frames for one resolved address: innermost inlined call first.
fn frames_of(
    sym: &blazesym::symbolize::Sym<'_>,
    module: &Arc<Module>,
    addr: u64,
    kind: FrameKind,
) -> Vec<Frame> {
    let loc = |ci: Option<&blazesym::symbolize::CodeInfo<'_>>| {
        ci.map(|c| {
            let p = c.to_path();
            (
                Some(Arc::from(p.to_string_lossy().as_ref())),
                c.line.unwrap_or(0),
            )
        })
        .unwrap_or((None, 0))
    };
    let mut out = Vec::with_capacity(1 + sym.inlined.len());
    for f in sym.inlined.iter().rev() {
        let (file, line) = loc(f.code_info.as_ref());
        out.push(Frame {
            function: Arc::from(f.name.as_ref()),
            file,
            line,
            kind,
            module: module.clone(),
            addr,
            inlined: true,
        });
    }
    let (file, line) = loc(sym.code_info.as_deref());
    out.push(Frame {
        function: Arc::from(sym.name.as_ref()),
        file,
        line,
        kind,
        module: module.clone(),
        addr,
        inlined: false,
    });
    out
}

/// `[unknown] module+0xoffset`: what nothing resolved, still attributable.
fn unknown(module: Arc<Module>, offset: u64) -> Arc<[Frame]> {
    let base = Path::new(&*module.path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| module.path.to_string());
    Arc::from([Frame {
        function: format!("[unknown] {base}+{offset:#x}").into(),
        file: None,
        line: 0,
        kind: FrameKind::Unknown,
        module,
        addr: offset,
        inlined: false,
    }])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker() -> u64 {
        std::hint::black_box(42)
    }

    /// A resolver with room for this test process, registering no metric.
    fn test_resolver() -> Resolver {
        Resolver::new(
            Limits {
                files: 64,
                symbols: 10_000,
                processes: 16,
            },
            SymbolizeMetrics::unregistered(),
        )
    }

    fn parsed(r: &Resolver) -> usize {
        r.files.values().filter(|f| f.sym.is_some()).count()
    }

    #[test]
    fn parsed_files_are_dropped_after_idle_drains_and_frames_stay_cached() {
        let pid = std::process::id();
        let mut r = test_resolver().without_debug_info();
        r.next_drain();
        r.see(pid);
        let addr = marker as *const () as u64;
        let first = r.user(pid, &[addr]);
        assert!(
            first.iter().any(|f| f.function.contains("marker")),
            "resolved: {first:?}"
        );
        assert_eq!(parsed(&r), 1, "the test binary was parsed for the miss");
        r.release();
        assert_eq!(parsed(&r), 1, "kept at the end of the drain that missed");
        for drain in 1..KEEP_PARSED_DRAINS {
            r.next_drain();
            r.release();
            assert_eq!(parsed(&r), 1, "still kept after {drain} idle drain(s)");
        }
        r.next_drain();
        r.release();
        assert_eq!(
            parsed(&r),
            0,
            "dropped after {KEEP_PARSED_DRAINS} idle drains"
        );
        // Elision spares only addresses not cached yet.
        let elided = r.user_eliding(pid, &[addr], &|_, _| true);
        assert_eq!(elided, first, "a cached address is not elided");
        // The cached frames answer without parsing again.
        r.next_drain();
        assert_eq!(r.user(pid, &[addr]), first);
        assert_eq!(parsed(&r), 0, "a cache hit parses nothing");
        // Nor once the file is evicted: no reopening, no parse.
        r.limits.files = 0;
        r.next_drain();
        assert!(r.files.is_empty(), "every file evicted");
        assert_eq!(r.user(pid, &[addr]), first);
        assert!(r.files.is_empty(), "a cache hit reopens nothing");
    }

    #[inline(never)]
    fn other_marker() -> u64 {
        std::hint::black_box(7)
    }

    /// A live process's file evicted in a drain whose one re-read of the
    /// maps is already spent: its uncached addresses still resolve (the
    /// file is opened again), never `[evicted]`.
    #[test]
    fn a_file_whose_dwarf_is_over_the_budget_gets_names_without_lines() {
        let pid = std::process::id();
        let mut r = test_resolver().dwarf_budget(DwarfBudget {
            total: 1 << 40,
            per_file: 1 << 20,
        });
        r.next_drain();
        r.see(pid);
        let frames = r.user(pid, &[marker as *const () as u64]);
        let f = frames
            .iter()
            .find(|f| f.function.contains("marker"))
            .unwrap_or_else(|| panic!("named from ELF symbols: {frames:?}"));
        // The test binary carries far more than 1 MiB of DWARF (a debug
        // build): refused, so no line and no file.
        assert_eq!((f.line, f.file.as_deref()), (0, None), "{f:?}");
        assert_eq!(r.metrics.dwarf_refused.get(), 1);
        let exe = r.files.values().find(|f| f.sym.is_some()).expect("parsed");
        assert!(exe.dwarf.unwrap_or(0) > 1 << 20 && !exe.with_dwarf);
        assert_eq!(r.dwarf_held(), 0, "refused DWARF is not counted as held");
    }

    #[test]
    fn an_evicted_file_of_a_live_process_is_opened_again() {
        let pid = std::process::id();
        let mut r = test_resolver().without_debug_info();
        r.next_drain();
        r.see(pid);
        r.limits.files = 0;
        r.next_drain();
        assert!(r.files.is_empty(), "every file evicted");
        // This drain's re-read is spent (as when an address in no mapping
        // came first).
        r.procs.get_mut(&pid).expect("captured").refreshed = r.tick;
        let frames = r.user(pid, &[other_marker as *const () as u64]);
        assert!(
            frames.iter().any(|f| f.function.contains("other_marker")),
            "resolved after reopening: {frames:?}"
        );
    }

    #[test]
    fn elided_addresses_are_not_symbolized() {
        let pid = std::process::id();
        let mut r = test_resolver().without_debug_info();
        r.next_drain();
        r.see(pid);
        let addr = marker as *const () as u64;
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let seen = std::cell::RefCell::new(Vec::new());
        let out = r.user_eliding(pid, &[addr], &|path, offset| {
            seen.borrow_mut().push((path.to_owned(), offset));
            true
        });
        assert_eq!(out.len(), 1);
        assert_eq!(&*out[0].function, ELIDED);
        assert_eq!(out[0].kind, FrameKind::User);
        // Asked with the path and offset the splice compares.
        assert_eq!(
            *seen.borrow(),
            [(out[0].module.path.to_string(), out[0].addr)]
        );
        assert_eq!(Path::new(&*out[0].module.path), exe);
        assert_eq!(parsed(&r), 0, "nothing parsed for an elided address");
        // Not cached either: asked without elision, it resolves.
        let full = r.user(pid, &[addr]);
        assert!(full.iter().any(|f| f.function.contains("marker")));
    }
}
