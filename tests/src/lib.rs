//! Shared helpers for sonde's privileged end-to-end tests.
//!
//! Every test here drives the real `sonde` binary, which loads real eBPF
//! programs into this kernel. There is no skipping: when the agent cannot
//! start (not root, eBPF refused), the test fails with the agent's own words.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

pub mod peers;
pub mod python;
pub mod stacks;
pub mod workload;

/// The `sonde` binary under test: `$SONDE_BIN` (set by `cargo xtask test`),
/// else the workspace's debug build, which must be newer than every source
/// file of the agent and its eBPF programs: testing a stale build would
/// report on code that is not the code in the tree.
pub fn sonde_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SONDE_BIN") {
        return PathBuf::from(p);
    }
    let p = workspace_root().join("target/debug/sonde");
    static CHECKED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let root = workspace_root();
        let built = std::fs::metadata(&p)
            .and_then(|m| m.modified())
            .map_err(|e| {
                format!(
                    "{} is missing ({e}): run the tests with `cargo xtask test` (it builds the agent first), or `cargo build -p sonde`",
                    p.display()
                )
            })?;
        match newest_source(&[root.join("agent"), root.join("ebpf")]) {
            Some((changed, path)) if changed > built => Err(format!(
                "{} is older than {}: rebuild it with `cargo build -p sonde` (or run `cargo xtask test`, which builds it first)",
                p.display(),
                path.strip_prefix(&root).unwrap_or(&path).display()
            )),
            _ => Ok(()),
        }
    });
    if let Err(e) = checked {
        panic!("{e}");
    }
    p
}

/// The most recently modified file under `dirs` (build outputs skipped).
fn newest_source(dirs: &[PathBuf]) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if e.file_name() != "target" {
                    stack.push(e.path());
                }
                continue;
            }
            if let Ok(t) = e.metadata().and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(n, _)| t > *n)
            {
                newest = Some((t, e.path()));
            }
        }
    }
    newest
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace")
        .to_owned()
}

/// Fails the test (never skips) when we cannot load eBPF.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "sonde's integration tests load eBPF programs and must run as root: `sudo cargo xtask test`"
    );
}

/// Serializes tests that measure timing or CPU samples, so they do not
/// disturb each other.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A free TCP port on loopback, taken from below the kernel's ephemeral
/// range.
///
/// Binding `:0` and releasing it hands out an *ephemeral* port, which any
/// outgoing connection (a scrape, a health poll) may grab as its source port
/// before the agent binds it: CI once failed on exactly that ("Address
/// already in use"). Ports below `ip_local_port_range` are never handed out
/// implicitly, so only another listener could take them; a per-process
/// cursor (seeded by pid) keeps parallel tests apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.max(10_001));
    let span = high - low;
    let seed = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + seed.wrapping_add(n) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port in {low}..{high} on 127.0.0.1");
}

/// A running `sonde agent` on a free port and a private socket.
pub struct Agent {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Agent {
    /// Starts the agent with `config` (TOML, may be empty) and waits until
    /// /health/ready answers 200. Panics with the agent's log otherwise.
    pub fn start(config: &str) -> Agent {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Agent {
        // `free_port` only says the port was free when it looked; a
        // listener of another process can take it before the agent binds
        // (CI saw "Address already in use" once). That is the harness's
        // race, not the agent's failure: try another port, twice at most.
        for _ in 0..2 {
            let mut agent = Self::spawn(config, env);
            if !agent.exited_because_port_taken(Duration::from_secs(30)) {
                agent.wait_ready(Duration::from_secs(30));
                return agent;
            }
        }
        let agent = Self::spawn(config, env);
        agent.wait_ready(Duration::from_secs(30));
        agent
    }

    /// Waits until the agent is ready or has exited; true when it exited
    /// because its API port was taken.
    fn exited_because_port_taken(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                return self.log().contains("Address already in use");
            }
            if http_get(self.addr, "/health/ready").is_ok_and(|(code, _)| code == 200) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Starts the agent without waiting for readiness.
    pub fn spawn(config: &str, env: &[(&str, &str)]) -> Agent {
        Self::spawn_wrapped(config, env, &[])
    }

    /// Like `spawn`, with the agent run through `wrapper` (a command and its
    /// arguments, e.g. `setpriv --bounding-set=...`) when it is not empty.
    pub fn spawn_wrapped(config: &str, env: &[(&str, &str)], wrapper: &[String]) -> Agent {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("sonde.sock");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let cfg_path = dir.path().join("sonde.toml");
        let full = format!(
            "[api]\nlisten = \"{addr}\"\nsocket = \"{}\"\n\n{config}",
            socket.display()
        );
        std::fs::write(&cfg_path, full).expect("write config");
        let log = dir.path().join("agent.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(sonde_bin());
                c
            }
            None => Command::new(sonde_bin()),
        };
        cmd.arg("agent")
            .arg("--config")
            .arg(&cfg_path)
            .stdout(log_file.try_clone().expect("dup"))
            .stderr(log_file)
            .env_remove("RUST_LOG");
        // A developer chasing a failure asks for the agent's debug log
        // with SONDE_TEST_AGENT_LOG (e.g. `sonde=debug`).
        if let Ok(filter) = std::env::var("SONDE_TEST_AGENT_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        // Set after the removal so a test can ask for RUST_LOG explicitly.
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn sonde agent");
        Agent {
            child: Some(child),
            addr,
            socket,
            dir,
            log,
        }
    }

    /// Waits up to `timeout` for the agent to exit on its own (e.g. when it
    /// refuses its config); `None` while it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("agent running");
            if let Some(st) = child.try_wait().expect("wait") {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent running").id()
    }

    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok((code, body)) = http_get(self.addr, "/health/ready") {
                if code == 200 {
                    return;
                }
                last = body;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "agent not ready after {timeout:?} (it must load eBPF here; a privileged test never skips)\nlast /health/ready: {last}\nagent log:\n{}",
            self.log()
        );
    }

