//! `sonde status`.

use sonde_wire::status::Status;

use super::{Output, QueryArgs, client, output};

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
        s.status.as_str(),
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
