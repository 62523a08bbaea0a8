//! `alloc`: `sonde alloc` sessions on a malloc loop, against the floor of
//! the uprobe machinery, and on a CPython allocation loop, against
//! tracemalloc (pyalloc.rs); tier 1, the memory collector on real and
//! worst-case workloads, against the floor of its hooks.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{alternate, finish, last_cpu};
use crate::bench::{
    Ctx,
    agent::{Agent, BpfStats, CpuMeter, bpf_run_stats, build_c, run_number, signal},
    probes::Probes,
    report::ScenarioResult,
    stats::summarize,
};

pub fn alloc(ctx: &Ctx) -> ScenarioResult {
    let name = "alloc";
    let what = "CPU ns per malloc(64)+free pair in a C loop pinned to the last CPU: no \
                probes; the floor, programs that do nothing attached by the benchmark-only \
                loader (`sonde-bench-probes alloc`) at exactly the probe points and kinds a \
                session uses (malloc entry, malloc return, free at an emulated instruction, \
                from the agent's own libc lookup), so what the kernel's uprobe machinery \
                alone costs; and a `sonde alloc` session on the loop \
                (every allocation tracked with its stack). `BPF ns per pair` is the \
                programs' run time per pair from kernel.bpf_stats, in a second \
                pass (stats add two clock reads per run). Tier 1, without an agent and with \
                the agent running only the memory collector: CPU ms per `gcc -O2 -g -c` of a \
                small C file (a real program that maps, grows its heap and faults a lot) and, \
                as the worst case, CPU µs per round of mmap 1 MiB + 256 page faults + munmap \
                (nothing but operations the collector hooks), and CPU ns per getppid (a \
                syscall the collector does not count: what it costs the rest of the system); \
                the tier-1 floor, empty programs on the same hooks (tp_btf mmap_lock and \
                page_fault_user, from the benchmark-only loader `sonde-bench-probes memory`, \
                with no agent); \
                and the collector on its fallback hooks (`hook = \"syscall\"`: tp_btf \
                sys_exit and a page-fault perf event, what it used before session 8). Tier 1 \
                runs 3 times as many alternations as the rest, shorter ones (10 compiles), \
                since a 2 % effect is inside this machine's run-to-run spread. The agent's \
                own CPU during the compiles (it runs on the other core) is added to the \
                compilers' for the tier-1 target. CPython: CPU ns per allocation of a Python \
                loop making and dropping bytearray(100) (2 allocations per iteration) on \
                pyenv 3.12, with no tool, under a `sonde alloc` session (CPython's allocator \
                and libc probed, native and Python stack per allocation), and with \
                tracemalloc on in the program (its default 1-frame tracebacks).";
    let run = || -> Result<ScenarioResult> {
        let bin = build_c("xtask/bench/malloc_loop.c", ctx.work.path())?;
        // Few pairs: with uprobes each costs microseconds.
        let n = if ctx.quick { 20_000 } else { 200_000 }.to_string();
        // Pinned to the last CPU, as below.
        let taskset = std::path::PathBuf::from("taskset");
        let args = vec![
            "-c".to_owned(),
            last_cpu(),
            bin.display().to_string(),
            n.clone(),
        ];
        let measure = || run_number(&taskset, &args);
        let mut metrics = alternate(
            ctx.reps,
            &[("malloc+free", "CPU ns/pair"), ("BPF ns per pair", "ns")],
            vec![
                (
                    "no probes",
                    Box::new(|| Ok(vec![("malloc+free", measure()?)])),
                ),
                (
                    "empty probes, same points (floor)",
                    Box::new(|| {
                        let (cpu, bpf) = alloc_session(ctx, &bin, &n, true)?;
                        Ok(vec![("malloc+free", cpu), ("BPF ns per pair", bpf)])
                    }),
                ),
                (
                    "sonde alloc session",
                    Box::new(|| {
                        let (cpu, bpf) = alloc_session(ctx, &bin, &n, false)?;
                        Ok(vec![("malloc+free", cpu), ("BPF ns per pair", bpf)])
                    }),
                ),
            ],
        )?;
        metrics.extend(super::pyalloc::python_alloc(ctx)?);
        let churn = build_c("xtask/bench/page_churn.c", ctx.work.path())?;
        // Pinned to the last CPU: a perf event opened on CPU 0 makes work
        // there dearer (see docs/benchmarks.md), which is not what we
        // measure.
        let last_cpu = last_cpu();
        let rounds = if ctx.quick { 300 } else { 1000 }.to_string();
        let pinned = vec![
            "-c".to_owned(),
            last_cpu,
            churn.display().to_string(),
            rounds.clone(),
        ];
        let per_round = || run_number(&taskset, &pinned).map(|ns| ns / 1000.0);
        let only_memory: Vec<(&str, String)> = [
            "SONDE_COLLECTORS__PROCESS__ENABLED",
            "SONDE_COLLECTORS__SYSCALLS__ENABLED",
            "SONDE_COLLECTORS__PROFILE__ENABLED",
            "SONDE_COLLECTORS__HTTP__ENABLED",
        ]
        .into_iter()
        .map(|k| (k, "false".to_owned()))
        .collect();
        let mut memory_syscall = only_memory.clone();
        memory_syscall.push(("SONDE_COLLECTORS__MEMORY__HOOK", "syscall".to_owned()));
        let getppid = build_c("tests/workloads/getppid_loop.c", ctx.work.path())?;
        let getppid_args = vec![
            "-c".to_owned(),
            pinned[1].clone(),
            getppid.display().to_string(),
            if ctx.quick { "200000" } else { "1000000" }.to_owned(),
        ];
        let per_getppid = || run_number(&taskset, &getppid_args);
        let gcc_loop = build_c("xtask/bench/gcc_loop.c", ctx.work.path())?;
        let src = crate::cmd::workspace_root().join("tests/workloads/leak_churn.c");
        let compiles = if ctx.quick { 3 } else { 10 }.to_string();
        let gcc_args = vec![
            "-c".to_owned(),
            pinned[1].clone(),
            gcc_loop.display().to_string(),
            compiles.clone(),
            src.display().to_string(),
        ];
        let per_compile = || run_number(&taskset, &gcc_args);
        let n_compiles: f64 = compiles.parse().expect("a number");
        // One tier-1 run under an agent started with `env`, or (None, the
        // floor) under the loader's empty programs on the memory collector's
        // hooks, with no agent: one with every collector off never gets
        // ready.
        let tier1 = |env: Option<&[(&str, String)]>| -> Result<Vec<(&'static str, f64)>> {
            let (agent, probes) = match env {
                Some(env) => (Some(Agent::start(&ctx.sonde, ctx.work.path(), env)?), None),
                None => (None, Some(Probes::start(&ctx.probes, &["memory"])?)),
            };
            let pid = agent
                .as_ref()
                .map_or_else(|| probes.as_ref().map_or(0, Probes::pid), Agent::pid);
            let v = per_round()?;
            let p = per_getppid()?;
            // The agent's own CPU while the compiles run (it drains, reads
            // maps and symbolizes on another core): the compilers' CPU
            // alone would hide it. For the floor, the loader's.
            let meter = CpuMeter::start(pid)?;
            let g = per_compile()?;
            let agent_ms = meter.seconds()? * 1000.0 / n_compiles;
            drop(probes);
            if let Some(a) = agent {
                a.stop()?;
            }
            Ok(vec![
                ("mmap+faults+munmap", v),
                ("getppid", p),
                ("gcc -O2 -g -c", g),
                ("agent CPU during the compiles", agent_ms),
            ])
        };
        // --quick checks the harness, not the figure: no extra rounds.
        let tier1_reps = if ctx.quick { ctx.reps } else { ctx.reps * 3 };
        metrics.extend(alternate(
            tier1_reps,
            &[
                ("mmap+faults+munmap", "CPU µs/round"),
                ("getppid", "CPU ns/call"),
                ("gcc -O2 -g -c", "CPU ms/compile"),
                ("agent CPU during the compiles", "CPU ms/compile"),
            ],
            vec![
                (
                    "no agent",
                    Box::new(|| {
                        Ok(vec![
                            ("mmap+faults+munmap", per_round()?),
                            ("getppid", per_getppid()?),
                            ("gcc -O2 -g -c", per_compile()?),
                        ])
                    }),
                ),
                ("empty hooks, same points (floor)", Box::new(|| tier1(None))),
                ("memory collector", Box::new(|| tier1(Some(&only_memory)))),
                (
                    "memory collector, syscall hooks (before)",
                    Box::new(|| tier1(Some(&memory_syscall))),
                ),
            ],
        )?);
        let mut r = ScenarioResult {
            metrics,
            ..Default::default()
        };
        let floor = r.median("malloc+free", "empty probes, same points (floor)");
        let bare = r.median("malloc+free", "no probes");
        let session = r.median("malloc+free", "sonde alloc session");
        r.derive(
            "floor added (probe hits alone)",
            floor.zip(bare).map(|(f, b)| f - b),
            "ns/pair",
            None,
        );
        let added = session.zip(bare).map(|(s, b)| s - b);
        r.derive(
            "sonde alloc added",
            added,
            "ns/pair",
            added.map(|a| ("≤ 1500", a <= 1500.0)),
        );
        r.derive(
            "sonde alloc above the floor (programs' work)",
            session.zip(floor).map(|(s, f)| s - f),
            "ns/pair",
            None,
        );
        let py = super::pyalloc::METRIC;
        for (label, v) in [
            ("sonde alloc", "CPython: sonde alloc session"),
            ("tracemalloc", "CPython: tracemalloc"),
        ] {
            r.derive(
                &format!("CPython: {label} added"),
                r.median_added(py, v, "CPython: no tool"),
                "ns/allocation",
                None,
            );
            let slowdown = r.paired_ratio(py, v, "CPython: no tool");
            r.derive_paired(&format!("CPython: {label} slowdown"), slowdown, None);
        }
        // Times, so no agent over the variant: a throughput ratio.
        let gcc = r.paired_ratio("gcc -O2 -g -c", "no agent", "memory collector");
        r.derive_paired(
            "tier-1 throughput ratio (gcc, compilers' CPU only)",
            gcc,
            None,
        );
        let worst = r.paired_ratio("mmap+faults+munmap", "no agent", "memory collector");
        r.derive_paired(
            "tier-1 throughput ratio (fault loop, worst case)",
            worst,
            None,
        );
        // The target: per repetition, no agent over (compilers + agent).
        let with_agent = r
            .samples("gcc -O2 -g -c", "no agent")
            .zip(r.samples("gcc -O2 -g -c", "memory collector"))
            .zip(r.samples("agent CPU during the compiles", "memory collector"))
            .filter(|((b, w), a)| b.len() == w.len() && w.len() == a.len() && !b.is_empty())
            .map(|((b, w), a)| {
                let ratios: Vec<f64> = (0..b.len()).map(|i| b[i] / (w[i] + a[i])).collect();
                let s = summarize(&ratios);
                (s.median, s.min, s.max)
            });
        r.derive_paired(
            "tier-1 throughput ratio (gcc, the agent's CPU included)",
            with_agent,
            Some(("≥ 0.98", |x| x >= 0.98)),
        );
        for (label, v) in [
            ("floor", "empty hooks, same points (floor)"),
            (
                "on the syscall hooks",
                "memory collector, syscall hooks (before)",
            ),
        ] {
            let gcc = r.paired_ratio("gcc -O2 -g -c", "no agent", v);
            r.derive_paired(&format!("tier-1 {label} throughput ratio (gcc)"), gcc, None);
            let worst = r.paired_ratio("mmap+faults+munmap", "no agent", v);
            r.derive_paired(
                &format!("tier-1 {label} throughput ratio (fault loop)"),
                worst,
                None,
            );
        }
        for (label, v) in [
            ("memory collector", "memory collector"),
            ("syscall hooks", "memory collector, syscall hooks (before)"),
        ] {
            let added = r.median_added("getppid", v, "no agent");
            r.derive(
                &format!("getppid CPU added ({label})"),
                added,
                "ns/call",
                None,
            );
        }
        r.commands = super::pyalloc::commands(ctx.quick);
        r.commands.extend([
            format!(
                "gcc -O2 xtask/bench/malloc_loop.c && taskset -c LAST_CPU ./a.out {n}  (CPU ns/pair)"
            ),
            format!(
                "taskset -c LAST_CPU ./a.out {n} wait & sonde-bench-probes alloc --pid $!  \
                 (the floor: the benchmark-only loader, stopped when the loop exits; an agent \
                 runs alongside, as for the session)"
            ),
            format!(
                "taskset -c LAST_CPU ./a.out {n} wait & sonde alloc --pid $! -d 10m -f json  \
                 (the session ends when the loop exits)"
            ),
            "sysctl kernel.bpf_stats_enabled=1; bpftool prog show  (run_time_ns of the \
             uprobe programs over a second pass, per pair)"
                .into(),
            format!(
                "gcc -O2 xtask/bench/page_churn.c && taskset -c LAST_CPU ./a.out {rounds}  (CPU µs/round), \
                 with SONDE_COLLECTORS__{{PROCESS,SYSCALLS,PROFILE,HTTP}}__ENABLED=false sonde agent"
            ),
            format!(
                "gcc -O2 xtask/bench/gcc_loop.c && taskset -c LAST_CPU ./a.out {compiles} \
                 tests/workloads/leak_churn.c  (CPU ms/compile of all children), same agents; \
                 the agent's CPU (schedstat ns of its threads) over the compiles, per compile"
            ),
            "gcc -O2 tests/workloads/getppid_loop.c && taskset -c LAST_CPU ./a.out 1000000  \
             (CPU ns/call), same agents"
                .into(),
            "sonde-bench-probes memory: empty programs on tp_btf \
             mmap_lock_acquire_returned/_released and page_fault_user, the tier-1 floor (no \
             agent; the loader's CPU is the agent CPU row); \
             SONDE_COLLECTORS__MEMORY__HOOK=syscall: the fallback hooks (tp_btf sys_exit, a \
             page-fault perf event)"
                .into(),
        ]);
        Ok(r)
    };
    finish(name, what, run())
}

