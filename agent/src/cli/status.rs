//! `sonde status`.

use super::{Output, QueryArgs, client, output};
use crate::api::control::Status;

pub fn run(q: &QueryArgs) -> anyhow::Result<()> {
    let s: Status = client::block_on(client::get_json(&q.socket, "/api/v1/status"))??;
    match q.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        Output::Table => print!("{}", render(&s)),
    }
    Ok(())
}

fn render(s: &Status) -> String {
    let mut out = format!(
        "sonde {} (pid {}), up {}, kernel {}\nstatus: {}{}\nmetrics: http://{}/metrics   control: {}\nprocesses tracked: {}\n\n",
        s.version,
        s.pid,
        output::human_duration(s.uptime_seconds),
        s.kernel,
        serde_json::to_value(s.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        if s.ready { ", ready" } else { ", not ready" },
        s.listen,
        s.socket,
        s.processes_tracked,
    );
    let rows: Vec<Vec<String>> = s
        .collectors
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                serde_json::to_value(c.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
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
