//! Container id from `/proc/PID/cgroup`.
//!
//! Runtimes name a container's cgroup after its id, in a few shapes:
//!
//! | runtime / driver | path segment |
//! |---|---|
//! | containerd, systemd driver | `cri-containerd-<64 hex>.scope` |
//! | CRI-O, systemd driver | `crio-<64 hex>.scope` (`crio-conmon-<id>.scope` is the monitor, not the container) |
//! | docker, systemd driver | `docker-<64 hex>.scope` |
//! | podman | `libpod-<64 hex>.scope` |
//! | any runtime, cgroupfs driver | `/kubepods/<qos>/pod<uid>/<64 hex>`, `/docker/<64 hex>` |
//!
//! cgroup v1 files have one line per hierarchy (`4:memory:/kubepods/...`),
//! v2 a single `0::/...` line; hybrid hosts have both. Nested runtimes (kind:
//! a node that is itself a docker container) put the outer id first, so the
//! innermost (last) id in a path wins.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
    Crio,
    Docker,
    Podman,
    /// A bare id (cgroupfs driver): the path does not say which runtime.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// 64 lowercase hex digits, as in the pod status's `containerID` after `://`.
    pub id: String,
    pub runtime: Runtime,
    /// The pod UID when the path has a `pod<uid>` segment (kubelet's layout).
    pub pod_uid: Option<String>,
}

/// The container the process whose `/proc/PID/cgroup` is `text` runs in.
pub fn container_of(text: &str) -> Option<ContainerRef> {
    // Prefer the v2 line; on v1-only hosts every hierarchy line names the
    // same container, so the first one that has an id will do.
    let mut paths: Vec<&str> = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hid), Some(_ctrl), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if hid == "0" {
            paths.insert(0, path);
        } else {
            paths.push(path);
        }
    }
    paths.into_iter().find_map(container_of_path)
}

/// The container named by one cgroup path, e.g.
/// `/kubepods.slice/.../cri-containerd-<id>.scope`.
pub fn container_of_path(path: &str) -> Option<ContainerRef> {
    let mut found: Option<ContainerRef> = None;
    let mut pod_uid = None;
    for seg in path.split('/') {
        if let Some(uid) = pod_uid_of(seg) {
            pod_uid = Some(uid);
        }
        if let Some((id, runtime)) = id_of_segment(seg) {
            found = Some(ContainerRef {
                id,
                runtime,
                pod_uid: None,
            });
        }
    }
    found.map(|mut c| {
        c.pod_uid = pod_uid;
        c
    })
}

