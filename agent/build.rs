//! Builds the eBPF objects (ebpf/sonde-ebpf) with aya-build and embeds them.
//!
//! With `AYA_BUILD_SKIP=1` no object is built (for `cargo check`, clippy on
//! machines without bpf-linker, docs); we then write empty placeholders so the
//! agent still compiles, and it refuses at run time with a clear message.
//! Otherwise an object missing after the build (a `[[bin]]` of sonde-ebpf
//! that produced nothing) fails the build, naming it; a collector naming an
//! object that is no `[[bin]]` fails to compile (`include_bytes!`).

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result, bail};

/// The objects the agent embeds: the `[[bin]]` targets of sonde-ebpf, by
/// name, read from its manifest so that a new object is declared there
/// only.
fn objects(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin
            && let Some(v) = line.strip_prefix("name")
            && let Some(v) = v.trim_start().strip_prefix('=')
        {
            out.push(v.trim().trim_matches('"').to_owned());
        }
    }
    out
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
    let manifest = ebpf_dir.join("Cargo.toml");
    let manifest =
        fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    for name in objects(&manifest) {
        let path = out_dir.join(&name);
        // Empty: a placeholder left by an earlier AYA_BUILD_SKIP=1 build
        // (a real object never is), which must not hide a missing object.
        if fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
            continue;
        }
        if !skipped {
            bail!("eBPF object {name} was not built: is it a [[bin]] of ebpf/sonde-ebpf?");
        }
        fs::write(&path, b"").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
