//! The drain, in two stages on two threads so that slow symbolization (a
//! large binary's DWARF parsed for the first time) never delays the flip
//! that marks a profile's edges:
//! - [`RawDrainer`] flips the kernel's map generation, reads and clears the
//!   idle one, and exports the kernel's counters;
//! - [`Symbolizing`] turns a [`RawBatch`] into samples and appends them to
//!   the window.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuHashMap, StackTraceMap};
use prometheus::{IntCounter, IntCounterVec};
use sonde_common::{
    profile::{PROFILE_GEN_SLOT, ProfileCounter, StackKey},
    python::{PY_STACK_ID_BASE, PyFrameRecord, PyStack},
    unwind::{UNWIND_STACK_ID_BASE, UnwoundStack},
};

use super::{
    by_route::{Attribution, Tag},
    offcpu::{OffCpuMaps, OffCpuStore},
    procmaps::Captured,
    python::{PyTracker, PythonMetrics},
    store::{Batch, Frame, ProfileStore, Sample},
    symbolize::Resolver,
};
use crate::{
    collectors::kit::{comm_str, counters::KernelCounters},
    process_table::ProcessTable,
};

/// Most distinct `service_name` label values on the samples counter; the
/// rest are counted under `other`.
const MAX_SERVICE_LABELS: usize = 1000;

pub struct KernelMaps {
    pub control: Array<MapData, u32>,
    pub counts: [PerCpuHashMap<MapData, StackKey, u64>; 2],
    pub stacks: [StackTraceMap<MapData>; 2],
    pub counters: KernelCounters<ProfileCounter>,
    /// User stacks walked by the DWARF unwinder (ids >= UNWIND_STACK_ID_BASE).
    pub unwound: [BpfHashMap<MapData, u32, UnwoundStack>; 2],
    /// Python stacks walked by the kernel (ids >= PY_STACK_ID_BASE).
    pub python: [BpfHashMap<MapData, u32, PyStack>; 2],
}

#[derive(Clone)]
pub struct DrainMetrics {
    pub samples: IntCounterVec,
    pub errors: IntCounterVec,
    pub kernel_stack_absent: IntCounter,
    pub drains: IntCounter,
    pub python: PythonMetrics,
}

/// What one flip collected: counts per key and the stacks they name.
#[derive(Debug, Default)]
pub struct RawBatch {
    /// When the generation was flipped: the batch covers the time since the
    /// previous flip.
    pub at: Option<SystemTime>,
    pub rows: Vec<(StackKey, u64)>,
    pub traces: HashMap<i32, Vec<u64>>,
    /// Python stacks by `python_stack_id`, youngest frame first.
    pub python: HashMap<i32, Vec<PyFrameRecord>>,
    /// Off-CPU nanoseconds per key whose stacks are in `traces` and
    /// `python`.
    pub offcpu: Vec<(StackKey, u64)>,
    /// Off-CPU rows whose stacks were taken before the previous flip, with
    /// their own stacks (another generation's ids).
    pub offcpu_late: Stacks,
    /// Samples the kernel dropped since the previous drain.
    pub dropped: u64,
}

/// A key's route tag, as the attribution reads it.
fn tag(k: &StackKey) -> Tag {
    Tag {
        tag: k.route_tag,
        src: k.route_src,
    }
}

/// Rows with the stacks they name.
#[derive(Debug, Default)]
pub struct Stacks {
    pub rows: Vec<(StackKey, u64)>,
    pub traces: HashMap<i32, Vec<u64>>,
    pub python: HashMap<i32, Vec<PyFrameRecord>>,
}

