//! Developer tasks for sonde. `cargo xtask --help` lists them.

mod bootstrap;
mod cmd;

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
    /// Make this machine ready to build sonde: nightly rust-src and
    /// bpf-linker (built against the nightly's own LLVM). Idempotent.
    Setup,
    /// Build sonde (release) and run `sonde agent` with built-in defaults.
    /// Arguments after `--` go to `sonde agent`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The whole test suite: setup, test dependencies, fmt, clippy, unit and
    /// privileged integration tests. This is what CI runs.
    Test {
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let r: Result<()> = match cli.task {
        Task::Setup => bootstrap::setup(),
        Task::Run { args } => run(args),
        Task::Test { filter, no_lint } => test(filter, no_lint),
    };
    if let Err(e) = r {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
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
    if !no_lint {
        cmd::cargo(&["fmt", "--all", "--check"])?;
        cmd::cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])?;
    }
    // Build the binary the integration tests drive, then run everything.
    cmd::cargo(&["build", "--package", "sonde"])?;
    let bin = cmd::workspace_root().join("target/debug/sonde");
    // sonde-ebpf only builds for the BPF target (agent/build.rs does that).
    let mut args = vec![
        "test",
        "--workspace",
        "--exclude",
        "sonde-ebpf",
        "--no-fail-fast",
    ];
    if let Some(f) = filter.as_deref() {
        args.push(f);
    }
    cmd::cargo_env(&args, &[("SONDE_BIN", bin.to_str().unwrap_or_default())])
}
