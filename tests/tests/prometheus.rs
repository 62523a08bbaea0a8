//! The shipped Prometheus rules (deploy/prometheus/) and a real Prometheus
//! 2.42 scraping the agent on loopback.

use std::{net::SocketAddr, process::Command, time::Duration};

use sonde_tests::{
    Agent, free_port,
    peers::{Peer, ensure_installed, get_json},
    wait_for, workspace_root,
};

fn rule_files() -> Vec<String> {
    let dir = workspace_root().join("deploy/prometheus");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .expect("deploy/prometheus")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    assert!(v.len() >= 2, "rule files missing in {}", dir.display());
    v
}

fn promtool(args: &[String]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn shipped_rules_pass_promtool_check_and_unit_tests() {
    ensure_installed("promtool", "prometheus");
    let mut args = vec!["check".to_owned(), "rules".to_owned()];
    args.extend(rule_files());
    let out = promtool(&args);
    assert!(out.contains("SUCCESS"), "{out}");

    let tests_dir = workspace_root().join("deploy/prometheus/tests");
    let mut tests: Vec<String> = std::fs::read_dir(&tests_dir)
        .expect("deploy/prometheus/tests")
        .flatten()
        .map(|e| e.path().display().to_string())
        .filter(|p| p.ends_with(".yml"))
        .collect();
    tests.sort();
    assert!(!tests.is_empty());
    // Every alert of the shipped rules has unit tests.
    let rules = std::fs::read_to_string(workspace_root().join("deploy/prometheus/sonde-rules.yml"))
        .expect("sonde-rules.yml");
    let all_tests: String = tests
        .iter()
        .map(|t| std::fs::read_to_string(t).expect("test file"))
        .collect();
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let cases = all_tests.matches(&format!("alertname: {name}\n")).count();
        assert!(
            cases >= 2,
            "alert {name} needs a firing and a not-firing test case, has {cases}"
        );
    }
    let mut args = vec!["test".to_owned(), "rules".to_owned()];
    args.extend(tests);
    let out = promtool(&args);
    assert!(out.contains("SUCCESS") && !out.contains("FAILED"), "{out}");
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Instant query; the result vector (None until Prometheus answers).
fn query(prom: SocketAddr, q: &str) -> Option<Vec<serde_json::Value>> {
    let v = get_json(prom, &format!("/api/v1/query?query={}", encode(q)))?;
    v["data"]["result"].as_array().cloned()
}

fn value(s: &serde_json::Value) -> f64 {
    s["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn prometheus_scrapes_the_agent_and_loads_the_shipped_rules() {
    ensure_installed("prometheus", "prometheus");
    let agent = Agent::start("[alerts]\ninterval = \"1s\"\n");
    let work = tempfile::tempdir().expect("tempdir");
    let cfg = work.path().join("prometheus.yml");
    let rules: Vec<String> = rule_files().iter().map(|f| format!("  - {f}\n")).collect();
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\
             scrape_configs:\n  - job_name: sonde\n    static_configs:\n      - targets: ['{}']\n",
            rules.concat(),
            agent.addr
        ),
    )
    .expect("write prometheus.yml");
    let port = free_port();
    let prom: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let p = Peer::spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .arg("--log.level=warn"),
        &work.path().join("prometheus.log"),
    );
    wait_for(Duration::from_secs(60), "prometheus ready", || {
        sonde_tests::http_get(prom, "/-/ready")
            .ok()
            .filter(|(c, _)| *c == 200)
    });

    // The target is up and sonde's series are queryable.
    let up = wait_for(
        Duration::from_secs(30),
        "sonde scraped by Prometheus",
        || query(prom, "up{job=\"sonde\"} == 1").filter(|r| !r.is_empty()),
    );
    assert_eq!(up.len(), 1, "{up:?}");
    for (q, check) in [
        ("sonde_build_info", None),
        ("sonde_collector_up{collector=\"process\"}", Some(1.0)),
        ("sonde_processes_tracked", None),
        ("sonde_process_execs_total", None),
        ("process_resident_memory_bytes{job=\"sonde\"}", None),
        ("sonde_alert_evaluation_duration_seconds_count", None),
    ] {
        let r = wait_for(Duration::from_secs(15), q, || {
            query(prom, q).filter(|r| !r.is_empty())
        });
        let v = value(&r[0]);
        match check {
            Some(want) => assert_eq!(v, want, "{q}: {r:?}"),
            None => assert!(v > 0.0, "{q} should be positive: {r:?}"),
        }
    }

    // Every shipped rule loaded and evaluates without error.
    let groups = wait_for(Duration::from_secs(30), "rules evaluated", || {
        let v = get_json(prom, "/api/v1/rules")?;
        let groups = v["data"]["groups"].as_array()?.clone();
        let all_ok = groups.iter().all(|g| {
            g["rules"]
                .as_array()
                .is_some_and(|r| r.iter().all(|r| r["health"] == "ok"))
        });
        (all_ok && !groups.is_empty()).then_some(groups)
    });
    let names: Vec<&str> = groups.iter().filter_map(|g| g["name"].as_str()).collect();
    for want in [
        "sonde-red",
        "sonde-slo",
        "sonde-self",
        "sonde-http-recording",
        "sonde-slo-recording",
    ] {
        assert!(names.contains(&want), "group {want} not loaded: {names:?}");
    }
    let n_rules: usize = groups
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(n_rules, 36, "{groups:?}");
    // The agent is healthy: its self-health alerts are quiet.
    let alerts = get_json(prom, "/api/v1/alerts").expect("alerts API");
    let firing: Vec<&serde_json::Value> = alerts["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| {
            matches!(
                a["labels"]["alertname"].as_str(),
                Some("SondeAgentDown" | "SondeCollectorDown")
            )
        })
        .collect();
    assert!(firing.is_empty(), "{firing:?}\n{}", p.log());
}
