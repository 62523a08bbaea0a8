//! Collectors: one module per hook family, each behind [`Collector`], built
//! from the [`kit`].
//!
//! A collector owns its eBPF object, its kernel maps and its user-side
//! workers. The daemon starts each one independently; a collector that cannot
//! attach reports why through [`Collector::health`] and leaves the rest alone.
//! Query data (profiles, HTTP summaries, ...) is exposed through typed
//! handles the collector registers with [`kit::Handles`] at construction,
//! not through this trait: every collector's data has a different shape.

pub mod http;
pub mod kit;
pub mod memory;
pub mod process;
pub mod profile;
pub mod routes;
pub mod syscalls;

use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use self::kit::{Base, Deps};
pub use crate::error::CollectorError;
use crate::{config::CollectorsConfig, ebpf::KernelBtf, features::Features, telemetry::Telemetry};

/// Every enabled collector, in start order (the process table first: the
/// others name processes with it). A new collector adds its line here.
pub fn build(c: &CollectorsConfig, deps: &Deps) -> Vec<Box<dyn Collector>> {
    let mut v: Vec<Box<dyn Collector>> = Vec::new();
    if c.process.enabled {
        v.push(Box::new(process::ProcessCollector::new(&c.process, deps)));
    }
    // Disabled, the syscalls collector still serves on-demand leases.
    if c.syscalls.enabled || c.syscalls.on_demand {
        v.push(Box::new(syscalls::SyscallsCollector::new(
            &c.syscalls,
            deps,
        )));
    }
    // CPU by route needs both: the HTTP object tags threads, the profile
    // object reads the tags.
    if c.profile.enabled && c.http.enabled {
        deps.handles.register(routes::RouteShare::default());
    }
    if c.profile.enabled {
        v.push(Box::new(profile::ProfileCollector::new(&c.profile, deps)));
    }
    if c.http.enabled {
        v.push(Box::new(http::HttpCollector::new(&c.http, deps)));
    }
    if c.memory.enabled {
        v.push(Box::new(memory::growth::MemoryCollector::new(
            &c.memory, deps,
        )));
    }
    v
}

/// Health of one component, as served by /health and `sonde status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ComponentHealth {
    pub status: HealthStatus,
    /// Why it is not healthy, or a short note on what it does.
    pub reason: String,
}

pub use sonde_wire::HealthStatus;

impl ComponentHealth {
    pub fn healthy(reason: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Healthy,
            reason: reason.into(),
        }
    }
    pub fn degraded(reason: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Degraded,
            reason: reason.into(),
        }
    }
    pub fn unhealthy(reason: impl Into<String>) -> Self {
        Self {
            status: HealthStatus::Unhealthy,
            reason: reason.into(),
        }
    }
}

/// A health value shared between a collector and its worker tasks.
#[derive(Clone, Debug)]
pub struct SharedHealth(Arc<RwLock<ComponentHealth>>);

impl SharedHealth {
    pub fn new(h: ComponentHealth) -> Self {
        Self(Arc::new(RwLock::new(h)))
    }
    pub fn set(&self, h: ComponentHealth) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = h;
    }
    pub fn get(&self) -> ComponentHealth {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a collector gets to start with.
pub struct StartContext<'a> {
    pub features: &'a Features,
    pub telemetry: &'a Telemetry,
    /// The kernel's BTF, read once for every collector.
    pub btf: &'a KernelBtf,
    /// Cancelled at shutdown; `Base::begin` derives the collector's token.
    pub shutdown: CancellationToken,
    /// aya-log level to patch into objects (0 = kernel logging off).
    pub kernel_log_level: u8,
}

/// The one small interface every collector implements. State common to all
/// of them lives in a [`Base`], which gives `health` and `stop`.
pub trait Collector: Send {
    /// Stable name used in metrics labels, health and config.
    fn name(&self) -> &'static str;
    /// Loads and attaches the collector's programs and spawns its workers.
    /// On error the daemon marks the collector unhealthy with the reason.
    fn start(&mut self, ctx: StartContext<'_>) -> Result<(), CollectorError>;
    fn base(&self) -> &Base;
    fn base_mut(&mut self) -> &mut Base;
    /// Current health; cheap, called on every /health request.
    fn health(&self) -> ComponentHealth {
        self.base().health()
    }
    /// Applies the keys of a reloaded, validated config that this collector
    /// can change while running (user-side caps and filters read at drain
    /// time) and returns their dotted names. Keys it does not return keep
    /// their running value until a restart.
    fn reload(&mut self, _new: &crate::config::CollectorsConfig) -> Vec<&'static str> {
        Vec::new()
    }
    /// Detaches everything. Idempotent; called once at shutdown.
    fn stop(&mut self) {
        self.base_mut().stop();
    }
    /// Whether a healthy collector makes the agent ready: false for one
    /// that only attaches when a client asks (the on-demand syscalls
    /// collector), since an agent with nothing else has nothing attached.
    fn always_on(&self) -> bool {
        true
    }
}
