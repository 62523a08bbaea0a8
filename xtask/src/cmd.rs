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
/// doc-test run of zero tests). On failure the error names every failed test
/// and carries the end of each one's output, so that the last lines of a long
/// log (all a CI page may show) say what failed and why.
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
    let mut tally = Tally::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        tally.line(&line);
    }
    let status = child.wait()?;
    println!(
        "tests: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    if !status.success() {
        bail!("cargo test failed with {status}{}", tally.failures());
    }
    Ok(())
}

/// What a `cargo test` log says, read line by line.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// `(test, last lines of its captured output)`, in order of failure.
    failures: Vec<(String, Vec<String>)>,
    /// The test whose `---- name stdout ----` block is being read.
    in_block: Option<usize>,
}

/// Lines of each failed test's output kept for the closing report.
const KEEP_LINES: usize = 25;

impl Tally {
    fn line(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("test result: ") {
            self.in_block = None;
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
            self.passed += num("passed");
            self.failed += num("failed");
            self.ignored += num("ignored");
        } else if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            self.failures.push((name.to_owned(), Vec::new()));
            self.in_block = Some(self.failures.len() - 1);
        } else if line == "failures:" || line.starts_with("test ") {
            self.in_block = None;
        } else if let Some(i) = self.in_block {
            let kept = &mut self.failures[i].1;
            kept.push(line.to_owned());
            if kept.len() > KEEP_LINES {
                kept.remove(0);
            }
        }
    }

    /// The failed tests and the end of each one's output, for the error.
    fn failures(&self) -> String {
        let mut out = String::new();
        for (name, lines) in &self.failures {
            out.push_str(&format!(
                "\n\n==== FAILED: {name} (last lines of its output)\n"
            ));
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        if !self.failures.is_empty() {
            let names: Vec<&str> = self.failures.iter().map(|(n, _)| n.as_str()).collect();
            out.push_str(&format!("\nfailed tests: {}", names.join(", ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_names_failures_and_keeps_their_output() {
        let mut t = Tally::default();
        for l in [
            "running 2 tests",
            "test a::ok ... ok",
            "test a::bad ... FAILED",
            "",
            "failures:",
            "",
            "---- a::bad stdout ----",
            "thread 'a::bad' panicked at tests/a.rs:3:5:",
            "boom",
            "",
            "failures:",
            "    a::bad",
            "",
            "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        ] {
            t.line(l);
        }
        assert_eq!((t.passed, t.failed, t.ignored), (1, 1, 0));
        let report = t.failures();
        assert!(report.contains("==== FAILED: a::bad"), "{report}");
        assert!(report.contains("boom"), "{report}");
        assert!(!report.contains("    a::bad\n"), "{report}");
        assert!(report.ends_with("failed tests: a::bad"), "{report}");
    }
}
