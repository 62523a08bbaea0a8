//! `sonde status`.

use sonde_wire::status::{ConfigStatus, Status};

use super::{Output, QueryArgs, client, output};

pub fn run(q: &QueryArgs) -> anyhow::Result<()> {
    let s: Status = client::block_on(client::get_json(&q.socket, "/api/v1/status"))??;
    match q.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        Output::Table => print!("{}", render(&s)),
    }
    Ok(())
}

/// Where the config came from, the last reload and the keys waiting for a
/// restart.
fn config_lines(c: &ConfigStatus) -> String {
    let mut out = format!(
        "config: {}",
        c.path.as_deref().unwrap_or("built-in defaults")
    );
    if let Some(r) = &c.last_reload {
        out.push_str(&format!(
            ", last reload {} {} ({} ok, {} rejected)",
            r.at, r.result, c.reloads_ok, c.reloads_rejected
        ));
        if let Some(e) = &r.error {
            out.push_str(&format!("\n  rejected: {e}"));
        }
        if !r.applied.is_empty() {
            out.push_str(&format!("\n  applied: {}", r.applied.join(", ")));
        }
    }
    if !c.restart_needed.is_empty() {
        out.push_str(&format!(
            "\n  restart needed for: {}",
            c.restart_needed.join(", ")
        ));
    }
    out.push_str("\n\n");
    out
}

fn render(s: &Status) -> String {
    let mut out = format!(
        "sonde {} (pid {}), up {}, kernel {}\nstatus: {}{}\nmetrics: http://{}/metrics   control: {}\nprocesses tracked: {}\n",
        s.version,
        s.pid,
        output::human_duration(s.uptime_seconds),
        s.kernel,
        s.status.as_str(),
        if s.ready { ", ready" } else { ", not ready" },
        s.listen,
        s.socket,
        s.processes_tracked,
    );
    out.push_str(&config_lines(&s.config));
    let rows: Vec<Vec<String>> = s
        .collectors
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.status.as_str().to_owned(),
                c.reason.clone(),
            ]
        })
        .collect();
    out.push_str(&output::table(&["COLLECTOR", "STATE", "DETAIL"], &rows));
    out.push('\n');
    let rows: Vec<Vec<String>> = s
        .features
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                if f.available { "yes" } else { "no" }.into(),
                f.detail.clone(),
            ]
        })
        .collect();
    out.push_str(&output::table(&["KERNEL FEATURE", "OK", "DETAIL"], &rows));
    out
}
