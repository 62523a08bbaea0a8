//! The pod-list client against local stub servers serving a recorded
//! `/pods` payload (plain HTTP and HTTPS with a CA the test makes), and the
//! matching of cgroup-derived ids against it.

use std::{path::Path, process::Command, sync::Arc};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};

use super::{kubelet::*, *};
use crate::identity::config::{Plan, SourceKind};

const PODS: &str = include_str!("testdata/pods.json");
const APP_ID: &str = "0f3c9a5e1b7d4c2a8e6f0b1d3c5a7e9f2b4d6c8a0e1f3b5d7c9a2e4f6b8d0c1a";
const CRIO_ID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

/// Serves one request with `body`, reporting the request head on `tx`.
async fn serve_one<S>(mut s: S, body: &'static str, tx: mpsc::UnboundedSender<String>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.expect("read request");
        if n == 0 {
            return;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await.expect("write response");
    let _ = s.shutdown().await;
}

#[test]
fn index_maps_every_container_id_to_its_pod() {
    let list: PodList = serde_json::from_str(PODS).unwrap();
    let idx = index(&list, "app.kubernetes.io/name");
    // app, envoy, the init container and coredns; the pending one has no id yet.
    assert_eq!(idx.len(), 4, "{idx:?}");
    let app = &idx[APP_ID];
    assert_eq!(
        (
            app.namespace.as_str(),
            app.pod.as_str(),
            app.container.as_str()
        ),
        ("shop", "checkout-7d9f8b6c5d-x2k4p", "app")
    );
    assert_eq!(app.pod_uid, "6a0c1f52-9a8b-4c3d-8e2f-1b0a9c8d7e6f");
    // The pod label names the service; without it the container name does.
    assert_eq!(app.service(), "checkout");
    assert_eq!(idx[CRIO_ID].service(), "coredns");
    assert_eq!(idx[CRIO_ID].namespace, "kube-system");
}

#[test]
fn cgroup_ids_match_pod_status_ids() {
    let list: PodList = serde_json::from_str(PODS).unwrap();
    let idx = index(&list, "app.kubernetes.io/name");
    let cg = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6a0c1f52_9a8b_4c3d_8e2f_1b0a9c8d7e6f.slice/cri-containerd-{APP_ID}.scope\n"
    );
    let c = cgroup::container_of(&cg).unwrap();
    let k = &idx[&c.id];
    assert_eq!(k.container, "app");
    // The pod UID in the cgroup path agrees with the API's.
    assert_eq!(c.pod_uid.as_deref(), Some(k.pod_uid.as_str()));
}

#[test]
fn cache_expires_entries_not_seen_again() {
    let list: PodList = serde_json::from_str(PODS).unwrap();
    let cache = IdentityCache::default();
    cache.update(index(&list, "x"), Duration::from_millis(50));
    assert_eq!(cache.lookup(APP_ID).unwrap().service(), "app");
    std::thread::sleep(Duration::from_millis(60));
    // A refresh without that pod keeps it until expiry, which has passed.
    cache.update(HashMap::new(), Duration::from_millis(50));
    assert!(cache.lookup(APP_ID).is_none());
    assert!(cache.is_empty());
}

#[tokio::test]
async fn plain_http_client_reads_recorded_pods_payload() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        serve_one(s, PODS, tx).await;
    });
    let src = PodSource::new(
        &format!("http://127.0.0.1:{port}/pods"),
        None,
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    let list = src.fetch().await.unwrap();
    assert_eq!(list.items.len(), 3);
    let head = rx.recv().await.unwrap();
    assert!(head.starts_with("GET /pods HTTP/1.1\r\n"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("authorization"),
        "{head}"
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, like a
/// cluster CA and an API server / kubelet serving certificate.
fn make_pki(dir: &Path, ca_name: &str) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let ca_key = format!("{ca_name}.key");
    let ca_crt = format!("{ca_name}.crt");
    let mut a = vec!["req", "-x509", "-nodes", "-days", "2"];
    a.extend(ec);
    a.extend(["-keyout", &ca_key, "-out", &ca_crt, "-subj", "/CN=test-ca"]);
    openssl(dir, &a);
    let mut a = vec!["req", "-nodes"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=node-a",
    ]);
    openssl(dir, &a);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ],
    );
}

