//! Deployment artifacts, validated offline with the real tools: Kubernetes
//! manifests (kubernetes-validate, yamllint, kustomize), the systemd unit
//! (systemd-analyze), the release tarball, the generated PrometheusRule and
//! Grafana dashboards, and the capability set the DaemonSet grants (the real
//! agent under exactly those capabilities).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Once,
    time::Duration,
};

use sonde_tests::{Agent, sonde_bin, workspace_root};

#[path = "../../xtask/src/dist.rs"]
mod dist;
#[path = "../../xtask/src/promrule.rs"]
mod promrule;

/// The Kubernetes version manifests are checked against (newest schema the
/// installed kubernetes-validate ships).
const K8S_VERSION: &str = "1.37.0";

fn root() -> PathBuf {
    workspace_root()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// kubernetes-validate and yamllint from PyPI, installed once if missing.
fn python_tools() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let have = |m: &str| {
            Command::new("python3")
                .args(["-c", &format!("import {m}")])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !have("kubernetes_validate") || !have("yamllint") {
            let o = run(Command::new("python3").args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "kubernetes-validate",
                "yamllint",
            ]));
            assert!(o.status.success(), "pip install failed: {}", text(&o));
        }
    });
}

fn kubernetes_validate(files: &[PathBuf]) -> Output {
    run(Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION])
        .args(files))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    v.sort();
    v
}

fn kustomize(dir: &str) -> String {
    let o = run(Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(root()));
    assert!(o.status.success(), "kubectl kustomize {dir}: {}", text(&o));
    String::from_utf8(o.stdout).expect("utf-8")
}

#[test]
fn kubernetes_manifests_pass_kubernetes_validate_and_yamllint() {
    python_tools();
    let dir = root().join("deploy/kubernetes");
    let tmp = tempfile::tempdir().unwrap();
    // The plain files, and what `kubectl apply -k` would apply (both variants).
    let mut files: Vec<PathBuf> = yaml_files(&dir)
        .into_iter()
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    for (name, k) in [
        ("default.yaml", "deploy/kubernetes"),
        ("privileged.yaml", "deploy/kubernetes-privileged"),
    ] {
        let p = tmp.path().join(name);
        std::fs::write(&p, kustomize(k)).unwrap();
        files.push(p);
    }
    let o = kubernetes_validate(&files);
    let out = text(&o);
    assert!(o.status.success(), "kubernetes-validate failed:\n{out}");
    assert!(!out.contains("WARN"), "kubernetes-validate warned:\n{out}");
    // Every resource of both renders was checked against a schema.
    for kind in [
        "namespace/sonde",
        "serviceaccount/sonde",
        "clusterrole/sonde",
        "clusterrolebinding/sonde",
        "configmap/sonde-config",
        "service/sonde-metrics",
        "daemonset/sonde",
    ] {
        assert_eq!(
            out.matches(&format!("passed for resource {kind} ")).count(),
            3,
            "{kind} not validated in the file and both renders:\n{out}"
        );
    }
    let privileged = std::fs::read_to_string(tmp.path().join("privileged.yaml")).unwrap();
    assert!(privileged.contains("privileged: true"), "{privileged}");

    // The validator does reject a wrong DaemonSet (strict: unknown field).
    let bad = tmp.path().join("bad.yaml");
    let ds = std::fs::read_to_string(dir.join("daemonset.yaml")).unwrap();
    std::fs::write(&bad, ds.replace("hostPID: true", "hostPid: true")).unwrap();
    let o = kubernetes_validate(&[bad]);
    assert!(
        !o.status.success(),
        "a misspelled field passed: {}",
        text(&o)
    );

    let o = run(Command::new("python3")
        .args(["-m", "yamllint", "--strict"])
        .args([
            "deploy/kubernetes",
            "deploy/kubernetes-privileged",
            "deploy/kubernetes/prometheus-operator",
        ])
        .current_dir(root()));
    assert!(o.status.success(), "yamllint:\n{}", text(&o));
}

