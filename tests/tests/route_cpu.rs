//! CPU by HTTP route, end to end: real servers, a client driving a
//! CPU-heavy route and a cheap one 1:1, the real agent.
//!
//! - FastAPI under uvicorn (asyncio: the sync heavy handler runs in a worker
//!   thread that never touches the socket, so its samples are attributed
//!   by the handler frame) and `http.server.ThreadingHTTPServer` (thread
//!   per request: attributed by the thread's tag). At least half of the
//!   app's samples carry a route, and the heavy route's share of the routed
//!   samples agrees within 10 points with the CPU time the handlers
//!   measured themselves (`time.thread_time()`, served on `/cputime`).
//! - nginx (no handler to measure, no route table): the routes are the raw
//!   paths as the HTTP collector normalises them, at least half of the
//!   worker's samples carry one, and the 1 MiB file's route outweighs the
//!   1 KiB one's.
//!
//! - Off CPU (FastAPI): a sync route that only sleeps 50 ms, driven 1:1
//!   with the cheap route, shows ~50 ms of blocked time per request it
//!   served under its route in `sonde profile --off-cpu --by route`.
//!
//! Also checked on the way: `sonde http`'s CPU column, the
//! `sonde_http_server_cpu_seconds_total` metric, `--route` filtering.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use sonde_tests::{
    Agent, exclusive, free_port, http_get, wait_for, workload::Workload, workspace_root,
};
use sonde_wire::http::RouteRow;

const HEAVY: &str = "GET /heavy/{id}";
const CHEAP: &str = "GET /cheap";
/// How long the profile samples while the client drives.
const PROFILE_SECS: u64 = 8;

fn workloads() -> PathBuf {
    workspace_root().join("tests/workloads/http")
}

fn wait_port(port: u16) {
    wait_for(
        Duration::from_secs(20),
        &format!("port {port} to listen"),
        || TcpStream::connect(("127.0.0.1", port)).ok(),
    );
}

/// 99 Hz: ~800 samples of a busy CPU in the profile window.
fn agent() -> Agent {
    Agent::start("[collectors.profile]\nfrequency_hz = 99\n")
}

/// tests/workloads/http/alternate.py: `a` and `b` 1:1 for `secs`.
fn alternate(port: u16, secs: u64, a: &str, b: &str) -> Command {
    let mut c = Command::new("python3");
    c.arg(workloads().join("alternate.py"))
        .arg(port.to_string())
        .arg(secs.to_string())
        .args([a, b])
        .stdout(Stdio::null());
    c
}

/// Samples per route frame (the first frame of `--by route` folded
/// stacks) in a profile of `pid` taken while the client drives `a`/`b`.
fn profile_by_route(agent: &Agent, pid: u32, port: u16, a: &str, b: &str) -> HashMap<String, u64> {
    // Warm-up: the agent detects the interpreter and learns the handlers.
    let st = alternate(port, 4, a, b).status().expect("run alternate.py");
    assert!(st.success(), "warm-up client failed");
    let mut driver = alternate(port, PROFILE_SECS + 4, a, b)
        .spawn()
        .expect("spawn alternate.py");
    std::thread::sleep(Duration::from_secs(1));
    let pid_s = pid.to_string();
    let out = agent.cli(&[
        "profile",
        "--pid",
        &pid_s,
        "--by",
        "route",
        "-f",
        "folded",
        "-d",
        &format!("{PROFILE_SECS}s"),
    ]);
    let st = driver.wait().expect("wait alternate.py");
    assert!(st.success(), "client failed");
    assert!(
        out.status.success(),
        "sonde profile failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut by: HashMap<String, u64> = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((stack, n)) = line.rsplit_once(' ') else {
            continue;
        };
        let route = stack.split(';').next().unwrap_or("").to_owned();
        *by.entry(route).or_default() += n.parse::<u64>().expect("count");
    }
    by
}

/// The handlers' own CPU seconds per route, from `/cputime`.
fn handler_cpu(port: u16) -> (f64, f64) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let (code, body) = http_get(addr, "/cputime").expect("GET /cputime");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("cputime JSON");
    (
        v["heavy"].as_f64().expect("heavy"),
        v["cheap"].as_f64().expect("cheap"),
    )
}

