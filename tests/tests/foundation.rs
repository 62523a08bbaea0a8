//! The foundation end to end: real agent, real eBPF, real processes.

use std::{os::unix::net::UnixListener, process::Command, time::Duration};

use sonde_tests::{
    Agent, metric_value, require_root, sonde_bin, wait_child_or_kill, wait_for, wait_until,
    workload::{Workload, build_c, copy_exe},
};
use sonde_wire::{
    HealthStatus,
    processes::ProcessInfo,
    status::{HealthReport, Status},
};

/// IDs of the BPF programs process `pid` holds (program and link fds), read
/// from /proc/PID/fdinfo: independent of the agent's own reporting.
fn program_ids_of(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in dir.flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path()) {
            ids.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u64>().ok()),
            );
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// (id, name) of every BPF program loaded in the kernel, from bpftool.
fn loaded() -> Vec<(u64, String)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool prog show failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p.get("id")?.as_u64()?, p.get("name")?.as_str()?.to_owned())))
        .collect()
}

#[test]
fn agent_tracks_processes_serves_metrics_and_detaches_on_sigterm() {
    let mut agent = Agent::start("");
    let agent_pid = agent.pid();

    // Programs really are in the kernel, held by the agent.
    let ids = program_ids_of(agent_pid);
    let all = loaded();
    let names: Vec<&str> = all
        .iter()
        .filter(|(id, _)| ids.contains(id))
        .map(|(_, n)| n.as_str())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("process_exe")),
        "process collector programs not held by the agent (pid {agent_pid}): {names:?}"
    );

    let execs_before =
        metric_value(&agent.metrics(), "sonde_process_execs_total").expect("execs metric");
    let bin = build_c("sleeper", &["-O1"]);
    let named = agent.dir.path().join("sonde_wl_named");
    copy_exe(&bin, &named);
    let wl = Workload::spawn(&mut Command::new(&named));
    let pid = wl.pid();

    // The exec event reaches the table with the right identity.
    let entry = wait_for(
        Duration::from_secs(10),
        "workload in the process table",
        || {
            let v: Vec<ProcessInfo> = agent.api(&format!("/api/v1/processes?pid={pid}"));
            v.into_iter().next()
        },
    );
    assert_eq!(entry.comm, "sonde_wl_named", "{entry:?}");
    assert_eq!(entry.service, "sonde_wl_named", "{entry:?}");
    assert_eq!(entry.exe, named.display().to_string(), "{entry:?}");
    assert_eq!(entry.ppid, std::process::id(), "{entry:?}");
    assert!(!entry.exited, "{entry:?}");

    let m = agent.metrics();
    let execs_after = metric_value(&m, "sonde_process_execs_total").expect("execs metric");
    assert!(
        execs_after > execs_before,
        "exec not counted: {execs_before} -> {execs_after}"
    );
    assert!(
        metric_value(&m, "sonde_processes_tracked").unwrap_or(0.0) >= 2.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "sonde_collector_up{collector=\"process\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "sonde_events_lost_total{collector=\"process\"}"),
        Some(0.0),
        "{m}"
    );
    assert!(m.contains("sonde_build_info{"), "{m}");
    assert!(
        m.contains("process_resident_memory_bytes"),
        "agent's own process metrics missing"
    );

    // Its exit is seen too.
    drop(wl);
    wait_for(Duration::from_secs(10), "workload marked exited", || {
        let v: Vec<ProcessInfo> = agent.api(&format!("/api/v1/processes?pid={pid}"));
        v.first().is_some_and(|p| p.exited).then_some(())
    });

    // Health documents.
    let (code, body) = agent.get("/health/live");
    assert_eq!(code, 200, "{body}");
    let (code, body) = agent.get("/health");
    assert_eq!(code, 200, "{body}");
    let h: HealthReport = serde_json::from_str(&body).expect("health JSON");
    let process = h.components.iter().find(|c| c.name == "process");
    assert_eq!(
        process.map(|p| p.status),
        Some(HealthStatus::Healthy),
        "{body}"
    );

    // SIGTERM: clean exit, nothing left attached, socket removed.
    let st = agent.stop();
    assert!(st.success(), "agent exited with {st}\n{}", agent.log());
    assert!(!agent.socket.exists(), "control socket left behind");
    // The kernel frees programs asynchronously after the last fd closes.
    wait_for(
        Duration::from_secs(10),
        "the agent's programs to be unloaded",
        || {
            let still: Vec<(u64, String)> = loaded()
                .into_iter()
                .filter(|(id, _)| ids.contains(id))
                .collect();
            still.is_empty().then_some(())
        },
    );
}

