//! HTTP/1.x RED metrics from socket I/O, with no instrumentation.
//!
//! Kernel side (ebpf/sonde-ebpf/src/http/): the socket layer (tp_btf
//! `sock_send_length`/`sock_recv_length`/`inet_sock_set_state`), else tp_btf
//! `sys_enter`/`sys_exit`, else the per-syscall tracepoints, feed one
//! per-connection state machine. An exchange whose path this side has
//! already labelled is counted in the kernel (`sonde_common::http::red`,
//! read every 250 ms by [`agg`]); any other comes as an event. Message
//! heads are classified by `sonde_common::http::parse`, which this side
//! shares. This side turns both into OTel-named metrics with bounded
//! labels (route normalization, per-service cap) and keeps a per-route
//! summary for `sonde http`. See docs/http.md.

mod agg;
mod hist;
pub mod port;
pub mod route;
mod series;
pub mod stats;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuHashMap};
use prometheus::IntCounter;
use sonde_common::{
    http::{
        CONN_GONE, EVENT_CLOSED, HttpConn, HttpConnKey, HttpCounter, HttpEvent, HttpEventKind,
        HttpRole,
        red::{HttpAgg, HttpAggKey},
        state,
    },
    route::route_tag,
};
use sonde_wire::http::RouteRow;

use self::{
    agg::{Agg, Delta, Labelled},
    port::PortResolver,
    route::{RouteTable, parse_request_line},
    series::{Group, Series, SeriesCache},
    stats::{HttpMetrics, RouteStats, StatKey, now_secs},
};
use super::{
    Base, Collector, CollectorError, ComponentHealth, Deps, SharedHealth, StartContext,
    kit::{
        attach::{Attached, Hook, HookSet, attach_first},
        comm_str,
        counters::KernelCounters,
        ring::{Events, Ring},
        take_map,
    },
    routes::{self, RouteShare},
};
use crate::{
    config::{HttpConfig, HttpHook},
    ebpf,
    features::Features,
    process_table::ProcessTable,
};

pub const NAME: &str = "http";

/// This collector's eBPF object.
pub const OBJECT: ebpf::Object = ebpf::object!("sonde-http");

/// The first choice: the socket layer (only socket I/O runs a program).
const SOCK: HookSet = HookSet::new(
    Some("tp_btf"),
    "tp_btf sock_send_length/sock_recv_length/inet_sock_set_state",
    &[
        Hook::TpBtf("http_sock_send", "sock_send_length"),
        Hook::TpBtf("http_sock_recv", "sock_recv_length"),
        Hook::TpBtf("http_sock_state", "inet_sock_set_state"),
    ],
);

/// The second choice: tp_btf programs on the generic syscall hooks.
const SYS_BTF: HookSet = HookSet::new(
    Some("tp_btf"),
    "tp_btf sys_enter/sys_exit",
    &[
        Hook::TpBtf("http_sys_enter", "sys_enter"),
        Hook::TpBtf("http_sys_exit", "sys_exit"),
    ],
);

const fn sys(prog: &'static str, tp: &'static str) -> Hook {
    Hook::Tp(prog, "syscalls", tp)
}

/// Fallback: the per-syscall tracepoints, each on its own (the collector
/// runs degraded with those that attach).
const TRACEPOINTS: HookSet = HookSet::new(
    None,
    "socket syscall tracepoints",
    &[
        sys("http_enter_read", "sys_enter_read"),
        sys("http_enter_recvfrom", "sys_enter_recvfrom"),
        sys("http_enter_readv", "sys_enter_readv"),
        sys("http_enter_recvmsg", "sys_enter_recvmsg"),
        sys("http_enter_write", "sys_enter_write"),
        sys("http_enter_sendto", "sys_enter_sendto"),
        sys("http_enter_writev", "sys_enter_writev"),
        sys("http_enter_sendmsg", "sys_enter_sendmsg"),
        sys("http_enter_sendfile", "sys_enter_sendfile64"),
        sys("http_enter_connect", "sys_enter_connect"),
        sys("http_exit", "sys_exit_read"),
        sys("http_exit", "sys_exit_recvfrom"),
        sys("http_exit", "sys_exit_readv"),
        sys("http_exit", "sys_exit_recvmsg"),
        sys("http_exit", "sys_exit_write"),
        sys("http_exit", "sys_exit_sendto"),
        sys("http_exit", "sys_exit_writev"),
        sys("http_exit", "sys_exit_sendmsg"),
        sys("http_exit", "sys_exit_sendfile64"),
        sys("http_exit", "sys_exit_connect"),
        sys("http_accept_exit", "sys_exit_accept"),
        sys("http_accept_exit", "sys_exit_accept4"),
        sys("http_close", "sys_enter_close"),
    ],
)
.partial();

