//! Syscall collector: per-process syscall counts, errors (by errno) and
//! latency histograms, aggregated in the kernel (docs/syscalls.md).
//!
//! Two modes. Always-on (`collectors.syscalls.enabled = true`): the hooks
//! are attached from start-up to shutdown and feed the `sonde_syscall*`
//! Prometheus families. On demand (the default): nothing is attached until
//! a client of `sonde syscalls` or `sonde top` takes a lease; the hooks stay
//! attached while any lease is live and are detached when the last one is
//! released or expires (lease.rs, session.rs).
//!
//! Hook choice: raw tracepoints `sys_enter`/`sys_exit` (no tracefs, the
//! cheapest stable hook), else the `raw_syscalls` tracepoints. The kernel
//! keeps cumulative per-(tgid, syscall) counters; every `interval`, and
//! whenever a client asks, the drain reads them, turns them into deltas,
//! names the process, feeds the CLI window (and, always-on, the Prometheus
//! series) and deletes the keys of processes that have exited (after their
//! final counts were read once).

mod aggregate;
mod drain;
mod lease;
mod metrics;
pub mod names;
mod session;
mod tables;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use aggregate::Filter;
use aggregate::{Export, Limits, Window};
use drain::{Attachment, SelfMetrics, Shared};
pub use session::Refused;
use session::{Cmd, Session};
use sonde_wire::syscalls::{Lease, Mode, Report, SortBy, Totals};
use tokio::sync::{mpsc, oneshot};

use super::{Base, Collector, CollectorError, Deps, StartContext};
use crate::{config::SyscallsConfig, ebpf, process_table::ProcessTable};

pub const NAME: &str = "syscalls";

/// This collector's eBPF object.
pub const OBJECT: ebpf::Object = ebpf::object!("sonde-syscalls");

/// What the control API holds to answer `sonde syscalls` and `sonde top`.
#[derive(Clone)]
pub struct SyscallsHandle {
    window: Arc<Mutex<Window>>,
    totals: Arc<Mutex<Totals>>,
    cmds: Arc<Mutex<Option<mpsc::Sender<Cmd>>>>,
}

/// A command's answer takes milliseconds (an attach, under a second); do
/// not hang the CLI on a stuck one.
const ANSWER_WAIT: Duration = Duration::from_secs(20);

impl SyscallsHandle {
    async fn ask<T>(&self, cmd: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, Refused> {
        let tx = self
            .cmds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Refused::Stopped)?;
        let (reply, rx) = oneshot::channel();
        tx.send(cmd(reply)).await.map_err(|_| Refused::Stopped)?;
        tokio::time::timeout(ANSWER_WAIT, rx)
            .await
            .map_err(|_| Refused::Stopped)?
            .map_err(|_| Refused::Stopped)
    }

    /// Drains the kernel maps now (so the answer includes the last
    /// moments), then reports the window: the configured one, or the
    /// lease's (every call since it was granted).
    pub async fn report(
        &self,
        filter: &Filter,
        sort: SortBy,
        lease: Option<u64>,
    ) -> Result<Report, Refused> {
        let since = self.ask(|reply| Cmd::Drain { lease, reply }).await??;
        Ok(self
            .window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .report(filter, sort, Instant::now(), since))
    }

    /// Drains the kernel maps now, then returns every live process's
    /// cumulative totals since the hooks were attached (for `sonde top`).
    pub async fn totals(&self) -> Result<Totals, Refused> {
        self.ask(|reply| Cmd::Drain { lease: None, reply })
            .await??;
        Ok(self
            .totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }

    /// A new lease (attaching the hooks in on-demand mode when none is
    /// live), or the renewal of lease `renew`.
    pub async fn acquire(&self, renew: Option<u64>) -> Result<Lease, Refused> {
        self.ask(|reply| Cmd::Acquire { renew, reply }).await?
    }

    /// Ends lease `id`; false when it was not live.
    pub async fn release(&self, id: u64) -> Result<bool, Refused> {
        self.ask(|reply| Cmd::Release { id, reply }).await
    }
}

pub struct SyscallsCollector {
    config: SyscallsConfig,
    mode: Mode,
    table: ProcessTable,
    handle: SyscallsHandle,
    export: Option<Arc<Mutex<Export>>>,
    base: Base,
}

impl SyscallsCollector {
    /// Always-on when `config.enabled`, else on demand. Registers the
    /// [`SyscallsHandle`] for the control API, and (always-on) the
    /// Prometheus families.
    pub fn new(config: &SyscallsConfig, deps: &Deps) -> Self {
        let mode = if config.enabled {
            Mode::AlwaysOn
        } else {
            Mode::OnDemand
        };
        let export = (mode == Mode::AlwaysOn).then(|| {
            let export = Arc::new(Mutex::new(Export::new(Limits {
                top_syscalls: config.top_syscalls_per_service.get() as usize,
                top_errnos: config.top_errnos_per_syscall.get() as usize,
                max_services: config.max_services.get() as usize,
            })));
            deps.telemetry
                .register(metrics::SyscallMetrics::new(export.clone()));
            export
        });
        let handle = SyscallsHandle {
            window: Arc::new(Mutex::new(Window::new(config.window.get()))),
            totals: Arc::default(),
            cmds: Arc::new(Mutex::new(None)),
        };
        deps.handles.register(handle.clone());
        Self {
            config: config.clone(),
            mode,
            table: deps.processes.clone(),
            handle,
            export,
            base: Base::new(),
        }
    }
}

impl Collector for SyscallsCollector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn base(&self) -> &Base {
        &self.base
    }

    fn base_mut(&mut self) -> &mut Base {
        &mut self.base
    }

    fn always_on(&self) -> bool {
        self.mode == Mode::AlwaysOn
    }

    fn stop(&mut self) {
        *self.handle.cmds.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.base.stop();
    }

    fn start(&mut self, ctx: StartContext<'_>) -> Result<(), CollectorError> {
        let always_on = self.mode == Mode::AlwaysOn;
        let shared = Shared {
            config: self.config.clone(),
            table: self.table.clone(),
            export: self.export.clone(),
            window: self.handle.window.clone(),
            totals: self.handle.totals.clone(),
            epoch: Instant::now(),
            self_metrics: SelfMetrics::new(ctx.telemetry, always_on),
            features: ctx.features.clone(),
            log_level: ctx.kernel_log_level,
        };
        let live = if always_on {
            let a = Attachment::attach(&shared, ctx.btf)?;
            tracing::info!(
                collector = NAME,
                hook = a.hook,
                "syscall collector attached"
            );
            Some(a)
        } else {
            // Loading now would catch a broken object early, but the
            // verifier's work is what an idle agent should not pay for;
            // the first lease reports the error.
            None
        };
        let (tx, rx) = mpsc::channel(16);
        *self.handle.cmds.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        self.base.begin(&ctx);
        let session = Session::new(self.mode, shared, live, self.base.shared_health());
        self.base.spawn(session.run(rx));
        Ok(())
    }
}
