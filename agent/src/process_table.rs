//! The table of live processes that names everything else.
//!
//! Fed by the process collector's exec/exit events and seeded from /proc at
//! start-up. Lookups that miss fall back to /proc, so other collectors can
//! name processes even when the process collector could not attach. Bounded:
//! beyond `max` entries the oldest are evicted in batches (and counted).

use std::{
    collections::HashMap,
    fs,
    path::Path,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus::{IntCounter, IntGauge};
pub use sonde_wire::processes::ProcessInfo;

use crate::{
    identity::{IdentityCache, K8sIdentity, cgroup},
    telemetry::Telemetry,
};

/// A /proc file as text, invalid UTF-8 replaced. Any process chooses its
/// comm (/proc/PID/stat), the paths it maps (/proc/PID/maps) and, with the
/// rights to create one, its cgroup's name: none of them need be UTF-8,
/// and a strict read would lose the whole file, not just those bytes.
pub fn read_lossy(path: impl AsRef<Path>) -> Option<String> {
    let bytes = fs::read(path).ok()?;
    Some(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Reads what /proc knows of `pid`; `None` if it is gone.
pub fn read_proc(pid: u32) -> Option<ProcessInfo> {
    let base = Path::new("/proc").join(pid.to_string());
    let stat = read_lossy(base.join("stat"))?;
    let (comm, ppid, start_ticks) = parse_stat(&stat)?;
    let exe = fs::read_link(base.join("exe"))
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned()
        })
        .unwrap_or_default();
    let cgroup_text = read_lossy(base.join("cgroup")).unwrap_or_default();
    let cgroup = cgroup_text
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .unwrap_or_default();
    let container_id = cgroup::container_of(&cgroup_text)
        .map(|c| c.id)
        .unwrap_or_default();
    let service = service_name(&exe, &comm);
    Some(ProcessInfo {
        pid,
        ppid,
        comm,
        exe,
        cgroup,
        start_time: boot_time() + start_ticks / clock_ticks(),
        service,
        container_id,
        k8s: None,
        exited: false,
    })
}

/// Attaches `k8s` to `info` and renames the service after it. Returns
/// whether anything changed.
fn set_k8s(info: &mut ProcessInfo, k8s: Option<K8sIdentity>) -> bool {
    let Some(k) = k8s else {
        return false;
    };
    if info.k8s.as_ref() == Some(&k) {
        return false;
    }
    info.service = k.service().to_owned();
    info.k8s = Some(k);
    true
}

/// Default service identity outside containers: the executable's file name,
/// or the comm for kernel threads and unreadable executables.
pub fn service_name(exe: &str, comm: &str) -> String {
    Path::new(exe)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| comm.to_owned())
}

/// Parses comm, ppid and starttime out of /proc/PID/stat. The comm is in
/// parentheses and may itself contain spaces and parentheses, so split at
/// the last ')'. Any process chooses its comm, so this is untrusted text
/// (fuzzed: tests/fuzz).
pub fn parse_stat(stat: &str) -> Option<(String, u32, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, starttime field 22.
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((comm, ppid, start))
}

fn boot_time() -> u64 {
    fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v > 0)
        .unwrap_or(100)
}

struct Entry {
    info: ProcessInfo,
    /// Insertion order, for oldest-first eviction.
    seq: u64,
    exited_at: Option<Instant>,
}

struct Inner {
    map: HashMap<u32, Entry>,
    next_seq: u64,
    /// Entries not yet exited, kept in step with `map` so the gauge costs
    /// O(1) per event: a fork storm fills the table with exited entries,
    /// and counting them on every event made the event consumer fall behind.
    live: usize,
}

/// How far the process collector's event consumer has got, so a collector
/// meeting an unknown pid can tell "exec event not applied yet" from
/// "never coming".
#[derive(Default)]
struct EventProgress {
    /// Set when the consumer wakes with events to apply, cleared once the
    /// ring buffer is empty.
    busy: AtomicBool,
    /// When the consumer last emptied the ring buffer.
    drained_at: Mutex<Option<Instant>>,
    /// Requests to the consumer to apply what its ring buffer holds now
    /// (see [`ProcessTable::catch_up`]); set once a consumer serves them.
    catch_up: Mutex<Option<tokio::sync::mpsc::Sender<CatchUp>>>,
}