/// How often the kernel's counts are read.
const AGG_POLL: Duration = Duration::from_millis(250);

/// Entries of the kernel's aggregation map: 4096 (series x status), fewer
/// on hosts with many CPUs, where each entry costs its ~830 bytes per CPU
/// (preallocated): at most ~32 MiB. Past it, exchanges come as events.
fn agg_entries() -> u32 {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1));
    let per = cpus * size_of::<HttpAgg>();
    u32::try_from((32 << 20) / per).map_or(4096, |n| n.clamp(256, 4096))
}

/// Whether a status is an error for the summary's error rate.
fn is_error(client: bool, status: u16) -> bool {
    if client { status >= 400 } else { status >= 500 }
}

/// Most (role, pid, service, method, route) summaries kept for `sonde http`;
/// beyond it new keys are not summarized (metrics are unaffected).
const MAX_STAT_KEYS: usize = 100_000;

/// The maps the drain touches for every event: foldhash, not std's SipHash,
/// which took ~30 % of the drain's CPU under wrk (perf, release build).
/// Keys are labels and pids the agent derives itself, bounded in number.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

struct Inner {
    routes: RouteTable,
    /// `sonde http`'s summaries, in creation order; series find theirs by
    /// index (`Series::stat_slot`), not by hashing the key's strings.
    stats: Vec<(StatKey, RouteStats)>,
    stat_index: FastMap<StatKey, usize>,
    inflight: FastMap<StatKey, u64>,
    ports: PortResolver,
    /// tgid -> service_name, refreshed every few seconds (pids get reused).
    services: FastMap<u32, String>,
    series: SeriesCache,
    /// The kernel's path dictionary and counts.
    agg: Agg,
}

/// CPU by route: the shared dictionary and CPU totals (see
/// `collectors::routes`); `None` when the profiler is disabled.
fn route_cpu(share: Option<&RouteShare>, rows: &mut [RouteRow]) {
    let Some(share) = share else { return };
    for r in rows.iter_mut().filter(|r| r.role == "server") {
        let secs = share.cpu(&r.service, &r.method, &r.route);
        r.cpu_ms_per_request = Some(if r.requests == 0 {
            0.0
        } else {
            secs * 1e3 / r.requests as f64
        });
    }
}

/// The query side: what `/api/v1/http` reads. Cheap to clone.
#[derive(Clone, Default)]
pub struct HttpQuery(Arc<Mutex<Option<Inner>>>, Option<RouteShare>);

/// Which rows a query wants.
#[derive(Debug, Clone, Default)]
pub struct HttpFilter {
    pub pid: Option<u32>,
    pub name: Option<String>,
    pub client: bool,
}

impl HttpQuery {
    fn lock(&self) -> MutexGuard<'_, Option<Inner>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn routes(&self) -> Option<RouteShare> {
        self.1.clone()
    }

    /// `None` when the collector is not running.
    pub fn rows(&self, f: &HttpFilter, processes: &ProcessTable) -> Option<Vec<RouteRow>> {
        let g = self.lock();
        let inner = g.as_ref()?;
        let keep = |k: &StatKey| {
            k.client == f.client
                && f.pid.is_none_or(|p| k.pid == p)
                && f.name.as_deref().is_none_or(|n| {
                    k.service == n || processes.get(k.pid).is_some_and(|p| p.comm == n)
                })
        };
        let mut rows = stats::rows(inner.stats.iter(), &inner.inflight, keep);
        drop(g);
        route_cpu(self.routes().as_ref(), &mut rows);
        Some(rows)
    }
}

