//! `sonde syscalls`: an `strace -c` style table. With `--duration`, or
//! whenever the agent runs syscall accounting on demand, it holds a lease
//! on the agent's hooks for that long and reports the calls made meanwhile;
//! otherwise (always-on agent) it reports the agent's last window at once.

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use sonde_wire::syscalls::{Mode, Report, Row};

use super::{
    Output, QueryArgs, UsageError, client,
    lease::{self, LeaseGuard},
    output,
};

/// How long `sonde syscalls` counts when the agent attaches on demand and
/// no `--duration` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct SyscallsArgs {
    /// Only this process (thread-group id).
    #[arg(long, short = 'p', value_name = "PID", conflicts_with = "name")]
    pub pid: Option<u32>,
    /// Only processes whose command name or service name is NAME.
    #[arg(long, short = 'n', value_name = "NAME")]
    pub name: Option<String>,
    /// Order of the rows.
    #[arg(long, short = 's', value_enum, default_value_t = Sort::Time)]
    pub sort: Sort,
    /// Count the calls made during this long from now: seconds (`5`,
    /// `0.5`) or with a unit (`500ms`, `10s`). Default: 5s when the agent
    /// attaches on demand; with an always-on agent, its last window.
    #[arg(long, short = 'd', value_parser = super::top::parse_interval)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub query: QueryArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sort {
    /// Total time spent in the syscall (like `strace -c`).
    Time,
    /// Number of calls.
    Count,
    /// Number of failed calls.
    Errors,
}

pub fn run(a: &SyscallsArgs) -> anyhow::Result<()> {
    let mut path = format!(
        "/api/v1/syscalls?sort={}",
        match a.sort {
            Sort::Time => "time",
            Sort::Count => "count",
            Sort::Errors => "errors",
        }
    );
    if let Some(pid) = a.pid {
        path.push_str(&format!("&pid={pid}"));
    }
    if let Some(name) = &a.name {
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(UsageError(format!(
                "--name {name:?}: expected a process or service name"
            ))
            .into());
        }
        path.push_str(&format!("&name={}", encode(name)));
    }
    let socket = &a.query.socket;
    let first = lease::acquire(socket).map_err(client::refusal)?;
    let r: Report = if first.mode == Mode::AlwaysOn && a.duration.is_none() {
        // Today's window, at once: the lease was only to learn the mode.
        drop(LeaseGuard::hold(socket, first, false));
        client::block_on(client::get_json(socket, &path))??
    } else {
        let wait = a.duration.unwrap_or(DEFAULT_DURATION);
        let guard = LeaseGuard::hold(socket, first, false);
        progress(&guard, wait);
        path.push_str(&format!("&lease={}", guard.first.id));
        let r = client::block_on(client::get_json(socket, &path))?.map_err(client::refusal)?;
        drop(guard);
        r
    };
    match a.query.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        Output::Table => print!("{}", render(&r, a)),
    }
    Ok(())
}

/// Says on stderr what was attached, then waits `wait` (with a countdown
/// when stderr is a terminal).
fn progress(guard: &LeaseGuard, wait: Duration) {
    let l = &guard.first;
    let how = match (l.mode, l.attach_ms) {
        (Mode::AlwaysOn, _) => "the agent's hooks are always on".to_owned(),
        (Mode::OnDemand, Some(ms)) => format!("attached syscall hooks in {ms} ms"),
        (Mode::OnDemand, None) => format!(
            "syscall hooks already attached (shared by {} clients)",
            l.clients
        ),
    };
    eprintln!(
        "sonde syscalls: {how}; counting for {}...",
        output::human_duration(wait.as_secs_f64())
    );
    let start = Instant::now();
    let end = start + wait;
    let tty = std::io::stderr().is_terminal();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if lease::interrupted() {
            if tty {
                eprint!("\r\x1b[K");
            }
            eprintln!(
                "sonde syscalls: interrupted: reporting the {} counted",
                output::human_duration(start.elapsed().as_secs_f64())
            );
            return;
        }
        if tty {
            eprint!("\r{:>6.1}s left ", left.as_secs_f64());
            let _ = std::io::stderr().flush();
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
    if tty {
        eprint!("\r\x1b[K");
    }
}

/// Percent-encodes everything but unreserved characters.
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

/// `1.23ms`, `456ns`, `2.00s`.
fn dur(secs: f64) -> String {
    if secs >= 1.0 {
        format!("{secs:.2}s")
    } else if secs >= 1e-3 {
        format!("{:.2}ms", secs * 1e3)
    } else if secs >= 1e-6 {
        format!("{:.2}us", secs * 1e6)
    } else {
        format!("{:.0}ns", secs * 1e9)
    }
}

fn cells(r: &Row, total_secs: f64) -> Vec<String> {
    let pct = if total_secs > 0.0 {
        format!("{:.2}", 100.0 * r.total_seconds / total_secs)
    } else {
        "0.00".into()
    };
    let errnos = r
        .errnos
        .iter()
        .map(|(e, n)| format!("{e}:{n}"))
        .collect::<Vec<_>>()
        .join(" ");
    vec![
        pct,
        dur(r.total_seconds),
        r.calls.to_string(),
        if r.errors > 0 {
            r.errors.to_string()
        } else {
            String::new()
        },
        dur(r.avg_seconds),
        r.p50_seconds.map(dur).unwrap_or_default(),
        r.p99_seconds.map(dur).unwrap_or_default(),
        r.syscall.clone(),
        errnos,
    ]
}

fn render(r: &Report, a: &SyscallsArgs) -> String {
    let who = match (&a.pid, &a.name) {
        (Some(p), _) => format!("pid {p}"),
        (_, Some(n)) => format!("name {n}"),
        _ => "all processes".into(),
    };
    let mut out = format!(
        "syscalls of {who} over the last {} ({} process{})\n",
        output::human_duration(r.window_seconds),
        r.processes.len(),
        if r.processes.len() == 1 { "" } else { "es" },
    );
    if r.rows.is_empty() {
        out.push_str("no syscalls recorded in this window\n");
        return out;
    }
    let total = r.total.total_seconds;
    let mut rows: Vec<Vec<String>> = r.rows.iter().map(|row| cells(row, total)).collect();
    let mut t = cells(&r.total, total);
    t[5].clear();
    t[6].clear();
    rows.push(t);
    out.push_str(&output::table(
        &[
            ">% TIME", ">TOTAL", ">CALLS", ">ERRORS", ">AVG", ">P50", ">P99", "SYSCALL", "ERRNO",
        ],
        &rows,
    ));
    out.push_str("p50/p99: upper bound of the latency bucket (buckets are at most 25% wide)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations_and_names() {
        assert_eq!(dur(0.0105), "10.50ms");
        assert_eq!(dur(2.5e-7), "250ns");
        assert_eq!(dur(3.0), "3.00s");
        assert_eq!(encode("my app/1"), "my%20app%2F1");
    }
}