impl KernelMaps {
    /// Reads the stacks `keys` name from generation `g` into `traces` and
    /// `python`; returns how many were missing.
    fn read_stacks<'a>(
        &self,
        g: usize,
        keys: impl Iterator<Item = &'a StackKey>,
        traces: &mut HashMap<i32, Vec<u64>>,
        python: &mut HashMap<i32, Vec<PyFrameRecord>>,
    ) -> u64 {
        let mut lost = 0;
        for k in keys {
            let id = k.user_stack_id;
            if id >= UNWIND_STACK_ID_BASE && !traces.contains_key(&id) {
                match self.unwound[g].get(&(id as u32), 0) {
                    Ok(s) => {
                        let n = (s.len as usize).min(s.frames.len());
                        traces.insert(id, s.frames[..n].to_vec());
                    }
                    Err(_) => lost += 1,
                }
            }
            for id in [k.user_stack_id, k.kernel_stack_id] {
                if (0..UNWIND_STACK_ID_BASE).contains(&id) && !traces.contains_key(&id) {
                    match self.stacks[g].get(&(id as u32), 0) {
                        Ok(t) => {
                            traces.insert(id, t.frames().iter().map(|f| f.ip).collect());
                        }
                        Err(_) => lost += 1,
                    }
                }
            }
            let id = k.python_stack_id;
            if id >= PY_STACK_ID_BASE && !python.contains_key(&id) {
                match self.python[g].get(&(id as u32), 0) {
                    Ok(s) => {
                        let n = (s.len as usize).min(s.frames.len());
                        python.insert(id, s.frames[..n].to_vec());
                    }
                    Err(_) => lost += 1,
                }
            }
        }
        lost
    }

    /// Clears generation `g`'s stacks, but for the ids in `keep` (stacks of
    /// threads still parked off CPU), so the generation starts empty.
    fn clear(&mut self, g: usize, keep: &HashSet<i32>) {
        let kept = |id: &u32| keep.contains(&(*id as i32));
        let py = &mut self.python[g];
        let ids: Vec<u32> = py.keys().filter_map(Result::ok).collect();
        for id in ids.iter().filter(|id| !kept(id)) {
            let _ = py.remove(id);
        }
        let stacks = &mut self.stacks[g];
        let ids: Vec<u32> = stacks.stack_ids().filter_map(Result::ok).collect();
        for id in ids.iter().filter(|id| !kept(id)) {
            let _ = stacks.remove(id);
        }
        let unwound = &mut self.unwound[g];
        let ids: Vec<u32> = unwound.keys().filter_map(Result::ok).collect();
        for id in ids.iter().filter(|id| !kept(id)) {
            let _ = unwound.remove(id);
        }
    }
}

pub struct RawDrainer {
    maps: KernelMaps,
    metrics: DrainMetrics,
    generation: u32,
    offcpu: Option<OffCpuMaps>,
}

impl RawDrainer {
    pub fn new(maps: KernelMaps, metrics: DrainMetrics, offcpu: Option<OffCpuMaps>) -> Self {
        Self {
            maps,
            metrics,
            generation: 0,
            offcpu,
        }
    }

    /// The off-CPU program's maps, when it loaded.
    pub fn offcpu_mut(&mut self) -> Option<&mut OffCpuMaps> {
        self.offcpu.as_mut()
    }

    /// Flips, then reads and clears the idle generation. Errors on single
    /// entries are counted, never fatal.
    pub fn drain(&mut self) -> RawBatch {
        let idle = self.generation as usize;
        self.generation ^= 1;
        if let Err(e) = self.maps.control.set(PROFILE_GEN_SLOT, self.generation, 0) {
            // Without the flip we would read a map the kernel is writing;
            // stay on the old generation and try again next time.
            tracing::warn!(collector = super::NAME, "cannot flip map generation: {e}");
            self.generation ^= 1;
            return RawBatch::default();
        }
        let at = SystemTime::now();
        // Samples that read the old generation just before the flip finish
        // within microseconds (perf_event programs run in interrupt context).
        std::thread::sleep(Duration::from_millis(1));
        self.metrics.drains.inc();

        let counts = &mut self.maps.counts[idle];
        let keys: Vec<StackKey> = counts.keys().filter_map(Result::ok).collect();
        let mut rows = Vec::with_capacity(keys.len());
        for k in &keys {
            if let Ok(v) = counts.get(k, 0) {
                let n: u64 = v.iter().sum();
                if n > 0 {
                    rows.push((*k, n));
                }
            }
            let _ = counts.remove(k);
        }

        let active = idle ^ 1;
        let offcpu = self
            .offcpu
            .as_mut()
            .map(|o| o.take(idle, active))
            .unwrap_or_default();
        let mut traces = HashMap::new();
        let mut python = HashMap::new();
        let mut lost = self.maps.read_stacks(
            idle,
            rows.iter().chain(&offcpu.idle).map(|(k, _)| k),
            &mut traces,
            &mut python,
        );
        // Threads parked before the previous flip: their stacks are in the
        // generation now current, kept there by the previous drain.
        let mut late = Stacks {
            rows: offcpu.active,
            ..Stacks::default()
        };
        lost += self.maps.read_stacks(
            active,
            late.rows.iter().map(|(k, _)| k),
            &mut late.traces,
            &mut late.python,
        );
        let keep = self
            .offcpu
            .as_mut()
            .map(|o| o.referenced_ids(idle, active))
            .unwrap_or_default();
        self.maps.clear(idle, &keep);
        if lost > 0 {
            self.metrics
                .errors
                .with_label_values(&["stack_lost"])
                .inc_by(lost);
        }
        if let Some(o) = &mut self.offcpu {
            o.export_counters();
        }
        RawBatch {
            at: Some(at),
            rows,
            traces,
            python,
            offcpu: offcpu.idle,
            offcpu_late: late,
            dropped: self.export_counters(),
        }
    }

