//! On-demand syscall accounting end to end: the default agent attaches no
//! hook to sys_enter/sys_exit; `sonde syscalls --duration` and `sonde top`
//! attach them for their window, share one attachment, and the agent
//! detaches them when the last lease is released or expires.
//!
//! What is attached is read from the agent's own file descriptors: each
//! raw-tracepoint link's /proc/PID/fdinfo names its tracepoint (`tp_name`).

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::PathBuf,
    process::{Child, ChildStderr, Command, Stdio},
    time::{Duration, Instant},
};

use sonde_tests::{
    Agent, exclusive, metric_value, sonde_bin, unix_get, wait_for,
    workload::{build_c, copy_exe},
};
use sonde_wire::{HealthStatus, status::Status, syscalls::Report, top::SyscallsFrame};

/// On demand (the default), draining every second.
const CONFIG: &str = "[collectors.syscalls]\ninterval = \"1s\"\n";

/// The agent's lease TTL (agent/src/collectors/syscalls/lease.rs) plus the
/// expiry check period and some slack for a loaded machine.
const LEASE_EXPIRY: Duration = Duration::from_secs(10 + 1 + 4);

/// Tracepoints of the raw-tracepoint links `pid` holds that are syscall
/// entry or exit hooks.
fn syscall_hooks(pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return found;
    };
    for fd in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        if field("link_type").as_deref() == Some("raw_tracepoint")
            && let Some(tp) = field("tp_name")
            && (tp == "sys_enter" || tp == "sys_exit")
        {
            found.push(tp);
        }
    }
    found.sort();
    found
}

fn attached(agent: &Agent) -> bool {
    match syscall_hooks(agent.pid()).as_slice() {
        [] => false,
        [a, b] if a == "sys_enter" && b == "sys_exit" => true,
        other => panic!("expected one sys_enter and one sys_exit hook, got {other:?}"),
    }
}

/// The syscalls collector's (status, reason) in `sonde status`.
fn collector(agent: &Agent) -> (HealthStatus, String) {
    let s: Status = agent.api("/api/v1/status");
    let c = s.collector("syscalls").expect("syscalls collector listed");
    (c.status, c.reason.clone())
}

fn wait_detached(agent: &Agent, within: Duration) {
    wait_for(within, "the syscall hooks to be detached", || {
        (!attached(agent)).then_some(())
    });
}

/// `sonde syscalls ...` running in the background, stderr piped.
struct Cli {
    child: Child,
    stderr: BufReader<ChildStderr>,
    /// The stderr lines read so far.
    said: String,
}

impl Cli {
    fn spawn(agent: &Agent, args: &[&str]) -> Self {
        let mut child = Command::new(sonde_bin())
            .args(args)
            .arg("--socket")
            .arg(&agent.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sonde");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        Self {
            child,
            stderr,
            said: String::new(),
        }
    }

    /// Waits for the progress line that says the window has begun.
    fn counting(&mut self) -> String {
        let mut line = String::new();
        self.stderr.read_line(&mut line).expect("read stderr");
        self.said.push_str(&line);
        assert!(line.contains("counting for"), "sonde said: {line:?}");
        line
    }

    fn finish(mut self) -> (String, String) {
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read stdout");
        self.stderr
            .read_to_string(&mut self.said)
            .expect("read stderr");
        let st = self.child.wait().expect("wait sonde");
        assert!(st.success(), "sonde failed ({st}): {}", self.said);
        (out, self.said)
    }
}

#[test]
fn the_default_agent_attaches_no_syscall_hook() {
    let _x = exclusive();
    let agent = Agent::start("");
    // Give a collector that would attach late every chance to.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(syscall_hooks(agent.pid()), Vec::<String>::new());
    let (status, reason) = collector(&agent);
    assert_eq!(status, HealthStatus::Healthy, "{reason}");
    assert!(reason.contains("on demand: idle"), "{reason}");
    // No always-on export.
    let m = agent.metrics();
    assert!(!m.contains("sonde_syscalls_total"), "{m}");
    assert!(!m.contains("sonde_syscalls_tracked_pairs"), "{m}");
    // The window needs a lease while nothing is attached.
    let (code, body) = unix_get(&agent.socket, "/api/v1/syscalls").unwrap();
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("on demand"), "{body}");
}

