//! The rolling window of symbolized samples that profiles are cut from.
//!
//! The drain thread appends one [`Batch`] per drain; the API filters batches
//! by time and process. Memory is bounded by the window (old batches are
//! dropped) and by a cap on stored sample rows.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, SystemTime},
};

use tokio::sync::oneshot;

pub use crate::collectors::routes::RouteLabel;

/// What kind of code a frame is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    User,
    Kernel,
    /// From a JIT's `/tmp/perf-PID.map`.
    Jit,
    /// Nothing resolved it; the name says module + offset.
    Unknown,
    /// A Python function (CPython's frame walk): `function` is the
    /// qualified name, `file` the source file, `addr` the code object.
    Python,
}

/// One resolved frame. Several frames share an address when the compiler
/// inlined calls there (`inlined` is then set on all but the outermost).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    pub function: Arc<str>,
    pub file: Option<Arc<str>>,
    /// Source line, 0 when unknown.
    pub line: u32,
    pub kind: FrameKind,
    /// The file the code lives in (`[kernel]` for the kernel).
    pub module: Arc<Module>,
    /// File offset in `module` (user), or the kernel address.
    pub addr: u64,
    pub inlined: bool,
}

/// A binary a frame belongs to, as pprof's `Mapping` wants it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Module {
    pub path: Arc<str>,
    pub build_id: Option<Arc<str>>,
}

/// Samples of one stack of one process within one batch.
#[derive(Debug, Clone)]
pub struct Sample {
    pub pid: u32,
    pub comm: Arc<str>,
    pub service: Arc<str>,
    /// Leaf first: kernel frames (if any), then user frames.
    pub stack: Arc<[Frame]>,
    pub count: u64,
    /// The HTTP route whose request the samples were serving (see
    /// `by_route`), `None` when not attributed.
    pub route: Option<RouteLabel>,
}

/// Everything drained at one instant; covers the time since the previous drain.
#[derive(Debug)]
pub struct Batch {
    pub at: SystemTime,
    pub samples: Vec<Sample>,
}

/// Which samples a profile request wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub pid: Option<u32>,
    /// Matches the process name (comm) or the service name.
    pub name: Option<String>,
    pub service: Option<String>,
    /// Only samples attributed to a route matching this pattern
    /// (`by_route::route_matches`).
    pub route: Option<String>,
}

impl Filter {
    pub fn matches(&self, s: &Sample) -> bool {
        self.route
            .as_deref()
            .is_none_or(|pat| super::by_route::route_matches(pat, s.route.as_ref()))
            && self.pid.is_none_or(|p| p == s.pid)
            && self
                .name
                .as_deref()
                .is_none_or(|n| &*s.comm == n || &*s.service == n)
            && self.service.as_deref().is_none_or(|n| &*s.service == n)
    }
}

/// A cut of the window: the samples that matched and the span they cover.
#[derive(Debug, Clone)]
pub struct Profile {
    pub samples: Vec<Sample>,
    pub start: SystemTime,
    pub duration: Duration,
    /// Sampling period in nanoseconds (1e9 / frequency).
    pub period_ns: u64,
}

impl Profile {
    pub fn total(&self) -> u64 {
        self.samples.iter().map(|s| s.count).sum()
    }
}

struct Inner {
    batches: VecDeque<Batch>,
    rows: usize,
}

/// Shared handle on the window. Cheap to clone.
#[derive(Clone)]
pub struct ProfileStore {
    inner: Arc<Mutex<Inner>>,
    window: Duration,
    max_rows: usize,
    pub(crate) frequency_hz: u64,
    flush: Arc<Mutex<Option<mpsc::Sender<super::Cmd>>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the CPU profiler is not running (see `sonde status`)")]
    NotRunning,
}

