//! A lease on the agent's syscall hooks for as long as a command runs
//! (`sonde syscalls --duration`, `sonde top`): taken with `POST
//! /api/v1/syscalls/lease`, renewed by a thread at a third of its TTL,
//! released on drop. Ctrl-C (SIGINT) and SIGTERM are caught while a lease
//! is held, so that the command ends its window early and releases the
//! lease (`strace -c` reports on Ctrl-C too); a second one exits at once.
//! Only a CLI killed outright (SIGKILL) leaves the hooks attached, until
//! the lease expires.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use sonde_wire::syscalls::Lease;

use super::client;

pub struct LeaseGuard {
    socket: PathBuf,
    /// The lease as granted (a renewal that had to take a new lease
    /// replaces it: see [`LeaseGuard::current`]).
    pub first: Lease,
    current: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
    renewer: Option<JoinHandle<()>>,
}

async fn post(socket: &Path, path: &str) -> anyhow::Result<Lease> {
    let body = client::request_bytes(socket, hyper::Method::POST, path).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// Takes a new lease (the agent attaches the hooks if no lease is live).
pub fn acquire(socket: &Path) -> anyhow::Result<Lease> {
    client::block_on(post(socket, "/api/v1/syscalls/lease"))?
}

/// Set by the first SIGINT or SIGTERM once [`catch_interrupts`] ran.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    if INTERRUPTED.swap(true, Ordering::AcqRel) {
        // SAFETY: _exit is async-signal-safe; a second signal means "now".
        unsafe { libc::_exit(130) };
    }
}

/// Turns SIGINT and SIGTERM into [`interrupted`] for the rest of the run.
pub fn catch_interrupts() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls _exit, both
        // async-signal-safe.
        if let Err(e) = unsafe { sigaction(sig, &action) } {
            tracing::debug!("cannot catch {sig}: {e}");
        }
    }
}

/// Whether the user asked to stop (Ctrl-C or SIGTERM) since
/// [`catch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Acquire)
}

impl LeaseGuard {
    /// Holds `lease` until dropped (and catches Ctrl-C: see the module
    /// docs; callers end their wait when [`interrupted`] says so). With `replace`, a lease that could not
    /// be renewed (the CLI was stopped longer than its TTL) is replaced by
    /// a new one; without, it is left to lapse and the report names it.
    pub fn hold(socket: &Path, lease: Lease, replace: bool) -> Self {
        catch_interrupts();
        let current = Arc::new(Mutex::new(lease.id));
        let stop = Arc::new(AtomicBool::new(false));
        let every = Duration::from_millis((lease.ttl_ms / 3).max(100));
        let renewer = {
            let (socket, current, stop) = (socket.to_owned(), current.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut next = Instant::now() + every;
                while !stop.load(Ordering::Acquire) {
                    // Short naps so a drop does not wait a whole period.
                    std::thread::sleep(Duration::from_millis(50));
                    if Instant::now() < next {
                        continue;
                    }
                    next = Instant::now() + every;
                    let id = *current.lock().unwrap_or_else(|e| e.into_inner());
                    let renewed = client::block_on(post(
                        &socket,
                        &format!("/api/v1/syscalls/lease?renew={id}"),
                    ))
                    .and_then(|r| r);
                    if renewed.is_err()
                        && replace
                        && let Ok(Ok(l)) = client::block_on(post(&socket, "/api/v1/syscalls/lease"))
                    {
                        *current.lock().unwrap_or_else(|e| e.into_inner()) = l.id;
                    }
                }
            })
        };
        Self {
            socket: socket.to_owned(),
            first: lease,
            current,
            stop,
            renewer: Some(renewer),
        }
    }

    /// The lease held now.
    pub fn current(&self) -> u64 {
        *self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        // Best effort: an unreleased lease expires on its own.
        let id = self.current();
        let _ = client::block_on(client::request_bytes(
            &self.socket,
            hyper::Method::DELETE,
            &format!("/api/v1/syscalls/lease?id={id}"),
        ));
    }
}