/// GET on the agent's control socket; the body of a 200 reply.
pub(super) fn control_get(socket: &std::path::Path, path: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: sonde\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_owned())
}

/// (CPU ns, BPF ns) per malloc+free pair of `bin`, pinned to the last CPU,
/// while a `sonde alloc` session tracks it, or (`empty`) while the
/// benchmark-only loader holds no-op programs at the same probe points
/// (the floor; the agent runs then too, so that only the programs differ).
/// The loop waits until the probes are in place; the CPU figure is its first
/// pass, with kernel.bpf_stats off; a second pass with stats on gives the
/// programs' own run time per pair (which then includes two clock reads per
/// run).
fn alloc_session(ctx: &Ctx, bin: &Path, n: &str, empty: bool) -> Result<(f64, f64)> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let a = Agent::start(&ctx.sonde, ctx.work.path(), &[])?;
    // taskset execs the loop: the pid stays the loop's.
    let mut wl = Command::new("taskset")
        .args(["-c", &last_cpu()])
        .arg(bin)
        .args([n, "wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(wl.stdout.take().context("workload stdout")?).lines();
    let ready = lines.next().context("workload exited")??;
    anyhow::ensure!(ready == "ready", "workload said {ready:?}");
    let pid = wl.id().to_string();
    let tracker = if empty {
        let p = Probes::start(&ctx.probes, &["alloc", "--pid", &pid])?;
        // `attached N empty uprobes on pid P`: the floor's probes must be
        // the real ones, at the same points.
        let probes: usize = p
            .attached
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("unexpected loader output {:?}", p.attached))?;
        anyhow::ensure!(probes >= 2, "the loader attached {probes} probes");
        Tracker::Floor(p)
    } else {
        let cli = Command::new(&ctx.sonde)
            .args([
                "alloc", "--pid", &pid, "-d", "10m", "-f", "json", "--socket",
            ])
            .arg(&a.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !control_get(&a.socket, "/api/v1/alloc/sessions")?.contains("tracking") {
            if Instant::now() > deadline {
                bail!("the sonde alloc session did not start within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Tracker::Session(cli)
    };
    let programs_pid = match &tracker {
        Tracker::Floor(p) => p.pid(),
        Tracker::Session(_) => a.pid(),
    };
    let mut stdin = wl.stdin.take().context("workload stdin")?;
    writeln!(stdin, "go")?;
    let first = lines.next().context("workload printed nothing")??;
    let stats = BpfStats::enable()?;
    let (ns0, _) = bpf_run_stats(programs_pid, "kprobe")?;
    writeln!(stdin, "go")?;
    lines.next().context("workload printed nothing")??;
    let (ns1, _) = bpf_run_stats(programs_pid, "kprobe")?;
    drop(stats);
    // End of input ends the loop; a session ends with its target.
    drop(stdin);
    wl.wait()?;
    let pairs: u64 = n.parse()?;
    if let Tracker::Session(cli) = tracker {
        signal(cli.id(), 2);
        let out = cli.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "sonde alloc failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Every pair must have been tracked, or the figure would flatter us.
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let allocs = report["counters"]["allocs"].as_u64().unwrap_or(0);
        anyhow::ensure!(
            allocs >= 2 * pairs,
            "the session saw {allocs} allocations of {}",
            2 * pairs
        );
        let probes = report["probes"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(probes >= 2, "the session attached {probes} probes");
    }
    a.stop()?;
    let cpu = first
        .rsplit([':', ' '])
        .next()
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("workload printed no number: {first:?}"))?;
    Ok((cpu, ns1.saturating_sub(ns0) as f64 / pairs as f64))
}

/// What holds the probes during an `alloc_session` pass.
enum Tracker {
    /// The benchmark-only loader's no-op programs (dropped: detached).
    Floor(Probes),
    /// A `sonde alloc` CLI session.
    Session(Child),
}
