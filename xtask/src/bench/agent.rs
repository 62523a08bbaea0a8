//! Starting and watching the agent (and peers) during a benchmark run.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// A running `sonde agent` on a private port and socket.
pub struct Agent {
    pub child: Child,
    /// The control socket (`sonde alloc`, `sonde memory` talk to it).
    pub socket: std::path::PathBuf,
    /// The HTTP API's port on 127.0.0.1 (/metrics).
    pub port: u16,
}

impl Agent {
    pub fn start(bin: &Path, dir: &Path, env: &[(&str, String)]) -> Result<Agent> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.join("agent.log"))?;
        let socket = dir.join(format!("sonde-{port}.sock"));
        let mut c = Command::new(bin);
        c.arg("agent")
            .env("SONDE_API__LISTEN", format!("127.0.0.1:{port}"))
            .env("SONDE_API__SOCKET", &socket)
            .env("SONDE_AGENT__LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut a = Agent {
            child,
            socket,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = a.child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
                bail!("agent exited with {st} during start-up: {}", log.trim());
            }
            if get(port, "/health/ready").is_ok_and(|(code, _)| code == 200) {
                return Ok(a);
            }
            if Instant::now() > deadline {
                bail!("agent not ready after 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(mut self) -> Result<()> {
        signal(self.child.id(), 15);
        let st = self.child.wait()?;
        if !st.success() {
            bail!("agent exited with {st} on SIGTERM");
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.child.id(), 15);
            let _ = self.child.wait();
        }
    }
}

pub fn signal(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// HTTP/1.0 GET on loopback.
pub fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, raw))
}

/// A bpftrace peer, started and waited on until its probes are attached.
pub struct Bpftrace(Child);

impl Bpftrace {
    pub fn start(script: &Path) -> Result<Bpftrace> {
        let mut child = Command::new("bpftrace")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("bpftrace is not installed (apt-get install bpftrace)")?;
        let out = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(out).lines();
        // bpftrace prints "Attaching N probes..." once they are in place.
        match lines.next() {
            Some(Ok(l)) if l.starts_with("Attaching") => {}
            other => {
                let _ = child.kill();
                bail!("bpftrace did not attach: {other:?}");
            }
        }
        std::thread::spawn(move || for _ in lines {});
        std::thread::sleep(Duration::from_millis(300));
        Ok(Bpftrace(child))
    }
}

impl Bpftrace {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        signal(self.0.id(), 2);
        let _ = self.0.wait();
    }
}

/// CPU time a process uses from now on, in nanoseconds from each thread's
/// `schedstat` (the scheduler's own clock), not the 10 ms ticks of
/// /proc/PID/stat, which read 0 over a run of a second. Per thread, so a
/// thread started during the window counts whole; a thread that exits
/// during it takes its share with it (the agent's threads live as long as
/// it does, so this is not expected to matter, and undercounts if it does).
pub struct CpuMeter {
    pid: u32,
    start: std::collections::HashMap<u32, u64>,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Result<Self> {
        Ok(Self {
            pid,
            start: thread_cpu_ns(pid)?,
        })
    }

    /// Counting from the process's start (its live threads' whole time).
    pub fn from_birth(pid: u32) -> Self {
        Self {
            pid,
            start: Default::default(),
        }
    }

    /// Seconds of CPU since [`CpuMeter::start`].
    pub fn seconds(&self) -> Result<f64> {
        let now = thread_cpu_ns(self.pid)?;
        let ns: u64 = now
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(self.start.get(tid).copied().unwrap_or(0)))
            .sum();
        Ok(ns as f64 / 1e9)
    }
}

/// Each live thread's time on CPU (ns): the first field of
/// /proc/PID/task/TID/schedstat.
fn thread_cpu_ns(pid: u32) -> Result<std::collections::HashMap<u32, u64>> {
    let mut out = std::collections::HashMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let e = e?;
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // A thread can exit between the listing and the read.
        let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) else {
            continue;
        };
        let ns = s
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .context("bad schedstat")?;
        out.insert(tid, ns);
    }
    Ok(out)
}

/// A `VmRSS`/`VmHWM`-style field of /proc/PID/status, in MiB.
pub fn status_mib(pid: u32, field: &str) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = s
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("{field} missing"))?;
    Ok(kb / 1024.0)
}

/// Compiles a C workload (path relative to the workspace root).
pub fn build_c(rel: &str, dir: &Path) -> Result<std::path::PathBuf> {
    let src = crate::cmd::workspace_root().join(rel);
    let name = Path::new(rel).file_stem().context("workload has no name")?;
    let out = dir.join(name);
    crate::cmd::run(Command::new("gcc").args(["-O2", "-o"]).arg(&out).arg(&src))?;
    Ok(out)
}

/// Runs a workload whose first output line ends in a number (`... ns/call: X`):
/// CPU time per operation, which includes the eBPF programs the operation
/// triggers and, unlike wall time, not the time other tasks held the CPU.
pub fn run_number(bin: &Path, args: &[String]) -> Result<f64> {
    let out = Command::new(bin).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    first
        .rsplit([':', ' '])
        .next()
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("workload printed no number: {first:?}"))
}

/// Turns on the kernel's per-program run-time accounting
/// (`kernel.bpf_stats_enabled`) and restores the old value when dropped.
pub struct BpfStats(String);

impl BpfStats {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> Result<BpfStats> {
        Self::set("1")
    }

    /// Off for everything but the run-time measurement itself: while on,
    /// every program run pays for two extra clock reads.
    pub fn disable() -> Result<BpfStats> {
        Self::set("0")
    }

    fn set(v: &str) -> Result<BpfStats> {
        let old = std::fs::read_to_string(Self::PATH).context("reading bpf_stats_enabled")?;
        std::fs::write(Self::PATH, v).context("setting kernel.bpf_stats_enabled")?;
        Ok(BpfStats(old.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// (run_time_ns, run_cnt) summed over the programs of `prog_type` that `pid`
/// holds (program and link fds in /proc/PID/fdinfo), from bpftool.
pub fn bpf_run_stats(pid: u32, prog_type: &str) -> Result<(u64, u64)> {
    bpf_run_stats_named(pid, prog_type, "")
}

/// [`bpf_run_stats`] of the programs whose (kernel-truncated, 15-byte)
/// name starts with `prefix`.
pub fn bpf_run_stats_named(pid: u32, prog_type: &str, prefix: &str) -> Result<(u64, u64)> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path()) {
            ids.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u64>().ok()),
            );
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("bpftool")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool JSON")?;
    let (mut ns, mut cnt) = (0, 0);
    for p in progs.as_array().into_iter().flatten() {
        let id = p["id"].as_u64().unwrap_or(0);
        if ids.contains(&id)
            && p["type"].as_str() == Some(prog_type)
            && p["name"].as_str().unwrap_or("").starts_with(prefix)
        {
            ns += p["run_time_ns"].as_u64().unwrap_or(0);
            cnt += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Ok((ns, cnt))
}
