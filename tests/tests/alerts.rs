//! The built-in alert engine end to end: a rule driven on demand (a burst of
//! real processes seen by the process collector) reaches a real Alertmanager
//! 0.25 with its labels and annotations, survives an Alertmanager restart,
//! and resolves there and at a webhook that was down while it resolved.

use std::{
    net::SocketAddr,
    process::{Command, Output},
    time::Duration,
};

use sonde_tests::{
    Agent, free_port, metric_value,
    peers::{Capture, Peer, ensure_installed, get_json},
    sonde_bin, wait_for, wait_until,
    workload::{Workload, build_c},
};
use sonde_wire::alerts::{AlertState, AlertsReport, ReceiverKind};

const RULE: &str = "SondeE2EProcessSurge";
const SURGE: usize = 200;

fn start_alertmanager(dir: &std::path::Path, port: u16, hook: SocketAddr, run: u32) -> Peer {
    let cfg = dir.join("alertmanager.yml");
    std::fs::write(
        &cfg,
        format!(
            "route:\n  receiver: hook\n  group_by: ['alertname']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: hook\n    webhook_configs:\n      - url: http://{hook}/am\n        send_resolved: true\n"
        ),
    )
    .expect("write alertmanager.yml");
    // A fresh data dir per run: Alertmanager keeps alerts only in memory, so
    // what it shows after a restart is what sonde sent again.
    let data = dir.join(format!("am-data-{run}"));
    std::fs::create_dir_all(&data).expect("am data dir");
    let am = Peer::spawn(
        Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // No gossip cluster: a single loopback instance.
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn"),
        &dir.join(format!("alertmanager-{run}.log")),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_for(Duration::from_secs(30), "alertmanager ready", || {
        sonde_tests::http_get(addr, "/-/ready")
            .ok()
            .filter(|(c, _)| *c == 200)
    });
    am
}

/// Our alert as Alertmanager's v2 API lists it (active ones only).
fn am_alert(am: SocketAddr) -> Option<serde_json::Value> {
    get_json(am, "/api/v2/alerts")?
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == RULE)
        .cloned()
}

fn cli_json(out: Output) -> AlertsReport {
    assert!(
        out.status.success(),
        "sonde alerts failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("sonde alerts -o json")
}

fn has_status(c: &Capture, path: &str, status: &str) -> bool {
    count_status(c, path, status) > 0
}

/// Notifications `c` received on `path` holding our alert in `status`.
fn count_status(c: &Capture, path: &str, status: &str) -> usize {
    c.all()
        .iter()
        .filter(|x| {
            x.path == path
                && x.body["alerts"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|a| a["labels"]["alertname"] == RULE && a["status"] == status)
                })
        })
        .count()
}

