//! Facts about the traced machine's ABI that the programs hard-code: the
//! layout of `struct pt_regs` and of the signal frame, syscall numbers,
//! errno values, and the few user/kernel struct offsets read by hand. They
//! are the same for every program of one build, so they live here and
//! nowhere else; a family file names them as `crate::arch::...` and its
//! object includes this module with `#[path]`, as it does the family file.
//!
//! The guard is keyed on `bpf_target_arch`, not `target_arch`: the objects
//! are compiled for the `bpf` target whatever machine they will run on, so
//! `target_arch` says nothing about the traced ABI. aya-build passes
//! `--cfg bpf_target_arch="<arch of the agent being built>"` when it builds
//! the objects from agent/build.rs, and the kernel crates' build scripts
//! call `aya_build::emit_bpf_target_arch_cfg`, which sets the same cfg when
//! they are built by hand (from `AYA_BPF_TARGET_ARCH`, else the build
//! host's arch) and on host `cargo clippy` runs. An agent built for another
//! architecture thus fails to build its objects with the message below
//! instead of shipping programs that read the wrong registers.

#[cfg(bpf_target_arch = "x86_64")]
mod x86_64;
#[cfg(bpf_target_arch = "x86_64")]
pub(crate) use x86_64::*;

#[cfg(not(bpf_target_arch = "x86_64"))]
compile_error!(
    "sonde's eBPF programs only know the x86_64 ABI (ebpf/sonde-ebpf/src/arch/x86_64.rs); \
     add an arch module for this bpf_target_arch"
);
