//! The evaluation loop: every `interval`, record the agent's own metrics,
//! evaluate each rule, advance alert states and hand notifications to the
//! receivers. [`AlertEngine::reload`] swaps in new rules and receivers at
//! run time (SIGHUP), keeping the state of rules that kept their name.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant, SystemTime},
};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts};
pub use sonde_wire::alerts::{AlertOut, AlertsReport};
use tokio_util::sync::CancellationToken;

use super::{
    config::AlertsConfig,
    eval::eval_vector,
    notify::{Kind, Receiver, ReceiverMetrics, WireAlert, rfc3339},
    rules::{Compiled, Rule},
    state::{Alert, AlertState, History, RuleState, Transition},
    store::Store,
};
use crate::{collectors::ComponentHealth, telemetry::Telemetry};

/// An alert as the API shows it, at `now`.
fn alert_out(a: &Alert, now: SystemTime) -> AlertOut {
    let since = match a.state {
        AlertState::Pending => a.active_at,
        _ => a.fired_at.unwrap_or(a.active_at),
    };
    let until = a.resolved_at.unwrap_or(now);
    AlertOut {
        name: a.name.clone(),
        severity: a.severity.clone(),
        state: a.state,
        value: a.value.is_finite().then_some(a.value),
        labels: a.labels.clone(),
        annotations: a.annotations.clone(),
        active_at: rfc3339(a.active_at),
        since_seconds: until
            .duration_since(since)
            .unwrap_or_default()
            .as_secs_f64(),
        fired_at: a.fired_at.map(rfc3339),
        resolved_at: a.resolved_at.map(rfc3339),
    }
}

struct Metrics {
    alerts: IntGaugeVec,
    eval_duration: Histogram,
    eval_failures: IntCounterVec,
    series_dropped: IntCounter,
}

struct EngineState {
    store: Store,
    per_rule: Vec<RuleState>,
    history: History,
    /// fingerprint -> when its firing notification was last queued.
    last_sent: HashMap<String, Instant>,
    evaluations: u64,
    last_evaluation: Option<SystemTime>,
    last_error: Option<String>,
}

/// Handle to the running engine; cheap to clone, shared with the API.
#[derive(Clone)]
pub struct AlertEngine {
    shared: Arc<Shared>,
}

/// What lives as long as the agent: metrics (registered once) and the
/// current generation of rules and receivers.
struct Shared {
    current: RwLock<Arc<Inner>>,
    metrics: Metrics,
    receiver_metrics: ReceiverVecs,
    telemetry: Telemetry,
    started: Instant,
    /// The agent's shutdown token once `spawn` ran, and the token of the
    /// running generation's tasks (cancelled when a reload replaces them).
    run: Mutex<Option<(CancellationToken, CancellationToken)>>,
}

/// The per-receiver metric families; a receiver's series carry its URL.
struct ReceiverVecs {
    sent: IntCounterVec,
    failed: IntCounterVec,
    dropped: IntCounterVec,
    queued: IntGaugeVec,
}

impl ReceiverVecs {
    fn for_url(&self, name: &str) -> ReceiverMetrics {
        ReceiverMetrics {
            sent: self.sent.with_label_values(&[name]),
            failed: self.failed.with_label_values(&[name]),
            dropped: self.dropped.with_label_values(&[name]),
            queued: self.queued.with_label_values(&[name]),
        }
    }

    fn forget(&self, name: &str) {
        let _ = self.sent.remove_label_values(&[name]);
        let _ = self.failed.remove_label_values(&[name]);
        let _ = self.dropped.remove_label_values(&[name]);
        let _ = self.queued.remove_label_values(&[name]);
    }
}