async fn tls_stub(dir: &Path) -> (u16, mpsc::UnboundedReceiver<String>) {
    use tokio_rustls::rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.crt"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Two connections: the good client and the one with the wrong CA.
        for _ in 0..2 {
            let (s, _) = listener.accept().await.unwrap();
            if let Ok(tls) = acceptor.accept(s).await {
                serve_one(tls, PODS, tx.clone()).await;
            }
        }
    });
    (port, rx)
}

#[tokio::test]
async fn https_client_verifies_ca_and_sends_rotating_token() {
    let dir = tempfile::tempdir().unwrap();
    // The second call overwrites server.* with a certificate signed by "ca".
    make_pki(dir.path(), "other-ca");
    make_pki(dir.path(), "ca");
    let (port, mut rx) = tls_stub(dir.path()).await;
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-1\n").unwrap();
    let url = format!("https://127.0.0.1:{port}/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a");
    let src = PodSource::new(
        &url,
        Some(token.clone()),
        Some(dir.path().join("ca.crt")),
        Duration::from_secs(5),
    )
    .unwrap();
    let list = src.fetch().await.unwrap();
    assert_eq!(index(&list, "app.kubernetes.io/name").len(), 4);
    let head = rx.recv().await.unwrap();
    assert!(
        head.starts_with("GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a HTTP/1.1"),
        "{head}"
    );
    assert!(head.contains("authorization: Bearer tok-1\r\n"), "{head}");

    // A client trusting another CA must refuse the server.
    let wrong = PodSource::new(
        &url,
        Some(token),
        Some(dir.path().join("other-ca.crt")),
        Duration::from_secs(5),
    )
    .unwrap();
    let err = wrong.fetch().await.unwrap_err().to_string();
    assert!(
        err.contains("certificate") || err.contains("Unknown"),
        "{err}"
    );
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn auto_source_is_off_outside_kubernetes() {
    let c = KubernetesConfig::default();
    assert_eq!(c.plan(&env(&[])).unwrap(), None);
    assert_eq!(c.plan(&env(&[("NODE_NAME", "n")])).unwrap(), None);
}

#[test]
fn auto_source_uses_api_server_filtered_by_node() {
    let c = KubernetesConfig::default();
    let p = c
        .plan(&env(&[
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("NODE_NAME", "node-a"),
        ]))
        .unwrap()
        .unwrap();
    assert_eq!(
        p,
        Plan {
            url: "https://10.96.0.1:443/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a".into(),
            token_file: Some(c.token_file.clone()),
            ca_file: Some(c.ca_file.clone()),
            timeout: Duration::from_secs(10),
        }
    );
    // Without the node name it would list the whole cluster: refused.
    let err = c
        .plan(&env(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("NODE_NAME"), "{err}");
}

#[test]
fn kubelet_source_and_read_only_port_without_token() {
    let c = KubernetesConfig {
        source: SourceKind::Kubelet,
        ..Default::default()
    };
    let p = c.plan(&env(&[("NODE_NAME", "node-a")])).unwrap().unwrap();
    assert_eq!(p.url, "https://node-a:10250/pods");
    let c = KubernetesConfig {
        source: SourceKind::Kubelet,
        url: "http://127.0.0.1:10255/".into(),
        ..Default::default()
    };
    let p = c.plan(&env(&[])).unwrap().unwrap();
    assert_eq!(p.url, "http://127.0.0.1:10255/pods");
    assert_eq!(p.token_file, None, "no token over plain HTTP");
}
