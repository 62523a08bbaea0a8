//! Making a fresh machine ready: the eBPF toolchain and test dependencies.
//! Every step checks first and does nothing when already done.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, run, succeeds};

/// bpf-linker version known to work with the nightly's LLVM 22 here.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// cargo-fuzz version the fuzz targets (tests/fuzz) are run with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Pinned Python packages of the tests, relative to the workspace root.
pub const PYTHON_REQUIREMENTS: &str = "tests/requirements.txt";

/// Debian packages the test suite uses (peers, workloads, inspection).
const TEST_PACKAGES: &[(&str, &str)] = &[
    // (command that proves it is installed, package)
    ("bpftool", "bpftool"),
    ("gcc", "gcc"),
    ("strace", "strace"),
    ("curl", "curl"),
    // The profiler's reference sampler (tests/tests/profile.rs).
    ("perf", "linux-perf"),
    // Workloads and tools from tests/requirements.txt.
    ("python3", "python3"),
    ("pip3", "python3-pip"),
    // The bench harness test and the HTTP tests (tests/tests/http.rs) drive these.
    ("bpftrace", "bpftrace"),
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    // Alerting end to end (tests/tests/alerts.rs, tests/tests/prometheus.rs).
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("prometheus-alertmanager", "prometheus-alertmanager"),
    // Deployment tests (tests/tests/{deploy,systemd,identity}.rs).
    ("kubectl", "kubectl"),
    ("systemd-analyze", "systemd"),
    ("openssl", "openssl"),
    ("setpriv", "util-linux"),
];

pub fn setup() -> Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("cannot run rustc +nightly; is rustup installed?")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain: `rustup toolchain install nightly` ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn ensure_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing rust-src for the nightly toolchain (needed for -Z build-std=core)"
    );
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// aya-build runs bpf-linker through `rustup run nightly`, as we check here.
fn bpf_linker_works() -> bool {
    succeeds(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"]))
}

fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let cargo_bin = home_cargo_bin();
    // There is no prebuilt bpf-linker for this LLVM, and no LLVM dev package:
    // build it against the libLLVM shipped inside the nightly toolchain.
    let sysroot = nightly_sysroot()?;
    let lib = std::fs::read_dir(sysroot.join("lib"))
        .context("reading the nightly sysroot")?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") || n.starts_with("libLLVM-"))
        })
        .context("the nightly toolchain ships no libLLVM shared library")?;
    // bpf-linker's build wants `$LLVM_PREFIX/lib/libLLVM.so`; the binary it
    // makes records this directory as its runpath and needs the soname there.
    // Keep it outside target/ so `cargo clean` cannot break the linker.
    let prefix = home_cargo_bin().with_file_name("sonde-llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let soname = lib.file_name().context("libLLVM path has no file name")?;
    for link in [
        prefix.join("lib/libLLVM.so"),
        prefix.join("lib").join(soname),
    ] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("linking {} to {}", link.display(), lib.display()))?;
    }
    let major = llvm_major(&lib).unwrap_or(22);
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        lib.display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "--force",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix))?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was built but does not run; is {} on PATH?",
            cargo_bin.display()
        );
    }
    Ok(())
}

fn home_cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// `libLLVM.so.22.1-rust-...` → 22.
fn llvm_major(lib: &Path) -> Option<u32> {
    let name = lib.file_name()?.to_str()?;
    let rest = name
        .strip_prefix("libLLVM.so.")
        .or_else(|| name.strip_prefix("libLLVM-"))?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Debian packages the benchmarks use (peers, load generators, and
/// bpftool, which reads the kernel's per-program run time).
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("bpftrace", "bpftrace"),
    ("gcc", "gcc"),
    ("nginx", "nginx"),
    ("wrk", "wrk"),
];

/// Installs what the tests use, when missing: Debian packages (as root),
/// the pinned Python packages, and cargo-fuzz.
pub fn test_dependencies() -> Result<()> {
    install_missing(TEST_PACKAGES)?;
    python_requirements()?;
    ensure_cargo_fuzz()
}

/// `pip install -r tests/requirements.txt` into the `python3` on PATH (the
/// one the tests run). pip only reaches the registry for what is missing or
/// at another version, so this is quick when all is in place.
fn python_requirements() -> Result<()> {
    let req = cmd::workspace_root().join(PYTHON_REQUIREMENTS);
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--root-user-action=ignore",
    ]);
    // Debian's own python3 refuses pip installs outside a venv (PEP 668);
    // the tests run the system interpreter, so install into it anyway.
    if succeeds(Command::new("python3").args([
        "-c",
        "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))",
    ])) {
        pip.arg("--break-system-packages");
    }
    run(pip.arg("--requirement").arg(&req))
        .with_context(|| format!("installing the Python packages of {PYTHON_REQUIREMENTS}"))
}

fn cargo_fuzz_works() -> bool {
    succeeds(Command::new("cargo").args(["+nightly", "fuzz", "--version"]))
}

fn ensure_cargo_fuzz() -> Result<()> {
    if cargo_fuzz_works() {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
    run(Command::new("cargo").args([
        "install",
        "--locked",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))?;
    if !cargo_fuzz_works() {
        bail!("cargo-fuzz was installed but `cargo +nightly fuzz` does not run");
    }
    Ok(())
}

pub fn bench_dependencies() -> Result<()> {
    install_missing(BENCH_PACKAGES)
}

fn install_missing(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(bin, _)| !succeeds(Command::new("sh").args(["-c", &format!("command -v {bin}")])))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "the tests need these Debian packages: {} (run as root to install them)",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
