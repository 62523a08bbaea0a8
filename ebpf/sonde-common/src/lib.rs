//! The kernel/user ABI of sonde.
//!
//! Every type that crosses the boundary between an eBPF program and the agent
//! lives here and nowhere else. Rules (see docs/ARCHITECTURE.md):
//! - `#[repr(C)]`, fields ordered so there is no implicit padding, and any
//!   padding that remains is an explicit `_pad` field;
//! - the size is asserted at compile time, so a change shows up as a build
//!   error on both sides at once;
//! - IDs that name kinds of events or errors are `#[repr(u32)]` with explicit
//!   values that are never reused.
#![no_std]

pub mod http;
pub mod memory;
pub mod process;
pub mod profile;
pub mod python;
pub mod syscalls;
pub mod unwind;

/// Length of `task_struct::comm` (TASK_COMM_LEN) in the kernel.
pub const COMM_LEN: usize = 16;

/// Implements `aya::Pod` for ABI types when built for the agent.
#[macro_export]
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `#[repr(C)]`, made only of integers and
            // byte arrays, has no implicit padding (size asserted next to its
            // definition), so every bit pattern is a valid value.
            unsafe impl aya::Pod for $t {}
        )*
    };
}