/// The checks tests 1 and 2 share for a Python server on `port`.
fn check_python_server(agent: &Agent, what: &str, pid: u32, port: u16) {
    let by = profile_by_route(agent, pid, port, "/heavy/{i}", "/cheap");
    let total: u64 = by.values().sum();
    let heavy = by.get(HEAVY).copied().unwrap_or(0);
    let cheap = by.get(CHEAP).copied().unwrap_or(0);
    let routed = heavy + cheap;
    let (h_cpu, c_cpu) = handler_cpu(port);
    let measured = h_cpu / (h_cpu + c_cpu);
    let sampled = heavy as f64 / routed.max(1) as f64;
    eprintln!(
        "{what}: {total} samples, by route {by:?}; routed {:.1} %; heavy share sampled {:.1} %, \
         measured by the handlers {:.1} % ({h_cpu:.3} s vs {c_cpu:.3} s)",
        100.0 * routed as f64 / total.max(1) as f64,
        100.0 * sampled,
        100.0 * measured
    );
    assert!(total >= 100, "{what}: too few samples to judge: {by:?}");
    assert!(
        routed * 2 >= total,
        "{what}: fewer than half of the app's samples carry a route: {by:?}"
    );
    assert!(
        (sampled - measured).abs() <= 0.10,
        "{what}: heavy route share {sampled:.3} of routed samples vs {measured:.3} measured by the handlers: {by:?}"
    );
    assert!(cheap > 0, "{what}: the cheap route got no sample: {by:?}");

    // `--route` keeps only the matching route's samples.
    let pid_s = pid.to_string();
    let out = agent.cli(&[
        "profile", "--pid", &pid_s, "--last", "--by", "route", "--route", "/heavy/*", "-f",
        "folded",
    ]);
    assert!(out.status.success());
    let folded = String::from_utf8_lossy(&out.stdout);
    assert!(
        !folded.is_empty() && folded.lines().all(|l| l.starts_with(HEAVY)),
        "{what}: --route /heavy/* kept other samples:\n{folded}"
    );

    // `sonde http`: CPU ms per request, heavy (40 ms of CPU per request)
    // well above cheap (2 ms).
    let rows: Vec<RouteRow> = agent.cli_json(&["http", "--pid", &pid_s, "-o", "json"]);
    let cpu = |route: &str| {
        rows.iter()
            .find(|r| r.route == route)
            .and_then(|r| r.cpu_ms_per_request)
            .unwrap_or_else(|| panic!("{what}: no CPU for {route} in {rows:?}"))
    };
    let (h, c) = (cpu("/heavy/{id}"), cpu("/cheap"));
    eprintln!("{what}: sonde http CPU ms per request: heavy {h:.2}, cheap {c:.2}");
    assert!(
        (20.0..80.0).contains(&h) && h > 4.0 * c,
        "{what}: CPU ms per request heavy {h:.2}, cheap {c:.2}"
    );
    let metrics = agent.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sonde_http_server_cpu_seconds_total{")
                && l.contains("http_route=\"/heavy/{id}\"")
                && l.contains("http_request_method=\"GET\"")),
        "{what}: no sonde_http_server_cpu_seconds_total for /heavy/{{id}}"
    );
}

