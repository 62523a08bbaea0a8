//! `sonde alloc` sessions: malloc-family uprobes on one process for a
//! bounded time, then a report of live and allocated bytes by stack.
//!
//! The probes are attached for this pid only, to the libc it maps, at
//! probe points the kernel emulates (see probe_point.rs). For a CPython
//! process (detected as the profiler does, profile/python.rs) the session
//! also probes the interpreter's allocator (pyalloc.rs), marks the process
//! in the object's `PY_PROCS` so each allocation carries its Python stack,
//! and splices those frames into the native stacks of the report. A session ends at
//! its duration, when cancelled (`DELETE /api/v1/alloc`, which the CLI
//! sends on Ctrl-C), when the target exits, or at agent shutdown; in every
//! case the programs are dropped (detached) before the maps are read.
//!
//! Not a collector: sessions start on request, so they use the kit's
//! helpers (programs, maps, counters) but not `Base`. Attaching and the
//! report run in `spawn_blocking`: reading the libc's symbols, the maps and
//! symbolizing the stacks are blocking work; the wait between them is an
//! async task under a child token of the agent's shutdown token.

use std::{
    collections::{BTreeMap, HashMap},
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuHashMap, StackTraceMap},
    programs::{UProbe, uprobe::UProbeScope},
};
use sonde_common::{
    memory::{
        ALLOC_ACTIVE_SLOT, ALLOC_SAMPLE_BYTES_SLOT, AllocCounter, AllocLive, AllocStackKey,
        AllocTotals,
    },
    python::{PY_STACK_ID_BASE, PyFrameRecord, PyStack},
};
use tokio_util::sync::CancellationToken;

use super::{
    libc::{self, Libc, LibcError, Target},
    pyalloc::{self, PyAlloc},
};
use crate::{
    collectors::{
        kit::{budget, chain, counters::KernelCounters, program, take_map},
        profile::{
            procmaps::Captured,
            python::{self, PyTracker, PythonMetrics},
            render::frame_name,
            store::Frame,
            symbolize::{Limits, Resolver, SymbolizeMetrics},
        },
    },
    ebpf,
};

/// The sessions' eBPF object.
pub const OBJECT: ebpf::Object = ebpf::object!("sonde-alloc");

/// Longest session.
pub const MAX_DURATION: Duration = Duration::from_secs(600);

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub pid: u32,
    pub duration: Duration,
    /// Mean bytes between sampled allocations; 0: every allocation.
    pub sample_bytes: u64,
    /// Live allocations older than this at the end are leak suspects.
    pub min_age: Duration,
    /// Also snapshot live bytes early and report growth since.
    pub diff: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The user's input is at fault (bad pid, no libc).
    #[error(transparent)]
    Target(#[from] LibcError),
    #[error(
        "an allocation-tracking session is already running on pid {0}; wait for it \
         to end (or cancel it with Ctrl-C in its terminal)"
    )]
    Busy(u32),
    #[error("attaching malloc probes to pid {pid}: {detail}")]
    Attach { pid: u32, detail: String },
    #[error("the session's worker failed: {0}")]
    Worker(String),
}

pub use sonde_wire::alloc::{AllocReport, Ended, ProbeInfo, SessionInfo, StackRow};

/// A session's result: what the JSON answer carries, plus the resolved
/// frames of each stack for pprof and folded output.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub summary: AllocReport,
    /// Resolved frames of each row of `summary.stacks`.
    pub frames: Vec<Arc<[Frame]>>,
}

impl std::ops::Deref for Report {
    type Target = AllocReport;

    fn deref(&self) -> &AllocReport {
        &self.summary
    }
}

struct Entry {
    token: CancellationToken,
    tracking: bool,
    since: Instant,
}

type Active = Arc<Mutex<HashMap<u32, Entry>>>;

/// Registry of running sessions: one per pid.
#[derive(Clone)]
pub struct Sessions {
    active: Active,
    shutdown: CancellationToken,
}

