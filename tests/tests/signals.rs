//! Signals end to end: SIGHUP reloads the config file (live keys applied,
//! restart-only keys reported, an invalid file refused and counted), and
//! SIGKILL leaves nothing behind in the kernel: no program, link or uprobe,
//! and the next agent replaces the stale control socket.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use sonde_tests::{
    Agent, exclusive, free_port, metric_value, wait_for,
    workload::{Workload, build_c},
};
use sonde_wire::{
    HealthStatus,
    alerts::AlertsReport,
    http::RouteRow,
    status::{HealthReport, Status},
};

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid this test spawned, with a valid signal.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// The agent's config file with `body` after its `[api]` header (which
/// names its port and socket and must stay).
fn rewrite_config(agent: &Agent, body: &str) {
    let path = agent.dir.path().join("sonde.toml");
    let text = std::fs::read_to_string(&path).expect("read config");
    let header: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    assert!(header.starts_with("[api]\nlisten"), "{header}");
    std::fs::write(&path, format!("{header}\n{body}")).expect("write config");
}

fn still_running(agent: &mut Agent) {
    let st = agent
        .child
        .as_mut()
        .expect("agent")
        .try_wait()
        .expect("wait");
    assert!(st.is_none(), "agent exited: {st:?}\n{}", agent.log());
}

fn config_health(agent: &Agent) -> (HealthStatus, String) {
    let (_, body) = agent.get("/health");
    let h: HealthReport = serde_json::from_str(&body).expect("health JSON");
    let c = h
        .components
        .iter()
        .find(|c| c.name == "config")
        .unwrap_or_else(|| panic!("no config component: {body}"));
    (c.status, c.reason.clone())
}

/// A one-shot HTTP/1.0 GET of `path` on `port`, to feed the HTTP collector.
fn get(port: u16, path: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
}

