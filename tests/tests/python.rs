//! Python frames in CPU profiles, end to end: real CPython interpreters
//! (pyenv 3.10-3.13 and Debian's python3.11) profiled through `sonde
//! profile`, their Python frames walked by the kernel and spliced into the
//! native stacks.

use std::{process::Command, time::Duration};

use sonde_tests::{
    Agent, exclusive, metric_value,
    python::{line_of, py_frame, pyenv, python3, require_modules, script},
    stacks::folded,
    workload::{Workload, build_c},
};

/// A pure-Python chain; `hot` spins on the marked line.
const CHAIN: &str = "\
def hot():
    x = 0
    while True:
        x += 1  # HOT


def middle():
    hot()


def outer():
    middle()


outer()
";

/// Two threads, each spinning under its own Python functions.
const THREADS: &str = "\
import threading


def spin_a():
    x = 0
    while True:
        x += 1


def spin_b():
    x = 0
    while True:
        x += 1


def thread_a():
    spin_a()


def thread_b():
    spin_b()


threading.Thread(target=thread_a, daemon=True).start()
thread_b()
";

/// True when `stack` (root first) holds outer → middle → hot of
/// `file` in that order, `hot` being the youngest Python frame and on a
/// line within one of `hot_line`.
fn has_chain(stack: &[String], file: &str, hot_line: u32) -> bool {
    let py: Vec<(&str, &str, u32)> = stack.iter().filter_map(|f| py_frame(f)).collect();
    let mut want = ["outer", "middle", "hot"].iter().peekable();
    for (name, f, _) in &py {
        if want.peek().is_some_and(|w| *w == name && *f == file) {
            want.next();
        }
    }
    want.peek().is_none()
        && py
            .last()
            .is_some_and(|(n, f, l)| *n == "hot" && *f == file && l.abs_diff(hot_line) <= 1)
}

fn check_chain(agent: &Agent, python: &std::path::Path, what: &str) {
    let src_file = script(agent.dir.path(), "chain.py", CHAIN);
    let wl = Workload::spawn(Command::new(python).arg(&src_file));
    // Detection retries while the interpreter starts (one drain, 2 s).
    std::thread::sleep(Duration::from_secs(5));
    let merge = |m: &str| {
        metric_value(m, "sonde_profile_python_errors_total{reason=\"merge\"}").unwrap_or(0.0)
    };
    let merge_before = merge(&agent.metrics());
    let stacks = folded(agent, wl.pid(), "5s");
    let merges = merge(&agent.metrics()) - merge_before;
    let total: u64 = stacks.iter().map(|s| s.1).sum();
    let hot = line_of(CHAIN, "# HOT");
    let chain: u64 = stacks
        .iter()
        .filter(|(f, _)| has_chain(f, "chain.py", hot))
        .map(|s| s.1)
        .sum();
    assert!(
        total >= 10,
        "{what}: too few samples ({total}): {stacks:#?}"
    );
    assert!(
        chain * 100 >= total * 90,
        "{what}: outer -> middle -> hot (chain.py:{hot}) in {chain} of {total} samples (< 90%): {stacks:#?}\nagent log:\n{}",
        agent.log()
    );
    let heaviest = stacks.iter().max_by_key(|s| s.1).expect("a stack");
    eprintln!(
        "{what}: chain in {chain} of {total} samples ({:.1}%), {merges} merge mismatches; \
         heaviest ({}): {}",
        100.0 * chain as f64 / total as f64,
        heaviest.1,
        heaviest.0.join(";")
    );
}

#[test]
fn pure_python_chain_on_every_supported_interpreter() {
    let _x = exclusive();
    let agent = Agent::start("");
    for v in ["3.10.13", "3.11.7", "3.12.1", "3.13.0"] {
        check_chain(&agent, &pyenv(v), &format!("pyenv {v}"));
    }
    check_chain(
        &agent,
        std::path::Path::new("/usr/bin/python3.11"),
        "Debian python3.11",
    );
    let m = agent.metrics();
    assert!(
        metric_value(&m, "sonde_profile_python_walks_total").is_some_and(|v| v > 0.0),
        "no walks counted:\n{m}"
    );
}

