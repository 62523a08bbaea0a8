//! Pod lists from the kubelet (`/pods`) or the API server
//! (`/api/v1/pods?fieldSelector=spec.nodeName=<node>`), over HTTPS with the
//! pod's service-account token and CA, or plain HTTP for the kubelet's
//! read-only port. Both answer a `PodList`; only the fields we use are read.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, Uri, body::Bytes};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsConnector, rustls};

use super::{K8sIdentity, cgroup::strip_runtime_scheme};

/// A pod list bigger than this is refused rather than buffered (a node runs
/// at most a few hundred pods; 110 by default).
const MAX_BODY: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("invalid URL {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no usable CA certificate in {0}")]
    NoCa(PathBuf),
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("malformed PodList from {url}: {source}")]
    Json {
        url: String,
        source: serde_json::Error,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Deserialize)]
pub struct PodList {
    #[serde(default)]
    pub items: Vec<Pod>,
}

#[derive(Debug, Deserialize)]
pub struct Pod {
    pub metadata: PodMeta,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Deserialize)]
pub struct PodMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    /// `containerd://<id>`, `cri-o://<id>`, `docker://<id>`; absent while
    /// the container is being created.
    #[serde(default, rename = "containerID")]
    pub container_id: Option<String>,
}

/// Container id -> identity, for every container of every pod in `list`.
/// `service_label` (e.g. `app.kubernetes.io/name`) names the service when the
/// pod carries it; otherwise the container name does.
pub fn index(list: &PodList, service_label: &str) -> HashMap<String, K8sIdentity> {
    let mut out = HashMap::new();
    for pod in &list.items {
        let label = pod.metadata.labels.get(service_label).cloned();
        let statuses = pod
            .status
            .container_statuses
            .iter()
            .chain(&pod.status.init_container_statuses)
            .chain(&pod.status.ephemeral_container_statuses);
        for c in statuses {
            let Some(raw) = c.container_id.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            out.insert(
                strip_runtime_scheme(raw).to_ascii_lowercase(),
                K8sIdentity {
                    namespace: pod.metadata.namespace.clone(),
                    pod: pod.metadata.name.clone(),
                    pod_uid: pod.metadata.uid.clone(),
                    container: c.name.clone(),
                    app: label.clone(),
                },
            );
        }
    }
    out
}

/// Fetches pod lists from one URL. Re-reads the token on every request:
/// projected service-account tokens rotate (hourly by default).
pub struct PodSource {
    uri: Uri,
    host: String,
    port: u16,
    token_file: Option<PathBuf>,
    tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
    timeout: Duration,
}

impl PodSource {
    /// `url` is `https://host:port/path?query` or `http://...`; HTTPS
    /// verifies the server against `ca_file` (the in-cluster CA).
    pub fn new(
        url: &str,
        token_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
        timeout: Duration,
    ) -> Result<Self, KubeError> {
        let bad = |message: &str| KubeError::Url {
            url: url.to_owned(),
            message: message.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("scheme must be http or https")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        // IPv6 literals come bracketed in URLs.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let ca = ca_file.ok_or_else(|| bad("https needs a CA file"))?;
            let server_name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| bad(&e.to_string()))?;
            Some((connector(&ca)?, server_name))
        } else {
            None
        };
        Ok(Self {
            uri,
            host,
            port,
            token_file,
            tls,
            timeout,
        })
    }

    pub fn url(&self) -> String {
        self.uri.to_string()
    }

    pub async fn fetch(&self) -> Result<PodList, KubeError> {
        tokio::time::timeout(self.timeout, self.fetch_inner())
            .await
            .map_err(|_| KubeError::Timeout(self.timeout))?
    }

    async fn fetch_inner(&self) -> Result<PodList, KubeError> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| KubeError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let body = match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| KubeError::Connect { addr, source })?;
                self.get(tls).await?
            }
            None => self.get(tcp).await?,
        };
        serde_json::from_slice(&body).map_err(|source| KubeError::Json {
            url: self.url(),
            source,
        })
    }

    async fn get<S>(&self, stream: S) -> Result<Bytes, KubeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http = |e: hyper::Error| KubeError::Http(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(conn);
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut req = Request::get(path)
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(f) = &self.token_file {
            let token = std::fs::read_to_string(f).map_err(|source| KubeError::File {
                path: f.clone(),
                source,
            })?;
            req = req.header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            );
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| KubeError::Http(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| KubeError::Http(e.to_string()))?
            .to_bytes();
        if status != 200 {
            return Err(KubeError::Status {
                url: self.url(),
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
            });
        }
        Ok(body)
    }
}

fn connector(ca: &std::path::Path) -> Result<TlsConnector, KubeError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let pem = std::fs::read(ca).map_err(|source| KubeError::File {
        path: ca.to_owned(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
        // A bundle may hold certificates rustls cannot use; skip those.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(KubeError::NoCa(ca.to_owned()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
