//! Delivery: one worker per receiver (Alertmanager v2 or a JSON webhook),
//! each with a bounded outbox keyed by alert fingerprint. The newest state of
//! an alert replaces an older one still waiting, so a receiver that was down
//! gets the current truth (a resolved alert is never overtaken by its stale
//! firing notification), and retries back off exponentially.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use http_body_util::{BodyExt, Full};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::state::{Alert, AlertState};

/// A plain-HTTP URL. TLS is deliberately not supported: receivers are
/// expected on loopback or behind a local proxy (documented).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port`, for connect and the Host header.
    pub authority: String,
    pub path: String,
}

impl HttpUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("http://").ok_or_else(|| {
            format!(
                "{s:?}: only http:// URLs are supported (put a TLS proxy on loopback for https)"
            )
        })?;
        let (auth, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if auth.is_empty() {
            return Err(format!("{s:?}: no host"));
        }
        let authority = if auth
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !auth.ends_with(']')
        {
            auth.to_owned()
        } else {
            format!("{auth}:80")
        };
        Ok(Self {
            authority,
            path: path.to_owned(),
        })
    }

    /// Appends `suffix` to the path (for Alertmanager's base URL).
    pub fn join(mut self, suffix: &str) -> Self {
        self.path = format!("{}{suffix}", self.path.trim_end_matches('/'));
        self
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

pub use sonde_wire::alerts::{ReceiverKind as Kind, ReceiverStatus};

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    #[error("receiver answered {status}: {body}")]
    Status { status: u16, body: String },
}

impl DeliveryError {
    /// A 4xx other than 408/429: the request itself is wrong, so retrying
    /// it cannot help.
    fn is_permanent(&self) -> bool {
        matches!(self, DeliveryError::Status { status, .. }
            if (400..500).contains(status) && *status != 408 && *status != 429)
    }
}

/// Alertmanager's v2 alert shape (`postableAlert`), also used, with `status`
/// and `value`, in webhook bodies.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WireAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    pub ends_at: String,
    #[serde(rename = "generatorURL", skip_serializing_if = "String::is_empty")]
    pub generator_url: String,
    #[serde(skip)]
    pub status: &'static str,
    #[serde(skip)]
    pub value: f64,
}

impl WireAlert {
    /// A firing alert says it ends at `now + valid_for` unless re-sent, so an
    /// agent that dies does not leave alerts firing forever.
    pub fn from_alert(a: &Alert, now: SystemTime, valid_for: Duration, external_url: &str) -> Self {
        let starts = a.fired_at.unwrap_or(a.active_at);
        let (ends, status) = match a.state {
            AlertState::Resolved => (a.resolved_at.unwrap_or(now), "resolved"),
            _ => (now + valid_for, "firing"),
        };
        Self {
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            starts_at: rfc3339(starts),
            ends_at: rfc3339(ends),
            generator_url: if external_url.is_empty() {
                String::new()
            } else {
                format!("{}/alerts", external_url.trim_end_matches('/'))
            },
            status,
            value: a.value,
        }
    }

    pub fn fingerprint(&self) -> String {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T03:05:18.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60,
        d.subsec_millis()
    )
}

/// Counters a receiver updates, and what `sonde alerts` shows about it.
#[derive(Clone)]
pub struct ReceiverMetrics {
    pub sent: IntCounter,
    pub failed: IntCounter,
    pub dropped: IntCounter,
    pub queued: IntGauge,
}

struct Outbox {
    /// fingerprint -> (sequence number, alert); the sequence number tells a
    /// sent entry from one replaced while the request was in flight.
    entries: BTreeMap<String, (u64, WireAlert)>,
    seq: u64,
    last_error: Option<String>,
    last_success: Option<SystemTime>,
}

pub struct Receiver {
    pub kind: Kind,
    pub url: HttpUrl,
    timeout: Duration,
    cap: usize,
    outbox: Mutex<Outbox>,
    wake: Notify,
    metrics: ReceiverMetrics,
}

