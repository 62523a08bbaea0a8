//! DWARF (`.eh_frame`) unwinding end to end: binaries built without frame
//! pointers, profiled by the real perf_event program, whose user stacks the
//! eBPF unwinder walks with the tables the agent built.

use std::{path::PathBuf, process::Command, time::Duration};

use sonde_tests::{
    Agent, exclusive, metric_value,
    stacks::{folded, settled, share},
    wait_for,
    workload::{Workload, build_c, copy_exe},
};

const FLAGS: &[&str] = &["-O2", "-fomit-frame-pointer"];
const CHAIN: &[&str] = &[
    "main", "chain_a", "chain_b", "chain_c", "chain_d", "chain_e",
];
/// 199 Hz for enough samples on a shared 2-core machine; a large
/// symbolizer file cache because the agent profiles (and opens the files
/// of) every process on the machine, and the default 32 files let busy CI
/// neighbours evict the workload's binary before its samples are named.
/// The agent also builds unwind tables for those neighbours (rustc's are
/// ~20 MiB each), so the correctness tests get a budget their hot set fits
/// in; `small_budget_is_enforced_and_profiling_continues` covers the budget.
const BASE: &str = "[collectors.profile]\nfrequency_hz = 199\nmax_cached_files = 512\n";
const CONFIG: &str = "[collectors.profile]\nfrequency_hz = 199\nmax_cached_files = 512\n\
                      unwind_table_budget_mib = 256\n";

fn c_chain() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| build_c("unwind_chain", FLAGS)).clone()
}

/// The Rust twin, release-optimized, frame pointers left to rustc's
/// default (omitted on x86_64 Linux).
fn rust_chain() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let root = sonde_tests::workspace_root();
        let out = root.join("target/workloads/unwind_chain_rs");
        std::fs::create_dir_all(out.parent().unwrap()).expect("mkdir");
        let st = Command::new("rustc")
            .args(["-C", "opt-level=2", "--edition", "2021", "-o"])
            .arg(&out)
            .arg(root.join("tests/workloads/unwind_chain.rs"))
            .status()
            .expect("rustc runs");
        assert!(st.success(), "rustc failed");
        out
    })
    .clone()
}

/// `frame` names function `name` (C name, or a Rust path ending in it).
fn is(frame: &str, name: &str) -> bool {
    let f = frame.trim_end_matches("_[i]");
    f == name || f.ends_with(&format!("::{name}"))
}

/// Index just past `names` appearing in order in `frames` (root first),
/// with only inlined frames between them. Every frame named like
/// `names[0]` is tried (a Rust binary has a C `main` and `crate::main`).
fn chain_end(frames: &[String], names: &[&str]) -> Option<usize> {
    (0..frames.len())
        .filter(|&s| is(&frames[s], names[0]))
        .find_map(|s| chain_from(frames, s + 1, &names[1..]))
}

fn chain_from(frames: &[String], mut i: usize, names: &[&str]) -> Option<usize> {
    for n in names {
        while frames.get(i)?.ends_with("_[i]") && !is(&frames[i], n) {
            i += 1;
        }
        if !is(&frames[i], n) {
            return None;
        }
        i += 1;
    }
    Some(i)
}

fn assert_full_chain(agent: &Agent, pid: u32) {
    let ok = |f: &[String]| chain_end(f, CHAIN).is_some();
    let stacks = settled(agent, pid, "5s", ok);
    let (good, total) = share(&stacks, ok);
    assert!(total >= 50, "too few samples ({total}): {stacks:?}");
    assert!(
        good * 100 >= total * 90,
        "full chain main..chain_e in {good} of {total} samples (< 90%); the others: {:?}\n{}",
        stacks.iter().filter(|s| !ok(&s.0)).collect::<Vec<_>>(),
        agent.metrics()
    );
}

