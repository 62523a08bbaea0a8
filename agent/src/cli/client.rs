//! A small HTTP/1 client over the agent's Unix socket.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use sonde_wire::ApiError;

/// GETs `path_and_query` from the agent and decodes the JSON body.
pub async fn get_json<T: DeserializeOwned>(
    socket: &Path,
    path_and_query: &str,
) -> anyhow::Result<T> {
    let body = get_bytes(socket, path_and_query).await?;
    serde_json::from_slice(&body)
        .with_context(|| format!("agent sent invalid JSON for {path_and_query}"))
}

/// The agent refused a request; `status` tells bad input (4xx) from a
/// failure on its side.
#[derive(Debug, thiserror::Error)]
#[error("agent answered {status}: {message}")]
pub struct ApiStatusError {
    pub status: hyper::StatusCode,
    pub message: String,
}

/// What the CLI reports when the agent refuses a request: a 400 is the
/// user's bad input ([`super::UsageError`], exit 2) and a 409 a conflict
/// (e.g. a session already running), both with the agent's own message;
/// anything else unchanged.
pub fn refusal(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<ApiStatusError>() {
        Ok(api) if api.status == hyper::StatusCode::BAD_REQUEST => {
            super::UsageError(api.message).into()
        }
        Ok(api) if api.status == hyper::StatusCode::CONFLICT => anyhow!(api.message),
        Ok(api) => api.into(),
        Err(e) => e,
    }
}

/// GETs `path_and_query` from the agent and returns the raw body of a
/// successful reply; other replies become an [`ApiStatusError`].
pub async fn get_bytes(socket: &Path, path_and_query: &str) -> anyhow::Result<Bytes> {
    request_bytes(socket, hyper::Method::GET, path_and_query).await
}

/// Sends a `method` request (GET, DELETE...) with no body; like
/// [`get_bytes`] otherwise.
pub async fn request_bytes(
    socket: &Path,
    method: hyper::Method,
    path_and_query: &str,
) -> anyhow::Result<Bytes> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                "is `sonde agent` running? Pass --socket or set SONDE_SOCKET if it uses another path"
            }
            std::io::ErrorKind::PermissionDenied => "the socket is private to root: run with sudo",
            _ => "check --socket",
        };
        anyhow!("cannot reach the sonde agent at {}: {e} ({hint})", socket.display())
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the agent failed")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(hyper::header::HOST, "sonde")
        .body(Empty::<Bytes>::new())
        .context("building request")?;
    let resp = sender
        .send_request(req)
        .await
        .context("request to the agent failed")?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .context("reading the agent's reply")?
        .to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(ApiStatusError { status, message }.into());
    }
    Ok(body)
}

/// Runs one async request on a small current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(rt.block_on(f))
}