#[test]
fn alert_fires_into_alertmanager_survives_its_restart_and_resolves() {
    let _x = sonde_tests::exclusive();
    ensure_installed("prometheus-alertmanager", "prometheus-alertmanager");
    let work = tempfile::tempdir().expect("tempdir");
    // Alertmanager's own webhook notifications, and sonde's webhook.
    let am_hook = Capture::start();
    let mut sonde_hook = Capture::start();
    let am_port = free_port();
    let am_addr: SocketAddr = format!("127.0.0.1:{am_port}").parse().expect("addr");
    let mut am = start_alertmanager(work.path(), am_port, am_hook.addr, 1);

    // The rule: the number of live processes grew by more than SURGE/2 over
    // the lowest value of the last 10 minutes. Other activity on the machine
    // moves the baseline by far less; our burst of SURGE sleepers moves it by SURGE.
    let config = format!(
        r#"
[collectors.process]
exited_grace = "1s"

[alerts]
interval = "1s"
resend_interval = "2s"
builtin_rules = false
retry_initial = "200ms"
retry_max = "1s"
alertmanager_urls = ["http://{am_addr}"]

[[alerts.webhooks]]
url = "http://{hook}/sonde"

[[alerts.rules]]
name = "{RULE}"
expr = "sonde_processes_tracked - min_over_time(sonde_processes_tracked[10m])"
op = ">"
threshold = {threshold}
for = "1s"
severity = "critical"
labels = {{ team = "e2e" }}
annotations = {{ summary = "{{{{ $value }}}} more processes than the baseline", description = "surge of {{{{ $value | humanize }}}} processes" }}
"#,
        hook = sonde_hook.addr,
        threshold = SURGE / 2,
    );
    let agent = Agent::start(&config);

    // Nothing fires at rest (over at least two evaluations).
    let r = wait_until(Duration::from_secs(15), "two rule evaluations", || {
        let r = cli_json(agent.cli(&["alerts", "-o", "json"]));
        if r.evaluations >= 2 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    assert_eq!(r.rules, 1, "{r:?}");
    assert!(r.alerts.is_empty(), "alert active before the surge: {r:?}");

    let sleeper = build_c("sleeper", &["-O1"]);
    let mut surge: Vec<Workload> = (0..SURGE)
        .map(|_| Workload::spawn(&mut Command::new(&sleeper)))
        .collect();

    // Firing in sonde, then in Alertmanager with our labels and annotations.
    let a = wait_for(
        Duration::from_secs(30),
        "alert firing in Alertmanager",
        || am_alert(am_addr),
    );
    assert_eq!(a["labels"]["severity"], "critical", "{a}");
    assert_eq!(a["labels"]["team"], "e2e", "{a}");
    assert_eq!(a["status"]["state"], "active", "{a}");
    let summary = a["annotations"]["summary"].as_str().unwrap_or_default();
    let n: f64 = summary
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("summary not templated with the value: {a}"));
    assert!(n > (SURGE / 2) as f64, "{a}");
    assert!(
        a["annotations"]["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("surge of ")),
        "{a}"
    );
    let r = cli_json(agent.cli(&["alerts", "-o", "json"]));
    let mine = r
        .alerts
        .first()
        .unwrap_or_else(|| panic!("no alert: {r:?}"));
    assert_eq!(mine.name, RULE, "{r:?}");
    assert_eq!(mine.state, AlertState::Firing, "{r:?}");
    assert!(mine.value.unwrap_or(0.0) > (SURGE / 2) as f64, "{r:?}");
    let table = agent.cli(&["alerts"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(RULE) && table.contains("firing"), "{table}");
    let m = agent.metrics();
    assert_eq!(
        metric_value(
            &m,
            &format!("sonde_alerts{{alertname=\"{RULE}\",severity=\"critical\",state=\"firing\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    wait_for(
        Duration::from_secs(15),
        "Alertmanager notifying the firing alert",
        || has_status(&am_hook, "/am", "firing").then_some(()),
    );
    wait_for(
        Duration::from_secs(15),
        "sonde's webhook getting it",
        || has_status(&sonde_hook, "/sonde", "firing").then_some(()),
    );

    // Alertmanager goes away: deliveries fail, are counted and shown.
    am.stop();
    let failed = format!(
        "sonde_alert_notifications_failed_total{{receiver=\"http://{am_addr}/api/v2/alerts\"}}"
    );
    wait_for(Duration::from_secs(15), "failed deliveries counted", || {
        metric_value(&agent.metrics(), &failed).filter(|v| *v > 0.0)
    });
    let r = cli_json(agent.cli(&["alerts", "-o", "json"]));
    let am_status = r
        .receivers
        .iter()
        .find(|x| x.kind == Some(ReceiverKind::Alertmanager))
        .expect("alertmanager receiver in report");
    assert!(
        am_status.failed > 0 && am_status.last_error.is_some(),
        "{r:?}"
    );

    // A new Alertmanager (empty memory) learns the alert again from the re-sends.
    let firing_before = count_status(&am_hook, "/am", "firing");
    let am = start_alertmanager(work.path(), am_port, am_hook.addr, 2);
    let a = wait_for(
        Duration::from_secs(20),
        "alert back in the restarted Alertmanager",
        || am_alert(am_addr),
    );
    assert_eq!(a["labels"]["team"], "e2e", "{a}");
    // The new instance notifies the firing group, so it will notify its resolution.
    wait_until(
        Duration::from_secs(20),
        "the restarted Alertmanager notifying the firing alert",
        || {
            let n = count_status(&am_hook, "/am", "firing");
            if n > firing_before {
                Ok(())
            } else {
                Err(format!(
                    "{n} firing notifications, {firing_before} before the restart"
                ))
            }
        },
    );

    // sonde's webhook is down while the condition clears: nothing is lost.
    sonde_hook.stop();
    surge.clear();
    let r = wait_for(Duration::from_secs(30), "alert resolved in sonde", || {
        let r = cli_json(agent.cli(&["alerts", "--all", "-o", "json"]));
        let resolved = r.alerts.is_empty()
            && r.history
                .iter()
                .any(|x| x.name == RULE && x.state == AlertState::Resolved);
        resolved.then_some(r)
    });
    assert!(
        r.history.first().is_some_and(|h| h.resolved_at.is_some()),
        "{r:?}"
    );
    let table = agent.cli(&["alerts", "--all"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("history") && table.contains("resolved"),
        "{table}"
    );

    // Alertmanager saw it resolve: gone from its active alerts, and its own
    // webhook got the resolved notification.
    wait_for(Duration::from_secs(20), "resolved in Alertmanager", || {
        (am_alert(am_addr).is_none() && has_status(&am_hook, "/am", "resolved")).then_some(())
    });
    // sonde tried to deliver the resolution to its webhook while it was down.
    wait_until(
        Duration::from_secs(20),
        "a failed delivery to the stopped webhook",
        || {
            let r = cli_json(agent.cli(&["alerts", "--all", "-o", "json"]));
            let hook = r
                .receivers
                .into_iter()
                .find(|x| x.kind == Some(ReceiverKind::Webhook));
            if hook.as_ref().is_some_and(|h| h.failed > 0) {
                Ok(())
            } else {
                Err(format!("{hook:?}"))
            }
        },
    );
    assert!(!has_status(&sonde_hook, "/sonde", "resolved"));
    // The webhook comes back and receives the resolution it missed.
    sonde_hook.restart();
    wait_for(
        Duration::from_secs(20),
        "resolved notification delivered after the webhook outage",
        || has_status(&sonde_hook, "/sonde", "resolved").then_some(()),
    );
    drop(am);
}

#[test]
fn bad_rules_are_rejected_at_startup_naming_the_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "expr = \"rate(sonde_no_such_metric_total[5m])\"",
            "expr: at column 6: unknown metric `sonde_no_such_metric_total`",
        ),
        (
            "expr = \"sonde_processes_tracked\"\nfor = \"5 minutes\"",
            "for: duration",
        ),
        (
            "expr = \"sonde_processes_tracked\"\nannotations = { summary = \"{{ $valeu }}\" }",
            "annotations: summary: unknown template variable",
        ),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(
            &path,
            format!("[[alerts.rules]]\nname = \"Ok\"\nexpr = \"sonde_collector_up\"\nthreshold = 1\n\n[[alerts.rules]]\nname = \"Broken{i}\"\nthreshold = 1\n{body}\n"),
        )
        .expect("write");
        for args in [
            vec!["agent", "--check-config", path.to_str().expect("utf8")],
            vec!["agent", "--config", path.to_str().expect("utf8")],
        ] {
            let out = Command::new(sonde_bin())
                .args(&args)
                .output()
                .expect("run sonde");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(
                err.contains(&format!("alerts.rules[1] (\"Broken{i}\")")) && err.contains(want),
                "{args:?}: want {want:?} in: {err}"
            );
        }
    }
}