/// One generation of rules, receivers and their state.
struct Inner {
    rules: Vec<Rule>,
    receivers: Vec<Arc<Receiver>>,
    interval: Duration,
    resend: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    queue_size: usize,
    external_url: String,
    state: Mutex<EngineState>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, EngineState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AlertEngine {
    /// Builds the engine from an already validated config (`compiled` comes
    /// from `AlertsConfig::compile`) and registers its metrics.
    pub fn new(cfg: &AlertsConfig, compiled: Compiled, telemetry: &Telemetry) -> Self {
        let metrics = Metrics {
            alerts: telemetry.register(
                IntGaugeVec::new(
                    Opts::new(
                        "sonde_alerts",
                        "Alert instances of the built-in rule engine by state (pending, firing).",
                    ),
                    &["alertname", "severity", "state"],
                )
                .expect("valid metric"),
            ),
            eval_duration: telemetry.register(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "sonde_alert_evaluation_duration_seconds",
                        "Time to record samples and evaluate every alerting rule once.",
                    )
                    .buckets(vec![
                        0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            eval_failures: telemetry.register(
                IntCounterVec::new(
                    Opts::new(
                        "sonde_alert_evaluation_failures_total",
                        "Rule evaluations that failed.",
                    ),
                    &["alertname"],
                )
                .expect("valid metric"),
            ),
            series_dropped: telemetry.register(
                IntCounter::new(
                    "sonde_alert_series_dropped_total",
                    "Series the rule engine did not record because alerts.max_series was reached.",
                )
                .expect("valid metric"),
            ),
        };
        let sent = telemetry.register(
            IntCounterVec::new(
                Opts::new(
                    "sonde_alert_notifications_total",
                    "Alert notifications delivered, per receiver.",
                ),
                &["receiver"],
            )
            .expect("valid metric"),
        );
        let failed = telemetry.register(
            IntCounterVec::new(
                Opts::new(
                    "sonde_alert_notifications_failed_total",
                    "Failed alert delivery attempts (each is retried with backoff), per receiver.",
                ),
                &["receiver"],
            )
            .expect("valid metric"),
        );
        let dropped = telemetry.register(
            IntCounterVec::new(
                Opts::new(
                    "sonde_alert_notifications_dropped_total",
                    "Alert notifications dropped because the receiver's queue was full.",
                ),
                &["receiver"],
            )
            .expect("valid metric"),
        );
        let queued = telemetry.register(
            IntGaugeVec::new(
                Opts::new(
                    "sonde_alert_queue_length",
                    "Alert notifications waiting for delivery, per receiver.",
                ),
                &["receiver"],
            )
            .expect("valid metric"),
        );
        let receiver_metrics = ReceiverVecs {
            sent,
            failed,
            dropped,
            queued,
        };
        let inner = build(cfg, compiled, &receiver_metrics, |_, _, _| None, None);
        Self {
            shared: Arc::new(Shared {
                current: RwLock::new(Arc::new(inner)),
                metrics,
                receiver_metrics,
                telemetry: telemetry.clone(),
                started: Instant::now(),
                run: Mutex::new(None),
            }),
        }
    }

    fn current(&self) -> Arc<Inner> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces rules, receivers and timings with `cfg`'s (already
    /// validated: `compiled` comes from `AlertsConfig::compile`). Alerts of
    /// rules that kept their name keep their state; receivers that kept
    /// their URL, timeout and queue size keep their queue. Samples are
    /// recorded afresh, so range functions start with an empty window.
    pub fn reload(&self, cfg: &AlertsConfig, compiled: Compiled) {
        let old = self.current();
        let mut old_state = old.lock();
        let mut carried: HashMap<String, RuleState> = old
            .rules
            .iter()
            .zip(std::mem::take(&mut old_state.per_rule))
            .map(|(r, st)| (r.name.clone(), st))
            .collect();
        let history = std::mem::replace(&mut old_state.history, History::new(0));
        let last_sent = std::mem::take(&mut old_state.last_sent);
        let evaluations = old_state.evaluations;
        drop(old_state);
        let queue_size = cfg.queue_size.get() as usize;
        let reuse = |kind: Kind, url: &super::notify::HttpUrl, timeout: Duration| {
            old.receivers
                .iter()
                .find(|r| {
                    r.kind == kind
                        && &r.url == url
                        && r.timeout() == timeout
                        && old.queue_size == queue_size
                })
                .cloned()
        };
        let carry = Carry {
            per_rule: &mut carried,
            history,
            last_sent,
            evaluations,
        };
        let new = build(
            cfg,
            compiled,
            &self.shared.receiver_metrics,
            reuse,
            Some(carry),
        );
        for r in &old.receivers {
            if !new.receivers.iter().any(|n| n.url == r.url) {
                self.shared.receiver_metrics.forget(&r.url.to_string());
            }
        }
        let new = Arc::new(new);
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = new.clone();
        let mut run = self.shared.run.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((shutdown, generation)) = run.as_mut() {
            generation.cancel();
            *generation = self.start_generation(&new, shutdown);
        }
        tracing::info!(
            rules = new.rules.len(),
            receivers = new.receivers.len(),
            interval = ?new.interval,
            "alert rules reloaded"
        );
    }

    /// Starts the evaluation loop and one delivery worker per receiver.
    pub fn spawn(&self, shutdown: CancellationToken) {
        let inner = self.current();
        let generation = self.start_generation(&inner, &shutdown);
        *self.shared.run.lock().unwrap_or_else(|e| e.into_inner()) = Some((shutdown, generation));
        tracing::info!(
            rules = inner.rules.len(),
            receivers = inner.receivers.len(),
            interval = ?inner.interval,
            "alert engine started"
        );
    }

    /// Spawns `inner`'s receivers and evaluation loop under a new child
    /// token of `shutdown`, which it returns.
    fn start_generation(&self, inner: &Inner, shutdown: &CancellationToken) -> CancellationToken {
        let token = shutdown.child_token();
        for r in &inner.receivers {
            tokio::spawn(
                r.clone()
                    .run(inner.retry_initial, inner.retry_max, token.clone()),
            );
        }
        let this = self.clone();
        let period = inner.interval;
        let stop = token.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => this.evaluate_once(),
                    _ = stop.cancelled() => return,
                }
            }
        });
        token
    }

    /// One evaluation round (public for tests).
    pub fn evaluate_once(&self) {
        let shared = &*self.shared;
        let inner = &*self.current();
        let timer = Instant::now();
        let families = shared.telemetry.registry.gather();
        let now = SystemTime::now();
        let mut guard = inner.lock();
        let st = &mut *guard;
        st.store
            .ingest(shared.started.elapsed().as_secs_f64(), &families);
        shared
            .metrics
            .series_dropped
            .inc_by(st.store.take_dropped());
        let valid_for = 4 * inner.resend.max(inner.interval);
        let mut out: Vec<WireAlert> = Vec::new();
        let mut error = None;
        for (rule, rs) in inner.rules.iter().zip(st.per_rule.iter_mut()) {
            let samples = match eval_vector(&rule.expr, &st.store) {
                Ok(s) => s,
                Err(e) => {
                    shared
                        .metrics
                        .eval_failures
                        .with_label_values(&[&rule.name])
                        .inc();
                    error = Some(format!("{}: {e}", rule.name));
                    continue;
                }
            };
            for (t, a) in rs.update(rule, &samples, now, &mut st.history) {
                let w = WireAlert::from_alert(&a, now, valid_for, &inner.external_url);
                match t {
                    Transition::Fired => {
                        tracing::info!(alert = %a.name, labels = ?a.labels, value = a.value, "alert firing");
                    }
                    Transition::Resolved => {
                        tracing::info!(alert = %a.name, labels = ?a.labels, "alert resolved");
                        st.last_sent.remove(&w.fingerprint());
                        out.push(w);
                    }
                }
            }
            // New firing alerts go out now; others again every resend interval.
            for a in rs.alerts().filter(|a| a.state == AlertState::Firing) {
                let w = WireAlert::from_alert(a, now, valid_for, &inner.external_url);
                let fp = w.fingerprint();
                let due = st
                    .last_sent
                    .get(&fp)
                    .is_none_or(|t| t.elapsed() + Duration::from_millis(50) >= inner.resend);
                if due {
                    st.last_sent.insert(fp, Instant::now());
                    out.push(w);
                }
            }
        }
        shared.metrics.alerts.reset();
        for a in st.per_rule.iter().flat_map(|r| r.alerts()) {
            shared
                .metrics
                .alerts
                .with_label_values(&[&a.name, &a.severity, a.state.as_str()])
                .inc();
        }
        st.evaluations += 1;
        st.last_evaluation = Some(now);
        st.last_error = error;
        drop(guard);
        for r in &inner.receivers {
            r.enqueue(out.clone());
        }
        shared
            .metrics
            .eval_duration
            .observe(timer.elapsed().as_secs_f64());
    }

    pub fn report(&self, all: bool) -> AlertsReport {
        let now = SystemTime::now();
        let inner = self.current();
        let st = inner.lock();
        let mut alerts: Vec<AlertOut> = st
            .per_rule
            .iter()
            .flat_map(|r| r.alerts())
            .map(|a| alert_out(a, now))
            .collect();
        alerts.sort_by(|a, b| {
            (b.state == AlertState::Firing, &a.name).cmp(&(a.state == AlertState::Firing, &b.name))
        });
        let history = if all {
            st.history
                .items()
                .rev()
                .map(|a| alert_out(a, now))
                .collect()
        } else {
            Vec::new()
        };
        AlertsReport {
            enabled: true,
            rules: inner.rules.len(),
            interval_seconds: inner.interval.as_secs_f64(),
            evaluations: st.evaluations,
            last_evaluation: st.last_evaluation.map(rfc3339),
            last_error: st.last_error.clone(),
            alerts,
            history,
            receivers: inner.receivers.iter().map(|r| r.status()).collect(),
        }
    }

    /// For /health: degraded while a rule fails to evaluate or a receiver
    /// cannot be reached with alerts waiting.
    pub fn health(&self) -> ComponentHealth {
        let inner = self.current();
        let st = inner.lock();
        if let Some(e) = &st.last_error {
            return ComponentHealth::degraded(format!("rule evaluation failed: {e}"));
        }
        drop(st);
        let failing: Vec<String> = inner
            .receivers
            .iter()
            .filter(|r| r.failing())
            .map(|r| r.url.to_string())
            .collect();
        if !failing.is_empty() {
            return ComponentHealth::degraded(format!(
                "cannot deliver alerts to {} (retrying)",
                failing.join(", ")
            ));
        }
        ComponentHealth::healthy(format!(
            "{} rules every {}",
            inner.rules.len(),
            crate::duration::format_duration(inner.interval)
        ))
    }
}

