//! Tier-1 memory growth by stack, cumulative since the agent started (or
//! since the process did, if later): what `sonde memory` and
//! `GET /api/v1/memory` read. Bounded: rows of exited processes go at the
//! next drain, but for the few that grew most.
//! Each distinct stack is stored once, whichever processes' rows hold it:
//! short-lived processes of one binary repeat the same few stacks (the
//! loader's mmaps, the first faults), and a copy per row made the store
//! the agent's largest heap user under process churn.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, SystemTime},
};

pub use sonde_wire::memory::Group;
use tokio::sync::oneshot;

use crate::collectors::profile::store::{Filter, Frame, Profile, Sample};

#[derive(Debug, Clone, Default)]
struct Row {
    bytes: u64,
    events: u64,
}

#[derive(Debug, Clone)]
struct ProcInfo {
    comm: Arc<str>,
    service: Arc<str>,
    alive: bool,
}

type Key = (u32, Group, Arc<[Frame]>);

/// Exited processes whose rows outlive them (the largest growers). Under
/// process churn (40 short-lived processes a second in the footprint
/// benchmark, ~10 rows each: the loader's mmaps and first faults) keeping
/// every exited process until the store was three quarters full grew the
/// agent's heap by ~4.5 MiB a minute for its first minutes.
const EXITED_KEPT: usize = 64;

struct Inner {
    rows: HashMap<Key, Row>,
    /// Every stack a row holds, once; dropped with its last row.
    stacks: HashSet<Arc<[Frame]>>,
    procs: HashMap<u32, ProcInfo>,
    started: SystemTime,
    dropped: u64,
}

/// One drained row, symbolized.
pub struct Update {
    pub pid: u32,
    pub comm: Arc<str>,
    pub service: Arc<str>,
    pub group: Group,
    pub stack: Arc<[Frame]>,
    pub bytes: u64,
    pub events: u64,
}

/// Shared handle. Cheap to clone.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    max_rows: usize,
    flusher: Arc<Mutex<Option<mpsc::Sender<oneshot::Sender<()>>>>>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the memory collector is not running (disabled, or it failed to start: see `sonde status`)"
)]
pub struct NotRunning;

