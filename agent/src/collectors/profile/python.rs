//! Python frames in CPU profiles.
//!
//! [`PyTracker`] (on the symbolizing thread) detects CPython processes
//! when they are first sampled (`sonde_python::Detector`, which caches each
//! file's analysis), writes their walk recipe into the kernel's `PY_PROCS`
//! so the sampling program walks their Python frames, and removes exited
//! ones. [`PyTracker::splice`] puts the walked frames into the native
//! stack: every native frame in the interpreter's eval loop (by address
//! range, so Debian's cold split and stripped binaries count too) is
//! replaced by the Python frames that call ran, up to its entry frame.

use std::{
    collections::HashMap,
    ops::Range,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};
use sonde_common::{
    profile::ProfileCounter,
    python::{PY_CONFIG_FSBASE, PY_FRAME_ENTRY, PY_FRAME_NO_CHECKSUM, PyFrameRecord, PyProcInfo},
};
use sonde_python::{
    Detector, Interpreter, ProcMem, Rejected,
    code::CodeCache,
    detect::{Mapping, read_maps},
    walk::proc_info,
};

use super::{
    procmaps::ProcMaps,
    store::{Frame, FrameKind, Module},
    symbolize::ELIDED,
};

/// Code objects remembered across all processes.
const CODE_CACHE: usize = 16_384;
/// Named frames remembered across all processes, one per (code object,
/// instruction): a busy process has a few hundred.
const FRAME_CACHE: usize = 65_536;
/// A process whose interpreter was not initialized yet is tried again
/// after this long (when it is sampled again), doubled at each try, at
/// most [`MAX_TRIES`] times: a program that links libpython without
/// running it (`perf`) stays not ready for ever.
const RETRY_NOT_READY: Duration = Duration::from_secs(1);
const MAX_TRIES: u32 = 10;
/// Processes remembered as not (or not supported) CPython.
const MAX_PIDS: usize = 65_536;

#[derive(Clone)]
pub struct PythonMetrics {
    walks: IntCounter,
    errors: IntCounterVec,
    processes: IntGaugeVec,
}

impl PythonMetrics {
    /// The same metrics, registered nowhere: for trackers whose errors are
    /// not exported (`sonde alloc` sessions, the memory collector, which
    /// count the kernel's side in their own counters).
    pub fn unregistered() -> Self {
        Self {
            walks: IntCounter::new("walks", "unexported").expect("valid metric"),
            errors: IntCounterVec::new(Opts::new("errors", "unexported"), &["reason"])
                .expect("valid metric"),
            processes: IntGaugeVec::new(Opts::new("processes", "unexported"), &["status"])
                .expect("valid metric"),
        }
    }

