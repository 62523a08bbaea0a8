//! What the agent keeps of HTTP events: Prometheus metrics (OTel semconv
//! names) and a per-route summary for `sonde http` (rate, errors, latency
//! quantiles, in-flight).

use std::{
    collections::HashMap,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use sonde_common::http::red::{
    DURATION_BOUNDS_NS, LOG_BUCKETS, SIZE_BOUNDS, log_bucket, log_bucket_upper_secs,
};
use sonde_wire::http::RouteRow;

use super::hist::HistVec;
use crate::telemetry::Telemetry;

/// Every metric the collector exports. The histograms' buckets are the
/// kernel's (`sonde_common::http::red`): OTel semconv boundaries for
/// http.*.request.duration (observed in ns, exported in seconds), 64 B ..
/// 16 MiB in x4 steps for sizes.
#[derive(Clone)]
pub struct HttpMetrics {
    pub server_duration: HistVec,
    pub client_duration: HistVec,
    pub server_active: IntGaugeVec,
    pub server_req_size: HistVec,
    pub server_resp_size: HistVec,
    pub aborted: IntCounterVec,
    pub unparsed: IntCounterVec,
    pub route_overflow: IntCounterVec,
    pub kernel: IntCounterVec,
}

const SERVER_LABELS: &[&str] = &[
    "http_request_method",
    "http_response_status_code",
    "http_route",
    "service_name",
    "server_port",
];
const CLIENT_LABELS: &[&str] = &[
    "http_request_method",
    "http_response_status_code",
    "http_route",
    "service_name",
];

/// Durations are observed in ns and exported in seconds.
fn duration(name: &str, help: &str, labels: &[&str]) -> HistVec {
    HistVec::new(name, help, labels, &DURATION_BOUNDS_NS, 1e-9).expect("valid metric")
}

fn size(name: &str, help: &str, labels: &[&str]) -> HistVec {
    HistVec::new(name, help, labels, &SIZE_BOUNDS, 1.0).expect("valid metric")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl HttpMetrics {
    pub fn new(t: &Telemetry) -> Self {
        Self {
            server_duration: t.register(duration(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests: first request byte read to status line written.",
                SERVER_LABELS,
            )),
            client_duration: t.register(duration(
                "http_client_request_duration_seconds",
                "Duration of HTTP client requests: request written to status line read.",
                CLIENT_LABELS,
            )),
            server_active: t.register(
                IntGaugeVec::new(
                    Opts::new(
                        "http_server_active_requests",
                        "HTTP server requests read but not yet answered.",
                    ),
                    &["http_request_method", "service_name"],
                )
                .expect("valid metric"),
            ),
            server_req_size: t.register(size(
                "http_server_request_body_size_bytes",
                "Bytes of HTTP server requests on the wire (request line and headers included).",
                SERVER_LABELS,
            )),
            server_resp_size: t.register(size(
                "http_server_response_body_size_bytes",
                "Bytes of HTTP server responses on the wire (status line and headers included).",
                SERVER_LABELS,
            )),
            aborted: t.register(counter(
                "sonde_http_aborted_requests_total",
                "Requests whose connection closed before any response.",
                &["role", "service_name"],
            )),
            unparsed: t.register(counter(
                "sonde_http_unparsed_requests_total",
                "HTTP exchanges whose request line sonde could not parse (labelled route=\"unparsed\" nowhere: counted here only).",
                &["role"],
            )),
            route_overflow: t.register(counter(
                "sonde_http_route_overflow_total",
                "Requests whose route was folded into http_route=\"other\" by the per-service cap.",
                &["service_name"],
            )),
            kernel: t.register(counter(
                "sonde_http_kernel_events_total",
                "Kernel-side HTTP tracking counters (ringbuf_full, read_failed, not_http, pipelined, orphan_response, args_full, conn_full, requests_started).",
                &["counter"],
            )),
        }
    }
}

/// Groups the `sonde http` summary.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatKey {
    pub client: bool,
    pub pid: u32,
    pub service: String,
    pub method: &'static str,
    pub route: String,
}

/// Log-scale latency histogram, in the kernel's buckets
/// (`sonde_common::http::red::log_bucket`: four per power of two).
#[derive(Debug, Clone)]
pub struct LogHist {
    buckets: Vec<u64>,
}

impl Default for LogHist {
    fn default() -> Self {
        Self {
            buckets: vec![0; LOG_BUCKETS],
        }
    }
}

impl LogHist {
    pub fn observe(&mut self, ns: u64) {
        self.buckets[log_bucket(ns)] += 1;
    }

    /// Adds counts per bucket (the kernel's, read as differences).
    pub fn add(&mut self, counts: &[u64]) {
        for (a, b) in self.buckets.iter_mut().zip(counts) {
            *a += b;
        }
    }

    pub fn merge(&mut self, o: &LogHist) {
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
    }

    /// Upper bound (seconds) of the bucket holding quantile `q`: within
    /// +25% of the true value (for durations of 1 µs and more).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(log_bucket_upper_secs(i));
            }
        }
        None
    }
}