    /// Exports the kernel's per-CPU counters as deltas; returns samples
    /// dropped since the last drain.
    fn export_counters(&mut self) -> u64 {
        use ProfileCounter::*;
        const PYTHON: [ProfileCounter; 4] = [
            PythonWalks,
            PythonReadFault,
            PythonTruncated,
            PythonStackLost,
        ];
        let d = self.maps.counters.export(
            &self.metrics.errors,
            &[
                Samples,
                Idle,
                KernelStackAbsent,
                PythonWalks,
                PythonReadFault,
                PythonTruncated,
                PythonStackLost,
            ],
        );
        self.metrics
            .kernel_stack_absent
            .inc_by(d.get(KernelStackAbsent));
        for c in PYTHON {
            let delta = d.get(c);
            if delta > 0 {
                self.metrics.python.kernel(c, delta);
            }
        }
        d.get(CountsFull)
    }
}

/// The second stage: symbolizes raw batches into the window.
pub struct Symbolizing {
    resolver: Resolver,
    store: ProfileStore,
    table: ProcessTable,
    samples: IntCounterVec,
    services: HashSet<Arc<str>>,
    /// Every stack and name the window holds, stored once: each drain
    /// symbolizes the same hot stacks again, and a new copy per drain kept
    /// ~60 copies of each in a 60 s window (about 10 MiB of frames at 99 Hz
    /// on two busy CPUs). Entries the window no longer holds are dropped
    /// after each drain.
    stacks: HashSet<Arc<[Frame]>>,
    strings: HashSet<Arc<str>>,
    /// Python frames for CPython processes (absent when the kernel maps
    /// for them could not be set up).
    python: Option<PyTracker>,
    /// CPU by HTTP route (absent when the HTTP collector is disabled).
    routes: Option<Attribution>,
    /// The off-CPU window, when off-CPU profiling runs.
    offcpu: Option<OffCpuStore>,
}

impl Symbolizing {
    pub fn new(
        resolver: Resolver,
        store: ProfileStore,
        table: ProcessTable,
        samples: IntCounterVec,
    ) -> Self {
        Self {
            resolver,
            store,
            table,
            samples,
            services: HashSet::new(),
            stacks: HashSet::new(),
            strings: HashSet::new(),
            python: None,
            routes: None,
            offcpu: None,
        }
    }

    pub fn with_routes(mut self, a: Attribution) -> Self {
        self.routes = Some(a);
        self
    }

    pub fn with_offcpu(mut self, store: OffCpuStore) -> Self {
        self.offcpu = Some(store);
        self
    }

    pub fn with_python(mut self, tracker: PyTracker) -> Self {
        self.python = Some(tracker);
        self
    }

    /// A process was sampled for the first time (or exec'd); its maps were
    /// captured by the announcing task.
    pub fn seen(&mut self, c: Captured) {
        if let Some(py) = &mut self.python {
            py.announced_with(&c.maps);
        }
        self.resolver.adopt(c);
    }

    pub fn process(&mut self, raw: RawBatch) {
        let Some(at) = raw.at else { return };
        self.resolver.next_drain();
        let mut samples = Vec::with_capacity(raw.rows.len());
        let mut tags = Vec::with_capacity(raw.rows.len());
        let mut services = HashMap::new();
        for (k, n) in &raw.rows {
            samples.push(self.sample(k, *n, &raw.traces, &raw.python, &mut services));
            tags.push(tag(k));
        }
        if let Some(a) = &mut self.routes {
            a.assign(&mut samples, &tags);
        }
        if let Some(store) = self.offcpu.clone() {
            let late = &raw.offcpu_late;
            let mut off = Vec::with_capacity(raw.offcpu.len() + late.rows.len());
            let mut off_tags = Vec::with_capacity(off.capacity());
            for (k, ns) in &raw.offcpu {
                off.push(self.sample(k, *ns, &raw.traces, &raw.python, &mut services));
                off_tags.push(tag(k));
            }
            for (k, ns) in &late.rows {
                off.push(self.sample(k, *ns, &late.traces, &late.python, &mut services));
                off_tags.push(tag(k));
            }
            // Not counted as CPU (their weight is time blocked); they vote
            // one per row, so a handler that only waits gets mapped too.
            if let Some(a) = &mut self.routes {
                a.label(&mut off, &off_tags);
            }
            store.store.push(Batch { at, samples: off });
        }
        // After the batch: a process that exited since the last drain
        // still has its samples of this batch spliced.
        if let Some(py) = &mut self.python {
            py.sweep();
        }
        for s in &samples {
            let label = if self.services.contains(&s.service) {
                &*s.service
            } else if self.services.len() < MAX_SERVICE_LABELS {
                self.services.insert(s.service.clone());
                &*s.service
            } else {
                "other"
            };
            self.samples.with_label_values(&[label]).inc_by(s.count);
        }
        self.store.push(Batch { at, samples });
        // Held only here: no batch in the window uses it any more.
        self.stacks.retain(|s| Arc::strong_count(s) > 1);
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.resolver.release();
    }