pub struct HttpCollector {
    config: HttpConfig,
    query: HttpQuery,
    processes: ProcessTable,
    base: Base,
}

impl HttpCollector {
    /// Registers the [`HttpQuery`] for the control API.
    pub fn new(config: &HttpConfig, deps: &Deps) -> Self {
        let query = HttpQuery(Arc::default(), deps.handles.get::<RouteShare>());
        deps.handles.register(query.clone());
        Self {
            config: config.clone(),
            query,
            processes: deps.processes.clone(),
            base: Base::new(),
        }
    }
}

/// Attaches the socket-layer tp_btf set when allowed and possible, else the
/// tp_btf syscall set, else the per-syscall tracepoints.
fn attach(
    obj: &mut aya::Ebpf,
    hook: HttpHook,
    features: &Features,
    btf: &crate::ebpf::KernelBtf,
) -> Result<Attached, CollectorError> {
    let mut notes = Vec::new();
    let mut sets: Vec<&'static HookSet> = Vec::new();
    match hook {
        _ if !cfg!(target_arch = "x86_64") => {
            notes.push("tp_btf hooks: syscall arguments are read as x86_64 registers".to_owned());
        }
        HttpHook::Auto => sets.extend([&SOCK, &SYS_BTF]),
        HttpHook::Syscall => sets.push(&SYS_BTF),
        HttpHook::Tracepoint => {}
    }
    sets.push(&TRACEPOINTS);
    let a = attach_first(obj, features, btf, &sets, notes)?;
    if !a.skipped.is_empty() {
        // Say why the preferred hook was not used only in the log: the
        // fallback works fully (health stays healthy).
        tracing::info!(collector = NAME, reason = %a.skipped.join("; "), hooks = a.label, "preferred hooks unavailable");
    }
    Ok(a)
}

