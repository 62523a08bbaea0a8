//! `sonde <command>`: argument parsing and dispatch. Arguments are parsed
//! into typed values here; the daemon and the query commands get those,
//! never raw strings.

pub mod alerts;
pub mod alloc;
pub mod client;
pub mod http;
pub mod lease;
pub mod memory;
pub mod output;
pub mod profile;
pub mod status;
pub mod syscalls;
pub mod top;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, DEFAULT_SOCKET};

const ABOUT: &str = "sonde: eBPF observability for Linux, with no code change.

Run `sonde agent` as root (or as the systemd service / Kubernetes DaemonSet)
and ask it questions with the other commands. They talk to the agent's control
socket, /run/sonde/sonde.sock by default.";

const AFTER: &str = "Examples:
  sudo sonde agent                      run with built-in defaults
  sudo sonde agent --config /etc/sonde/sonde.toml
  sonde agent --check-config sonde.toml validate a config file and exit
  sudo sonde status                     what is attached, what is missing and why
  sudo sonde status -o json             the same, for scripts
  sudo sonde profile --pid 1234 --format svg -o flame.svg

Exit codes: 0 ok, 1 runtime failure, 2 usage or config error.
Docs: docs/cli.md, docs/config.md, docs/metrics.md";

#[derive(Debug, Parser)]
#[command(name = "sonde", version, about = ABOUT, after_help = AFTER, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent in the foreground (stops cleanly on SIGTERM/SIGINT).
    #[command(after_help = "Examples:
  sudo sonde agent
  sudo SONDE_API__LISTEN=0.0.0.0:9464 sonde agent --config /etc/sonde/sonde.toml
  sonde agent --check-config /etc/sonde/sonde.toml
  sonde agent --print-config > sonde.toml      start a config from the defaults

Every config key can be overridden by an environment variable named
SONDE_<SECTION>__<KEY> (double underscore between parts), e.g.
SONDE_COLLECTORS__PROCESS__ENABLED=false.")]
    Agent(AgentArgs),
    /// Show the agent's version, uptime, kernel features and collectors.
    #[command(after_help = "Examples:
  sudo sonde status
  sudo sonde status -o json | jq '.collectors[] | select(.status != \"healthy\")'")]
    Status(QueryArgs),
    /// Show the built-in alert engine's active alerts (pending, firing) and
    /// delivery status; `--all` adds the history of resolved alerts.
    #[command(after_help = "Examples:
  sudo sonde alerts                     active alerts, value, since when
  sudo sonde alerts --all               plus resolved alerts (bounded history)
  sudo sonde alerts -o json | jq '.alerts[] | select(.state == \"firing\")'

Rules are configured under [alerts] in the agent's config: docs/alerts.md.")]
    Alerts(alerts::AlertsArgs),
    /// Per-syscall calls, errors and latency over a window, like
    /// `strace -c`, for every process or one of them.
    #[command(after_help = "Examples:
  sudo sonde syscalls                        every process for 5s, by total time
  sudo sonde syscalls --pid 1234 --sort count --duration 10s
  sudo sonde syscalls --name nginx --sort errors
  sudo sonde syscalls --name nginx -o json | jq '.rows[] | select(.errors > 0)'

Counts come from in-kernel aggregation (no strace-style stopping of the
process). By default the agent attaches its syscall hooks only while a
client needs them: this command attaches them for --duration (default 5s),
shares them with other clients, and the agent detaches them afterwards.
With collectors.syscalls.enabled = true (always on) and no --duration, it
reports the agent's last collectors.syscalls.window (default 60s) at once.")]
    Syscalls(syscalls::SyscallsArgs),
    /// CPU profile of a process, a service or everything: pprof, folded
    /// stacks, SVG flamegraph or a top table.
    #[command(after_help = profile::AFTER)]
    Profile(profile::ProfileArgs),
    /// HTTP RED per route (rate, error %, p50/p95/p99, in-flight), traced
    /// from socket syscalls with no instrumentation.
    #[command(after_help = "Examples:
  sudo sonde http                       every HTTP server on the host, per route
  sudo sonde http --name nginx          one service
  sudo sonde http --pid 4242 -o json    one process, for scripts
  sudo sonde http --client              outgoing requests (curl, HTTP clients)

