//! Developer tasks for sonde. `cargo xtask --help` lists them.

mod bench;
mod bootstrap;
mod cmd;
mod dist;
mod fuzz;
mod promrule;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "sonde's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build sonde (release) and package target/dist/sonde-<version>-<arch>-linux.tar.gz:
    /// bin/sonde, share/sonde/{sonde.service, sonde.toml}, share/doc/sonde/.
    Dist {
        /// Package this binary instead of building a release one.
        #[arg(long, value_name = "FILE")]
        binary: Option<std::path::PathBuf>,
    },
    /// Regenerate deploy/kubernetes/prometheus-operator/prometheusrule.yaml
    /// from deploy/prometheus/*.yml (--check: fail if it is out of date).
    PrometheusRule {
        #[arg(long)]
        check: bool,
    },
    /// Make this machine ready to build sonde: nightly rust-src and
    /// bpf-linker (built against the nightly's own LLVM). Idempotent.
    Setup,
    /// Build sonde (release) and run `sonde agent` with built-in defaults.
    /// Arguments after `--` go to `sonde agent`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Overhead and footprint benchmarks, side by side with peers; writes
    /// docs/benchmarks.md and docs/benchmarks.json. Not part of `test`.
    /// The floors come from a benchmark-only loader (xtask/bench-probes),
    /// built here: the shipped agent carries no benchmark program.
    Bench(bench::BenchArgs),
    /// The whole test suite: setup, test dependencies, fmt, clippy, unit and
    /// privileged integration tests. This is what CI runs.
    Test {
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
    },
    /// Only the fuzz targets of tests/fuzz (those whose name contains the
    /// filter), each for SONDE_FUZZ_SECONDS (default 10) with
    /// SONDE_FUZZ_SANITIZER (default none); docs/reliability.md.
    Fuzz {
        /// Only targets whose name contains this filter.
        filter: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let r: Result<()> = match cli.task {
        Task::Setup => bootstrap::setup(),
        Task::Dist { binary } => dist_task(binary),
        Task::PrometheusRule { check } => prometheus_rule(check),
        Task::Run { args } => run(args),
        Task::Test { filter, no_lint } => test(filter, no_lint),
        Task::Fuzz { filter } => fuzz::run_targets(filter.as_deref(), None),
        Task::Bench(args) => bootstrap::setup()
            .and_then(|()| bootstrap::bench_dependencies())
            .and_then(|()| bench::run(args)),
    };
    if let Err(e) = r {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn dist_task(binary: Option<std::path::PathBuf>) -> Result<()> {
    let root = cmd::workspace_root();
    let binary = match binary {
        Some(b) => b,
        None => {
            bootstrap::setup()?;
            cmd::cargo(&["build", "--release", "--package", "sonde"])?;
            root.join("target/release/sonde")
        }
    };
    let out = root.join("target/dist");
    std::fs::create_dir_all(&out)?;
    let tarball = dist::package(&root, &binary, env!("CARGO_PKG_VERSION"), &out)
        .map_err(anyhow::Error::msg)?;
    println!("{}", tarball.display());
    Ok(())
}

fn prometheus_rule(check: bool) -> Result<()> {
    let root = cmd::workspace_root();
    let want = promrule::render(&root).map_err(anyhow::Error::msg)?;
    let path = root.join(promrule::OUTPUT);
    if check {
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        anyhow::ensure!(
            have == want,
            "{} is out of date: run `cargo xtask prometheus-rule`",
            promrule::OUTPUT
        );
        return Ok(());
    }
    std::fs::write(&path, want)?;
    eprintln!("xtask: wrote {}", promrule::OUTPUT);
    Ok(())
}

fn run(args: Vec<String>) -> Result<()> {
    bootstrap::setup()?;
    cmd::cargo(&["build", "--release", "--package", "sonde"])?;
    let bin = cmd::workspace_root().join("target/release/sonde");
    let mut full = vec!["agent".to_owned()];
    full.extend(args);
    eprintln!(
        "xtask: starting {} {} (Ctrl-C stops it)",
        bin.display(),
        full.join(" ")
    );
    cmd::exec_privileged(&bin, &full)
}

fn test(filter: Option<String>, no_lint: bool) -> Result<()> {
    bootstrap::setup()?;
    bootstrap::test_dependencies()?;
    // The fuzz targets build in the background, on the CPU the lints,
    // the build and the (mostly waiting) e2e tests leave idle.
    let fuzz_build = fuzz::start_build(filter.as_deref())?;
    if !no_lint {
        // Nightly rustfmt: rustfmt.toml groups imports, an unstable option.
        cmd::cargo(&["+nightly", "fmt", "--all", "--check"])?;
        // Lints the kernel crates too, compiled for the host (the
        // `sonde-common/user` feature the agent turns on gives them std).
        cmd::cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
        // And as their objects are built, for the BPF target, which alone
        // sees `cfg(target_arch = "bpf")` code.
        cmd::cargo(&[
            "+nightly",
            "clippy",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--package",
            "sonde-ebpf",
            "--package",
            "sonde-bench-ebpf",
            "--bins",
            "--",
            "-D",
            "warnings",
        ])?;
    }
    // Build the binary the integration tests drive, then run everything.
    cmd::cargo(&["build", "--package", "sonde"])?;
    let bin = cmd::workspace_root().join("target/debug/sonde");
    // The kernel crates only build for the BPF target (agent/build.rs and
    // xtask/bench-probes/build.rs do that); the benchmark loader has no
    // tests of its own, and the bench harness test builds it when it runs.
    let mut args = vec![
        "test",
        "--workspace",
        "--exclude",
        "sonde-ebpf",
        "--exclude",
        "sonde-bench-ebpf",
        "--exclude",
        "sonde-bench-probes",
        "--no-fail-fast",
    ];
    if let Some(f) = filter.as_deref() {
        args.push(f);
    }
    let tests =
        cmd::cargo_test_summarized(&args, &[("SONDE_BIN", bin.to_str().unwrap_or_default())]);
    // Bounded fuzzing of the parsers of untrusted input (docs/reliability.md),
    // even when tests failed, so one run reports both.
    let fuzzed = fuzz::run_targets(filter.as_deref(), fuzz_build);
    tests.and(fuzzed)
}
