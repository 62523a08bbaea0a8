//! `server_port` of a server-side connection, from /proc: the fd's socket
//! inode looked up in /proc/PID/net/tcp{,6}; when the fd is already closed
//! (HTTP/1.0 servers close right after answering), the process's single
//! listening port.

use std::{collections::HashMap, fs};

/// TCP state LISTEN in /proc/net/tcp.
const LISTEN: &str = "0A";

/// Caches (tgid, fd) -> port for the life of the connection.
#[derive(Debug, Default)]
pub struct PortResolver {
    by_conn: HashMap<(u32, u32), u16>,
}

/// Most connections remembered; beyond it the cache restarts (cheap to refill).
const MAX_CONNS: usize = 65_536;

impl PortResolver {
    pub fn port(&mut self, tgid: u32, fd: u32) -> Option<u16> {
        if let Some(p) = self.by_conn.get(&(tgid, fd)) {
            return Some(*p);
        }
        let p = socket_inode(tgid, fd)
            .and_then(|ino| find_local_port(tgid, |_, inode| inode == ino))
            .or_else(|| single_listen_port(tgid))?;
        if self.by_conn.len() >= MAX_CONNS {
            self.by_conn.clear();
        }
        self.by_conn.insert((tgid, fd), p);
        Some(p)
    }

    pub fn forget(&mut self, tgid: u32, fd: u32) {
        self.by_conn.remove(&(tgid, fd));
    }
}

fn socket_inode(tgid: u32, fd: u32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{tgid}/fd/{fd}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Local port of the first socket in the process's network namespace for
/// which `want(state, inode)` holds.
fn find_local_port(tgid: u32, want: impl Fn(&str, u64) -> bool) -> Option<u16> {
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{tgid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(st), Some(ino)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let Ok(ino) = ino.parse::<u64>() else {
                continue;
            };
            if want(st, ino)
                && let Some((_, port)) = local.rsplit_once(':')
                && let Ok(p) = u16::from_str_radix(port, 16)
            {
                return Some(p);
            }
        }
    }
    None
}

/// The listening port of `tgid` when it has exactly one.
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
        let Ok(text) = fs::read_to_string(format!("/proc/{tgid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&LISTEN) {
                continue;
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
