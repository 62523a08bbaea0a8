//! Memory: tier 1, the always-on `memory` collector (heap and mapping
//! growth by stack from the mmap lock and sampled page faults), and
//! tier 2, `sonde alloc` sessions (exact malloc tracking on one process
//! for a bounded time).

pub mod growth;
pub mod kernel_layout;
pub mod libc;
pub mod probe_point;
pub mod pyalloc;
pub mod render;
pub mod session;
pub mod store;
