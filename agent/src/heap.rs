//! Keeps the agent's resident memory close to what it actually uses.
//!
//! glibc's allocator keeps freed memory mapped: start-up parses the kernel's
//! BTF (5 MiB on disk, several times larger once parsed) once per loaded
//! object, and a profile drain builds short-lived symbolization tables. On
//! this kernel that left about 20 MiB of free heap resident for good (VmRSS
//! 68 MiB before `malloc_trim(0)`, 44 MiB after, measured on the release
//! agent with its default collectors). So the agent caps the number of
//! arenas (fewer half-empty arenas) and hands free pages back after start-up
//! and then periodically.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often free heap is returned to the kernel. `malloc_trim` walks the
/// arenas' free lists: well under a millisecond for this agent.
const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Call before any thread is started: arenas are created per thread.
pub fn tune() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes allocator parameters; called before
        // other threads exist, as glibc recommends for M_ARENA_MAX.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Returns free heap pages to the kernel.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim is thread-safe (it takes each arena's lock)
        // and only releases memory the allocator considers free.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Trims now (start-up garbage) and then every [`TRIM_EVERY`] until shutdown.
pub fn spawn_trimmer(shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            // Off the async workers: a trim holds arena locks briefly.
            let _ = tokio::task::spawn_blocking(trim).await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(TRIM_EVERY) => {}
            }
        }
    });
}