Routes are normalized (/items/123 -> /items/{id}); see docs/http.md.")]
    Http(http::HttpArgs),
    /// Exact allocation tracking of one process for a while: bytes in use
    /// and allocated by stack, leak suspects, growth (malloc uprobes).
    #[command(after_help = alloc::AFTER)]
    Alloc(alloc::AllocArgs),
    /// Memory growth by stack from the always-on memory collector: RSS
    /// growth (page faults) or mapped/unmapped address space.
    #[command(after_help = memory::AFTER)]
    Memory(memory::MemoryArgs),
    /// A live view of what processes do, refreshed every --interval, like
    /// `top`: syscall rate, errors and time per process (or HTTP routes).
    #[command(after_help = "Examples:
  sudo sonde top                          live syscalls view, q or Ctrl-C quits
  sudo sonde top -d 1 --sort time         refresh every second, by syscall time
  sudo sonde top --once                   one frame measured over one interval
  sudo sonde top --once -o json | jq '.processes[0]'
  sudo sonde top --view http              live HTTP routes

Rates are differences of the agent's cumulative counters over the interval
(agent-side clock). The syscalls view holds a lease on the agent's syscall
hooks while it runs: an agent in the default on-demand mode attaches them
for it and detaches them when the last client is gone. When stdout is not a terminal, frames are printed one
after another (batch mode, like `top -b`); -n N stops after N frames.")]
    Top(top::TopArgs),
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// TOML config file; every key has a default, so this is optional.
    #[arg(long, short = 'c', env = "SONDE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate FILE (with environment overrides applied) and exit: 0 if it
    /// is valid, 2 with the key and line at fault if not.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Options every query command shares.
#[derive(Debug, Args, Clone)]
pub struct QueryArgs {
    /// The agent's control socket.
    #[arg(long, env = "SONDE_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// JSON for programs.
    Json,
}

/// An error that is the user's input at fault: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs the CLI and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(a) => agent(a),
        Command::Status(q) => status::run(&q),
        Command::Alerts(a) => alerts::run(&a),
        Command::Syscalls(a) => syscalls::run(&a),
        Command::Profile(a) => profile::run(&a),
        Command::Http(a) => http::run(&a),
        Command::Alloc(a) => alloc::run(&a),
        Command::Memory(a) => memory::run(&a),
        Command::Top(a) => top::run(&a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some()
                || e.downcast_ref::<crate::config::ConfigError>().is_some()
            {
                2
            } else {
                1
            }
        }
    }
}

fn env_vars() -> Vec<(String, String)> {
    std::env::vars().collect()
}

fn agent(a: AgentArgs) -> anyhow::Result<()> {
    if let Some(path) = a.check_config {
        let c = Config::load(Some(&path), env_vars())?;
        println!("{}: ok", path.display());
        if a.print_config {
            print!("{}", c.to_toml());
        }
        return Ok(());
    }
    let source = crate::reload::ConfigSource {
        path: a.config.clone(),
        env: env_vars(),
    };
    let config = source.load()?;
    if a.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    crate::daemon::run(config, source)
}

/// Panics unless the agent's query extractor accepts `path` as a `T`: the
/// CLI builds its query strings by hand, and the agent refuses unknown
/// parameters (`deny_unknown_fields`), so each CLI test checks both sides.
#[cfg(test)]
pub(crate) fn assert_agent_accepts<T: serde::de::DeserializeOwned>(path: &str) {
    let uri: axum::http::Uri = path.parse().expect("a URI");
    if let Err(e) = axum::extract::Query::<T>::try_from_uri(&uri) {
        panic!("the agent refuses {path}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
