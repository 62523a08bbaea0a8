//! The eBPF objects embedded in the binary, and how they are loaded.
//!
//! There is one object per collector (see docs/ARCHITECTURE.md): a map or
//! program that one kernel rejects then costs only that collector.

use aya::{Ebpf, EbpfLoader};

/// An object built by agent/build.rs from a `[[bin]]` of ebpf/sonde-ebpf.
#[derive(Clone, Copy, Debug)]
pub struct Object {
    pub name: &'static str,
    bytes: &'static [u8],
}

macro_rules! object {
    ($name:literal) => {
        Object {
            name: $name,
            bytes: aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/", $name)),
        }
    };
}

pub const PROCESS: Object = object!("sonde-process");
pub const PROBE: Object = object!("sonde-probe");
pub const SYSCALLS: Object = object!("sonde-syscalls");
pub const PROFILE: Object = object!("sonde-profile");
pub const HTTP: Object = object!("sonde-http");
pub const MEMORY: Object = object!("sonde-memory");
pub const ALLOC: Object = object!("sonde-alloc");

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "eBPF object {0} is empty: this binary was built with AYA_BUILD_SKIP=1; \
         rebuild without it (cargo xtask setup installs the toolchain)"
    )]
    NotBuilt(&'static str),
    #[error("cannot load eBPF object {name}: {source}")]
    Load {
        name: &'static str,
        #[source]
        source: aya::EbpfError,
    },
}

/// Whether kernel-side aya-log statements are compiled in at load time.
/// Off by default: log records cost ring-buffer space on hot paths. Enabled
/// when the agent's own filter enables debug for `sonde::ebpf`.
pub fn kernel_log_level(debug: bool) -> u8 {
    if debug {
        aya_log::Level::Debug as u8
    } else {
        0
    }
}

/// Loads `obj`, patching the kernel-side log level.
pub fn load(obj: Object, log_level: u8) -> Result<Ebpf, LoadError> {
    load_with(obj, &log_level, |_| {})
}

/// Like [`load`], letting the collector size maps or patch its own globals
/// (from its config) before the object is loaded.
pub fn load_with<'a>(
    obj: Object,
    log_level: &'a u8,
    configure: impl FnOnce(&mut EbpfLoader<'a>),
) -> Result<Ebpf, LoadError> {
    if obj.bytes.is_empty() {
        return Err(LoadError::NotBuilt(obj.name));
    }
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, log_level, false);
    configure(&mut loader);
    loader.load(obj.bytes).map_err(|source| LoadError::Load {
        name: obj.name,
        source,
    })
}

/// Forwards the object's aya-log records into our `tracing` logs, when the
/// object has a log map at all (objects with no log statement have none).
pub fn spawn_kernel_logger(ebpf: &mut Ebpf, obj: &'static str) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::trace!(object = obj, "no kernel log forwarding: {e}");
            return;
        }
    };
    let Ok(mut fd) = async_fd(logger) else {
        tracing::debug!(object = obj, "cannot poll kernel log ring buffer");
        return;
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// Registers a map's fd (ring buffer, log buffer) with the tokio reactor.
pub fn async_fd<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: the maps we register (aya `RingBuf`, `EbpfLogger`) own their
    // file descriptor for their whole life and never swap it, and `AsyncFd`
    // owns `inner`, so the fd stays open and the same while registered.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE)
    }
    .map_err(std::io::Error::from)
}