fn id_of_segment(seg: &str) -> Option<(String, Runtime)> {
    let base = seg.strip_suffix(".scope").unwrap_or(seg);
    if base.starts_with("crio-conmon-") {
        return None;
    }
    let (rest, runtime) = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
    ]
    .into_iter()
    .find_map(|(p, r)| base.strip_prefix(p).map(|rest| (rest, r)))
    .unwrap_or((base, Runtime::Unknown));
    is_container_id(rest).then(|| (rest.to_ascii_lowercase(), runtime))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice`
/// (systemd driver), as the API's dashed UID.
fn pod_uid_of(seg: &str) -> Option<String> {
    let base = seg.strip_suffix(".slice").unwrap_or(seg);
    let uid = &base[base.rfind("pod")? + 3..];
    let uid = uid.replace('_', "-");
    let dashed = uid.len() == 36
        && uid.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    dashed.then_some(uid)
}

/// Strips the `<runtime>://` scheme of a pod status's `containerID`.
pub fn strip_runtime_scheme(container_id: &str) -> &str {
    container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0f3c9a5e1b7d4c2a8e6f0b1d3c5a7e9f2b4d6c8a0e1f3b5d7c9a2e4f6b8d0c1a";
    const ID2: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    const UID: &str = "6a0c1f52-9a8b-4c3d-8e2f-1b0a9c8d7e6f";

    fn check(text: &str, id: &str, runtime: Runtime, uid: Option<&str>) {
        let c = container_of(text).unwrap_or_else(|| panic!("no container in {text:?}"));
        assert_eq!(c.id, id, "{text}");
        assert_eq!(c.runtime, runtime, "{text}");
        assert_eq!(c.pod_uid.as_deref(), uid, "{text}");
    }

    #[test]
    fn containerd_systemd_driver_cgroup_v2() {
        // A burstable pod on a kubeadm node with cgroup v2 (systemd driver).
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope\n",
            UID.replace('-', "_")
        );
        check(&text, ID, Runtime::Containerd, Some(UID));
    }

    #[test]
    fn containerd_cgroupfs_driver_cgroup_v1() {
        // k3s / older kubeadm: cgroupfs driver, one line per v1 hierarchy.
        let text = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n\
             11:memory:/kubepods/besteffort/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n\
             0::/\n"
        );
        check(&text, ID, Runtime::Unknown, Some(UID));
    }

    #[test]
    fn crio_systemd_driver_cgroup_v2_skips_conmon() {
        let uid = UID.replace('-', "_");
        let text =
            format!("0::/kubepods.slice/kubepods-pod{uid}.slice/crio-{ID}.scope/container\n");
        check(&text, ID, Runtime::Crio, Some(UID));
        // conmon, the runtime's monitor process, is not the container.
        let conmon = format!("0::/kubepods.slice/kubepods-pod{uid}.slice/crio-conmon-{ID}.scope\n");
        assert_eq!(container_of(&conmon), None);
    }

    #[test]
    fn crio_cgroup_v1() {
        let uid = UID.replace('-', "_");
        let text = format!(
            "10:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/crio-{ID}.scope\n\
             3:cpu,cpuacct:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/crio-{ID}.scope\n"
        );
        check(&text, ID, Runtime::Crio, Some(UID));
    }

    #[test]
    fn docker_systemd_driver_v2_and_cgroupfs_v1() {
        check(
            &format!("0::/system.slice/docker-{ID}.scope\n"),
            ID,
            Runtime::Docker,
            None,
        );
        check(
            &format!("13:cpuset:/docker/{ID}\n12:memory:/docker/{ID}\n0::/docker/{ID}\n"),
            ID,
            Runtime::Unknown,
            None,
        );
    }

    #[test]
    fn podman_rootless() {
        let text = format!(
            "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"
        );
        check(&text, ID, Runtime::Podman, None);
    }

    #[test]
    fn nested_kind_node_takes_innermost_id() {
        // kind: the node is a docker container running containerd pods.
        let text = format!(
            "0::/docker/{ID2}/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope\n",
            UID.replace('-', "_")
        );
        check(&text, ID, Runtime::Containerd, Some(UID));
    }

    #[test]
    fn paths_relative_to_the_agents_cgroup_namespace() {
        // Read from inside a container with its own cgroup namespace (the
        // agent's pod), host paths start with `/..`.
        let text = format!(
            "0::/../../kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope\n",
            UID.replace('-', "_")
        );
        check(&text, ID, Runtime::Containerd, Some(UID));
    }

    #[test]
    fn host_processes_have_no_container() {
        for text in [
            "0::/init.scope\n",
            "0::/system.slice/sshd.service\n",
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "4:memory:/process_api/2c0e96590cf0b9aeabdf4cf5bad18c0a\n0::/\n",
            "0::/kubepods.slice/kubepods-burstable.slice\n",
            "",
        ] {
            assert_eq!(container_of(text), None, "{text}");
        }
    }

    #[test]
    fn uppercase_or_short_ids_are_not_ids() {
        assert!(container_of_path(&format!("/docker/{}", &ID[..63])).is_none());
        assert_eq!(
            container_of_path(&format!("/docker/{}", ID.to_uppercase()))
                .unwrap()
                .id,
            ID
        );
    }

    #[test]
    fn scheme_is_stripped_from_status_ids() {
        assert_eq!(strip_runtime_scheme(&format!("containerd://{ID}")), ID);
        assert_eq!(strip_runtime_scheme(&format!("cri-o://{ID}")), ID);
        assert_eq!(strip_runtime_scheme(ID), ID);
    }
}
