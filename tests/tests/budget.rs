//! The verifier budget of every eBPF program the agent loads.
//!
//! The kernel build of these machines changed under the project, and once
//! a program that had verified hit the verifier's 1,000,000-instruction
//! limit on the next build. This test loads every program on this kernel:
//! the hook sets the kernel prefers, the fallbacks (loaded, not attached,
//! with `SONDE_VERIFY_FALLBACKS=1`; `collectors.memory.hook = "syscall"`
//! for the memory collector's), and the alloc session's uprobes, then
//! checks each program's figure from `sonde_ebpf_program_verified_insns`
//! against its bound and prints the table.

use std::{collections::BTreeMap, process::Command, time::Duration};

use sonde_tests::{Agent, exclusive, workload::Workload, workspace_root};

const LIMIT: u64 = 1_000_000;

/// A quarter of the limit: a kernel build that costs a program 4x more
/// verifier work still loads it, and the test fails long before that.
const DEFAULT_BOUND: u64 = LIMIT / 4;

/// Programs with their own bound, and why.
const BOUNDS: &[(&str, u64, &str)] = &[
    (
        "profile_cpu",
        // The DWARF unwinder's and the CPython walk's bounded loops, the
        // walk's name-hash read and the route tag: 108,302 on
        // 6.18.44-fc-v1300 (84,116 before the route tag and the walk's
        // outcome moved to the caller, 63,084 before the Python walk); it is
        // the program that once hit the limit, so it gets the tightest
        // margin that still leaves about 2x room for kernel drift.
        220_000,
        "DWARF unwinder, CPython walk, route tag (108k on 6.18.44-fc-v1300)",
    ),
    (
        "profile_offcpu",
        // The off-CPU sched_switch program runs the same unwinder and
        // Python walk (profile::stack_key) and route tag: 24,579 on
        // 6.18.44-fc-v1300 (42,181 before its pending entries moved to
        // task-local storage, 21,479 before thinning).
        100_000,
        "DWARF unwinder, CPython walk, route tag off CPU (25k on 6.18.44-fc-v1300)",
    ),
];

/// Every entry point of the agent's eBPF objects, from the sources: the
/// name after a program attribute, and the first argument of each use of
/// a `macro_rules!` whose body has one (`enter!(http_enter_read, ..)`).
/// The feature-probe object is left out (empty programs loaded once by
/// features.rs).
fn programs_in_sources() -> Vec<String> {
    const ATTRS: &[&str] = &[
        "#[tracepoint",
        "#[raw_tracepoint",
        "#[btf_tracepoint",
        "#[uprobe",
        "#[uretprobe",
        "#[perf_event",
    ];
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let dir = workspace_root().join("ebpf/sonde-ebpf/src/bin");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("ebpf bin dir") {
        let path = entry.expect("dir entry").path();
        if path.file_stem().is_some_and(|s| s == "sonde-probe") {
            continue;
        }
        let src = std::fs::read_to_string(&path).expect("read ebpf source");
        let mut after_attr = false;
        let mut in_macro: Option<String> = None;
        let mut program_macros: Vec<String> = Vec::new();
        for line in src.lines() {
            let l = line.trim();
            if let Some(m) = l.strip_prefix("macro_rules!") {
                in_macro = Some(ident(m));
                continue;
            }
            if in_macro.is_some() && line.starts_with('}') {
                in_macro = None;
                continue;
            }
            if ATTRS.iter().any(|a| l.starts_with(a)) {
                match &in_macro {
                    Some(m) => program_macros.push(m.clone()),
                    None => after_attr = true,
                }
            } else if after_attr && let Some((_, rest)) = l.split_once("fn ") {
                names.push(ident(rest));
                after_attr = false;
            } else if in_macro.is_none()
                && let Some(m) = program_macros
                    .iter()
                    .find(|m| l.starts_with(&format!("{m}!(")))
            {
                names.push(ident(&l[m.len() + 2..]));
            }
        }
    }
    names.sort();
    assert!(
        names.len() > 20 && names.iter().all(|n| !n.is_empty()),
        "programs not parsed from {dir:?}: {names:?}"
    );
    names
}

/// `program -> verified instructions` from the agent's metrics.
fn verified(agent: &Agent) -> BTreeMap<String, u64> {
    let prefix = "sonde_ebpf_program_verified_insns{program=\"";
    agent
        .metrics()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (name, v) = rest.split_once("\"} ")?;
            Some((name.to_owned(), v.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

fn bound(program: &str) -> (u64, &'static str) {
    BOUNDS
        .iter()
        .find(|(p, _, _)| *p == program)
        .map(|(_, b, why)| (*b, *why))
        .unwrap_or((DEFAULT_BOUND, "25% of the limit"))
}

#[test]
fn every_program_stays_well_inside_the_verifier_budget() {
    let _x = exclusive();
    let env = [("SONDE_VERIFY_FALLBACKS", "1")];
    let mut seen = BTreeMap::new();
    // The preferred hooks of every collector, every fallback set through
    // attach_first, and an alloc session's uprobes.
    {
        // Off-CPU on whatever its default: its program must be verified.
        let agent = Agent::start_with_env(
            "[collectors.syscalls]\nenabled = true\n[collectors.profile]\noff_cpu = true\n",
            &env,
        );
        let wl = Workload::spawn(Command::new("sleep").arg("30"));
        std::thread::sleep(Duration::from_millis(200));
        let pid = wl.pid().to_string();
        let out = agent.cli(&["alloc", "--pid", &pid, "-d", "1s"]);
        assert!(
            out.status.success(),
            "sonde alloc: {}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            agent.log()
        );
        seen.extend(verified(&agent));
    }
    // The memory collector's syscall hooks (and, loaded only, its
    // per-syscall tracepoints) and page-fault perf event.
    {
        let agent = Agent::start_with_env(
            "[collectors.syscalls]\nenabled = true\n[collectors.memory]\nhook = \"syscall\"\n",
            &env,
        );
        for (p, n) in verified(&agent) {
            let e = seen.entry(p).or_insert(0);
            *e = (*e).max(n);
        }
    }

    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("verified instructions per program on {}", release.trim());
    println!("{:<24} {:>10} {:>10}  bound", "program", "insns", "% limit");
    let mut bad = Vec::new();
    // Programs the agent loaded that the source scan missed are checked too.
    let mut all = programs_in_sources();
    all.extend(seen.keys().cloned());
    all.sort();
    all.dedup();
    for p in all {
        let (b, why) = bound(&p);
        match seen.get(&p) {
            Some(&n) => {
                println!(
                    "{p:<24} {n:>10} {:>9.2}%  < {b} ({why})",
                    n as f64 * 100.0 / LIMIT as f64
                );
                if n == 0 {
                    bad.push(format!("{p}: the kernel reported no figure"));
                } else if n >= b {
                    bad.push(format!("{p}: {n} verified instructions, bound {b} ({why})"));
                }
            }
            None => {
                println!("{p:<24} {:>10}", "not loaded");
                bad.push(format!("{p}: not loaded by any agent run"));
            }
        }
    }
    assert!(bad.is_empty(), "verifier budget:\n{}", bad.join("\n"));
}
