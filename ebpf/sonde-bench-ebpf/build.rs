//! Rebuild the eBPF objects when bpf-linker changes: the linker is part of
//! the toolchain for this crate but cargo cannot see it.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