    /// GET on the TCP listener.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nagent log:\n{}", self.log()))
    }

    pub fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        body
    }

    /// GET on the control socket; returns the answer decoded as `T` (one
    /// of the control API's types in `sonde_wire`).
    pub fn api<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let (code, body) = unix_get(&self.socket, path).unwrap_or_else(|e| {
            panic!(
                "GET {path} on the control socket: {e}\nagent log:\n{}",
                self.log()
            )
        });
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: bad JSON {e}: {body}"))
    }

    /// Runs `sonde <args>` (a command with JSON output) against this
    /// agent's socket and decodes its stdout as `T`; panics when it fails.
    pub fn cli_json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "sonde {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "sonde {args:?}: bad JSON {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs `sonde <args>` against this agent's socket.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(sonde_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run sonde cli")
    }

    /// Sends SIGTERM and waits for exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        // SAFETY: kill(2) on our own child's pid with a valid signal.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not exit within 15s of SIGTERM\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// How long a dropped agent may take to exit after SIGTERM before it is
/// killed (it detaches its programs and flushes; seconds at most).
const DROP_GRACE: Duration = Duration::from_secs(15);

impl Drop for Agent {
    /// SIGTERM, then a bounded wait, then SIGKILL: a hung agent must fail
    /// the test that dropped it, never hang the suite.
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid with a valid signal.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        if wait_child(&mut c, DROP_GRACE).is_some() {
            return;
        }
        let _ = c.kill();
        let killed = wait_child(&mut c, Duration::from_secs(5));
        let msg = format!(
            "agent (pid {}) did not exit within {DROP_GRACE:?} of SIGTERM; SIGKILL: {}\nagent log:\n{}",
            c.id(),
            killed.map_or("still not reaped".to_owned(), |s| s.to_string()),
            self.log()
        );
        // A panic while unwinding aborts the test binary, losing the
        // original failure: only report then.
        if std::thread::panicking() {
            eprintln!("{msg}");
        } else {
            panic!("{msg}");
        }
    }
}

/// Waits up to `timeout` for `child` to exit; `None` while it still runs.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `timeout` for `child` to exit, or kills it and panics
/// naming `what`: a test must not hang on a child that never exits.
pub fn wait_child_or_kill(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    if let Some(st) = wait_child(child, timeout) {
        return st;
    }
    let _ = child.kill();
    let _ = wait_child(child, Duration::from_secs(5));
    panic!(
        "{what} (pid {}) still running after {timeout:?}; killed",
        child.id()
    );
}

fn parse_response(raw: &[u8]) -> std::io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {head}")))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        code,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A minimal HTTP/1.0 GET (the test client must not depend on the code under test).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

pub fn unix_get(socket: &Path, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: sonde\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Runs `cmd` to completion, panicking only when it cannot start.
pub fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// stdout then stderr of a finished command, for assertion messages.
pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `probe` until it returns `Ok`, or panics after `timeout` naming
/// `what` and the last `Err` it returned: the value observed instead, so a
/// timeout says how far from the condition the system was.
pub fn wait_until<T, E: std::fmt::Debug>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(v) => return v,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last observed: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Value of the series `name{labels}` exactly as written in Prometheus text.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok()).flatten()
    })
}

/// A loopback HTTP server answering every request with `body` as JSON, on a
/// background thread for the rest of the test process (e.g. a recorded
/// kubelet `/pods` payload: there is no cluster here). Returns its address.
pub fn serve_json_forever(body: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind stub server");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 8192];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    addr
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::newest_source;

    fn touch(p: &std::path::Path, t: SystemTime) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let f = std::fs::File::create(p).unwrap();
        f.set_modified(t).unwrap();
    }

    #[test]
    fn newest_source_finds_the_latest_edit_and_skips_build_outputs() {
        let d = tempfile::tempdir().unwrap();
        let base = SystemTime::now() - Duration::from_secs(3600);
        touch(&d.path().join("agent/src/a.rs"), base);
        touch(
            &d.path().join("ebpf/x/src/deep/b.rs"),
            base + Duration::from_secs(60),
        );
        touch(
            &d.path().join("agent/target/debug/sonde"),
            base + Duration::from_secs(600),
        );
        let (t, p) = newest_source(&[d.path().join("agent"), d.path().join("ebpf")]).unwrap();
        assert_eq!(t, base + Duration::from_secs(60));
        assert!(p.ends_with("deep/b.rs"), "{}", p.display());
        assert_eq!(newest_source(&[d.path().join("none")]), None);
    }
}