impl Collector for HttpCollector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn base(&self) -> &Base {
        &self.base
    }

    fn base_mut(&mut self) -> &mut Base {
        &mut self.base
    }

    /// Route patterns and the per-service route cap only shape labels in
    /// user space: a new table takes effect with the next request.
    fn reload(&mut self, new: &crate::config::CollectorsConfig) -> Vec<&'static str> {
        let new = &new.http;
        if new.routes == self.config.routes
            && new.max_routes_per_service == self.config.max_routes_per_service
        {
            return Vec::new();
        }
        self.config.routes = new.routes.clone();
        self.config.max_routes_per_service = new.max_routes_per_service;
        if let Some(inner) = self.query.lock().as_mut() {
            inner.routes = RouteTable::new(
                new.routes.clone(),
                new.max_routes_per_service.get() as usize,
            );
            // Cached series carry the old route labels, and so do the
            // kernel's dictionary entries: new requests get labelled anew.
            inner.series.clear();
            let keys = inner.agg.ids.relabel();
            inner.agg.delete(&keys, &Default::default());
        }
        vec![
            "collectors.http.routes",
            "collectors.http.max_routes_per_service",
        ]
    }

    fn start(&mut self, ctx: StartContext<'_>) -> Result<(), CollectorError> {
        // Parsed when the config was read.
        let patterns = self.config.routes.clone();
        let conns = u32::try_from(self.config.max_connections.get()).unwrap_or(u32::MAX);
        let share = self.query.routes();
        let mut obj = routes::load_with(share.as_ref(), OBJECT, &ctx.kernel_log_level, |l| {
            l.map_max_entries("HTTP_CONNS", conns)
                .map_max_entries("HTTP_SOCKS", conns)
                .map_max_entries("HTTP_FRESH", conns)
                .map_max_entries("HTTP_AGG", agg_entries());
        })?;
        let routes_map: BpfHashMap<MapData, _, u32> = take_map(&mut obj, "HTTP_ROUTES")?;
        let agg_map: PerCpuHashMap<MapData, HttpAggKey, HttpAgg> = take_map(&mut obj, "HTTP_AGG")?;
        let events = Ring::<HttpEvent>::new(NAME, take_map(&mut obj, "HTTP_EVENTS")?)?
            // The kernel wakes us only when a lot is queued (see
            // WAKEUP_BYTES in the kernel side), so we also poll.
            .poll_every(Duration::from_millis(100));
        let counters = KernelCounters::new(take_map(&mut obj, "HTTP_COUNTERS_MAP")?);
        let conns: BpfHashMap<MapData, HttpConnKey, HttpConn> = take_map(&mut obj, "HTTP_CONNS")?;
        let mut sniff: Array<MapData, u32> = take_map(&mut obj, "HTTP_SNIFF")?;
        let window = self.config.sniff_window.get();
        if !window.is_zero() {
            sniff.set(0, 1, 0).map_err(|source| CollectorError::Map {
                what: "HTTP_SNIFF".into(),
                source,
            })?;
        }
        let a = attach(&mut obj, self.config.hook, ctx.features, ctx.btf)?;
        let base = if a.failed.is_empty() {
            format!("attached to {}", a.label)
        } else {
            format!("attached to {}; missing: {}", a.label, a.failed.join("; "))
        };
        tracing::info!(collector = NAME, detail = %base, "http collector attached");
        self.base.set_health(if a.failed.is_empty() {
            ComponentHealth::healthy(base.clone())
        } else {
            ComponentHealth::degraded(base.clone())
        });
        *self.query.lock() = Some(Inner {
            routes: RouteTable::new(patterns, self.config.max_routes_per_service.get() as usize),
            stats: Vec::new(),
            stat_index: FastMap::default(),
            inflight: FastMap::default(),
            ports: PortResolver::default(),
            services: FastMap::default(),
            series: SeriesCache::default(),
            agg: Agg::new(routes_map, agg_map),
        });
        let metrics = HttpMetrics::new(ctx.telemetry);
        let lost = ctx.telemetry.events_lost.with_label_values(&[NAME]);
        self.base.begin(&ctx);
        let w = Worker {
            query: self.query.clone(),
            processes: self.processes.clone(),
            metrics,
        };
        let drain = w.clone();
        self.base.spawn(events.run(move |evs| drain.drain_all(evs)));
        let poller = w.clone();
        self.base.spawn(async move {
            let mut tick = tokio::time::interval(AGG_POLL);
            loop {
                tick.tick().await;
                poller.poll_agg();
            }
        });
        if !window.is_zero() {
            self.base.spawn(async move {
                tokio::time::sleep(window).await;
                match sniff.set(0, 0, 0) {
                    Ok(()) => tracing::info!(
                        collector = NAME,
                        "content sniffing of unknown fds ended (start-up window over)"
                    ),
                    Err(e) => tracing::warn!(collector = NAME, "cannot end content sniffing: {e}"),
                }
            });
        }
        self.base.spawn(housekeeping(
            counters,
            conns,
            w,
            lost,
            self.base.shared_health(),
            base,
            a.failed.is_empty(),
        ));
        self.base.keep(obj);
        Ok(())
    }
}

#[derive(Clone)]
struct Worker {
    query: HttpQuery,
    processes: ProcessTable,
    metrics: HttpMetrics,
}

fn prefix(ev: &HttpEvent) -> &[u8] {
    &ev.prefix[..(ev.prefix_len as usize).min(ev.prefix.len())]
}

impl Worker {
    /// Applies every queued event, under one lock: the API waits for a
    /// batch at most.
    fn drain_all(&self, events: &mut Events<'_, HttpEvent>) {
        let mut g = self.query.lock();
        let Some(inner) = g.as_mut() else { return };
        let now = now_secs();
        for ev in events {
            self.apply(inner, &ev, now);
        }
        inner.series.flush();
    }