impl Sessions {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            active: Arc::default(),
            shutdown,
        }
    }

    /// Cancels the session on `pid`; false if none runs.
    pub fn cancel(&self, pid: u32) -> bool {
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        match active.get(&pid) {
            Some(e) => {
                e.token.cancel();
                true
            }
            None => false,
        }
    }

    /// The sessions running now.
    pub fn list(&self) -> Vec<SessionInfo> {
        let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<SessionInfo> = active
            .iter()
            .map(|(pid, e)| SessionInfo {
                pid: *pid,
                state: if e.tracking { "tracking" } else { "attaching" }.into(),
                elapsed_ms: e.since.elapsed().as_millis() as u64,
            })
            .collect();
        out.sort_by_key(|s| s.pid);
        out
    }

    fn set_tracking(&self, pid: u32) {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = active.get_mut(&pid) {
            e.tracking = true;
        }
    }

    /// Runs a session to its end.
    pub async fn run(&self, req: Request) -> Result<Report, SessionError> {
        if !std::path::Path::new(&format!("/proc/{}", req.pid)).exists() {
            return Err(LibcError::NoProcess(req.pid).into());
        }
        let token = self.shutdown.child_token();
        {
            let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            if active.contains_key(&req.pid) {
                return Err(SessionError::Busy(req.pid));
            }
            active.insert(
                req.pid,
                Entry {
                    token: token.clone(),
                    tracking: false,
                    since: Instant::now(),
                },
            );
        }
        let _guard = Unregister {
            active: self.active.clone(),
            pid: req.pid,
        };
        let r = req.clone();
        let attached = tokio::task::spawn_blocking(move || attach(&r))
            .await
            .map_err(|e| SessionError::Worker(e.to_string()))??;
        self.set_tracking(req.pid);
        let started = Instant::now();
        let (ended, snapshot, attached, elapsed) =
            wait(attached, &req, &token, &self.shutdown, started).await;
        tokio::task::spawn_blocking(move || report(attached, &req, ended, elapsed, snapshot))
            .await
            .map_err(|e| SessionError::Worker(e.to_string()))
    }
}

struct Unregister {
    active: Active,
    pid: u32,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
        active.remove(&self.pid);
    }
}

/// A session's kernel state. Dropping `obj` detaches every probe.
struct Attached {
    obj: Option<Ebpf>,
    control: Array<MapData, u64>,
    live: BpfHashMap<MapData, u64, AllocLive>,
    totals: PerCpuHashMap<MapData, AllocStackKey, AllocTotals>,
    stacks: StackTraceMap<MapData>,
    /// A CPython process's Python side.
    python: Option<PySession>,
    counters: KernelCounters<AllocCounter>,
    libc: Libc,
    started_ns: u64,
    ended_ns: u64,
    /// The process's maps and files, opened at the start so stacks resolve
    /// even if it exits mid-session.
    captured: Option<Captured>,
    comm: String,
}

/// The Python side of a session on a CPython process.
struct PySession {
    tracker: PyTracker,
    /// Python stacks by id (the kernel's `PY_STACKS_0`).
    stacks: BpfHashMap<MapData, u32, PyStack>,
    /// The interpreter's allocator probes; None when it exports none.
    alloc: Option<PyAlloc>,
}

fn attach_err(pid: u32) -> impl Fn(String) -> SessionError {
    move |detail| SessionError::Attach { pid, detail }
}

/// Every uprobe program of the object, loaded before any is attached (the
/// attach points are the libc's, found at run time).
const PROGRAMS: [&str; 11] = [
    "alloc_malloc",
    "alloc_calloc",
    "alloc_realloc",
    "alloc_memalign",
    "alloc_posix_memalign",
    "alloc_return",
    "alloc_free",
    "alloc_py_malloc",
    "alloc_py_calloc",
    "alloc_py_realloc",
    "alloc_py_free",
];

