//! `sonde top`: a live, refreshing view of what processes do, like `top`.
//!
//! Views:
//! - `syscalls` (default): per process calls/s, errors/s, time spent in
//!   syscalls per second and the busiest syscall. Each frame is the
//!   difference of two cumulative snapshots (`/api/v1/syscalls/totals`)
//!   divided by the agent-side time between them, so rates are exact for
//!   any refresh interval. The view holds a lease on the agent's syscall
//!   hooks while it runs (an on-demand agent attaches them for it).
//! - `http`: per route request rate, errors and latency (`/api/v1/http`).
//!
//! The terminal is driven with plain ANSI sequences (alternate screen,
//! cursor home) and termios non-canonical input for `q`; when stdout is
//! not a terminal, frames are printed one after another (batch mode).

use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use sonde_wire::{
    http::RouteRow,
    syscalls::{Mode, ProcessTotal, Totals},
    top::{ProcRow, SyscallsFrame},
};

use super::{
    Output, QueryArgs, UsageError, client,
    lease::{self, LeaseGuard},
    output,
};

#[derive(Debug, Args)]
pub struct TopArgs {
    /// What to show.
    #[arg(long, short = 'v', value_enum, default_value_t = View::Syscalls)]
    pub view: View,
    /// Refresh interval: seconds (`2`, `0.5`) or with a unit (`500ms`, `2s`).
    #[arg(long, short = 'd', default_value = "2s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Print one frame (measured over one interval) and exit.
    #[arg(long)]
    pub once: bool,
    /// Exit after N frames (like `top -n`); `-o json` defaults to 1.
    #[arg(long, short = 'n', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
    /// Order of the rows (syscalls view).
    #[arg(long, short = 's', value_enum, default_value_t = TopSort::Calls)]
    pub sort: TopSort,
    /// Only this process.
    #[arg(long, short = 'p', value_name = "PID")]
    pub pid: Option<u32>,
    /// Only processes whose command or service name is NAME.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// At most N rows (default: what fits the terminal; all when not a
    /// terminal).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub query: QueryArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum View {
    /// Syscall rate, errors and time per process.
    Syscalls,
    /// HTTP request rate, errors and latency per route.
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopSort {
    /// Calls per second.
    Calls,
    /// Failed calls per second.
    Errors,
    /// Time spent in syscalls per second.
    Time,
}

pub(super) fn parse_interval(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(v) = t.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = t.strip_suffix('s') {
        (v, 1.0)
    } else {
        (t, 1.0)
    };
    let secs = num
        .trim()
        .parse::<f64>()
        .map_err(|_| format!("{s:?}: expected seconds like 2, 0.5, 500ms or 2s"))?
        * scale;
    if !(0.1..=3600.0).contains(&secs) {
        return Err(format!("{s:?}: the interval must be between 100ms and 1h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Rates between two snapshots. A process or syscall absent from `prev`
/// started from zero (new process, or its first call since the agent
/// attached); one whose counters went down is a reused pid and counts from
/// zero too.
pub fn syscalls_frame(
    prev: &Totals,
    cur: &Totals,
    keep: impl Fn(&ProcessTotal) -> bool,
    sort: TopSort,
) -> SyscallsFrame {
    let secs = cur.taken_ms.saturating_sub(prev.taken_ms) as f64 / 1e3;
    let per_s = |v: u64| if secs > 0.0 { v as f64 / secs } else { 0.0 };
    let before: HashMap<u32, &ProcessTotal> = prev.processes.iter().map(|p| (p.pid, p)).collect();
    let mut rows = Vec::new();
    let (mut calls, mut errors, mut ns) = (0u64, 0u64, 0u64);
    for p in cur.processes.iter().filter(|p| keep(p)) {
        let old: HashMap<&str, (u64, u64, u64)> = before
            .get(&p.pid)
            .filter(|o| o.comm == p.comm)
            .map(|o| {
                o.syscalls
                    .iter()
                    .map(|s| (s.syscall.as_str(), (s.calls, s.errors, s.total_ns)))
                    .collect()
            })
            .unwrap_or_default();
        let (mut pc, mut pe, mut pn) = (0u64, 0u64, 0u64);
        let mut top: Option<(&str, u64)> = None;
        for s in &p.syscalls {
            let (c, e, n) = match old.get(s.syscall.as_str()) {
                Some(&(c, e, n)) if s.calls >= c => (
                    s.calls - c,
                    s.errors.saturating_sub(e),
                    s.total_ns.saturating_sub(n),
                ),
                _ => (s.calls, s.errors, s.total_ns),
            };
            pc += c;
            pe += e;
            pn += n;
            if c > 0 && top.is_none_or(|(name, t)| c > t || (c == t && *s.syscall < *name)) {
                top = Some((&s.syscall, c));
            }
        }
        if pc == 0 {
            continue;
        }
        calls += pc;
        errors += pe;
        ns += pn;
        let (top_name, top_calls) = top.unwrap_or(("-", 0));
        rows.push(ProcRow {
            pid: p.pid,
            comm: p.comm.clone(),
            service: p.service.clone(),
            calls_per_second: per_s(pc),
            errors_per_second: per_s(pe),
            syscall_seconds_per_second: per_s(pn) / 1e9,
            top_syscall: top_name.to_owned(),
            top_syscall_calls_per_second: per_s(top_calls),
        });
    }
    let key = |r: &ProcRow| match sort {
        TopSort::Calls => r.calls_per_second,
        TopSort::Errors => r.errors_per_second,
        TopSort::Time => r.syscall_seconds_per_second,
    };
    rows.sort_by(|a, b| {
        key(b)
            .total_cmp(&key(a))
            .then(b.calls_per_second.total_cmp(&a.calls_per_second))
            .then(a.pid.cmp(&b.pid))
    });
    SyscallsFrame {
        view: "syscalls".into(),
        interval_seconds: secs,
        calls_per_second: per_s(calls),
        errors_per_second: per_s(errors),
        syscall_seconds_per_second: per_s(ns) / 1e9,
        active_processes: rows.len(),
        processes: rows,
    }
}

/// `1.2k`, `34.5`, `3.40M`.
fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

/// Time in syscalls per second as milliseconds per second.
fn ms_per_s(v: f64) -> String {
    format!("{:.1}", v * 1e3)
}

pub fn render_syscalls(f: &SyscallsFrame, limit: Option<usize>) -> String {
    let mut s = format!(
        "sonde top - syscalls - {:.1}s interval - {} active processes\n\
         total: {} calls/s, {} errors/s, {} ms/s in syscalls\n\n",
        f.interval_seconds,
        f.active_processes,
        rate(f.calls_per_second),
        rate(f.errors_per_second),
        ms_per_s(f.syscall_seconds_per_second),
    );
    let body: Vec<Vec<String>> = f
        .processes
        .iter()
        .take(limit.unwrap_or(usize::MAX))
        .map(|r| {
            vec![
                r.pid.to_string(),
                r.comm.clone(),
                r.service.clone(),
                rate(r.calls_per_second),
                rate(r.errors_per_second),
                ms_per_s(r.syscall_seconds_per_second),
                format!(
                    "{} ({:.0}%)",
                    r.top_syscall,
                    100.0 * r.top_syscall_calls_per_second / r.calls_per_second.max(1e-9)
                ),
            ]
        })
        .collect();
    s.push_str(&output::table(
        &[
            ">PID",
            "COMM",
            "SERVICE",
            ">CALLS/S",
            ">ERRORS/S",
            ">SYSCALL MS/S",
            "TOP SYSCALL",
        ],
        &body,
    ));
    s
}

fn render_http(rows: &[RouteRow], interval: Duration, limit: Option<usize>) -> String {
    let mut s = format!(
        "sonde top - http - refresh {:.1}s - rates over the last 10s\n\n",
        interval.as_secs_f64()
    );
    if rows.is_empty() {
        s.push_str("no HTTP requests seen yet\n");
        return s;
    }
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{:.2}", x * 1e3));
    let body: Vec<Vec<String>> = rows
        .iter()
        .take(limit.unwrap_or(usize::MAX))
        .map(|r| {
            vec![
                r.service.clone(),
                r.role.clone(),
                r.method.clone(),
                r.route.clone(),
                rate(r.rate),
                format!("{:.1}", r.error_pct),
                ms(r.p50_seconds),
                ms(r.p99_seconds),
                r.in_flight.to_string(),
            ]
        })
        .collect();
    s.push_str(&output::table(
        &[
            "SERVICE",
            "ROLE",
            "METHOD",
            "ROUTE",
            ">REQ/S",
            ">ERR%",
            ">P50MS",
            ">P99MS",
            ">INFLIGHT",
        ],
        &body,
    ));
    s
}

/// Puts the terminal's input in non-canonical, no-echo, no-signal mode (so
/// `q` and Ctrl-C arrive as bytes) and restores it on drop.
struct RawInput {
    saved: libc::termios,
}

impl RawInput {
    fn enter() -> Option<Self> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is a terminal (checked above); `t` is a valid pointer.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        t.c_cc[libc::VMIN] = 0;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: as above; `t` is a modified copy of the current settings.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) } != 0 {
            return None;
        }
        Some(Self { saved })
    }
}

impl Drop for RawInput {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter` on the same fd.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// Waits up to `d`; true when the user asked to quit (q, Q, Ctrl-C, Esc).
fn wait_or_quit(mut raw: bool, d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        // Ctrl-C or SIGTERM (caught while a syscall lease is held) quits
        // like `q`, so that the lease is released now, not at its expiry.
        if lease::interrupted() {
            return true;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if !raw {
            std::thread::sleep(left.min(Duration::from_millis(100)));
            continue;
        }
        let left = left.min(Duration::from_millis(100));
        let mut fds = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut fds, 1, ms) };
        if n <= 0 {
            continue;
        }
        let mut buf = [0u8; 32];
        // SAFETY: reads at most buf.len() bytes into buf from fd 0.
        let got = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if got <= 0 {
            // End of input: nothing more to wait for from the keyboard.
            raw = false;
            continue;
        }
        if buf[..got as usize]
            .iter()
            .any(|b| matches!(b, b'q' | b'Q' | 0x03 | 0x1b))
        {
            return true;
        }
    }
}

/// Rows that fit the terminal below the header, when stdout is one.
fn terminal_rows() -> Option<usize> {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it for fd 1.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: fd 1 and a valid winsize pointer.
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_row > 6).then(|| ws.ws_row as usize - 6)
}

pub fn run(a: &TopArgs) -> anyhow::Result<()> {
    if let Some(n) = &a.name
        && (n.is_empty() || n.chars().any(char::is_control))
    {
        return Err(UsageError(format!("--name {n:?}: expected a process or service name")).into());
    }
    let frames = if a.once {
        1
    } else {
        a.iterations.unwrap_or(if a.query.output == Output::Json {
            1
        } else {
            u64::MAX
        })
    };
    let live = std::io::stdout().is_terminal() && a.query.output == Output::Table && frames > 1;
    let limit = a
        .limit
        .or_else(|| if live { terminal_rows() } else { None });
    let raw = if live { RawInput::enter() } else { None };
    let mut out = std::io::stdout();
    if live {
        // Alternate screen, hidden cursor; undone below.
        println!(
            "\x1b[?1049h\x1b[?25l\x1b[H\x1b[2Jsonde top: sampling for {:.1}s (q to quit)...",
            a.interval.as_secs_f64()
        );
        out.flush()?;
    }
    let result = frames_loop(a, frames, live, raw.is_some(), limit);
    if live {
        print!("\x1b[?25h\x1b[?1049l");
        out.flush()?;
    }
    drop(raw);
    result
}

fn fetch_totals(a: &TopArgs) -> anyhow::Result<Totals> {
    client::block_on(client::get_json(&a.query.socket, "/api/v1/syscalls/totals"))?
}

fn frames_loop(
    a: &TopArgs,
    frames: u64,
    live: bool,
    raw: bool,
    limit: Option<usize>,
) -> anyhow::Result<()> {
    let keep = |p: &ProcessTotal| {
        a.pid.is_none_or(|pid| pid == p.pid)
            && a.name
                .as_deref()
                .is_none_or(|n| n == p.comm || n == p.service)
    };
    // An on-demand agent attaches its syscall hooks for as long as this
    // lease is held (renewed in the background, released on return).
    let _lease = match a.view {
        View::Syscalls => {
            let l = lease::acquire(&a.query.socket).map_err(client::refusal)?;
            let guard = LeaseGuard::hold(&a.query.socket, l, true);
            // Always-on: the hooks need no lease.
            (guard.first.mode == Mode::OnDemand).then_some(guard)
        }
        View::Http => None,
    };
    let mut prev = match a.view {
        View::Syscalls => Some(fetch_totals(a)?),
        View::Http => None,
    };
    let mut out = std::io::stdout();
    for i in 0..frames {
        // The http view's rates are the agent's own (last 10 s): the first
        // frame needs no wait.
        if (a.view == View::Syscalls || i > 0) && wait_or_quit(raw, a.interval) {
            break;
        }
        let text = match a.view {
            View::Syscalls => {
                let cur = fetch_totals(a)?;
                let f = syscalls_frame(prev.as_ref().unwrap_or(&cur), &cur, keep, a.sort);
                prev = Some(cur);
                match a.query.output {
                    Output::Json => serde_json::to_string(&f)? + "\n",
                    Output::Table => render_syscalls(&f, limit),
                }
            }
            View::Http => {
                let mut path = "/api/v1/http?client=false".to_owned();
                if let Some(p) = a.pid {
                    path.push_str(&format!("&pid={p}"));
                }
                let mut rows: Vec<RouteRow> =
                    client::block_on(client::get_json(&a.query.socket, &path))??;
                if let Some(n) = &a.name {
                    rows.retain(|r| &r.service == n);
                }
                rows.sort_by(|x, y| y.rate.total_cmp(&x.rate));
                match a.query.output {
                    Output::Json => serde_json::to_string(&rows)? + "\n",
                    Output::Table => render_http(&rows, a.interval, limit),
                }
            }
        };
        if live {
            // Home, draw, clear what the previous frame left below.
            let text = text.replace('\n', "\x1b[K\n");
            write!(out, "\x1b[H{text}\x1b[J")?;
        } else {
            if i > 0 && a.query.output == Output::Table {
                writeln!(out)?;
            }
            write!(out, "{text}")?;
        }
        out.flush().context("writing to stdout")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sonde_wire::syscalls::SyscallTotal;

    use super::*;

    fn proc_(pid: u32, comm: &str, calls: &[(&str, u64, u64, u64)]) -> ProcessTotal {
        ProcessTotal {
            pid,
            comm: comm.into(),
            service: comm.into(),
            syscalls: calls
                .iter()
                .map(|(s, c, e, n)| SyscallTotal {
                    syscall: (*s).into(),
                    calls: *c,
                    errors: *e,
                    total_ns: *n,
                })
                .collect(),
        }
    }

    #[test]
    fn frame_divides_deltas_by_agent_time() {
        let prev = Totals {
            taken_ms: 1_000,
            processes: vec![
                proc_(1, "a", &[("read", 100, 0, 1_000), ("openat", 10, 5, 100)]),
                proc_(2, "idle", &[("read", 7, 0, 70)]),
            ],
        };
        let cur = Totals {
            taken_ms: 3_000,
            processes: vec![
                proc_(
                    1,
                    "a",
                    &[("read", 300, 0, 2_000_001_000), ("openat", 30, 25, 100)],
                ),
                proc_(2, "idle", &[("read", 7, 0, 70)]),
                // New process: counted from zero.
                proc_(3, "b", &[("getppid", 4_000, 0, 400)]),
            ],
        };
        let f = syscalls_frame(&prev, &cur, |_| true, TopSort::Calls);
        assert_eq!(f.interval_seconds, 2.0);
        assert_eq!(f.active_processes, 2, "idle process left out");
        let b = &f.processes[0];
        assert_eq!((b.pid, b.calls_per_second), (3, 2_000.0));
        assert_eq!(b.top_syscall, "getppid");
        let a = &f.processes[1];
        assert_eq!(a.calls_per_second, 110.0);
        assert_eq!(a.errors_per_second, 10.0);
        assert_eq!(a.syscall_seconds_per_second, 1.0);
        assert_eq!(
            (a.top_syscall.as_str(), a.top_syscall_calls_per_second),
            ("read", 100.0)
        );
        assert_eq!(f.calls_per_second, 2_110.0);
        let by_time = syscalls_frame(&prev, &cur, |_| true, TopSort::Time);
        assert_eq!(by_time.processes[0].pid, 1);
        let only = syscalls_frame(&prev, &cur, |p| p.pid == 1, TopSort::Calls);
        assert_eq!(only.processes.len(), 1);
        let t = render_syscalls(&f, Some(1));
        assert!(t.contains("getppid (100%)") && !t.contains("read ("), "{t}");
    }

    #[test]
    fn reused_pid_counts_from_zero() {
        let prev = Totals {
            taken_ms: 0,
            processes: vec![proc_(9, "old", &[("read", 1_000, 0, 0)])],
        };
        let cur = Totals {
            taken_ms: 1_000,
            processes: vec![proc_(9, "new", &[("read", 5, 0, 0)])],
        };
        let f = syscalls_frame(&prev, &cur, |_| true, TopSort::Calls);
        assert_eq!(f.processes[0].calls_per_second, 5.0);
    }

    #[test]
    fn intervals_parse_with_units_and_bounds() {
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("1.5s"), Ok(Duration::from_millis(1_500)));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("2h").is_err());
        assert!(parse_interval("fast").is_err());
    }
}
