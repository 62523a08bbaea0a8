//! Python-aware memory profiling end to end: `sonde alloc` on real CPython
//! interpreters (pyenv 3.11/3.12, Debian's static python3.11) attributes
//! bytes to Python lines the way tracemalloc does, and the memory
//! collector's page-fault stacks carry Python frames.
//!
//! The tracemalloc comparison runs two identical processes of one script:
//! one traced by `sonde alloc`, the other running tracemalloc itself (so
//! neither tool's own allocations land in the other's figure). Both wait
//! for a start file created once the session records, leak the same
//! `N` × `bytearray(4096)` from `leak_here()` (plus churn elsewhere that is
//! freed at once), then report: tracemalloc's figure is the size of its
//! traces on the leak line; sonde's is the bytes in use of the rows whose
//! youngest Python frame is that line.

use std::{path::Path, process::Command, time::Duration};

use sonde_tests::{Agent, exclusive, metric_value, wait_for, workload::Workload};
use sonde_wire::alloc::{AllocReport, SessionInfo};

const LEAKS: usize = 3000;

const LEAK: &str = "\
import os
import sys
import time

mode, go, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == \"tracemalloc\":
    import tracemalloc

    tracemalloc.start()

keep = []


def leak_here():
    keep.append(bytearray(4096))  # LEAK


def churn():
    tmp = [str(i) * 3 for i in range(20)]
    return len(tmp)


while not os.path.exists(go):
    time.sleep(0.01)
for i in range(n):
    leak_here()
    churn()
