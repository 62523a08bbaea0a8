//! Hostile input while the agent watches, end to end: the real agent with
//! its default collectors, a server whose executable name and comm carry
//! quotes, backslashes, control characters and invalid UTF-8, fed 64 KiB
//! request lines, non-UTF-8 paths, negative and huge Content-Length, and
//! responses nobody asked for. Afterwards the agent is healthy, /metrics
//! parses (our strict parser, promtool, and a real Prometheus scraping
//! it), the hostile name comes back from Prometheus exactly as the kernel
//! gave it, every request is counted where it belongs, and none of the
//! marker strings sent in query strings, headers and bodies appears in
//! /metrics, in Prometheus or in the agent's log.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::ffi::OsStrExt,
    process::{Command, Stdio},
    time::Duration,
};

use sonde_tests::{
    Agent, free_port,
    peers::{Peer, ensure_installed, get_json},
    wait_for, wait_until,
    workload::{Workload, copy_exe},
    workspace_root,
};
use sonde_wire::{HealthStatus, status::Status};

/// The server's executable name: longer than a comm (15 bytes), so the
/// label tells the executable's name (16 bytes, both invalid bytes) from a
/// fallback to the comm (cut after the first).
const EXE_NAME: &[u8] = b"sonde_hx\"q\\\n\x01\t\xff\xfe";
/// What the server sets its comm to after start (PR_SET_NAME).
const COMM: &[u8] = b"c\"\\)(\x1b[7m\n\x7f\xff ";

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut it = s.chars();
    it.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && it.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// Parses the Prometheus text exposition format strictly: every line is a
/// comment or a sample, names are valid, label values use only the three
/// escapes the format has (`\\`, `\"`, `\n`), values are numbers.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |what: &str| format!("line {}: {what}: {line:?}", i + 1);
        if line.is_empty() || line.starts_with('#') {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                let name = rest.split(' ').next().unwrap_or_default();
                if !is_name(name, true) {
                    return Err(err("bad metric name in comment"));
                }
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        if !is_name(name, true) {
            return Err(err("bad metric name"));
        }
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(mut r) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let eq = r.find('=').ok_or_else(|| err("label without '='"))?;
                let lname = &r[..eq];
                if !is_name(lname, false) {
                    return Err(err("bad label name"));
                }
                let mut chars = r[eq + 1..]
                    .strip_prefix('"')
                    .ok_or_else(|| err("label value not quoted"))?
                    .char_indices();
                let mut value = String::new();
                let end = loop {
                    match chars.next() {
                        None => return Err(err("unterminated label value")),
                        Some((j, '"')) => break j,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            _ => return Err(err("bad escape in label value")),
                        },
                        Some((_, c)) => value.push(c),
                    }
                };
                let after_value = &r[eq + 1..][1 + end + 1..];
                if labels.insert(lname.to_owned(), value).is_some() {
                    return Err(err("duplicate label"));
                }
                r = after_value.strip_prefix(',').unwrap_or(after_value);
                if !after_value.starts_with([',', '}']) {
                    return Err(err("junk after a label value"));
                }
            }
            rest = r;
        }
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before the value"))?
            .split(' ');
        let value: f64 = match fields.next().unwrap_or_default() {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| err("bad value"))?,
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err("bad timestamp"))?;
        }
        if fields.next().is_some() {
            return Err(err("junk after the value"));
        }
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// Sum of `name` over the samples whose labels include all of `want`.
fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn scrape(agent: &Agent) -> (String, Vec<Sample>) {
    let text = agent.metrics();
    let samples =
        parse_exposition(&text).unwrap_or_else(|e| panic!("/metrics does not parse: {e}"));
    (text, samples)
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s
}

/// Reads one response (head and `Content-Length` body, or to the close
/// when the length is not a sane number); returns the head.
fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read response head");
        assert!(n > 0, "connection closed mid-head: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    match len {
        Some(n) => {
            let mut body = vec![0u8; n];
            s.read_exact(&mut body).expect("read body");
        }
        None => {
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }
    }
    head
}

/// Sends `req` on `s` and reads one response; asserts it is a 200.
fn exchange(s: &mut TcpStream, req: &[u8]) {
    s.write_all(req).expect("send request");
    let head = read_response(s);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
}

fn once(port: u16, req: &[u8]) {
    exchange(&mut connect(port), req);
}

