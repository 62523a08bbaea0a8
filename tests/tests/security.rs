//! Who can reach what: the control socket is root's only, the TCP listener
//! (metrics and health, reachable from the network) never serves the control
//! API, and the agent never deletes a file that is not its socket.
//!
//! Each test also runs its positive control (the same request that must be
//! refused succeeds once the protection is lifted, or on the channel meant
//! for it), so a refusal for an unrelated reason cannot pass for the check.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    time::Duration,
};

use sonde_tests::{Agent, require_root, unix_get};

/// Every control-API route and method (agent/src/api/control.rs `router`).
const CONTROL_ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/processes"),
    ("GET", "/api/v1/alerts"),
    ("GET", "/api/v1/syscalls"),
    ("GET", "/api/v1/syscalls/totals"),
    ("GET", "/api/v1/profile"),
    ("GET", "/api/v1/http"),
    ("GET", "/api/v1/alloc"),
    ("DELETE", "/api/v1/alloc"),
    ("GET", "/api/v1/alloc/sessions"),
    ("GET", "/api/v1/memory"),
];

/// The uid/gid of `nobody`, an unprivileged user every Debian system has.
const NOBODY: &str = "65534";

/// Connects to `socket` as `nobody` (setpriv drops uid, gid and groups) and
/// asks for the agent's status; returns curl's exit code and stderr.
fn connect_as_nobody(socket: &Path) -> (Option<i32>, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            NOBODY,
            "--regid",
            NOBODY,
            "--clear-groups",
            "--",
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(socket)
        .arg("http://sonde/api/v1/status")
        .output()
        .expect("setpriv (util-linux) and curl: installed by `cargo xtask test`");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn unprivileged_user_cannot_use_the_control_socket() {
    require_root();
    let agent = Agent::start("");
    // Open the socket's directory to everyone, so that only the socket's
    // own mode stands between another user and the agent.
    let dir = agent.socket.parent().expect("socket has a directory");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let meta = std::fs::metadata(&agent.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        0,
        "socket owner"
    );

    let (code, out) = connect_as_nobody(&agent.socket);
    // curl exits 7 when it cannot connect (here: EACCES on connect(2)).
    assert_eq!(code, Some(7), "nobody reached the control socket: {out}");
    assert!(
        out.contains("Permission denied") || out.contains("Failed to connect"),
        "{out}"
    );
    // Root still can.
    assert_eq!(
        agent
            .api::<sonde_wire::status::Status>("/api/v1/status")
            .pid,
        agent.pid()
    );

    // Positive control: with the mode opened, the same client gets through,
    // so the refusal above is the socket's mode and nothing else.
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, out) = connect_as_nobody(&agent.socket);
    assert_eq!(code, Some(0), "control check failed: {out}");
    assert_eq!(out.trim(), "200", "{out}");
}

/// One raw HTTP/1.0 request on the TCP listener; returns the status code.
fn tcp_request(addr: std::net::SocketAddr, method: &str, path: &str) -> u16 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response to {method} {path}: {text}"))
}

#[test]
fn control_api_is_never_served_on_the_tcp_listener() {
    require_root();
    let agent = Agent::start("");
    for &(method, path) in CONTROL_ROUTES {
        for p in [
            path.to_owned(),
            format!("{path}?pid=1"),
            format!("{path}/"),
            path.to_uppercase(),
        ] {
            let code = tcp_request(agent.addr, method, &p);
            assert_eq!(
                code, 404,
                "{method} {p} on the TCP listener answered {code}"
            );
        }
    }
    // Positive control: the same routes exist on the control socket (GETs
    // only: DELETE /api/v1/alloc would act), so a 404 above is the
    // listener refusing them, not a route that does not exist.
    for &(method, path) in CONTROL_ROUTES {
        if method != "GET" {
            continue;
        }
        let (code, body) = unix_get(&agent.socket, path).unwrap();
        assert_ne!(code, 404, "{path} is not a control route any more: {body}");
    }
    // And the listener does serve what it is for.
    assert_eq!(tcp_request(agent.addr, "GET", "/metrics"), 200);
}

/// Starts an agent whose socket path is `path` and returns its exit code
/// and log; it must exit on its own.
fn start_on(path: &Path) -> (Option<i32>, String) {
    let path_s = path.display().to_string();
    let mut agent = Agent::spawn("", &[("SONDE_API__SOCKET", &path_s)]);
    let child = agent.child.as_mut().expect("spawned");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent did not refuse {path_s}:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    agent.child = None;
    (st.code(), agent.log())
}

#[test]
fn a_file_that_is_not_a_socket_is_refused_and_kept() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // A regular file with data in it (say, a mistyped api.socket naming a
    // config file).
    let file = dir.path().join("important.conf");
    std::fs::write(&file, "keep me\n").unwrap();
    let (code, log) = start_on(&file);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("exists and is not a socket; refusing to remove it"),
        "{log}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me\n");

    // A symlink (to that file) is not followed nor removed either.
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let (code, log) = start_on(&link);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("is not a socket"), "{log}");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me\n");

    // A directory too.
    let sub = dir.path().join("dir.sock");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("inside"), "x").unwrap();
    let (code, log) = start_on(&sub);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("is not a socket"), "{log}");
    assert!(sub.join("inside").exists());

    // Positive control: a stale socket at the same kind of path is replaced
    // and served (the refusals above are about the file type only).
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let agent = Agent::start_with_env("", &[("SONDE_API__SOCKET", &stale.display().to_string())]);
    let (code, _) = unix_get(&stale, "/api/v1/status").unwrap();
    assert_eq!(code, 200);
    drop(agent);
}
