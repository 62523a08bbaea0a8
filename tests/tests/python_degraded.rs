//! Python stacks when things go wrong, end to end: a target exiting in
//! the middle of a profile, code objects freed and their memory reused, a
//! Python process exec'ing a native binary, and an interpreter version the
//! profiler does not support. No crash, no wrong names, native frames
//! where Python ones cannot be had, and a counter for each degradation.

use std::{process::Command, time::Duration};

use sonde_tests::{
    Agent, exclusive, metric_value,
    python::{py_frame, pyenv, python3, script},
    stacks::{folded, settled},
    workload::{Workload, build_c},
};

/// How a Python frame whose code object could not be read is shown.
const UNKNOWN: &str = "[unknown python]";

/// outer → middle → hot spinning for `argv[1]` seconds, then exit.
const EXITING: &str = "\
import sys
import time


def hot(end):
    x = 0
    while time.monotonic() < end:
        x += 1


def middle(end):
    hot(end)


def outer(end):
    middle(end)


outer(time.monotonic() + float(sys.argv[1]))
";

/// True when the Python frames of `stack` (root first) end with
/// outer → middle → hot of `file`.
fn ends_with_chain(stack: &[String], file: &str) -> bool {
    let py: Vec<(&str, &str, u32)> = stack.iter().filter_map(|f| py_frame(f)).collect();
    py.len() >= 3
        && py[py.len() - 3..].iter().map(|p| (p.0, p.1)).eq([
            ("outer", file),
            ("middle", file),
            ("hot", file),
        ])
}

