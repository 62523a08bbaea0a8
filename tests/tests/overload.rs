//! Overload, end to end: the agent frozen (SIGSTOP) through a fork storm
//! and an HTTP flood, and kernel maps shrunk by config until they overflow.
//! What must hold: every loss is counted, the agent catches up and keeps
//! serving, its memory stays bounded, and what happens after the overload
//! is counted exactly and under the right names.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sonde_tests::{
    Agent, exclusive, free_port, metric_value, wait_for,
    workload::{Workload, build_c, copy_exe},
};
use sonde_wire::{HealthStatus, status::HealthReport};

const SERVER: &str = "http_server_request_duration_seconds_count";

fn sh_ok(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs a Debian package when its command is missing.
fn ensure_apt(bin: &str, pkg: &str) {
    if !sh_ok(&format!("command -v {bin}")) {
        assert!(
            sh_ok(&format!("apt-get install -y -q {pkg}")),
            "cannot install {pkg} with apt-get (needed for this test)"
        );
    }
}

/// nginx serving `dir/www` on a free loopback port, logging to `dir/access.log`.
fn nginx(dir: &Path) -> (Workload, u16) {
    ensure_apt("nginx", "nginx");
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         server {{ listen 127.0.0.1:{port}; root {d}/www; location / {{ }} }}\n}}\n"
    );
    std::fs::create_dir_all(dir.join("www")).expect("mkdir www");
    for f in ["flood.bin", "after.bin"] {
        std::fs::write(dir.join("www").join(f), vec![b'x'; 512]).expect("write file");
    }
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("write nginx.conf");
    let wl = Workload::spawn(
        Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for(Duration::from_secs(20), "nginx to listen", || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    (wl, port)
}

/// Requests for `path` in nginx's access log.
fn logged(dir: &Path, path: &str) -> u64 {
    std::fs::read_to_string(dir.join("access.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("GET {path} ")))
        .count() as u64
}

/// The forker workload under a unique name (its `service_name`).
fn forker(agent: &Agent, name: &str) -> PathBuf {
    let p = agent.dir.path().join(name);
    copy_exe(&build_c("forker", &["-O2", "-static"]), &p);
    p
}

fn run_forker(bin: &Path, children: u64, calls: u64) {
    let st = Command::new(bin)
        .args([children.to_string(), calls.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("run forker");
    assert!(st.success(), "forker failed");
}

/// Resident memory of `pid` in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/PID/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child's pid with a valid signal.
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

fn health(agent: &Agent) -> HealthReport {
    let (_, body) = agent.get("/health");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/health: {e}: {body}"))
}

/// Sum of the values of `series` whose labels include every `want` pair.
fn sum(metrics: &str, series: &str, want: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{series}{{")))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn lost(m: &str, collector: &str) -> f64 {
    metric_value(
        m,
        &format!("sonde_events_lost_total{{collector=\"{collector}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Waits until `series` over `want` equals `n`, then checks it stays put.
fn expect_exact(agent: &Agent, series: &str, want: &[(&str, &str)], n: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = agent.metrics();
        let got = sum(&m, series, want);
        if got == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{series} {want:?}: {got}, want {n}\n{}",
            m.lines()
                .filter(|l| l.starts_with(series))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let got = sum(&agent.metrics(), series, want);
    assert_eq!(got, n, "{series} {want:?} moved after settling");
}

fn getppid(service: &str) -> String {
    format!("sonde_syscalls_total{{service_name=\"{service}\",syscall=\"getppid\"}}")
}

/// Agent config with the syscall collector on explicitly (it is becoming
/// on-demand by default) and drained every second.
const SYSCALLS_ON: &str = "[collectors.syscalls]\nenabled = true\ninterval = \"1s\"\n";

#[test]
fn frozen_agent_counts_drops_catches_up_and_stays_bounded() {
    let _x = exclusive();
    ensure_apt("wrk", "wrk");
    let agent = Agent::start(SYSCALLS_ON);
    let dir = tempfile::tempdir().expect("tempdir");
    let (_srv, port) = nginx(dir.path());
    let storm = forker(&agent, "sonde_ov_storm");
    let after = forker(&agent, "sonde_ov_after");
    // Let start-up work (the first drains, unwind tables and symbolizer
    // caches of the binaries already running) settle before the reference.
    std::thread::sleep(Duration::from_secs(8));
    let pid = agent.pid();
    let rss_before = vm_rss_kib(pid);
    let m0 = agent.metrics();
    let url = format!("http://127.0.0.1:{port}/flood.bin");

    let mut flood = Command::new("wrk")
        .args(["-t1", "-c8", "-d4s", &url])
        .stdout(Stdio::null())
        .spawn()
        .expect("wrk");
    std::thread::sleep(Duration::from_millis(300));
    signal(pid, libc::SIGSTOP);
    let frozen = Instant::now();
    let (children, calls) = (3000u64, 7u64);
    run_forker(&storm, children, calls);
    assert!(flood.wait().expect("wrk").success(), "wrk failed");
    let frozen_for = frozen.elapsed();
    signal(pid, libc::SIGCONT);
    let thawed = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "/health/ready after the thaw",
        || {
            sonde_tests::http_get(agent.addr, "/health/ready")
                .ok()
                .filter(|(c, _)| *c == 200)
        },
    );
    let ready_after = thawed.elapsed();
    // The backlog: ring buffers read and the kernel maps drained (1 s
    // interval), then the figures stop moving.
    let mut prev = String::new();
    let caught_up = wait_for(Duration::from_secs(60), "counts to settle", || {
        let m = agent.metrics();
        let key = |m: &str| {
            format!(
                "{} {} {}",
                sum(m, SERVER, &[("server_port", &port.to_string())]),
                sum(m, "sonde_syscalls_total", &[("syscall", "getppid")]),
                metric_value(m, "sonde_process_execs_total").unwrap_or(0.0)
            )
        };
        let k = key(&m);
        let settled = k == prev;
        prev = k;
        std::thread::sleep(Duration::from_millis(1500));
        settled.then(|| thawed.elapsed())
    });
    let m1 = agent.metrics();

    // HTTP: never more than nginx served; anything missing is a counted loss.
    let p = port.to_string();
    let served = logged(dir.path(), "/flood.bin") as f64;
    let counted = sum(&m1, SERVER, &[("server_port", &p)]);
    let http_lost = lost(&m1, "http") - lost(&m0, "http");
    let http_ringbuf_full = sum(
        &m1,
        "sonde_http_kernel_events_total",
        &[("counter", "ringbuf_full")],
    ) - sum(
        &m0,
        "sonde_http_kernel_events_total",
        &[("counter", "ringbuf_full")],
    );
    // Syscalls: the storm's getppid, by whatever service name.
    let want_calls = (children * calls) as f64;
    let storm_calls = metric_value(&m1, &getppid("sonde_ov_storm")).unwrap_or(0.0);
    let all_calls = sum(&m1, "sonde_syscalls_total", &[("syscall", "getppid")])
        - sum(&m0, "sonde_syscalls_total", &[("syscall", "getppid")]);
    let sys_full = sum(&m1, "sonde_syscalls_map_full_total", &[])
        - sum(&m0, "sonde_syscalls_map_full_total", &[]);
    let sys_lost = lost(&m1, "syscalls") - lost(&m0, "syscalls");
    let execs = metric_value(&m1, "sonde_process_execs_total").unwrap_or(0.0)
        - metric_value(&m0, "sonde_process_execs_total").unwrap_or(0.0);
    let proc_lost = lost(&m1, "process") - lost(&m0, "process");
    println!(
        "frozen {frozen_for:?}; ready {ready_after:?} and settled {caught_up:?} after the thaw\n\
         http: served {served}, counted {counted}, events lost {http_lost}, ringbuf_full {http_ringbuf_full}\n\
         syscalls: getppid want {want_calls}, as sonde_ov_storm {storm_calls}, any service {all_calls}, \
         map_full {sys_full}, events lost {sys_lost}\n\
         process: execs {execs} (storm {children}), events lost {proc_lost}"
    );
    assert!(served > 100.0, "wrk made only {served} requests");
    assert!(
        counted <= served,
        "http counted {counted} > served {served}"
    );
    assert!(
        counted == served || http_lost > 0.0,
        "http: {} requests missing and no loss counted",
        served - counted
    );
    assert!(
        all_calls <= want_calls + 100.0,
        "getppid overcounted: {all_calls}"
    );
    assert!(
        storm_calls == want_calls || sys_lost > 0.0 || proc_lost > 0.0,
        "syscalls: {} storm calls missing or misnamed and no loss counted",
        want_calls - storm_calls
    );
    assert!(
        sys_full == 0.0 || sys_lost > 0.0,
        "map-full drops not in sonde_events_lost_total"
    );
    assert!(
        execs >= children as f64 || proc_lost > 0.0,
        "process: {execs} execs seen of {children} and no loss counted"
    );

    // After the thaw: exact counts under the right names.
    let status = health(&agent);
    assert_ne!(status.status, HealthStatus::Unhealthy, "{status:?}");
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    for _ in 0..50 {
        keepalive_get(&mut conn, "/after.bin");
    }
    drop(conn);
    assert_eq!(logged(dir.path(), "/after.bin"), 50);
    expect_exact(
        &agent,
        SERVER,
        &[
            ("service_name", "nginx"),
            ("http_route", "/after.bin"),
            ("http_response_status_code", "200"),
        ],
        50.0,
    );
    run_forker(&after, 20, 5);
    expect_exact(
        &agent,
        "sonde_syscalls_total",
        &[("service_name", "sonde_ov_after"), ("syscall", "getppid")],
        100.0,
    );

    let rss_after = vm_rss_kib(pid);
    println!("agent VmRSS: {rss_before} KiB before, {rss_after} KiB after");
    // The agent's tables are bounded (process table, syscall pairs, HTTP
    // routes, profile window), but its start-up caches (unwind tables and
    // symbols of the binaries already running) are still filling when the
    // reference is taken: a debug build read 211-389 MB at that point and
    // plateaued at 390-420 MB whether or not a storm ran (389 -> 389 MB in
    // one run). So the bound is 192 MiB over the reference or 512 MiB,
    // whichever is higher: above that warm-up, and far below per-event
    // growth (150 000 requests and 3000 processes at 1 KiB each would be
    // 150 MiB more).
    let bound = (rss_before + 192 * 1024).max(512 * 1024);
    assert!(
        rss_after < bound,
        "agent RSS grew from {rss_before} to {rss_after} KiB"
    );
}

#[test]
fn full_syscall_map_is_counted_and_the_agent_keeps_serving() {
    let _x = exclusive();
    // A small pair map, still above what the rest of a busy machine (other
    // builds and tests) needs per drain, so the map empties again once the
    // storm's pairs are exported and released. 2048 was not: with builds
    // running beside the suite (2026-12-07) the rest of the host refused
    // inserts in every drain for 60 s after the storm.
    let agent = Agent::start(&format!(
        "{SYSCALLS_ON}max_pairs = 4096\nmax_threads = 1024\n"
    ));
    let storm = forker(&agent, "sonde_ov_fill");
    let after = forker(&agent, "sonde_ov_small");
    std::thread::sleep(Duration::from_secs(2));
    let m0 = agent.metrics();
    let stats_full = |m: &str| {
        sum(m, "sonde_syscalls_map_full_total", &[("map", "stats")])
            - sum(&m0, "sonde_syscalls_map_full_total", &[("map", "stats")])
    };
    // Frozen, the agent drains nothing: 1500 processes with 7+ pairs each
    // (static start-up, getppid, exit) cannot fit in 4096 entries.
    signal(agent.pid(), libc::SIGSTOP);
    run_forker(&storm, 1500, 3);
    signal(agent.pid(), libc::SIGCONT);
    let m1 = wait_for(Duration::from_secs(20), "map-full drops counted", || {
        let m = agent.metrics();
        (stats_full(&m) > 0.0).then_some(m)
    });
    let full = stats_full(&m1);
    let sys_lost = lost(&m1, "syscalls") - lost(&m0, "syscalls");
    println!("max_pairs 4096: stats map_full {full}, events lost {sys_lost}");
    assert!(
        sys_lost >= full,
        "map_full {full} not in events_lost ({sys_lost})"
    );
    let h = health(&agent);
    let sys = h
        .components
        .iter()
        .find(|c| c.name == "syscalls")
        .unwrap_or_else(|| panic!("no syscalls component: {h:?}"));
    assert_eq!(sys.status, HealthStatus::Degraded, "{h:?}");
    assert!(!sys.reason.is_empty(), "degraded without a reason: {h:?}");
    // The storm's pairs are exported and released; once no insert has been
    // refused for three drains the map has room, and new processes are
    // counted exactly again.
    let mut last = (f64::NAN, 0);
    let recovered = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "the stats map to have room",
        || {
            let f = stats_full(&agent.metrics());
            if f == last.0 {
                last.1 += 1;
            } else {
                last = (f, 0);
            }
            std::thread::sleep(Duration::from_secs(1));
            (last.1 >= 3).then_some(())
        },
    );
    println!("no refused insert for 3 s after {:?}", recovered.elapsed());
    run_forker(&after, 10, 5);
    expect_exact(
        &agent,
        "sonde_syscalls_total",
        &[("service_name", "sonde_ov_small"), ("syscall", "getppid")],
        50.0,
    );
    assert_eq!(
        sonde_tests::http_get(agent.addr, "/health/live")
            .map(|r| r.0)
            .ok(),
        Some(200)
    );
}

/// One request on an open keep-alive connection; the response read whole
/// (nginx answers with Content-Length).
fn keepalive_get(s: &mut TcpStream, path: &str) {
    use std::io::{Read, Write};
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("send");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .expect("Content-Length");
            if body.len() >= len {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                return;
            }
        }
    }
}

#[test]
fn full_http_connection_map_is_survived() {
    let _x = exclusive();
    let agent = Agent::start("[collectors.http]\nmax_connections = 64\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_srv, port) = nginx(dir.path());
    let p = port.to_string();
    let m0 = agent.metrics();
    // 256 connections open at once, four times the map: one request each,
    // then a second one on each once all are open.
    let mut conns: Vec<TcpStream> = (0..256)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    for s in &mut conns {
        keepalive_get(s, "/flood.bin");
    }
    for s in &mut conns {
        keepalive_get(s, "/flood.bin");
    }
    drop(conns);
    std::thread::sleep(Duration::from_secs(3));
    let m1 = agent.metrics();
    let served = logged(dir.path(), "/flood.bin") as f64;
    let counted = sum(&m1, SERVER, &[("server_port", &p)]);
    let kernel = |c: &str| {
        sum(&m1, "sonde_http_kernel_events_total", &[("counter", c)])
            - sum(&m0, "sonde_http_kernel_events_total", &[("counter", c)])
    };
    println!(
        "max_connections 64, 256 connections x 2 requests: served {served}, counted {counted}, \
         conn_full {}, events lost {}",
        kernel("conn_full"),
        lost(&m1, "http") - lost(&m0, "http")
    );
    assert_eq!(served, 512.0);
    assert!(counted <= served, "counted {counted} > served {served}");
    assert!(
        counted == served || kernel("conn_full") > 0.0,
        "{} requests missing and no overflow counted",
        served - counted
    );
    let h = health(&agent);
    assert_ne!(h.status, HealthStatus::Unhealthy, "{h:?}");
    // Afterwards, with the map free again, requests are counted exactly.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    for _ in 0..20 {
        keepalive_get(&mut s, "/after.bin");
    }
    drop(s);
    expect_exact(
        &agent,
        SERVER,
        &[("service_name", "nginx"), ("http_route", "/after.bin")],
        20.0,
    );
}

/// Folded stacks of `pid` over `secs` seconds from `sonde profile`.
fn profile_folded(agent: &Agent, pid: u32, secs: u32) -> Vec<(String, u64)> {
    let out = agent.cli(&[
        "profile",
        "--pid",
        &pid.to_string(),
        "--duration",
        &format!("{secs}s"),
        "--format",
        "folded",
    ]);
    assert!(
        out.status.success(),
        "sonde profile: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (stack, n) = l.rsplit_once(' ')?;
            Some((stack.to_owned(), n.parse().ok()?))
        })
        .collect()
}

#[test]
fn full_profiler_maps_are_counted_and_profiling_goes_on() {
    let _x = exclusive();
    // 32 keys and 32 stacks per drain (the compiled-in size is 8192): 96
    // busy processes with their own address-space layout each bring keys
    // and stacks of their own, far more than fit in one 2 s drain.
    let agent =
        Agent::start("[collectors.profile]\nfrequency_hz = 49\nmax_keys = 32\nmax_stacks = 32\n");
    let bin = build_c("profile_abc", &["-O1", "-g", "-fno-omit-frame-pointer"]);
    let m0 = agent.metrics();
    let errors = |m: &str, reason: &str| {
        sum(m, "sonde_profile_errors_total", &[("reason", reason)])
            - sum(&m0, "sonde_profile_errors_total", &[("reason", reason)])
    };
    let unwind_full = |m: &str| {
        sum(
            m,
            "sonde_unwind_errors_total",
            &[("reason", "stack_map_full")],
        ) - sum(
            &m0,
            "sonde_unwind_errors_total",
            &[("reason", "stack_map_full")],
        )
    };
    let storm: Vec<Workload> = (0..96)
        .map(|_| Workload::spawn(Command::new(&bin).args(["cpu", "8"])))
        .collect();
    // Drops counted, and the collector says so while they happen (its
    // health describes the last drain).
    let mut degraded = None;
    let m1 = wait_for(Duration::from_secs(30), "map-full drops counted", || {
        let h = health(&agent);
        if let Some(p) = h.components.iter().find(|c| c.name == "profile")
            && p.status == HealthStatus::Degraded
            && p.reason.contains("dropped")
        {
            degraded = Some(p.reason.clone());
        }
        let m = agent.metrics();
        let counts = errors(&m, "counts_map_full");
        let stacks = errors(&m, "stack_map_full") + unwind_full(&m);
        (degraded.is_some() && counts > 0.0 && stacks > 0.0).then_some(m)
    });
    println!(
        "max_keys 32, max_stacks 32, 96 busy processes: counts_map_full {}, stack_map_full {} (+{} unwound), health: {}",
        errors(&m1, "counts_map_full"),
        errors(&m1, "stack_map_full"),
        unwind_full(&m1),
        degraded.unwrap_or_default()
    );
    drop(storm);
    // The agent survived, and profiles again: a process started after the
    // storm is sampled with its call chain symbolized.
    assert_eq!(agent.get("/health/live").0, 200);
    assert_eq!(agent.get("/health/ready").0, 200);
    let wl = Workload::spawn(Command::new(&bin).args(["cpu", "30"]));
    let stacks = profile_folded(&agent, wl.pid(), 4);
    let total: u64 = stacks.iter().map(|s| s.1).sum();
    let chain: u64 = stacks
        .iter()
        .filter(|(s, _)| s.contains("sonde_wl_a;sonde_wl_b;sonde_wl_c"))
        .map(|s| s.1)
        .sum();
    println!("after the storm: {chain} of {total} samples with a;b;c");
    assert!(
        total >= 20 && chain * 2 >= total,
        "after the storm, {chain} of {total} samples show a;b;c: {stacks:?}"
    );
    let h = health(&agent);
    let p = h.components.iter().find(|c| c.name == "profile");
    assert!(
        p.is_some_and(|p| p.status != HealthStatus::Unhealthy),
        "{h:?}"
    );
}
