//! The `[alerts]` config section. Scalar keys are checked while parsing
//! (key and line in the error); rules are checked after parsing by
//! `AlertsConfig::compile`, whose errors name the rule (index and name) and
//! the field.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{bounded::Bounded, duration::Dur};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub enabled: bool,
    /// How often rules are evaluated (and samples recorded).
    pub interval: Dur<1, 3600>,
    /// Firing alerts are sent again this often, so a restarted Alertmanager
    /// learns them again and does not time them out.
    pub resend_interval: Dur<1, 86_400>,
    /// `true` (all built-in rules), `false` (none), or a list of built-in
    /// rule names to disable.
    pub builtin_rules: BuiltinRules,
    /// Resolved alerts kept for `sonde alerts --all`.
    pub history_size: Bounded<0, 100_000>,
    /// Most series the engine keeps samples for; more are dropped and counted.
    pub max_series: Bounded<1, 1_000_000>,
    /// Alertmanager base URLs (`http://host:9093`); alerts go to `/api/v2/alerts`.
    pub alertmanager_urls: Vec<String>,
    pub alertmanager: Vec<ReceiverConfig>,
    /// Generic JSON webhooks (full URL).
    pub webhooks: Vec<ReceiverConfig>,
    /// Most alert notifications waiting per receiver; beyond it the oldest
    /// (preferably a firing one, which is re-sent anyway) is dropped and counted.
    pub queue_size: Bounded<1, 1_000_000>,
    /// First retry delay after a failed delivery; doubles up to `retry_max`.
    pub retry_initial: Dur<0, 3600>,
    pub retry_max: Dur<1, 3600>,
    /// Base of `generatorURL` in notifications (empty: none).
    pub external_url: String,
    pub rules: Vec<RuleConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Dur(Duration::from_secs(15)),
            resend_interval: Dur(Duration::from_secs(60)),
            builtin_rules: BuiltinRules::All(true),
            history_size: Bounded(256),
            max_series: Bounded(10_000),
            alertmanager_urls: Vec::new(),
            alertmanager: Vec::new(),
            webhooks: Vec::new(),
            queue_size: Bounded(1000),
            retry_initial: Dur(Duration::from_millis(500)),
            retry_max: Dur(Duration::from_secs(30)),
            external_url: String::new(),
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum BuiltinRules {
    All(bool),
    /// Names of built-in rules to disable.
    Disable(Vec<String>),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub url: String,
    #[serde(default = "default_timeout")]
    pub timeout: Dur<1, 300>,
}

fn default_timeout() -> Dur<1, 300> {
    Dur(Duration::from_secs(5))
}

/// One alerting rule as written in the config. Everything is a plain type
/// here and is validated by `compile`, so errors name the rule.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    pub expr: String,
    /// One of `>`, `>=`, `<`, `<=`, `==`, `!=`.
    #[serde(default = "default_op")]
    pub op: String,
    pub threshold: f64,
    /// How long the condition must hold before the alert fires (`"0s"`: at once).
    #[serde(default = "default_for", rename = "for")]
    pub for_: String,
    #[serde(default = "default_severity")]
    pub severity: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `summary`, `description`, `runbook_url`, ...: templates.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

fn default_op() -> String {
    ">".into()
}
fn default_for() -> String {
    "0s".into()
}
fn default_severity() -> String {
    "warning".into()
}