#[test]
fn a_target_exiting_mid_window_keeps_its_stacks_and_the_agent() {
    let _x = exclusive();
    let agent = Agent::start("");
    let src = script(agent.dir.path(), "exiting.py", EXITING);
    // Reaped as soon as it exits, as a shell or systemd would: a zombie
    // would keep its /proc entry and hide the exit from the agent.
    let child = Command::new(python3())
        .arg(&src)
        .arg("6")
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let reaper = std::thread::spawn(move || {
        let mut child = child;
        child.wait().expect("wait")
    });
    std::thread::sleep(Duration::from_secs(3));
    // The process exits about 3 s into this 6 s window; the samples of its
    // last seconds are drained after it is gone.
    let stacks = folded(&agent, pid, "6s");
    let status = reaper.join().expect("reaper");
    assert!(status.success(), "the target failed: {status}");
    let total: u64 = stacks.iter().map(|s| s.1).sum();
    let chain: u64 = stacks
        .iter()
        .filter(|(s, _)| ends_with_chain(s, "exiting.py"))
        .map(|s| s.1)
        .sum();
    eprintln!("exiting target: chain in {chain} of {total} samples");
    assert!(total >= 10, "too few samples ({total}): {stacks:#?}");
    assert!(
        chain * 100 >= total * 90,
        "outer -> middle -> hot in {chain} of {total} samples: {stacks:#?}"
    );
    // The retained window keeps the exited process's stacks, named.
    std::thread::sleep(Duration::from_secs(3));
    let out = agent.cli(&[
        "profile",
        "--pid",
        &pid.to_string(),
        "--last",
        "--format",
        "folded",
    ]);
    assert!(
        out.status.success(),
        "profile of the exited pid's window: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = sonde_tests::stacks::parse_folded(&String::from_utf8_lossy(&out.stdout));
    assert!(
        last.iter().any(|(s, _)| ends_with_chain(s, "exiting.py")),
        "the exited process's stacks are gone from the window: {last:#?}"
    );
    assert!(
        agent.metrics().contains("sonde_profile_python_walks_total"),
        "the agent stopped serving metrics:\n{}",
        agent.log()
    );
}

/// Functions compiled one after another, each named after its generation
/// and otherwise identical (same first line, arguments and flags), each
/// spinning a few ms. Those of the last 4 s stay alive (longer than a
/// drain, so the agent can read them); nothing else holds them (no
/// reference cycle through their globals), so each freed code object's
/// memory goes to one compiled later, of another name. `argv[1]` gets the
/// current generation every 100.
const GENERATIONS: &str = "\
import collections
import os
import sys
import time

SRC = 'def gen_{}():\\n    x = 0\\n    for i in range(25_000):\\n        x += i\\n'
alive = collections.deque()
scope = {}
i = 0
while True:
    exec(compile(SRC.format(i), 'gen.py', 'exec'), scope)
    f = scope.pop('gen_%d' % i)
    f()
    now = time.monotonic()
    alive.append((now, f))
    while alive[0][0] < now - 4:
        alive.popleft()
    if i % 100 == 0:
        with open(sys.argv[1] + '.tmp', 'w') as out:
            out.write(str(i))
        os.replace(sys.argv[1] + '.tmp', sys.argv[1])
    i += 1
";

fn generation(path: &std::path::Path) -> u64 {
    sonde_tests::wait_for(Duration::from_secs(10), "the generation file", || {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    })
}

#[test]
fn reused_code_objects_never_show_stale_names() {
    let _x = exclusive();
    let agent = Agent::start("[collectors.profile]\nfrequency_hz = 99\n");
    let src = script(agent.dir.path(), "gen.py", GENERATIONS);
    let symbolize = |m: &str| {
        metric_value(m, "sonde_profile_python_errors_total{reason=\"symbolize\"}").unwrap_or(0.0)
    };
    for v in ["3.10.13", "3.11.7", "3.12.1", "3.13.0"] {
        let progress = agent.dir.path().join(format!("gen-{v}"));
        let wl = Workload::spawn(Command::new(pyenv(v)).arg(&src).arg(&progress));
        // Twice the 4 s lifetime: memory is being reused, and the agent
        // has cached names of earlier occupants.
        generation(&progress);
        std::thread::sleep(Duration::from_secs(10));
        let before = generation(&progress);
        let errors_before = symbolize(&agent.metrics());
        let stacks = folded(&agent, wl.pid(), "6s");
        let after = generation(&progress);
        let errors = symbolize(&agent.metrics()) - errors_before;
        drop(wl);
        // Generations that ran in the window (the file lags by up to 100).
        let window = before..=after + 100;
        let (mut named, mut unknown, mut stale, mut total) = (0, 0, Vec::new(), 0);
        for (s, n) in &stacks {
            total += n;
            let leaf = s
                .iter()
                .rev()
                .find(|f| py_frame(f).is_some_and(|p| p.1 == "gen.py") || f.starts_with(UNKNOWN));
            let Some(leaf) = leaf else { continue };
            let Some((name, _, _)) = py_frame(leaf) else {
                unknown += n;
                continue;
            };
            // `<module>`: the exec'd module defining the function.
            match name
                .strip_prefix("gen_")
                .and_then(|g| g.parse::<u64>().ok())
            {
                Some(g) if window.contains(&g) => named += n,
                None if name == "<module>" => named += n,
                _ => stale.push((name.to_owned(), *n)),
            }
        }
        eprintln!(
            "{v}: generations {before}..{after}: {named} samples named right, {unknown} \
             [unknown python] ({errors} symbolize errors counted), stale {stale:?}, of {total}"
        );
        let with_unknown = stacks
            .iter()
            .filter(|(s, _)| s.iter().any(|f| f.starts_with(UNKNOWN)));
        for (s, n) in with_unknown.take(3) {
            eprintln!("  {n}: {}", s.join(";"));
        }
        assert!(
            stale.is_empty(),
            "{v}: names of generations outside {window:?} (stale cache entries): {stale:?}"
        );
        assert!(
            unknown as f64 <= errors,
            "{v}: {unknown} [unknown python] frames but {errors} symbolize errors counted"
        );
        assert!(
            total >= 30 && named * 100 >= total * 50,
            "{v}: gen_N named right in {named} of {total} samples: {stacks:#?}"
        );
    }
}

/// outer → middle → hot until the file `argv[1]` exists, then exec into
/// the native `argv[2:]`.
const EXECS: &str = "\
import os
import sys


def hot():
    x = 0
    while not os.path.exists(sys.argv[1]):
        for _ in range(10_000):
            x += 1


def middle():
    hot()


def outer():
    middle()


outer()
os.execv(sys.argv[2], sys.argv[2:])
";

#[test]
fn a_python_process_exec_ing_a_native_binary_gets_native_stacks() {
    let _x = exclusive();
    let bin = build_c("profile_abc", &["-O1", "-g", "-fno-omit-frame-pointer"]);
    let agent = Agent::start("");
    let src = script(agent.dir.path(), "execs.py", EXECS);
    let go = agent.dir.path().join("exec-now");
    let wl = Workload::spawn(
        Command::new(python3())
            .arg(&src)
            .arg(&go)
            .arg(&bin)
            .args(["cpu", "60"]),
    );
    std::thread::sleep(Duration::from_secs(4));
    let before = folded(&agent, wl.pid(), "3s");
    let total: u64 = before.iter().map(|s| s.1).sum();
    let chain: u64 = before
        .iter()
        .filter(|(s, _)| ends_with_chain(s, "execs.py"))
        .map(|s| s.1)
        .sum();
    assert!(
        total >= 10 && chain * 100 >= total * 90,
        "before the exec: outer -> middle -> hot in {chain} of {total}: {before:#?}"
    );
    std::fs::write(&go, b"").expect("signal the exec");
    // The exec is announced by the first sample with the new comm and
    // handled at the next drain (2 s).
    std::thread::sleep(Duration::from_secs(4));
    let after = folded(&agent, wl.pid(), "4s");
    let total: u64 = after.iter().map(|s| s.1).sum();
    let abc: u64 = after
        .iter()
        .filter(|(f, _)| f.join(";").contains("sonde_wl_a;sonde_wl_b;sonde_wl_c"))
        .map(|s| s.1)
        .sum();
    assert!(
        total >= 10,
        "too few samples after the exec ({total}): {after:#?}"
    );
    assert!(
        after.iter().all(|(s, _)| s
            .iter()
            .all(|f| py_frame(f).is_none() && !f.starts_with(UNKNOWN))),
        "Python frames after the exec into a native binary: {after:#?}"
    );
    assert!(
        abc * 100 >= total * 80,
        "a;b;c in {abc} of {total} after the exec: {after:#?}"
    );
}

/// A CPython the profiler has no layout for (3.9) is counted with its
/// reason and profiled as native code, eval loop and all.
#[test]
fn an_unsupported_python_falls_back_to_native_frames() {
    let _x = exclusive();
    let agent = Agent::start("");
    let src = script(
        agent.dir.path(),
        "old.py",
        "def hot():\n    x = 0\n    while True:\n        x += 1\n\n\nhot()\n",
    );
    let wl = Workload::spawn(Command::new(pyenv("3.9.18")).arg(&src));
    // Until the interpreter's unwind tables are built (seconds on a busy
    // machine), its stacks end at the first frame without a frame pointer.
    let stacks = settled(&agent, wl.pid(), "4s", |s| {
        s.iter().any(|f| f == "Py_BytesMain")
    });
    let m = agent.metrics();
    let total: u64 = stacks.iter().map(|s| s.1).sum();
    let eval: u64 = stacks
        .iter()
        .filter(|(s, _)| s.iter().any(|f| f.starts_with("_PyEval_EvalFrameDefault")))
        .map(|s| s.1)
        .sum();
    assert!(total >= 10, "too few samples ({total}): {stacks:#?}");
    assert!(
        stacks
            .iter()
            .all(|(s, _)| s.iter().all(|f| py_frame(f).is_none())),
        "Python frames for an unsupported version: {stacks:#?}"
    );
    assert!(
        eval * 100 >= total * 90,
        "the eval loop in {eval} of {total} samples: {stacks:#?}"
    );
    assert!(
        metric_value(
            &m,
            "sonde_profile_python_processes{status=\"unsupported_version\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "3.9 not counted as unsupported_version:\n{m}"
    );
}
