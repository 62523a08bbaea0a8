//! `sonde alerts`: active alerts of the built-in rule engine, delivery
//! status, and with `--all` the history of resolved alerts.

use clap::Args;
use sonde_wire::alerts::{AlertOut, AlertsReport};

use super::{Output, QueryArgs, client, output};

#[derive(Debug, Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    pub query: QueryArgs,
    /// Also show resolved alerts (the bounded history).
    #[arg(long)]
    pub all: bool,
}

pub fn run(a: &AlertsArgs) -> anyhow::Result<()> {
    let path = if a.all {
        "/api/v1/alerts?all=true"
    } else {
        "/api/v1/alerts"
    };
    let r: AlertsReport = client::block_on(client::get_json(&a.query.socket, path))??;
    match a.query.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        Output::Table => print!("{}", render(&r, a.all)),
    }
    Ok(())
}

fn value(v: Option<f64>) -> String {
    match v {
        None => "NaN".into(),
        Some(v) if v.abs() >= 1e6 || (v != 0.0 && v.abs() < 1e-3) => format!("{v:.3e}"),
        Some(v) => format!("{:.4}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned(),
    }
}

/// Labels other than alertname and severity, which have their own columns.
fn labels(a: &AlertOut) -> String {
    a.labels
        .iter()
        .filter(|(k, _)| *k != "alertname" && *k != "severity")
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn rows(list: &[AlertOut]) -> Vec<Vec<String>> {
    list.iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.severity.clone(),
                a.state.as_str().to_owned(),
                value(a.value),
                output::human_duration(a.since_seconds),
                labels(a),
                a.annotations.get("summary").cloned().unwrap_or_default(),
            ]
        })
        .collect()
}

fn render(r: &AlertsReport, all: bool) -> String {
    if !r.enabled {
        return "the alert engine is disabled (alerts.enabled = false)\n".into();
    }
    let mut out = format!(
        "{} rules, evaluated every {}s ({} evaluations{})\n\n",
        r.rules,
        r.interval_seconds,
        r.evaluations,
        r.last_error
            .as_deref()
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default()
    );
    let header = [
        "ALERT", "SEVERITY", "STATE", ">VALUE", ">SINCE", "LABELS", "SUMMARY",
    ];
    if r.alerts.is_empty() {
        out.push_str("no active alerts\n");
    } else {
        out.push_str(&output::table(&header, &rows(&r.alerts)));
    }
    if all {
        out.push_str("\nhistory (resolved, newest first):\n");
        if r.history.is_empty() {
            out.push_str("none\n");
        } else {
            let mut header = header;
            header[4] = ">LASTED";
            out.push_str(&output::table(&header, &rows(&r.history)));
        }
    }
    if !r.receivers.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = r
            .receivers
            .iter()
            .map(|x| {
                vec![
                    x.kind
                        .map(|k| format!("{k:?}").to_ascii_lowercase())
                        .unwrap_or_default(),
                    x.url.clone(),
                    x.sent.to_string(),
                    x.failed.to_string(),
                    x.dropped.to_string(),
                    x.queued.to_string(),
                    x.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&output::table(
            &[
                "RECEIVER",
                "URL",
                ">SENT",
                ">FAILED",
                ">DROPPED",
                ">QUEUED",
                "LAST ERROR",
            ],
            &rows,
        ));
    }
    out
}
