//! Memory profiling end to end: `sonde alloc` (tier 2, malloc uprobes on
//! one process) and the always-on memory collector (tier 1, the mmap lock
//! and page faults), on real workloads with known allocations.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use sonde_tests::{
    Agent, exclusive, metric_value, sonde_bin, wait_child_or_kill, wait_for, wait_until,
    workload::{Workload, build_c},
};
use sonde_wire::{
    alloc::{AllocReport, Ended, SessionInfo},
    memory::MemoryAnswer,
};

const FLAGS: &[&str] = &["-O1", "-g", "-fno-omit-frame-pointer"];
const CHUNK: f64 = 65536.0;

fn bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_c("leak_churn", FLAGS))
}

/// Starts `leak_churn MODE COUNTER SECONDS`; returns it and its counter file.
fn workload(agent: &Agent, mode: &str, secs: &str) -> (Workload, PathBuf) {
    let counter = agent.dir.path().join(format!("{mode}.count"));
    let wl = Workload::spawn(Command::new(bin()).args([mode, counter.to_str().unwrap(), secs]));
    // Past start-up: its own allocations (stdio, ld.so) are not the test's.
    wait_for(Duration::from_secs(5), "workload running", || {
        (rounds(&counter) >= 5).then_some(())
    });
    (wl, counter)
}

