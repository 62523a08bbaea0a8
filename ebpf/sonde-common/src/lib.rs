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
pub mod offcpu;
pub mod process;
pub mod profile;
pub mod python;
pub mod route;
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

/// A set of kernel counters: the slots of a per-CPU `u64` array, each with
/// the label the agent exports it under. Implemented by [`counters!`].
pub trait CounterSet: Copy + 'static {
    /// Every counter, in slot order.
    const ALL: &'static [Self];
    /// The counter's slot in the array.
    fn index(self) -> u32;
    /// The label the agent exports the counter under.
    fn label(self) -> &'static str;
}

/// Declares a counter enum once: `#[repr(u32)]` with explicit values (the
/// ABI), the number of slots as a `u32` constant (to size the map), and the
/// label of each counter, so that neither side lists them again. Values
/// must run 0, 1, 2, ... in order (checked at compile time).
///
/// ```text
/// counters! {
///     pub enum FooCounter [FOO_COUNTERS] {
///         /// Docs of the slot.
///         RingbufFull = 0 => "ringbuf_full",
///     }
/// }
/// ```
#[macro_export]
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident [$count:ident] {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value ),+
        }

        /// Number of slots in the counter array.
        $vis const $count: u32 = [$($value),+].len() as u32;

        impl $name {
            pub const ALL: [Self; $count as usize] = [$(Self::$variant),+];
            pub const LABELS: [&'static str; $count as usize] = [$($label),+];

            pub const fn label(self) -> &'static str {
                Self::LABELS[self as usize]
            }
        }

        impl $crate::CounterSet for $name {
            const ALL: &'static [Self] = &$name::ALL;
            fn index(self) -> u32 {
                self as u32
            }
            fn label(self) -> &'static str {
                $name::label(self)
            }
        }

        const _: () = {
            let mut i = 0;
            while i < $count as usize {
                assert!($name::ALL[i] as u32 == i as u32, "counter values must be 0, 1, 2, ...");
                i += 1;
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::CounterSet;

    /// Labels are what the agent exports: within a set they must be unique.
    fn unique_labels<C: CounterSet>() {
        for (i, a) in C::ALL.iter().enumerate() {
            assert_eq!(a.index() as usize, i);
            for b in &C::ALL[i + 1..] {
                assert_ne!(a.label(), b.label());
            }
        }
    }

    #[test]
    fn every_counter_set_has_unique_labels_in_slot_order() {
        unique_labels::<crate::http::HttpCounter>();
        unique_labels::<crate::process::ProcessCounter>();
        unique_labels::<crate::syscalls::SyscallCounter>();
        unique_labels::<crate::memory::MemCounter>();
        unique_labels::<crate::memory::AllocCounter>();
        unique_labels::<crate::profile::ProfileCounter>();
        unique_labels::<crate::unwind::UnwindCounter>();
        assert_eq!(crate::http::HTTP_COUNTERS, 8);
        assert_eq!(crate::memory::ALLOC_COUNTERS, 15);
    }
}
