//! `sonde profile`: a CPU profile from the running agent's always-on
//! sampler, or with `--off-cpu` an off-CPU profile (where threads waited),
//! as pprof, folded stacks, an SVG flamegraph or a top table.

use std::{io::IsTerminal as _, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use super::{UsageError, client};
use crate::{
    api::profile::MAX_DURATION,
    config::DEFAULT_SOCKET,
    duration::{format_duration, parse_duration},
};

pub const AFTER: &str = "Examples:
  sudo sonde profile --pid 1234 --format svg -o flame.svg   flamegraph of the next 10s
  sudo sonde profile --name nginx --duration 30s -o nginx.pb.gz
  go tool pprof -http :8080 nginx.pb.gz                      (pprof is the default format)
  sudo sonde profile --pid 1234 --format top                 functions by cumulative share
  sudo sonde profile --pid 1234 -f lines --function handle   samples per line of one function
  sudo sonde profile --service api --last --format folded    the retained window, no wait
  sudo sonde profile --name uvicorn --by route -f top        CPU by HTTP route, then functions
  sudo sonde profile --by route --route 'GET /items/*' -f svg -o items.svg
  sudo sonde profile --pid 1234 --off-cpu -f svg -o wait.svg where it waits: stacks
                                                             weighted by time off CPU

User stacks are walked with the binaries' .eh_frame tables, built in the
background when a process is first sampled (frame pointers until then), and
CPython 3.10-3.13 frames are named by function, file and line. Names need
symbols: a stripped binary without debug files shows [unknown] module+offset.
See docs/profiling.md.";

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Only this process.
    #[arg(long, conflicts_with_all = ["name", "service"])]
    pub pid: Option<u32>,
    /// Only processes with this name (comm) or service name.
    #[arg(long, conflicts_with = "service")]
    pub name: Option<String>,
    /// Only processes of this service.
    #[arg(long)]
    pub service: Option<String>,
    /// How long to sample from now (e.g. 10s, 500ms, 2m; at most 5m).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_profile_duration)]
    pub duration: Duration,
    /// Return the agent's retained window (default last 60s) instead of waiting.
    #[arg(long, conflicts_with = "duration")]
    pub last: bool,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = ProfileFormat::Top)]
    pub format: ProfileFormat,
    /// With `--format lines`: only this function's lines (e.g. a Python
    /// qualified name such as `Handler.handle`).
    #[arg(long, value_name = "NAME")]
    pub function: Option<String>,
    /// Split by HTTP route: `METHOD ROUTE` (or `[no route]`) as the first
    /// frame of folded stacks and flamegraphs, a route table above `top`.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub by: Option<ProfileBy>,
    /// Only samples of requests whose route matches PATTERN (`METHOD ROUTE`
    /// or `ROUTE`, `*` matches anything: `/items/*`; `-`: samples not
    /// attributed to a route).
    #[arg(long, value_name = "PATTERN")]
    pub route: Option<String>,
    /// Where the threads waited instead of where they ran: stacks taken as
    /// threads leave the CPU (blocking in a syscall, on a lock, preempted),
    /// weighted by the time until they ran again. Top shows milliseconds,
    /// folded/svg/pprof nanoseconds (pprof sample type off_cpu/nanoseconds).
    #[arg(long)]
    pub off_cpu: bool,
    /// Write to FILE instead of stdout.
    #[arg(long = "output", short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The agent's control socket.
    #[arg(long, env = "SONDE_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileBy {
    /// The HTTP route the sampled thread was serving.
    Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileFormat {
    /// Gzipped protobuf for `go tool pprof`, Pyroscope, Parca.
    Pprof,
    /// Folded stacks (`process;root;...;leaf count`), for flamegraph tools.
    Folded,
    /// An SVG flamegraph (inferno).
    Svg,
    /// Functions by cumulative and self share, like `pstats sort cumulative`.
    Top,
    /// Samples per source line (Python frames, and native code with debug
    /// info); `--function NAME` for one function's lines.
    Lines,
}

impl ProfileFormat {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pprof => "pprof",
            Self::Folded => "folded",
            Self::Svg => "svg",
            Self::Top => "top",
            Self::Lines => "lines",
        }
    }
}

