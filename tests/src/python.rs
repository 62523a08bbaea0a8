//! Helpers of the Python profiling tests (tests/tests/python*.rs): pyenv
//! interpreters, scripts and the Python frames of folded stacks.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The 1-based line of `src` holding `marker`.
pub fn line_of(src: &str, marker: &str) -> u32 {
    src.lines()
        .position(|l| l.contains(marker))
        .expect("marker") as u32
        + 1
}

/// The interpreter binary of pyenv's `version` (e.g. `3.12.1`).
pub fn pyenv(version: &str) -> PathBuf {
    let out = Command::new("pyenv")
        .args(["prefix", version])
        .output()
        .expect("pyenv runs");
    assert!(
        out.status.success(),
        "pyenv prefix {version}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = String::from_utf8(out.stdout).expect("utf-8");
    let minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    PathBuf::from(prefix.trim()).join(format!("bin/python{minor}"))
}

/// Writes `src` to `dir/name`.
pub fn script(dir: &Path, name: &str, src: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, src).expect("write script");
    p
}

/// `qualname (file:LINE)` → (qualname, file, line) for Python frames.
pub fn py_frame(f: &str) -> Option<(&str, &str, u32)> {
    let (name, rest) = f.rsplit_once(" (")?;
    let (file, line) = rest.strip_suffix(')')?.rsplit_once(':')?;
    file.ends_with(".py")
        .then(|| line.parse().ok().map(|l| (name, file, l)))
        .flatten()
}

/// Fails unless `python` imports `modules` (pinned in tests/requirements.txt,
/// installed by `cargo xtask test` into the `python3` on PATH).
pub fn require_modules(python: &Path, modules: &str) {
    let ok = Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import {modules}: run `cargo xtask test` (it installs tests/requirements.txt), \
         or `python3 -m pip install -r tests/requirements.txt`",
        python.display()
    );
}

/// The interpreter `python3` on PATH runs (resolved through pyenv's shim):
/// the one `cargo xtask test` installs tests/requirements.txt into.
pub fn python3() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is installed by `cargo xtask test`");
    assert!(out.status.success(), "python3 does not run");
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim())
}
