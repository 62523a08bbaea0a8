//! The evaluation loop: every `interval`, record the agent's own metrics,
//! evaluate each rule, advance alert states and hand notifications to the
//! receivers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
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
    inner: Arc<Inner>,
}

struct Inner {
    rules: Vec<Rule>,
    receivers: Vec<Arc<Receiver>>,
    interval: Duration,
    resend: Duration,
    external_url: String,
    state: Mutex<EngineState>,
    metrics: Metrics,
    telemetry: Telemetry,
    started: Instant,
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
        let receivers = compiled
            .alertmanagers
            .into_iter()
            .map(|u| (Kind::Alertmanager, u))
            .chain(compiled.webhooks.into_iter().map(|u| (Kind::Webhook, u)))
            .map(|(kind, (url, timeout))| {
                let name = url.to_string();
                let m = ReceiverMetrics {
                    sent: sent.with_label_values(&[&name]),
                    failed: failed.with_label_values(&[&name]),
                    dropped: dropped.with_label_values(&[&name]),
                    queued: queued.with_label_values(&[&name]),
                };
                Receiver::new(kind, url, timeout, cfg.queue_size.get() as usize, m)
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
        let state = EngineState {
            store: Store::new(wanted, retention, interval, cfg.max_series.get() as usize),
            per_rule: rules.iter().map(|_| RuleState::default()).collect(),
            history: History::new(cfg.history_size.get() as usize),
            last_sent: HashMap::new(),
            evaluations: 0,
            last_evaluation: None,
            last_error: None,
        };
        Self {
            inner: Arc::new(Inner {
                rules,
                receivers,
                interval,
                resend: cfg.resend_interval.get(),
                external_url: cfg.external_url.clone(),
                state: Mutex::new(state),
                metrics,
                telemetry: telemetry.clone(),
                started: Instant::now(),
            }),
        }
    }

    /// Starts the evaluation loop and one delivery worker per receiver.
    pub fn spawn(&self, cfg: &AlertsConfig, shutdown: CancellationToken) {
        for r in &self.inner.receivers {
            tokio::spawn(r.clone().run(
                cfg.retry_initial.get(),
                cfg.retry_max.get(),
                shutdown.clone(),
            ));
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.inner.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => this.evaluate_once(),
                    _ = shutdown.cancelled() => return,
                }
            }
        });
        tracing::info!(
            rules = self.inner.rules.len(),
            receivers = self.inner.receivers.len(),
            interval = ?self.inner.interval,
            "alert engine started"
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EngineState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One evaluation round (public for tests).
    pub fn evaluate_once(&self) {
        let inner = &*self.inner;
        let timer = Instant::now();
        let families = inner.telemetry.registry.gather();
        let now = SystemTime::now();
        let mut guard = self.lock();
        let st = &mut *guard;
        st.store
            .ingest(inner.started.elapsed().as_secs_f64(), &families);
        inner.metrics.series_dropped.inc_by(st.store.take_dropped());
        let valid_for = 4 * inner.resend.max(inner.interval);
        let mut out: Vec<WireAlert> = Vec::new();
        let mut error = None;
        for (rule, rs) in inner.rules.iter().zip(st.per_rule.iter_mut()) {
            let samples = match eval_vector(&rule.expr, &st.store) {
                Ok(s) => s,
                Err(e) => {
                    inner
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
        inner.metrics.alerts.reset();
        for a in st.per_rule.iter().flat_map(|r| r.alerts()) {
            inner
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
        inner
            .metrics
            .eval_duration
            .observe(timer.elapsed().as_secs_f64());
    }

    pub fn report(&self, all: bool) -> AlertsReport {
        let now = SystemTime::now();
        let st = self.lock();
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
            rules: self.inner.rules.len(),
            interval_seconds: self.inner.interval.as_secs_f64(),
            evaluations: st.evaluations,
            last_evaluation: st.last_evaluation.map(rfc3339),
            last_error: st.last_error.clone(),
            alerts,
            history,
            receivers: self.inner.receivers.iter().map(|r| r.status()).collect(),
        }
    }

    /// For /health: degraded while a rule fails to evaluate or a receiver
    /// cannot be reached with alerts waiting.
    pub fn health(&self) -> ComponentHealth {
        let st = self.lock();
        if let Some(e) = &st.last_error {
            return ComponentHealth::degraded(format!("rule evaluation failed: {e}"));
        }
        drop(st);
        let failing: Vec<String> = self
            .inner
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
            self.inner.rules.len(),
            crate::duration::format_duration(self.inner.interval)
        ))
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
}
