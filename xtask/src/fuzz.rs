//! Bounded fuzzing in the test suite: builds tests/fuzz with cargo-fuzz
//! (libFuzzer with debug assertions; no sanitizer by default, since the
//! instrumented build of the whole agent would take most of the suite's
//! time budget — `SONDE_FUZZ_SANITIZER=address` for the long runs in
//! docs/reliability.md) and runs every target for a fixed time. A crash fails the suite; libFuzzer leaves the input in
//! tests/fuzz/artifacts/<target>/ and the log says how to replay it.

use std::{path::Path, process::Command, time::Instant};

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

/// Builds the targets and runs those whose name contains `filter` (every
/// one when `filter` is `None` or "fuzz"), each for a bounded time.
pub fn run_targets(filter: Option<&str>) -> Result<()> {
    let root = workspace_root();
    let dir = root.join(FUZZ_DIR);
    let targets = list(&dir)?;
    let chosen: Vec<&String> = targets
        .iter()
        .filter(|t| filter.is_none_or(|f| f == "fuzz" || t.contains(f)))
        .collect();
    if chosen.is_empty() {
        return Ok(());
    }
    let seconds: u64 = match std::env::var("SONDE_FUZZ_SECONDS") {
        Ok(s) => s.parse().context("SONDE_FUZZ_SECONDS must be a number")?,
        Err(_) => DEFAULT_SECONDS,
    };
    let target_dir = root.join(TARGET_DIR);
    let t0 = Instant::now();
    eprintln!("xtask: building the fuzz targets ({FUZZ_DIR})");
    run(&mut fuzz_cmd(&dir, "build", &target_dir))?;
    let built = t0.elapsed();
    elf_seeds(&root, &target_dir.join("seeds/unwind_table"))?;
    let mut failed = Vec::new();
    for t in &chosen {
        let corpus = target_dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let mut c = fuzz_cmd(&dir, "run", &target_dir);
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
        eprintln!("xtask: fuzzing {t} for {seconds} s");
        if let Err(e) = run(&mut c) {
            eprintln!("xtask: fuzz target {t} failed: {e:#}");
            failed.push(t.as_str());
        }
    }
    eprintln!(
        "xtask: fuzzing: build {:.0} s, {} target(s) x {seconds} s, {:.0} s in all",
        built.as_secs_f64(),
        chosen.len(),
        t0.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!(
            "fuzz target(s) crashed: {} (inputs in {FUZZ_DIR}/artifacts/; docs/reliability.md says how to replay)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// `cargo +nightly fuzz <sub> --target-dir <target_dir>`, run in the fuzz crate.
fn fuzz_cmd(dir: &Path, sub: &str, target_dir: &Path) -> Command {
    let sanitizer = std::env::var("SONDE_FUZZ_SANITIZER").unwrap_or_else(|_| "none".into());
    let mut c = Command::new("cargo");
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
