//! The collector's one worker: it owns the attachment (if any) and the
//! leases, drains every `interval` and on request, and in on-demand mode
//! attaches the hooks for the first lease and detaches them when the last
//! one is released or expires.
//!
//! Everything that touches the attachment goes through this task's command
//! channel, so attach, drain and detach never race.

use std::time::{Duration, Instant};

use sonde_wire::syscalls::{Lease, Mode};
use tokio::sync::{mpsc, oneshot};

use super::{
    NAME,
    aggregate::Since,
    drain::{Attachment, Shared},
    lease::{Leases, TTL},
};
use crate::{
    collectors::{ComponentHealth, SharedHealth},
    ebpf::KernelBtf,
    error::chain,
};

/// Why a request about the hooks was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// On-demand mode, and no client holds a lease.
    #[error(
        "syscall accounting is on demand and no client holds it attached: `sonde syscalls` and `sonde top` attach it (or take a lease: POST /api/v1/syscalls/lease)"
    )]
    NotAttached,
    #[error("lease {0} is unknown or has expired (leases live {ttl}s unless renewed)", ttl = TTL.as_secs())]
    UnknownLease(u64),
    #[error("cannot attach the syscall hooks: {0}")]
    AttachFailed(String),
    #[error("the syscalls collector is not running (see `sonde status`)")]
    Stopped,
}

pub(super) enum Cmd {
    /// Drain now; with a lease, answer where its window begins.
    Drain {
        lease: Option<u64>,
        reply: oneshot::Sender<Result<Option<Since>, Refused>>,
    },
    /// A new lease (attaching if needed), or a renewal.
    Acquire {
        renew: Option<u64>,
        reply: oneshot::Sender<Result<Lease, Refused>>,
    },
    Release {
        id: u64,
        reply: oneshot::Sender<bool>,
    },
}

/// How often expired leases are looked for: a killed client's lease ends
/// at most this long after its TTL.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

pub(super) struct Session {
    mode: Mode,
    shared: Shared,
    live: Option<Attachment>,
    leases: Leases,
    health: SharedHealth,
    /// Calls not accounted at the last drain.
    lost: u64,
}

impl Session {
    /// `live` is the start-up attachment of always-on mode.
    pub fn new(mode: Mode, shared: Shared, live: Option<Attachment>, health: SharedHealth) -> Self {
        let s = Self {
            mode,
            shared,
            live,
            leases: Leases::default(),
            health,
            lost: 0,
        };
        s.set_health();
        s
    }

