//! What ships is the product only: the `sonde` binary embeds no benchmark
//! program or map (those live in ebpf/sonde-bench-ebpf, loaded by
//! xtask/bench-probes), and its config, CLI and control API offer no
//! benchmark mode. Needs no root: nothing is loaded.

use std::{
    collections::HashSet,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use sonde_tests::sonde_bin;

/// The benchmark programs and maps by name, as they were once embedded.
fn is_bench_name(token: &str) -> bool {
    let variant = |t: &str| {
        t.strip_prefix("bench_")
            .and_then(|r| r.strip_suffix("_enter").or_else(|| r.strip_suffix("_exit")))
            .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_lowercase()))
    };
    variant(token)
        || [
            "syscalls_floor_",
            "http_floor_",
            "mem_floor_",
            "alloc_noop",
            "BENCH_",
        ]
        .iter()
        .any(|p| token.starts_with(p))
}

/// Every run of identifier characters in the file: program, map and
/// section names sit in the embedded objects' string tables as such runs.
fn tokens(bytes: &[u8]) -> HashSet<&str> {
    bytes
        .split(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-'))
        .filter(|t| t.len() >= 6)
        .filter_map(|t| std::str::from_utf8(t).ok())
        .collect()
}

#[test]
fn the_binary_embeds_no_benchmark_program_or_mode() {
    let bin = sonde_bin();
    let bytes = std::fs::read(&bin).unwrap();
    let tokens = tokens(&bytes);
    // The scan works: the real programs' names are found.
    for real in [
        "syscalls_enter_raw",
        "http_sock_send",
        "alloc_malloc",
        "mem_fault_btf",
    ] {
        assert!(
            tokens.contains(real),
            "{real} not found in {}",
            bin.display()
        );
    }
    let mut found: Vec<&str> = tokens
        .iter()
        .copied()
        .filter(|t| is_bench_name(t))
        .collect();
    // The former CLI and control-API switches.
    found.extend(
        ["bench-floor", "empty_probes", "empty-probes"]
            .into_iter()
            .filter(|t| tokens.contains(t)),
    );
    found.sort_unstable();
    assert!(
        found.is_empty(),
        "{} carries benchmark code: {found:?}",
        bin.display()
    );
}

/// Runs `sonde args`, killing it after 20 s: a binary that still had a
/// benchmark mode would attach and wait for a signal.
fn sonde_bounded(args: &[&str]) -> Output {
    let mut child = Command::new(sonde_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sonde {args:?} was accepted and ran: a benchmark mode is still there");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn benchmark_modes_are_refused() {
    // Not even hidden: unknown to the CLI.
    let out = sonde_bounded(&["bench-floor"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unrecognized subcommand 'bench-floor'"),
        "{err}"
    );
    let out = sonde_bounded(&["alloc", "--pid", "1", "--empty-probes"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'--empty-probes'"), "{err}");

    // The effective config shows no benchmark mode.
    let out = Command::new(sonde_bin())
        .args(["agent", "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.contains("[collectors.http]"), "{text}");
    assert!(
        !text.contains("floor") && !text.contains("bench") && !text.contains("empty_probes"),
        "{text}"
    );

    // A floor hook is a config error naming the key, in a file or the
    // environment, for both collectors that had one.
    let dir = tempfile::tempdir().unwrap();
    for (section, value) in [
        ("http", "floor"),
        ("http", "floor_read"),
        ("memory", "floor"),
    ] {
        let file = dir.path().join("sonde.toml");
        std::fs::write(
            &file,
            format!("[collectors.{section}]\nhook = \"{value}\"\n"),
        )
        .unwrap();
        let out = Command::new(sonde_bin())
            .args(["agent", "--check-config"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{section}.hook = {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("line 2") && err.contains(&format!("hook = \"{value}\"")),
            "{err}"
        );
        assert!(err.contains(&format!("unknown variant `{value}`")), "{err}");

        let var = format!("SONDE_COLLECTORS__{}__HOOK", section.to_uppercase());
        let out = Command::new(sonde_bin())
            .args(["agent", "--check-config", "/dev/null"])
            .env(&var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&var) && err.contains(&format!("collectors.{section}.hook")),
            "{err}"
        );
    }
}
