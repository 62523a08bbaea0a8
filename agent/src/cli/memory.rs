//! `sonde memory`: which stacks grew a process's memory (resident growth
//! from page faults, or mapped/unmapped address space) since the agent
//! started, from the always-on memory collector.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::{UsageError, client};
use crate::config::DEFAULT_SOCKET;

pub const AFTER: &str = "Examples:
  sudo sonde memory                          every process: stacks that grew RSS most
  sudo sonde memory --pid 1234               one process
  sudo sonde memory --name nginx --kind mapped   mmap/brk/mremap growth by stack
  sudo sonde memory --pid 1234 -f pprof -o mem.pb.gz
  sudo sonde memory --pid 1234 -f folded | flamegraph.pl > rss.svg

Always on and cheap (syscall tracepoints and sampled page faults). For exact
malloc-level attribution and leak suspects of one process use `sonde alloc`.
See docs/memory.md.";

#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Only this process.
    #[arg(long, conflicts_with = "name")]
    pub pid: Option<u32>,
    /// Only processes with this name (comm) or service name.
    #[arg(long)]
    pub name: Option<String>,
    /// What to attribute.
    #[arg(long, value_enum, default_value_t = Kind::Rss)]
    pub kind: Kind,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Top)]
    pub format: Format,
    /// Write to FILE instead of stdout.
    #[arg(long = "output", short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The agent's control socket.
    #[arg(long, env = "SONDE_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Resident growth: user page faults x page size (sampled stacks).
    Rss,
    /// Address space mapped: mmap, brk and mremap growth.
    Mapped,
    /// Address space released: munmap, brk and mremap shrink.
    Unmapped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Top,
    Folded,
    Pprof,
    Json,
}

pub fn request_path(a: &MemoryArgs) -> String {
    let kind = match a.kind {
        Kind::Rss => "rss",
        Kind::Mapped => "mapped",
        Kind::Unmapped => "unmapped",
    };
    let format = match a.format {
        Format::Top => "top",
        Format::Folded => "folded",
        Format::Pprof => "pprof",
        Format::Json => "json",
    };
    let mut q = format!("/api/v1/memory?kind={kind}&format={format}");
    if let Some(p) = a.pid {
        q.push_str(&format!("&pid={p}"));
    }
    if let Some(n) = &a.name {
        let enc: String = n
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        q.push_str(&format!("&name={enc}"));
    }
    q
}

pub fn run(a: &MemoryArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    if a.format == Format::Pprof && a.output.is_none() && std::io::stdout().is_terminal() {
        return Err(UsageError(
            "pprof output is binary: pass -o FILE (or pipe stdout), or use --format top".into(),
        )
        .into());
    }
    let body = client::block_on(client::get_bytes(&a.socket, &request_path(a)))?
        .map_err(client::refusal)?;
    super::output::write_body(a.output.as_deref(), &body)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn builds_the_request() {
        let c = Cli::try_parse_from(["sonde", "memory", "--pid", "9", "--kind", "mapped"]).unwrap();
        let Command::Memory(a) = c.command else {
            unreachable!()
        };
        assert_eq!(
            request_path(&a),
            "/api/v1/memory?kind=mapped&format=top&pid=9"
        );
        crate::cli::assert_agent_accepts::<sonde_wire::memory::MemoryQuery>(&request_path(&a));
        assert!(Cli::try_parse_from(["sonde", "memory", "--pid", "1", "--name", "x"]).is_err());
    }
}