fn parse_profile_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d > MAX_DURATION {
        return Err(format!(
            "must be more than 0 and at most {}",
            format_duration(MAX_DURATION)
        ));
    }
    Ok(d)
}

/// The control-API path for these arguments.
fn request_path(a: &ProfileArgs) -> String {
    let mut q = vec![format!("format={}", a.format.as_str())];
    if let Some(p) = a.pid {
        q.push(format!("pid={p}"));
    }
    if let Some(n) = &a.name {
        q.push(format!("name={}", encode(n)));
    }
    if let Some(s) = &a.service {
        q.push(format!("service={}", encode(s)));
    }
    if let Some(f) = &a.function {
        q.push(format!("function={}", encode(f)));
    }
    if a.by == Some(ProfileBy::Route) {
        q.push("by=route".into());
    }
    if let Some(r) = &a.route {
        q.push(format!("route={}", encode(r)));
    }
    if a.off_cpu {
        q.push("off_cpu=true".into());
    }
    if a.last {
        q.push("last=true".into());
    } else {
        q.push(format!("duration={}ms", a.duration.as_millis()));
    }
    format!("/api/v1/profile?{}", q.join("&"))
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn run(a: &ProfileArgs) -> anyhow::Result<()> {
    if a.off_cpu && a.format == ProfileFormat::Lines {
        return Err(UsageError(
            "--format lines is for CPU profiles; with --off-cpu use top, folded, svg or pprof"
                .into(),
        )
        .into());
    }
    if a.format == ProfileFormat::Pprof && a.output.is_none() && std::io::stdout().is_terminal() {
        return Err(UsageError(
            "pprof output is binary: pass -o FILE (or pipe stdout), or use --format top".into(),
        )
        .into());
    }
    let path = request_path(a);
    let wait = (!a.last).then_some(a.duration);
    let body = client::block_on(async {
        let progress = wait
            .filter(|_| std::io::stderr().is_terminal())
            .map(|d| tokio::spawn(super::output::show_progress("profiling", d, "")));
        let r = client::get_bytes(&a.socket, &path).await;
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

    fn args(v: &[&str]) -> ProfileArgs {
        let mut full = vec!["sonde", "profile"];
        full.extend_from_slice(v);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Profile(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn builds_the_request() {
        let a = args(&["--pid", "42", "--duration", "5s", "--format", "folded"]);
        assert_eq!(
            request_path(&a),
            "/api/v1/profile?format=folded&pid=42&duration=5000ms"
        );
        let a = args(&["--name", "my app", "--last"]);
        assert_eq!(
            request_path(&a),
            "/api/v1/profile?format=top&name=my%20app&last=true"
        );
        let a = args(&["--by", "route", "--route", "GET /items/*", "--last"]);
        assert_eq!(
            request_path(&a),
            "/api/v1/profile?format=top&by=route&route=GET%20%2Fitems%2F%2A&last=true"
        );
        let a = args(&["--pid", "7", "--off-cpu", "-f", "pprof", "--last"]);
        assert_eq!(
            request_path(&a),
            "/api/v1/profile?format=pprof&pid=7&off_cpu=true&last=true"
        );
        for v in [
            &["--pid", "42", "--duration", "5s", "-f", "folded"][..],
            &["--name", "my app", "--last"],
            &["--by", "route", "--route", "GET /items/*", "--last"],
            &["--pid", "7", "--off-cpu", "-f", "pprof", "--last"],
        ] {
            crate::cli::assert_agent_accepts::<sonde_wire::profile::ProfileQuery>(&request_path(
                &args(v),
            ));
        }
    }

    #[test]
    #[should_panic(expected = "unknown field `pidd`")]
    fn the_agent_refuses_unknown_parameters() {
        crate::cli::assert_agent_accepts::<sonde_wire::profile::ProfileQuery>(
            "/api/v1/profile?pidd=42",
        );
    }

    #[test]
    fn rejects_bad_durations_and_conflicts() {
        let bad = |v: &[&str]| {
            let mut full = vec!["sonde", "profile"];
            full.extend_from_slice(v);
            Cli::try_parse_from(full).is_err()
        };
        assert!(bad(&["--duration", "10"]));
        assert!(bad(&["--duration", "10m"]));
        assert!(bad(&["--pid", "1", "--name", "x"]));
        assert!(bad(&["--format", "png"]));
    }
}