fn attach(req: &Request) -> Result<Attached, SessionError> {
    let pid = req.pid;
    let err = attach_err(pid);
    let libc = libc::find(pid)?;
    let comm = crate::process_table::read_lossy(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    // Sessions use one generation of Python stacks; the other map only
    // exists because the walk is shared with collectors that flip two.
    let mut obj = ebpf::load_with(OBJECT, &0, |l| {
        l.map_max_entries("PY_STACKS_1", 1);
    })
    .map_err(|e| err(chain(&e)))?;
    let mut control: Array<MapData, u64> =
        take_map(&mut obj, "ALLOC_CONTROL").map_err(|e| err(chain(&e)))?;
    control
        .set(ALLOC_SAMPLE_BYTES_SLOT, req.sample_bytes, 0)
        .map_err(|e| err(e.to_string()))?;
    let live = take_map(&mut obj, "ALLOC_LIVE").map_err(|e| err(chain(&e)))?;
    let totals = take_map(&mut obj, "ALLOC_TOTALS").map_err(|e| err(chain(&e)))?;
    let stacks = take_map(&mut obj, "ALLOC_STACKS").map_err(|e| err(chain(&e)))?;
    let counters =
        KernelCounters::new(take_map(&mut obj, "ALLOC_COUNTERS_MAP").map_err(|e| err(chain(&e)))?);
    let scope = UProbeScope::OneProcess(
        NonZeroU32::new(pid).ok_or_else(|| err("pid 0 is not a process".into()))?,
    );
    // Entry programs by function; every allocation function shares the
    // return program.
    let entry_prog = |f: &str| match f {
        "malloc" => "alloc_malloc",
        "calloc" => "alloc_calloc",
        "realloc" => "alloc_realloc",
        "posix_memalign" => "alloc_posix_memalign",
        _ => "alloc_memalign",
    };
    for name in PROGRAMS {
        let p: &mut UProbe = program(&mut obj, name).map_err(|e| err(chain(&e)))?;
        p.load()
            .map_err(|e| err(format!("loading {name}: {}", chain(&e))))?;
        budget::record(name, p.info());
    }
    let mut attach_one = |prog: &str, t: &Target| -> Result<(), SessionError> {
        let p: &mut UProbe = program(&mut obj, prog).map_err(|e| err(chain(&e)))?;
        p.attach(t.file_offset, &libc.host_path, scope)
            .map_err(|e| {
                err(format!(
                    "{prog} at {}+{}: {}",
                    t.function,
                    t.point.offset,
                    chain(&e)
                ))
            })?;
        Ok(())
    };
    // Return probes first: an entry seen without its return probe would
    // leave a pending call behind.
    for t in &libc.allocs {
        attach_one("alloc_return", t)?;
    }
    for t in &libc.allocs {
        attach_one(entry_prog(t.function), t)?;
    }
    attach_one("alloc_free", &libc.free)?;
    let python = attach_python(&mut obj, pid, scope)?;
    tracing::info!(
        pid,
        libc = %libc.path,
        probes = libc.allocs.len() + 1,
        python = python.as_ref().and_then(|p| p.alloc.as_ref()).map(|a| a.path.as_str()),
        "alloc session attached"
    );
    // Record from now on: every probe is in place.
    control
        .set(ALLOC_ACTIVE_SLOT, 1, 0)
        .map_err(|e| err(e.to_string()))?;
    let started_ns = monotonic_ns();
    Ok(Attached {
        obj: Some(obj),
        control,
        live,
        totals,
        stacks,
        python,
        counters,
        captured: Captured::read(pid),
        libc,
        started_ns,
        ended_ns: 0,
        comm,
    })
}

/// For a CPython process: marks it in `PY_PROCS` (the return probe then
/// walks its Python stack) and attaches the interpreter's allocator
/// probes. None for other processes, or when Python frames cannot be
/// walked (no BTF, an unsupported build: logged).
fn attach_python(
    obj: &mut Ebpf,
    pid: u32,
    scope: UProbeScope,
) -> Result<Option<PySession>, SessionError> {
    let err = attach_err(pid);
    let procs = take_map(obj, "PY_PROCS").map_err(|e| err(chain(&e)))?;
    let config = take_map(obj, "PY_CONFIG").map_err(|e| err(chain(&e)))?;
    let stacks = take_map(obj, "PY_STACKS_0").map_err(|e| err(chain(&e)))?;
    // Sessions start long after start-up, when the daemon's copy is gone.
    let btf = ebpf::KernelBtf::read();
    let Some(mut tracker) =
        python::tracker(&btf, procs, config, PythonMetrics::unregistered(), "alloc")
    else {
        return Ok(None);
    };
    tracker.announced(pid);
    let Some(interp) = tracker.interpreter(pid) else {
        if let Some(why) = tracker.rejected(pid) {
            tracing::info!(pid, "CPython process without Python frames: {why}");
        }
        return Ok(None);
    };
    let alloc = match pyalloc::find(pid, &interp.path) {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(pid, "CPython's allocator not probed: {e}");
            None
        }
    };
    if let Some(a) = &alloc {
        let mut attach_one = |prog: &str, t: &Target| -> Result<(), SessionError> {
            let p: &mut UProbe = program(obj, prog).map_err(|e| err(chain(&e)))?;
            p.attach(t.file_offset, &a.host_path, scope)
                .map(drop)
                .map_err(|e| err(format!("{prog} at {}: {}", t.function, chain(&e))))
        };
        // Return probes first, as for libc.
        for t in a.targets.iter().filter(|t| t.allocates) {
            attach_one("alloc_return", &t.target)?;
        }
        for t in &a.targets {
            attach_one(t.program, &t.target)?;
        }
    }
    Ok(Some(PySession {
        tracker,
        stacks,
        alloc,
    }))
}