/// A request, handed to the event consumer, to apply every event already
/// in its ring buffer and then call [`CatchUp::done`].
pub struct CatchUp(std::sync::mpsc::SyncSender<()>);

impl CatchUp {
    /// Everything that was in the ring buffer when the request arrived has
    /// been applied.
    pub fn done(self) {
        let _ = self.0.send(());
    }
}

#[derive(Clone)]
struct Metrics {
    tracked: IntGauge,
    execs: IntCounter,
    exits: IntCounter,
    evictions: IntCounter,
}

/// Shared, bounded process table. Cheap to clone.
#[derive(Clone)]
pub struct ProcessTable {
    inner: Arc<RwLock<Inner>>,
    max: usize,
    grace: Duration,
    metrics: Metrics,
    identity: IdentityCache,
    events: Arc<EventProgress>,
}

impl ProcessTable {
    pub fn new(max: usize, grace: Duration, telemetry: &Telemetry) -> Self {
        let counter = |name: &str, help: &str| {
            telemetry.register(IntCounter::new(name, help).expect("valid metric"))
        };
        Self {
            inner: Arc::new(RwLock::new(Inner {
                map: HashMap::new(),
                next_seq: 0,
                live: 0,
            })),
            max: max.max(1),
            grace,
            identity: IdentityCache::default(),
            events: Arc::default(),
            metrics: Metrics {
                tracked: telemetry.gauge(
                    "sonde_processes_tracked",
                    "Live processes in the agent's process table.",
                ),
                execs: counter(
                    "sonde_process_execs_total",
                    "exec() calls seen by the process collector.",
                ),
                exits: counter(
                    "sonde_process_exits_total",
                    "Process exits seen by the process collector.",
                ),
                evictions: counter(
                    "sonde_process_table_evictions_total",
                    "Entries evicted because the process table was full (collectors.process.max_processes).",
                ),
            },
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds every process currently in /proc.
    pub fn seed_from_proc(&self) -> usize {
        let Ok(dir) = fs::read_dir("/proc") else {
            return 0;
        };
        let mut n = 0;
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some(info) = read_proc(pid)
            {
                self.insert(info);
                n += 1;
            }
        }
        n
    }

    /// Records an exec: the pid keeps its number but gets a new image.
    pub fn on_exec(&self, pid: u32, comm: &str) {
        self.metrics.execs.inc();
        let info = read_proc(pid).unwrap_or_else(|| ProcessInfo {
            // Gone already (a very short-lived process): keep what the kernel told us.
            pid,
            ppid: 0,
            comm: comm.to_owned(),
            exe: String::new(),
            cgroup: String::new(),
            start_time: 0,
            service: comm.to_owned(),
            container_id: String::new(),
            k8s: None,
            exited: false,
        });
        self.insert(info);
    }

    pub fn on_exit(&self, pid: u32) {
        self.metrics.exits.inc();
        let mut guard = self.write();
        let inner = &mut *guard;
        if let Some(e) = inner.map.get_mut(&pid)
            && e.exited_at.is_none()
        {
            e.exited_at = Some(Instant::now());
            e.info.exited = true;
            inner.live -= 1;
        }
        self.metrics.tracked.set(inner.live as i64);
    }

    /// The event consumer woke with events to apply.
    pub fn events_arriving(&self) {
        self.events.busy.store(true, Ordering::Release);
    }

    /// The event consumer emptied its ring buffer.
    pub fn events_drained(&self) {
        *self
            .events
            .drained_at
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.events.busy.store(false, Ordering::Release);
    }

    /// Makes the caller the event consumer's: returns the requests of
    /// [`Self::catch_up`] for it to serve.
    pub fn serve_catch_up(&self) -> tokio::sync::mpsc::Receiver<CatchUp> {
        // A few requests in flight at most: one per draining collector.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        *self
            .events
            .catch_up
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    /// Blocks (for at most `timeout`) until the event consumer has applied
    /// every exec/exit event submitted before this call. A collector that
    /// has just read its kernel maps calls this before naming processes:
    /// an exec is submitted before the execve returns, so every count it
    /// read belongs to a process whose exec is now in the table, never to
    /// the name it had before. (Watching the consumer's progress alone
    /// cannot tell an event not yet woken for from no event at all.)
    ///
    /// True when caught up or when no consumer runs (nothing to wait for);
    /// false on timeout. Not for async tasks: it blocks the thread.
    pub fn catch_up(&self, timeout: Duration) -> bool {
        let tx = self
            .events
            .catch_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(tx) = tx else {
            return true;
        };
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        match tx.try_send(CatchUp(done_tx)) {
            Ok(()) => done_rx.recv_timeout(timeout).is_ok(),
            // The consumer stopped: no events will be applied by waiting.
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => false,
        }
    }

    /// Whether every exec/exit event emitted before `t` has been applied:
    /// the consumer is idle, or emptied the ring buffer after `t`. True when
    /// no process collector runs (nothing to wait for). An idle consumer
    /// with a wake-up still in flight reads as caught up, so callers keep a
    /// short minimum wait of their own.
    pub fn events_applied_since(&self, t: Instant) -> bool {
        !self.events.busy.load(Ordering::Acquire)
            || self
                .events
                .drained_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|d| d >= t)
    }

    /// Container id -> Kubernetes identity, filled by `identity::spawn`.
    pub fn identity(&self) -> &IdentityCache {
        &self.identity
    }

    /// Re-labels every entry whose container the identity cache now names.
    /// Called by the refresh task after each pod-list refresh, off the hot path.
    pub fn apply_identity(&self) {
        if self.identity.is_empty() {
            return;
        }
        let mut inner = self.write();
        for e in inner.map.values_mut() {
            if !e.info.container_id.is_empty() {
                let k = self.identity.lookup(&e.info.container_id);
                set_k8s(&mut e.info, k);
            }
        }
    }

    fn insert(&self, info: ProcessInfo) {
        self.insert_with(info, true);
    }

    /// Adds `info`, replacing an entry of the same pid only if `replace`;
    /// returns the entry the table holds afterwards.
    fn insert_with(&self, mut info: ProcessInfo, replace: bool) -> ProcessInfo {
        if info.k8s.is_none() {
            let k = self.identity.lookup(&info.container_id);
            set_k8s(&mut info, k);
        }
        let mut guard = self.write();
        let inner = &mut *guard;
        if !replace && let Some(e) = inner.map.get(&info.pid) {
            return e.info.clone();
        }
        if inner.map.len() >= self.max && !inner.map.contains_key(&info.pid) {
            self.evict(inner);
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let old = inner.map.insert(
            info.pid,
            Entry {
                info: info.clone(),
                seq,
                exited_at: None,
            },
        );
        if old.is_none_or(|o| o.exited_at.is_some()) {
            inner.live += 1;
        }
        self.metrics.tracked.set(inner.live as i64);
        info
    }

    /// Frees 1/16 of the table (at least one entry): exited entries first,
    /// then the oldest. Batching keeps the cost amortized under a fork storm.
    fn evict(&self, inner: &mut Inner) {
        let want = (self.max / 16).max(1);
        let mut victims: Vec<(bool, u64, u32)> = inner
            .map
            .iter()
            .map(|(pid, e)| (e.exited_at.is_none(), e.seq, *pid))
            .collect();
        victims.sort_unstable();
        for (live, _, pid) in victims.into_iter().take(want) {
            inner.map.remove(&pid);
            inner.live -= usize::from(live);
            self.metrics.evictions.inc();
        }
    }

    /// Drops exited processes whose grace period is over (live entries, and
    /// so the live count, are untouched).
    pub fn gc(&self) {
        let grace = self.grace;
        self.write()
            .map
            .retain(|_, e| e.exited_at.is_none_or(|t| t.elapsed() < grace));
    }

    /// The process, from the table or else from /proc (then remembered).
    pub fn get(&self, pid: u32) -> Option<ProcessInfo> {
        if let Some(e) = self.read().map.get(&pid) {
            return Some(e.info.clone());
        }
        let info = read_proc(pid)?;
        // An exec event applied while /proc was read is newer than what we
        // read (which may predate the exec): it wins.
        Some(self.insert_with(info, false))
    }

    /// Every entry, live and recently exited, sorted by pid.
    pub fn list(&self) -> Vec<ProcessInfo> {
        let mut v: Vec<ProcessInfo> = self.read().map.values().map(|e| e.info.clone()).collect();
        v.sort_by_key(|p| p.pid);
        v
    }

    pub fn len(&self) -> usize {
        self.read().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize, grace: Duration) -> ProcessTable {
        ProcessTable::new(max, grace, &Telemetry::new())
    }

    fn fake(pid: u32) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid: 1,
            comm: format!("p{pid}"),
            exe: format!("/bin/p{pid}"),
            cgroup: "/".into(),
            start_time: 0,
            service: format!("p{pid}"),
            container_id: String::new(),
            k8s: None,
            exited: false,
        }
    }

