//! Compiled rules: parsed expression, checked metric names, compiled
//! templates. Built-in default rules live here too.

use std::{collections::BTreeMap, time::Duration};

use super::{
    config::{AlertsConfig, BuiltinRules, RuleConfig},
    expr::{self, Expr},
    notify::HttpUrl,
    template::Template,
};
use crate::{duration::parse_duration, metrics_catalog};

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub expr: Expr,
    pub expr_text: String,
    pub op: CmpOp,
    pub threshold: f64,
    pub for_: Duration,
    pub severity: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, Template>,
    pub builtin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl CmpOp {
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }
}

/// A rule that cannot be loaded; the message names the rule and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{rule}: {field}: {msg}")]
pub struct RuleError {
    /// `alerts.rules[2] ("HighErrorRate")`.
    pub rule: String,
    pub field: &'static str,
    pub msg: String,
}

/// Everything the engine needs, validated.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub rules: Vec<Rule>,
    pub alertmanagers: Vec<(HttpUrl, Duration)>,
    pub webhooks: Vec<(HttpUrl, Duration)>,
}

impl AlertsConfig {
    /// Validates the rules and receivers; the error names what is wrong.
    pub fn compile(&self) -> Result<Compiled, RuleError> {
        let mut rules = Vec::new();
        let disabled: &[String] = match &self.builtin_rules {
            BuiltinRules::All(true) => &[],
            BuiltinRules::All(false) => &[],
            BuiltinRules::Disable(v) => v,
        };
        let builtins = builtin_rules();
        for d in disabled {
            if !builtins.iter().any(|b| &b.name == d) {
                return Err(RuleError {
                    rule: "alerts.builtin_rules".into(),
                    field: "builtin_rules",
                    msg: format!(
                        "no built-in rule named {d:?} (built-ins: {})",
                        builtins
                            .iter()
                            .map(|b| b.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        if self.builtin_rules != BuiltinRules::All(false) {
            for (i, b) in builtins.iter().enumerate() {
                if disabled.contains(&b.name) {
                    continue;
                }
                let mut r = compile_rule(&format!("built-in rule [{i}] ({:?})", b.name), b)?;
                r.builtin = true;
                rules.push(r);
            }
        }
        for (i, rc) in self.rules.iter().enumerate() {
            let at = format!("alerts.rules[{i}] ({:?})", rc.name);
            let r = compile_rule(&at, rc)?;
            if rules.iter().any(|o: &Rule| o.name == r.name && !o.builtin) {
                return Err(RuleError {
                    rule: at,
                    field: "name",
                    msg: "another rule has the same name".into(),
                });
            }
            rules.push(r);
        }
        let url_err = |what: String, msg: String| RuleError {
            rule: what,
            field: "url",
            msg,
        };
        let mut alertmanagers = Vec::new();
        for (i, u) in self.alertmanager_urls.iter().enumerate() {
            let url = HttpUrl::parse(u)
                .map_err(|m| url_err(format!("alerts.alertmanager_urls[{i}]"), m))?
                .join("/api/v2/alerts");
            alertmanagers.push((url, Duration::from_secs(5)));
        }
        for (i, r) in self.alertmanager.iter().enumerate() {
            let url = HttpUrl::parse(&r.url)
                .map_err(|m| url_err(format!("alerts.alertmanager[{i}]"), m))?
                .join("/api/v2/alerts");
            alertmanagers.push((url, r.timeout.get()));
        }
        let mut webhooks = Vec::new();
        for (i, r) in self.webhooks.iter().enumerate() {
            let url =
                HttpUrl::parse(&r.url).map_err(|m| url_err(format!("alerts.webhooks[{i}]"), m))?;
            webhooks.push((url, r.timeout.get()));
        }
        Ok(Compiled {
            rules,
            alertmanagers,
            webhooks,
        })
    }
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

pub fn compile_rule(at: &str, rc: &RuleConfig) -> Result<Rule, RuleError> {
    let e = |field: &'static str, msg: String| RuleError {
        rule: at.to_owned(),
        field,
        msg,
    };
    if !valid_name(&rc.name) {
        return Err(e(
            "name",
            format!(
                "{:?} is not a valid alert name (letters, digits, _)",
                rc.name
            ),
        ));
    }
    let expr = expr::parse(&rc.expr).map_err(|pe| e("expr", pe.to_string()))?;
    let sels = expr.selectors();
    if sels.is_empty() {
        return Err(e(
            "expr",
            "the expression must select at least one metric".into(),
        ));
    }
    for s in sels {
        if metrics_catalog::HISTOGRAMS.contains(&s.name.as_str()) {
            return Err(e(
                "expr",
                format!(
                    "at column {}: `{}` is a histogram: select its `_bucket`, `_sum` or `_count` series",
                    s.col, s.name
                ),
            ));
        }
        if !metrics_catalog::is_known(&s.name) {
            return Err(e(
                "expr",
                format!(
                    "at column {}: unknown metric `{}`: sonde does not export it (see docs/metrics.md)",
                    s.col, s.name
                ),
            ));
        }
    }
    let op = match rc.op.trim() {
        ">" => CmpOp::Gt,
        ">=" => CmpOp::Ge,
        "<" => CmpOp::Lt,
        "<=" => CmpOp::Le,
        "==" => CmpOp::Eq,
        "!=" => CmpOp::Ne,
        o => return Err(e("op", format!("{o:?} is not one of >, >=, <, <=, ==, !="))),
    };
    if !rc.threshold.is_finite() {
        return Err(e("threshold", "must be a finite number".into()));
    }
    let for_ = parse_duration(&rc.for_).map_err(|m| e("for", m))?;
    if for_ > Duration::from_secs(7 * 86_400) {
        return Err(e("for", "must be at most 7 days".into()));
    }
    if !valid_name(&rc.severity) {
        return Err(e(
            "severity",
            format!(
                "{:?} is not a valid severity (e.g. critical, warning, info)",
                rc.severity
            ),
        ));
    }
    for k in rc.labels.keys() {
        if !valid_name(k) || k == "alertname" || k == "severity" {
            return Err(e(
                "labels",
                format!(
                    "{k:?} is not a usable label name (alertname and severity are set by sonde)"
                ),
            ));
        }
    }
    let mut annotations = BTreeMap::new();
    for (k, v) in &rc.annotations {
        let t = Template::parse(v).map_err(|m| RuleError {
            rule: at.to_owned(),
            field: "annotations",
            msg: format!("{k}: {m}"),
        })?;
        annotations.insert(k.clone(), t);
    }
    Ok(Rule {
        name: rc.name.clone(),
        expr,
        expr_text: rc.expr.clone(),
        op,
        threshold: rc.threshold,
        for_,
        severity: rc.severity.clone(),
        labels: rc.labels.clone(),
        annotations,
        builtin: false,
    })
}

#[expect(
    clippy::too_many_arguments,
    reason = "a table of built-ins reads best positionally"
)]
fn rule(
    name: &str,
    expr: &str,
    op: &str,
    threshold: f64,
    for_: &str,
    severity: &str,
    summary: &str,
    description: &str,
) -> RuleConfig {
    RuleConfig {
        name: name.into(),
        expr: expr.into(),
        op: op.into(),
        threshold,
        for_: for_.into(),
        severity: severity.into(),
        labels: BTreeMap::new(),
        annotations: [
            ("summary".to_owned(), summary.to_owned()),
            ("description".to_owned(), description.to_owned()),
            (
                "runbook_url".to_owned(),
                format!("docs/alerts.md#{}", name.to_ascii_lowercase()),
            ),
        ]
        .into(),
    }
}

/// The default rules. Those over a collector that is disabled or absent
/// select no series and so never fire.
pub fn builtin_rules() -> Vec<RuleConfig> {
    vec![
        rule(
            "SondeHttpHighErrorRatio",
            r#"sum by (service_name) (rate(http_server_request_duration_seconds_count{http_response_status_code=~"5.."}[5m])) / sum by (service_name) (rate(http_server_request_duration_seconds_count[5m]))"#,
            ">",
            0.05,
            "5m",
            "critical",
            "{{ $labels.service_name }}: {{ $value | humanizePercentage }} of HTTP requests fail with 5xx",
            "More than 5% of the HTTP requests served by {{ $labels.service_name }} answered 5xx over the last 5 minutes (now {{ $value | humanizePercentage }}).",
        ),
        rule(
            "SondeHttpHighP99Latency",
            "histogram_quantile(0.99, sum by (service_name, le) (rate(http_server_request_duration_seconds_bucket[5m])))",
            ">",
            1.0,
            "10m",
            "warning",
            "{{ $labels.service_name }}: HTTP p99 latency is {{ $value | humanizeDuration }}",
            "The 99th percentile of HTTP server latency of {{ $labels.service_name }} has been above 1s for 10 minutes (now {{ $value | humanizeDuration }}).",
        ),
        rule(
            "SondeProcessMemoryGrowth",
            "delta(sonde_memory_mapped_bytes[30m])",
            ">",
            512.0 * 1024.0 * 1024.0,
            "15m",
            "warning",
            "{{ $labels.service_name }}: mapped memory grew by {{ $value | humanize }}B in 30m",
            "The memory mapped by {{ $labels.service_name }} grew by more than 512 MiB over 30 minutes, steadily for 15 minutes: a leak or an unbounded cache.",
        ),
        rule(
            "SondeSyscallHighErrorRatio",
            "sum by (service_name) (rate(sonde_syscall_errors_total[5m])) / sum by (service_name) (rate(sonde_syscalls_total[5m]))",
            ">",
            0.25,
            "10m",
            "warning",
            "{{ $labels.service_name }}: {{ $value | humanizePercentage }} of system calls fail",
            "More than 25% of the system calls made by {{ $labels.service_name }} returned an error over 5 minutes (now {{ $value | humanizePercentage }}); see `sonde syscalls` for which ones.",
        ),
        rule(
            "SondeEventsLost",
            "rate(sonde_events_lost_total[5m])",
            ">",
            0.0,
            "5m",
            "warning",
            "sonde collector {{ $labels.collector }} is losing events",
            "The {{ $labels.collector }} collector dropped {{ $value | humanize }} events/s over 5 minutes (ring buffer or map full): its metrics undercount.",
        ),
        rule(
            "SondeCollectorDown",
            "sonde_collector_up",
            "==",
            0.0,
            "1m",
            "critical",
            "sonde collector {{ $labels.collector }} is down",
            "The {{ $labels.collector }} collector is not running; `sonde status` says why.",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rule: &str) -> AlertsConfig {
        #[derive(serde::Deserialize)]
        struct W {
            alerts: AlertsConfig,
        }
        toml::from_str::<W>(&format!(
            "[alerts]\nbuiltin_rules = false\n[[alerts.rules]]\n{rule}"
        ))
        .unwrap()
        .alerts
    }

    #[test]
    fn builtins_compile() {
        let c = AlertsConfig::default().compile().unwrap();
        assert_eq!(c.rules.len(), builtin_rules().len());
        let mut d = AlertsConfig {
            builtin_rules: BuiltinRules::Disable(vec!["SondeEventsLost".into()]),
            ..Default::default()
        };
        assert_eq!(d.compile().unwrap().rules.len(), builtin_rules().len() - 1);
        d.builtin_rules = BuiltinRules::Disable(vec!["Nope".into()]);
        assert!(
            d.compile()
                .unwrap_err()
                .msg
                .contains("no built-in rule named")
        );
    }

    #[test]
    fn validation_errors_name_rule_and_field() {
        let e = cfg("name = \"A\"\nexpr = \"rate(sonde_nope_total[5m])\"\nthreshold = 1\n")
            .compile()
            .unwrap_err();
        assert_eq!(e.rule, "alerts.rules[0] (\"A\")");
        assert_eq!(e.field, "expr");
        assert!(e.msg.contains("unknown metric `sonde_nope_total`"), "{e}");
        let e = cfg("name = \"B\"\nexpr = \"sonde_processes_tracked\"\nthreshold = 1\nfor = \"5 minutes\"\n")
            .compile()
            .unwrap_err();
        assert_eq!(e.field, "for");
        assert!(e.to_string().contains("(\"B\"): for:"), "{e}");
        let e = cfg("name = \"C\"\nexpr = \"sonde_processes_tracked\"\nthreshold = 1\nannotations = { summary = \"{{ $vlue }}\" }\n")
            .compile()
            .unwrap_err();
        assert_eq!(e.field, "annotations");
        assert!(e.msg.contains("summary"), "{e}");
        let e =
            cfg("name = \"D\"\nexpr = \"sonde_processes_tracked\"\nthreshold = 1\nop = \"=>\"\n")
                .compile()
                .unwrap_err();
        assert_eq!(e.field, "op");
        let e = cfg("name = \"E\"\nexpr = \"rate(sonde_processes_tracked)\"\nthreshold = 1\n")
            .compile()
            .unwrap_err();
        assert!(e.to_string().contains("expr: at column"), "{e}");
        let e = cfg("name = \"G\"\nexpr = \"rate(http_server_request_duration_seconds[5m])\"\nthreshold = 1\n")
            .compile()
            .unwrap_err();
        assert!(e.msg.contains("is a histogram"), "{e}");
        let ok = cfg(
            "name = \"F\"\nexpr = \"http_server_request_duration_seconds_bucket\"\nthreshold = 1\n",
        );
        assert_eq!(ok.compile().unwrap().rules.len(), 1);
    }

    #[test]
    fn receiver_urls_are_checked() {
        let mut c = AlertsConfig {
            alertmanager_urls: vec!["https://am:9093".into()],
            ..Default::default()
        };
        let e = c.compile().unwrap_err();
        assert_eq!(e.rule, "alerts.alertmanager_urls[0]");
        c.alertmanager_urls = vec!["http://127.0.0.1:9093/".into()];
        let am = &c.compile().unwrap().alertmanagers[0].0;
        assert_eq!(am.to_string(), "http://127.0.0.1:9093/api/v2/alerts");
    }
}
