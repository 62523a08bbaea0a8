//! Config reload on SIGHUP: read the start-up file again (with the start-up
//! `SONDE_*` overrides), validate it exactly as `--check-config` does, and
//! apply what can change while running.
//!
//! Keys are compared as dotted TOML paths (an array, such as
//! `alerts.rules`, is one key). Every `alerts.*` key but `alerts.enabled` is
//! applied by swapping the alert engine's rules and receivers; collectors
//! apply their own user-side keys through `Collector::reload` and say which.
//! Everything else is baked into loaded programs, maps or listeners: it is
//! reported as needing a restart (log, `sonde status`, /health) and the
//! running value is kept. A file that does not validate changes nothing.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use prometheus::{IntCounterVec, IntGauge, Opts};
use serde::Deserialize;
pub use sonde_wire::status::{ConfigStatus, ReloadOut};

use crate::{
    alerts::{AlertEngine, notify::rfc3339},
    collectors::{Collector, ComponentHealth},
    config::{Config, ConfigError},
    telemetry::Telemetry,
};

/// Where the running config was read from, to read it again.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    /// The environment at start: a reload applies the same overrides.
    pub env: Vec<(String, String)>,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.path.as_deref(), self.env.iter().cloned())
    }
}

/// The running config and what reloads did to it; shared with the API.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Mutex<State>>,
    source: Arc<ConfigSource>,
    counts: IntCounterVec,
    pending: IntGauge,
}

struct State {
    running: Config,
    status: ConfigStatus,
}

impl Reloader {
    pub fn new(source: ConfigSource, running: Config, telemetry: &Telemetry) -> Self {
        let counts = telemetry.register(
            IntCounterVec::new(
                Opts::new(
                    "sonde_config_reloads_total",
                    "Config reloads (SIGHUP) by result: ok (valid file, live keys applied) \
                     or rejected (invalid file, running config kept).",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        // Both series exist from the start, so a rule can watch for increases.
        counts.with_label_values(&["ok"]);
        counts.with_label_values(&["rejected"]);
        let pending = telemetry.gauge(
            "sonde_config_restart_pending_keys",
            "Config keys whose value in the file differs from the running one \
             until the agent restarts.",
        );
        let status = ConfigStatus {
            path: source.path.as_ref().map(|p| p.display().to_string()),
            ..Default::default()
        };
        Self {
            inner: Arc::new(Mutex::new(State { running, status })),
            source: Arc::new(source),
            counts,
            pending,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> ConfigStatus {
        self.lock().status.clone()
    }

    /// For /health: degraded while the file on disk is one the agent refused.
    pub fn health(&self) -> ComponentHealth {
        let st = self.lock();
        let from = st.status.path.as_deref().unwrap_or("built-in defaults");
        let restart = if st.status.restart_needed.is_empty() {
            String::new()
        } else {
            format!(
                "; restart needed for {}",
                st.status.restart_needed.join(", ")
            )
        };
        match &st.status.last_reload {
            Some(r) if r.result == "rejected" => ComponentHealth::degraded(format!(
                "last reload rejected, running the previous config: {}{restart}",
                r.error.as_deref().unwrap_or("")
            )),
            _ => ComponentHealth::healthy(format!("loaded from {from}{restart}")),
        }
    }

    /// Reads the file again and applies it. Never fails: a refused file is
    /// logged, counted and shown in the status, and changes nothing.
    pub fn reload(&self, alerts: Option<&AlertEngine>, collectors: &mut [Box<dyn Collector>]) {
        let at = rfc3339(SystemTime::now());
        let new = match self.source.load() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("config reload rejected, keeping the running config: {e}");
                self.counts.with_label_values(&["rejected"]).inc();
                self.lock().status.last_reload = Some(ReloadOut {
                    at,
                    result: "rejected".into(),
                    error: Some(e.to_string()),
                    applied: Vec::new(),
                });
                self.reloads_changed();
                return;
            }
        };
        let mut st = self.lock();
        let changed = changed_keys(&st.running, &new);
        let mut applied: BTreeSet<String> = BTreeSet::new();
        let alert_keys: Vec<&String> = changed
            .iter()
            .filter(|k| k.starts_with("alerts.") && *k != "alerts.enabled")
            .collect();
        if !alert_keys.is_empty()
            && let Some(engine) = alerts
            && new.alerts.enabled
        {
            // Validated by load, which compiled the rules already.
            match new.alerts.compile() {
                Ok(compiled) => {
                    engine.reload(&new.alerts, compiled);
                    applied.extend(alert_keys.into_iter().cloned());
                }
                Err(e) => tracing::error!("alert rules did not compile on reload: {e}"),
            }
        }
        for c in collectors.iter_mut() {
            applied.extend(
                c.reload(&new.collectors)
                    .into_iter()
                    .filter(|k| changed.iter().any(|c| c == k))
                    .map(str::to_owned),
            );
        }
        st.running = patch(&st.running, &new, &applied);
        let restart = changed_keys(&st.running, &new);
        let applied: Vec<String> = applied.into_iter().collect();
        if changed.is_empty() {
            tracing::info!("config reloaded: nothing changed");
        } else {
            tracing::info!(applied = ?applied, restart_needed = ?restart, "config reloaded");
        }
        if !restart.is_empty() {
            tracing::warn!(
                keys = ?restart,
                "config keys changed that take effect only after a restart: kept their running values"
            );
        }
        self.counts.with_label_values(&["ok"]).inc();
        self.pending.set(restart.len() as i64);
        st.status.last_reload = Some(ReloadOut {
            at,
            result: "ok".into(),
            error: None,
            applied,
        });
        st.status.restart_needed = restart;
        drop(st);
        self.reloads_changed();
    }

    fn reloads_changed(&self) {
        let mut st = self.lock();
        st.status.reloads_ok = self.counts.with_label_values(&["ok"]).get();
        st.status.reloads_rejected = self.counts.with_label_values(&["rejected"]).get();
    }
}

/// `config` as a TOML tree (every field serializes).
fn tree(config: &Config) -> toml::Table {
    toml::Table::try_from(config).expect("the config serializes to TOML")
}

/// Dotted keys whose values differ between `a` and `b`, sorted.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let mut out = Vec::new();
    diff("", &tree(a), &tree(b), &mut out);
    out.sort();
    out
}

fn diff(prefix: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<String>) {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => diff(&path, x, y, out),
            (x, y) if x != y => out.push(path),
            _ => {}
        }
    }
}