fn python_ok(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// tests/workloads/http/route_app.py under uvicorn, listening.
fn fastapi() -> (Workload, u16) {
    assert!(
        python_ok("fastapi, uvicorn"),
        "python3 cannot import fastapi and uvicorn: run `cargo xtask test` or `python3 -m pip install -r tests/requirements.txt`"
    );
    let port = free_port();
    let srv = Workload::spawn(
        Command::new("python3")
            .args([
                "-m",
                "uvicorn",
                "route_app:app",
                "--host",
                "127.0.0.1",
                "--port",
            ])
            .arg(port.to_string())
            .args(["--log-level", "warning"])
            .current_dir(workloads())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_port(port);
    (srv, port)
}

#[test]
fn fastapi_cpu_by_route_matches_the_handlers_own_cpu_time() {
    let _x = exclusive();
    let agent = agent();
    let (srv, port) = fastapi();
    check_python_server(&agent, "FastAPI/uvicorn", srv.pid(), port);
}

#[test]
fn threading_http_server_cpu_by_route_matches_the_handlers_own_cpu_time() {
    let _x = exclusive();
    let agent = agent();
    let port = free_port();
    let srv = Workload::spawn(
        Command::new("python3")
            .arg(workloads().join("route_threads.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_port(port);
    check_python_server(&agent, "ThreadingHTTPServer", srv.pid(), port);
}

/// nginx serving `/big/N` (a 1 MiB file whatever N) and `/small.txt`.
fn nginx(dir: &Path) -> (Workload, u16) {
    assert!(
        Command::new("sh")
            .args(["-c", "command -v nginx"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "nginx is missing: install the Debian package nginx, or run `cargo xtask test`"
    );
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  sendfile on;\n  \
         server {{ listen 127.0.0.1:{port}; root {d}/www;\n    location /big/ {{ rewrite ^ /big.bin break; }}\n  }}\n}}\n"
    );
    std::fs::create_dir_all(dir.join("www")).expect("mkdir www");
    std::fs::write(dir.join("www/big.bin"), vec![b'x'; 1 << 20]).expect("write big");
    std::fs::write(dir.join("www/small.txt"), vec![b'y'; 1024]).expect("write small");
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
    wait_port(port);
    (wl, port)
}

#[test]
fn nginx_cpu_by_raw_normalised_route() {
    let _x = exclusive();
    let agent = agent();
    let dir = tempfile::tempdir().expect("tempdir");
    let (srv, port) = nginx(dir.path());
    let by = profile_by_route(&agent, srv.pid(), port, "/big/{i}", "/small.txt");
    let total: u64 = by.values().sum();
    let big = by.get("GET /big/{id}").copied().unwrap_or(0);
    let small = by.get("GET /small.txt").copied().unwrap_or(0);
    eprintln!(
        "nginx: {total} samples, by route {by:?}; routed {:.1} %",
        100.0 * (big + small) as f64 / total.max(1) as f64
    );
    assert!(total >= 50, "nginx: too few samples to judge: {by:?}");
    assert!(
        (big + small) * 2 >= total,
        "nginx: fewer than half of the worker's samples carry a route: {by:?}"
    );
    assert!(
        big > small,
        "nginx: the 1 MiB route should dominate: {by:?}"
    );
}

const SLEEP: &str = "GET /sleep/{id}";
/// How long the off-CPU profile's window is; the client drives inside it.
const OFFCPU_SECS: u64 = 10;

/// The sleeping handler's own wait: its frame, then the kernel's sleep.
fn in_handler_sleep(stack: &str) -> bool {
    stack.contains(";sleep (route_app.py:") && stack.contains("do_nanosleep")
}

/// Off-CPU nanoseconds per route frame of `--off-cpu --by route` folded
/// stacks of `pid` (`--last`, or a window of `-d secs`), and those of
/// them under [`SLEEP`] in the handler's own sleep.
fn offcpu_by_route(agent: &Agent, pid: u32, window: Option<u64>) -> (HashMap<String, u64>, u64) {
    let pid_s = pid.to_string();
    let d = window.map(|s| format!("{s}s"));
    let mut args = vec![
        "profile",
        "--pid",
        &pid_s,
        "--off-cpu",
        "--by",
        "route",
        "-f",
        "folded",
    ];
    match &d {
        Some(d) => args.extend(["-d", d]),
        None => args.push("--last"),
    }
    let out = agent.cli(&args);
    assert!(
        out.status.success(),
        "sonde profile --off-cpu failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut by, mut handler): (HashMap<String, u64>, u64) = Default::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((stack, n)) = line.rsplit_once(' ') else {
            continue;
        };
        let n = n.parse::<u64>().expect("nanoseconds");
        let route = stack.split(';').next().unwrap_or("");
        if route == SLEEP && in_handler_sleep(stack) {
            handler += n;
        }
        *by.entry(route.to_owned()).or_default() += n;
    }
    (by, handler)
}

/// Requests `/sleep/{n}` has served, from the app's `/served`.
fn sleeps_served(port: u16) -> u64 {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let (code, body) = http_get(addr, "/served").expect("GET /served");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("served JSON");
    v["sleep"].as_u64().expect("sleep")
}

#[test]
fn fastapi_off_cpu_by_route_shows_the_sleep_of_each_request() {
    let _x = exclusive();
    // Off-CPU profiling is off by default (its cost per context switch).
    let agent = Agent::start("[collectors.profile]\nfrequency_hz = 99\noff_cpu = true\n");
    let (srv, port) = fastapi();
    let pid = srv.pid();
    // Warm-up until the sleeping handler is mapped to its route: it is
    // almost never on CPU, so it is learned from its off-CPU rows (one
    // vote per row and drain, 8 needed; the drain runs every 2 s).
    let mut learned = false;
    for _ in 0..10 {
        let st = alternate(port, 4, "/sleep/{i}", "/cheap")
            .status()
            .expect("run alternate.py");
        assert!(st.success(), "warm-up client failed");
        if offcpu_by_route(&agent, pid, None).1 > 0 {
            learned = true;
            break;
        }
    }
    assert!(
        learned,
        "the sleeping handler's wait never showed under {SLEEP} in the off-CPU profile"
    );

    // The client drives only inside the profile's window (1 s after it
    // opens, 2 s before it closes), so every request it sends is served,
    // and its 50 ms block ends (where a block is counted) in the window.
    let before = sleeps_served(port);
    let (by, handler_ns) = std::thread::scope(|sc| {
        let profile = sc.spawn(|| offcpu_by_route(&agent, pid, Some(OFFCPU_SECS)));
        std::thread::sleep(Duration::from_secs(1));
        let st = alternate(port, OFFCPU_SECS - 3, "/sleep/{i}", "/cheap")
            .status()
            .expect("run alternate.py");
        assert!(st.success(), "client failed");
        profile.join().expect("profile thread")
    });
    let served = sleeps_served(port) - before;
    let sleep_ns = by.get(SLEEP).copied().unwrap_or(0);
    let cheap_ns = by.get(CHEAP).copied().unwrap_or(0);
    let per_request_ms = sleep_ns as f64 / 1e6 / served.max(1) as f64;
    eprintln!(
        "FastAPI off-CPU: {served} sleep requests served, {:.1} ms blocked under {SLEEP} \
         ({per_request_ms:.2} ms per request; {:.1} % in the handler's sleep), \
         {:.1} ms under {CHEAP}, by route (ms) {:?}",
        sleep_ns as f64 / 1e6,
        100.0 * handler_ns as f64 / sleep_ns.max(1) as f64,
        cheap_ns as f64 / 1e6,
        by.iter()
            .map(|(r, ns)| (r.as_str(), *ns / 1_000_000))
            .collect::<HashMap<_, _>>()
    );
    assert!(served >= 40, "too few sleep requests to judge: {served}");
    // 50 ms of `time.sleep` per request, exact per block; on top, the wait
    // for a CPU and the GIL after the wake-up (a loaded 2-CPU machine:
    // a few ms). Below, nothing of the window is lost (1 ms minimum block,
    // rate cap far off). 25 % covers the scheduling noise; an attribution
    // that dropped or doubled requests' blocks would be far outside it.
    assert!(
        (37.5..=62.5).contains(&per_request_ms),
        "blocked time under {SLEEP} per request: {per_request_ms:.2} ms, not ~50 ms: {by:?}"
    );
    // And it is the handler's wait, not the event loop's (whose thread
    // tag names the sleeping request while it idles in epoll_wait).
    assert!(
        handler_ns as f64 >= 0.9 * sleep_ns as f64,
        "only {handler_ns} of {sleep_ns} ns under {SLEEP} are the handler's sleep"
    );
    // The cheap async route runs on the event loop and never sleeps.
    assert!(
        cheap_ns < sleep_ns / 10,
        "{CHEAP} has {cheap_ns} ns blocked against {sleep_ns} ns under {SLEEP}"
    );
}