    pub fn new(t: &crate::telemetry::Telemetry) -> Self {
        Self {
            walks: t.register(
                IntCounter::new(
                    "sonde_profile_python_walks_total",
                    "Samples of CPython processes whose Python frames the kernel walked.",
                )
                .expect("valid metric"),
            ),
            errors: t.register(
                IntCounterVec::new(
                    Opts::new(
                        "sonde_profile_python_errors_total",
                        "Python stack failures, by reason: read_fault, truncated, \
                         stack_lost (kernel), merge, symbolize (agent).",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            processes: t.register(
                IntGaugeVec::new(
                    Opts::new(
                        "sonde_profile_python_processes",
                        "CPython processes seen by the profiler, by status: walked, or \
                         why not (pypy, free_threaded, unsupported_version, ...).",
                    ),
                    &["status"],
                )
                .expect("valid metric"),
            ),
        }
    }

    /// A delta of one of the kernel's Python counters.
    pub fn kernel(&self, c: ProfileCounter, delta: u64) {
        let reason = match c {
            ProfileCounter::PythonWalks => return self.walks.inc_by(delta),
            ProfileCounter::PythonReadFault => "read_fault",
            ProfileCounter::PythonTruncated => "truncated",
            ProfileCounter::PythonStackLost => "stack_lost",
            _ => return,
        };
        self.errors.with_label_values(&[reason]).inc_by(delta);
    }

    fn error(&self, reason: &str) {
        self.errors.with_label_values(&[reason]).inc();
    }
}

/// A CPython process the kernel walks.
struct Walked {
    interp: Interpreter,
    mem: ProcMem,
    /// The eval loop as (mapped path, file-offset range), the way the
    /// symbolizer locates native frames.
    ranges: Vec<(Arc<str>, Range<u64>)>,
    /// Start time (/proc/PID/stat), to tell a reused pid.
    start: u64,
}

enum Tracked {
    Walked(Box<Walked>),
    Rejected {
        label: &'static str,
        retry_at: Option<Instant>,
        /// Detections tried so far (the delay doubles each time).
        tries: u32,
        start: u64,
    },
    NotPython {
        start: u64,
    },
}

pub struct PyTracker {
    procs: BpfHashMap<MapData, u32, PyProcInfo>,
    detector: Detector,
    codes: CodeCache,
    named: NamedFrames,
    pids: HashMap<u32, Tracked>,
    metrics: PythonMetrics,
    module: Arc<Module>,
}

/// A tracker when the kernel's fsbase offset is known (from BTF), which
/// it then hands to the program; None (and no Python walks) otherwise.
/// `who` names the collector or session in the log.
pub fn tracker(
    btf: &crate::ebpf::KernelBtf,
    procs: BpfHashMap<MapData, u32, PyProcInfo>,
    mut config: Array<MapData, u32>,
    metrics: PythonMetrics,
    who: &str,
) -> Option<PyTracker> {
    let set = fsbase_offset(btf).and_then(|o| {
        config
            .set(PY_CONFIG_FSBASE, o, 0)
            .map_err(|e| format!("setting the fsbase offset: {e}"))
    });
    if let Err(e) = set {
        tracing::warn!(collector = who, "no Python frames: {e}");
        return None;
    }
    Some(PyTracker::new(procs, metrics))
}

/// `task_struct.thread.fsbase`'s offset, from the kernel's BTF.
fn fsbase_offset(btf: &crate::ebpf::KernelBtf) -> Result<u32, String> {
    let raw = btf.raw()?;
    let mut off = 0;
    for (ty, field) in sonde_python::FSBASE_BTF_PATH {
        off += crate::collectors::memory::kernel_layout::field_offset_in(raw, ty, field)
            .map_err(|e| format!("{ty}.{field} not found in the kernel's BTF: {e}"))?;
    }
    u32::try_from(off).map_err(|_| "fsbase offset too large".to_owned())
}

/// Field 22 of /proc/PID/stat (start time in clock ticks); None when the
/// process is gone.
fn start_time(pid: u32) -> Option<u64> {
    let stat = crate::process_table::read_lossy(format!("/proc/{pid}/stat"))?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl PyTracker {
    pub fn new(procs: BpfHashMap<MapData, u32, PyProcInfo>, metrics: PythonMetrics) -> Self {
        Self {
            procs,
            detector: Detector::default(),
            codes: CodeCache::new(CODE_CACHE),
            named: NamedFrames::new(FRAME_CACHE),
            pids: HashMap::new(),
            metrics,
            module: Arc::new(Module {
                path: "[python]".into(),
                build_id: None,
            }),
        }
    }

    /// The kernel announced `pid` (first sample, or exec): detect afresh.
    pub fn announced(&mut self, pid: u32) {
        self.forget(pid);
        self.pids.remove(&pid);
        self.detect(pid, None);
    }

    /// [`PyTracker::announced`] with the maps the announcement captured
    /// (read once per new process, not once more here).
    pub fn announced_with(&mut self, maps: &ProcMaps) {
        let pid = maps.pid;
        self.forget(pid);
        self.pids.remove(&pid);
        let maps = maps
            .maps
            .iter()
            .filter(|m| m.is_file())
            .map(|m| Mapping {
                start: m.start,
                end: m.end,
                offset: m.offset,
                executable: true,
                file_id: (m.dev, m.inode),
                path: m.path.clone(),
            })
            .collect();
        self.detect(pid, Some(maps));
    }

    /// The interpreter of `pid`, when its Python frames are walked.
    pub fn interpreter(&self, pid: u32) -> Option<&Interpreter> {
        match self.pids.get(&pid) {
            Some(Tracked::Walked(w)) => Some(&w.interp),
            _ => None,
        }
    }

    /// Why `pid`'s Python frames are not walked, if it was looked at and
    /// is a CPython the tracker cannot walk.
    pub fn rejected(&self, pid: u32) -> Option<&'static str> {
        match self.pids.get(&pid) {
            Some(Tracked::Rejected { label, .. }) => Some(label),
            _ => None,
        }
    }

    /// `pid` is in a drained batch: detect it if nothing did yet, or again
    /// when its interpreter was still starting.
    pub fn sampled(&mut self, pid: u32) {
        match self.pids.get(&pid) {
            None => self.detect(pid, None),
            Some(Tracked::Rejected {
                retry_at: Some(at), ..
            }) if Instant::now() >= *at => self.detect(pid, None),
            _ => {}
        }
    }

    fn forget(&mut self, pid: u32) {
        if let Some(Tracked::Walked(_)) = self.pids.remove(&pid) {
            let _ = self.procs.remove(&pid);
            self.codes.forget_pid(pid);
            self.named.forget_pid(pid);
        }
    }

    /// Detects `pid` from `maps` (its executable mappings), or from its
    /// maps read now.
    fn detect(&mut self, pid: u32, maps: Option<Vec<Mapping>>) {
        let Some(start) = start_time(pid) else {
            self.forget(pid);
            return;
        };
        let tries = match self.pids.get(&pid) {
            Some(Tracked::Rejected { tries, .. }) => tries + 1,
            _ => 1,
        };
        if self.pids.len() >= MAX_PIDS {
            self.pids.retain(|_, t| matches!(t, Tracked::Walked(_)));
        }
        let t = match self.try_detect(pid, start, maps) {
            Ok(w) => match self.procs.insert(pid, w.1, 0) {
                Ok(()) => {
                    tracing::debug!(
                        pid,
                        version = format!("{}.{}", w.0.interp.major, w.0.interp.minor),
                        path = %w.0.interp.path,
                        "CPython process: walking its Python frames"
                    );
                    Tracked::Walked(w.0)
                }
                Err(e) => {
                    tracing::debug!(pid, "PY_PROCS full or failing: {e}");
                    Tracked::Rejected {
                        label: "too_many_processes",
                        retry_at: None,
                        tries,
                        start,
                    }
                }
            },
            Err(Rejected::NotPython) => Tracked::NotPython { start },
            Err(e) => {
                tracing::debug!(pid, "CPython process not walked: {e}");
                Tracked::Rejected {
                    label: e.label(),
                    retry_at: (matches!(e, Rejected::NotReady(_) | Rejected::Mem(_))
                        && tries < MAX_TRIES)
                        .then(|| Instant::now() + RETRY_NOT_READY * (1 << (tries - 1))),
                    tries,
                    start,
                }
            }
        };
        self.pids.insert(pid, t);
    }

    fn try_detect(
        &mut self,
        pid: u32,
        start: u64,
        maps: Option<Vec<Mapping>>,
    ) -> Result<(Box<Walked>, PyProcInfo), Rejected> {
        let maps = match maps {
            Some(m) => m,
            None => read_maps(pid)?,
        };
        let interp = self.detector.detect_in(pid, &maps)?;
        let mem = ProcMem::new(pid);
        let info = proc_info(&interp, &mem)?;
        let mut ranges = Vec::new();
        for r in interp.interpreter_ranges() {
            let (s, e) = (r.start + interp.bias, r.end + interp.bias);
            if let Some(m) = maps
                .iter()
                .find(|m| m.executable && m.path == interp.path && m.start <= s && e <= m.end)
            {
                let to_off = |a: u64| a - m.start + m.offset;
                ranges.push((Arc::from(m.path.as_str()), to_off(s)..to_off(e)));
            }
        }
        if ranges.is_empty() {
            return Err(Rejected::Layout(
                "eval loop not in an executable mapping".into(),
            ));
        }
        Ok((
            Box::new(Walked {
                interp,
                mem,
                ranges,
                start,
            }),
            info,
        ))
    }

    /// Drops exited processes (and reused pids) and exports the gauge;
    /// once per drain.
    pub fn sweep(&mut self) {
        let dead: Vec<u32> = self
            .pids
            .iter()
            .filter(|(pid, t)| {
                let start = match t {
                    Tracked::Walked(w) => w.start,
                    Tracked::Rejected { start, .. } | Tracked::NotPython { start } => *start,
                };
                start_time(**pid) != Some(start)
            })
            .map(|(p, _)| *p)
            .collect();
        for pid in dead {
            self.forget(pid);
            self.pids.remove(&pid);
        }
        let mut by: HashMap<&'static str, i64> = HashMap::new();
        for t in self.pids.values() {
            match t {
                Tracked::Walked(_) => *by.entry("walked").or_default() += 1,
                Tracked::Rejected { label, .. } => *by.entry(label).or_default() += 1,
                Tracked::NotPython { .. } => {}
            }
        }
        self.metrics.processes.reset();
        for (status, n) in by {
            self.metrics.processes.with_label_values(&[status]).set(n);
        }
    }

    /// Python frames of `records` (youngest first), named; a record whose
    /// code object cannot be read is shown as `[unknown python]`.
    fn frames(&mut self, pid: u32, records: &[PyFrameRecord]) -> Vec<Frame> {
        let Some(Tracked::Walked(w)) = self.pids.get(&pid) else {
            return Vec::new();
        };
        records
            .iter()
            .map(|r| {
                let checksum = (r.flags & PY_FRAME_NO_CHECKSUM == 0).then_some(r.checksum);
                if let Some(f) = checksum.and_then(|k| self.named.get(pid, r.code, r.instr, k)) {
                    return f;
                }
                let code = self.codes.get(
                    &w.mem,
                    &w.interp.offsets,
                    w.interp.code_type,
                    r.code,
                    checksum,
                );
                let frame = |function, file, line| Frame {
                    function,
                    file,
                    line,
                    kind: FrameKind::Python,
                    module: self.module.clone(),
                    addr: r.code,
                    inlined: false,
                };
                match code {
                    Ok(c) if checksum.is_none_or(|k| k == c.checksum) => {
                        let f = frame(
                            Arc::from(c.qualname.as_str()),
                            Some(Arc::from(c.filename.as_str())),
                            c.line(r.instr as i32).unwrap_or(0).max(0) as u32,
                        );
                        if let Some(k) = checksum {
                            self.named.insert(pid, r.code, r.instr, k, f.clone());
                        }
                        f
                    }
                    _ => {
                        self.metrics.error("symbolize");
                        frame(Arc::from("[unknown python]"), None, 0)
                    }
                }
            })
            .collect()
    }

    /// Whether the native frame at `offset` in the file shown as `path`
    /// is in `pid`'s eval loop, when `pid`'s Python frames are walked.
    pub fn in_eval(&self, pid: u32, path: &str, offset: u64) -> bool {
        match self.pids.get(&pid) {
            Some(Tracked::Walked(w)) => w
                .ranges
                .iter()
                .any(|(p, r)| &**p == path && r.contains(&offset)),
            _ => false,
        }
    }

    /// `native` (leaf first) with each eval-loop frame replaced by its
    /// Python frames; Python frames left over (a native stack cut short, or
    /// a walk that saw more eval calls than the native stack) go at the
    /// root and are counted as `merge` errors.
    pub fn splice(
        &mut self,
        pid: u32,
        native: Vec<Frame>,
        records: &[PyFrameRecord],
    ) -> Vec<Frame> {
        let (out, mismatches) = self.splice_counting(pid, native, records);
        self.count_merge(mismatches);
        out
    }

    /// [`PyTracker::splice`] of a native stack symbolized with its
    /// eval-loop frames elided (`Resolver::user_eliding` with
    /// [`PyTracker::in_eval`]), which a non-empty `records` replaces. When
    /// one is left (more eval calls than Python segments), `whole` gives
    /// the stack symbolized in full and the splice is done with it, so the
    /// stack shows the eval loop's real name, as without elision.
    pub fn splice_elided(
        &mut self,
        pid: u32,
        native: Vec<Frame>,
        records: &[PyFrameRecord],
        whole: impl FnOnce() -> Vec<Frame>,
    ) -> Vec<Frame> {
        let (mut out, mut mismatches) = self.splice_counting(pid, native, records);
        if elided_left(&out, mismatches) {
            (out, mismatches) = self.splice_counting(pid, whole(), records);
        }
        self.count_merge(mismatches);
        out
    }

    fn count_merge(&self, mismatches: u64) {
        if mismatches > 0 {
            self.metrics
                .errors
                .with_label_values(&["merge"])
                .inc_by(mismatches);
        }
    }

    fn splice_counting(
        &mut self,
        pid: u32,
        native: Vec<Frame>,
        records: &[PyFrameRecord],
    ) -> (Vec<Frame>, u64) {
        let Some(Tracked::Walked(w)) = self.pids.get(&pid) else {
            return (native, 0);
        };
        let in_eval = |f: &Frame| {
            matches!(f.kind, FrameKind::User | FrameKind::Unknown)
                && w.ranges
                    .iter()
                    .any(|(path, r)| *path == f.module.path && r.contains(&f.addr))
        };
        // No walk (a sample before detection, a thread without Python
        // state, a failed read the kernel counted): the native frames as
        // they are.
        if records.is_empty() {
            return (native, 0);
        }
        let eval: Vec<bool> = native.iter().map(in_eval).collect();
        let python = self.frames(pid, records);
        merge(&native, &eval, &python, records)
    }
}

/// Frames already named, by (pid, code object, instruction) and the
/// checksum the kernel read with the sample: a code object freed and
/// another compiled at its address hashes differently, so it misses here
/// and is read afresh (the code cache validates the same way). A hit costs
/// no read of the target's memory, no line-table decode and no allocation.
struct NamedFrames {
    cap: usize,
    map: HashMap<(u32, u64, u32), (u32, Frame)>,
}

impl NamedFrames {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            map: HashMap::new(),
        }
    }

    fn get(&self, pid: u32, code: u64, instr: u32, checksum: u32) -> Option<Frame> {
        self.map
            .get(&(pid, code, instr))
            .filter(|(k, _)| *k == checksum)
            .map(|(_, f)| f.clone())
    }

    /// Replaces what an earlier occupant of `code` left; when full, starts
    /// over (entries are cheap to name again from the code cache).
    fn insert(&mut self, pid: u32, code: u64, instr: u32, checksum: u32, f: Frame) {
        if self.map.len() >= self.cap {
            self.map.clear();
        }
        self.map.insert((pid, code, instr), (checksum, f));
    }

    fn forget_pid(&mut self, pid: u32) {
        self.map.retain(|k, _| k.0 != pid);
    }
}

/// Whether a splice of an elided native stack left an elided frame in
/// place (only a mismatch does).
fn elided_left(out: &[Frame], mismatches: u64) -> bool {
    mismatches > 0
        && out
            .iter()
            .any(|f| f.kind == FrameKind::User && &*f.function == ELIDED)
}

/// The splice proper: `eval[i]` says whether `native[i]` is in the eval
/// loop; `python[i]` names `records[i]`. Returns the stack and how many
/// mismatches (an eval call without Python frames left, or Python frames
/// left over, put at the root) it met.
fn merge(
    native: &[Frame],
    eval: &[bool],
    python: &[Frame],
    records: &[PyFrameRecord],
) -> (Vec<Frame>, u64) {
    let mut out = Vec::with_capacity(native.len() + python.len());
    let mut mismatches = 0;
    let mut next = 0;
    let mut i = 0;
    while i < native.len() {
        if !eval[i] {
            out.push(native[i].clone());
            i += 1;
            continue;
        }
        // One native frame: the eval loop and what was inlined into it.
        let addr = native[i].addr;
        while i < native.len() && eval[i] && native[i].addr == addr {
            i += 1;
        }
        if next == python.len() {
            mismatches += 1;
            out.push(native[i - 1].clone());
            continue;
        }
        while next < python.len() {
            out.push(python[next].clone());
            next += 1;
            if records[next - 1].flags & PY_FRAME_ENTRY != 0 {
                break;
            }
        }
    }
    if next < python.len() {
        mismatches += 1;
        out.extend_from_slice(&python[next..]);
    }
    (out, mismatches)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::collectors::profile::render::tests::frame;

    fn rec(entry: bool) -> PyFrameRecord {
        PyFrameRecord {
            flags: if entry { PY_FRAME_ENTRY } else { 0 },
            ..Default::default()
        }
    }

    fn names(v: &[Frame]) -> Vec<&str> {
        v.iter().map(|f| &*f.function).collect()
    }

    fn native(spec: &[(&str, u64)]) -> (Vec<Frame>, Vec<bool>) {
        let frames = spec
            .iter()
            .map(|(n, addr)| {
                let mut f = frame(n, FrameKind::User, 0);
                f.addr = *addr;
                f
            })
            .collect();
        (
            frames,
            spec.iter().map(|(n, _)| n.starts_with("eval")).collect(),
        )
    }

    /// Folded/top name a Python frame `qualname (file.py:LINE)` /
    /// `qualname (file.py)`; pprof gives it a function with the file, a
    /// line, and the `[python]` mapping.
    #[test]
    fn outputs_show_python_frames() {
        use crate::collectors::profile::{pprof, render, store::Profile};
        let mut f = frame("Handler.handle", FrameKind::Python, 12);
        f.file = Some(Arc::from("/srv/app/handlers.py"));
        f.module = Arc::new(Module {
            path: "[python]".into(),
            build_id: None,
        });
        let p = Profile {
            samples: vec![crate::collectors::profile::store::Sample {
                pid: 1,
                comm: "python3".into(),
                service: "app".into(),
                stack: vec![f, frame("main", FrameKind::User, 3)].into(),
                count: 2,
                route: None,
            }],
            start: std::time::SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(1),
            period_ns: 1,
        };
        assert_eq!(
            render::folded(&p),
            "python3;main;Handler.handle (handlers.py:12) 2\n"
        );
        assert!(
            render::top(&p)
                .iter()
                .any(|r| r.function == "Handler.handle (handlers.py)" && r.module == "[python]")
        );
        let d = pprof::build(&p);
        let st = &d.string_table;
        let leaf = d.sample[0].location_id[0];
        let loc = d.location.iter().find(|l| l.id == leaf).unwrap();
        let func = d
            .function
            .iter()
            .find(|x| x.id == loc.line[0].function_id)
            .unwrap();
        assert_eq!(st[func.name as usize], "Handler.handle");
        assert_eq!(st[func.filename as usize], "/srv/app/handlers.py");
        assert_eq!(loc.line[0].line, 12);
        let m = d.mapping.iter().find(|m| m.id == loc.mapping_id).unwrap();
        assert_eq!(st[m.filename as usize], "[python]");
    }

    /// A code object freed and another compiled at its address (same
    /// instruction offset) hashes differently: the old name is never
    /// served for it, and the new one replaces it.
    #[test]
    fn named_frames_miss_for_a_reused_code_address() {
        let mut c = NamedFrames::new(8);
        c.insert(1, 0x1000, 7, 0xaaaa, frame("gen_1", FrameKind::Python, 3));
        let hit = c.get(1, 0x1000, 7, 0xaaaa).map(|f| f.function);
        assert_eq!(hit.as_deref(), Some("gen_1"));
        assert!(c.get(1, 0x1000, 7, 0xbbbb).is_none(), "another checksum");
        assert!(c.get(1, 0x1000, 8, 0xaaaa).is_none(), "another instruction");
        assert!(c.get(2, 0x1000, 7, 0xaaaa).is_none(), "another process");
        c.insert(1, 0x1000, 7, 0xbbbb, frame("gen_2", FrameKind::Python, 3));
        assert!(
            c.get(1, 0x1000, 7, 0xaaaa).is_none(),
            "the old occupant is gone"
        );
        let hit = c.get(1, 0x1000, 7, 0xbbbb).map(|f| f.function);
        assert_eq!(hit.as_deref(), Some("gen_2"));
        c.insert(2, 0x1000, 7, 0xaaaa, frame("other", FrameKind::Python, 1));
        c.forget_pid(1);
        assert!(c.get(1, 0x1000, 7, 0xbbbb).is_none());
        assert!(c.get(2, 0x1000, 7, 0xaaaa).is_some());
        // Bounded: full, it starts over.
        for i in 0..8 {
            c.insert(3, i, 0, 1, frame("f", FrameKind::Python, 1));
        }
        assert!(c.map.len() <= 8);
    }

    #[test]
    fn each_eval_call_takes_its_segment_and_c_frames_stay_between() {
        // leaf: a C extension called from `hot`, whose eval call also ran
        // `middle`; `outer` is run by an older eval call under a C frame.
        let (n, eval) = native(&[
            ("cext", 1),
            ("eval", 100),
            ("eval_inlined_helper", 100),
            ("PyObject_Call", 2),
            ("eval", 101),
            ("main", 3),
        ]);
        let py: Vec<Frame> = ["hot", "middle", "outer"]
            .iter()
            .map(|s| frame(s, FrameKind::Python, 1))
            .collect();
        let recs = [rec(false), rec(true), rec(true)];
        let (out, bad) = merge(&n, &eval, &py, &recs);
        assert_eq!(
            names(&out),
            ["cext", "hot", "middle", "PyObject_Call", "outer", "main"]
        );
        assert_eq!(bad, 0);
    }

    /// Eval-loop frames left unsymbolized vanish in a splice that matches;
    /// one left by a mismatch is noticed (the stack is then symbolized in
    /// full).
    #[test]
    fn elided_eval_frames_are_replaced_or_noticed() {
        let (mut n, eval) = native(&[("eval", 100), ("PyObject_Call", 2), ("eval", 101)]);
        for f in n.iter_mut().filter(|f| f.function.starts_with("eval")) {
            f.function = Arc::from(ELIDED);
        }
        let py: Vec<Frame> = ["hot", "outer"]
            .iter()
            .map(|s| frame(s, FrameKind::Python, 1))
            .collect();
        let recs = [rec(true), rec(true)];
        let (out, bad) = merge(&n, &eval, &py, &recs);
        assert_eq!(names(&out), ["hot", "PyObject_Call", "outer"]);
        assert!(!elided_left(&out, bad));
        // One segment for two eval calls: the older eval frame stays.
        let (out, bad) = merge(&n, &eval, &py[..1], &recs[..1]);
        assert_eq!(names(&out), ["hot", "PyObject_Call", ELIDED]);
        assert!(elided_left(&out, bad));
    }

    #[test]
    fn leftover_python_frames_go_to_the_root_and_count() {
        let (n, eval) = native(&[("eval", 100), ("junk", 5)]);
        let py: Vec<Frame> = ["hot", "middle", "outer"]
            .iter()
            .map(|s| frame(s, FrameKind::Python, 1))
            .collect();
        let recs = [rec(true), rec(true), rec(true)];
        let (out, bad) = merge(&n, &eval, &py, &recs);
        assert_eq!(names(&out), ["hot", "junk", "middle", "outer"]);
        assert_eq!(bad, 1);
        // More eval calls than segments: the extra native frame stays.
        let (n, eval) = native(&[("eval", 100), ("eval", 101)]);
        let (out, bad) = merge(&n, &eval, &py[..1], &recs[..1]);
        assert_eq!(names(&out), ["hot", "eval"]);
        assert_eq!(bad, 1);
    }
}
