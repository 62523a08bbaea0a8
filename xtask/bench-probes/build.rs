//! Builds the benchmark-only eBPF objects (ebpf/sonde-bench-ebpf) with
//! aya-build and embeds them in the loader.
//!
//! With `AYA_BUILD_SKIP=1` no object is built (for `cargo check` and clippy
//! on machines without bpf-linker): empty placeholders then let the loader
//! compile, and it refuses at run time. Otherwise an object missing after
//! the build (a name below that is no `[[bin]]` of the kernel crate) fails
//! the build, naming it.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result, bail};

/// The objects the loader embeds; each is a `[[bin]]` of sonde-bench-ebpf.
const OBJECTS: &[&str] = &[
    "sonde-bench-syscalls",
    "sonde-bench-http",
    "sonde-bench-memory",
    "sonde-bench-alloc",
    "sonde-bench-offcpu",
];

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    // The bench binaries include family files of sonde-ebpf with `#[path]`,
    // and every object builds on the ABI crate: aya-build watches only the
    // kernel crate's own directory.
    for dep in ["../../ebpf/sonde-ebpf", "../../ebpf/sonde-common"] {
        println!(
            "cargo:rerun-if-changed={}",
            manifest_dir.join(dep).display()
        );
    }
    let ebpf_dir = manifest_dir
        .join("../../ebpf/sonde-bench-ebpf")
        .canonicalize()
        .context("ebpf/sonde-bench-ebpf is missing")?;
    let root = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sonde-bench-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the benchmark eBPF objects failed; run `cargo xtask setup` to install the \
         toolchain",
    )?;

    // The same test aya-build makes.
    let skipped =
        env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    for name in OBJECTS {
        let path = out_dir.join(name);
        // Empty: a placeholder left by an earlier AYA_BUILD_SKIP=1 build
        // (a real object never is), which must not hide a missing object.
        if fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
            continue;
        }
        if !skipped {
            bail!("eBPF object {name} was not built: is it a [[bin]] of ebpf/sonde-bench-ebpf?");
        }
        fs::write(&path, b"").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
