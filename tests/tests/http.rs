//! HTTP RED metrics from socket syscalls, end to end: real servers (python
//! http.server, FastAPI under uvicorn, nginx), real clients (python
//! http.client, curl, wrk), the real agent. Counts are compared with what
//! the clients did and with nginx's own access log.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sonde_tests::{
    Agent, exclusive, free_port, wait_for, wait_until,
    workload::{Workload, copy_exe},
    workspace_root,
};
use sonde_wire::http::RouteRow;

fn workloads() -> PathBuf {
    workspace_root().join("tests/workloads/http")
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails with the way out when a Debian package's command is missing
/// (`cargo xtask test` installs them: xtask/src/bootstrap.rs).
fn ensure_apt(bin: &str, pkg: &str) {
    assert!(
        succeeds(Command::new("sh").args(["-c", &format!("command -v {bin}")])),
        "{bin} is missing: install the Debian package {pkg}, or run `cargo xtask test`, which installs what the tests use"
    );
}

/// FastAPI and uvicorn, pinned in tests/requirements.txt.
fn ensure_fastapi() {
    assert!(
        succeeds(Command::new("python3").args(["-c", "import fastapi, uvicorn"])),
        "python3 cannot import fastapi and uvicorn: run `cargo xtask test` (it installs tests/requirements.txt), or `python3 -m pip install -r tests/requirements.txt`"
    );
}

fn wait_port(port: u16) {
    wait_for(
        Duration::from_secs(20),
        &format!("port {port} to listen"),
        || TcpStream::connect(("127.0.0.1", port)).ok(),
    );
}

/// `python3 -m http.server` on a free port serving `dir`.
fn python_server(dir: &Path) -> (Workload, u16) {
    python_server_as(dir, Path::new("python3"))
}

/// `python_server` run by `python`: a copy of the interpreter under a name
/// of the test's own gives its server a service_name no other test shares.
fn python_server_as(dir: &Path, python: &Path) -> (Workload, u16) {
    let port = free_port();
    let wl = Workload::spawn(
        Command::new(python)
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_port(port);
    (wl, port)
}

/// Runs tests/workloads/http/client.py with a plan of
/// (method, path, expected status, count); `{i}` in a path is the index.
fn drive(port: u16, keepalive: bool, plan: &[(&str, &str, u16, u32)]) -> serde_json::Value {
    let plan: Vec<serde_json::Value> = plan
        .iter()
        .map(|(m, p, s, n)| serde_json::json!([m, p, s, n]))
        .collect();
    let out = Command::new("python3")
        .arg(workloads().join("client.py"))
        .arg(port.to_string())
        .arg(if keepalive { "1" } else { "0" })
        .arg(serde_json::Value::Array(plan).to_string())
        .output()
        .expect("run client.py");
    assert!(
        out.status.success(),
        "client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("client.py output")
}

/// Labels of one Prometheus series line `name{a="x",b="y"} v`.
fn labels(line: &str) -> Vec<(String, String)> {
    let Some(start) = line.find('{') else {
        return Vec::new();
    };
    let end = line.rfind('}').unwrap_or(line.len());
    line[start + 1..end]
        .split("\",")
        .filter_map(|kv| {
            let (k, v) = kv.split_once("=\"")?;
            Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
        })
        .collect()
}

/// Sum of the values of `series` (e.g. `..._count`) whose labels include all of `want`.
fn sum_series(metrics: &str, series: &str, want: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{series}{{")))
        .filter(|l| {
            let ls = labels(l);
            want.iter()
                .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Distinct values of label `label` among series of `series` matching `want`.
fn label_values(metrics: &str, series: &str, want: &[(&str, &str)], label: &str) -> Vec<String> {
    let mut v: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{series}{{")))
        .map(labels)
        .filter(|ls| {
            want.iter()
                .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .filter_map(|ls| ls.into_iter().find(|(k, _)| k == label).map(|(_, v)| v))
        .collect();
    v.sort();
    v.dedup();
    v
}

const SERVER: &str = "http_server_request_duration_seconds_count";
const CLIENT: &str = "http_client_request_duration_seconds_count";

/// Waits until every expected (labels, count) holds, then checks that the
/// counts stay put (no late duplicates).
fn expect_counts(agent: &Agent, series: &str, expected: &[(Vec<(&str, &str)>, f64)]) {
    let check = |m: &str| {
        expected
            .iter()
            .map(|(want, n)| (sum_series(m, series, want), *n))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = agent.metrics();
        let got = check(&m);
        if got.iter().all(|(g, n)| g == n) {
            break;
        }
        // On failure, also what the HTTP collector says it lost or could
        // not parse: a count short by exactly those is an overload, not a
        // miscount.
        assert!(
            Instant::now() < deadline,
            "{series}: (got, want) {got:?} for {expected:?}\nmetrics:\n{}",
            m.lines()
                .filter(|l| l.starts_with(series)
                    || l.starts_with("sonde_http_")
                    || l.starts_with("sonde_events_lost_total"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let got = check(&agent.metrics());
    assert!(
        got.iter().all(|(g, n)| g == n),
        "{series}: counts moved after settling: {got:?}"
    );
}

#[test]
fn python_http_server_counts_are_exact() {
    // No content sniffing: connections are learned from accept/connect only.
    let agent = Agent::start("[collectors.http]\nsniff_window = \"0s\"\n");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.txt"), "hello\n").expect("write");
    let (_srv, port) = python_server(dir.path());
    let p = port.to_string();
    drive(
        port,
        false,
        &[
            ("GET", "/a.txt?token=QSECRET123", 200, 30),
            ("GET", "/missing/{i}", 404, 20),
            ("HEAD", "/a.txt", 200, 5),
        ],
    );
    expect_counts(
        &agent,
        SERVER,
        &[
            (
                vec![
                    ("server_port", &p),
                    ("http_request_method", "GET"),
                    ("http_route", "/a.txt"),
                    ("http_response_status_code", "200"),
                ],
                30.0,
            ),
            (
                vec![
                    ("server_port", &p),
                    ("http_request_method", "GET"),
                    ("http_route", "/missing/{id}"),
                    ("http_response_status_code", "404"),
                ],
                20.0,
            ),
            (
                vec![("server_port", &p), ("http_request_method", "HEAD")],
                5.0,
            ),
            (vec![("server_port", &p)], 55.0),
        ],
    );
    let m = agent.metrics();
    assert!(
        !m.contains("QSECRET123"),
        "query string leaked into /metrics"
    );
    assert!(
        !m.contains("HSECRET456"),
        "header value leaked into /metrics"
    );
}

#[test]
fn fastapi_keepalive_routes_errors_slow_route_and_no_payload() {
    ensure_fastapi();
    let agent = Agent::start("[collectors.http]\nroutes = [\"/items/{item_id}\"]\n");
    let port = free_port();
    let _srv = Workload::spawn(
        Command::new("python3")
            .args(["-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--log-level", "warning"])
            .current_dir(workloads())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_port(port);
    let p = port.to_string();
    let out = drive(
        port,
        true,
        &[
            ("GET", "/items/{i}?token=QSECRET123", 200, 40),
            ("GET", "/fail", 500, 10),
            ("GET", "/slow", 200, 5),
            ("POST", "/echo", 200, 7),
        ],
    );
    // Keep-alive: everything went over one connection, yet each request counts.
    assert_eq!(
        out["connections"], 1,
        "client used more than one connection: {out}"
    );
    let s = |m: &'static str, r: &'static str, c: &'static str| {
        vec![
            ("server_port", p.as_str()),
            ("http_request_method", m),
            ("http_route", r),
            ("http_response_status_code", c),
        ]
    };
    expect_counts(
        &agent,
        SERVER,
        &[
            (s("GET", "/items/{item_id}", "200"), 40.0),
            (s("GET", "/fail", "500"), 10.0),
            (s("GET", "/slow", "200"), 5.0),
            (s("POST", "/echo", "200"), 7.0),
            (vec![("server_port", p.as_str())], 62.0),
        ],
    );
    let m = agent.metrics();
    // The slow route (300 ms) lands in the (0.25, 0.5] bucket, all of it.
    let bucket = |le: &'static str| {
        let mut w = s("GET", "/slow", "200");
        w.push(("le", le));
        sum_series(&m, "http_server_request_duration_seconds_bucket", &w)
    };
    assert_eq!(bucket("0.25"), 0.0, "slow route faster than 250 ms?");
    assert_eq!(bucket("0.5"), 5.0, "slow route not within 500 ms");
    // sonde http agrees, and its p50 is in the same bucket.
    let rows: Vec<RouteRow> = agent.api(&format!("/api/v1/http?pid={}", _srv.pid()));
    let slow = rows
        .iter()
        .find(|r| r.route == "/slow")
        .unwrap_or_else(|| panic!("no /slow row in {rows:?}"));
    assert_eq!(slow.requests, 5, "{slow:?}");
    let p50 = slow.p50_seconds.expect("p50");
    assert!((0.25..=0.5).contains(&p50), "p50 {p50} of /slow");
    let fail = rows
        .iter()
        .find(|r| r.route == "/fail")
        .unwrap_or_else(|| panic!("no /fail row in {rows:?}"));
    assert_eq!(fail.error_pct, 100.0, "{fail:?}");
    // Bodies are measured, never exported.
    assert_eq!(
        sum_series(
            &m,
            "http_server_request_body_size_bytes_count",
            &[("server_port", &p)]
        ),
        62.0
    );
    for secret in ["QSECRET123", "HSECRET456", "BSECRET789", "/items/3"] {
        assert!(!m.contains(secret), "{secret} leaked into /metrics");
    }
    // The CLI renders the same data.
    let out = agent.cli(&["http", "--pid", &_srv.pid().to_string()]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/items/{item_id}") && text.contains("/slow"),
        "{text}"
    );
}

/// Minimal nginx config in `dir`, serving `dir/www` on `port`.
fn nginx_conf(dir: &Path, port: u16) -> PathBuf {
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  sendfile on;\n  \
         server {{ listen 127.0.0.1:{port}; root {d}/www; location / {{ }} }}\n}}\n"
    );
    std::fs::create_dir_all(dir.join("www")).expect("mkdir www");
    std::fs::write(dir.join("www/file.bin"), vec![b'x'; 1024]).expect("write file");
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("write nginx.conf");
    path
}

fn nginx(dir: &Path) -> (Workload, u16) {
    ensure_apt("nginx", "nginx");
    let port = free_port();
    let conf = nginx_conf(dir, port);
    let wl = Workload::spawn(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_port(port);
    (wl, port)
}

#[test]
fn nginx_under_wrk_matches_access_log() {
    let _x = exclusive();
    ensure_apt("wrk", "wrk");
    let agent = Agent::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_srv, port) = nginx(dir.path());
    let out = Command::new("wrk")
        .args(["-t1", "-c4", "-d3s"])
        .arg(format!("http://127.0.0.1:{port}/file.bin"))
        .output()
        .expect("run wrk");
    assert!(out.status.success(), "wrk: {out:?}");
    // nginx writes the access log line after the response: wait until it
    // holds every request wrk completed ("N requests in ...").
    let wrk_out = String::from_utf8_lossy(&out.stdout).into_owned();
    let completed: usize = wrk_out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ")?.0.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{wrk_out}"));
    let logged = wait_until(
        Duration::from_secs(10),
        "nginx to log wrk's requests",
        || {
            let n = std::fs::read_to_string(dir.path().join("access.log"))
                .unwrap_or_default()
                .lines()
                .count();
            if n >= completed {
                Ok(n as f64)
            } else {
                Err(format!("{n} lines logged, wrk completed {completed}"))
            }
        },
    );
    assert!(logged > 100.0, "wrk made only {logged} requests");
    let p = port.to_string();
    expect_counts(
        &agent,
        SERVER,
        &[
            (vec![("server_port", &p)], logged),
            (
                vec![
                    ("server_port", &p),
                    ("http_route", "/file.bin"),
                    ("http_response_status_code", "200"),
                ],
                logged,
            ),
        ],
    );
}

#[test]
fn route_cardinality_is_bounded() {
    let _x = exclusive();
    // A low cap, checked on nginx (which only the exclusive tests run, so no
    // other test's routes count against this service's cap).
    let agent = Agent::start("[collectors.http]\nmax_routes_per_service = 5\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let (_srv, port) = nginx(dir.path());
    let p = port.to_string();
    // 1000 distinct ids: one route label.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 1 1000); do echo \"url = http://127.0.0.1:{port}/items/$i\"; echo 'output = /dev/null'; done \
             | curl -s --parallel --parallel-max 4 -K -"
        ))
        .status()
        .expect("curl");
    assert!(out.success());
    expect_counts(
        &agent,
        SERVER,
        &[(
            vec![
                ("server_port", &p),
                ("http_route", "/items/{id}"),
                ("http_response_status_code", "404"),
            ],
            1000.0,
        )],
    );
    let m = agent.metrics();
    assert_eq!(
        label_values(&m, SERVER, &[("server_port", &p)], "http_route"),
        vec!["/items/{id}".to_owned()]
    );
    // Ten distinct names: 4 more fit under the cap of 5, the rest fold into "other".
    for name in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"] {
        let st = Command::new("curl")
            .args(["-s", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}/name-{name}"))
            .status()
            .expect("curl");
        assert!(st.success());
    }
    expect_counts(
        &agent,
        SERVER,
        &[
            (vec![("server_port", &p), ("http_route", "other")], 6.0),
            (vec![("server_port", &p)], 1010.0),
        ],
    );
    let routes = label_values(
        &agent.metrics(),
        SERVER,
        &[("server_port", &p)],
        "http_route",
    );
    assert_eq!(routes.len(), 6, "{routes:?}");
    let over = sum_series(
        &agent.metrics(),
        "sonde_http_route_overflow_total",
        &[("service_name", "nginx")],
    );
    assert_eq!(over, 6.0);
}

#[test]
fn client_requests_from_curl_and_python() {
    let agent = Agent::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("client-test.txt"), "hi\n").expect("write");
    let (_srv, port) = python_server(dir.path());
    for _ in 0..6 {
        let st = Command::new("curl")
            .args(["-s", "-o", "/dev/null"])
            .arg(format!(
                "http://127.0.0.1:{port}/client-test.txt?q=QSECRET123"
            ))
            .status()
            .expect("curl");
        assert!(st.success());
    }
    drive(
        port,
        false,
        &[
            ("GET", "/client-test.txt", 200, 9),
            ("GET", "/client-missing/{i}", 404, 4),
        ],
    );
    // The client's service name is its executable's file name, or its task
    // name ("python3") when it exited before the agent looked it up.
    let out = Command::new("python3")
        .args([
            "-c",
            "import os,sys; print(os.path.basename(os.path.realpath(sys.executable)))",
        ])
        .output()
        .expect("python3");
    let exe = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let py = |route: &'static str, code: &'static str| {
        let m = agent.metrics();
        let mut names = vec!["python3", exe.as_str()];
        names.dedup();
        names
            .iter()
            .map(|n| {
                sum_series(
                    &m,
                    CLIENT,
                    &[
                        ("service_name", n),
                        ("http_route", route),
                        ("http_response_status_code", code),
                    ],
                )
            })
            .sum::<f64>()
    };
    wait_for(Duration::from_secs(15), "python client counts", || {
        (py("/client-test.txt", "200") == 9.0 && py("/client-missing/{id}", "404") == 4.0)
            .then_some(())
    });
    expect_counts(
        &agent,
        CLIENT,
        &[(
            vec![
                ("service_name", "curl"),
                ("http_route", "/client-test.txt"),
                ("http_response_status_code", "200"),
            ],
            6.0,
        )],
    );
    assert_eq!(
        py("/client-test.txt", "200"),
        9.0,
        "python client count moved"
    );
    let out = agent.cli(&["http", "--client", "--name", "curl", "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    let rows: Vec<RouteRow> = serde_json::from_slice(&out.stdout).expect("json");
    let row = rows
        .iter()
        .find(|r| r.route == "/client-test.txt")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(row.requests, 6);
    assert!(!agent.metrics().contains("QSECRET123"));
}

#[test]
fn garbage_on_sockets_is_ignored() {
    let agent = Agent::start("");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("after.txt"), "ok\n").expect("write");
    // Its own service name: other tests (running alongside: this one is not
    // exclusive) abort requests of their own.
    let service = "sonde_py_garbage";
    let python = agent.dir.path().join(service);
    copy_exe(
        &std::fs::canonicalize("/usr/bin/python3").expect("python3"),
        &python,
    );
    let (_srv, port) = python_server_as(dir.path(), &python);
    let p = port.to_string();
    // The kernel's not_http counter has no label to scope it by: count
    // only what happens while this test sends its noise.
    let not_http_before = sum_series(
        &agent.metrics(),
        "sonde_http_kernel_events_total",
        &[("counter", "not_http")],
    );
    let send = |bytes: &[u8]| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    };
    // Binary noise, HTTP/2 prior knowledge, a truncated request line.
    send(&[
        0u8, 0xff, 0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc,
    ]);
    send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    send(b"GET /trunc");
    // 10 MB of headers: the server refuses it (431 or a closed socket).
    let mut big = b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    send(&big);
    // Later requests on fresh connections are exact.
    drive(port, false, &[("GET", "/after.txt", 200, 25)]);
    expect_counts(
        &agent,
        SERVER,
        &[(
            vec![
                ("server_port", &p),
                ("http_route", "/after.txt"),
                ("http_response_status_code", "200"),
            ],
            25.0,
        )],
    );
    let (code, _) = agent.get("/health/live");
    assert_eq!(code, 200);
    let m = agent.metrics();
    // The noise and the HTTP/2 preface marked their connections not-HTTP;
    // the truncated request line was reported as aborted when the server
    // closed the connection.
    let not_http = sum_series(
        &m,
        "sonde_http_kernel_events_total",
        &[("counter", "not_http")],
    ) - not_http_before;
    assert!(not_http >= 2.0, "not_http counter grew by {not_http}");
    let aborted = sum_series(
        &m,
        "sonde_http_aborted_requests_total",
        &[("role", "server"), ("service_name", service)],
    );
    assert!(
        aborted >= 1.0,
        "aborted counter of {service}: {aborted}\n{m}"
    );
    let routes = label_values(
        &agent.metrics(),
        SERVER,
        &[("server_port", &p)],
        "http_route",
    );
    assert!(
        routes
            .iter()
            .all(|r| r == "/after.txt" || r == "/big" || r == "/trunc"),
        "unexpected routes from garbage: {routes:?}"
    );
}

/// Reads one HTTP/1.1 response with a Content-Length body from `s`.
fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).expect("read response");
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .expect("content-length");
            if body.len() >= len {
                return head.to_owned();
            }
        }
    }
}

/// The FastAPI app under uvicorn with a long keep-alive: the connections
/// these tests open idle while an agent starts (seconds on a loaded
/// machine), and uvicorn's default 5 s would close them.
fn keepalive_fastapi() -> (Workload, u16) {
    ensure_fastapi();
    let port = free_port();
    let srv = Workload::spawn(
        Command::new("python3")
            .args(["-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--log-level", "warning"])
            .args(["--timeout-keep-alive", "120"])
            .current_dir(workloads())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_port(port);
    (srv, port)
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// One GET in one write, as real clients do (a request line split over
/// several segments is only seen up to the first one: docs/http.md).
fn get_ok(s: &mut TcpStream, path: &str) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .expect("write");
    let head = read_response(s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// The server on `port` answered `n` `GET /items/{id}` with 200, says the agent.
fn expect_items_ok(agent: &Agent, port: u16, n: f64) {
    let p = port.to_string();
    expect_counts(
        agent,
        SERVER,
        &[(
            vec![
                ("server_port", &p),
                ("http_route", "/items/{id}"),
                ("http_response_status_code", "200"),
            ],
            n,
        )],
    );
}

#[test]
fn connection_opened_before_the_agent_is_picked_up_by_sniffing() {
    let (_srv, port) = keepalive_fastapi();
    // Accepted before the agent exists: no accept/connect was seen.
    let mut s = connect(port);
    get_ok(&mut s, "/items/0");
    let agent = Agent::start("");
    for i in 1..=12 {
        get_ok(&mut s, &format!("/items/{i}"));
    }
    expect_items_ok(&agent, port, 12.0);
}

#[test]
fn after_the_sniff_window_only_connections_made_while_watching_are_tracked() {
    let (_srv, port) = keepalive_fastapi();
    // Established before the agent exists, so neither accept nor the
    // ESTABLISHED transition was seen; with no sniff window its requests
    // are not read at all (the cheap path for sockets that predate the
    // agent).
    let mut old = connect(port);
    get_ok(&mut old, "/items/0");
    let agent = Agent::start("[collectors.http]\nsniff_window = \"0s\"\n");
    for i in 1..=5 {
        get_ok(&mut old, &format!("/items/{i}"));
    }
    // A connection made while the agent watches is tracked.
    let mut new = connect(port);
    for i in 1..=3 {
        get_ok(&mut new, &format!("/items/{i}"));
    }
    expect_items_ok(&agent, port, 3.0);
}
