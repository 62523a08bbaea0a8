//! The benchmark harness itself works: `cargo xtask bench --quick` runs every
//! scenario, reports figures for those whose runs succeeded, and refuses to
//! report (with a reason) those whose runs failed. No figure is asserted
//! here: performance goals live in the benchmarks, not in tests.

use std::process::Command;

use sonde_tests::{require_root, sonde_bin, workspace_root};

#[test]
fn quick_bench_reports_or_refuses_every_scenario() {
    require_root();
    let _guard = sonde_tests::exclusive();
    let out_dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "bench",
            "--quick",
            // One repetition runs every variant of every scenario, which is
            // what this test checks; the pairing, range and verdict logic
            // has unit tests in xtask (bench/stats.rs, bench/report.rs).
            // Two doubled this test's time (274 s) in a 30-minute suite.
            "--reps",
            "1",
            "--bin",
        ])
        .arg(sonde_bin())
        .arg("--out")
        .arg(out_dir.path())
        .current_dir(workspace_root())
        .output()
        .expect("run cargo xtask bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo xtask bench --quick failed:\n{stderr}"
    );
    eprintln!("bench --quick took {:.0?}", started.elapsed());

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.path().join("benchmarks.json")).unwrap(),
    )
    .unwrap();
    let md = std::fs::read_to_string(out_dir.path().join("benchmarks.md")).unwrap();
    let scenarios = json["scenarios"].as_array().expect("scenarios");
    let names: Vec<&str> = scenarios
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "syscalls",
            "http",
            "profiler",
            "python",
            "offcpu",
            "alloc",
            "footprint"
        ],
        "{json}"
    );
    for s in scenarios {
        let name = s["name"].as_str().unwrap();
        match s["failed"].as_str() {
            Some(why) => {
                assert!(!why.is_empty(), "{name}: refused without a reason");
                assert!(
                    s["metrics"].as_array().unwrap().is_empty(),
                    "{name}: failed but reports figures"
                );
                assert!(
                    md.contains(&format!("**Not reported**: {why}")),
                    "{name} not marked in markdown"
                );
            }
            None => {
                let metrics = s["metrics"].as_array().unwrap();
                assert!(!metrics.is_empty(), "{name}: no figures");
                for m in metrics {
                    for v in m["variants"].as_array().unwrap() {
                        let summary = &v[1];
                        let median = summary["median"].as_f64().unwrap_or(f64::NAN);
                        assert!(
                            median.is_finite() && median >= 0.0,
                            "{name}: bad median {v}"
                        );
                        assert!(summary["n"].as_u64().unwrap() >= 1);
                        assert!(
                            summary["min"].as_f64().unwrap() <= median
                                && median <= summary["max"].as_f64().unwrap()
                        );
                    }
                }
            }
        }
    }
    // Every scenario needs only what this machine has: each must be reported.
    for must in [
        "syscalls",
        "http",
        "profiler",
        "offcpu",
        "alloc",
        "footprint",
    ] {
        let s = scenarios.iter().find(|s| s["name"] == must).unwrap();
        assert!(
            s["failed"].is_null(),
            "{must} was not reported: {}",
            s["failed"]
        );
    }
}
