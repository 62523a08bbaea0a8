//! Sets `bpf_target_arch` (the traced machine's architecture, which
//! `crate::arch` of sonde-ebpf keys its ABI facts and its guard on) when
//! the build did not pass it, and rebuilds the eBPF objects when
//! bpf-linker changes: the linker is part of the toolchain for this crate
//! but cargo cannot see it.
fn main() -> aya_build::Result<()> {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // aya-build passes `--cfg bpf_target_arch` when it builds the objects
    // for the agent; otherwise this takes `AYA_BPF_TARGET_ARCH`, else the
    // build host's architecture.
    aya_build::emit_bpf_target_arch_cfg()
}
