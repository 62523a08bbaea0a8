//! Deployment artifacts, validated offline with the real tools: Kubernetes
//! manifests (kubernetes-validate, yamllint, kustomize), the release
//! tarball, the generated PrometheusRule, and the capability set the
//! DaemonSet grants (the real agent under exactly those capabilities).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Once,
    time::Duration,
};

use sonde_tests::{Agent, run, sonde_bin, text, workspace_root};
use sonde_wire::{
    HealthStatus,
    processes::ProcessInfo,
    status::{FeatureOut, Status},
};

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

/// kubernetes-validate and yamllint, pinned in tests/requirements.txt.
fn python_tools() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for m in ["kubernetes_validate", "yamllint"] {
            let ok = Command::new("python3")
                .args(["-c", &format!("import {m}")])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "python3 cannot import {m}: run `cargo xtask test` (it installs tests/requirements.txt), or `python3 -m pip install -r tests/requirements.txt`"
            );
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

fn feature<'a>(status: &'a Status, name: &str) -> &'a FeatureOut {
    status
        .feature(name)
        .unwrap_or_else(|| panic!("no feature {name} in {status:?}"))
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
    let st: Status = a.api("/api/v1/status");
    let pid = a.pid();
    let eff = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let eff = eff
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap()
        .to_owned();
    assert!(st.ready, "{st:?}\n{}", a.log());
    for c in &st.collectors {
        assert_eq!(
            c.status,
            HealthStatus::Healthy,
            "{c:?} with {caps:?} ({eff})\n{}",
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
        assert!(feature(&st, f).available, "{f}: {st:?}");
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
        let v: Vec<ProcessInfo> = a.api(&format!("/api/v1/processes?pid={opid}"));
        let p = v.into_iter().next()?;
        (p.comm == "sleep").then_some(p)
    });
    let _ = other.kill();
    let _ = other.wait();
    assert!(p.exe.ends_with("/sleep"), "{p:?}");
    a.stop();

    // Without SYS_ADMIN the uprobe PMU refuses perf_event_open: uprobes are
    // reported unavailable while everything else still runs.
    let no_admin: Vec<String> = caps.into_iter().filter(|c| c != "sys_admin").collect();
    let mut a = agent_with_caps(&no_admin);
    let st: Status = a.api("/api/v1/status");
    assert!(st.ready, "{st:?}");
    let up = feature(&st, "uprobe");
    assert!(!up.available, "{st:?}");
    assert!(up.detail.contains("perf_event_open"), "{up:?}");
    a.stop();
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