    /// The process's service name; its comm when it is already gone.
    fn service(&self, cache: &mut FastMap<u32, String>, tgid: u32, comm: &[u8]) -> String {
        if let Some(s) = cache.get(&tgid) {
            return s.clone();
        }
        let s = if let Some(p) = self.processes.get(tgid) {
            p.service
        } else {
            match comm_str(comm) {
                c if c.is_empty() => return "unknown".to_owned(),
                c => c,
            }
        };
        cache.insert(tgid, s.clone());
        s
    }

    fn apply(&self, inner: &mut Inner, ev: &HttpEvent, now: u64) {
        let client = ev.role == HttpRole::Client as u8;
        let role = if client { "client" } else { "server" };
        let closed = ev.flags & EVENT_CLOSED != 0;
        match HttpEventKind::from_u32(ev.kind) {
            Some(HttpEventKind::Complete) => self.complete(inner, ev, client, now),
            Some(HttpEventKind::ResponseEnd) => {
                inner
                    .series
                    .sizes((ev.tgid, ev.fd), ev.req_bytes, ev.resp_bytes)
            }
            Some(HttpEventKind::Aborted) => {
                let svc = self.service(&mut inner.services, ev.tgid, &ev.comm);
                self.metrics.aborted.with_label_values(&[role, &svc]).inc();
            }
            None => tracing::debug!(collector = NAME, kind = ev.kind, "unknown event kind"),
        }
        if closed {
            inner.ports.forget(ev.tgid, ev.fd);
            inner.series.forget((ev.tgid, ev.fd));
        }
    }

    /// `now`: the batch's clock (seconds), read once per drain rather
    /// than once per event.
    fn complete(&self, inner: &mut Inner, ev: &HttpEvent, client: bool, now: u64) {
        if ev.prev_req_bytes > 0 {
            inner
                .series
                .sizes((ev.tgid, ev.fd), ev.prev_req_bytes, ev.prev_resp_bytes);
        }
        let Some((method, path)) = parse_request_line(prefix(ev)) else {
            self.metrics
                .unparsed
                .with_label_values(&[if client { "client" } else { "server" }])
                .inc();
            return;
        };
        let port = if client {
            0
        } else if ev.lport != 0 {
            ev.lport
        } else {
            inner.ports.port(ev.tgid, ev.fd).unwrap_or(0)
        };
        let group = (client, ev.tgid, port, ev.status, method);
        // The profiler's tag of this request line (server side, profiler on).
        let tag = (!client && self.query.routes().is_some())
            .then(|| route_tag(&ev.prefix, usize::from(ev.prefix_len).min(ev.prefix.len())));
        let i = match inner.series.find(&group, path) {
            Some(i) => i,
            None => {
                let tags: Vec<u32> = tag.into_iter().collect();
                let s = self.new_series(inner, &ev.comm, &tags, group, path);
                inner.series.insert(group, path, s)
            }
        };
        let ns = ev.end_ns.saturating_sub(ev.start_ns);
        inner.series.observe(i, ns, (ev.tgid, ev.fd));
        let series = inner.series.get(i);
        if series.overflow {
            self.metrics
                .route_overflow
                .with_label_values(&[&series.stat.service])
                .inc();
        }
        if let Some(s) = series.stat_slot.and_then(|i| inner.stats.get_mut(i)) {
            s.1.observe(ns, is_error(client, ev.status), now);
        }
        // Seen twice: later requests of this path are counted in the kernel.
        let l = Labelled {
            ev,
            method,
            path,
            port,
            route: &series.stat.route,
            tag,
        };
        if let Some((k, id)) = inner.agg.ids.learn(&l, now) {
            inner.agg.insert(&k, id);
        }
    }

