//! Builds the eBPF objects (ebpf/sonde-ebpf) with aya-build and embeds them.
//!
//! With `AYA_BUILD_SKIP=1` no object is built (for `cargo check`, clippy on
//! machines without bpf-linker, docs); we then write empty placeholders so the
//! agent still compiles, and it refuses at run time with a clear message.
//! Otherwise an object missing after the build (a binary of sonde-ebpf that
//! produced nothing) fails the build, naming it; a collector naming an
//! object that is no binary fails to compile (`include_bytes!`).

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// The objects the agent embeds: one per `src/bin/<name>.rs` of
/// sonde-ebpf (cargo discovers those binaries itself), so a new object is
/// declared by creating its file only.
fn objects(ebpf_dir: &Path) -> Result<Vec<String>> {
    let bin_dir = ebpf_dir.join("src/bin");
    let mut out = Vec::new();
    for entry in fs::read_dir(&bin_dir).with_context(|| format!("reading {}", bin_dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            out.push(stem.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../ebpf/sonde-ebpf");
    let common_dir = manifest_dir.join("../ebpf/sonde-common");
    // aya-build watches the kernel crate's directory; the ABI crate is a
    // dependency of it that cargo cannot see through the nested build.
    println!("cargo:rerun-if-changed={}", common_dir.display());

    let ebpf_dir = ebpf_dir
        .canonicalize()
        .context("ebpf/sonde-ebpf is missing")?;
    let root = ebpf_dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sonde-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF objects failed; run `cargo xtask setup` to install the toolchain",
    )?;

    // The same test aya-build makes.
    let skipped =
        env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    for name in objects(&ebpf_dir)? {
        let path = out_dir.join(&name);
        // Empty: a placeholder left by an earlier AYA_BUILD_SKIP=1 build
        // (a real object never is), which must not hide a missing object.
        if fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
            continue;
        }
        if !skipped {
            bail!("eBPF object {name} was not built (ebpf/sonde-ebpf/src/bin/{name}.rs)");
        }
        fs::write(&path, b"").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