/// Live bytes by stack, weighted.
fn live_by_stack(live: &BpfHashMap<MapData, u64, AllocLive>) -> HashMap<AllocStackKey, u64> {
    let mut out: HashMap<AllocStackKey, u64> = HashMap::new();
    for (_, v) in live.iter().filter_map(Result::ok) {
        *out.entry(stack_key(&v)).or_default() += v.weight;
    }
    out
}

fn stack_key(v: &AllocLive) -> AllocStackKey {
    AllocStackKey {
        stack_id: v.stack_id,
        python_stack_id: v.python_stack_id,
    }
}

/// Waits for the end; takes the `--diff` snapshot on the way; detaches.
async fn wait(
    mut a: Attached,
    req: &Request,
    token: &CancellationToken,
    shutdown: &CancellationToken,
    started: Instant,
) -> (
    Ended,
    Option<(Duration, HashMap<AllocStackKey, u64>)>,
    Attached,
    Duration,
) {
    let proc_dir = format!("/proc/{}", req.pid);
    // The diff baseline: after a tenth of the session (at most 10 s), once
    // the process's steady churn is in the live map.
    let diff_at = (req.diff).then(|| (req.duration / 10).min(Duration::from_secs(10)));
    let mut snapshot = None;
    let end = started + req.duration;
    let ended = loop {
        let now = Instant::now();
        if now >= end {
            break Ended::Completed;
        }
        if let Some(at) = diff_at
            && snapshot.is_none()
            && now >= started + at
        {
            snapshot = Some((now - started, live_by_stack(&a.live)));
        }
        let tick = (end - now).min(Duration::from_millis(200));
        tokio::select! {
            // The session's token is a child of the shutdown token: at
            // shutdown both fire, and shutdown is the reason.
            biased;
            _ = shutdown.cancelled() => break Ended::AgentShutdown,
            _ = token.cancelled() => break Ended::Cancelled,
            _ = tokio::time::sleep(tick) => {}
        }
        if !std::path::Path::new(&proc_dir).exists() {
            break Ended::TargetExited;
        }
    };
    // Stop recording first (frees are still seen), then detach, so no
    // allocation outlives a free probe that is already gone.
    a.ended_ns = monotonic_ns();
    if let Err(e) = a.control.set(ALLOC_ACTIVE_SLOT, 0, 0) {
        tracing::warn!(pid = req.pid, "cannot stop the alloc session cleanly: {e}");
    }
    let elapsed = started.elapsed();
    a.obj.take();
    tracing::info!(pid = req.pid, ?ended, "alloc session detached");
    (ended, snapshot, a, elapsed)
}