    fn sample(
        &mut self,
        k: &StackKey,
        count: u64,
        traces: &HashMap<i32, Vec<u64>>,
        python: &HashMap<i32, Vec<PyFrameRecord>>,
        services: &mut HashMap<u32, String>,
    ) -> Sample {
        let pid = k.tgid;
        self.resolver.see(pid);
        let mut stack = Vec::new();
        if let Some(ips) = traces.get(&k.kernel_stack_id) {
            // The off-CPU program's kernel stacks start in the program
            // itself and the tracepoint's trampoline: not the program's.
            let frames = self.resolver.kernel(ips);
            let ours = frames
                .iter()
                .take_while(|f| {
                    f.function.starts_with("bpf_prog_") || f.function.starts_with("bpf_trace_run")
                })
                .count();
            stack.extend(frames.into_iter().skip(ours));
        }
        let ips = traces.get(&k.user_stack_id).map(Vec::as_slice);
        let user = match &mut self.python {
            Some(py) => {
                py.sampled(pid);
                let records = python
                    .get(&k.python_stack_id)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                match ips {
                    // The eval loop's frames give way to the Python ones:
                    // not worth symbolizing.
                    Some(ips) if !records.is_empty() && py.interpreter(pid).is_some() => {
                        let native = self
                            .resolver
                            .user_eliding(pid, ips, &|path, offset| py.in_eval(pid, path, offset));
                        py.splice_elided(pid, native, records, || self.resolver.user(pid, ips))
                    }
                    _ => {
                        let native = ips
                            .map(|ips| self.resolver.user(pid, ips))
                            .unwrap_or_default();
                        py.splice(pid, native, records)
                    }
                }
            }
            None => ips
                .map(|ips| self.resolver.user(pid, ips))
                .unwrap_or_default(),
        };
        stack.extend(user);
        let comm = comm_str(&k.comm);
        // Once per process and drain: a lookup clones the whole entry.
        let service = services
            .entry(pid)
            .or_insert_with(|| {
                self.table
                    .get(pid)
                    .map(|p| p.service)
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| comm.clone())
            })
            .clone();
        Sample {
            pid,
            comm: intern(&mut self.strings, comm),
            service: intern(&mut self.strings, service),
            stack: intern_stack(&mut self.stacks, stack),
            count,
            route: None,
        }
    }
}

fn intern(set: &mut HashSet<Arc<str>>, s: String) -> Arc<str> {
    if let Some(a) = set.get(s.as_str()) {
        return a.clone();
    }
    let a: Arc<str> = s.into();
    set.insert(a.clone());
    a
}

fn intern_stack(set: &mut HashSet<Arc<[Frame]>>, stack: Vec<Frame>) -> Arc<[Frame]> {
    if let Some(a) = set.get(stack.as_slice()) {
        return a.clone();
    }
    let a: Arc<[Frame]> = stack.into();
    set.insert(a.clone());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::profile::{render::tests::frame, store::FrameKind};

    #[test]
    fn equal_stacks_and_names_share_one_copy_until_unused() {
        let mut stacks = HashSet::new();
        let stack = || {
            vec![
                frame("c", FrameKind::User, 3),
                frame("b", FrameKind::User, 2),
            ]
        };
        let a = intern_stack(&mut stacks, stack());
        let b = intern_stack(&mut stacks, stack());
        assert!(Arc::ptr_eq(&a, &b));
        let other = intern_stack(&mut stacks, vec![frame("d", FrameKind::User, 4)]);
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(stacks.len(), 2);
        // The window dropped every batch holding `other`.
        drop(other);
        stacks.retain(|s| Arc::strong_count(s) > 1);
        assert_eq!(stacks.len(), 1);

        let mut strings = HashSet::new();
        let x = intern(&mut strings, "nginx".to_owned());
        let y = intern(&mut strings, "nginx".to_owned());
        assert!(Arc::ptr_eq(&x, &y));
    }
}
