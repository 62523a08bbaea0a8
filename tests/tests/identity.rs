//! Container and pod identity end to end: a workload runs in a cgroup v2
//! directory shaped like a containerd container's; the agent derives the
//! container id from /proc/PID/cgroup and names the pod from a kubelet
//! `/pods` payload served on loopback (the one stub allowed: no cluster here).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use sonde_tests::{Agent, require_root, serve_json_forever, wait_for};
use sonde_wire::processes::ProcessInfo;

const ID: &str = "5d0c7e2a9b4f4e61a8c3d2b1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a39281";

/// Where cgroup v2 is mounted: /sys/fs/cgroup on unified hosts,
/// /sys/fs/cgroup/unified on hybrid ones (like this machine).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mounts
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            right
                .starts_with("cgroup2 ")
                .then(|| PathBuf::from(mount_point))
        })
        .expect("cgroup v2 must be mounted (as /sys/fs/cgroup or /sys/fs/cgroup/unified)")
}

/// The test's cgroup, removed (after its processes are gone) on drop.
struct Cgroup {
    slice: PathBuf,
    scope: PathBuf,
    child: Option<Child>,
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // rmdir fails while a process is still inside; the kill above waited.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.scope).is_ok() || !self.scope.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&self.slice);
    }
}

fn pods_payload(uid: &str) -> String {
    serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": [{
            "metadata": {
                "name": "checkout-7d9f8b6c5d-x2k4p",
                "namespace": "shop",
                "uid": uid,
                "labels": {"app.kubernetes.io/name": "checkout"}
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "checkout:1"}]},
            "status": {
                "phase": "Running",
                "containerStatuses": [{
                    "name": "app",
                    "ready": true,
                    "restartCount": 0,
                    "image": "checkout:1",
                    "imageID": "",
                    "containerID": format!("containerd://{ID}")
                }]
            }
        }]
    })
    .to_string()
}

#[test]
fn process_in_container_cgroup_gets_container_id_and_pod_identity() {
    require_root();
    let uid = "6a0c1f52-9a8b-4c3d-8e2f-1b0a9c8d7e6f";
    let stub = serve_json_forever(pods_payload(uid));
    let mut agent = Agent::start(&format!(
        "[kubernetes]\nsource = \"kubelet\"\nurl = \"http://{stub}\"\nrefresh = \"1s\"\n"
    ));

    // kubelet's systemd-driver layout, under a slice of our own.
    let root = cgroup2_root();
    let slice = root.join("sonde-test.slice");
    let scope = slice.join(format!(
        "sonde-test-pod{}.slice/cri-containerd-{ID}.scope",
        uid.replace('-', "_")
    ));
    std::fs::create_dir_all(&scope)
        .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", scope.display()));
    let mut cg = Cgroup {
        slice,
        scope: scope.clone(),
        child: None,
    };
    // Like runc: join the cgroup first, then exec the workload.
    let procs = scope.join("cgroup.procs");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && exec sleep 60", procs.display()))
        .spawn()
        .expect("spawn sh");
    let pid = child.id();
    cg.child = Some(child);
    let in_cgroup = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_for(
        Duration::from_secs(5),
        "the workload to join the cgroup",
        || {
            in_cgroup(&procs)
                .lines()
                .any(|l| l == pid.to_string())
                .then_some(())
        },
    );
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        proc_cgroup.contains(&format!("cri-containerd-{ID}.scope")),
        "{proc_cgroup}"
    );

    let p = wait_for(
        Duration::from_secs(10),
        "the agent to name the workload's pod",
        || {
            let v: Vec<ProcessInfo> = agent.api(&format!("/api/v1/processes?pid={pid}"));
            let p = v.into_iter().next()?;
            (p.comm == "sleep" && p.k8s.is_some()).then_some(p)
        },
    );
    assert_eq!(p.container_id, ID, "{p:?}");
    let k8s = p.k8s.as_ref().expect("k8s identity");
    assert_eq!(k8s.namespace, "shop", "{p:?}");
    assert_eq!(k8s.pod, "checkout-7d9f8b6c5d-x2k4p", "{p:?}");
    assert_eq!(k8s.container, "app", "{p:?}");
    assert_eq!(k8s.pod_uid, uid, "{p:?}");
    // service_name comes from the pod's app.kubernetes.io/name label.
    assert_eq!(p.service, "checkout", "{p:?}");

    // A host process keeps its executable name and has no container.
    let me: Vec<ProcessInfo> = agent.api(&format!("/api/v1/processes?pid={}", agent.pid()));
    let me0 = me
        .first()
        .unwrap_or_else(|| panic!("agent not listed: {me:?}"));
    assert_eq!(me0.container_id, "", "{me:?}");
    assert!(me0.k8s.is_none(), "{me:?}");

    let m = agent.metrics();
    assert!(
        m.contains(&format!(
            "sonde_container_info{{container_id=\"{ID}\",k8s_container_name=\"app\",k8s_namespace_name=\"shop\",k8s_pod_name=\"checkout-7d9f8b6c5d-x2k4p\",service_name=\"checkout\"}} 1"
        )),
        "{m}"
    );
    assert!(
        sonde_tests::metric_value(&m, "sonde_kubernetes_pod_refreshes_total{result=\"ok\"}")
            .is_some_and(|v| v >= 1.0),
        "{m}"
    );
    drop(cg);
    assert!(
        !scope.exists(),
        "cgroup {} was not removed",
        scope.display()
    );
    agent.stop();
}