#[test]
fn c_without_frame_pointers_unwinds_the_full_chain() {
    // One agent at a time: each builds tables for every process it samples.
    let _x = exclusive();
    let agent = Agent::start(CONFIG);
    let wl = Workload::spawn(Command::new(c_chain()).args(["spin", "60"]));
    assert_full_chain(&agent, wl.pid());
    let m = agent.metrics();
    assert!(
        metric_value(&m, "sonde_unwind_stacks_total").unwrap_or(0.0) > 100.0,
        "{m}"
    );
    assert!(
        metric_value(&m, "sonde_unwind_tables_loaded").unwrap_or(0.0) >= 2.0,
        "{m}"
    );
}

#[test]
fn rust_release_without_frame_pointers_unwinds_the_full_chain() {
    // One agent at a time: each builds tables for every process it samples.
    let _x = exclusive();
    let agent = Agent::start(CONFIG);
    let wl = Workload::spawn(Command::new(rust_chain()).arg("60"));
    assert_full_chain(&agent, wl.pid());
}

#[test]
fn chain_crosses_libc_qsort_into_the_comparator() {
    // One agent at a time: each builds tables for every process it samples.
    let _x = exclusive();
    let agent = Agent::start(CONFIG);
    let wl = Workload::spawn(Command::new(c_chain()).args(["qsort", "60"]));
    let ok = |f: &[String]| {
        chain_end(f, CHAIN).is_some_and(|i| {
            let rest = &f[i..];
            rest.len() >= 2
                && rest.iter().any(|x| x.contains("qsort"))
                && rest.last().is_some_and(|x| is(x, "spin_compare"))
        })
    };
    let stacks = settled(&agent, wl.pid(), "5s", ok);
    let in_cmp: u64 = stacks
        .iter()
        .filter(|s| s.0.last().is_some_and(|x| is(x, "spin_compare")))
        .map(|s| s.1)
        .sum();
    let (good, total) = share(&stacks, ok);
    assert!(in_cmp >= 50, "too few comparator samples: {stacks:?}");
    assert!(
        good * 100 >= in_cmp * 90,
        "main..chain_e;..qsort..;spin_compare in {good} of {in_cmp} comparator samples \
         ({total} in all); the others: {:?}",
        stacks.iter().filter(|s| !ok(&s.0)).collect::<Vec<_>>()
    );
}

/// User frames of a folded stack (no process name, no kernel frames).
fn user_depth(f: &[String]) -> usize {
    f.iter().skip(1).filter(|x| !x.ends_with("_[k]")).count()
}

#[test]
fn python_busy_loop_has_deep_stacks() {
    // One agent at a time: each builds tables for every process it samples.
    let _x = exclusive();
    let agent = Agent::start(CONFIG);
    let wl = Workload::spawn(Command::new("/usr/bin/python3").args([
        "-c",
        "import time\nend = time.time() + 60\nwhile time.time() < end:\n    pass\n",
    ]));
    let stacks = settled(&agent, wl.pid(), "5s", |f| user_depth(f) >= 8);
    let mut depths: Vec<usize> = stacks
        .iter()
        .flat_map(|(f, n)| std::iter::repeat_n(user_depth(f), *n as usize))
        .collect();
    depths.sort_unstable();
    assert!(depths.len() >= 50, "too few samples: {stacks:?}");
    let median = depths[depths.len() / 2];
    assert!(median >= 8, "median user depth {median}: {stacks:?}");
    // The interpreter's eval loop shows as the Python frame it runs (the
    // profiler splices Python frames in its place), or as itself when no
    // Python walk was made; either way the unwinder must reach it from main.
    assert!(
        stacks.iter().any(|(f, _)| f.iter().any(
            |x| x.contains("_PyEval_EvalFrameDefault") || x.starts_with("<module> (<string>:")
        ) && f
            .iter()
            .any(|x| x == "main" || x.contains("Py_BytesMain"))),
        "eval loop reached from main: {stacks:?}"
    );
}

