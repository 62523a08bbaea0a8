//! Building and running test workloads (C sources under tests/workloads/).

use std::{
    path::PathBuf,
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
