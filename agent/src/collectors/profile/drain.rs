//! The drain: flip the kernel's map generation, read and clear the idle one,
//! symbolize, and append a batch to the window.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

use aya::maps::{Array, MapData, PerCpuArray, PerCpuHashMap, StackTraceMap};
use prometheus::{IntCounter, IntCounterVec};
use sonde_common::profile::{PROFILE_GEN_SLOT, ProfileCounter, StackKey};

use super::{
    store::{Batch, ProfileStore, Sample},
    symbolize::Resolver,
};
use crate::process_table::ProcessTable;

/// Most distinct `service_name` label values on the samples counter; the
/// rest are counted under `other`.
const MAX_SERVICE_LABELS: usize = 1000;

pub struct KernelMaps {
    pub control: Array<MapData, u32>,
    pub counts: [PerCpuHashMap<MapData, StackKey, u64>; 2],
    pub stacks: [StackTraceMap<MapData>; 2],
    pub counters: PerCpuArray<MapData, u64>,
}

#[derive(Clone)]
pub struct DrainMetrics {
    pub samples: IntCounterVec,
    pub errors: IntCounterVec,
    pub kernel_stack_absent: IntCounter,
    pub drains: IntCounter,
}

pub struct DrainState {
    pub maps: KernelMaps,
    pub resolver: Resolver,
    pub store: ProfileStore,
    pub table: ProcessTable,
    pub metrics: DrainMetrics,
    generation: u32,
    last_counters: [u64; sonde_common::profile::PROFILE_COUNTERS as usize],
    services: HashSet<Arc<str>>,
}

/// What a drain found, for health.
#[derive(Debug, Default, Clone, Copy)]
pub struct DrainReport {
    pub samples: u64,
    pub dropped: u64,
}

impl DrainState {
    pub fn new(
        maps: KernelMaps,
        resolver: Resolver,
        store: ProfileStore,
        table: ProcessTable,
        metrics: DrainMetrics,
    ) -> Self {
        Self {
            maps,
            resolver,
            store,
            table,
            metrics,
            generation: 0,
            last_counters: Default::default(),
            services: HashSet::new(),
        }
    }

    /// One drain. Errors on individual entries are counted, never fatal.
    pub fn drain(&mut self) -> DrainReport {
        let idle = self.generation as usize;
        self.generation ^= 1;
        if let Err(e) = self.maps.control.set(PROFILE_GEN_SLOT, self.generation, 0) {
            // Without the flip we would read a map the kernel is writing;
            // stay on the old generation and try again next time.
            tracing::warn!(collector = super::NAME, "cannot flip map generation: {e}");
            self.generation ^= 1;
            return DrainReport::default();
        }
        let at = SystemTime::now();
        // Samples that read the old generation just before the flip finish
        // within microseconds (perf_event programs run in interrupt context).
        std::thread::sleep(Duration::from_millis(1));
        self.metrics.drains.inc();
        self.resolver.next_drain();

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

        let stacks = &mut self.maps.stacks[idle];
        let mut traces: HashMap<i32, Vec<u64>> = HashMap::new();
        let mut lost = 0u64;
        for (k, _) in &rows {
            for id in [k.user_stack_id, k.kernel_stack_id] {
                if id >= 0 && !traces.contains_key(&id) {
                    match stacks.get(&(id as u32), 0) {
                        Ok(t) => {
                            traces.insert(id, t.frames().iter().map(|f| f.ip).collect());
                        }
                        Err(_) => lost += 1,
                    }
                }
            }
        }
        // Clear every id, referenced or not, so the generation starts empty.
        let ids: Vec<u32> = stacks.stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            let _ = stacks.remove(&id);
        }
        if lost > 0 {
            self.metrics
                .errors
                .with_label_values(&["stack_lost"])
                .inc_by(lost);
        }

        let mut samples = Vec::with_capacity(rows.len());
        let mut total = 0u64;
        for (k, n) in rows {
            samples.push(self.sample(&k, n, &traces));
            total += n;
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
            self.metrics
                .samples
                .with_label_values(&[label])
                .inc_by(s.count);
        }
        self.store.push(Batch { at, samples });
        let dropped = self.export_counters();
        DrainReport {
            samples: total,
            dropped,
        }
    }

    /// A process was sampled for the first time: capture its maps now.
    pub fn seen(&mut self, pid: u32) {
        self.resolver.see(pid);
    }

    fn sample(&mut self, k: &StackKey, count: u64, traces: &HashMap<i32, Vec<u64>>) -> Sample {
        let pid = k.tgid;
        self.resolver.see(pid);
        let mut stack = Vec::new();
        if let Some(ips) = traces.get(&k.kernel_stack_id) {
            stack.extend(self.resolver.kernel(ips));
        }
        if let Some(ips) = traces.get(&k.user_stack_id) {
            stack.extend(self.resolver.user(pid, ips));
        }
        let comm = comm_str(&k.comm);
        let service: Arc<str> = self
            .table
            .get(pid)
            .map(|p| p.service)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| comm.clone())
            .into();
        Sample {
            pid,
            comm: comm.into(),
            service,
            stack: stack.into(),
            count,
        }
    }

    /// Exports the kernel's per-CPU counters as deltas; returns samples
    /// dropped since the last drain.
    fn export_counters(&mut self) -> u64 {
        let mut dropped = 0;
        for c in ProfileCounter::ALL {
            let idx = c as u32;
            let now: u64 = self
                .maps
                .counters
                .get(&idx, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            let delta = now.saturating_sub(self.last_counters[idx as usize]);
            self.last_counters[idx as usize] = now;
            if delta == 0 {
                continue;
            }
            let reason = match c {
                ProfileCounter::Samples | ProfileCounter::Idle => continue,
                ProfileCounter::KernelStackAbsent => {
                    self.metrics.kernel_stack_absent.inc_by(delta);
                    continue;
                }
                ProfileCounter::UserStackMissing => "user_stack_missing",
                ProfileCounter::StackCollision => "stack_collision",
                ProfileCounter::StackMapFull => "stack_map_full",
                ProfileCounter::CountsFull => {
                    dropped += delta;
                    "counts_map_full"
                }
                ProfileCounter::NewPidDropped => "new_pid_dropped",
            };
            self.metrics
                .errors
                .with_label_values(&[reason])
                .inc_by(delta);
        }
        dropped
    }
}

fn comm_str(c: &[u8]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}