#[test]
fn a_python_process_started_before_the_agent() {
    let _x = exclusive();
    let dir = tempfile::tempdir().expect("tempdir");
    let src_file = script(dir.path(), "chain.py", CHAIN);
    let wl = Workload::spawn(Command::new(pyenv("3.12.1")).arg(&src_file));
    std::thread::sleep(Duration::from_secs(1));
    let agent = Agent::start("");
    std::thread::sleep(Duration::from_secs(3));
    let stacks = folded(&agent, wl.pid(), "5s");
    let total: u64 = stacks.iter().map(|s| s.1).sum();
    let hot = line_of(CHAIN, "# HOT");
    let chain: u64 = stacks
        .iter()
        .filter(|(f, _)| has_chain(f, "chain.py", hot))
        .map(|s| s.1)
        .sum();
    assert!(total >= 10, "too few samples ({total}): {stacks:#?}");
    assert!(
        chain * 100 >= total * 90,
        "chain in {chain} of {total} samples: {stacks:#?}"
    );

    // The line view of `hot`: its spinning lines hold nearly every sample.
    let p = wl.pid().to_string();
    let out = agent.cli(&[
        "profile",
        "--pid",
        &p,
        "--last",
        "--format",
        "lines",
        "--function",
        "hot",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    // (line, self samples) of hot's rows.
    let rows: Vec<(u32, u64)> = text
        .lines()
        .filter(|l| l.ends_with(" hot"))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let line = cols.get(4)?.rsplit_once(':')?.1.parse().ok()?;
            Some((line, cols.get(3)?.parse().ok()?))
        })
        .collect();
    let in_hot: u64 = rows.iter().map(|r| r.1).sum();
    let on_loop: u64 = rows
        .iter()
        .filter(|r| r.0.abs_diff(hot) <= 1)
        .map(|r| r.1)
        .sum();
    assert!(
        in_hot >= 10 && on_loop * 100 >= in_hot * 90,
        "hot's loop lines run in {on_loop} of {in_hot} samples in hot:\n{text}"
    );
}

#[test]
fn each_thread_shows_its_own_python_stack() {
    let _x = exclusive();
    let agent = Agent::start("");
    let src_file = script(agent.dir.path(), "threads.py", THREADS);
    let wl = Workload::spawn(Command::new(pyenv("3.11.7")).arg(&src_file));
    std::thread::sleep(Duration::from_secs(5));
    let stacks = folded(&agent, wl.pid(), "5s");
    let names = |s: &[String]| -> Vec<String> {
        s.iter()
            .filter_map(|f| py_frame(f).map(|p| p.0.to_owned()))
            .collect()
    };
    let (mut a, mut b, mut mixed, mut total) = (0, 0, 0, 0);
    for (s, n) in &stacks {
        total += n;
        let py = names(s);
        let has = |x: &str| py.iter().any(|p| p == x);
        match (
            has("thread_a") || has("spin_a"),
            has("thread_b") || has("spin_b"),
        ) {
            (true, true) => mixed += n,
            (true, false) if has("thread_a") && py.last().is_some_and(|l| l == "spin_a") => a += n,
            (false, true) if has("thread_b") && py.last().is_some_and(|l| l == "spin_b") => b += n,
            _ => {}
        }
    }
    assert_eq!(mixed, 0, "a stack mixes both threads: {stacks:#?}");
    assert!(
        a >= 5 && b >= 5 && (a + b) * 100 >= total * 90,
        "thread_a/spin_a {a}, thread_b/spin_b {b} of {total}: {stacks:#?}"
    );
}

#[test]
fn a_non_python_process_gets_no_python_walk() {
    let _x = exclusive();
    let bin = build_c("profile_abc", &["-O1", "-g", "-fno-omit-frame-pointer"]);
    let agent = Agent::start("");
    // Other processes of the machine are sampled too: a Python one of
    // them would be walked. Retry a window in which none was.
    for attempt in 0..3 {
        let wl = Workload::spawn(Command::new(&bin).args(["cpu", "20"]));
        std::thread::sleep(Duration::from_secs(2));
        let m = agent.metrics();
        let walks = |m: &str| metric_value(m, "sonde_profile_python_walks_total").unwrap_or(0.0);
        let walked = |m: &str| {
            metric_value(m, "sonde_profile_python_processes{status=\"walked\"}").unwrap_or(0.0)
        };
        let before = walks(&m);
        let stacks = folded(&agent, wl.pid(), "4s");
        let m2 = agent.metrics();
        let total: u64 = stacks.iter().map(|s| s.1).sum();
        let chain: u64 = stacks
            .iter()
            .filter(|(f, _)| f.join(";").contains("sonde_wl_a;sonde_wl_b;sonde_wl_c"))
            .map(|s| s.1)
            .sum();
        assert!(total >= 10, "too few samples ({total}): {stacks:#?}");
        assert!(
            chain * 100 >= total * 80,
            "a;b;c in {chain} of {total}: {stacks:#?}"
        );
        assert!(
            stacks
                .iter()
                .all(|(s, _)| s.iter().all(|f| py_frame(f).is_none())),
            "Python frames in a C process: {stacks:#?}"
        );
        if walked(&m) == 0.0 && walked(&m2) == 0.0 {
            assert_eq!(
                walks(&m2),
                before,
                "the kernel walked Python stacks while no CPython process was marked"
            );
            return;
        }
        eprintln!("attempt {attempt}: a CPython process of the machine was walked; again");
    }
    panic!("a CPython process was walked in every window: cannot isolate the C process");
}