    #[test]
    fn container_processes_take_their_service_name_from_the_pod() {
        let t = table(16, Duration::from_secs(60));
        let id = "0f3c9a5e1b7d4c2a8e6f0b1d3c5a7e9f2b4d6c8a0e1f3b5d7c9a2e4f6b8d0c1a";
        let mut p = fake(7);
        p.container_id = id.into();
        t.insert(p);
        t.insert(fake(8));
        assert_eq!(t.get(7).unwrap().service, "p7");
        let k = K8sIdentity {
            namespace: "shop".into(),
            pod: "checkout-1".into(),
            pod_uid: "u".into(),
            container: "app".into(),
            app: None,
        };
        t.identity()
            .update([(id.to_owned(), k.clone())].into(), Duration::from_secs(60));
        t.apply_identity();
        let p = t.get(7).unwrap();
        assert_eq!(p.service, "app");
        assert_eq!(p.k8s.as_ref(), Some(&k));
        // Host processes keep the executable name.
        assert_eq!(t.get(8).unwrap().service, "p8");
        // A process exec'd later in the same container is named on insert.
        let mut q = fake(9);
        q.container_id = id.into();
        t.insert(q);
        assert_eq!(t.get(9).unwrap().service, "app");
    }

    #[test]
    fn a_comm_that_is_not_utf8_does_not_lose_the_process() {
        let p = std::env::temp_dir().join(format!("sonde-stat-{}", std::process::id()));
        fs::write(
            &p,
            b"7 (a\xff\n\x01\")) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42",
        )
        .unwrap();
        let stat = read_lossy(&p);
        fs::remove_file(&p).unwrap();
        let (comm, ppid, start) = parse_stat(&stat.unwrap()).unwrap();
        assert_eq!((comm.as_str(), ppid, start), ("a\u{fffd}\n\u{1}\")", 1, 42));
    }