    /// Resolves labels and metric handles for a (group, path) not cached;
    /// `comm`: the task name of the event (the service when the process is
    /// gone); `tags`: the profiler's route tags that stand for it.
    fn new_series(
        &self,
        inner: &mut Inner,
        comm: &[u8],
        tags: &[u32],
        group: Group,
        path: &str,
    ) -> Series {
        let (client, tgid, port, status, method) = group;
        let service = self.service(&mut inner.services, tgid, comm);
        let (route, overflow) = inner.routes.route(&service, path);
        if !client && let Some(share) = self.query.routes() {
            // The profiler tags samples of the serving thread with the
            // tag of its request line (hashed from what the kernel recorded).
            for &tag in tags {
                share.learn(tgid, tag, method, &route);
            }
        }
        let status = status.to_string();
        let m = &self.metrics;
        let (duration, sizes) = if client {
            (
                m.client_duration
                    .local(&[method, &status, &route, &service]),
                None,
            )
        } else {
            let port = if port == 0 {
                String::new()
            } else {
                port.to_string()
            };
            let l = [method, status.as_str(), &route, &service, &port];
            (
                m.server_duration.local(&l),
                Some((m.server_req_size.local(&l), m.server_resp_size.local(&l))),
            )
        };
        let stat = StatKey {
            client,
            pid: tgid,
            service,
            method,
            route,
        };
        let stat_slot = match inner.stat_index.get(&stat) {
            Some(&i) => Some(i),
            None if inner.stats.len() < MAX_STAT_KEYS => {
                inner.stats.push((stat.clone(), RouteStats::default()));
                inner.stat_index.insert(stat.clone(), inner.stats.len() - 1);
                Some(inner.stats.len() - 1)
            }
            None => None,
        };
        Series {
            duration,
            sizes,
            overflow,
            stat,
            stat_slot,
        }
    }

    /// Adds what the kernel counted for `k` since the last read to the
    /// series and summary its id stands for.
    fn apply_counts(&self, inner: &mut Inner, k: HttpAggKey, d: &Delta, now: u64) {
        let Some(info) = inner.agg.ids.info.get(&k.id) else {
            return;
        };
        let (client, tgid, port, method, _) = info.key.clone();
        let (path, comm, tags) = (info.path.clone(), info.comm, info.tags.clone());
        let group = (client, tgid, port, k.status, method);
        let i = match inner.series.find(&group, &path) {
            Some(i) => i,
            None => {
                let s = self.new_series(inner, &comm, &tags, group, &path);
                inner.series.insert(group, &path, s)
            }
        };
        inner.series.add(i, d);
        let series = inner.series.get(i);
        let n = d.exchanges();
        if series.overflow && n > 0 {
            self.metrics
                .route_overflow
                .with_label_values(&[&series.stat.service])
                .inc_by(n);
        }
        if n > 0
            && let Some(s) = series.stat_slot.and_then(|i| inner.stats.get_mut(i))
        {
            s.1.add(n, is_error(client, k.status), &d.log, now);
        }
    }

    /// Reads the kernel's counts and applies what moved.
    fn poll_agg_locked(&self, inner: &mut Inner) {
        let deltas = inner.agg.poll();
        if deltas.is_empty() {
            return;
        }
        let now = now_secs();
        for (k, d) in &deltas {
            self.apply_counts(inner, *k, d, now);
        }
        inner.series.flush();
    }

    fn poll_agg(&self) {
        if let Some(inner) = self.query.lock().as_mut() {
            self.poll_agg_locked(inner);
        }
    }

    /// Deletes the kernel's dictionary and counts of exited processes,
    /// after a last read of their counts.
    fn release_agg(&self) {
        let mut g = self.query.lock();
        let Some(inner) = g.as_mut() else { return };
        let dead: HashSet<u32> = inner
            .agg
            .ids
            .tgids()
            .into_iter()
            .filter(|t| !std::path::Path::new(&format!("/proc/{t}")).exists())
            .collect();
        if dead.is_empty() {
            return;
        }
        self.poll_agg_locked(inner);
        let (keys, ids) = inner.agg.ids.release(&dead);
        inner.agg.delete(&keys, &ids);
    }