/// `running` with the values of `keys` taken from `new`.
fn patch(running: &Config, new: &Config, keys: &BTreeSet<String>) -> Config {
    let mut to = tree(running);
    let from = tree(new);
    for key in keys {
        let parts: Vec<&str> = key.split('.').collect();
        let value = lookup(&from, &parts).cloned();
        set(&mut to, &parts, value);
    }
    Config::deserialize(toml::Value::Table(to)).unwrap_or_else(|e| {
        // Both inputs are valid configs and keys are leaves of them.
        tracing::error!("cannot merge reloaded keys: {e}");
        running.clone()
    })
}

fn lookup<'a>(t: &'a toml::Table, parts: &[&str]) -> Option<&'a toml::Value> {
    let (last, parents) = parts.split_last()?;
    let mut cur = t;
    for p in parents {
        cur = cur.get(*p)?.as_table()?;
    }
    cur.get(*last)
}

fn set(t: &mut toml::Table, parts: &[&str], value: Option<toml::Value>) {
    let Some((last, parents)) = parts.split_last() else {
        return;
    };
    let mut cur = t;
    for p in parents {
        let Some(next) = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
        else {
            return;
        };
        cur = next;
    }
    match value {
        Some(v) => cur.insert(last.to_string(), v),
        None => cur.remove(*last),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::from_str_with_env(text, "t.toml", Vec::new()).unwrap()
    }

    #[test]
    fn changed_keys_are_dotted_leaves_and_arrays_are_one_key() {
        let a = parse("");
        let b = parse(
            "[collectors.profile]\nfrequency_hz = 99\n[collectors.http]\nroutes = [\"/a/{id}\"]\n\
             [[alerts.rules]]\nname = \"X\"\nexpr = \"sonde_build_info\"\nthreshold = 0\n",
        );
        assert_eq!(
            changed_keys(&a, &b),
            [
                "alerts.rules",
                "collectors.http.routes",
                "collectors.profile.frequency_hz"
            ]
        );
        assert!(changed_keys(&b, &b).is_empty());
    }

    #[test]
    fn patch_takes_only_the_applied_keys() {
        let a = parse("");
        let b = parse(
            "[collectors.profile]\nfrequency_hz = 99\n[collectors.http]\nroutes = [\"/a/{id}\"]\n",
        );
        let keys = BTreeSet::from(["collectors.http.routes".to_owned()]);
        let p = patch(&a, &b, &keys);
        assert_eq!(p.collectors.http.routes, b.collectors.http.routes);
        assert_eq!(p.collectors.profile.frequency_hz.get(), 19);
        assert_eq!(changed_keys(&p, &b), ["collectors.profile.frequency_hz"]);
    }

    #[test]
    fn reload_applies_alert_keys_reports_restart_keys_and_counts_refusals() {
        let dir = std::env::temp_dir().join(format!("sonde-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sonde.toml");
        std::fs::write(&file, "").unwrap();
        let source = ConfigSource {
            path: Some(file.clone()),
            env: Vec::new(),
        };
        let running = source.load().unwrap();
        let telemetry = Telemetry::new();
        let engine = AlertEngine::new(
            &running.alerts,
            running.alerts.compile().unwrap(),
            &telemetry,
        );
        let builtin = engine.report(false).rules;
        let r = Reloader::new(source, running, &telemetry);

        std::fs::write(
            &file,
            "[alerts]\nbuiltin_rules = false\n[[alerts.rules]]\nname = \"Up\"\n\
             expr = \"sonde_build_info\"\nthreshold = 0\n[collectors.profile]\nfrequency_hz = 99\n",
        )
        .unwrap();
        r.reload(Some(&engine), &mut []);
        assert_ne!(builtin, 1);
        assert_eq!(engine.report(false).rules, 1);
        let s = r.status();
        let last = s.last_reload.clone().unwrap();
        assert_eq!(last.result, "ok");
        assert_eq!(last.applied, ["alerts.builtin_rules", "alerts.rules"]);
        assert_eq!(s.restart_needed, ["collectors.profile.frequency_hz"]);
        assert_eq!(r.health().status, crate::collectors::HealthStatus::Healthy);

        std::fs::write(&file, "[alerts]\ninterval = \"forever\"\n").unwrap();
        r.reload(Some(&engine), &mut []);
        let s = r.status();
        assert_eq!(s.reloads_ok, 1);
        assert_eq!(s.reloads_rejected, 1);
        let err = s.last_reload.unwrap().error.unwrap();
        assert!(err.contains("line 2") && err.contains("interval"), "{err}");
        assert_eq!(engine.report(false).rules, 1, "running rules kept");
        assert_eq!(r.health().status, crate::collectors::HealthStatus::Degraded);
        let text = telemetry.encode();
        assert!(
            text.contains("sonde_config_reloads_total{result=\"rejected\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sonde_config_restart_pending_keys 1"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