    #[test]
    fn parses_stat_with_hostile_comm() {
        let stat =
            "1234 (a) b (c)) S 77 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        let (comm, ppid, start) = parse_stat(stat).unwrap();
        assert_eq!(comm, "a) b (c)");
        assert_eq!(ppid, 77);
        assert_eq!(start, 98765);
    }

    #[test]
    fn reads_own_process_from_proc() {
        let me = read_proc(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(me.exe.ends_with(me.service.as_str()), "{me:?}");
        assert!(me.start_time > 1_600_000_000, "{me:?}");
    }

    #[test]
    fn service_name_falls_back_to_comm() {
        assert_eq!(service_name("/usr/bin/python3.11", "python3"), "python3.11");
        assert_eq!(service_name("", "kworker/0:1"), "kworker/0:1");
    }

    #[test]
    fn bounded_with_oldest_evicted_first() {
        let t = table(32, Duration::from_secs(60));
        for pid in 1..=32 {
            t.insert(fake(pid));
        }
        assert_eq!(t.len(), 32);
        t.insert(fake(1000));
        // One batch (32/16 = 2) of the oldest went.
        assert_eq!(t.len(), 31);
        assert!(!t.read().map.contains_key(&1) && !t.read().map.contains_key(&2));
        assert!(t.read().map.contains_key(&1000));
        assert_eq!(t.metrics.evictions.get(), 2);
    }

    #[test]
    fn exited_entries_are_evicted_before_live_ones() {
        let t = table(16, Duration::from_secs(60));
        for pid in 1..=16 {
            t.insert(fake(pid));
        }
        t.on_exit(10);
        t.insert(fake(99));
        assert!(!t.read().map.contains_key(&10));
        assert!(t.read().map.contains_key(&1));
    }

    #[test]
    fn exit_keeps_entry_for_grace_then_gc_drops_it() {
        let t = table(16, Duration::from_millis(50));
        t.insert(fake(5));
        t.on_exit(5);
        assert!(t.get(5).unwrap().exited);
        assert_eq!(t.metrics.tracked.get(), 0);
        std::thread::sleep(Duration::from_millis(60));
        t.gc();
        assert!(!t.read().map.contains_key(&5));
    }

    #[test]
    fn live_gauge_follows_exec_exit_eviction_and_reuse() {
        let t = table(16, Duration::from_secs(60));
        for pid in 1..=10 {
            t.insert(fake(pid));
        }
        t.on_exit(3);
        t.on_exit(3); // a repeated exit changes nothing
        t.on_exit(77); // unknown pid
        assert_eq!(t.metrics.tracked.get(), 9);
        t.insert(fake(3)); // pid reused by a new exec
        t.insert(fake(4)); // re-exec of a live pid
        assert_eq!(t.metrics.tracked.get(), 10);
        for pid in 100..110 {
            t.insert(fake(pid));
        }
        let live = t
            .read()
            .map
            .values()
            .filter(|e| e.exited_at.is_none())
            .count();
        assert_eq!(t.metrics.tracked.get(), live as i64);
        assert_eq!(t.read().live, live);
    }

    #[test]
    fn event_progress_tells_pending_from_applied() {
        let t = table(16, Duration::from_secs(60));
        let before = Instant::now();
        // No consumer yet: nothing to wait for.
        assert!(t.events_applied_since(before));
        t.events_arriving();
        assert!(!t.events_applied_since(before));
        t.events_drained();
        assert!(t.events_applied_since(before));
        // Busy again: caught up as of the last drain, not after it.
        t.events_arriving();
        let later = Instant::now() + Duration::from_millis(1);
        assert!(t.events_applied_since(before));
        assert!(!t.events_applied_since(later));
    }

    #[test]
    fn proc_fallback_never_replaces_an_exec_applied_meanwhile() {
        let t = table(16, Duration::from_secs(60));
        let me = std::process::id();
        let read_before_exec = read_proc(me).unwrap();
        // The exec event lands while a lookup is still reading /proc ...
        t.on_exec(me, "whatever");
        let mut after_exec = t.get(me).unwrap();
        after_exec.comm = "after-exec".into();
        t.insert(after_exec);
        // ... and the lookup's older reading must not overwrite it.
        let kept = t.insert_with(read_before_exec, false);
        assert_eq!(kept.comm, "after-exec");
        assert_eq!(t.get(me).unwrap().comm, "after-exec");
    }

    #[test]
    fn catch_up_waits_for_the_consumer() {
        let t = table(16, Duration::from_secs(60));
        // No consumer: nothing to wait for.
        assert!(t.catch_up(Duration::ZERO));
        let mut rx = t.serve_catch_up();
        // A consumer that does not answer: the wait ends at the timeout.
        let start = Instant::now();
        assert!(!t.catch_up(Duration::from_millis(50)));
        assert!(start.elapsed() >= Duration::from_millis(50));
        let _unanswered = rx.try_recv().expect("request delivered");
        // One that answers.
        let server = std::thread::spawn(move || {
            let r = rx.blocking_recv().expect("request");
            r.done();
            rx
        });
        assert!(t.catch_up(Duration::from_secs(10)));
        // A consumer that stopped: waiting would not help.
        drop(server.join().unwrap());
        assert!(t.catch_up(Duration::from_secs(10)));
    }

    #[test]
    fn lookup_miss_falls_back_to_proc() {
        let t = table(16, Duration::from_secs(1));
        let me = t.get(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(t.len(), 1);
    }
}