#[test]
fn prometheus_operator_resources_are_well_formed() {
    // kubernetes-validate has no schema for CRDs (ServiceMonitor,
    // PrometheusRule): check they lint, render with kustomize, and have the
    // fields the operator requires.
    python_tools();
    let out = kustomize("deploy/kubernetes/prometheus-operator");
    for needle in [
        "kind: ServiceMonitor",
        "kind: PrometheusRule",
        "apiVersion: monitoring.coreos.com/v1",
        "port: metrics",
        "app.kubernetes.io/component: agent",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in\n{out}");
    }
    let o = run(Command::new("python3")
        .args([
            "-m",
            "yamllint",
            "--strict",
            "deploy/kubernetes/prometheus-operator",
        ])
        .current_dir(root()));
    assert!(o.status.success(), "yamllint:\n{}", text(&o));
}

#[test]
fn prometheus_rule_is_in_sync_with_the_rule_files() {
    // With no deploy/prometheus/*.yml yet the wrapper must hold no groups;
    // once the rule files exist, any drift fails here.
    let want = promrule::render(&root()).expect("render PrometheusRule");
    let have = std::fs::read_to_string(root().join(promrule::OUTPUT)).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of sync with deploy/prometheus/*.yml: run `cargo xtask prometheus-rule`",
        promrule::OUTPUT
    );
    let sources = promrule::sources(&root());
    if sources.is_empty() {
        assert!(have.contains("groups: []"), "{have}");
        return;
    }
    // Parsed as YAML, the wrapper holds exactly the files' groups.
    python_tools();
    let script = "import sys, yaml\n\
        groups = [g for f in sys.argv[2:] for g in yaml.safe_load(open(f))['groups']]\n\
        spec = yaml.safe_load(open(sys.argv[1]))['spec']['groups']\n\
        assert spec == groups, 'PrometheusRule groups differ from the rule files'\n";
    let o = run(Command::new("python3")
        .args(["-c", script])
        .arg(root().join(promrule::OUTPUT))
        .args(&sources));
    assert!(o.status.success(), "{}", text(&o));
}

/// Runs python's yaml on a manifest and prints `expr` (a Python expression
/// over the loaded document `d`).
fn yaml_query(file: &str, expr: &str) -> String {
    python_tools(); // PyYAML comes with yamllint.
    let o = run(Command::new("python3")
        .args([
            "-c",
            &format!("import sys, yaml\nd = yaml.safe_load(open(sys.argv[1]))\nprint({expr})"),
            file,
        ])
        .current_dir(root()));
    assert!(o.status.success(), "python yaml: {}", text(&o));
    String::from_utf8(o.stdout).unwrap().trim_end().to_owned()
}

#[test]
fn configmap_and_default_config_are_accepted_by_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let cm = tmp.path().join("sonde.toml");
    std::fs::write(
        &cm,
        yaml_query(
            "deploy/kubernetes/configmap.yaml",
            "d['data']['sonde.toml']",
        ),
    )
    .unwrap();
    for f in [cm, root().join("deploy/config/sonde.toml")] {
        let o = run(Command::new(sonde_bin())
            .args(["agent", "--check-config"])
            .arg(&f)
            .env_remove("SONDE_CONFIG"));
        assert!(o.status.success(), "{}: {}", f.display(), text(&o));
    }
}

/// The capabilities the DaemonSet adds, as setpriv names (`bpf`, ...).
fn daemonset_caps() -> Vec<String> {
    let caps = yaml_query(
        "deploy/kubernetes/daemonset.yaml",
        "' '.join(d['spec']['template']['spec']['containers'][0]['securityContext']['capabilities']['add'])",
    );
    caps.split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Capabilities in this process's bounding set (setpriv names).
fn bounding_set() -> BTreeSet<String> {
    let o = run(Command::new("setpriv").arg("--dump"));
    let out = text(&o);
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("Capability bounding set: "))
        .unwrap_or_else(|| panic!("no bounding set in setpriv --dump:\n{out}"));
    line.split(',').map(|s| s.trim().to_owned()).collect()
}

fn agent_with_caps(caps: &[String]) -> Agent {
    let list = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let wrapper = vec![
        "setpriv".to_owned(),
        format!("--bounding-set=-all,{list}"),
        "--inh-caps=-all".to_owned(),
    ];
    let a = Agent::spawn_wrapped("", &[], &wrapper);
    a.wait_ready(Duration::from_secs(30));
    a
}

fn feature<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["features"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == name))
        .unwrap_or_else(|| panic!("no feature {name} in {status}"))
}

#[test]
fn daemonset_capabilities_are_enough_and_sys_admin_is_needed_for_uprobes() {
    let _x = sonde_tests::exclusive();
    let wanted = daemonset_caps();
    let here = bounding_set();
    // This machine's own bounding set lacks CAP_SYS_RESOURCE, so the agent
    // runs with what the DaemonSet adds minus what is absent here (only
    // needed for RLIMIT_MEMLOCK before 5.11; this kernel is newer).
    let caps: Vec<String> = wanted
        .iter()
        .filter(|c| here.contains(c.as_str()))
        .cloned()
        .collect();
    for c in [
        "bpf",
        "perfmon",
        "sys_ptrace",
        "dac_read_search",
        "sys_admin",
    ] {
        assert!(
            caps.iter().any(|x| x == c),
            "{c} missing: {caps:?} (here: {here:?})"
        );
    }
    let mut a = agent_with_caps(&caps);
    let st = a.api("/api/v1/status");
    let pid = a.pid();
    let eff = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let eff = eff
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap()
        .to_owned();
    assert_eq!(st["ready"], true, "{st}\n{}", a.log());
    for c in st["collectors"].as_array().unwrap() {
        assert_eq!(
            c["status"],
            "healthy",
            "{c} with {caps:?} ({eff})\n{}",
            a.log()
        );
    }
    for f in [
        "tp_btf",
        "tracepoint",
        "raw_tracepoint",
        "perf_event",
        "uprobe",
        "ringbuf",
    ] {
        assert_eq!(feature(&st, f)["available"], true, "{f}: {st}");
    }
    // Another user's process is fully named: /proc/PID/exe needs SYS_PTRACE.
    let mut other = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args(["sleep", "30"])
        .spawn()
        .expect("spawn sleeper as nobody");
    let opid = other.id();
    let p = sonde_tests::wait_for(Duration::from_secs(5), "the sleeper's exec", || {
        let v = a.api(&format!("/api/v1/processes?pid={opid}"));
        let p = v.as_array()?.first()?.clone();
        (p["comm"] == "sleep").then_some(p)
    });
    let _ = other.kill();
    let _ = other.wait();
    assert!(p["exe"].as_str().unwrap_or("").ends_with("/sleep"), "{p}");
    a.stop();

    // Without SYS_ADMIN the uprobe PMU refuses perf_event_open: uprobes are
    // reported unavailable while everything else still runs.
    let no_admin: Vec<String> = caps.into_iter().filter(|c| c != "sys_admin").collect();
    let mut a = agent_with_caps(&no_admin);
    let st = a.api("/api/v1/status");
    assert_eq!(st["ready"], true, "{st}");
    let up = feature(&st, "uprobe");
    assert_eq!(up["available"], false, "{st}");
    assert!(
        up["detail"]
            .as_str()
            .unwrap_or("")
            .contains("perf_event_open"),
        "{up}"
    );
    a.stop();
}

#[test]
fn systemd_unit_verifies_without_warnings() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        let o = run(Command::new("apt-get").args(["install", "-y", "systemd"]));
        assert!(o.status.success(), "apt-get install systemd: {}", text(&o));
    }
    let tmp = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = std::fs::read_to_string(root().join("deploy/systemd/sonde.service"))
        .unwrap()
        .replace("/usr/local/bin/sonde", &sonde_bin().display().to_string());
    let path = tmp.path().join("sonde.service");
    std::fs::write(&path, &unit).unwrap();
    let o = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    let out = text(&o);
    assert!(
        o.status.success() && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
    for key in [
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "SystemCallFilter=",
    ] {
        assert!(unit.contains(key), "unit lacks {key}");
    }
    // The check is real: an unknown key is reported.
    let bad = tmp.path().join("bad.service");
    std::fs::write(
        &bad,
        unit.replace("ProtectSystem=strict", "ProtectSistem=strict"),
    )
    .unwrap();
    let o = run(Command::new("systemd-analyze").arg("verify").arg(&bad));
    assert!(text(&o).contains("ProtectSistem"), "{}", text(&o));

    // Exposure score of the hardening, as systemd rates it (0 best, 10 worst).
    let o = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path));
    let out = text(&o);
    let score: f64 = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for sonde.service: ").nth(1))
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(score <= 4.0, "exposure {score} > 4.0:\n{out}");
}

#[test]
fn dist_tarball_has_binary_unit_config_and_docs() {
    let tmp = tempfile::tempdir().unwrap();
    let tarball = dist::package(&root(), &sonde_bin(), "0.1.0", tmp.path()).expect("package");
    let name = dist::package_name("0.1.0");
    assert!(
        tarball.ends_with(format!("{name}.tar.gz")),
        "{}",
        tarball.display()
    );
    let o = run(Command::new("tar").arg("tzvf").arg(&tarball));
    let listing = text(&o);
    assert!(o.status.success(), "{listing}");
    for f in [
        "bin/sonde",
        "share/sonde/sonde.service",
        "share/sonde/sonde.toml",
        "share/doc/sonde/README.md",
        "share/doc/sonde/deploy.md",
        "share/doc/sonde/metrics.md",
    ] {
        assert!(
            listing.contains(&format!("{name}/{f}")),
            "no {f} in\n{listing}"
        );
    }
    assert!(
        listing.contains("-rwxr-xr-x 0/0"),
        "binary not executable:\n{listing}"
    );
    // What is inside works: the binary runs and accepts the shipped config.
    let o = run(Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(tmp.path()));
    assert!(o.status.success(), "{}", text(&o));
    let pkg = tmp.path().join(&name);
    let o = run(Command::new(pkg.join("bin/sonde"))
        .args(["agent", "--check-config"])
        .arg(pkg.join("share/sonde/sonde.toml")));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn grafana_dashboards_are_generated_and_use_the_datasource_variable() {
    // The committed JSON is what generate.py writes.
    let tmp = tempfile::tempdir().unwrap();
    let gen_dir = tmp.path().join("grafana");
    std::fs::create_dir(&gen_dir).unwrap();
    std::fs::copy(
        root().join("deploy/grafana/generate.py"),
        gen_dir.join("generate.py"),
    )
    .unwrap();
    let o = run(Command::new("python3").arg(gen_dir.join("generate.py")));
    assert!(o.status.success(), "{}", text(&o));
    let dashboards = dashboards();
    assert_eq!(dashboards.len(), 4, "{dashboards:?}");
    for (path, d) in &dashboards {
        let file = path.file_name().unwrap();
        let fresh = std::fs::read_to_string(gen_dir.join(file)).unwrap();
        let committed = std::fs::read_to_string(path).unwrap();
        assert!(
            fresh == committed,
            "{} differs from generate.py's output: run python3 deploy/grafana/generate.py",
            path.display()
        );
        assert!(
            d["schemaVersion"].as_u64().unwrap() >= 39,
            "{}",
            path.display()
        );
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter()
                .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
            "{}: no datasource variable",
            path.display()
        );
        let mut ids = BTreeSet::new();
        for p in d["panels"].as_array().unwrap() {
            assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id in {p}");
            let g = &p["gridPos"];
            assert!(
                g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
                "{p}"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{p}");
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{p}");
            for t in targets {
                assert!(!t["expr"].as_str().unwrap().is_empty(), "{p}");
            }
        }
    }
}

fn dashboards() -> Vec<(PathBuf, serde_json::Value)> {
    let dir = root().join("deploy/grafana");
    let mut v: Vec<(PathBuf, serde_json::Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let d = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, d)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// PromQL words that are not metric names.
const NOT_METRICS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    // Aggregations may be followed by `by (...)` rather than `(`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Metric names referenced by a PromQL expression: identifiers outside
/// label matchers `{...}`, ranges `[...]`, `by (...)` lists and strings,
/// that are not function calls or keywords.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let mut out = BTreeSet::new();
    let (mut i, mut brace, mut bracket) = (0, 0i32, 0i32);
    let mut skip_parens_after_kw = false;
    let mut paren_skip_depth: Option<i32> = None;
    let mut paren = 0i32;
    while i < b.len() {
        let c = b[i] as char;
        match c {
            '"' | '\'' | '`' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                continue;
            }
            '{' => brace += 1,
            '}' => brace -= 1,
            '[' => bracket += 1,
            ']' => bracket -= 1,
            '(' => {
                paren += 1;
                if skip_parens_after_kw {
                    paren_skip_depth = Some(paren);
                    skip_parens_after_kw = false;
                }
            }
            ')' => {
                if paren_skip_depth == Some(paren) {
                    paren_skip_depth = None;
                }
                paren -= 1;
            }
            _ => {}
        }
        if (c.is_ascii_alphabetic() || c == '_' || c == ':') && (i == 0 || !is_word(b[i - 1])) {
            let start = i;
            while i < b.len() && (is_word(b[i]) || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let prev = expr[..start].trim_end();
            let next = expr[i..].trim_start();
            if brace > 0 || bracket > 0 || paren_skip_depth.is_some() || prev.ends_with('$') {
                continue;
            }
            let lower = word.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                skip_parens_after_kw = true;
                continue;
            }
            if next.starts_with('(') || NOT_METRICS.contains(&lower.as_str()) {
                continue;
            }
            out.insert(word.to_owned());
            continue;
        }
        i += 1;
    }
    out
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `expr:` values of Prometheus rule files (single line or block scalar).
fn rule_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (n, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let Some(v) = t.strip_prefix("expr:") else {
            continue;
        };
        let v = v.trim();
        if v.starts_with('|') || v.starts_with('>') {
            let indent = l.len() - t.len();
            let block: Vec<&str> = lines[n + 1..]
                .iter()
                .take_while(|b| b.trim().is_empty() || b.len() - b.trim_start().len() > indent)
                .map(|b| b.trim())
                .collect();
            out.push(block.join(" "));
        } else {
            out.push(v.trim_matches(|c| c == '"' || c == '\'').to_owned());
        }
    }
    out
}

#[test]
fn promql_metric_name_extraction() {
    let names = metric_names(
        r#"100 * sum by (service_name) (rate(a_total{x=~"5..", le="b"}[$__rate_interval])) / ignoring(le) histogram_quantile(0.9, sum(rate(b_bucket[5m]))) and on(job) up offset 5m"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["a_total", "b_bucket", "up"]
    );
    let exprs = rule_exprs(
        "groups:\n- rules:\n  - alert: A\n    expr: rate(x_total[5m]) > 0\n  - record: r\n    expr: |\n      sum(y)\n        / 2\n    for: 5m\n",
    );
    assert_eq!(exprs, ["rate(x_total[5m]) > 0", "sum(y) / 2"]);
}

/// Every metric the dashboards and the shipped rules query must be served
/// by a live agent. Families from collectors merged later (HTTP, syscalls,
/// profiler, memory, alerts) are missing in this branch.
#[test]
#[ignore = "enabled by the lead after the collectors merge"]
fn dashboard_and_rule_metrics_are_exported_by_the_agent() {
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for (path, d) in dashboards() {
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                for m in metric_names(t["expr"].as_str().unwrap_or_default()) {
                    wanted.insert(format!(
                        "{m}\t{}",
                        path.file_name().unwrap().to_string_lossy()
                    ));
                }
            }
        }
    }
    for f in promrule::sources(&root()) {
        for e in rule_exprs(&std::fs::read_to_string(&f).unwrap()) {
            for m in metric_names(&e) {
                wanted.insert(format!("{m}\t{}", f.display()));
            }
        }
    }
    // A live agent with the Kubernetes identity on (kubelet stub) so its
    // families exist too.
    let pods =
        std::fs::read_to_string(root().join("agent/src/identity/testdata/pods.json")).unwrap();
    let stub = sonde_tests::serve_json_forever(pods);
    let agent = Agent::start(&format!(
        "[kubernetes]\nsource = \"kubelet\"\nurl = \"http://{stub}\"\nrefresh = \"1s\"\n"
    ));
    let m = sonde_tests::wait_for(Duration::from_secs(10), "a pod refresh", || {
        let m = agent.metrics();
        m.contains("sonde_kubernetes_pod_refreshes_total")
            .then_some(m)
    });
    let families: BTreeSet<(String, String)> = m
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (n, t) = l.split_once(' ')?;
            Some((n.to_owned(), t.to_owned()))
        })
        .collect();
    let exported = |name: &str| {
        families.iter().any(|(f, t)| {
            f == name
                || (t == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(f.as_str())))
        })
    };
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !exported(w.split('\t').next().unwrap()))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics queried by dashboards/rules but not exported by the live agent (name, where):\n{}",
        missing
            .iter()
            .map(|s| format!("  {s}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Syscalls in `group` as systemd expands it (nested `@groups` resolved).
fn syscall_group(all: &str, group: &str, out: &mut BTreeSet<String>) {
    let mut in_group = false;
    let mut nested = Vec::new();
    for l in all.lines() {
        if l.starts_with('@') {
            in_group = l.split_whitespace().next() == Some(group);
        } else if in_group && l.starts_with("    ") {
            let name = l.split_whitespace().next().unwrap_or("");
            if name.starts_with('@') {
                nested.push(name.to_owned());
            } else if !name.starts_with('#') && !name.is_empty() {
                out.insert(name.to_owned());
            }
        }
    }
    for g in nested {
        syscall_group(all, &g, out);
    }
}

#[test]
fn systemd_syscall_filter_allows_every_syscall_the_agent_makes() {
    let _x = sonde_tests::exclusive();
    let unit = std::fs::read_to_string(root().join("deploy/systemd/sonde.service")).unwrap();
    let filter = unit
        .lines()
        .find_map(|l| l.strip_prefix("SystemCallFilter="))
        .expect("the unit has a SystemCallFilter");
    let o = run(Command::new("systemd-analyze").args(["syscall-filter", "--no-pager"]));
    let groups = text(&o);
    let mut allowed = BTreeSet::new();
    for item in filter.split_whitespace() {
        if item.starts_with('@') {
            syscall_group(&groups, item, &mut allowed);
        } else {
            allowed.insert(item.to_owned());
        }
    }
    assert!(
        allowed.contains("openat") && allowed.contains("mount"),
        "{allowed:?}"
    );

    // Trace the agent through start-up, API use, an exec and shutdown.
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("strace.txt");
    let wrapper: Vec<String> = ["strace", "-f", "-qq", "-o"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([trace.display().to_string(), "--".to_owned()])
        .collect();
    let mut a = Agent::spawn_wrapped("", &[], &wrapper);
    a.wait_ready(Duration::from_secs(60));
    let _ = a.api("/api/v1/status");
    let _ = a.metrics();
    run(&mut Command::new("/bin/true"));
    // The child is strace; stop the agent it runs, and strace follows.
    let strace_pid = a.pid();
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children")).unwrap();
    let agent_pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: kill(2) with a valid signal on the agent we started.
    unsafe { libc::kill(agent_pid, libc::SIGTERM) };
    a.stop();
    let log = std::fs::read_to_string(&trace).unwrap();
    let used: BTreeSet<String> = log
        .lines()
        .filter_map(|l| {
            let call = l.split_once(' ')?.1.trim_start();
            let name = call.split_once('(')?.0;
            (!name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
            .then(|| name.to_owned())
        })
        .collect();
    assert!(
        used.contains("bpf") && used.contains("perf_event_open"),
        "{used:?}"
    );
    let denied: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        denied.is_empty(),
        "the unit's SystemCallFilter would deny {denied:?} (agent used {} syscalls)",
        used.len()
    );
}