fn report(
    mut a: Attached,
    req: &Request,
    ended: Ended,
    elapsed: Duration,
    snapshot: Option<(Duration, HashMap<AllocStackKey, u64>)>,
) -> Report {
    // Ages at the session's end, not at report time (detaching takes a
    // while).
    let now_ns = a.ended_ns;
    let min_age_ns = req.min_age.as_nanos() as u64;
    #[derive(Default)]
    struct Acc {
        in_use: (u64, u64),
        leak: (u64, u64),
        alloc: (u64, u64),
        freed: (u64, u64),
    }
    let mut by: HashMap<AllocStackKey, Acc> = HashMap::new();
    for (_, v) in a.live.iter().filter_map(Result::ok) {
        let e = by.entry(stack_key(&v)).or_default();
        e.in_use.0 += v.weight;
        e.in_use.1 += 1;
        if now_ns.saturating_sub(v.ts_ns) >= min_age_ns {
            e.leak.0 += v.weight;
            e.leak.1 += 1;
        }
    }
    for (k, v) in a.totals.iter().filter_map(Result::ok) {
        let e = by.entry(k).or_default();
        for t in v.iter() {
            e.alloc.0 += t.alloc_bytes;
            e.alloc.1 += t.alloc_count;
            e.freed.0 += t.free_bytes;
            e.freed.1 += t.free_count;
        }
    }
    let mut counters = BTreeMap::new();
    for (c, n) in a.counters.totals() {
        counters.insert(c.label().to_owned(), n);
    }
    let mut resolver = Resolver::new(
        Limits {
            files: 256,
            symbols: 65_536,
            processes: 4,
        },
        SymbolizeMetrics::unregistered(),
    );
    if let Some(c) = a.captured.take() {
        resolver.adopt(c);
    }
    resolver.see(req.pid);
    let mut rows: Vec<(StackRow, Arc<[Frame]>)> = Vec::with_capacity(by.len());
    let mut py_records: HashMap<i32, Vec<PyFrameRecord>> = HashMap::new();
    for (key, acc) in by {
        let id = key.stack_id;
        let mut native: Vec<Frame> = if id >= 0 {
            match a.stacks.get(&(id as u32), 0) {
                Ok(t) => {
                    let ips: Vec<u64> = t.frames().iter().map(|f| f.ip).collect();
                    resolver.user(req.pid, &ips)
                }
                Err(_) => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let py_id = key.python_stack_id;
        if let Some(py) = &mut a.python
            && py_id >= PY_STACK_ID_BASE
        {
            let records = py_records.entry(py_id).or_insert_with(|| {
                py.stacks
                    .get(&(py_id as u32), 0)
                    .map(|s| s.frames[..(s.len as usize).min(s.frames.len())].to_vec())
                    .unwrap_or_default()
            });
            native = py.tracker.splice(req.pid, native, records);
        }
        let frames: Arc<[Frame]> = native.into();
        let growth = snapshot
            .as_ref()
            .map(|(_, s)| acc.in_use.0 as i64 - s.get(&key).copied().unwrap_or(0) as i64);
        let names: Vec<String> = if frames.is_empty() {
            vec![format!("[no stack: {}]", stack_error(id))]
        } else {
            frames.iter().map(frame_name).collect()
        };
        rows.push((
            StackRow {
                frames: names,
                in_use_bytes: acc.in_use.0,
                in_use_count: acc.in_use.1,
                alloc_bytes: acc.alloc.0,
                alloc_count: acc.alloc.1,
                freed_bytes: acc.freed.0,
                freed_count: acc.freed.1,
                leak_bytes: acc.leak.0,
                leak_count: acc.leak.1,
                growth_bytes: growth,
            },
            frames,
        ));
    }
    rows.sort_by(|(a, _), (b, _)| {
        b.in_use_bytes
            .cmp(&a.in_use_bytes)
            .then(b.alloc_bytes.cmp(&a.alloc_bytes))
            .then(a.frames.cmp(&b.frames))
    });
    let (stacks, frames) = rows.into_iter().unzip();
    let summary = AllocReport {
        pid: req.pid,
        comm: a.comm,
        libc: a.libc.path.clone(),
        duration_ms: elapsed.as_millis() as u64,
        ended: Some(ended),
        sample_bytes: req.sample_bytes,
        estimated: req.sample_bytes > 0,
        min_age_ms: req.min_age.as_millis() as u64,
        started_ns: a.started_ns,
        ended_ns: a.ended_ns,
        diff_after_ms: snapshot.map(|(d, _)| d.as_millis() as u64),
        probes: a
            .libc
            .allocs
            .iter()
            .chain(std::iter::once(&a.libc.free))
            .chain(
                a.python
                    .iter()
                    .filter_map(|p| p.alloc.as_ref())
                    .flat_map(|p| p.targets.iter().map(|t| &t.target)),
            )
            .map(|t| ProbeInfo {
                function: t.function.into(),
                offset: t.point.offset,
                emulated: t.point.emulated,
            })
            .collect(),
        counters,
        stacks,
    };
    Report { summary, frames }
}

fn stack_error(id: i32) -> &'static str {
    match -id {
        14 => "unreadable (EFAULT)",
        17 => "hash collision",
        12 => "stack map full",
        _ => "not captured",
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock `bpf_ktime_get_ns` reads.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = ::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    if unsafe { ::libc::clock_gettime(::libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock start of a session that lasted `elapsed`, for pprof.
pub fn started_at(elapsed: Duration) -> SystemTime {
    SystemTime::now() - elapsed
}
