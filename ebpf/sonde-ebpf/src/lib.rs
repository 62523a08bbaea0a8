//! Code shared by sonde's eBPF objects. Each object (one per collector) is a
//! binary under `src/bin/`; each hook family lives in its own module here.
#![no_std]

pub mod alloc;
pub mod counters;
pub mod http;
pub mod memory;
pub mod process;
pub mod profile;
mod regs;
pub mod syscalls;
pub mod syscalls_bench;
pub mod unwind;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here, so this loop is
    // never executed; it only satisfies the `no_std` contract.
    loop {}
}
