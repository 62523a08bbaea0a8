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
}

impl Agent {
    pub fn start(bin: &Path, dir: &Path, env: &[(&str, String)]) -> Result<Agent> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.join("agent.log"))?;
        let mut c = Command::new(bin);
        c.arg("agent")
            .env("SONDE_API__LISTEN", format!("127.0.0.1:{port}"))
            .env("SONDE_API__SOCKET", dir.join(format!("sonde-{port}.sock")))
            .env("SONDE_AGENT__LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            c.env(k, v);
        }
        let child = c
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut a = Agent { child };
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

impl Drop for Bpftrace {
    fn drop(&mut self) {
        signal(self.0.id(), 2);
        let _ = self.0.wait();
    }
}

/// utime + stime of `pid` in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("bad stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0)
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

/// Compiles a benchmark workload from xtask/bench/.
pub fn build_c(name: &str, dir: &Path) -> Result<std::path::PathBuf> {
    let src = crate::cmd::workspace_root()
        .join("xtask/bench")
        .join(format!("{name}.c"));
    let out = dir.join(name);
    crate::cmd::run(Command::new("gcc").args(["-O2", "-o"]).arg(&out).arg(&src))?;
    Ok(out)
}

/// Runs a workload that prints one number (ns per operation).
pub fn run_number(bin: &Path, args: &[String]) -> Result<f64> {
    let out = Command::new(bin).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("workload printed no number")
}
