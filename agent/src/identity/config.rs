//! `[kubernetes]`: where pod identities come from.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::duration::Dur;

pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, thiserror::Error)]
pub enum IdentityConfigError {
    #[error(
        "kubernetes.source = {0:?} needs the node name: set NODE_NAME from the downward API (spec.nodeName) or kubernetes.node_name"
    )]
    NoNodeName(&'static str),
    #[error("kubernetes.source = \"api-server\" needs kubernetes.url or KUBERNETES_SERVICE_HOST")]
    NoApiServer,
    #[error("kubernetes pod source: {0}")]
    Source(String),
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// `api-server` when `KUBERNETES_SERVICE_HOST` is set, else `off`.
    Auto,
    Off,
    /// `GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`: needs RBAC
    /// `list pods` only (no `nodes/proxy`), so it is the default.
    ApiServer,
    /// `GET https://<node>:10250/pods`: no API-server load, but needs RBAC
    /// `get nodes/proxy` and a kubelet serving cert signed by the cluster CA;
    /// `http://<node>:10255` for the read-only port where it is enabled.
    Kubelet,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    pub source: SourceKind,
    /// Base URL of the source; empty derives it (API server from
    /// `KUBERNETES_SERVICE_HOST`/`_PORT`, kubelet from the node name).
    pub url: String,
    /// Empty means `$NODE_NAME`.
    pub node_name: String,
    /// Bearer token, re-read on every request (projected tokens rotate).
    pub token_file: PathBuf,
    /// CA bundle that signs the source's serving certificate.
    pub ca_file: PathBuf,
    /// How often the pod list is fetched.
    pub refresh: Dur<1, 3600>,
    /// How long a container stays named after it was last listed.
    pub expiry: Dur<1, 86400>,
    /// Pod label that names the service; the container name when absent.
    pub service_label: String,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            source: SourceKind::Auto,
            url: String::new(),
            node_name: String::new(),
            token_file: PathBuf::from(format!("{SA_DIR}/token")),
            ca_file: PathBuf::from(format!("{SA_DIR}/ca.crt")),
            refresh: Dur(Duration::from_secs(15)),
            expiry: Dur(Duration::from_secs(300)),
            service_label: "app.kubernetes.io/name".into(),
        }
    }
}

/// What the refresh task fetches.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub url: String,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

impl KubernetesConfig {
    /// The fetch plan for this config in an environment `env`, or `None`
    /// when identity resolution is off (outside Kubernetes by default).
    pub fn plan(&self, env: &HashMap<String, String>) -> Result<Option<Plan>, IdentityConfigError> {
        let var = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let kind = match self.source {
            SourceKind::Auto if var("KUBERNETES_SERVICE_HOST").is_some() => SourceKind::ApiServer,
            SourceKind::Auto | SourceKind::Off => return Ok(None),
            k => k,
        };
        let node = Some(self.node_name.clone())
            .filter(|n| !n.is_empty())
            .or_else(|| var("NODE_NAME"));
        let base = if self.url.is_empty() {
            match kind {
                SourceKind::ApiServer => {
                    let host =
                        var("KUBERNETES_SERVICE_HOST").ok_or(IdentityConfigError::NoApiServer)?;
                    let port = var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
                    let host = if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host
                    };
                    format!("https://{host}:{port}")
                }
                _ => {
                    let node = node
                        .clone()
                        .ok_or(IdentityConfigError::NoNodeName("kubelet"))?;
                    format!("https://{node}:10250")
                }
            }
        } else {
            self.url.trim_end_matches('/').to_owned()
        };
        let url = match kind {
            SourceKind::ApiServer => {
                // Without a node filter we would list every pod of the cluster.
                let node = node.ok_or(IdentityConfigError::NoNodeName("api-server"))?;
                format!("{base}/api/v1/pods?fieldSelector=spec.nodeName%3D{node}")
            }
            _ => format!("{base}/pods"),
        };
        // Never send the token over plain HTTP.
        let https = url.starts_with("https://");
        Ok(Some(Plan {
            url,
            token_file: https.then(|| self.token_file.clone()),
            ca_file: https.then(|| self.ca_file.clone()),
            timeout: Duration::from_secs(10).min(self.refresh.get()),
        }))
    }
}
