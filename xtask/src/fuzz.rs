//! Bounded fuzzing in the test suite: builds tests/fuzz with cargo-fuzz
//! (libFuzzer with debug assertions; no sanitizer by default, since the
//! instrumented build of the whole agent would take most of the suite's
//! time budget — `SONDE_FUZZ_SANITIZER=address` for the long runs in
//! docs/reliability.md) and runs every target for a fixed time. A crash fails the suite; libFuzzer leaves the input in
//! tests/fuzz/artifacts/<target>/ and the log says how to replay it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{run, workspace_root};

/// Seconds each target runs in `cargo xtask test` (override:
/// `SONDE_FUZZ_SECONDS`). docs/reliability.md has the long-run command.
const DEFAULT_SECONDS: u64 = 10;

/// The fuzz crate, relative to the workspace root.
const FUZZ_DIR: &str = "tests/fuzz";
/// Build output and the growing corpora (outside git), relative to the root.
const TARGET_DIR: &str = "target/fuzz";

/// C workloads whose binaries seed the unwind-table target with real ELF
/// files (gcc -O2, with and without frame pointers).
const ELF_SEEDS: &[&str] = &["unwind_chain.c", "sleeper.c", "profile_abc.c"];

/// The fuzz build, started in the background at the lowest CPU priority so
/// that it uses the cores the test suite leaves idle (most e2e tests wait on
/// agents and workloads). On a cold clone the instrumented build of the
/// agent library takes about 4 minutes of the suite's 30. A Ctrl-C of
/// `cargo xtask test` leaves it to finish on its own (its own process group).
pub struct Build {
    /// `None` once waited for.
    child: Option<std::process::Child>,
    started: Instant,
    log: PathBuf,
}

/// Starts the fuzz build in the background when some target's name contains
/// `filter` (see [`run_targets`]); its output goes to target/fuzz/build.log.
/// [`run_targets`] waits for it; dropping it stops it.
pub fn start_build(filter: Option<&str>) -> Result<Option<Build>> {
    let root = workspace_root();
    if chosen(&list(&root.join(FUZZ_DIR))?, filter).is_empty() {
        return Ok(None);
    }
    let target_dir = root.join(TARGET_DIR);
    std::fs::create_dir_all(&target_dir)?;
    let log = target_dir.join("build.log");
    let out = std::fs::File::create(&log)?;
    let mut c = fuzz_cmd(&root.join(FUZZ_DIR), "build", &target_dir, true);
    c.stdout(out.try_clone()?).stderr(out);
    eprintln!(
        "xtask: building the fuzz targets in the background (nice 19; log: {})",
        log.display()
    );
    // Its own process group, so that stopping it (Drop) also stops the
    // `cargo build` that cargo-fuzz runs under it.
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let child = c.spawn().context("cannot start the fuzz build")?;
    Ok(Some(Build {
        child: Some(child),
        started: Instant::now(),
        log,
    }))
}

/// The targets whose name contains `filter` (all for `None` or "fuzz").
fn chosen<'a>(targets: &'a [String], filter: Option<&str>) -> Vec<&'a String> {
    targets
        .iter()
        .filter(|t| filter.is_none_or(|f| f == "fuzz" || t.contains(f)))
        .collect()
}

impl Build {
    /// Waits for the build; on failure the error carries its log's end.
    fn wait(mut self) -> Result<std::time::Duration> {
        let mut child = self.child.take().context("fuzz build already waited for")?;
        let status = child.wait()?;
        if !status.success() {
            bail!("the fuzz build failed ({status}):\n{}", tail(&self.log, 60));
        }
        Ok(self.started.elapsed())
    }
}

impl Drop for Build {
    /// An early error (a lint, the build) must not leave it running.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.wait();
        }
    }
}