#[test]
fn status_command_reports_collectors_and_features() {
    let agent = Agent::start("");
    let out = agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sonde status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("process    healthy"), "{text}");
    assert!(text.contains("KERNEL FEATURE"), "{text}");
    assert!(text.contains("tp_btf"), "{text}");

    let v: Status = agent.cli_json(&["status", "-o", "json"]);
    assert!(v.ready, "{v:?}");
    for name in [
        "btf",
        "tracefs",
        "ringbuf",
        "tp_btf",
        "raw_tracepoint",
        "tracepoint",
        "fentry",
        "kprobe",
        "uprobe",
        "perf_event",
    ] {
        let f = v
            .feature(name)
            .unwrap_or_else(|| panic!("feature {name} not reported: {v:?}"));
        // An unavailable feature must say why.
        if !f.available {
            assert!(!f.detail.is_empty(), "{f:?}");
        }
    }
    // Facts of this machine (../shared/PLATFORM.md): BTF and tracefs (mounted
    // by the agent if needed) are there; kprobes are compiled out.
    for name in ["btf", "tracefs", "tp_btf", "uprobe", "perf_event"] {
        assert!(v.feature(name).unwrap().available, "{name}: {v:?}");
    }
    assert_eq!(v.collectors[0].name, "process");
}

#[test]
fn status_without_agent_is_a_clear_runtime_error() {
    let out = Command::new(sonde_bin())
        .args(["status", "--socket", "/nonexistent/sonde.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the sonde agent") && err.contains("is `sonde agent` running?"),
        "{err}"
    );
}

#[test]
fn check_config_accepts_good_and_rejects_bad_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[collectors.process]\nmax_processes = 1000\n").unwrap();
    let out = Command::new(sonde_bin())
        .args(["agent", "--check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[api]\nlisten = \"127.0.0.1:1\"\n\n[collectors.process]\nmax_procs = 5\n",
    )
    .unwrap();
    let out = Command::new(sonde_bin())
        .args(["agent", "--check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_procs") && err.contains("line 5"), "{err}");

    // A bad environment override is a config error too, naming the variable.
    let out = Command::new(sonde_bin())
        .args(["agent", "--check-config"])
        .arg(&good)
        .env("SONDE_COLLECTORS__PROCESS__MAX_PROCESSES", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SONDE_COLLECTORS__PROCESS__MAX_PROCESSES"),
        "{err}"
    );

    // Values the collectors use are checked when the file is read too: a
    // route pattern and a syscall name, each error naming its key.
    for (name, text, key, value) in [
        (
            "route.toml",
            "[collectors.http]\nroutes = [\"/ok/{id}\", \"items/{id}\"]\n",
            "collectors.http.routes",
            "items/{id}",
        ),
        (
            "syscall.toml",
            "[collectors.syscalls]\nsyscalls = [\"openat\", \"getppidd\"]\n",
            "collectors.syscalls.syscalls",
            "getppidd",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new(sonde_bin())
            .args(["agent", "--check-config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains(key) && err.contains(value) && err.contains("line 2"),
            "{name}: {err}"
        );
    }

    // Usage errors are exit 2 as well.
    let out = Command::new(sonde_bin())
        .args(["agent", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn port_in_use_is_a_clear_runtime_error() {
    require_root();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let mut agent = Agent::spawn("", &[("SONDE_API__LISTEN", &format!("127.0.0.1:{port}"))]);
    let st = agent
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("agent still running on a busy port\n{}", agent.log()));
    assert_eq!(st.code(), Some(1), "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains(&format!("cannot listen on 127.0.0.1:{port}")) && log.contains("in use"),
        "{log}"
    );
}

#[test]
fn stale_socket_is_replaced_but_live_one_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("stale.sock");
    drop(UnixListener::bind(&sock).unwrap()); // leaves a dead socket file
    assert!(sock.exists());
    let sock_s = sock.display().to_string();
    let agent = Agent::start_with_env("", &[("SONDE_API__SOCKET", &sock_s)]);
    let mode = std::fs::metadata(&sock)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "control socket must be private");

    // A second agent on the same (now live) socket refuses to start.
    let mut second = Agent::spawn("", &[("SONDE_API__SOCKET", &sock_s)]);
    let st = second
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("second agent still running\n{}", second.log()));
    assert_eq!(st.code(), Some(1));
    assert!(
        second
            .log()
            .contains("another sonde agent is already serving"),
        "{}",
        second.log()
    );
    drop(agent);
}

#[test]
fn unprivileged_agent_fails_with_a_clear_error() {
    require_root();
    // Drop every capability but keep root's uid, like a misconfigured unit.
    let out = Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(sonde_bin())
        .args(["agent"])
        .env("SONDE_API__LISTEN", "127.0.0.1:0")
        .env("SONDE_API__SOCKET", "/tmp/sonde-unpriv-test.sock")
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs root, or CAP_BPF + CAP_PERFMON"),
        "{err}"
    );
}

