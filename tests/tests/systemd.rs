//! The systemd unit: `systemd-analyze verify` clean, hardening rated by
//! `systemd-analyze security`, and a SystemCallFilter that allows every
//! syscall the real agent makes (traced with strace).

use std::{collections::BTreeSet, path::PathBuf, process::Command, time::Duration};

use sonde_tests::{Agent, run, sonde_bin, text, workspace_root};

fn root() -> PathBuf {
    workspace_root()
}

#[test]
fn systemd_unit_verifies_without_warnings() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        let o = run(Command::new("apt-get").args(["install", "-y", "systemd"]));
        assert!(o.status.success(), "apt-get install systemd: {}", text(&o));
    }
    let tmp = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = std::fs::read_to_string(root().join("deploy/systemd/sonde.service"))
        .unwrap()
        .replace("/usr/local/bin/sonde", &sonde_bin().display().to_string());
    let path = tmp.path().join("sonde.service");
    std::fs::write(&path, &unit).unwrap();
    let o = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    let out = text(&o);
    assert!(
        o.status.success() && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
    for key in [
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "SystemCallFilter=",
    ] {
        assert!(unit.contains(key), "unit lacks {key}");
    }
    // The check is real: an unknown key is reported.
    let bad = tmp.path().join("bad.service");
    std::fs::write(
        &bad,
        unit.replace("ProtectSystem=strict", "ProtectSistem=strict"),
    )
    .unwrap();
    let o = run(Command::new("systemd-analyze").arg("verify").arg(&bad));
    assert!(text(&o).contains("ProtectSistem"), "{}", text(&o));

    // Exposure score of the hardening, as systemd rates it (0 best, 10 worst).
    let o = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path));
    let out = text(&o);
    let score: f64 = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for sonde.service: ").nth(1))
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(score <= 4.0, "exposure {score} > 4.0:\n{out}");
}

/// Syscalls in `group` as systemd expands it (nested `@groups` resolved).
fn syscall_group(all: &str, group: &str, out: &mut BTreeSet<String>) {
    let mut in_group = false;
    let mut nested = Vec::new();
    for l in all.lines() {
        if l.starts_with('@') {
            in_group = l.split_whitespace().next() == Some(group);
        } else if in_group && l.starts_with("    ") {
            let name = l.split_whitespace().next().unwrap_or("");
            if name.starts_with('@') {
                nested.push(name.to_owned());
            } else if !name.starts_with('#') && !name.is_empty() {
                out.insert(name.to_owned());
            }
        }
    }
    for g in nested {
        syscall_group(all, &g, out);
    }
}

#[test]
fn systemd_syscall_filter_allows_every_syscall_the_agent_makes() {
    let _x = sonde_tests::exclusive();
    let unit = std::fs::read_to_string(root().join("deploy/systemd/sonde.service")).unwrap();
    let filter = unit
        .lines()
        .find_map(|l| l.strip_prefix("SystemCallFilter="))
        .expect("the unit has a SystemCallFilter");
    let o = run(Command::new("systemd-analyze").args(["syscall-filter", "--no-pager"]));
    let groups = text(&o);
    let mut allowed = BTreeSet::new();
    for item in filter.split_whitespace() {
        if item.starts_with('@') {
            syscall_group(&groups, item, &mut allowed);
        } else {
            allowed.insert(item.to_owned());
        }
    }
    assert!(
        allowed.contains("openat") && allowed.contains("mount"),
        "{allowed:?}"
    );

    // Trace the agent through start-up, API use, an exec and shutdown.
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("strace.txt");
    let wrapper: Vec<String> = ["strace", "-f", "-qq", "-o"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([trace.display().to_string(), "--".to_owned()])
        .collect();
    let mut a = Agent::spawn_wrapped("", &[], &wrapper);
    a.wait_ready(Duration::from_secs(60));
    let _: sonde_wire::status::Status = a.api("/api/v1/status");
    let _ = a.metrics();
    run(&mut Command::new("/bin/true"));
    // The child is strace; stop the agent it runs, and strace follows.
    let strace_pid = a.pid();
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children")).unwrap();
    let agent_pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill(2) with a valid signal on the agent we started.
    unsafe { libc::kill(agent_pid, libc::SIGTERM) };
    a.stop();
    let log = std::fs::read_to_string(&trace).unwrap();
    let used: BTreeSet<String> = log
        .lines()
        .filter_map(|l| {
            let call = l.split_once(' ')?.1.trim_start();
            let name = call.split_once('(')?.0;
            (!name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
            .then(|| name.to_owned())
        })
        .collect();
    assert!(
        used.contains("bpf") && used.contains("perf_event_open"),
        "{used:?}"
    );
    let denied: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        denied.is_empty(),
        "the unit's SystemCallFilter would deny {denied:?} (agent used {} syscalls)",
        used.len()
    );
}
