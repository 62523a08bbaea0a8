//! `sonde alloc`: exact allocation tracking of one process for a while
//! (malloc-family uprobes attached by the agent, then detached), reported
//! as in-use and allocated bytes by stack, leak suspects and growth.

use std::{io::IsTerminal as _, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use super::{UsageError, client};
use crate::{
    api::alloc::MAX_SAMPLE_BYTES,
    collectors::memory::session::MAX_DURATION,
    config::DEFAULT_SOCKET,
    duration::{format_duration, parse_duration},
};

pub const AFTER: &str = "Examples:
  sudo sonde alloc --pid 1234                      30s, biggest in-use stacks first
  sudo sonde alloc --pid 1234 -d 2m --min-age 30s  leak suspects: live and older than 30s
  sudo sonde alloc --pid 1234 --diff               growth by stack during the session
  sudo sonde alloc --pid 1234 --sample-bytes 524288  cheaper on hot allocators (estimates)
  sudo sonde alloc --pid 1234 -f pprof -o heap.pb.gz && go tool pprof -http :8080 heap.pb.gz
  sudo sonde alloc --pid 1234 -f folded --measure leak | flamegraph.pl > leaks.svg

Probes go on the libc the process maps, for this process only, and are
removed when the session ends (duration, Ctrl-C, target exit, agent stop).
Each malloc+free pair costs the process several microseconds while attached
(mostly the kernel's uprobe traps): see docs/memory.md. Stacks come from frame pointers (-fno-omit-frame-pointer).";

#[derive(Debug, Args)]
pub struct AllocArgs {
    /// The process to track.
    #[arg(long)]
    pub pid: u32,
    /// How long to track (e.g. 30s, 2m; at most 10m).
    #[arg(long, short = 'd', default_value = "30s", value_parser = parse_alloc_duration)]
    pub duration: Duration,
    /// Sample allocations by bytes (mean N bytes between samples); figures
    /// are then scaled estimates. 0: every allocation.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=MAX_SAMPLE_BYTES))]
    pub sample_bytes: u64,
    /// Live allocations at least this old at the end are leak suspects.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub min_age: Duration,
    /// Snapshot live bytes early (a tenth in, at most 10s) and report the
    /// growth by stack since then.
    #[arg(long)]
    pub diff: bool,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = AllocFormat::Top)]
    pub format: AllocFormat,
    /// What folded stacks weigh.
    #[arg(long, value_enum, default_value_t = Measure::InUse)]
    pub measure: Measure,
    /// Write to FILE instead of stdout.
    #[arg(long = "output", short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The agent's control socket.
    #[arg(long, env = "SONDE_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AllocFormat {
    /// A table of stacks by bytes in use.
    Top,
    /// Folded stacks (`process;root;...;leaf bytes`).
    Folded,
    /// Gzipped pprof with inuse/alloc/leak space and objects.
    Pprof,
    /// The full report as JSON.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Measure {
    InUse,
    Allocated,
    Leak,
    Growth,
}

fn parse_alloc_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) || d > MAX_DURATION {
        return Err(format!(
            "must be between 100ms and {}",
            format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

pub fn request_path(a: &AllocArgs) -> String {
    let format = match a.format {
        AllocFormat::Top => "top",
        AllocFormat::Folded => "folded",
        AllocFormat::Pprof => "pprof",
        AllocFormat::Json => "json",
    };
    let measure = match a.measure {
        Measure::InUse => "in_use",
        Measure::Allocated => "allocated",
        Measure::Leak => "leak",
        Measure::Growth => "growth",
    };
    let mut q = format!(
        "/api/v1/alloc?pid={}&duration={}ms&min_age={}ms&sample_bytes={}&format={format}&measure={measure}",
        a.pid,
        a.duration.as_millis(),
        a.min_age.as_millis(),
        a.sample_bytes,
    );
    if a.diff {
        q.push_str("&diff=true");
    }
    q
}

pub fn run(a: &AllocArgs) -> anyhow::Result<()> {
    if a.format == AllocFormat::Pprof && a.output.is_none() && std::io::stdout().is_terminal() {
        return Err(UsageError(
            "pprof output is binary: pass -o FILE (or pipe stdout), or use --format top".into(),
        )
        .into());
    }
    if !std::path::Path::new(&format!("/proc/{}", a.pid)).exists() {
        return Err(UsageError(format!("no process with pid {}", a.pid)).into());
    }
    let path = request_path(a);
    let body = client::block_on(async {
        let progress = std::io::stderr().is_terminal().then(|| {
            tokio::spawn(super::output::show_progress(
                "tracking allocations",
                a.duration,
                " (Ctrl-C to stop early)",
            ))
        });
        let get = client::get_bytes(&a.socket, &path);
        tokio::pin!(get);
        let r = tokio::select! {
            r = &mut get => r,
            _ = tokio::signal::ctrl_c() => {
                // End the session now; the agent then answers the pending
                // request with what it gathered so far.
                eprint!("\r\x1b[2Kstopping: detaching probes...");
                let cancel = format!("/api/v1/alloc?pid={}", a.pid);
                let _ = client::request_bytes(&a.socket, hyper::Method::DELETE, &cancel).await;
                tokio::select! {
                    r = &mut get => r,
                    _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
                }
            }
        };
        if let Some(p) = progress {
            p.abort();
            eprint!("\r\x1b[2K");
        }
        r
    })?
    .map_err(client::refusal)?;
    super::output::write_body(a.output.as_deref(), &body)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(v: &[&str]) -> Result<AllocArgs, clap::Error> {
        let mut full = vec!["sonde", "alloc"];
        full.extend_from_slice(v);
        Cli::try_parse_from(full).map(|c| match c.command {
            Command::Alloc(a) => a,
            _ => unreachable!(),
        })
    }

    #[test]
    fn builds_the_request() {
        let a = parse(&["--pid", "42", "-d", "5s", "--diff", "-f", "json"]).unwrap();
        assert_eq!(
            request_path(&a),
            "/api/v1/alloc?pid=42&duration=5000ms&min_age=1000ms&sample_bytes=0\
             &format=json&measure=in_use&diff=true"
        );
        crate::cli::assert_agent_accepts::<crate::api::alloc::AllocQuery>(&request_path(&a));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--pid", "1", "-d", "11m"]).is_err());
        assert!(parse(&["--pid", "1", "-d", "0s"]).is_err());
        assert!(parse(&["--pid", "x"]).is_err());
        assert!(parse(&["--pid", "1", "--sample-bytes", "99999999999"]).is_err());
    }
}