impl MemoryStore {
    pub fn new(max_rows: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                rows: HashMap::new(),
                stacks: HashSet::new(),
                procs: HashMap::new(),
                started: SystemTime::now(),
                dropped: 0,
            })),
            max_rows,
            flusher: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_flusher(&self, f: Option<mpsc::Sender<oneshot::Sender<()>>>) {
        *self.flusher.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    /// Asks the drain thread for a drain now and waits until it is in.
    pub async fn flush(&self) -> Result<(), NotRunning> {
        let (tx, rx) = oneshot::channel();
        {
            let f = self.flusher.lock().unwrap_or_else(|e| e.into_inner());
            let f = f.as_ref().ok_or(NotRunning)?;
            f.send(tx).map_err(|_| NotRunning)?;
        }
        rx.await.map_err(|_| NotRunning)
    }

    /// Adds a drain's rows; returns rows dropped for lack of room.
    pub fn add(&self, updates: Vec<Update>) -> u64 {
        let mut g = self.lock();
        let mut dropped = 0;
        for u in updates {
            g.procs.insert(
                u.pid,
                ProcInfo {
                    comm: u.comm,
                    service: u.service,
                    alive: true,
                },
            );
            let stack = match g.stacks.get(&u.stack) {
                Some(s) => s.clone(),
                None => u.stack,
            };
            let key = (u.pid, u.group, stack);
            if let Some(r) = g.rows.get_mut(&key) {
                r.bytes += u.bytes;
                r.events += u.events;
                continue;
            }
            if g.rows.len() >= self.max_rows {
                dropped += 1;
                continue;
            }
            g.stacks.insert(key.2.clone());
            let r = g.rows.entry(key).or_default();
            r.bytes += u.bytes;
            r.events += u.events;
        }
        g.dropped += dropped;
        dropped
    }

    /// Forgets exited processes (those `alive` says are gone), once per
    /// drain. The [`EXITED_KEPT`] that grew most stay, so the stacks of a
    /// service that was OOM-killed or crashed can still be asked for;
    /// past three quarters full, every exited process goes.
    pub fn prune(&self, alive: impl Fn(u32) -> bool) {
        let mut g = self.lock();
        let full = g.rows.len() * 4 >= self.max_rows * 3;
        let mut gone: HashMap<u32, u64> = HashMap::new();
        for (pid, p) in g.procs.iter_mut() {
            p.alive = alive(*pid);
            if !p.alive {
                gone.insert(*pid, 0);
            }
        }
        let keep = if full { 0 } else { EXITED_KEPT };
        if gone.len() <= keep {
            return;
        }
        for ((pid, _, _), r) in &g.rows {
            if let Some(b) = gone.get_mut(pid) {
                *b += r.bytes;
            }
        }
        let mut by_size: Vec<(u64, u32)> = gone.into_iter().map(|(p, b)| (b, p)).collect();
        by_size.sort_unstable_by(|a, b| b.cmp(a));
        let drop: HashSet<u32> = by_size[keep..].iter().map(|(_, p)| *p).collect();
        g.rows.retain(|(pid, _, _), _| !drop.contains(pid));
        g.procs.retain(|pid, _| !drop.contains(pid));
        g.stacks.retain(|s| Arc::strong_count(s) > 1);
    }

    /// Distinct stacks held (each stored once).
    #[cfg(test)]
    fn stacks(&self) -> usize {
        self.lock().stacks.len()
    }

    pub fn has_pid(&self, pid: u32) -> bool {
        self.lock().procs.contains_key(&pid)
    }

    /// Rows of `group` matching `filter`, as a profile weighted by bytes,
    /// and the events behind each sample (same order).
    pub fn profile(&self, group: Group, filter: &Filter) -> (Profile, Vec<u64>) {
        let g = self.lock();
        let mut samples = Vec::new();
        let mut events = Vec::new();
        for ((pid, grp, stack), r) in &g.rows {
            if *grp != group {
                continue;
            }
            let Some(p) = g.procs.get(pid) else { continue };
            let s = Sample {
                pid: *pid,
                comm: p.comm.clone(),
                service: p.service.clone(),
                stack: stack.clone(),
                count: r.bytes,
                route: None,
            };
            if filter.matches(&s) {
                samples.push(s);
                events.push(r.events);
            }
        }
        let duration = SystemTime::now()
            .duration_since(g.started)
            .unwrap_or(Duration::ZERO);
        (
            Profile {
                samples,
                start: g.started,
                duration,
                period_ns: 1,
            },
            events,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(pid: u32, group: Group, bytes: u64) -> Update {
        Update {
            pid,
            comm: "c".into(),
            service: "svc".into(),
            group,
            stack: Arc::from([]),
            bytes,
            events: 1,
        }
    }

    #[test]
    fn accumulates_and_bounds() {
        let s = MemoryStore::new(2);
        assert_eq!(
            s.add(vec![up(1, Group::Rss, 4096), up(1, Group::Rss, 4096)]),
            0
        );
        assert_eq!(s.add(vec![up(2, Group::Mapped, 10)]), 0);
        // Full: a third distinct row is dropped, existing rows still grow.
        assert_eq!(s.add(vec![up(3, Group::Rss, 1), up(1, Group::Rss, 1)]), 1);
        let (p, ev) = s.profile(Group::Rss, &Filter::default());
        assert_eq!(p.total(), 8193);
        assert_eq!(ev, vec![3]);
        // Full: every exited process is forgotten.
        s.prune(|pid| pid != 1);
        assert!(!s.has_pid(1));
        assert!(s.has_pid(2));
    }

    #[test]
    fn equal_stacks_of_many_processes_are_stored_once() {
        let frame = |f: &str| Frame {
            function: f.into(),
            file: None,
            line: 0,
            kind: crate::collectors::profile::store::FrameKind::User,
            module: Arc::new(crate::collectors::profile::store::Module {
                path: "/usr/bin/true".into(),
                build_id: None,
            }),
            addr: 0x10,
            inlined: false,
        };
        let with = |pid: u32, f: &str| Update {
            stack: Arc::from([frame(f), frame("main")]),
            ..up(pid, Group::Mapped, 4096)
        };
        let s = MemoryStore::new(24);
        // A fresh copy of the same stack from each short-lived process.
        s.add((1..=20).map(|pid| with(pid, "mmap")).collect());
        s.add(vec![with(1, "brk")]);
        assert_eq!(s.stacks(), 2, "one copy per distinct stack");
        let (p, _) = s.profile(Group::Mapped, &Filter::default());
        assert_eq!(p.samples.len(), 21);
        let mmap: Vec<&Sample> = p
            .samples
            .iter()
            .filter(|x| &*x.stack[0].function == "mmap")
            .collect();
        assert_eq!(mmap.len(), 20);
        assert!(mmap.iter().all(|x| Arc::ptr_eq(&x.stack, &mmap[0].stack)));
        drop(mmap);
        drop(p);
        // Past three quarters full, exited processes go; a stack stays
        // while a row of a live process holds it.
        let again = MemoryStore::new(24);
        again.add((1..=20).map(|pid| with(pid, "mmap")).collect());
        again.prune(|pid| pid == 1);
        assert_eq!(again.stacks(), 1);
        s.prune(|_| false);
        assert_eq!(s.stacks(), 0, "stacks go with their last row");
    }

    #[test]
    fn exited_processes_go_at_the_next_drain_but_the_largest_growers() {
        let s = MemoryStore::new(100_000);
        let n = EXITED_KEPT as u32 + 40;
        // pid p grew p pages; pid 1_000_000 is alive.
        s.add(
            (1..=n)
                .map(|p| up(p, Group::Rss, 4096 * p as u64))
                .collect(),
        );
        s.add(vec![up(1_000_000, Group::Rss, 4096)]);
        s.prune(|pid| pid == 1_000_000);
        assert!(s.has_pid(1_000_000), "a live process stays");
        let kept: Vec<u32> = (1..=n).filter(|p| s.has_pid(*p)).collect();
        assert_eq!(
            kept,
            (41..=n).collect::<Vec<_>>(),
            "the largest exited stay"
        );
        // The kept rows still answer.
        let (p, _) = s.profile(Group::Rss, &Filter::default());
        assert_eq!(p.samples.len(), EXITED_KEPT + 1);
    }
}
