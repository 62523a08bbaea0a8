//! Off-CPU profiles end to end: the profile object's sched_switch program
//! on a real workload that blocks in a known function, served through
//! `sonde profile --off-cpu`.
//!
//! One test at a time: each agent profiles (and builds unwind tables for)
//! every process of the host, the other tests' agents included.

use std::{
    io::Read as _,
    process::Command,
    time::{Duration, Instant},
};

use sonde_tests::{
    Agent, exclusive, metric_value,
    stacks::{folded_of, parse_folded},
    workload::{Workload, build_c},
};

/// Stacks taken per CPU per second: high, so that the rest of a busy test
/// machine does not push the workload's blocks past the cap.
const CONFIG: &str = "[collectors.profile]\noff_cpu = true\noff_cpu_max_rate = 100000\n";

/// `sonde profile --pid PID --off-cpu --duration D --format folded`,
/// parsed (nanoseconds blocked per stack).
fn offcpu_folded(agent: &Agent, pid: &str, duration: &str) -> Vec<(Vec<String>, u64)> {
    folded_of(
        agent,
        &[
            "profile",
            "--pid",
            pid,
            "--off-cpu",
            "--duration",
            duration,
            "--format",
            "folded",
        ],
    )
}

/// Time `pid`'s threads ran on a CPU, in ns (/proc/PID/schedstat).
fn cpu_ns(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).expect("schedstat");
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat run time")
}

/// Waits (with a deadline) until the agent has announced `pid` and loaded
/// its unwind tables: before that its stacks are walked with frame
/// pointers, which lose `sonde_wl_block` behind libc's nanosleep. A fixed
/// sleep was not enough with the rest of the suite's load (it failed in a
/// whole-suite run of 2026-12-07, 2 s after the workload started).
fn wait_for_unwound_stacks(agent: &Agent, pid: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let probe = agent.cli(&[
            "profile",
            "--pid",
            pid,
            "--off-cpu",
            "--duration",
            "1s",
            "--format",
            "folded",
        ]);
        let text = String::from_utf8_lossy(&probe.stdout);
        if probe.status.success() && text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no DWARF-unwound off-CPU stack with {needle:?} after 60 s; last profile:\n{text}\nagent log:\n{}",
            agent.log()
        );
    }
}

#[test]
fn blocked_time_goes_to_the_blocking_stack_and_adds_up_to_wall_minus_cpu() {
    let _x = exclusive();
    let agent = Agent::start(CONFIG);
    let bin = build_c("offcpu_wait", &["-O1", "-g", "-fno-omit-frame-pointer"]);
    // 2 ms of CPU, then 8 ms in nanosleep: ~80 % of wall time off CPU.
    let wl = Workload::spawn(Command::new(&bin).args(["sleep", "60", "2000", "8000"]));
    let pid = wl.pid().to_string();
    wait_for_unwound_stacks(&agent, &pid, "main;sonde_wl_block");
    let (cpu0, t0) = (cpu_ns(wl.pid()), Instant::now());
    let stacks = offcpu_folded(&agent, &pid, "6s");
    let (cpu1, wall) = (cpu_ns(wl.pid()), t0.elapsed());
    let total: u64 = stacks.iter().map(|s| s.1).sum();
    let blocking: u64 = stacks
        .iter()
        .filter(|(f, _)| {
            let s = f.join(";");
            s.contains("main;sonde_wl_block") && s.contains("nanosleep")
        })
        .map(|s| s.1)
        .sum();
    assert!(total > 0, "no off-CPU time at all: {stacks:?}");
    assert!(
        blocking * 100 >= total * 80,
        "sonde_wl_block -> nanosleep has {blocking} of {total} ns (< 80 %): {stacks:?}"
    );
    assert!(
        stacks
            .iter()
            .all(|(f, _)| !f.iter().any(|x| x.contains("bpf_prog_"))),
        "the program's own frames are trimmed: {stacks:?}"
    );
    // The profile spans flip to flip inside the CLI call, so the window
    // measured around the call is a little longer; the difference is the
    // CLI's start-up and the two flushes (tens of ms against ~4.8 s).
    let expected = wall.as_nanos() as f64 - (cpu1 - cpu0) as f64;
    let ratio = total as f64 / expected;
    eprintln!(
        "off-CPU total {:.3}s, wall {:.3}s - CPU {:.3}s = {:.3}s, ratio {ratio:.3}; blocking stack {:.1} %",
        total as f64 / 1e9,
        wall.as_secs_f64(),
        (cpu1 - cpu0) as f64 / 1e9,
        expected / 1e9,
        100.0 * blocking as f64 / total as f64
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "off-CPU total {total} ns is not within 10 % of wall - CPU = {expected:.0} ns: {stacks:?}"
    );
}