#[test]
fn syscalls_duration_counts_a_known_workload_exactly() {
    let _x = exclusive();
    let agent = Agent::start(CONFIG);
    let bin: PathBuf = agent.dir.path().join("sonde_od_mix");
    copy_exe(&build_c("syscall_mix", &["-O2"]), &bin);
    let mut mix = Command::new(&bin)
        .args(["20000", "5000", "300", "3", "1"])
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn syscall_mix");
    let pid = mix.id().to_string();
    let mut cli = Cli::spawn(
        &agent,
        &[
            "syscalls",
            "--pid",
            &pid,
            "--duration",
            "4s",
            "--sort",
            "count",
            "-o",
            "json",
        ],
    );
    let line = cli.counting();
    eprintln!("sonde syscalls: {line}");
    assert!(line.contains("attached syscall hooks in"), "{line}");
    assert!(attached(&agent));
    let (_, reason) = collector(&agent);
    assert!(reason.contains("for 1 client"), "{reason}");
    // The workload runs inside the window: every call it makes is counted.
    let mut stdin = mix.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    let mut done = String::new();
    BufReader::new(mix.stdout.take().unwrap())
        .read_line(&mut done)
        .unwrap();
    // syscall_mix prints "done <median sleep ns>" (see syscalls.rs).
    assert!(done.trim().starts_with("done"), "workload said {done:?}");
    let (out, _) = cli.finish();
    let r: Report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let calls = |s: &str| r.row(s).map_or(0, |x| x.calls);
    assert_eq!(calls("getppid"), 20_000, "{r:#?}");
    assert_eq!(calls("openat"), 300, "{r:#?}");
    assert_eq!(calls("nanosleep"), 3, "{r:#?}");
    // 5000 writes to /dev/null, and "done" on stdout if it fell in the
    // window.
    assert!((5_000..=5_001).contains(&calls("write")), "{r:#?}");
    let openat = r.row("openat").unwrap();
    assert_eq!(openat.errnos.get("ENOENT"), Some(&300), "{openat:?}");
    let sleep = r.row("nanosleep").unwrap();
    assert!(sleep.avg_seconds >= 0.001, "{sleep:?}");
    assert!(
        (3.5..6.0).contains(&r.window_seconds),
        "window {}",
        r.window_seconds
    );
    assert_eq!(r.processes.len(), 1, "{r:#?}");
    assert_eq!(r.processes[0].service, "sonde_od_mix", "{r:#?}");
    let _ = stdin.write_all(b"bye\n");
    let _ = mix.wait();
    // The only client released its lease: detached now, not at expiry.
    wait_detached(&agent, Duration::from_secs(3));
    let (status, reason) = collector(&agent);
    assert_eq!(status, HealthStatus::Healthy, "{reason}");
    assert!(reason.contains("on demand: idle"), "{reason}");
    // Exited processes were released on the way: the self-metrics are
    // not exported in this mode, so ask the lost-events counter instead.
    let m = agent.metrics();
    assert_eq!(
        metric_value(&m, "sonde_events_lost_total{collector=\"syscalls\"}").unwrap_or(0.0),
        0.0,
        "{m}"
    );
}

#[test]
fn concurrent_clients_share_one_attachment() {
    let _x = exclusive();
    let agent = Agent::start(CONFIG);
    let mut a = Cli::spawn(&agent, &["syscalls", "--duration", "8s", "-o", "json"]);
    let first = a.counting();
    assert!(first.contains("attached syscall hooks in"), "{first}");
    assert!(attached(&agent));
    let mut b = Cli::spawn(&agent, &["syscalls", "--duration", "1s", "-o", "json"]);
    let second = b.counting();
    assert!(
        second.contains("already attached (shared by 2 clients)"),
        "{second}"
    );
    // Still one sys_enter and one sys_exit hook (attached() panics on more).
    assert!(attached(&agent));
    let (_, reason) = collector(&agent);
    assert!(reason.contains("for 2 clients"), "{reason}");
    let (out, _) = b.finish();
    let rb: Report = serde_json::from_str(&out).unwrap();
    assert!(rb.total.calls > 0, "the host makes syscalls: {rb:#?}");
    // b released its lease; a still holds the hooks.
    wait_for(Duration::from_secs(3), "one client left", || {
        collector(&agent).1.contains("for 1 client").then_some(())
    });
    assert!(attached(&agent));
    let (out, _) = a.finish();
    let ra: Report = serde_json::from_str(&out).unwrap();
    assert!(ra.window_seconds >= 7.5, "{}", ra.window_seconds);
    assert!(ra.total.calls >= rb.total.calls, "a's window holds b's");
    wait_detached(&agent, Duration::from_secs(3));
}