/// Runs the targets whose name contains `filter` (every one when `filter` is
/// `None` or "fuzz"), each for a bounded time, after `build` (or a build in
/// the foreground when there is none). Each target's libFuzzer output goes
/// to target/fuzz/logs/<target>.log; the console gets one line per target,
/// and the log's end when a target crashes.
pub fn run_targets(filter: Option<&str>, build: Option<Build>) -> Result<()> {
    let root = workspace_root();
    let dir = root.join(FUZZ_DIR);
    let targets = list(&dir)?;
    let chosen = chosen(&targets, filter);
    if chosen.is_empty() {
        return Ok(());
    }
    let seconds: u64 = match std::env::var("SONDE_FUZZ_SECONDS") {
        Ok(s) => s.parse().context("SONDE_FUZZ_SECONDS must be a number")?,
        Err(_) => DEFAULT_SECONDS,
    };
    let target_dir = root.join(TARGET_DIR);
    let t0 = Instant::now();
    let build = match build {
        Some(b) => b,
        None => start_build(filter)?.context("no fuzz target to build")?,
    };
    let built = build.wait()?;
    eprintln!(
        "xtask: fuzz build done ({:.0} s since it started, {:.0} s waited for)",
        built.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    elf_seeds(&root, &target_dir.join("seeds/unwind_table"))?;
    let logs = target_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut failed = Vec::new();
    for t in &chosen {
        let corpus = target_dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let log = logs.join(format!("{t}.log"));
        let out = std::fs::File::create(&log)?;
        let mut c = fuzz_cmd(&dir, "run", &target_dir, false);
        c.arg(t.as_str()).arg(&corpus);
        for seeds in [dir.join("seeds").join(t), target_dir.join("seeds").join(t)] {
            if seeds.is_dir() {
                c.arg(seeds);
            }
        }
        c.args([
            "--",
            &format!("-max_total_time={seconds}"),
            // One input taking this long is a hang: report it as a crash.
            "-timeout=20",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ]);
        c.stdout(out.try_clone()?).stderr(out);
        match run(&mut c) {
            Ok(()) => eprintln!("xtask: fuzzed {t} for {seconds} s: {}", done_line(&log)),
            Err(e) => {
                eprintln!("xtask: fuzz target {t} failed: {e:#}\n{}", tail(&log, 60));
                failed.push(t.as_str());
            }
        }
    }
    eprintln!(
        "xtask: fuzzing: {} target(s) x {seconds} s, {:.0} s after the tests (logs: {})",
        chosen.len(),
        t0.elapsed().as_secs_f64(),
        logs.display()
    );
    if !failed.is_empty() {
        bail!(
            "fuzz target(s) crashed: {} (inputs in {FUZZ_DIR}/artifacts/; docs/reliability.md says how to replay)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// libFuzzer's closing "Done N runs in S second(s)" line of a log.
fn done_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| l.starts_with("Done "))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "no summary line in its log".into())
}

/// The last `n` lines of a file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `cargo +nightly fuzz <sub> --target-dir <target_dir>`, run in the fuzz
/// crate; under `nice -n 19` when `low_priority`.
fn fuzz_cmd(dir: &Path, sub: &str, target_dir: &Path, low_priority: bool) -> Command {
    let sanitizer = std::env::var("SONDE_FUZZ_SANITIZER").unwrap_or_else(|_| "none".into());
    let mut c = if low_priority {
        let mut c = Command::new("nice");
        c.args(["-n", "19", "cargo"]);
        c
    } else {
        Command::new("cargo")
    };
    c.args([
        "+nightly",
        "fuzz",
        sub,
        "--sanitizer",
        &sanitizer,
        "--target-dir",
    ])
    .arg(target_dir)
    .current_dir(dir)
    // The fuzz crate uses the sonde library only: no eBPF objects needed.
    .env("AYA_BUILD_SKIP", "1");
    c
}

/// Target names, from `cargo fuzz list`.
fn list(dir: &Path) -> Result<Vec<String>> {
    let out = Command::new("cargo")
        .args(["+nightly", "fuzz", "list"])
        .current_dir(dir)
        .output()
        .context("cannot run `cargo +nightly fuzz list`")?;
    if !out.status.success() {
        bail!(
            "`cargo fuzz list` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Compiles the seed ELF files of the unwind-table target (once).
fn elf_seeds(root: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    for src in ELF_SEEDS {
        let stem = src.trim_end_matches(".c");
        for (suffix, flags) in [
            ("fp", "-fno-omit-frame-pointer"),
            ("nofp", "-fomit-frame-pointer"),
        ] {
            let bin = out.join(format!("{stem}-{suffix}"));
            if bin.exists() {
                continue;
            }
            run(Command::new("gcc")
                .args(["-O2", "-g0", flags, "-o"])
                .arg(&bin)
                .arg(root.join("tests/workloads").join(src))
                .arg("-lpthread"))?;
        }
    }
    Ok(())
}
