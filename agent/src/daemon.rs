//! `sonde agent`: start-up, the run loop (SIGTERM/SIGINT stop, SIGHUP
//! reloads the config, see reload.rs) and clean shutdown.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::{
    alerts::AlertEngine,
    api::{self, AppState},
    collectors::{ComponentHealth, Deps, StartContext, kit::Handles},
    config::Config,
    ebpf::{self, KernelBtf},
    error::chain,
    features, heap, identity, logging,
    process_table::ProcessTable,
    reload::{ConfigSource, Reloader},
    telemetry::Telemetry,
};

/// Errors that are the user's to fix before the agent can run at all. They
/// map to exit code 1 (runtime), unlike config errors (2).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "sonde agent needs root, or CAP_BPF + CAP_PERFMON (plus CAP_SYS_RESOURCE, \
         CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE): run it with sudo or see docs/deploy.md"
    )]
    NotPrivileged,
    #[error("cannot listen on {addr}: {source} (set api.listen or SONDE_API__LISTEN)")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

pub fn run(config: Config, source: ConfigSource) -> anyhow::Result<()> {
    heap::tune();
    let filter = logging::init(&config.agent).map_err(|e| anyhow::anyhow!(e))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        // Two workers are plenty: the hot paths are in the kernel.
        .worker_threads(2)
        .enable_all()
        .thread_name("sonde-worker")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(
        config,
        source,
        logging::kernel_debug_enabled(&filter),
    ))
}

async fn run_async(config: Config, source: ConfigSource, kernel_debug: bool) -> anyhow::Result<()> {
    if !features::Privileges::current().can_load_tracing() {
        return Err(StartError::NotPrivileged.into());
    }
    // Before anything slow: a SIGHUP during start-up must not kill the
    // agent (the default action); it is served once start-up is over.
    let signals = Signals::install()?;
    raise_memlock_limit();

    // Bind both listeners before touching the kernel, so a port clash fails
    // fast and leaves nothing attached.
    let tcp = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.api.listen.to_string(),
            source,
        })?;
    let unix = api::control::bind(&config.api.socket)?;

    let telemetry = Telemetry::new();
    let pc = &config.collectors.process;
    let processes = ProcessTable::new(
        pc.max_processes.get() as usize,
        pc.exited_grace.get(),
        &telemetry,
    );
    let shutdown = CancellationToken::new();
    let alerts = if config.alerts.enabled {
        // Already validated by Config::load; compile again to build the engine.
        let compiled = config.alerts.compile()?;
        Some(AlertEngine::new(&config.alerts, compiled, &telemetry))
    } else {
        None
    };
    let state = AppState {
        telemetry: telemetry.clone(),
        config: Arc::new(config.clone()),
        started: Instant::now(),
        features: Default::default(),
        collectors: Arc::new(Mutex::new(Vec::new())),
        processes: processes.clone(),
        handles: Handles::default(),
        startup_done: Arc::new(AtomicBool::new(false)),
        alerts: alerts.clone(),
        alloc: crate::collectors::memory::session::Sessions::new(shutdown.clone()),
        reload: Reloader::new(source, config.clone(), &telemetry),
    };
    let deps = Deps {
        processes: processes.clone(),
        telemetry: telemetry.clone(),
        handles: state.handles.clone(),
    };
    // Collectors register their query handles as they are built, before
    // the API serves.
    let collectors = crate::collectors::build(&config.collectors, &deps);

    // Pod identities: a background refresh; lookups only read its cache.
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    match identity::spawn(
        &config.kubernetes,
        &env,
        processes.clone(),
        &telemetry,
        shutdown.clone(),
    ) {
        Ok(Some(url)) => tracing::info!(%url, "resolving pod identities"),
        Ok(None) => tracing::debug!("not in Kubernetes: service names from executables"),
        // Misconfigured identity must not stop the collectors: say why and go on.
        Err(e) => tracing::error!("pod identity disabled: {e}"),
    }

    let tcp_server = tokio::spawn(serve(
        tcp,
        api::tcp::router(state.clone()),
        shutdown.clone(),
    ));
    let unix_server = tokio::spawn(serve(
        unix,
        api::control::router(state.clone()),
        shutdown.clone(),
    ));
    tracing::info!(listen = %config.api.listen, socket = %config.api.socket.display(), "serving");

    let (found, btf) = tokio::task::spawn_blocking({
        let mount = config.agent.mount_tracefs;
        move || {
            let btf = KernelBtf::read();
            (features::probe(mount, &btf), btf)
        }
    })
    .await
    .context("feature probe panicked")?;
    for f in &found.features {
        if f.available {
            tracing::info!(feature = f.name, detail = %f.detail, "kernel feature available");
        } else {
            tracing::warn!(feature = f.name, reason = %f.detail, "kernel feature unavailable");
        }
    }
    *state.features.lock().unwrap_or_else(|e| e.into_inner()) = found.clone();

    let log_level = ebpf::kernel_log_level(kernel_debug);
    for mut c in collectors {
        let up = telemetry.collector_up.with_label_values(&[c.name()]);
        let ctx = StartContext {
            features: &found,
            telemetry: &telemetry,
            btf: &btf,
            shutdown: shutdown.clone(),
            kernel_log_level: log_level,
        };
        match c.start(ctx) {
            Ok(()) => up.set(1),
            Err(e) => {
                up.set(0);
                let why = chain(&e);
                tracing::error!(collector = c.name(), "collector failed to start: {why}");
                c.base().set_health(ComponentHealth::unhealthy(why));
            }
        }
        state
            .collectors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c);
    }
    // Only start-up needs the kernel's BTF.
    drop(btf);
    if let Some(a) = &alerts {
        a.spawn(shutdown.clone());
    }
    state.startup_done.store(true, Ordering::Release);
    heap::spawn_trimmer(shutdown.clone());
    tracing::info!(ready = state.health_report().ready, "start-up complete");

    signals.serve(&state).await;
    tracing::info!("shutting down");
    shutdown.cancel();
    for c in state
        .collectors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter_mut()
    {
        c.stop();
        telemetry.collector_up.with_label_values(&[c.name()]).set(0);
    }
    let _ = tcp_server.await;
    let _ = unix_server.await;
    if let Err(e) = std::fs::remove_file(&config.api.socket) {
        tracing::debug!("removing {}: {e}", config.api.socket.display());
    }
    tracing::info!("stopped; all programs detached");
    Ok(())
}

async fn serve<L>(listener: L, router: axum::Router, shutdown: CancellationToken)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let r = axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = r {
        tracing::error!("server failed: {e}");
    }
}

/// The signals the agent handles: TERM and INT stop it, HUP reloads the
/// config.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }

    /// Serves SIGHUP until SIGTERM or SIGINT.
    async fn serve(mut self, state: &AppState) {
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    tracing::info!("SIGTERM received");
                    return;
                }
                _ = self.int.recv() => {
                    tracing::info!("SIGINT received");
                    return;
                }
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the config");
                    let mut collectors = state.collectors.lock().unwrap_or_else(|e| e.into_inner());
                    state.reload.reload(state.alerts.as_ref(), &mut collectors);
                }
            }
        }
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so large
/// maps load there too. Harmless (and unneeded) on newer kernels.
fn raise_memlock_limit() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_MEMLOCK, u64::MAX, u64::MAX) {
        tracing::debug!("cannot raise RLIMIT_MEMLOCK: {e}");
    }
}
