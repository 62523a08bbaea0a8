//! Building and running test workloads (C sources under tests/workloads/).

use std::{
    path::PathBuf,
    process::{Child, Command},
};

/// Compiles `tests/workloads/<name>.c` with `flags` into the target dir,
/// once per flag set, and returns the binary's path.
pub fn build_c(name: &str, flags: &[&str]) -> PathBuf {
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
    let status = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc is installed by `cargo xtask test`");
    assert!(status.success(), "compiling {} failed", src.display());
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
