//! Off-CPU on demand. With `off_cpu = false` (the default) the
//! `sched_switch` program is loaded and verified at start but attached only
//! while a request for an off-CPU profile runs (`sonde profile --off-cpu`),
//! so the host pays the hook's cost (it runs at every context switch, and
//! the empty hook alone is measurable on switch-heavy work) only then.
//!
//! Each such request holds an [`OffCpuLease`] for its window: the first
//! lease attaches, dropping the last one detaches. The lease lives in the
//! request's handler, so a client that disconnects (Ctrl-C) drops it at
//! once; no renewal or expiry is needed, unlike the syscall leases, which
//! span several requests.
//!
//! Attaching and detaching happen on the drain thread, which owns the
//! loaded object, through its command channel ([`Cmd`]); being one channel
//! with the flush requests, an attach is always done before the flush that
//! opens the requester's window.

use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use tokio::sync::oneshot;

use super::Cmd;

/// The on-demand switch of off-CPU profiling, shared by the requests.
#[derive(Clone, Default)]
pub struct Demand {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Requests holding a lease.
    users: Mutex<usize>,
    /// The drain thread's commands; `None` while the collector is stopped.
    drain: Mutex<Option<mpsc::Sender<Cmd>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a lease was not granted.
#[derive(Debug, thiserror::Error)]
pub enum DemandError {
    #[error("off-CPU profiling is not running (see `sonde status`)")]
    NotRunning,
    #[error("cannot attach the off-CPU hook (tp_btf sched_switch): {0}")]
    Attach(String),
}

/// One request's hold on the attachment; dropping it detaches the hook
/// when no other request holds one.
pub struct OffCpuLease {
    shared: Arc<Shared>,
}

impl Drop for OffCpuLease {
    fn drop(&mut self) {
        let mut users = lock(&self.shared.users);
        *users = users.saturating_sub(1);
        if *users == 0
            && let Some(tx) = lock(&self.shared.drain).as_ref()
        {
            let _ = tx.send(Cmd::OffCpuOff);
        }
    }
}

impl Demand {
    pub(crate) fn set_drain(&self, tx: Option<mpsc::Sender<Cmd>>) {
        *lock(&self.shared.drain) = tx;
    }

    /// Requests holding a lease now.
    pub fn users(&self) -> usize {
        *lock(&self.shared.users)
    }

    /// A lease on the attachment, attaching the hook if this is the first.
    /// A request that joins while the first one's attach is under way is
    /// not held back: its flush queues behind the attach.
    pub async fn acquire(&self) -> Result<OffCpuLease, DemandError> {
        let (reply, done) = oneshot::channel();
        let first = {
            let mut users = lock(&self.shared.users);
            let drain = lock(&self.shared.drain);
            let tx = drain.as_ref().ok_or(DemandError::NotRunning)?;
            if *users == 0 && tx.send(Cmd::OffCpuOn(reply)).is_err() {
                // The drain thread is gone (the collector is stopping).
                return Err(DemandError::NotRunning);
            }
            *users += 1;
            *users == 1
        };
        // From here the lease undoes the count if anything fails.
        let lease = OffCpuLease {
            shared: self.shared.clone(),
        };
        if !first {
            return Ok(lease);
        }
        match done.await {
            Ok(Ok(())) => Ok(lease),
            Ok(Err(why)) => Err(DemandError::Attach(why)),
            Err(_) => Err(DemandError::NotRunning),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers the drain commands as the drain thread would, recording
    /// them.
    fn drain(d: &Demand, attach: Result<(), String>) -> mpsc::Receiver<Cmd> {
        let (tx, rx) = mpsc::channel();
        d.set_drain(Some(tx));
        let (fwd, out) = mpsc::channel();
        std::thread::spawn(move || {
            for c in rx {
                let c = match c {
                    Cmd::OffCpuOn(r) => {
                        let _ = r.send(attach.clone());
                        Cmd::OffCpuOn(oneshot::channel().0)
                    }
                    other => other,
                };
                if fwd.send(c).is_err() {
                    return;
                }
            }
        });
        out
    }

    fn kinds(rx: &mpsc::Receiver<Cmd>) -> Vec<&'static str> {
        let mut v = Vec::new();
        while let Ok(c) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            v.push(match c {
                Cmd::OffCpuOn(_) => "on",
                Cmd::OffCpuOff => "off",
                Cmd::Flush(_) => "flush",
                Cmd::Stop => "stop",
            });
        }
        v
    }

    #[tokio::test]
    async fn first_lease_attaches_and_last_detaches() {
        let d = Demand::default();
        let rx = drain(&d, Ok(()));
        let a = d.acquire().await.unwrap();
        let b = d.acquire().await.unwrap();
        assert_eq!(d.users(), 2);
        drop(a);
        assert_eq!(
            kinds(&rx),
            ["on"],
            "the second lease attaches nothing, the first drop detaches nothing"
        );
        drop(b);
        assert_eq!(kinds(&rx), ["off"]);
        assert_eq!(d.users(), 0);
        let _c = d.acquire().await.unwrap();
        assert_eq!(kinds(&rx), ["on"], "a new first lease attaches again");
    }

    #[tokio::test]
    async fn a_failed_attach_is_an_error_and_leaves_no_user() {
        let d = Demand::default();
        let rx = drain(&d, Err("no BTF".into()));
        let e = d.acquire().await.err().expect("refused");
        assert!(e.to_string().contains("no BTF"), "{e}");
        assert_eq!(d.users(), 0);
        assert_eq!(kinds(&rx), ["on", "off"]);
    }

    #[tokio::test]
    async fn a_stopped_collector_grants_nothing() {
        let d = Demand::default();
        assert!(matches!(d.acquire().await, Err(DemandError::NotRunning)));
        assert_eq!(d.users(), 0);
    }
}