#[test]
fn kernel_logs_reach_agent_logs_only_when_debug_is_asked_for() {
    // Default: kernel-side log statements are patched off at load time.
    let quiet = Agent::start("");
    let mut child = Command::new("/bin/true").spawn().unwrap();
    let pid = child.id();
    assert!(wait_child_or_kill(&mut child, Duration::from_secs(10), "/bin/true").success());
    // The exec went through the kernel programs (the process table has it),
    // so a debug record, were logs on, would have been emitted by now.
    wait_until(
        Duration::from_secs(10),
        "the agent's process table to hold our /bin/true",
        || {
            let v: Vec<ProcessInfo> = quiet.api(&format!("/api/v1/processes?pid={pid}"));
            if v.is_empty() { Err(v) } else { Ok(()) }
        },
    );
    assert!(
        !quiet.log().contains("process event kind="),
        "kernel debug logs on by default:\n{}",
        quiet.log()
    );
    drop(quiet);

    // Asked for: aya-log records are forwarded into the agent's logs.
    let loud = Agent::start_with_env("", &[("RUST_LOG", "info,sonde_ebpf=debug")]);
    let mut child = Command::new("/bin/true").spawn().unwrap();
    let pid = child.id();
    wait_child_or_kill(&mut child, Duration::from_secs(10), "/bin/true");
    wait_for(
        Duration::from_secs(10),
        "kernel debug record for our exec",
        || {
            loud.log()
                .contains(&format!("process event kind=1 tgid={pid}"))
                .then_some(())
        },
    );
}

#[test]
fn help_teaches_with_examples() {
    for args in [&["--help"][..], &["agent", "--help"], &["status", "--help"]] {
        let out = Command::new(sonde_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Examples:"),
            "{args:?} has no examples:\n{text}"
        );
    }
}

#[test]
fn agent_with_nothing_enabled_is_live_but_not_ready() {
    // Every collector the binary has, from its own effective config.
    let out = Command::new(sonde_bin())
        .args(["agent", "--print-config"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut env: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("[collectors.")?.strip_suffix(']'))
        .filter(|name| !name.contains('.'))
        .map(|name| {
            (
                format!("SONDE_COLLECTORS__{}__ENABLED", name.to_uppercase()),
                "false".to_owned(),
            )
        })
        .collect();
    assert!(env.iter().any(|(k, _)| k.contains("PROCESS")), "{text}");
    env.push(("SONDE_ALERTS__ENABLED".into(), "false".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let agent = Agent::spawn("", &env);
    let (code, body) = wait_for(
        Duration::from_secs(20),
        "the agent to finish start-up",
        || {
            let (code, body) = sonde_tests::http_get(agent.addr, "/health/ready").ok()?;
            body.contains("collectors started").then_some((code, body))
        },
    );
    assert_eq!(code, 503, "{body}");
    assert_eq!(agent.get("/health/live").0, 200);
}

/// Each object must hold only the maps its programs use: when every hook
/// family's maps sat in one shared crate, each of the seven objects carried
/// all of them and the default agent held 280 maps and 742 MiB of kernel
/// memory (130 MiB of it idle copies of the allocation tracker's live map).
/// Now 50 maps, ~154 MiB, most of it the profiler's unwind-row budget.
#[test]
fn default_agent_holds_each_map_once_and_bounded_kernel_memory() {
    let agent = Agent::start("");
    let mut maps = std::collections::HashMap::new();
    for e in std::fs::read_dir(format!("/proc/{}/fdinfo", agent.pid()))
        .expect("fdinfo")
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
            maps.insert(id, memlock);
        }
    }
    let total: u64 = maps.values().sum();
    assert!(
        !maps.is_empty() && maps.len() <= 100 && total <= 256 << 20,
        "the agent holds {} BPF maps, {} MiB of kernel memory",
        maps.len(),
        total >> 20
    );
}