#[test]
fn small_budget_is_enforced_and_profiling_continues() {
    // One agent at a time: each builds tables for every process it samples.
    let _x = exclusive();
    let budget = 1u64; // MiB: less than libc + python3 + the Rust binary
    let agent = Agent::start(&format!("{BASE}unwind_table_budget_mib = {budget}\n"));
    let wls = [
        Workload::spawn(Command::new(c_chain()).args(["spin", "120"])),
        Workload::spawn(Command::new(rust_chain()).arg("120")),
        Workload::spawn(Command::new("/usr/bin/python3").args([
            "-c",
            "import time\nend = time.time() + 120\nwhile time.time() < end:\n    pass\n",
        ])),
        Workload::spawn(Command::new(c_chain()).args(["qsort", "120"])),
    ];
    // The budget is enforced one of two ways: a table older than its 10 s
    // minimum residency is evicted, or a new file finds no room (and is
    // walked with frame pointers until room frees up). Which one happens
    // depends on the order the workloads are first seen in; waiting for
    // evictions alone timed out in a whole-suite run.
    let m = wait_for(Duration::from_secs(40), "the budget to be enforced", || {
        let m = agent.metrics();
        let evicted = metric_value(&m, "sonde_unwind_table_evictions_total").unwrap_or(0.0);
        let refused = metric_value(&m, "sonde_unwind_table_failures_total{reason=\"no_room\"}")
            .unwrap_or(0.0);
        (evicted + refused > 0.0).then_some(m)
    });
    let used = metric_value(&m, "sonde_unwind_table_bytes").expect("bytes gauge");
    assert!(used <= (budget << 20) as f64, "{used} bytes > budget: {m}");
    assert_eq!(
        metric_value(&m, "sonde_unwind_table_budget_bytes"),
        Some((budget << 20) as f64)
    );
    // Every workload is still profiled.
    for w in &wls {
        let s = folded(&agent, w.pid(), "3s");
        assert!(
            s.iter().map(|x| x.1).sum::<u64>() > 0,
            "no samples for {}",
            w.pid()
        );
    }
    let (code, h) = agent.get("/health");
    assert!(
        code == 200 && h.contains("profile"),
        "health lists the profiler: {code} {h}"
    );
    assert!(
        agent.log().matches("panicked").count() == 0,
        "{}",
        agent.log()
    );
}

/// A process announced before its exec, whose comm the exec does not
/// change, is not announced again; the agent has to notice its new maps on
/// its own while it is busy. In whole-suite runs an off-CPU workload was
/// announced mid-exec (comm already new, libraries not mapped yet) and kept
/// frame-pointer stacks for 60 s. Here a launcher with no unwind table at
/// all, named so its comm is the target's, spins long enough to be
/// announced and found tableless, then execs the frame-pointer-less chain.
#[test]
fn a_process_announced_before_its_exec_gets_tables_after_it() {
    let _x = exclusive();
    let agent = Agent::start(CONFIG);
    let target = c_chain();
    let launcher_src = build_c(
        "exec_later",
        &[
            "-O1",
            "-static",
            "-nostdlib",
            "-fno-asynchronous-unwind-tables",
            "-fno-unwind-tables",
            "-fno-stack-protector",
            "-fcf-protection=none",
        ],
    );
    // The comm is the first 15 bytes of the executed file's name.
    let dir = sonde_tests::workspace_root().join("target/workloads/launchers");
    std::fs::create_dir_all(&dir).expect("mkdir launchers");
    let name = target.file_name().expect("name").to_string_lossy();
    let launcher = dir.join(format!("{}-launcher", &name[..15]));
    let tmp = dir.join(format!("launcher.tmp{}", std::process::id()));
    copy_exe(&launcher_src, &tmp);
    std::fs::rename(&tmp, &launcher).expect("rename the launcher into place");
    let wl = Workload::spawn(
        Command::new(&launcher)
            .arg("2000")
            .arg(&target)
            .args(["spin", "60"]),
    );
    // Announced and found without tables while it is the launcher.
    let pid = wl.pid();
    wait_for(Duration::from_secs(10), "the launcher's exec", || {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .filter(|p| p.file_name() == target.file_name())
    });
    assert_full_chain(&agent, pid);
}
