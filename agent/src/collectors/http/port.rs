//! `server_port` of a server-side connection.
//!
//! Exact path: duplicate the traced process's socket into the agent with
//! `pidfd_getfd(2)` (Linux 5.6+, needs ptrace-attach rights: root has them)
//! and ask `getsockname(2)`. When the fd is already closed (HTTP/1.0
//! servers close right after answering), fall back to the process's single
//! listening port, read from the LISTEN part of /proc/PID/net/tcp{,6} only.
//! (Reading all of /proc/net/tcp walks the whole established hash table,
//! milliseconds per read: far too slow to do per connection.)

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader},
    os::fd::{FromRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

/// TCP state LISTEN in /proc/net/tcp.
const LISTEN: &str = "0A";
/// How long a process's listening ports are trusted.
const LISTEN_TTL: Duration = Duration::from_secs(10);
/// Most connections remembered; beyond it the cache restarts (cheap to refill).
const MAX_CONNS: usize = 65_536;

#[derive(Debug, Default)]
pub struct PortResolver {
    by_conn: HashMap<(u32, u32), u16>,
    listening: HashMap<u32, (Instant, Option<u16>)>,
}

impl PortResolver {
    pub fn port(&mut self, tgid: u32, fd: u32) -> Option<u16> {
        if let Some(p) = self.by_conn.get(&(tgid, fd)) {
            return Some(*p);
        }
        if let Some(p) = local_port_of(tgid, fd) {
            if self.by_conn.len() >= MAX_CONNS {
                self.by_conn.clear();
            }
            self.by_conn.insert((tgid, fd), p);
            return Some(p);
        }
        let now = Instant::now();
        match self.listening.get(&tgid) {
            Some((at, p)) if now.duration_since(*at) < LISTEN_TTL => *p,
            _ => {
                if self.listening.len() >= MAX_CONNS {
                    self.listening.clear();
                }
                let p = single_listen_port(tgid);
                self.listening.insert(tgid, (now, p));
                p
            }
        }
    }

    pub fn forget(&mut self, tgid: u32, fd: u32) {
        self.by_conn.remove(&(tgid, fd));
    }
}

/// The local TCP port of `fd` in process `tgid`, via pidfd_getfd + getsockname.
fn local_port_of(tgid: u32, fd: u32) -> Option<u16> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0u32) };
    if pidfd < 0 {
        return None;
    }
    // SAFETY: pidfd_open returned a fresh fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    use std::os::fd::AsRawFd as _;
    // SAFETY: pidfd_getfd takes a pidfd, a target fd number and flags, and
    // returns a new fd (a duplicate in our table) or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd as i32, 0u32) };
    if dup < 0 {
        return None;
    }
    // SAFETY: a fresh fd from pidfd_getfd, owned by us from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(dup as RawFd) };
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is large enough for any address and `len` says so.
    let r = unsafe {
        libc::getsockname(
            sock.as_raw_fd(),
            (&raw mut ss).cast::<libc::sockaddr>(),
            &mut len,
        )
    };
    if r != 0 {
        return None;
    }
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(&raw const ss).cast::<libc::sockaddr_in>() };
            Some(u16::from_be(sin.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(&raw const ss).cast::<libc::sockaddr_in6>() };
            Some(u16::from_be(sin6.sin6_port))
        }
        _ => None,
    }
}

/// The listening TCP port of `tgid` when it has exactly one.
fn single_listen_port(tgid: u32) -> Option<u16> {
    let mine: Vec<u64> = fs::read_dir(format!("/proc/{tgid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let l = fs::read_link(e.path()).ok()?;
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(f) = fs::File::open(format!("/proc/{tgid}/net/{table}")) else {
            continue;
        };
        // Listening sockets come first; stop at the first other state so the
        // kernel never walks the established table.
        for line in BufReader::new(f).lines().skip(1) {
            let Ok(line) = line else { break };
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&LISTEN) {
                break;
            }
            let ino = f.get(9).and_then(|i| i.parse::<u64>().ok());
            if ino.is_some_and(|i| mine.contains(&i))
                && let Some(p) = f
                    .get(1)
                    .and_then(|l| l.rsplit_once(':'))
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                && !ports.contains(&p)
            {
                ports.push(p);
            }
        }
    }
    (ports.len() == 1).then(|| ports[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_own_sockets() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, _) = l.accept().unwrap();
        use std::os::fd::AsRawFd as _;
        let me = std::process::id();
        // Needs no privilege for our own process.
        assert_eq!(local_port_of(me, s.as_raw_fd() as u32), Some(port));
        assert_ne!(local_port_of(me, c.as_raw_fd() as u32), Some(port));
        assert_eq!(local_port_of(me, 999_999), None);
    }
}
