//! Real peers for the alerting tests: Prometheus, Alertmanager (Debian
//! packages, installed when missing) and a capturing HTTP receiver.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Installs Debian package `pkg` when `cmd` is not on PATH.
pub fn ensure_installed(cmd: &str, pkg: &str) {
    let found = |c: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found(cmd) {
        return;
    }
    let st = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", pkg])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("run apt-get");
    assert!(
        st.success() && found(cmd),
        "cannot install {pkg} (for {cmd})"
    );
}

/// A child process killed (SIGTERM, then waited) on drop, with its log.
pub struct Peer {
    pub child: Option<Child>,
    pub log: std::path::PathBuf,
}

impl Peer {
    pub fn spawn(cmd: &mut Command, log: &Path) -> Peer {
        let f = std::fs::File::create(log).expect("peer log");
        let child = cmd
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Peer {
            child: Some(child),
            log: log.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid with a valid signal.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A request a `Capture` received.
#[derive(Debug, Clone)]
pub struct Captured {
    pub path: String,
    pub body: serde_json::Value,
}

/// An HTTP server on loopback that answers 200 to everything and records
/// POSTed JSON bodies. `stop` closes the port (a receiver outage);
/// `restart` listens on the same port again.
pub struct Capture {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Captured>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    pub fn start() -> Capture {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind capture");
        let addr = l.local_addr().expect("addr");
        let mut c = Capture {
            addr,
            got: Arc::default(),
            stop: Arc::default(),
            thread: None,
        };
        c.serve(l);
        c
    }

    fn serve(&mut self, l: TcpListener) {
        l.set_nonblocking(true).expect("nonblocking");
        self.stop.store(false, Ordering::SeqCst);
        let (stop, got) = (self.stop.clone(), self.got.clone());
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        if let Some(c) = handle(s) {
                            got.lock().unwrap_or_else(|e| e.into_inner()).push(c);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }));
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn restart(&mut self) {
        let l = TcpListener::bind(self.addr).expect("rebind capture port");
        self.serve(l);
    }

    pub fn all(&self) -> Vec<Captured> {
        self.got.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

fn handle(mut s: TcpStream) -> Option<Captured> {
    s.set_nonblocking(false).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let path = head.split_whitespace().nth(1)?.to_owned();
    let body = serde_json::from_slice(&buf[head_end..]).unwrap_or(serde_json::Value::Null);
    Some(Captured { path, body })
}

/// GET `path` from a peer and decode JSON (None while it is not up).
pub fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let (code, body) = crate::http_get(addr, path).ok()?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}