/// Off-CPU events of one kind so far, host-wide.
fn offcpu_events(agent: &Agent, event: &str) -> f64 {
    metric_value(
        &agent.metrics(),
        &format!("sonde_profile_offcpu_events_total{{event=\"{event}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Nanoseconds the burst workload says it spent in `sonde_wl_block`.
fn self_timed_ns(file: &std::path::Path) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(ns) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return ns;
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A thread that keeps blocking briefly has its stack taken on fewer and
/// fewer switch-outs (`thinned`); when it then blocks long, that block is
/// lost once (`thinned_long`) and the thread grows more patient, so the
/// long blocks that follow bursts of short ones are all in the profile:
/// the blocked time under the long block's stack matches what the
/// workload measured itself.
#[test]
fn thinning_short_blocks_keeps_the_long_ones_that_follow_them() {
    let _x = exclusive();
    let agent = Agent::start(CONFIG);
    let bin = build_c("offcpu_wait", &["-O1", "-g", "-fno-omit-frame-pointer"]);
    let file = agent.dir.path().join("burst_blocked_ns");
    // 300 brief sleeps (~60 us each), then 20 ms in sonde_wl_block.
    let wl = Workload::spawn(
        Command::new(&bin)
            .args(["burst", "60", "300", "20000"])
            .arg(&file),
    );
    let pid = wl.pid().to_string();
    // `burst` is inlined into main.
    wait_for_unwound_stacks(&agent, &pid, "main;burst_[i];sonde_wl_block");
    assert!(
        offcpu_events(&agent, "thinned") > 0.0,
        "no switch-out thinned after bursts of 300 short blocks:\n{}",
        agent.metrics()
    );
    let before = self_timed_ns(&file);
    let stacks = offcpu_folded(&agent, &pid, "5s");
    let after = self_timed_ns(&file);
    let long: u64 = stacks
        .iter()
        .filter(|(f, _)| f.join(";").contains("main;burst_[i];sonde_wl_block"))
        .map(|s| s.1)
        .sum();
    // The self-timed window spans the CLI call, a little more than the
    // profile's; a long block is ~20 ms of ~2.5 s.
    let ratio = long as f64 / (after - before);
    eprintln!(
        "burst: {:.3} s under sonde_wl_block, {:.3} s self-timed ({ratio:.3}); thinned {}, thinned_long {}",
        long as f64 / 1e9,
        (after - before) / 1e9,
        offcpu_events(&agent, "thinned"),
        offcpu_events(&agent, "thinned_long")
    );
    assert!(
        (0.85..=1.05).contains(&ratio),
        "long blocks under sonde_wl_block: {long} ns against {} ns self-timed: {stacks:?}",
        after - before
    );
}

#[test]
fn off_cpu_answers_in_every_format_and_refuses_lines() {
    let _x = exclusive();
    let agent = Agent::start(CONFIG);
    let bin = build_c("offcpu_wait", &["-O1", "-g", "-fno-omit-frame-pointer"]);
    let wl = Workload::spawn(Command::new(&bin).args(["sleep", "60"]));
    let pid = wl.pid().to_string();
    wait_for_unwound_stacks(&agent, &pid, "main;sonde_wl_block");
    let top = agent.cli(&["profile", "--pid", &pid, "--off-cpu", "-d", "2s"]);
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    assert!(
        text.contains("off CPU over")
            && text.contains("TOTAL_MS")
            && text.contains("sonde_wl_block"),
        "{text}"
    );
    let file = agent.dir.path().join("off.pb.gz");
    let pprof = agent.cli(&[
        "profile",
        "--pid",
        &pid,
        "--off-cpu",
        "--last",
        "-f",
        "pprof",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(
        pprof.status.success(),
        "{}",
        String::from_utf8_lossy(&pprof.stderr)
    );
    let gz = std::fs::read(&file).expect("pprof file");
    assert!(gz.len() > 20 && gz[..2] == [0x1f, 0x8b], "gzipped pprof");
    let svg = agent.cli(&["profile", "--pid", &pid, "--off-cpu", "--last", "-f", "svg"]);
    assert!(String::from_utf8_lossy(&svg.stdout).contains("<svg"));
    let lines = agent.cli(&[
        "profile",
        "--pid",
        &pid,
        "--off-cpu",
        "--last",
        "-f",
        "lines",
    ]);
    assert_eq!(lines.status.code(), Some(2), "a usage error");
    assert!(
        String::from_utf8_lossy(&lines.stderr).contains("--format lines is for CPU profiles"),
        "{}",
        String::from_utf8_lossy(&lines.stderr)
    );
}

/// `sched_switch` links of `agent` whose program is `profile_offcpu`, from
/// /proc/PID/fdinfo: a tp_btf program is attached as a raw-tracepoint link
/// (`link_type: raw_tracepoint`, `tp_name: sched_switch`), and bpftool
/// names its program.
fn offcpu_links(agent: &Agent) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fdinfo", agent.pid())) else {
        return 0;
    };
    let prog_ids: Vec<String> = fds
        .flatten()
        .filter_map(|fd| {
            let info = std::fs::read_to_string(fd.path()).ok()?;
            let field = |k: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                    .map(|v| v.trim().to_owned())
            };
            (field("link_type").as_deref() == Some("raw_tracepoint")
                && field("tp_name").as_deref() == Some("sched_switch"))
            .then(|| field("prog_id"))
            .flatten()
        })
        .collect();
    prog_ids
        .iter()
        .filter(|id| {
            let out = Command::new("bpftool")
                .args(["prog", "show", "id", id, "-j"])
                .output()
                .expect("bpftool");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["name"] == "profile_offcpu"
        })
        .count()
}

fn wait_links(agent: &Agent, n: usize, what: &str) {
    sonde_tests::wait_for(Duration::from_secs(5), what, || {
        (offcpu_links(agent) == n).then_some(())
    });
}

/// The default: the sched_switch hook is attached only while an off-CPU
/// request runs, and a client that goes away (Ctrl-C) detaches it at once.
#[test]
fn on_demand_the_hook_is_attached_only_while_a_request_runs() {
    let _x = exclusive();
    let agent = Agent::start("[collectors.profile]\noff_cpu_max_rate = 100000\n");
    let status: serde_json::Value = agent.api("/api/v1/status");
    assert!(
        status.to_string().contains("off-CPU on demand"),
        "status says: {status}"
    );
    assert_eq!(offcpu_links(&agent), 0, "attached before any request");

    let bin = build_c("offcpu_wait", &["-O1", "-g", "-fno-omit-frame-pointer"]);
    let wl = Workload::spawn(Command::new(&bin).args(["sleep", "60", "2000", "8000"]));
    let pid = wl.pid().to_string();
    // Each probe is a request of its own: attach, 1 s window, detach.
    wait_for_unwound_stacks(&agent, &pid, "main;sonde_wl_block");
    wait_links(&agent, 0, "the hook to be detached after the probes");

    let mut req = Command::new(sonde_tests::sonde_bin())
        .args([
            "profile",
            "--pid",
            &pid,
            "--off-cpu",
            "-d",
            "4s",
            "-f",
            "folded",
        ])
        .arg("--socket")
        .arg(&agent.socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sonde profile");
    let mut stdout = req.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    wait_links(&agent, 1, "the hook to be attached for the request");
    let st = sonde_tests::wait_child_or_kill(&mut req, Duration::from_secs(30), "sonde profile");
    let mut err = String::new();
    let _ = req.stderr.take().expect("stderr").read_to_string(&mut err);
    assert!(
        st.success(),
        "sonde profile --off-cpu failed ({st}): {err}\nagent log:\n{}",
        agent.log()
    );
    let stacks = parse_folded(&reader.join().expect("reader"));
    let total: u64 = stacks.iter().map(|s| s.1).sum();
    let blocking: u64 = stacks
        .iter()
        .filter(|(f, _)| f.join(";").contains("main;sonde_wl_block"))
        .map(|s| s.1)
        .sum();
    // ~80 % of the 4 s window blocked; the window only counts blocks that
    // began inside it, so a little less.
    assert!(
        blocking >= 2_000_000_000 && blocking * 100 >= total * 80,
        "sonde_wl_block has {blocking} of {total} ns: {stacks:?}"
    );
    wait_links(&agent, 0, "the hook to be detached after the request");

    // A client stopped with Ctrl-C mid-window releases the hook at once.
    let mut req = Command::new(sonde_tests::sonde_bin())
        .args(["profile", "--off-cpu", "-d", "60s"])
        .arg("--socket")
        .arg(&agent.socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sonde profile");
    wait_links(&agent, 1, "the hook to be attached for the long request");
    let st = Command::new("kill")
        .args(["-INT", &req.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let _ = req.wait();
    wait_links(
        &agent,
        0,
        "the hook to be detached after the client went away",
    );
    assert!(
        agent.log().contains("off-CPU hook detached"),
        "{}",
        agent.log()
    );
}
