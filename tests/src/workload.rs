//! Building and running test workloads (C sources under tests/workloads/).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
};

/// Compiles `tests/workloads/<name>.c` with `flags` into the target dir,
/// once per flag set, and returns the binary's path.
pub fn build_c(name: &str, flags: &[&str]) -> PathBuf {
    // Tests of one binary run in parallel and share workloads. Rebuilding a
    // binary another test is running replaced its file under it: the
    // running process then maps a deleted file, which the agent cannot
    // open to unwind (an off-CPU test lost `sonde_wl_block` for 60 s), and
    // a test spawning it mid-write failed. So: one build at a time, only
    // when the source is newer, into a temporary file renamed into place.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let root = crate::workspace_root();
    let src = root.join("tests/workloads").join(format!("{name}.c"));
    let tag: String = flags
        .concat()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let dir = root.join("target/workloads");
    std::fs::create_dir_all(&dir).expect("mkdir target/workloads");
    let out = dir.join(format!("{name}-{tag}"));
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(built), Some(source)) = (mtime(&out), mtime(&src))
        && built >= source
    {
        return out;
    }
    let tmp = dir.join(format!("{name}-{tag}.tmp{}", std::process::id()));
    let status = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("gcc is installed by `cargo xtask test`");
    assert!(status.success(), "compiling {} failed", src.display());
    std::fs::rename(&tmp, &out).expect("rename the built workload into place");
    out
}

/// Copies the executable `src` to `dst`, to run it under another name.
///
/// The copy is written by a `cp` child, never through a file descriptor of
/// this process: tests of one binary run in parallel, and a test that
/// forked a child while this one held `dst` open for writing left that
/// descriptor open in the child until its exec; spawning `dst` in that
/// window failed with ETXTBSY ("Text file busy", `top` in a whole-suite run
/// of 2026-12-07). Once `cp` has exited, nothing can hold it for writing.
pub fn copy_exe(src: &Path, dst: &Path) {
    let status = Command::new("cp")
        .arg("--")
        .arg(src)
        .arg(dst)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp {} {} failed",
        src.display(),
        dst.display()
    );
}

/// Spawns a workload; the returned guard kills it when dropped.
pub struct Workload(pub Child);

impl Workload {
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(cmd.spawn().expect("spawn workload"))
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