fn python_server(dir: &Path) -> (Workload, u16) {
    let port = free_port();
    let wl = Workload::spawn(
        Command::new("python3")
            .args(["-m", "http.server", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for(Duration::from_secs(20), "the HTTP server", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    (wl, port)
}

const RULE: &str = "[[alerts.rules]]\nname = \"ReloadedRule\"\nexpr = \"sonde_build_info\"\n\
                    op = \">\"\nthreshold = 0\n";

#[test]
fn sighup_applies_live_keys_and_reports_restart_only_keys() {
    let _x = exclusive();
    let base = "[alerts]\ninterval = \"1s\"\nbuiltin_rules = false\n";
    let mut agent = Agent::start(base);
    let files = agent.dir.path().join("www/files");
    std::fs::create_dir_all(&files).unwrap();
    for f in ["alpha", "beta", "gamma"] {
        std::fs::write(files.join(f), "x").unwrap();
    }
    let (srv, port) = python_server(&agent.dir.path().join("www"));
    let rows =
        |agent: &Agent| -> Vec<RouteRow> { agent.api(&format!("/api/v1/http?pid={}", srv.pid())) };
    let a: AlertsReport = agent.api("/api/v1/alerts");
    assert_eq!(a.rules, 0, "{a:?}");
    get(port, "/files/alpha");
    wait_for(Duration::from_secs(10), "/files/alpha counted", || {
        rows(&agent)
            .iter()
            .any(|r| r.route == "/files/alpha")
            .then_some(())
    });

    // A live key of each kind (an alert rule, a route pattern) and a key
    // baked into a perf event at start (the sampling frequency).
    rewrite_config(
        &agent,
        &format!(
            "{base}\n[collectors.http]\nroutes = [\"/files/{{name}}\"]\n\
             [collectors.profile]\nfrequency_hz = 99\n\n{RULE}"
        ),
    );
    signal(agent.pid(), libc::SIGHUP);
    let a = wait_for(Duration::from_secs(10), "the reloaded rule firing", || {
        let a: AlertsReport = agent.api("/api/v1/alerts");
        a.alerts
            .iter()
            .any(|x| x.name == "ReloadedRule")
            .then_some(a)
    });
    assert_eq!(a.rules, 1, "{a:?}");
    still_running(&mut agent);

    get(port, "/files/beta");
    wait_for(
        Duration::from_secs(10),
        "/files/beta under the new route",
        || {
            rows(&agent)
                .iter()
                .any(|r| r.route == "/files/{name}")
                .then_some(())
        },
    );

    let s: Status = agent.cli_json(&["status", "-o", "json"]);
    let last = s.config.last_reload.clone().expect("a reload");
    assert_eq!(last.result, "ok", "{s:?}");
    for k in ["alerts.rules", "collectors.http.routes"] {
        assert!(last.applied.iter().any(|a| a == k), "{k}: {last:?}");
    }
    assert_eq!(s.config.restart_needed, ["collectors.profile.frequency_hz"]);
    assert_eq!((s.config.reloads_ok, s.config.reloads_rejected), (1, 0));
    let out = agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("restart needed for: collectors.profile.frequency_hz"),
        "{text}"
    );
    let (st, reason) = config_health(&agent);
    assert_eq!(st, HealthStatus::Healthy, "{reason}");
    assert!(
        reason.contains("collectors.profile.frequency_hz"),
        "{reason}"
    );
    let m = agent.metrics();
    assert_eq!(
        metric_value(&m, "sonde_config_reloads_total{result=\"ok\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "sonde_config_restart_pending_keys"),
        Some(1.0)
    );
    assert!(
        agent.log().contains("take effect only after a restart"),
        "{}",
        agent.log()
    );
    let st = agent.stop();
    assert!(st.success(), "{st}\n{}", agent.log());
}

#[test]
fn sighup_with_an_invalid_file_keeps_the_running_config() {
    let _x = exclusive();
    let good = format!("[alerts]\ninterval = \"1s\"\nbuiltin_rules = false\n\n{RULE}");
    let mut agent = Agent::start(&good);
    wait_for(Duration::from_secs(10), "the rule firing", || {
        let a: AlertsReport = agent.api("/api/v1/alerts");
        (!a.alerts.is_empty()).then_some(())
    });

    // An unknown key on line 8 of the file (3 header lines, a blank one).
    rewrite_config(
        &agent,
        "[alerts]\nbuiltin_rules = false\n[collectors.process]\nmax_procs = 5\n",
    );
    signal(agent.pid(), libc::SIGHUP);
    wait_for(Duration::from_secs(10), "the refusal counted", || {
        let m = agent.metrics();
        (metric_value(&m, "sonde_config_reloads_total{result=\"rejected\"}") == Some(1.0))
            .then_some(())
    });
    still_running(&mut agent);
    let a: AlertsReport = agent.api("/api/v1/alerts");
    assert_eq!(a.rules, 1, "running rules kept: {a:?}");
    assert!(a.alerts.iter().any(|x| x.name == "ReloadedRule"), "{a:?}");
    let (st, reason) = config_health(&agent);
    assert_eq!(st, HealthStatus::Degraded, "{reason}");
    assert!(
        reason.contains("max_procs") && reason.contains("line 8"),
        "{reason}"
    );
    let log = agent.log();
    assert!(
        log.contains("config reload rejected") && log.contains("max_procs"),
        "{log}"
    );

    // Fixed again: accepted, nothing changed, health back to healthy.
    rewrite_config(&agent, &good);
    signal(agent.pid(), libc::SIGHUP);
    let s = wait_for(Duration::from_secs(10), "the second reload", || {
        let s: Status = agent.api("/api/v1/status");
        (s.config.reloads_ok == 1).then_some(s)
    });
    assert_eq!(s.config.reloads_rejected, 1);
    assert!(s.config.restart_needed.is_empty(), "{s:?}");
    assert_eq!(config_health(&agent).0, HealthStatus::Healthy);
    let st = agent.stop();
    assert!(st.success(), "{st}\n{}", agent.log());
}

/// `bpftool <what> show` as JSON.
fn bpftool(what: &str) -> Vec<serde_json::Value> {
    let out = Command::new("bpftool")
        .args([what, "show", "--json"])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool {what} show failed");
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("bpftool JSON")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Program and link ids held by `pid`'s fds, from /proc/PID/fdinfo.
fn held_ids(pid: u32) -> (Vec<u64>, Vec<u64>) {
    let (mut progs, mut links) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for l in text.lines() {
            let num = |p: &str| l.strip_prefix(p)?.trim().parse::<u64>().ok();
            progs.extend(num("prog_id:"));
            links.extend(num("link_id:"));
        }
    }
    progs.sort_unstable();
    progs.dedup();
    links.sort_unstable();
    links.dedup();
    (progs, links)
}

fn ids(objs: &[serde_json::Value]) -> Vec<u64> {
    objs.iter().filter_map(|o| o.get("id")?.as_u64()).collect()
}

/// SIGKILLs the agent and waits for it to be gone.
fn sigkill(agent: &mut Agent) {
    signal(agent.pid(), libc::SIGKILL);
    let st = agent
        .wait_exit(Duration::from_secs(10))
        .expect("agent gone after SIGKILL");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(9),
        "{st}"
    );
}

#[test]
fn sigkill_leaves_no_program_or_link_and_the_next_agent_replaces_the_socket() {
    let _x = exclusive();
    let mut agent = Agent::start("");
    let (progs, links) = held_ids(agent.pid());
    assert!(progs.len() >= 5, "programs held: {progs:?}");
    assert!(!links.is_empty(), "links held: {links:?}");
    let perf_of_agent = |pid: u32| {
        bpftool("perf")
            .into_iter()
            .filter(|p| p.get("pid").and_then(|v| v.as_u64()) == Some(u64::from(pid)))
            .count()
    };
    let pid = agent.pid();
    assert!(perf_of_agent(pid) > 0, "the profiler's perf events");

    sigkill(&mut agent);
    // Programs, links and perf events are held by fds only (nothing is
    // pinned): the kernel releases them with the process.
    wait_for(
        Duration::from_secs(10),
        "the agent's programs and links to be freed",
        || {
            let loaded = ids(&bpftool("prog"));
            let linked = ids(&bpftool("link"));
            (!progs.iter().any(|p| loaded.contains(p)) && !links.iter().any(|l| linked.contains(l)))
                .then_some(())
        },
    );
    assert_eq!(perf_of_agent(pid), 0);
    assert!(
        !std::fs::read_dir("/sys/fs/bpf")
            .map(|d| d
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains("sonde")))
            .unwrap_or(false),
        "nothing pinned"
    );

    // The socket file outlives a SIGKILL; the next agent replaces it.
    assert!(agent.socket.exists(), "the killed agent's socket file");
    let socket = agent.socket.display().to_string();
    let next = Agent::start_with_env("", &[("SONDE_API__SOCKET", &socket)]);
    assert!(
        next.log().contains("removing stale control socket"),
        "{}",
        next.log()
    );
    let s: Status = sonde_tests_api(&agent.socket);
    assert_eq!(s.pid, next.pid(), "the new agent serves the old path");
}

fn sonde_tests_api(socket: &Path) -> Status {
    let (code, body) = sonde_tests::unix_get(socket, "/api/v1/status").expect("status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status JSON")
}

/// The executable mapping of libc in `pid`: (start, len, file offset, path).
fn libc_text(pid: u32) -> (u64, u64, u64, PathBuf) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    maps.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || f[1] != "r-xp" || !f[5].contains("/libc.so") {
                return None;
            }
            let (s, e) = f[0].split_once('-')?;
            let s = u64::from_str_radix(s, 16).ok()?;
            let e = u64::from_str_radix(e, 16).ok()?;
            let off = u64::from_str_radix(f[2], 16).ok()?;
            Some((s, e - s, off, PathBuf::from(f[5])))
        })
        .unwrap_or_else(|| panic!("no libc text in {pid}:\n{maps}"))
}

