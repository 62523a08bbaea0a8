//! sonde's eBPF objects: one per collector, each a binary under `src/bin/`.
//! Each hook family lives in its own file or directory here (`http/`,
//! `memory.rs`, ...), the traced machine's ABI facts in `arch/`, and each
//! binary includes, with `#[path]`, only the files it uses.
//!
//! Why not modules of this library: a `#[map]` static is kept in every
//! object that links the crate defining it, whether its programs use it or
//! not, and the loader creates every map an object holds. With the families
//! as modules here, each of the seven objects carried all 56 maps: the
//! default agent held 280 maps and 742 MiB of kernel memory (bpftool's
//! bytes_memlock; VmallocUsed 764 MB with the agent, 21 MB without), 130
//! MiB of it five idle copies of the allocation tracker's live map. This
//! crate now only holds the panic handler every object needs.
#![no_std]

// Host builds (`cargo clippy --workspace`) get their panic handler from std,
// which sonde-common links there (its `user` feature, unified across the
// workspace); it holds no maps, so BPF objects are unchanged by this.
use sonde_common as _;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here, so this loop is
    // never executed; it only satisfies the `no_std` contract.
    loop {}
}
