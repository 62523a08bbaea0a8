//! Who a process is beyond its pid: its container (from its cgroup) and, in
//! Kubernetes, its pod, namespace and container name.
//!
//! The hot path only ever reads [`IdentityCache`]; a background task
//! ([`spawn`]) refreshes it from the kubelet or the API server every
//! `kubernetes.refresh` and re-labels the process table. Entries not seen in
//! a refresh survive `kubernetes.expiry`, so a flaky API server does not
//! strip names from running containers.

pub mod cgroup;
pub mod config;
pub mod kubelet;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
pub use sonde_wire::processes::K8sIdentity;
use tokio_util::sync::CancellationToken;

pub use self::config::KubernetesConfig;
use self::kubelet::PodSource;
use crate::{process_table::ProcessTable, telemetry::Telemetry};

/// Container id -> Kubernetes identity. Cheap to clone; reads take a
/// read lock and never wait on the network.
#[derive(Clone, Default)]
pub struct IdentityCache {
    inner: Arc<RwLock<HashMap<String, (K8sIdentity, Instant)>>>,
}

impl IdentityCache {
    pub fn lookup(&self, container_id: &str) -> Option<K8sIdentity> {
        if container_id.is_empty() {
            return None;
        }
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.get(container_id).map(|(k, _)| k.clone())
    }

    /// Merges a fresh index and drops entries unseen for `expiry`.
    pub fn update(&self, fresh: HashMap<String, K8sIdentity>, expiry: Duration) {
        let now = Instant::now();
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for (id, k) in fresh {
            map.insert(id, (k, now));
        }
        map.retain(|_, (_, seen)| now.duration_since(*seen) < expiry);
    }

    pub fn snapshot(&self) -> Vec<(String, K8sIdentity)> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(id, (k, _))| (id.clone(), k.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Metrics {
    refreshes: IntCounterVec,
    info: IntGaugeVec,
}

impl Metrics {
    fn new(t: &Telemetry) -> Self {
        Self {
            refreshes: t.register(
                IntCounterVec::new(
                    Opts::new(
                        "sonde_kubernetes_pod_refreshes_total",
                        "Pod list refreshes from the kubelet or API server, by result (ok, error).",
                    ),
                    &["result"],
                )
                .expect("valid metric"),
            ),
            info: t.register(
                IntGaugeVec::new(
                    Opts::new(
                        "sonde_container_info",
                        "1 per container on this node known to the agent: joins service_name to its Kubernetes identity.",
                    ),
                    &[
                        "service_name",
                        "container_id",
                        "k8s_namespace_name",
                        "k8s_pod_name",
                        "k8s_container_name",
                    ],
                )
                .expect("valid metric"),
            ),
        }
    }

    fn publish(&self, cache: &IdentityCache) {
        self.info.reset();
        for (id, k) in cache.snapshot() {
            self.info
                .with_label_values(&[k.service(), &id, &k.namespace, &k.pod, &k.container])
                .set(1);
        }
    }
}

/// Starts the refresh task when `cfg` (with `env`) says we run in
/// Kubernetes. Returns the source URL it polls, or `None` when disabled.
pub fn spawn(
    cfg: &KubernetesConfig,
    env: &HashMap<String, String>,
    processes: ProcessTable,
    telemetry: &Telemetry,
    shutdown: CancellationToken,
) -> Result<Option<String>, config::IdentityConfigError> {
    let Some(plan) = cfg.plan(env)? else {
        return Ok(None);
    };
    let source = PodSource::new(&plan.url, plan.token_file, plan.ca_file, plan.timeout)
        .map_err(|e| config::IdentityConfigError::Source(e.to_string()))?;
    let url = source.url();
    let metrics = Metrics::new(telemetry);
    let (refresh, expiry, label) = (
        cfg.refresh.get(),
        cfg.expiry.get(),
        cfg.service_label.clone(),
    );
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            match source.fetch().await {
                Ok(list) => {
                    processes
                        .identity()
                        .update(kubelet::index(&list, &label), expiry);
                    processes.apply_identity();
                    metrics.refreshes.with_label_values(&["ok"]).inc();
                    metrics.publish(processes.identity());
                    if failing {
                        tracing::info!(url = %source.url(), "pod list refresh recovered");
                    }
                    failing = false;
                }
                Err(e) => {
                    metrics.refreshes.with_label_values(&["error"]).inc();
                    // Log the first failure loudly, then quietly until it recovers.
                    if failing {
                        tracing::debug!(url = %source.url(), "pod list refresh failed: {e}");
                    } else {
                        tracing::warn!(url = %source.url(), "pod list refresh failed: {e}");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(refresh) => {}
            }
        }
    });
    Ok(Some(url))
}

#[cfg(test)]
mod tests;
