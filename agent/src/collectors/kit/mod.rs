//! The collector kit: what every collector used to write by hand.
//!
//! - [`Base`]: a collector's health, loaded object and cancellation token,
//!   with the default `health()`/`stop()` of [`super::Collector`], and
//!   [`Base::spawn`], the one way a collector runs async workers (tokio
//!   tasks under a child token of the agent's shutdown token).
//! - [`attach`]: programs and hooks declared once in a const table, attached
//!   all or nothing, with preferred/fallback sets chosen by probed features.
//! - [`ring`]: one ring-buffer consumer over a `Pod` event type.
//! - [`budget`]: each loaded program's verified instruction count (log line
//!   and gauge), against the verifier's 1M limit.
//! - [`counters`]: one exporter of the kernel's per-CPU counter arrays.
//! - [`Handles`]: where collectors register the query handles the control
//!   API reads.
//! - [`Deps`]: what every collector's constructor gets.

pub mod attach;
pub mod budget;
pub mod counters;
pub mod ring;

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    future::Future,
    sync::{Arc, RwLock},
};

use aya::Ebpf;
use tokio_util::sync::CancellationToken;

use super::{ComponentHealth, SharedHealth, StartContext};
pub use crate::error::{CollectorError, chain};
use crate::{process_table::ProcessTable, telemetry::Telemetry};

/// What every collector's constructor gets: the shared process table, the
/// metrics registry and the API's handle registry.
#[derive(Clone)]
pub struct Deps {
    pub processes: ProcessTable,
    pub telemetry: Telemetry,
    pub handles: Handles,
}

/// The state every collector keeps: its health, its loaded object (dropping
/// it detaches every program) and the token its workers run under.
pub struct Base {
    health: SharedHealth,
    ebpf: Option<Ebpf>,
    token: Option<CancellationToken>,
}

impl Default for Base {
    fn default() -> Self {
        Self::new()
    }
}

impl Base {
    pub fn new() -> Self {
        Self {
            health: SharedHealth::new(ComponentHealth::unhealthy("not started")),
            ebpf: None,
            token: None,
        }
    }

    pub fn health(&self) -> ComponentHealth {
        self.health.get()
    }

    /// The health handle, for workers that update it.
    pub fn shared_health(&self) -> SharedHealth {
        self.health.clone()
    }

    pub fn set_health(&self, h: ComponentHealth) {
        self.health.set(h);
    }

    /// Starts a run: a child token of the agent's shutdown token, which
    /// [`Base::spawn`] and [`Base::stop`] use. Returns it for workers that
    /// are not tokio tasks (threads), which must watch it themselves.
    pub fn begin(&mut self, ctx: &StartContext<'_>) -> CancellationToken {
        let t = ctx.shutdown.child_token();
        self.token = Some(t.clone());
        t
    }

    /// Runs `task` on the runtime until it returns or the collector stops.
    ///
    /// # Panics
    /// Before [`Base::begin`]: a worker with nothing to stop it is a bug.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let token = self
            .token
            .clone()
            .expect("Base::spawn called before Base::begin");
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Keeps the loaded object until [`Base::stop`].
    pub fn keep(&mut self, obj: Ebpf) {
        self.ebpf = Some(obj);
    }

    /// Cancels the workers and detaches the programs. Idempotent.
    pub fn stop(&mut self) {
        let mut running = false;
        if let Some(t) = self.token.take() {
            t.cancel();
            running = true;
        }
        running |= self.ebpf.take().is_some();
        if running {
            self.health.set(ComponentHealth::unhealthy("stopped"));
        }
    }
}

/// Query handles the collectors register for the control API, one per type
/// (e.g. `HttpQuery`, `SyscallsHandle`, `ProfileStore`). A handle that is
/// absent means its collector is disabled. Cheap to clone.
#[derive(Clone, Default)]
pub struct Handles(Arc<RwLock<HashMap<TypeId, Box<dyn Any + Send + Sync>>>>);

impl Handles {
    pub fn register<T: Clone + Send + Sync + 'static>(&self, handle: T) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(TypeId::of::<T>(), Box::new(handle));
    }

    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&TypeId::of::<T>())
            .and_then(|b| b.downcast_ref::<T>())
            .cloned()
    }
}

/// Takes map `name` out of a loaded object as the typed map `T`, with an
/// error that names the map when the object lacks it or its type differs.
pub fn take_map<T>(obj: &mut Ebpf, name: &str) -> Result<T, CollectorError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = obj
        .take_map(name)
        .ok_or_else(|| CollectorError::missing_map(name))?;
    T::try_from(map).map_err(|source| CollectorError::Map {
        what: name.to_owned(),
        source,
    })
}

/// Program `name` of a loaded object as the program type `T`.
pub fn program<'a, T>(obj: &'a mut Ebpf, name: &str) -> Result<&'a mut T, CollectorError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    obj.program_mut(name)
        .ok_or_else(|| CollectorError::missing_program(name))?
        .try_into()
        .map_err(|source| CollectorError::Program {
            what: name.to_owned(),
            source,
        })
}

/// A `comm` (or any NUL-padded name) from the kernel as a string.
pub fn comm_str(c: &[u8]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// Copies a `T` out of bytes from the kernel after checking the length.
pub fn decode<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked above, `T` is `Pod` (any bit pattern
    // is a valid value) and `read_unaligned` imposes no alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_checks_length_and_comm_stops_at_nul() {
        assert!(decode::<u64>(&[0u8; 7]).is_none());
        assert_eq!(decode::<u32>(&7u32.to_ne_bytes()), Some(7));
        assert_eq!(comm_str(b"bash\0\0x"), "bash");
        assert_eq!(comm_str(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn handles_are_found_by_type() {
        let h = Handles::default();
        assert_eq!(h.get::<u32>(), None);
        h.register(5u32);
        h.register(String::from("x"));
        assert_eq!(h.get::<u32>(), Some(5));
        assert_eq!(h.get::<String>().as_deref(), Some("x"));
    }
}