impl Receiver {
    pub fn new(
        kind: Kind,
        url: HttpUrl,
        timeout: Duration,
        cap: usize,
        metrics: ReceiverMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            kind,
            url,
            timeout,
            cap,
            outbox: Mutex::new(Outbox {
                entries: BTreeMap::new(),
                seq: 0,
                last_error: None,
                last_success: None,
            }),
            wake: Notify::new(),
            metrics,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues alerts for delivery, replacing older states of the same alert.
    pub fn enqueue(&self, alerts: Vec<WireAlert>) {
        if alerts.is_empty() {
            return;
        }
        let mut ob = self.lock();
        for a in alerts {
            let fp = a.fingerprint();
            if !ob.entries.contains_key(&fp) && ob.entries.len() >= self.cap {
                // Prefer dropping a firing alert: it is re-sent while it fires.
                // A resolved one is sent only once, so it goes last.
                let victim = ob
                    .entries
                    .iter()
                    .filter(|(_, (_, w))| w.status == "firing")
                    .min_by_key(|(_, (s, _))| *s)
                    .or_else(|| ob.entries.iter().min_by_key(|(_, (s, _))| *s))
                    .map(|(k, _)| k.clone());
                if let Some(v) = victim {
                    ob.entries.remove(&v);
                    self.metrics.dropped.inc();
                }
            }
            ob.seq += 1;
            let seq = ob.seq;
            ob.entries.insert(fp, (seq, a));
        }
        self.metrics.queued.set(ob.entries.len() as i64);
        drop(ob);
        self.wake.notify_one();
    }

    pub fn status(&self) -> ReceiverStatus {
        let ob = self.lock();
        ReceiverStatus {
            kind: Some(self.kind),
            url: self.url.to_string(),
            sent: self.metrics.sent.get(),
            failed: self.metrics.failed.get(),
            dropped: self.metrics.dropped.get(),
            queued: ob.entries.len() as u64,
            last_error: ob.last_error.clone(),
            last_success: ob.last_success.map(rfc3339),
        }
    }

    /// Whether the last attempt failed and alerts are waiting.
    pub fn failing(&self) -> bool {
        let ob = self.lock();
        ob.last_error.is_some() && !ob.entries.is_empty()
    }

    /// Delivers until `shutdown`: sends everything queued, backs off on failure.
    pub async fn run(
        self: Arc<Self>,
        initial: Duration,
        max: Duration,
        shutdown: CancellationToken,
    ) {
        let mut backoff = initial;
        loop {
            let batch: Vec<(String, u64, WireAlert)> = self
                .lock()
                .entries
                .iter()
                .map(|(k, (s, w))| (k.clone(), *s, w.clone()))
                .collect();
            if batch.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
            let body = self.body(batch.iter().map(|(_, _, w)| w));
            match self.post(body).await {
                Ok(()) => {
                    backoff = initial;
                    let mut ob = self.lock();
                    for (k, s, _) in &batch {
                        if ob.entries.get(k).is_some_and(|(cur, _)| cur == s) {
                            ob.entries.remove(k);
                        }
                    }
                    ob.last_error = None;
                    ob.last_success = Some(SystemTime::now());
                    self.metrics.queued.set(ob.entries.len() as i64);
                    self.metrics.sent.inc_by(batch.len() as u64);
                }
                Err(e) if e.is_permanent() => {
                    // The receiver refuses this batch as such (400, 422...):
                    // retrying the same body cannot succeed and would block
                    // every later alert. Drop it, loudly.
                    self.metrics.failed.inc();
                    tracing::error!(receiver = %self.url, alerts = batch.len(), "receiver rejected alerts, dropping them: {e}");
                    let mut ob = self.lock();
                    for (k, s, _) in &batch {
                        if ob.entries.get(k).is_some_and(|(cur, _)| cur == s) {
                            ob.entries.remove(k);
                            self.metrics.dropped.inc();
                        }
                    }
                    ob.last_error = Some(format!(
                        "{}: {e} (alerts dropped)",
                        rfc3339(SystemTime::now())
                    ));
                    self.metrics.queued.set(ob.entries.len() as i64);
                }
                Err(e) => {
                    self.metrics.failed.inc();
                    tracing::warn!(receiver = %self.url, retry_in = ?backoff, "alert delivery failed: {e}");
                    self.lock().last_error = Some(format!("{}: {e}", rfc3339(SystemTime::now())));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), max);
                }
            }
        }
    }

    fn body<'a>(&self, alerts: impl Iterator<Item = &'a WireAlert>) -> Vec<u8> {
        let alerts: Vec<&WireAlert> = alerts.collect();
        let v = match self.kind {
            Kind::Alertmanager => serde_json::to_value(&alerts),
            Kind::Webhook => {
                // Shaped like Alertmanager's webhook payload, so existing
                // receivers of that format can read it.
                let firing = alerts.iter().any(|a| a.status == "firing");
                let list: Vec<serde_json::Value> = alerts
                    .iter()
                    .map(|a| {
                        let mut v = serde_json::to_value(a).unwrap_or_default();
                        v["status"] = a.status.into();
                        v["fingerprint"] = a.fingerprint().into();
                        v["value"] = if a.value.is_finite() {
                            a.value.into()
                        } else {
                            a.value.to_string().into()
                        };
                        v
                    })
                    .collect();
                Ok(serde_json::json!({
                    "version": "4",
                    "receiver": "sonde",
                    "status": if firing { "firing" } else { "resolved" },
                    "alerts": list,
                }))
            }
        };
        serde_json::to_vec(&v.unwrap_or_default()).unwrap_or_default()
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), DeliveryError> {
        tokio::time::timeout(self.timeout, self.post_inner(body))
            .await
            .map_err(|_| DeliveryError::Timeout(self.timeout))?
    }

    async fn post_inner(&self, body: Vec<u8>) -> Result<(), DeliveryError> {
        let stream = tokio::net::TcpStream::connect(&self.url.authority)
            .await
            .map_err(DeliveryError::Connect)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::post(self.url.path.as_str())
            .header(hyper::header::HOST, self.url.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("sonde/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| DeliveryError::Status {
                status: 0,
                body: e.to_string(),
            })?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            let mut body = String::from_utf8_lossy(&bytes).into_owned();
            body.truncate(200);
            return Err(DeliveryError::Status {
                status: status.as_u16(),
                body,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;

    pub fn metrics() -> ReceiverMetrics {
        ReceiverMetrics {
            sent: IntCounter::new("s", "s").unwrap(),
            failed: IntCounter::new("f", "f").unwrap(),
            dropped: IntCounter::new("d", "d").unwrap(),
            queued: IntGauge::new("q", "q").unwrap(),
        }
    }

    pub fn wire(name: &str, status: &'static str) -> WireAlert {
        WireAlert {
            labels: [("alertname".to_owned(), name.to_owned())].into(),
            annotations: BTreeMap::new(),
            starts_at: String::new(),
            ends_at: String::new(),
            generator_url: String::new(),
            status,
            value: 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{tests_support::*, *};

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://localhost/hook").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("localhost:80", "/hook")
        );
        let u = HttpUrl::parse("http://[::1]:9093")
            .unwrap()
            .join("/api/v2/alerts");
        assert_eq!(u.to_string(), "http://[::1]:9093/api/v2/alerts");
        assert!(HttpUrl::parse("ftp://x").is_err());
    }

    #[test]
    fn outbox_replaces_by_fingerprint_and_drops_firing_first() {
        let r = Receiver::new(
            Kind::Alertmanager,
            HttpUrl::parse("http://127.0.0.1:1").unwrap(),
            Duration::from_secs(1),
            2,
            metrics(),
        );
        r.enqueue(vec![wire("a", "firing"), wire("b", "resolved")]);
        r.enqueue(vec![wire("a", "resolved")]);
        assert_eq!(r.status().queued, 2);
        assert_eq!(r.status().dropped, 0);
        r.enqueue(vec![wire("c", "firing")]);
        // Both queued were resolved: the oldest (b) goes.
        let ob = r.lock();
        assert!(ob.entries.keys().any(|k| k.contains("\"a\"")));
        assert!(ob.entries.keys().any(|k| k.contains("\"c\"")));
        drop(ob);
        r.enqueue(vec![wire("d", "resolved")]);
        // c is firing: it is dropped before resolved a.
        let ob = r.lock();
        assert!(
            ob.entries.keys().any(|k| k.contains("\"a\"")),
            "{:?}",
            ob.entries.keys()
        );
        assert!(ob.entries.keys().any(|k| k.contains("\"d\"")));
        drop(ob);
        assert_eq!(r.status().dropped, 2);
    }
}

#[cfg(test)]
mod delivery_tests {
    use std::time::{Duration, SystemTime};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{tests_support::*, *};

    /// A receiver that is down is retried with backoff, failures counted,
    /// and the alert is delivered (then dequeued) once it listens.
    #[tokio::test]
    async fn retries_until_the_receiver_is_back() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = Receiver::new(
            Kind::Alertmanager,
            HttpUrl::parse(&format!("http://127.0.0.1:{port}"))
                .unwrap()
                .join("/api/v2/alerts"),
            Duration::from_secs(2),
            10,
            metrics(),
        );
        let stop = CancellationToken::new();
        tokio::spawn(r.clone().run(
            Duration::from_millis(20),
            Duration::from_millis(100),
            stop.clone(),
        ));
        let mut w = wire("Down", "firing");
        w.starts_at = rfc3339(SystemTime::UNIX_EPOCH);
        r.enqueue(vec![w]);
        while r.status().failed < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(r.failing() && r.status().last_error.is_some());
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("}]") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early");
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let req = String::from_utf8_lossy(&got);
        assert!(req.starts_with("POST /api/v2/alerts HTTP/1.1"), "{req}");
        let body: serde_json::Value =
            serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body[0]["labels"]["alertname"], "Down", "{body}");
        assert_eq!(body[0]["startsAt"], "1970-01-01T00:00:00.000Z", "{body}");
        while r.status().queued > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(r.status().sent, 1);
        assert!(!r.failing());
        stop.cancel();
    }

    /// A 400 is not retried forever: the batch is dropped and counted.
    #[tokio::test]
    async fn a_rejected_batch_is_dropped_not_retried() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\nbad")
                    .await;
            }
        });
        let r = Receiver::new(
            Kind::Webhook,
            HttpUrl::parse(&format!("http://127.0.0.1:{port}/hook")).unwrap(),
            Duration::from_secs(2),
            10,
            metrics(),
        );
        let stop = CancellationToken::new();
        tokio::spawn(r.clone().run(
            Duration::from_millis(20),
            Duration::from_millis(100),
            stop.clone(),
        ));
        r.enqueue(vec![wire("Bad", "firing")]);
        while r.status().dropped == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = r.status();
        assert_eq!((st.queued, st.failed, st.sent), (0, 1, 0), "{st:?}");
        assert!(st.last_error.unwrap().contains("400"));
        stop.cancel();
    }
}