    pub async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) {
        let mut tick = tokio::time::interval(self.shared.config.interval.get());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expiry = tokio::time::interval(EXPIRY_CHECK);
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.drain().await,
                _ = expiry.tick() => self.expire(),
                c = cmds.recv() => match c {
                    Some(c) => self.handle(c).await,
                    None => return,
                },
            }
        }
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Drain { lease, reply } => {
                let r = self.drain_for(lease).await;
                let _ = reply.send(r);
            }
            Cmd::Acquire { renew, reply } => {
                let r = self.acquire(renew).await;
                let _ = reply.send(r);
            }
            Cmd::Release { id, reply } => {
                let released = self.leases.release(id);
                self.detach_if_unused();
                self.set_health();
                let _ = reply.send(released);
            }
        }
    }

    async fn drain_for(&mut self, lease: Option<u64>) -> Result<Option<Since>, Refused> {
        self.expire();
        if self.live.is_none() {
            return Err(Refused::NotAttached);
        }
        self.drain().await;
        match lease {
            None => Ok(None),
            Some(id) => self
                .leases
                .since(id, Instant::now())
                .map(Some)
                .ok_or(Refused::UnknownLease(id)),
        }
    }

    async fn acquire(&mut self, renew: Option<u64>) -> Result<Lease, Refused> {
        let now = Instant::now();
        self.expire();
        if let Some(id) = renew {
            if !self.leases.renew(id, now) {
                return Err(Refused::UnknownLease(id));
            }
            return Ok(self.grant(id, None));
        }
        let (since, attach_ms) = match self.live {
            // Already attached: a drain now is where the new window begins.
            Some(_) => {
                self.drain().await;
                (self.since_now(), None)
            }
            None => {
                let started = Instant::now();
                self.attach().await?;
                let ms = started.elapsed().as_millis() as u64;
                // Fresh maps: everything from the next drain on is new.
                (self.since_now(), Some(ms))
            }
        };
        let id = self.leases.grant(Instant::now(), since);
        self.set_health();
        Ok(self.grant(id, attach_ms))
    }

    fn since_now(&self) -> Since {
        let w = self.shared.window.lock().unwrap_or_else(|e| e.into_inner());
        Since {
            seq: w.seq(),
            at: Instant::now(),
        }
    }

    fn grant(&self, id: u64, attach_ms: Option<u64>) -> Lease {
        Lease {
            id,
            mode: self.mode,
            ttl_ms: TTL.as_millis() as u64,
            clients: self.leases.len(),
            hook: self.live.as_ref().map_or("", |a| a.hook).to_owned(),
            attach_ms,
        }
    }

    /// Loads and attaches on a blocking thread (the verifier takes a while).
    async fn attach(&mut self) -> Result<(), Refused> {
        let shared = self.shared.clone();
        let r = tokio::task::spawn_blocking(move || {
            // The start-up BTF is gone by now; the syscall hooks are raw or
            // classic tracepoints, which need none.
            Attachment::attach(
                &shared,
                &KernelBtf::not_read("kernel BTF is only read at start-up"),
            )
        })
        .await
        .map_err(|e| Refused::AttachFailed(format!("attach task failed: {e}")))?;
        match r {
            Ok(a) => {
                tracing::info!(
                    collector = NAME,
                    hook = a.hook,
                    load_ms = a.load.as_millis() as u64,
                    verify_attach_ms = a.attach.as_millis() as u64,
                    "syscall hooks attached on demand"
                );
                self.live = Some(a);
                self.lost = 0;
                Ok(())
            }
            Err(e) => {
                let why = chain(&e);
                tracing::warn!(collector = NAME, "on-demand attach failed: {why}");
                self.health.set(ComponentHealth::degraded(format!(
                    "on demand: the last attach failed: {why}"
                )));
                Err(Refused::AttachFailed(why))
            }
        }
    }

    /// Drops expired leases; detaches when none is left (on demand).
    fn expire(&mut self) {
        if self.leases.expire(Instant::now()) > 0 {
            self.detach_if_unused();
            self.set_health();
        }
    }

    fn detach_if_unused(&mut self) {
        if self.mode != Mode::OnDemand || !self.leases.is_empty() || self.live.is_none() {
            return;
        }
        // Dropping the object detaches every program and frees the maps.
        self.live = None;
        // The next attachment counts from zero: `sonde top` must not diff
        // its totals against this one's.
        *self.shared.totals.lock().unwrap_or_else(|e| e.into_inner()) = Default::default();
        self.shared
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .hold(None);
        tracing::info!(collector = NAME, "syscall hooks detached (no lease left)");
    }

    async fn drain(&mut self) {
        let Some(mut live) = self.live.take() else {
            return;
        };
        self.shared
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .hold(self.leases.hold());
        // Map reads are syscalls that may take a while with many keys:
        // keep them off the async workers.
        match tokio::task::spawn_blocking(move || {
            let lost = live.drain.drain_once();
            (live, lost)
        })
        .await
        {
            Ok((live, lost)) => {
                self.live = Some(live);
                self.lost = lost;
                self.set_health();
            }
            Err(e) => {
                tracing::error!(collector = NAME, "drain panicked: {e}");
                self.health
                    .set(ComponentHealth::unhealthy(format!("drain panicked: {e}")));
            }
        }
    }

    fn set_health(&self) {
        let attached = match (&self.live, self.mode) {
            (None, Mode::AlwaysOn) => return,
            (None, Mode::OnDemand) => {
                self.health.set(ComponentHealth::healthy(
                    "on demand: idle (`sonde syscalls` and `sonde top` attach it)",
                ));
                return;
            }
            (Some(a), Mode::AlwaysOn) => format!("attached via {}", a.hook),
            (Some(a), Mode::OnDemand) => {
                let n = self.leases.len();
                format!(
                    "on demand: attached via {} for {n} client{}",
                    a.hook,
                    if n == 1 { "" } else { "s" }
                )
            }
        };
        self.health.set(if self.lost > 0 {
            ComponentHealth::degraded(format!(
                "{attached}; {} syscalls not accounted since the last drain (map full: raise collectors.syscalls.max_pairs / max_threads)",
                self.lost
            ))
        } else {
            ComponentHealth::healthy(attached)
        });
    }
}
