//! Alert state per rule and label group: inactive -> pending -> firing ->
//! resolved, plus a bounded history of resolved alerts.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
pub use sonde_wire::alerts::AlertState;

use super::{eval::Sample, rules::Rule, store::Labels};

/// One alert instance (one label group of one rule).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alert {
    pub name: String,
    pub severity: String,
    pub state: AlertState,
    pub value: f64,
    /// Full label set: series labels, rule labels, alertname, severity.
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    /// When the condition started to hold.
    pub active_at: SystemTime,
    pub fired_at: Option<SystemTime>,
    pub resolved_at: Option<SystemTime>,
}

/// What changed in one evaluation, for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Fired,
    Resolved,
}

#[derive(Default)]
pub struct RuleState {
    /// Keyed by the series labels the expression produced.
    active: BTreeMap<Labels, Alert>,
}

impl RuleState {
    /// Applies one evaluation result at `now`. Returns the alerts that began
    /// firing or resolved; resolved ones are also pushed to `history`.
    pub fn update(
        &mut self,
        rule: &Rule,
        samples: &[Sample],
        now: SystemTime,
        history: &mut History,
    ) -> Vec<(Transition, Alert)> {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for s in samples {
            if !rule.op.holds(s.value, rule.threshold) {
                continue;
            }
            seen.push(s.labels.clone());
            let a = self
                .active
                .entry(s.labels.clone())
                .or_insert_with(|| Alert {
                    name: rule.name.clone(),
                    severity: rule.severity.clone(),
                    state: AlertState::Pending,
                    value: s.value,
                    labels: alert_labels(rule, &s.labels),
                    annotations: BTreeMap::new(),
                    active_at: now,
                    fired_at: None,
                    resolved_at: None,
                });
            a.value = s.value;
            // Annotations follow the current value, as in Prometheus.
            a.annotations = rule
                .annotations
                .iter()
                .map(|(k, t)| (k.clone(), t.render(s.value, &a.labels)))
                .collect();
            let held = now.duration_since(a.active_at).unwrap_or(Duration::ZERO);
            if a.state == AlertState::Pending && held >= rule.for_ {
                a.state = AlertState::Firing;
                a.fired_at = Some(now);
                out.push((Transition::Fired, a.clone()));
            }
        }
        // Every group whose condition no longer holds (or that vanished).
        let gone: Vec<Labels> = self
            .active
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for k in gone {
            let Some(mut a) = self.active.remove(&k) else {
                continue;
            };
            // A pending alert that clears simply goes back to inactive.
            if a.state == AlertState::Firing {
                a.state = AlertState::Resolved;
                a.resolved_at = Some(now);
                history.push(a.clone());
                out.push((Transition::Resolved, a));
            }
        }
        out
    }

    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.active.values()
    }
}

fn alert_labels(rule: &Rule, series: &Labels) -> Labels {
    let mut l = series.clone();
    l.extend(rule.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    l.insert("alertname".into(), rule.name.clone());
    l.insert("severity".into(), rule.severity.clone());
    l
}

/// Resolved alerts, newest last, at most `cap`.
pub struct History {
    cap: usize,
    items: VecDeque<Alert>,
}

impl History {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            items: VecDeque::new(),
        }
    }

    pub fn push(&mut self, a: Alert) {
        if self.cap == 0 {
            return;
        }
        while self.items.len() >= self.cap {
            self.items.pop_front();
        }
        self.items.push_back(a);
    }

    pub fn items(&self) -> std::collections::vec_deque::Iter<'_, Alert> {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{config::RuleConfig, rules::compile_rule};

    fn rule(for_: &str) -> Rule {
        compile_rule(
            "t",
            &RuleConfig {
                name: "Busy".into(),
                expr: "sonde_processes_tracked".into(),
                op: ">".into(),
                threshold: 10.0,
                for_: for_.into(),
                severity: "critical".into(),
                labels: [("team".to_owned(), "ops".to_owned())].into(),
                annotations: [(
                    "summary".to_owned(),
                    "{{ $labels.host }} has {{ $value }}".to_owned(),
                )]
                .into(),
            },
        )
        .unwrap()
    }

    fn sample(host: &str, v: f64) -> Sample {
        Sample {
            labels: [("host".to_owned(), host.to_owned())].into(),
            value: v,
        }
    }

    #[test]
    fn pending_then_firing_then_resolved_per_group() {
        let r = rule("10s");
        let mut st = RuleState::default();
        let mut h = History::new(2);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |s| t0 + Duration::from_secs(s);
        assert!(
            st.update(&r, &[sample("a", 11.0), sample("b", 5.0)], at(0), &mut h)
                .is_empty()
        );
        let a = st.alerts().next().unwrap();
        assert_eq!(
            (a.state, a.labels["alertname"].as_str()),
            (AlertState::Pending, "Busy")
        );
        assert_eq!(a.labels["team"], "ops");
        assert_eq!(a.annotations["summary"], "a has 11");
        assert!(
            st.update(&r, &[sample("a", 12.0)], at(5), &mut h)
                .is_empty()
        );
        let t = st.update(&r, &[sample("a", 13.0), sample("b", 20.0)], at(10), &mut h);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, Transition::Fired);
        assert_eq!(t[0].1.annotations["summary"], "a has 13");
        assert_eq!(t[0].1.active_at, at(0));
        // Still firing: no new transition.
        assert!(
            st.update(&r, &[sample("a", 13.0), sample("b", 20.0)], at(15), &mut h)
                .is_empty()
        );
        // a clears (resolved, into history); b is pending since 10 and clears (no notification).
        let t = st.update(&r, &[sample("a", 1.0)], at(16), &mut h);
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].0.clone(), t[0].1.state),
            (Transition::Resolved, AlertState::Resolved)
        );
        assert_eq!(t[0].1.resolved_at, Some(at(16)));
        assert_eq!(st.alerts().count(), 0);
        assert_eq!(h.items().count(), 1);
    }

    #[test]
    fn zero_for_fires_at_once_and_history_is_bounded() {
        let r = rule("0s");
        let mut st = RuleState::default();
        let mut h = History::new(2);
        let t0 = SystemTime::UNIX_EPOCH;
        for i in 0..3u64 {
            let t = st.update(
                &r,
                &[sample("a", 50.0)],
                t0 + Duration::from_secs(2 * i),
                &mut h,
            );
            assert_eq!(t[0].0, Transition::Fired);
            let t = st.update(&r, &[], t0 + Duration::from_secs(2 * i + 1), &mut h);
            assert_eq!(t[0].0, Transition::Resolved);
        }
        assert_eq!(h.items().count(), 2);
        assert_eq!(
            h.items().next().unwrap().active_at,
            t0 + Duration::from_secs(2)
        );
    }
}