const APP: &str = "\
from fastapi import FastAPI

app = FastAPI()


def checksum(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


@app.get(\"/cpu\")
def cpu_route():
    return {\"sum\": checksum(300_000)}  # HANDLER


@app.get(\"/async-cpu\")
async def async_cpu_route():
    return {\"sum\": checksum(300_000)}  # ASYNC HANDLER
";

/// Sends `GET path` on fresh connections until `stop`.
fn load(port: u16, path: &str, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u64 {
    use std::io::{Read as _, Write as _};
    let mut done = 0;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let _ = s.write_all(request.as_bytes());
        let mut body = Vec::new();
        if s.read_to_end(&mut body).is_ok() && body.starts_with(b"HTTP/1.1 200") {
            done += 1;
        }
    }
    done
}

/// The FastAPI app under uvicorn, loaded on `path` by two clients for 6 s
/// of profile: `handler` (app.py, the line marked `marker`) must be in
/// >= 50 % of the app's samples.
fn fastapi_route_shows_its_handler(path: &str, handler: &str, marker: &str) {
    let _x = exclusive();
    // FastAPI and uvicorn are pinned in tests/requirements.txt, which the
    // bootstrap installs into the `python3` on PATH.
    let python = python3();
    require_modules(&python, "fastapi, uvicorn");
    let agent = Agent::start("");
    script(agent.dir.path(), "app.py", APP);
    let port = sonde_tests::free_port();
    let srv = Workload::spawn(
        Command::new(&python)
            .args(["-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--log-level", "warning"])
            .current_dir(agent.dir.path()),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let path = path.to_owned();
            std::thread::spawn(move || load(port, &path, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    let stacks = folded(&agent, srv.pid(), "6s");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: u64 = clients.into_iter().map(|c| c.join().expect("client")).sum();
    let line = line_of(APP, marker);
    let total: u64 = stacks.iter().map(|s| s.1).sum();
    let in_handler: u64 = stacks
        .iter()
        .filter(|(s, _)| {
            s.iter()
                .filter_map(|f| py_frame(f))
                .any(|(n, f, l)| n == handler && f == "app.py" && l.abs_diff(line) <= 1)
        })
        .map(|s| s.1)
        .sum();
    assert!(served > 0, "no request served");
    assert!(total >= 10, "too few samples ({total}): {stacks:#?}");
    assert!(
        in_handler * 100 >= total * 50,
        "{handler} (app.py:{line}) in {in_handler} of {total} samples: {stacks:#?}"
    );
    eprintln!(
        "fastapi {path}: {handler} (app.py:{line}) in {in_handler} of {total} samples ({:.1}%), {served} requests",
        100.0 * in_handler as f64 / total as f64
    );
}

/// A sync handler: FastAPI runs it in a worker thread of anyio's pool.
#[test]
fn fastapi_cpu_route_shows_its_handler() {
    fastapi_route_shows_its_handler("/cpu", "cpu_route", "# HANDLER");
}

/// An `async def` handler burns CPU on the event-loop thread itself, under
/// asyncio's C task stepping (`_asyncio`'s task_step between eval calls).
#[test]
fn fastapi_async_route_shows_its_handler() {
    fastapi_route_shows_its_handler("/async-cpu", "async_cpu_route", "# ASYNC HANDLER");
}

/// Six functions burning CPU in proportion to their loop counts (about
/// 40/25/15/10/8/2 % of the time), called in turn by `main`.
const PEER: &str = "\
def f1():
    x = 0
    for i in range(40_000):
        x += i


def f2():
    x = 0
    for i in range(25_000):
        x += i


def f3():
    x = 0
    for i in range(15_000):
        x += i


def f4():
    x = 0
    for i in range(10_000):
        x += i


def f5():
    x = 0
    for i in range(8_000):
        x += i


def f6():
    x = 0
    for i in range(2_000):
        x += i


def main():
    while True:
        f1()
        f2()
        f3()
        f4()
        f5()
        f6()


main()
";

/// Self time of a Python function, as both profilers are read here: the
/// samples whose leaf-most Python frame (the youngest one; native frames
/// above it, e.g. a builtin it calls, are ignored) is that function,
/// keyed by (qualname, file base name), as a percentage of the samples
/// that have any Python frame. py-spy's raw output holds only Python
/// frames; sonde's also holds native ones around them.
fn python_self_shares(stacks: &[(Vec<String>, u64)]) -> (Vec<(String, f64)>, u64) {
    let mut by: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut total = 0;
    for (s, n) in stacks {
        let Some((name, file, _)) = s.iter().rev().find_map(|f| py_frame(f)) else {
            continue;
        };
        let file = file.rsplit('/').next().unwrap_or(file);
        *by.entry(format!("{name} ({file})")).or_default() += n;
        total += n;
    }
    let mut v: Vec<(String, f64)> = by
        .into_iter()
        .map(|(k, n)| (k, 100.0 * n as f64 / total.max(1) as f64))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    (v, total)
}

/// py-spy (pinned in tests/requirements.txt) and sonde sample the same
/// process over the same window at the same rate: their top 5 Python
/// functions by self time are the same set, each share within 10 points.
#[test]
fn python_self_time_agrees_with_py_spy() {
    let _x = exclusive();
    let python = python3();
    let py_spy = python.with_file_name("py-spy");
    let py_spy = if py_spy.exists() {
        py_spy
    } else {
        "py-spy".into()
    };
    let ok = Command::new(&py_spy)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"py-spy 0.4.3"));
    assert!(
        ok,
        "py-spy 0.4.3 is not installed: run `cargo xtask test` (it installs tests/requirements.txt)"
    );
    let agent = Agent::start("[collectors.profile]\nfrequency_hz = 99\n");
    let src = script(agent.dir.path(), "peer.py", PEER);
    let wl = Workload::spawn(Command::new(&python).arg(&src));
    std::thread::sleep(Duration::from_secs(5));
    let raw = agent.dir.path().join("py-spy.txt");
    let secs = 8;
    // --nonblocking: py-spy would otherwise stop the process at each of
    // its samples, which sonde's samples would then see.
    let spy = Command::new(&py_spy)
        .args(["record", "--rate", "99", "--nonblocking", "--format", "raw"])
        .args(["--duration", &secs.to_string(), "--pid"])
        .arg(wl.pid().to_string())
        .arg("--output")
        .arg(&raw)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn py-spy");
    let ours = folded(&agent, wl.pid(), &format!("{secs}s"));
    let spy_out = spy.wait_with_output().expect("py-spy");
    assert!(
        spy_out.status.success(),
        "py-spy failed: {}",
        String::from_utf8_lossy(&spy_out.stderr)
    );
    let theirs = sonde_tests::stacks::parse_folded(
        &std::fs::read_to_string(&raw).expect("py-spy's raw output"),
    );
    let (a, na) = python_self_shares(&ours);
    let (b, nb) = python_self_shares(&theirs);
    let report = format!("sonde ({na} samples): {a:.1?}\npy-spy ({nb} samples): {b:.1?}");
    eprintln!("{report}");
    assert!(na >= 300 && nb >= 300, "too few samples: {report}");
    let top = |v: &[(String, f64)]| {
        let mut t: Vec<String> = v.iter().take(5).map(|x| x.0.clone()).collect();
        t.sort();
        t
    };
    assert_eq!(top(&a), top(&b), "top 5 sets differ: {report}");
    for (f, share) in a.iter().take(5) {
        let peer = b.iter().find(|x| &x.0 == f).map_or(0.0, |x| x.1);
        assert!(
            (share - peer).abs() <= 10.0,
            "{f}: sonde {share:.1} % vs py-spy {peer:.1} %: {report}"
        );
    }
}