    /// Scans the kernel's connection table for requests in flight, and
    /// deletes the entries of processes that exited (exit closes fds
    /// without close(2), so the kernel side never sees those closes).
    fn scan_inflight(&self, conns: &mut BpfHashMap<MapData, HttpConnKey, HttpConn>) {
        let mut found: Vec<(HttpConnKey, HttpConn)> = Vec::new();
        let mut dead: Vec<HttpConnKey> = Vec::new();
        let mut gone: Vec<(u32, u8)> = Vec::new();
        let mut alive: HashMap<u32, bool> = HashMap::new();
        for item in conns.iter() {
            let Ok((k, c)) = item else {
                // Entries deleted while we iterate: fine, next scan.
                break;
            };
            let live = *alive
                .entry(k.tgid)
                .or_insert_with(|| std::path::Path::new(&format!("/proc/{}", k.tgid)).exists());
            if !live {
                dead.push(k);
            } else if c.flags & CONN_GONE != 0 {
                // Reset with a request in flight that no response
                // completed since (see CONN_GONE): aborted.
                if c.state == state::REQUEST {
                    gone.push((k.tgid, c.role));
                }
                dead.push(k);
            } else if c.state == state::REQUEST {
                found.push((k, c));
            }
        }
        for k in dead {
            let _ = conns.remove(&k);
        }
        let mut g = self.query.lock();
        let Some(inner) = g.as_mut() else { return };
        for (tgid, role) in gone {
            let svc = self.service(&mut inner.services, tgid, &[]);
            let role = if role == HttpRole::Client as u8 {
                "client"
            } else {
                "server"
            };
            self.metrics.aborted.with_label_values(&[role, &svc]).inc();
        }
        inner.inflight.clear();
        self.metrics.server_active.reset();
        for (k, c) in found {
            let p = &c.prefix[..(c.prefix_len as usize).min(c.prefix.len())];
            let Some((method, path)) = parse_request_line(p) else {
                continue;
            };
            let service = self.service(&mut inner.services, k.tgid, &[]);
            let client = c.role == HttpRole::Client as u8;
            if !client {
                self.metrics
                    .server_active
                    .with_label_values(&[method, &service])
                    .inc();
            }
            let (route, _) = inner.routes.route(&service, path);
            *inner
                .inflight
                .entry(StatKey {
                    client,
                    pid: k.tgid,
                    service,
                    method,
                    route,
                })
                .or_default() += 1;
        }
    }
}

async fn housekeeping(
    mut counters: KernelCounters<HttpCounter>,
    mut conns: BpfHashMap<MapData, HttpConnKey, HttpConn>,
    w: Worker,
    lost: IntCounter,
    health: SharedHealth,
    base: String,
    fully_attached: bool,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        let dropped = counters
            .export(&w.metrics.kernel, &[])
            .get(HttpCounter::RingbufFull);
        lost.inc_by(dropped);
        w.scan_inflight(&mut conns);
        w.release_agg();
        if ticks.is_multiple_of(10) {
            // Pids get reused: re-resolve service names now and then.
            if let Some(inner) = w.query.lock().as_mut() {
                inner.services.clear();
                inner.series.clear();
            }
        }
        ticks += 1;
        health.set(if dropped > 0 {
            ComponentHealth::degraded(format!(
                "{base}; {dropped} events lost to a full ring buffer in the last second"
            ))
        } else if fully_attached {
            ComponentHealth::healthy(base.clone())
        } else {
            ComponentHealth::degraded(base.clone())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_checks_length() {
        use crate::collectors::kit::decode;
        assert!(decode::<HttpEvent>(&[0u8; 16]).is_none());
        let mut b = vec![0u8; size_of::<HttpEvent>()];
        b[0] = 1;
        b[4..8].copy_from_slice(&42u32.to_ne_bytes());
        let ev: HttpEvent = decode(&b).unwrap();
        assert_eq!(ev.kind, 1);
        assert_eq!(ev.tgid, 42);
    }
}
