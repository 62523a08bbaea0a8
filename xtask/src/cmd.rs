//! Running commands with clear messages.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Runs `cmd`, failing with the command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Whether `cmd` runs and exits 0 (output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_env(args, &[])
}

pub fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    // `+toolchain` only works through the rustup proxy, not $CARGO.
    let cargo = match (args.first(), std::env::var("CARGO")) {
        (Some(a), _) if a.starts_with('+') => "cargo".to_owned(),
        (_, Ok(c)) => c,
        _ => "cargo".to_owned(),
    };
    let mut c = Command::new(cargo);
    c.args(args).current_dir(workspace_root());
    for (k, v) in env {
        c.env(k, v);
    }
    run(&mut c)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs `bin args` as root: directly when we are root, else through sudo.
pub fn exec_privileged(bin: &Path, args: &[String]) -> Result<()> {
    let mut c = if is_root() {
        Command::new(bin)
    } else {
        eprintln!("xtask: the agent needs root; using sudo");
        let mut c = Command::new("sudo");
        c.arg("-E").arg(bin);
        c
    };
    c.args(args);
    run(&mut c)
}

/// Runs `cargo test ...`, streaming its output, then prints one closing line
/// `tests: N passed, M failed, K skipped` summed over every test binary
/// (cargo prints one summary per binary, the last of which is often a
/// doc-test run of zero tests).
pub fn cargo_test_summarized(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(args)
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().with_context(|| format!("cannot start {c:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |key: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(key)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += num("passed");
            failed += num("failed");
            ignored += num("ignored");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(())
}