fn rounds(counter: &Path) -> u64 {
    std::fs::read_to_string(counter)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn alloc_json(agent: &Agent, pid: u32, args: &[&str]) -> AllocReport {
    let p = pid.to_string();
    let mut full = vec!["alloc", "--pid", &p, "-f", "json"];
    full.extend_from_slice(args);
    let out = agent.cli(&full);
    assert!(
        out.status.success(),
        "sonde {full:?} failed ({}): {}\nagent log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    serde_json::from_slice(&out.stdout).expect("alloc JSON")
}

/// Rows whose allocating (leaf) frame is `f`, summed: (in use bytes, in use
/// count, allocated bytes, allocated count, freed bytes).
fn by_leaf(r: &AllocReport, f: &str) -> (u64, u64, u64, u64, u64) {
    let mut t = (0, 0, 0, 0, 0);
    for s in &r.stacks {
        if s.frames.first().is_some_and(|x| x == f) {
            t.0 += s.in_use_bytes;
            t.1 += s.in_use_count;
            t.2 += s.alloc_bytes;
            t.3 += s.alloc_count;
            t.4 += s.freed_bytes;
        }
    }
    t
}

#[test]
fn alloc_finds_the_leak_in_use_and_the_churn_allocated() {
    let _x = exclusive();
    let agent = Agent::start("");
    let (wl, counter) = workload(&agent, "leak", "40");
    let r = alloc_json(&agent, wl.pid(), &["--duration", "5s"]);
    let secs = r.duration_ms as f64 / 1000.0;
    // The truth: leaks the workload logged while the session recorded.
    let (from, to) = (r.started_ns, r.ended_ns);
    let log = std::fs::read_to_string(counter.with_extension("count.log")).unwrap();
    let leaks = log
        .lines()
        .filter_map(|l| l.parse::<u64>().ok())
        .filter(|t| (from..=to).contains(t))
        .count();
    let expected = leaks as f64 * CHUNK;
    assert_eq!(r.ended, Some(Ended::Completed), "{r:?}");
    assert!((4.9..6.0).contains(&secs), "tracked for {secs}s: {r:?}");

    // The leak: the top in-use stack, within 10 % of the true bytes.
    let top = r
        .stacks
        .first()
        .unwrap_or_else(|| panic!("no stacks: {r:#?}"));
    assert_eq!(
        top.frames.first().map(String::as_str),
        Some("sonde_leak_64k"),
        "top in-use stack: {r:#?}"
    );
    assert!(
        top.frames.iter().any(|f| f == "main"),
        "full stack: {top:?}"
    );
    let (in_use, n, alloc, alloc_n, _) = by_leaf(&r, "sonde_leak_64k");
    let err = (in_use as f64 - expected).abs() / expected;
    assert!(
        err <= 0.10,
        "leak in use {in_use} vs true {expected:.0} ({:.1} % off): {r:?}",
        err * 100.0
    );
    assert_eq!(in_use, n * 65536, "every leaked block is 64 KiB");
    assert_eq!((alloc, alloc_n), (in_use, n), "nothing leaked was freed");

    // The churn: about nothing in use, the right total allocated.
    let (c_in_use, _, c_alloc, c_n, c_freed) = by_leaf(&r, "sonde_churn_64k");
    assert!(c_in_use <= 65536, "churn in use {c_in_use}: {r:?}");
    let err = (c_alloc as f64 - expected).abs() / expected;
    assert!(
        err <= 0.10,
        "churn allocated {c_alloc} vs {expected:.0}: {r:?}"
    );
    assert_eq!(c_alloc, c_n * 65536);
    assert_eq!(c_freed + c_in_use, c_alloc, "churn frees are matched");
    assert!(c_n.abs_diff(n) <= 2, "one churn per leak: {c_n} vs {n}");

    // This glibc's free starts with an instruction the kernel would
    // single-step; the probe must sit where it is emulated.
    let probes = &r.probes;
    assert!(probes.iter().all(|p| p.emulated), "probes: {probes:?}");
    let free = probes.iter().find(|p| p.function == "free").unwrap();
    assert!(free.offset > 0, "{free:?}");

    // The top table names the leak first too.
    let p = wl.pid().to_string();
    let out = agent.cli(&["alloc", "--pid", &p, "-d", "1s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let first_row = text.lines().nth(2).unwrap_or_default();
    assert!(first_row.contains("sonde_leak_64k"), "{text}");
}

#[test]
fn alloc_accounts_calloc_realloc_and_memalign_exactly() {
    let _x = exclusive();
    let agent = Agent::start("");
    let (wl, _) = workload(&agent, "known", "30");
    let r = alloc_json(&agent, wl.pid(), &["--duration", "2s"]);
    let check = |f: &str, size: u64| {
        let (in_use, n, alloc, alloc_n, _) = by_leaf(&r, f);
        assert!(n >= 50, "{f}: only {n} live allocations: {r:?}");
        assert_eq!(
            in_use,
            n * size,
            "{f}: in use {in_use} for {n} of {size}: {r:?}"
        );
        (alloc, alloc_n)
    };
    let (a, an) = check("sonde_calloc_100k", 100 * 1000);
    assert_eq!(a, an * 100_000);
    // realloc(NULL, n) calls malloc inside libc: counted once.
    let (a, an) = check("sonde_realloc_null", 3000);
    assert_eq!(a, an * 3000, "realloc(NULL) counted once: {r:?}");
    check("sonde_posix_memalign", 4096);
    check("sonde_aligned_alloc", 8192);
    // malloc(1000) then realloc to 50000: only the 50000 stay in use; the
    // 1000-byte blocks were freed by realloc.
    let (in_use, n, alloc, _, freed) = by_leaf(&r, "sonde_realloc_grow");
    assert_eq!(in_use, n * 50_000, "{r:?}");
    assert_eq!(alloc, n * 50_000 + freed, "{r:?}");
    assert!(
        freed.abs_diff(n * 1000) <= 1000,
        "{freed} vs {n} x 1000: {r:?}"
    );
    // realloc(p, 0) frees p.
    let (in_use, _, alloc, alloc_n, freed) = by_leaf(&r, "sonde_realloc_free");
    assert!(alloc_n >= 50, "{r:?}");
    assert_eq!((in_use, alloc), (0, alloc_n * 2000), "{r:?}");
    assert_eq!(freed, alloc);
    // Leak suspects: live allocations older than --min-age.
    assert!(r.stacks[0].leak_bytes > 0, "{r:?}");
}

#[test]
fn memory_collector_attributes_heap_growth_to_the_leak() {
    let _x = exclusive();
    let agent =
        Agent::start("[collectors.memory]\ndrain_interval = \"1s\"\nfault_sample_every = 4\n");
    let (wl, counter) = workload(&agent, "leak", "30");
    let service = bin().file_name().unwrap().to_string_lossy().into_owned();
    let series = format!("sonde_memory_mapped_bytes{{service_name=\"{service}\"}}");
    let first = wait_for(Duration::from_secs(10), "mapped bytes gauge", || {
        metric_value(&agent.metrics(), &series)
    });
    // ~6.5 MB/s leaked: wait for the gauge (VmSize of the service) to
    // follow, so the report below covers seconds of the leak.
    wait_until(
        Duration::from_secs(15),
        "mapped bytes to grow 8 MiB",
        || {
            let later = metric_value(&agent.metrics(), &series).unwrap_or(0.0);
            if later - first >= 8.0 * 1024.0 * 1024.0 {
                Ok(())
            } else {
                Err(format!("{series} {first} -> {later}"))
            }
        },
    );
    let p = wl.pid().to_string();
    let out = agent.cli(&["memory", "--pid", &p, "-f", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: MemoryAnswer = serde_json::from_slice(&out.stdout).expect("memory JSON");
    let rows = &m.rows;
    let total: u64 = rows.iter().map(|r| r.bytes).sum();
    let leak: u64 = rows
        .iter()
        .filter(|r| r.frames.iter().any(|f| f == "sonde_leak_64k"))
        .map(|r| r.bytes)
        .sum();
    assert!(
        rows[0].frames.iter().any(|f| f == "sonde_leak_64k"),
        "top RSS-growth stack: {m:#?}"
    );
    assert!(leak * 100 >= total * 60, "leak {leak} of {total}: {m:#?}");
    // ~6.5 MB/s leaked: the gauge follows (VmSize of the service).
    let later = metric_value(&agent.metrics(), &series).unwrap();
    assert!(
        later - first >= 8.0 * 1024.0 * 1024.0,
        "{series} went {first} -> {later}"
    );
    let metrics = agent.metrics();
    let faults = format!("sonde_memory_page_faults_total{{service_name=\"{service}\"}}");
    assert!(
        metric_value(&metrics, &faults).unwrap_or(0.0) > 1000.0,
        "{faults}"
    );
    let brk = format!("sonde_memory_map_bytes_total{{op=\"brk_grow\",service_name=\"{service}\"}}");
    assert!(metric_value(&metrics, &brk).unwrap_or(0.0) > 1e6, "{brk}");

    // On this kernel the collector must use the hooks that leave every
    // other syscall untraced (docs/memory.md), not a fallback.
    let (_, health) = agent.get("/health");
    assert!(
        health.contains("tp_btf mmap_lock") && health.contains("tp_btf page_fault_user"),
        "memory hooks: {health}"
    );
    // The heap's net growth (brk grown minus shrunk, from the address
    // space's size before and after each call) is what the workload
    // leaked: stop it, let two drains pass, compare. glibc keeps up to
    // 128 KiB of slack at the top of the heap, and the churn's chunk.
    Command::new("kill")
        .args(["-STOP", &p])
        .status()
        .expect("kill -STOP");
    wait_until(Duration::from_secs(10), "the workload stopped", || {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        // The state follows the parenthesized comm.
        let state = stat.rsplit_once(") ").map(|(_, r)| &r[..1]);
        if state == Some("T") {
            Ok(())
        } else {
            Err(stat)
        }
    });
    let leaked = rounds(&counter) as f64 * CHUNK;
    let shrink = brk.replace("brk_grow", "brk_shrink");
    // The drains catch up with the last calls before the stop.
    wait_until(
        Duration::from_secs(15),
        "net brk growth to match the leak",
        || {
            let metrics = agent.metrics();
            let net = metric_value(&metrics, &brk).unwrap_or(0.0)
                - metric_value(&metrics, &shrink).unwrap_or(0.0);
            if (net - leaked).abs() <= leaked * 0.05 + 512.0 * 1024.0 {
                Ok(())
            } else {
                Err(format!("net brk growth {net} vs {leaked} leaked"))
            }
        },
    );

    // pprof with space/bytes.
    let file = agent.dir.path().join("mem.pb.gz");
    let out = agent.cli(&[
        "memory",
        "--pid",
        &p,
        "-f",
        "pprof",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let gz = std::fs::read(&file).unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip");
}

fn cli_fails(agent: &Agent, args: &[&str], code: i32, needle: &str) {
    let out = agent.cli(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "sonde {args:?}: {err}");
    assert!(err.contains(needle), "sonde {args:?}: {err}");
}

#[test]
fn alloc_rejects_bad_input_with_exit_2() {
    let agent = Agent::start("");
    // A pid that just exited.
    let mut c = Command::new("true").spawn().unwrap();
    let dead = c.id().to_string();
    wait_child_or_kill(&mut c, Duration::from_secs(10), "true");
    cli_fails(
        &agent,
        &["alloc", "--pid", &dead, "-d", "1s"],
        2,
        "no process",
    );
    // The agent says the same when asked directly.
    let (code, body) =
        sonde_tests::unix_get(&agent.socket, &format!("/api/v1/alloc?pid={dead}")).unwrap();
    assert_eq!(code, 400, "{body}");
    // A misspelt parameter is refused by name, not ignored: ignoring it
    // would answer a different question (here: every process's profile).
    for (path, field) in [
        ("/api/v1/profile?pidd=1&duration=1s", "pidd"),
        ("/api/v1/memory?kind=mapped&top=3", "top"),
        ("/api/v1/syscalls?sort=count&pids=1", "pids"),
    ] {
        let (code, body) = sonde_tests::unix_get(&agent.socket, path).unwrap();
        assert_eq!(code, 400, "{path}: {body}");
        assert!(
            body.contains(&format!("unknown field `{field}`")),
            "{path}: {body}"
        );
    }
    // A static binary maps no libc.
    let st = build_c("sleeper", &["-O1", "-static"]);
    let wl = Workload::spawn(Command::new(&st).arg("30"));
    // Until its exec, the child is a copy of this test binary, with libc.
    wait_until(Duration::from_secs(10), "the static sleeper exec'd", || {
        let exe = std::fs::read_link(format!("/proc/{}/exe", wl.pid()));
        if exe.as_ref().is_ok_and(|e| *e == st) {
            Ok(())
        } else {
            Err(exe)
        }
    });
    let p = wl.pid().to_string();
    cli_fails(
        &agent,
        &["alloc", "--pid", &p, "-d", "1s"],
        2,
        "no shared libc",
    );
    // Durations out of range.
    cli_fails(&agent, &["alloc", "--pid", &p, "-d", "11m"], 2, "between");
    cli_fails(&agent, &["alloc", "--pid", &p, "-d", "0s"], 2, "between");
    cli_fails(&agent, &["memory", "--kind", "nope"], 2, "invalid value");
}

#[test]
fn alloc_sessions_are_exclusive_cancellable_and_survive_target_exit() {
    let _x = exclusive();
    let agent = Agent::start("");
    let (wl, _) = workload(&agent, "leak", "60");
    let p = wl.pid().to_string();
    let spawn_session = || {
        Command::new(sonde_bin())
            .args(["alloc", "--pid", &p, "-d", "60s", "-f", "json", "--socket"])
            .arg(&agent.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let tracking = || {
        wait_for(Duration::from_secs(10), "session tracking", || {
            let s: Vec<SessionInfo> = agent.api("/api/v1/alloc/sessions");
            s.first()
                .is_some_and(|x| x.state == "tracking")
                .then_some(())
        })
    };
    // Ctrl-C ends the session early with what it has, probes detached.
    let first = spawn_session();
    tracking();
    // A second session on the same pid is refused while one runs.
    cli_fails(
        &agent,
        &["alloc", "--pid", &p, "-d", "1s"],
        1,
        "already running",
    );
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        t.elapsed()
    );
    let r: AllocReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.ended, Some(Ended::Cancelled));
    assert!(by_leaf(&r, "sonde_leak_64k").0 > 0, "{r:?}");
    let left: Vec<SessionInfo> = agent.api("/api/v1/alloc/sessions");
    assert_eq!(left, vec![]);

    // The target exits mid-session: the session ends and still reports.
    let second = spawn_session();
    tracking();
    std::thread::sleep(Duration::from_secs(1));
    drop(wl);
    let t = Instant::now();
    let out = second.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    let r: AllocReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.ended, Some(Ended::TargetExited));
    assert_eq!(
        r.stacks
            .first()
            .and_then(|s| s.frames.first())
            .map(String::as_str),
        Some("sonde_leak_64k"),
        "{r:?}"
    );
}

#[test]
fn agent_shutdown_ends_a_session_with_its_report() {
    let _x = exclusive();
    let mut agent = Agent::start("");
    let (wl, _) = workload(&agent, "leak", "60");
    let p = wl.pid().to_string();
    let session = Command::new(sonde_bin())
        .args(["alloc", "--pid", &p, "-d", "60s", "-f", "json", "--socket"])
        .arg(&agent.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), "session tracking", || {
        let s: Vec<SessionInfo> = agent.api("/api/v1/alloc/sessions");
        s.first()
            .is_some_and(|x| x.state == "tracking")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    assert!(agent.stop().success(), "agent log:\n{}", agent.log());
    let out = session.wait_with_output().unwrap();
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: AllocReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.ended, Some(Ended::AgentShutdown), "{r:?}");
    assert!(by_leaf(&r, "sonde_leak_64k").0 > 0, "{r:?}");
}
