//! `GET /api/v1/processes?pid=&name=`: the process table.

use serde::{Deserialize, Serialize};

/// Query of `GET /api/v1/processes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessQuery {
    pub pid: Option<u32>,
    /// Matches the comm or the service name.
    pub name: Option<String>,
}

/// One process as the agent knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    /// Kernel task name (at most 15 bytes).
    pub comm: String,
    /// Resolved `/proc/PID/exe`, empty for kernel threads or when unreadable.
    pub exe: String,
    /// cgroup v2 path (`0::/...` line of /proc/PID/cgroup).
    pub cgroup: String,
    /// Process start, seconds since the Unix epoch.
    pub start_time: u64,
    /// The name its metrics are labelled with (`service_name`): the pod's
    /// service label or container name in Kubernetes, else the executable.
    pub service: String,
    /// Container id (64 hex) derived from /proc/PID/cgroup; empty on the host.
    pub container_id: String,
    /// Pod, namespace and container name, once the pod list names the container.
    pub k8s: Option<K8sIdentity>,
    /// Set once the process has exited; kept for a grace period.
    pub exited: bool,
}

/// A container's place in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct K8sIdentity {
    /// `k8s_namespace_name`
    pub namespace: String,
    /// `k8s_pod_name`
    pub pod: String,
    pub pod_uid: String,
    /// `k8s_container_name`
    pub container: String,
    /// The pod's `kubernetes.service_label` label (`app.kubernetes.io/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

impl K8sIdentity {
    /// The `service_name` of processes in this container: the service label
    /// when the pod has one, else the container name.
    pub fn service(&self) -> &str {
        self.app.as_deref().unwrap_or(&self.container)
    }
}