/// Rolling 10-second request counter.
const WINDOW: u64 = 10;

#[derive(Debug, Clone, Default)]
pub struct RouteStats {
    pub count: u64,
    pub errors: u64,
    pub hist: LogHist,
    slots: [(u64, u64); WINDOW as usize],
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl RouteStats {
    pub fn observe(&mut self, ns: u64, error: bool, now: u64) {
        self.hist.observe(ns);
        self.count_at(1, error, now);
    }

    /// `n` exchanges counted in the kernel, in the latency buckets `log`.
    pub fn add(&mut self, n: u64, error: bool, log: &[u64], now: u64) {
        self.hist.add(log);
        self.count_at(n, error, now);
    }

    fn count_at(&mut self, n: u64, error: bool, now: u64) {
        self.count += n;
        if error {
            self.errors += n;
        }
        let slot = &mut self.slots[(now % WINDOW) as usize];
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 += n;
    }

    pub fn recent(&self, now: u64) -> u64 {
        self.slots
            .iter()
            .filter(|(s, _)| *s + WINDOW > now && *s <= now)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Builds the rows for a query: merges per-pid stats by (role, service,
/// method, route).
pub fn rows<'a>(
    stats: impl Iterator<Item = &'a (StatKey, RouteStats)>,
    inflight: &super::FastMap<StatKey, u64>,
    keep: impl Fn(&StatKey) -> bool,
) -> Vec<RouteRow> {
    let now = now_secs();
    type Group = (bool, String, &'static str, String);
    let mut groups: HashMap<Group, (Vec<u32>, RouteStats, u64, u64)> = HashMap::new();
    for (k, s) in stats.filter(|(k, _)| keep(k)) {
        let g = groups
            .entry((k.client, k.service.clone(), k.method, k.route.clone()))
            .or_default();
        if !g.0.contains(&k.pid) {
            g.0.push(k.pid);
        }
        g.1.count += s.count;
        g.1.errors += s.errors;
        g.1.hist.merge(&s.hist);
        g.2 += s.recent(now);
    }
    for (k, n) in inflight.iter().filter(|(k, _)| keep(k)) {
        let g = groups
            .entry((k.client, k.service.clone(), k.method, k.route.clone()))
            .or_default();
        if !g.0.contains(&k.pid) {
            g.0.push(k.pid);
        }
        g.3 += n;
    }
    let mut out: Vec<RouteRow> = groups
        .into_iter()
        .map(
            |((client, service, method, route), (mut pids, s, recent, infl))| {
                pids.sort_unstable();
                RouteRow {
                    role: if client { "client" } else { "server" }.into(),
                    service,
                    pids,
                    method: method.into(),
                    route,
                    requests: s.count,
                    rate: recent as f64 / WINDOW as f64,
                    error_pct: if s.count == 0 {
                        0.0
                    } else {
                        100.0 * s.errors as f64 / s.count as f64
                    },
                    p50_seconds: s.hist.quantile(0.50),
                    p95_seconds: s.hist.quantile(0.95),
                    p99_seconds: s.hist.quantile(0.99),
                    in_flight: infl,
                    cpu_ms_per_request: None,
                }
            },
        )
        .collect();
    out.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then_with(|| a.route.cmp(&b.route))
            .then_with(|| a.method.cmp(&b.method))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_close() {
        let mut h = LogHist::default();
        for _ in 0..90 {
            h.observe(1_000_000);
        }
        for _ in 0..10 {
            h.observe(300_000_000);
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((0.001..0.0012).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((0.3..0.36).contains(&p99), "{p99}");
        assert_eq!(LogHist::default().quantile(0.5), None);
    }

    #[test]
    fn window_counts_recent_only() {
        let mut s = RouteStats::default();
        s.observe(100_000_000, false, 100);
        s.observe(100_000_000, true, 105);
        assert_eq!(s.recent(105), 2);
        assert_eq!(s.recent(111), 1);
        assert_eq!(s.recent(200), 0);
        assert_eq!(s.errors, 1);
    }
}
