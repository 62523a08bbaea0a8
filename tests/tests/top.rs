//! `sonde top` end to end: a real agent tracing a getppid loop; the
//! one-shot JSON frame must show that loop with a rate that agrees with
//! the loop's own measurement.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use sonde_tests::{
    Agent, exclusive, text, wait_child_or_kill, wait_until,
    workload::{build_c, copy_exe},
};
use sonde_wire::{syscalls::Report, top::SyscallsFrame};

const CONFIG: &str = "[collectors.syscalls]\nenabled = true\ninterval = \"1s\"\n\
                      [collectors.profile]\nenabled = false\n\
                      [collectors.http]\nenabled = false\n";

#[test]
fn top_once_json_shows_a_getppid_loop_at_its_rate() {
    let _x = exclusive();
    let agent = Agent::start(CONFIG);
    let bin = agent.dir.path().join("sonde_top_loop");
    copy_exe(&build_c("getppid_loop", &["-O2"]), &bin);
    // About 6-20 s of getppid calls: longer than the warm-up, the 1 s
    // sample and the table's sample below on a loaded 2-core machine.
    let calls = 16_000_000u64;
    let mut child = Command::new(&bin)
        .arg(calls.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn getppid_loop");
    let pid = child.id();
    let started = Instant::now();
    // Warm-up: the agent has counted the loop's first calls.
    wait_until(Duration::from_secs(15), "the loop's calls in sonde", || {
        let r: Report = agent.api(&format!("/api/v1/syscalls?pid={pid}"));
        if r.row("getppid").is_some_and(|x| x.calls > 0) {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    let out = agent.cli(&["top", "--once", "-d", "1", "-o", "json"]);
    let out_text = text(&out);
    assert!(out.status.success(), "sonde top failed: {out_text}");
    let frame: SyscallsFrame = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("sonde top -o json: {e}: {out_text}"));

    // The table form, sampled while the loop still runs: the loop's row
    // with its name and busiest syscall, at a non-zero rate.
    let out = agent.cli(&["top", "--once", "-d", "0.3", "--pid", &pid.to_string()]);
    let sampled = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    let still_running = child.try_wait().expect("try_wait").is_none();
    assert!(t.contains("sonde top - syscalls"), "{t}");
    let table_row: Vec<&str> = t
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&pid.to_string().as_str()))
        .unwrap_or_else(|| panic!("no row for pid {pid} (loop running: {still_running}):\n{t}"));
    assert_eq!(table_row.get(1), Some(&"sonde_top_loop"), "{t}");
    assert_eq!(table_row.get(6), Some(&"getppid"), "{t}");
    let calls_per_s = table_row.get(3).copied().unwrap_or_default();
    assert!(
        !["0.0", ""].contains(&calls_per_s),
        "calls/s {calls_per_s} for a running loop:\n{t}"
    );
    let shown = table_row.get(7).copied().unwrap_or_default();
    assert!(
        ["(100%)", "(99%)"].contains(&shown),
        "getppid share {shown}:\n{t}"
    );

    let done = wait_child_or_kill(&mut child, Duration::from_secs(120), "getppid_loop");
    assert!(done.success());
    let mut report = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut report)
        .expect("loop output");
    // "wall ns/call: X": the loop's own average rate.
    let wall_ns: f64 = report
        .lines()
        .find_map(|l| l.strip_prefix("wall ns/call: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no wall ns/call in {report}"));
    let loop_rate = 1e9 / wall_ns;
    let loop_secs = wall_ns * calls as f64 / 1e9;
    assert!(
        loop_secs > sampled.as_secs_f64(),
        "the loop ({loop_secs:.1}s) ended before the sample ({sampled:?}): rate not comparable"
    );

    assert_eq!(frame.view, "syscalls", "{frame:#?}");
    let secs = frame.interval_seconds;
    assert!((0.9..=1.6).contains(&secs), "interval {secs}: {frame:#?}");
    let rows = &frame.processes;
    let row = rows
        .iter()
        .find(|r| r.pid == pid)
        .unwrap_or_else(|| panic!("pid {pid} missing from sonde top: {frame:#?}"));
    assert_eq!(row.comm, "sonde_top_loop", "{row:?}");
    assert_eq!(row.top_syscall, "getppid", "{row:?}");
    assert_eq!(row.errors_per_second, 0.0, "{row:?}");
    let rate = row.calls_per_second;
    // The shared machine makes the loop's speed vary over its run: the
    // 1 s sample must agree with its whole-run average within a factor 2.
    assert!(
        rate > loop_rate / 2.0 && rate < loop_rate * 2.0,
        "sonde top says {rate:.0} calls/s, the loop averaged {loop_rate:.0}/s: {row:?}"
    );
    let top_rate = row.top_syscall_calls_per_second;
    assert!(top_rate >= 0.99 * rate, "{row:?}");
    // Time in syscalls per second: positive and at most one thread's worth.
    let busy = row.syscall_seconds_per_second;
    assert!(busy > 0.0 && busy <= 1.05, "{row:?}");
    // Rows are sorted by calls/s, highest first.
    let rates: Vec<f64> = rows.iter().map(|r| r.calls_per_second).collect();
    assert!(rates.windows(2).all(|w| w[0] >= w[1]), "{rates:?}");
}

#[test]
fn top_rejects_bad_input_with_exit_2() {
    let agent = Agent::start(CONFIG);
    for args in [
        &["top", "--once", "-d", "0"][..],
        &["top", "--once", "--view", "nope"],
        &["top", "-n", "0"],
    ] {
        let out = agent.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    // The http view answers (the collector is off here): a runtime error,
    // exit 1, with the reason.
    let out = agent.cli(&["top", "--once", "--view", "http", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("http collector"), "{}", text(&out));
}