/// Label value as the Prometheus text format writes it.
fn escaped(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Instant query against Prometheus; the result vector once it answers.
fn query(prom: SocketAddr, q: &str) -> Option<Vec<serde_json::Value>> {
    let v = get_json(prom, &format!("/api/v1/query?query={}", encode(q)))?;
    v["data"]["result"].as_array().cloned()
}

fn start_prometheus(agent: &Agent, work: &std::path::Path) -> (Peer, SocketAddr) {
    ensure_installed("prometheus", "prometheus");
    let cfg = work.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sonde\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr
        ),
    )
    .expect("write prometheus.yml");
    let prom: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let p = Peer::spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .arg("--log.level=warn"),
        &work.join("prometheus.log"),
    );
    wait_for(Duration::from_secs(60), "prometheus ready", || {
        sonde_tests::http_get(prom, "/-/ready")
            .ok()
            .filter(|(c, _)| *c == 200)
    });
    (p, prom)
}

#[test]
fn hostile_input_is_counted_escaped_and_never_exported() {
    let agent = Agent::start("");
    let work = tempfile::tempdir().expect("tempdir");
    let (_prom_peer, prom) = start_prometheus(&agent, work.path());

    // Markers: strings that may only ever travel in payloads, query
    // strings and headers. Unique to this run.
    let tag = format!("{:x}", std::process::id() ^ 0x5a5a_5a5a);
    let m = |what: &str| format!("zq{what}{tag}x");
    let markers: Vec<String> = ["query", "header", "cookie", "body", "long", "raw", "cl"]
        .iter()
        .map(|w| m(w))
        .collect();
    let [mq, mh, mc, mb, ml, mr, mcl] = <[String; 7]>::try_from(markers.clone()).expect("7");

    // The server: python under the hostile name.
    let exe = work.path().join(OsStr::from_bytes(EXE_NAME));
    copy_exe(
        &std::fs::canonicalize("/usr/bin/python3").expect("python3"),
        &exe,
    );
    let (port, talk_first) = (free_port(), free_port());
    let comm_hex: String = COMM.iter().map(|b| format!("{b:02x}")).collect();
    let mut srv = Workload::spawn(
        Command::new(&exe)
            .arg(workspace_root().join("tests/workloads/http/hostile_server.py"))
            .args([port.to_string(), talk_first.to_string(), comm_hex])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let mut ready = String::new();
    BufReader::new(srv.0.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("server output");
    assert_eq!(ready.trim(), "ready", "hostile server did not start");
    let service = String::from_utf8_lossy(EXE_NAME).into_owned();
    let (_, before) = scrape(&agent);
    let kernel =
        |s: &[Sample], c: &str| sum(s, "sonde_http_kernel_events_total", &[("counter", c)]);
    let unparsed_before = sum(
        &before,
        "sonde_http_unparsed_requests_total",
        &[("role", "server")],
    );

    // Keep-alive requests with markers in the query string, a header, a
    // cookie and the body.
    let mut s = connect(port);
    for _ in 0..5 {
        exchange(
            &mut s,
            format!(
                "GET /q?secret={mq} HTTP/1.1\r\nHost: x\r\nX-Marker: {mh}\r\nCookie: c={mc}\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    for _ in 0..2 {
        exchange(
            &mut s,
            format!(
                "POST /form?{mq} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{mb}",
                mb.len()
            )
            .as_bytes(),
        );
    }
    // A response nobody asked for, on a connection that had an exchange:
    // /double is answered twice, in two writes. Then the connection goes on.
    exchange(&mut s, b"GET /double HTTP/1.1\r\n\r\n");
    let head = read_response(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    exchange(
        &mut s,
        format!("GET /q?secret={mq} HTTP/1.1\r\nX-Marker: {mh}\r\n\r\n").as_bytes(),
    );
    drop(s);

    // 64 KiB request lines: a query string first; a path of two-byte
    // characters, which the kernel's 160-byte copy cuts in the middle of one.
    let mut big = format!("GET /big?{ml}&pad=").into_bytes();
    big.resize(64 * 1024, b'p');
    big.extend_from_slice(format!(" HTTP/1.1\r\nX-Marker: {ml}\r\n\r\n").as_bytes());
    once(port, &big);
    let mut wide = b"GET /".to_vec();
    while wide.len() < 64 * 1024 {
        wide.extend_from_slice("\u{e9}".as_bytes());
    }
    wide.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    once(port, &wide);

    // Paths that are not UTF-8 (with a query string).
    let mut raw = b"GET /raw\xff\xfe/x?".to_vec();
    raw.extend_from_slice(format!("{mr} HTTP/1.1\r\n\r\n").as_bytes());
    for _ in 0..2 {
        once(port, &raw);
    }

    // Negative and huge Content-Length, in requests and in responses.
    for _ in 0..2 {
        once(
            port,
            format!(
                "POST /neg?{mcl} HTTP/1.1\r\nContent-Length: -1\r\nX-Marker: {mcl}\r\n\r\n{mb}"
            )
            .as_bytes(),
        );
        once(
            port,
            format!(
                "POST /huge?{mcl} HTTP/1.1\r\nContent-Length: 18446744073709551617000\r\nX-Marker: {mcl}\r\n\r\n{mb}"
            )
            .as_bytes(),
        );
    }

    // A server that writes first: the response comes before any request.
    let mut t = connect(talk_first);
    let head = read_response(&mut t);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    exchange(&mut t, format!("GET /tf?{mq} HTTP/1.1\r\n\r\n").as_bytes());
    drop(t);

    // A second of CPU in a thread whose comm is hostile, for the profiler.
    once(port, b"GET /burn HTTP/1.1\r\n\r\n");

    // And plain requests afterwards, on a fresh connection.
    let mut s = connect(port);
    for _ in 0..7 {
        exchange(&mut s, b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    drop(s);

    // Every exchange on the hostile server is counted exactly, under its
    // name as the kernel gave it (invalid bytes as U+FFFD).
    let p = port.to_string();
    let server = "http_server_request_duration_seconds_count";
    let want: &[(&str, f64)] = &[
        ("/q", 6.0),
        ("/form", 2.0),
        ("/double", 1.0),
        ("/big", 1.0),
        // The 64 KiB path of 'é': one segment, too long to be a name.
        ("/{id}", 1.0),
        ("/neg", 2.0),
        ("/huge", 2.0),
        ("/burn", 1.0),
        ("/after", 7.0),
    ];
    let samples = wait_until(Duration::from_secs(30), "exact counts per route", || {
        let (_, s) = scrape(&agent);
        let got: Vec<(&str, f64)> = want
            .iter()
            .map(|(r, _)| {
                (
                    *r,
                    sum(
                        &s,
                        server,
                        &[
                            ("server_port", &p),
                            ("http_route", r),
                            ("service_name", &service),
                        ],
                    ),
                )
            })
            .collect();
        if got.as_slice() == want {
            Ok(s)
        } else {
            Err(got)
        }
    });
    // Nothing else on that port: the non-UTF-8 paths are counted as
    // unparsed, the talk-first connection at most once (as /tf).
    let routes: Vec<(String, String, f64)> = samples
        .iter()
        .filter(|x| x.name == server && x.labels.get("server_port") == Some(&p))
        .map(|x| {
            (
                x.labels["http_route"].clone(),
                x.labels["service_name"].clone(),
                x.value,
            )
        })
        .collect();
    for (r, svc, v) in &routes {
        assert_eq!(svc, &service, "{routes:?}");
        assert!(
            want.iter().any(|(w, _)| w == r) || (r == "/tf" && *v <= 1.0),
            "unexpected series {r:?} = {v}: {routes:?}"
        );
    }
    let unparsed = sum(
        &samples,
        "sonde_http_unparsed_requests_total",
        &[("role", "server")],
    ) - unparsed_before;
    assert!(
        unparsed >= 2.0,
        "non-UTF-8 paths counted as unparsed: {unparsed}"
    );
    // The responses nobody asked for: the talk-first connection's first
    // message is a status line, on the server's socket and on ours, so
    // both are marked not-HTTP (kernel counters are exported once a
    // second). The unsolicited second response of /double is counted as
    // that exchange's bytes (docs/http.md), and /double once.
    wait_until(Duration::from_secs(10), "not_http counted twice", || {
        let (_, s) = scrape(&agent);
        let grew = kernel(&s, "orphan_response") + kernel(&s, "not_http")
            - kernel(&before, "orphan_response")
            - kernel(&before, "not_http");
        if grew >= 2.0 { Ok(()) } else { Err(grew) }
    });

    // The hostile name in the text format: escaped as the format says.
    let (text, _) = scrape(&agent);
    let needle = format!("service_name=\"{}\"", escaped(&service));
    assert!(
        text.lines().any(|l| l.starts_with(server)
            && l.contains(&needle)
            && l.contains("http_route=\"/after\"")),
        "no line with {needle:?}"
    );

    // promtool parses the whole exposition too.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // Exit 1 is a parse error; 3 only lint remarks (help texts, units).
    assert!(
        out.status.code() != Some(1) && !said.contains("parsing error"),
        "promtool could not parse /metrics ({}): {said}",
        out.status
    );

    // A real Prometheus scraped it and reads the name back exactly.
    let r = wait_for(
        Duration::from_secs(60),
        "the hostile series in Prometheus",
        || {
            query(
                prom,
                &format!("{server}{{server_port=\"{p}\",http_route=\"/after\"}}"),
            )
            .filter(|r| !r.is_empty())
        },
    );
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        r[0]["metric"]["service_name"].as_str(),
        Some(service.as_str()),
        "{r:?}"
    );
    let targets = get_json(prom, "/api/v1/targets").expect("targets");
    let t = &targets["data"]["activeTargets"][0];
    assert_eq!(t["health"], "up", "{t}");
    assert_eq!(t["lastError"], "", "{t}");
    // No marker in any label value Prometheus holds.
    let names = get_json(prom, "/api/v1/labels").expect("labels");
    for name in names["data"].as_array().expect("label names") {
        let name = name.as_str().expect("name");
        let values = get_json(prom, &format!("/api/v1/label/{name}/values")).expect("values");
        let values = values["data"].to_string();
        for mk in &markers {
            assert!(
                !values.contains(mk.as_str()),
                "marker {mk} in Prometheus label {name}: {values}"
            );
        }
    }

    // The agent is healthy, and no marker reached /metrics or its log.
    let st: Status = agent.cli_json(&["status", "-o", "json"]);
    assert!(st.ready, "{st:?}");
    for c in &st.collectors {
        assert_ne!(c.status, HealthStatus::Unhealthy, "{c:?}");
    }
    assert_eq!(agent.get("/health/live").0, 200);
    assert_eq!(agent.get("/health/ready").0, 200);
    let (text, _) = scrape(&agent);
    let log = agent.log();
    for mk in &markers {
        assert!(!text.contains(mk.as_str()), "marker {mk} in /metrics");
        assert!(!log.contains(mk.as_str()), "marker {mk} in the agent's log");
    }
    assert!(!text.contains("pad=ppp"), "query string in /metrics");

    // The CLI's tables escape control characters: the server's name stays
    // on one line, and no escape sequence reaches the terminal.
    let out = agent.cli(&["http", "--pid", &srv.pid().to_string()]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "sonde http: {table}{out:?}");
    let shown: String = service
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    assert!(
        table
            .lines()
            .any(|l| l.contains(&shown) && l.contains("/after")),
        "no /after row for {shown:?} in:\n{table}"
    );
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "control characters in `sonde http`: {table:?}"
    );
    // Folded stacks: one sample per line, whatever the comm holds.
    let folded = wait_for(Duration::from_secs(30), "samples of the server", || {
        let out = agent.cli(&[
            "profile",
            "--pid",
            &srv.pid().to_string(),
            "--last",
            "--format",
            "folded",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && !text.is_empty()).then_some(text)
    });
    for l in folded.lines() {
        assert!(
            !l.chars().any(char::is_control),
            "control character in a folded line: {l:?}"
        );
        let n = l.rsplit_once(' ').and_then(|(_, n)| n.parse::<u64>().ok());
        assert!(n.is_some(), "folded line without a count: {l:?}");
    }
    let root = String::from_utf8_lossy(COMM).replace(char::is_control, "?");
    assert!(
        folded.lines().any(|l| l.starts_with(&format!("{root};"))),
        "no folded stack under the comm {root:?}:\n{folded}"
    );
    drop(srv);
}

#[test]
fn strict_parser_refuses_what_the_format_forbids() {
    assert!(parse_exposition("a{b=\"c\\\"d\\\\e\\nf\"} 1\n").is_ok());
    let s = parse_exposition("a{b=\"x\",} 2 123\n").unwrap();
    assert_eq!((s[0].labels["b"].as_str(), s[0].value), ("x", 2.0));
    for bad in [
        "a{b=\"c\"d\"} 1",
        "a{b=\"c\\x\"} 1",
        "a{b=\"c} 1",
        "a{b=c} 1",
        "a b",
        "a{b=\"c\"}1",
        "1a 1",
        "a{b=\"c\" d=\"e\"} 1",
    ] {
        assert!(parse_exposition(bad).is_err(), "{bad}");
    }
}
