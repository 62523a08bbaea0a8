//! Collectors: one module per hook family, each behind [`Collector`].
//!
//! A collector owns its eBPF object, its kernel maps and its user-side
//! workers. The daemon starts each one independently; a collector that cannot
//! attach reports why through [`Collector::health`] and leaves the rest alone.
//! Query data (process table, profiles, ...) is exposed through typed handles
//! the collector hands to the API at construction, not through this trait:
//! every collector's data has a different shape.

pub mod http;
pub mod memory;
pub mod process;
pub mod profile;
pub mod syscalls;

use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{features::Features, telemetry::Telemetry};

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
    /// Cancelled at shutdown; worker tasks must return when it fires.
    pub shutdown: CancellationToken,
    /// aya-log level to patch into objects (0 = kernel logging off).
    pub kernel_log_level: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Load(#[from] crate::ebpf::LoadError),
    #[error("{what}: {source}")]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{what}: {source}")]
    Map {
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("no usable hook: {0}")]
    NoHook(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The one small interface every collector implements.
pub trait Collector: Send {
    /// Stable name used in metrics labels, health and config.
    fn name(&self) -> &'static str;
    /// Loads and attaches the collector's programs and spawns its workers.
    fn start(&mut self, ctx: StartContext<'_>) -> Result<(), CollectorError>;
    /// Current health; cheap, called on every /health request.
    fn health(&self) -> ComponentHealth;
    /// Detaches everything. Idempotent; called once at shutdown.
    fn stop(&mut self);
}

/// A way to attach a collector: (feature name as probed, label for health
/// and logs, the attach function).
pub type Hook = (
    &'static str,
    &'static str,
    fn(&mut aya::Ebpf) -> Result<(), CollectorError>,
);

/// Attaches with the preferred hook when the kernel has it, else with the
/// fallback; the error names why each one failed. Returns the label of the
/// hook that attached, for health and logs.
pub fn attach_preferred(
    obj: &mut aya::Ebpf,
    features: &Features,
    primary: Hook,
    fallback: Hook,
) -> Result<&'static str, CollectorError> {
    let (feature, label, attach) = primary;
    let mut why = Vec::new();
    if features.has(feature) {
        match attach(obj) {
            Ok(()) => return Ok(label),
            Err(e) => why.push(format!("{feature}: {}", chain(&e))),
        }
    } else {
        why.push(format!("{feature}: not available on this kernel"));
    }
    let (feature, label, attach) = fallback;
    match attach(obj) {
        Ok(()) => Ok(label),
        Err(e) => {
            why.push(format!("{feature}: {}", chain(&e)));
            Err(CollectorError::NoHook(why.join("; ")))
        }
    }
}

/// Takes map `name` out of a loaded object as the typed map `T`, with an
/// error that names the map when the object lacks it or its type differs.
pub fn take_map<T>(obj: &mut aya::Ebpf, name: &str) -> Result<T, CollectorError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = obj
        .take_map(name)
        .ok_or_else(|| CollectorError::NoHook(format!("map {name} missing from object")))?;
    T::try_from(map).map_err(|source| CollectorError::Map {
        what: name.to_owned(),
        source,
    })
}

/// Formats an error with its whole source chain on one line, the way the
/// verifier's reason reaches the user.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

/// Total of one slot of a per-CPU `u64` counter array (0 when unreadable:
/// a counter read must never stop a drain).
pub fn counter_total(map: &aya::maps::PerCpuArray<aya::maps::MapData, u64>, idx: u32) -> u64 {
    map.get(&idx, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// What a per-CPU counter gained since `last`, which it then updates.
pub fn counter_delta(
    map: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    idx: u32,
    last: &mut u64,
) -> u64 {
    let now = counter_total(map, idx);
    let d = now.saturating_sub(*last);
    *last = now;
    d
}