impl ProfileStore {
    pub fn new(window: Duration, frequency_hz: u64, max_rows: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                batches: VecDeque::new(),
                rows: 0,
            })),
            window,
            max_rows,
            frequency_hz,
            flush: Arc::new(Mutex::new(None)),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub(crate) fn set_flusher(&self, tx: Option<mpsc::Sender<super::Cmd>>) {
        *self.flush.lock().unwrap_or_else(|e| e.into_inner()) = tx;
    }

    /// Asks the drain thread to drain now and waits until that batch is in
    /// the window; returns the instant of the flip, which is where a profile
    /// starts or ends exactly (not off by a drain interval).
    pub async fn flush(&self) -> Result<SystemTime, StoreError> {
        let tx = self
            .flush
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::NotRunning)?;
        let (reply, done) = oneshot::channel();
        tx.send(super::Cmd::Flush(reply))
            .map_err(|_| StoreError::NotRunning)?;
        done.await.map_err(|_| StoreError::NotRunning)
    }

    pub fn push(&self, batch: Batch) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.rows += batch.samples.len();
        g.batches.push_back(batch);
        let horizon = SystemTime::now()
            .checked_sub(self.window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        while let Some(front) = g.batches.front() {
            if front.at >= horizon && g.rows <= self.max_rows {
                break;
            }
            let n = front.samples.len();
            g.batches.pop_front();
            g.rows -= n;
        }
    }

    /// Samples drained strictly after `after` and at or before `until`.
    pub fn cut(&self, filter: &Filter, after: SystemTime, until: SystemTime) -> Profile {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let samples = g
            .batches
            .iter()
            .filter(|b| b.at > after && b.at <= until)
            .flat_map(|b| b.samples.iter())
            .filter(|s| filter.matches(s))
            .cloned()
            .collect();
        Profile {
            samples,
            start: after,
            duration: until.duration_since(after).unwrap_or_default(),
            period_ns: 1_000_000_000 / self.frequency_hz.max(1),
        }
    }

    /// The whole retained window.
    pub fn last_window(&self, filter: &Filter) -> Profile {
        let now = SystemTime::now();
        let after = now
            .checked_sub(self.window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.cut(filter, after, now)
    }

    /// Whether any retained sample belongs to `pid` (it may have exited).
    pub fn has_pid(&self, pid: u32) -> bool {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.batches
            .iter()
            .any(|b| b.samples.iter().any(|s| s.pid == pid))
    }

    pub fn rows(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, comm: &str, service: &str) -> Sample {
        Sample {
            pid,
            comm: comm.into(),
            service: service.into(),
            stack: Arc::from(Vec::new()),
            count: 2,
            route: None,
        }
    }

    #[test]
    fn cuts_by_time_and_filter_and_drops_old_batches() {
        let store = ProfileStore::new(Duration::from_secs(60), 19, 1000);
        let now = SystemTime::now();
        let t = |s: u64| now - Duration::from_secs(s);
        store.push(Batch {
            at: t(120),
            samples: vec![sample(1, "old", "old")],
        });
        store.push(Batch {
            at: t(10),
            samples: vec![sample(1, "a", "svc"), sample(2, "b", "svc")],
        });
        store.push(Batch {
            at: t(1),
            samples: vec![sample(2, "b", "other")],
        });
        assert_eq!(store.rows(), 3, "the batch older than the window is gone");
        assert!(!store.has_pid(3));
        let all = store.cut(&Filter::default(), t(20), now);
        assert_eq!(all.total(), 6);
        assert_eq!(all.period_ns, 1_000_000_000 / 19);
        let by_pid = store.cut(
            &Filter {
                pid: Some(2),
                ..Filter::default()
            },
            t(5),
            now,
        );
        assert_eq!(by_pid.total(), 2, "only the batch after t-5s");
        let by_name = store.last_window(&Filter {
            name: Some("svc".into()),
            ..Filter::default()
        });
        assert_eq!(by_name.total(), 4, "name matches the service too");
    }

    #[test]
    fn row_cap_bounds_memory() {
        let store = ProfileStore::new(Duration::from_secs(60), 19, 2);
        for _ in 0..5 {
            store.push(Batch {
                at: SystemTime::now(),
                samples: vec![sample(1, "a", "a")],
            });
        }
        assert!(store.rows() <= 2);
    }
}