/// State a reload hands from the old generation to the new one.
struct Carry<'a> {
    per_rule: &'a mut HashMap<String, RuleState>,
    history: History,
    last_sent: HashMap<String, Instant>,
    evaluations: u64,
}

/// One generation from a validated config. `reuse` returns a receiver of
/// the previous generation to keep (its queue survives a reload).
fn build(
    cfg: &AlertsConfig,
    compiled: Compiled,
    vecs: &ReceiverVecs,
    reuse: impl Fn(Kind, &super::notify::HttpUrl, Duration) -> Option<Arc<Receiver>>,
    carry: Option<Carry<'_>>,
) -> Inner {
    let queue_size = cfg.queue_size.get() as usize;
    let receivers = compiled
        .alertmanagers
        .into_iter()
        .map(|u| (Kind::Alertmanager, u))
        .chain(compiled.webhooks.into_iter().map(|u| (Kind::Webhook, u)))
        .map(|(kind, (url, timeout))| {
            reuse(kind, &url, timeout).unwrap_or_else(|| {
                let m = vecs.for_url(&url.to_string());
                Receiver::new(kind, url, timeout, queue_size, m)
            })
        })
        .collect();
    let rules = compiled.rules;
    let interval = cfg.interval.get();
    let wanted = rules
        .iter()
        .flat_map(|r| r.expr.selectors())
        .map(|s| s.name.clone())
        .collect::<Vec<_>>();
    let retention = rules
        .iter()
        .map(|r| r.expr.max_range())
        .max()
        .unwrap_or_default();
    let history_size = cfg.history_size.get() as usize;
    let mut state = EngineState {
        store: Store::new(wanted, retention, interval, cfg.max_series.get() as usize),
        per_rule: rules.iter().map(|_| RuleState::default()).collect(),
        history: History::new(history_size),
        last_sent: HashMap::new(),
        evaluations: 0,
        last_evaluation: None,
        last_error: None,
    };
    if let Some(c) = carry {
        for (rule, st) in rules.iter().zip(state.per_rule.iter_mut()) {
            if let Some(old) = c.per_rule.remove(&rule.name) {
                *st = old;
            }
        }
        for a in c.history.items().cloned() {
            state.history.push(a);
        }
        state.last_sent = c.last_sent;
        state.evaluations = c.evaluations;
    }
    Inner {
        rules,
        receivers,
        interval,
        resend: cfg.resend_interval.get(),
        retry_initial: cfg.retry_initial.get(),
        retry_max: cfg.retry_max.get(),
        queue_size,
        external_url: cfg.external_url.clone(),
        state: Mutex::new(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::config::{BuiltinRules, RuleConfig};

    #[test]
    fn evaluates_the_registry_and_tracks_state_history_and_metrics() {
        let telemetry = Telemetry::new();
        let g = telemetry.gauge("sonde_processes_tracked", "test");
        let cfg = AlertsConfig {
            builtin_rules: BuiltinRules::All(false),
            rules: vec![RuleConfig {
                name: "TooMany".into(),
                expr: "sonde_processes_tracked".into(),
                op: ">".into(),
                threshold: 5.0,
                for_: "0s".into(),
                severity: "critical".into(),
                labels: Default::default(),
                annotations: [("summary".to_owned(), "{{ $value }} tracked".to_owned())].into(),
            }],
            ..Default::default()
        };
        let engine = AlertEngine::new(&cfg, cfg.compile().unwrap(), &telemetry);
        g.set(3);
        engine.evaluate_once();
        assert!(engine.report(true).alerts.is_empty());
        g.set(9);
        engine.evaluate_once();
        let r = engine.report(false);
        assert_eq!(r.alerts.len(), 1, "{r:?}");
        assert_eq!(r.alerts[0].state, AlertState::Firing);
        assert_eq!(r.alerts[0].value, Some(9.0));
        assert_eq!(r.alerts[0].annotations["summary"], "9 tracked");
        let text = telemetry.encode();
        assert!(
            text.contains(
                r#"sonde_alerts{alertname="TooMany",severity="critical",state="firing"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("sonde_alert_evaluation_duration_seconds_count 2"),
            "{text}"
        );
        g.set(1);
        engine.evaluate_once();
        let r = engine.report(true);
        assert!(r.alerts.is_empty());
        assert_eq!(r.history.len(), 1);
        assert_eq!(r.history[0].state, AlertState::Resolved);
        assert_eq!(r.evaluations, 3);
        assert_eq!(
            engine.health().status,
            crate::collectors::HealthStatus::Healthy
        );
    }

    #[test]
    fn reload_swaps_rules_and_keeps_the_state_of_rules_that_stay() {
        let telemetry = Telemetry::new();
        let g = telemetry.gauge("sonde_processes_tracked", "test");
        let rule = |name: &str, threshold: f64| RuleConfig {
            name: name.into(),
            expr: "sonde_processes_tracked".into(),
            op: ">".into(),
            threshold,
            for_: "0s".into(),
            severity: "warning".into(),
            labels: Default::default(),
            annotations: Default::default(),
        };
        let mut cfg = AlertsConfig {
            builtin_rules: BuiltinRules::All(false),
            rules: vec![rule("Kept", 5.0), rule("Dropped", 5.0)],
            ..Default::default()
        };
        let engine = AlertEngine::new(&cfg, cfg.compile().unwrap(), &telemetry);
        g.set(9);
        engine.evaluate_once();
        let before = engine.report(false);
        assert_eq!(before.alerts.len(), 2, "{before:?}");
        let fired_at = |r: &AlertsReport, n: &str| {
            r.alerts
                .iter()
                .find(|a| a.name == n)
                .and_then(|a| a.fired_at.clone())
        };

        cfg.rules = vec![rule("Kept", 5.0), rule("New", 100.0)];
        cfg.interval = crate::duration::Dur(Duration::from_secs(2));
        engine.reload(&cfg, cfg.compile().unwrap());
        let after = engine.report(false);
        assert_eq!(after.rules, 2);
        assert_eq!(after.interval_seconds, 2.0);
        assert_eq!(after.evaluations, 1, "counted across the reload");
        assert_eq!(after.alerts.len(), 1, "{after:?}");
        assert_eq!(fired_at(&after, "Kept"), fired_at(&before, "Kept"));
        engine.evaluate_once();
        let r = engine.report(false);
        assert_eq!(fired_at(&r, "Kept"), fired_at(&before, "Kept"));
        assert!(fired_at(&r, "New").is_none(), "{r:?}");
    }
}
