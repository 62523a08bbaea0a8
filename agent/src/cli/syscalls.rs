//! `sonde syscalls`: an `strace -c` style table for the last window.

use clap::{Args, ValueEnum};
use sonde_wire::syscalls::{Report, Row};

use super::{Output, QueryArgs, UsageError, client, output};

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
    let r: Report = client::block_on(client::get_json(&a.query.socket, &path))??;
    match a.query.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        Output::Table => print!("{}", render(&r, a)),
    }
    Ok(())
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