line = int(sys.argv[5])
size = 0
if mode == \"tracemalloc\":
    snap = tracemalloc.take_snapshot()
    for s in snap.statistics(\"lineno\"):
        f = s.traceback[0]
        if f.filename == __file__ and f.lineno == line:
            size += s.size
with open(out + \".tmp\", \"w\") as f:
    f.write(str(size))
os.rename(out + \".tmp\", out)
while True:
    time.sleep(1)
";

/// Faults from Python: a fresh anonymous mapping per iteration, touched
/// page by page from Python code (first touches fault; a bytearray would
/// come from the heap once glibc raised its mmap threshold, and stop
/// faulting).
const FAULTS: &str = "\
import mmap


def touch_pages():
    m = mmap.mmap(-1, 1 << 22)
    for i in range(0, len(m), 4096):
        m[i] = 1
    m.close()


def fault_loop():
    while True:
        touch_pages()


fault_loop()
";

fn line_of(src: &str, marker: &str) -> u32 {
    src.lines()
        .position(|l| l.contains(marker))
        .expect("marker") as u32
        + 1
}

/// The interpreter binary of pyenv's `version` (e.g. `3.12.1`).
fn pyenv(version: &str) -> std::path::PathBuf {
    let out = Command::new("pyenv")
        .args(["prefix", version])
        .output()
        .expect("pyenv runs");
    assert!(out.status.success(), "pyenv prefix {version}");
    let prefix = String::from_utf8(out.stdout).expect("utf-8");
    let minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    std::path::PathBuf::from(prefix.trim()).join(format!("bin/python{minor}"))
}

/// `qualname (file:LINE)` → (qualname, file, line) for Python frames.
fn py_frame(f: &str) -> Option<(&str, &str, u32)> {
    let (name, rest) = f.rsplit_once(" (")?;
    let (file, line) = rest.strip_suffix(')')?.rsplit_once(':')?;
    file.ends_with(".py")
        .then(|| line.parse().ok().map(|l| (name, file, l)))
        .flatten()
}

/// In-use and allocated bytes of the rows whose youngest Python frame is
/// `func (file:line)`.
fn attributed(r: &AllocReport, func: &str, file: &str, line: u32) -> (u64, u64) {
    r.stacks
        .iter()
        .filter(|s| s.frames.iter().find_map(|f| py_frame(f)) == Some((func, file, line)))
        .fold((0, 0), |(u, a), s| (u + s.in_use_bytes, a + s.alloc_bytes))
}

fn read_figure(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// One interpreter: sonde's bytes in use on the leak line against
/// tracemalloc's; returns (sonde, tracemalloc).
fn compare(agent: &Agent, python: &Path) -> (u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("leak.py");
    std::fs::write(&script, LEAK).expect("write script");
    let line = line_of(LEAK, "# LEAK");
    let go = dir.path().join("go");
    let spawn = |mode: &str| {
        let out = dir.path().join(format!("{mode}.out"));
        let wl = Workload::spawn(Command::new(python).arg(&script).args([
            mode,
            go.to_str().unwrap(),
            out.to_str().unwrap(),
            &LEAKS.to_string(),
            &line.to_string(),
        ]));
        (wl, out)
    };
    let (traced, traced_out) = spawn("plain");
    let (peer, peer_out) = spawn("tracemalloc");
    // Past the interpreter's start-up (sonde detects it from memory).
    std::thread::sleep(Duration::from_millis(700));
    let pid = traced.pid().to_string();
    let report = std::thread::scope(|s| {
        let session =
            s.spawn(|| agent.cli(&["alloc", "--pid", &pid, "-f", "json", "--duration", "25s"]));
        // Until it records (or fails: then its output says why).
        wait_for(Duration::from_secs(20), "session tracking", || {
            let list: Vec<SessionInfo> = agent.api("/api/v1/alloc/sessions");
            (session.is_finished()
                || list
                    .iter()
                    .any(|x| x.pid == traced.pid() && x.state == "tracking"))
            .then_some(())
        });
        std::fs::write(&go, "").expect("go file");
        let out = session.join().expect("session thread");
        assert!(
            out.status.success(),
            "sonde alloc failed: {}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            agent.log()
        );
        serde_json::from_slice::<AllocReport>(&out.stdout).expect("alloc JSON")
    });
    assert!(
        read_figure(&traced_out).is_some(),
        "the traced process did not finish its leak within the session: {:?}",
        report.counters
    );
    let tm = wait_for(Duration::from_secs(60), "tracemalloc figure", || {
        read_figure(&peer_out)
    });
    drop((traced, peer));
    let (in_use, alloc) = attributed(&report, "leak_here", "leak.py", line);
    println!(
        "{}: sonde alloc in use {in_use} B (allocated {alloc} B) on leak.py:{line}, \
         tracemalloc {tm} B, ratio {:.4}; counters {:?}",
        python.display(),
        in_use as f64 / tm as f64,
        report.counters
    );
    let python_probes: Vec<_> = report
        .probes
        .iter()
        .filter(|p| p.function.starts_with("Py") || p.function.starts_with("_Py"))
        .collect();
    assert!(
        !python_probes.is_empty() && python_probes.iter().all(|p| p.emulated),
        "CPython's allocator is probed where the kernel emulates: {:?}",
        report.probes
    );
    (in_use, tm)
}

#[test]
fn alloc_attributes_python_lines_like_tracemalloc() {
    let _x = exclusive();
    let agent = Agent::start("");
    let mut bad = Vec::new();
    for python in [
        pyenv("3.11.7"),
        pyenv("3.12.1"),
        std::path::PathBuf::from("/usr/bin/python3.11"),
    ] {
        let (sonde, tm) = compare(&agent, &python);
        // 3000 × (4096 + 1 + the object and its list slot) at least.
        assert!(tm >= LEAKS as u64 * 4097, "tracemalloc saw {tm} B");
        let err = (sonde as f64 - tm as f64).abs() / tm as f64;
        if err > 0.10 {
            bad.push(format!(
                "{}: sonde {sonde} B vs tracemalloc {tm} B ({:.1} %)",
                python.display(),
                err * 100.0
            ));
        }
    }
    assert!(bad.is_empty(), "beyond ±10 %:\n{}", bad.join("\n"));
}

/// Polls `sonde memory` until `pid`'s RSS stacks show the fault loop's
/// Python frames; returns the folded stacks.
fn fault_stacks_with_python(agent: &Agent, pid: u32) -> String {
    let pid = pid.to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = agent.cli(&["memory", "--pid", &pid, "--kind", "rss", "-f", "folded"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let found = text
            .lines()
            .any(|l| l.contains("touch_pages (faults.py:") && l.contains("fault_loop (faults.py:"));
        if found {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Python frames in the fault stacks after 30 s:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn page_fault_stacks_of_a_python_process_show_python_frames() {
    let _x = exclusive();
    let agent = Agent::start("[collectors.memory]\nenabled = true\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("faults.py");
    std::fs::write(&script, FAULTS).expect("write script");
    let wl = Workload::spawn(Command::new(pyenv("3.12.1")).arg(&script));
    let folded = fault_stacks_with_python(&agent, wl.pid());
    println!("{folded}");
    let m = agent.metrics();
    assert!(
        metric_value(&m, "sonde_memory_python_walks_total").unwrap_or(0.0) > 0.0,
        "the kernel walked Python stacks: {m}"
    );
}

/// A shell that the collector saw (not Python) and that then execs Python
/// (an entrypoint wrapper): detected afresh when its comm changes.
#[test]
fn a_shell_that_execs_python_gets_python_frames_in_fault_stacks() {
    let _x = exclusive();
    let agent = Agent::start("[collectors.memory]\nenabled = true\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("faults.py");
    std::fs::write(&script, FAULTS).expect("write script");
    let ready = dir.path().join("ready");
    let wl = Workload::spawn(Command::new("sh").arg("-c").arg(format!(
        "while [ ! -e {} ]; do sleep 0.1; done; exec {} {}",
        ready.display(),
        pyenv("3.12.1").display(),
        script.display()
    )));
    let pid = wl.pid().to_string();
    // The shell's own rows, drained (each CLI call drains): not Python.
    wait_for(Duration::from_secs(20), "the shell's rows", || {
        let out = agent.cli(&["memory", "--pid", &pid, "--kind", "mapped", "-f", "folded"]);
        (!String::from_utf8_lossy(&out.stdout).trim().is_empty()).then_some(())
    });
    std::fs::write(&ready, "").expect("ready file");
    let folded = fault_stacks_with_python(&agent, wl.pid());
    println!("{folded}");
}
