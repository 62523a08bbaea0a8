//! `cargo xtask dist`: the release tarball
//! `target/dist/sonde-<version>-<arch>-linux.tar.gz`:
//!
//! ```text
//! sonde-<version>-<arch>-linux/
//!   bin/sonde
//!   share/sonde/sonde.service     systemd unit (deploy/systemd)
//!   share/sonde/sonde.toml        default config (deploy/config)
//!   share/doc/sonde/*.md          README and docs/
//! ```
//!
//! Packaging is separate from building so the test suite can package the
//! debug binary it already has (tests/tests/deploy.rs includes this file).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Files copied as is: (source under the workspace root, destination under
/// the package directory).
const FILES: &[(&str, &str)] = &[
    ("deploy/systemd/sonde.service", "share/sonde/sonde.service"),
    ("deploy/config/sonde.toml", "share/sonde/sonde.toml"),
    ("README.md", "share/doc/sonde/README.md"),
];

/// The package's base name for `version` on this machine's architecture.
pub fn package_name(version: &str) -> String {
    format!("sonde-{version}-{}-linux", std::env::consts::ARCH)
}

/// Stages `binary` and the shipped files under `out_dir` and tars them.
/// Returns the tarball's path.
pub fn package(
    root: &Path,
    binary: &Path,
    version: &str,
    out_dir: &Path,
) -> Result<PathBuf, String> {
    let name = package_name(version);
    let stage = out_dir.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    }
    let copy = |from: &Path, to: &str, mode: u32| -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let dest = stage.join(to);
        std::fs::create_dir_all(dest.parent().expect("has a parent"))
            .map_err(|e| format!("{}: {e}", dest.display()))?;
        std::fs::copy(from, &dest).map_err(|e| format!("copy {}: {e}", from.display()))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", dest.display()))
    };
    copy(binary, "bin/sonde", 0o755)?;
    for (from, to) in FILES {
        copy(&root.join(from), to, 0o644)?;
    }
    let docs = root.join("docs");
    let mut md: Vec<PathBuf> = std::fs::read_dir(&docs)
        .map_err(|e| format!("{}: {e}", docs.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    md.sort();
    for p in md {
        let file = p
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        copy(&p, &format!("share/doc/sonde/{file}"), 0o644)?;
    }
    let tarball = out_dir.join(format!("{name}.tar.gz"));
    // Reproducible-ish: fixed owner and sorted names.
    let status = Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-czf",
        ])
        .arg(&tarball)
        .arg("-C")
        .arg(out_dir)
        .arg(&name)
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !status.success() {
        return Err(format!("tar failed with {status}"));
    }
    std::fs::remove_dir_all(&stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    Ok(tarball)
}