/// Sends SIGINT, as Ctrl-C in a terminal does.
fn ctrl_c(child: &Child) {
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(st.success());
}

#[test]
fn ctrl_c_reports_what_was_counted_and_releases_the_lease_at_once() {
    let _x = exclusive();
    let agent = Agent::start(CONFIG);
    // `sonde syscalls` for a minute, stopped after its window began: it
    // reports what it counted so far (as `strace -c` does) and releases
    // its lease, so the hooks go now, not at the lease's expiry.
    let mut cli = Cli::spawn(&agent, &["syscalls", "--duration", "60s", "-o", "json"]);
    cli.counting();
    assert!(attached(&agent));
    std::thread::sleep(Duration::from_millis(1500));
    let stopped = Instant::now();
    ctrl_c(&cli.child);
    let (out, said) = cli.finish();
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "sonde syscalls took {:?} to stop",
        stopped.elapsed()
    );
    assert!(said.contains("interrupted: reporting the"), "{said}");
    let r: Report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(
        (1.0..10.0).contains(&r.window_seconds),
        "window {}",
        r.window_seconds
    );
    assert!(r.total.calls > 0, "{r:#?}");
    wait_detached(&agent, Duration::from_secs(3));

    // `sonde top` (not on a terminal) quits on SIGINT the same way.
    let mut top = Command::new(sonde_bin())
        .args(["top", "-d", "1", "-n", "1000", "-o", "json"])
        .arg("--socket")
        .arg(&agent.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sonde top");
    let mut frames = BufReader::new(top.stdout.take().unwrap());
    let mut line = String::new();
    frames.read_line(&mut line).expect("top frame");
    assert!(line.starts_with('{'), "sonde top printed {line:?}");
    assert!(attached(&agent));
    ctrl_c(&top);
    let st = sonde_tests::wait_child_or_kill(&mut top, Duration::from_secs(10), "sonde top");
    assert!(st.success(), "sonde top exited with {st} on SIGINT");
    wait_detached(&agent, Duration::from_secs(3));
}

#[test]
fn a_killed_client_leaves_the_hooks_attached_only_until_its_lease_expires() {
    let _x = exclusive();
    let agent = Agent::start(CONFIG);
    let loop_bin = agent.dir.path().join("sonde_od_loop");
    copy_exe(&build_c("getppid_loop", &["-O2"]), &loop_bin);
    let mut work = Command::new(&loop_bin)
        .arg("2000000000")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn getppid_loop");
    let pid = work.id().to_string();
    // `sonde top` holds a lease while it runs, and shows the loop.
    let mut top = Command::new(sonde_bin())
        .args(["top", "-d", "1", "-n", "1000", "-o", "json", "--pid", &pid])
        .arg("--socket")
        .arg(&agent.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sonde top");
    let mut frames = BufReader::new(top.stdout.take().unwrap());
    let mut seen = false;
    for _ in 0..5 {
        let mut line = String::new();
        frames.read_line(&mut line).expect("top frame");
        let f: SyscallsFrame =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if f.processes
            .iter()
            .any(|p| p.pid.to_string() == pid && p.calls_per_second > 1000.0)
        {
            seen = true;
            break;
        }
    }
    assert!(seen, "sonde top never showed the getppid loop");
    assert!(attached(&agent));
    // SIGKILL: no release. The lease expires within its TTL.
    top.kill().unwrap();
    let _ = top.wait();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        attached(&agent),
        "a live lease keeps the hooks until its TTL"
    );
    wait_detached(&agent, LEASE_EXPIRY);
    let took = killed.elapsed();
    eprintln!("detached {took:?} after the client was killed");
    let _ = work.kill();
    let _ = work.wait();
}

#[test]
fn on_demand_can_be_forbidden() {
    let _x = exclusive();
    let agent = Agent::start("[collectors.syscalls]\non_demand = false\n");
    let out = agent.cli(&["syscalls", "--duration", "1s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("syscall accounting is off"), "{err}");
    assert_eq!(syscall_hooks(agent.pid()), Vec::<String>::new());
    let s: Status = agent.api("/api/v1/status");
    assert!(s.collector("syscalls").is_none(), "{:?}", s.collectors);
}