/// Breakpoints in `pid`'s libc text: bytes that are int3 in its memory and
/// something else in the file. A uprobe is such a byte, written by the
/// kernel into the probed process and restored when the uprobe goes away.
fn breakpoints(pid: u32) -> usize {
    use std::os::unix::fs::FileExt;
    let (start, len, off, path) = libc_text(pid);
    let mut file = vec![0u8; len as usize];
    let n = std::fs::File::open(&path)
        .expect("libc")
        .read_at(&mut file, off)
        .expect("read libc");
    let mut mem = vec![0u8; n];
    std::fs::File::open(format!("/proc/{pid}/mem"))
        .expect("mem")
        .read_exact_at(&mut mem, start)
        .expect("read mem");
    mem.iter()
        .zip(&file[..n])
        .filter(|(m, f)| **m == 0xCC && **f != 0xCC)
        .count()
}

#[test]
fn alloc_session_cut_short_by_sigkill_leaves_no_uprobe() {
    let _x = exclusive();
    let mut agent = Agent::start("");
    let counter = agent.dir.path().join("leak.count");
    let bin = build_c("leak_churn", &["-O1", "-g", "-fno-omit-frame-pointer"]);
    let wl = Workload::spawn(Command::new(&bin).args(["leak", counter.to_str().unwrap(), "60"]));
    let rounds = || {
        std::fs::read_to_string(&counter)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    wait_for(Duration::from_secs(5), "workload running", || {
        (rounds() >= 5).then_some(())
    });
    assert_eq!(breakpoints(wl.pid()), 0, "no probe before the session");

    let p = wl.pid().to_string();
    let mut session: Child = Command::new(sonde_tests::sonde_bin())
        .args(["alloc", "--pid", &p, "-d", "60s", "--socket"])
        .arg(&agent.socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sonde alloc");
    let during = wait_for(Duration::from_secs(20), "the session's uprobes", || {
        let n = breakpoints(wl.pid());
        (n >= 2).then_some(n)
    });

    sigkill(&mut agent);
    let st = wait_for(Duration::from_secs(10), "sonde alloc to end", || {
        session.try_wait().expect("wait")
    });
    assert!(!st.success(), "alloc cannot succeed without its agent");
    wait_for(
        Duration::from_secs(10),
        "the uprobes to be removed from the target",
        || (breakpoints(wl.pid()) == 0).then_some(()),
    );
    // The target runs on unharmed.
    let before = rounds();
    wait_for(Duration::from_secs(5), "the workload to go on", || {
        (rounds() > before + 2).then_some(())
    });
    eprintln!("{during} breakpoints during the session, none after the agent's SIGKILL");
}

#[test]
fn systemd_unit_reloads_with_sighup() {
    let unit =
        std::fs::read_to_string(sonde_tests::workspace_root().join("deploy/systemd/sonde.service"))
            .unwrap();
    assert!(
        unit.lines()
            .any(|l| l == "ExecReload=/bin/kill -HUP $MAINPID"),
        "{unit}"
    );
}
