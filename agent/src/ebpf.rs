//! The eBPF objects embedded in the binary, and how they are loaded.
//!
//! There is one object per collector (see docs/ARCHITECTURE.md): a map or
//! program that one kernel rejects then costs only that collector. Each
//! collector names its object in its own module with [`object!`]; the ones
//! used outside a collector are here.

use std::sync::OnceLock;

use aya::{Btf, Ebpf, EbpfLoader};

/// An object built by agent/build.rs from `ebpf/sonde-ebpf/src/bin/<name>.rs`.
#[derive(Clone, Copy, Debug)]
pub struct Object {
    pub name: &'static str,
    bytes: &'static [u8],
}

impl Object {
    pub const fn new(name: &'static str, bytes: &'static [u8]) -> Self {
        Self { name, bytes }
    }
}

/// The object built from `ebpf/sonde-ebpf/src/bin/$name.rs`
/// (agent/build.rs builds every one of them).
macro_rules! object {
    ($name:literal) => {
        $crate::ebpf::Object::new(
            $name,
            aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/", $name)),
        )
    };
}
pub(crate) use object;

pub const PROBE: Object = object!("sonde-probe");

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

/// The kernel's BTF (/sys/kernel/btf/vmlinux), read once at start-up and
/// lent to the feature probe and every collector: aya's parse for tp_btf loads (made on first
/// use), the raw bytes for scans of struct layouts. The daemon drops it
/// once every collector has started.
pub struct KernelBtf {
    raw: Result<Vec<u8>, String>,
    parsed: OnceLock<Result<Btf, String>>,
}

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

impl KernelBtf {
    pub fn read() -> Self {
        Self {
            raw: std::fs::read(VMLINUX_BTF).map_err(|e| format!("reading {VMLINUX_BTF}: {e}")),
            parsed: OnceLock::new(),
        }
    }

    /// No BTF, for loads after start-up that need none (raw and classic
    /// tracepoints: on-demand syscall accounting); `why` is the error a
    /// caller that did need it would see.
    pub fn not_read(why: &str) -> Self {
        Self {
            raw: Err(why.to_owned()),
            parsed: OnceLock::new(),
        }
    }

    /// The raw BTF blob, or why it could not be read.
    pub fn raw(&self) -> Result<&[u8], &str> {
        self.raw.as_deref().map_err(String::as_str)
    }

    /// aya's parse, for `BtfTracePoint::load`, or why there is none.
    pub fn aya(&self) -> Result<&Btf, &str> {
        self.parsed
            .get_or_init(|| {
                let raw = self.raw.as_deref().map_err(|e| e.clone())?;
                Btf::parse(raw, aya::Endianness::default())
                    .map_err(|e| format!("cannot parse kernel BTF: {e}"))
            })
            .as_ref()
            .map_err(String::as_str)
    }
}
