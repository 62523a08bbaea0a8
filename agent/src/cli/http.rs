//! `sonde http`: per-route HTTP RED summary (rate, errors, latency, in-flight)
//! and the CPU each request of the route used (sampled by the profiler).

use clap::Args;
use sonde_wire::http::RouteRow;

use super::{Output, QueryArgs, UsageError, client, output};

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Only this service (service_name or process name).
    #[arg(long, conflicts_with = "pid")]
    pub name: Option<String>,
    /// Only this process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Show outgoing (client) requests instead of served ones.
    #[arg(long)]
    pub client: bool,
    #[command(flatten)]
    pub query: QueryArgs,
}

pub fn run(a: &HttpArgs) -> anyhow::Result<()> {
    let mut path = format!("/api/v1/http?client={}", a.client);
    if let Some(p) = a.pid {
        path.push_str(&format!("&pid={p}"));
    }
    if let Some(n) = &a.name {
        if n.is_empty() || !n.chars().all(|c| c.is_ascii_graphic()) {
            return Err(
                UsageError(format!("--name {n:?}: expected a service or process name")).into(),
            );
        }
        path.push_str("&name=");
        path.push_str(&encode(n));
    }
    let rows: Vec<RouteRow> = client::block_on(client::get_json(&a.query.socket, &path))??;
    match a.query.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => print!("{}", render(&rows)),
    }
    Ok(())
}

/// Percent-encodes a query value (names are ASCII-graphic, checked above).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| {
        let ms = s * 1e3;
        if ms < 10.0 {
            format!("{ms:.3}")
        } else {
            format!("{ms:.1}")
        }
    })
}

fn render(rows: &[RouteRow]) -> String {
    if rows.is_empty() {
        return "no HTTP requests seen yet\n".into();
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.service.clone(),
                r.method.clone(),
                r.route.clone(),
                r.requests.to_string(),
                format!("{:.1}", r.rate),
                format!("{:.1}", r.error_pct),
                ms(r.p50_seconds),
                ms(r.p95_seconds),
                ms(r.p99_seconds),
                r.in_flight.to_string(),
                r.cpu_ms_per_request
                    .map_or("-".into(), |c| format!("{c:.2}")),
            ]
        })
        .collect();
    output::table(
        &[
            "SERVICE",
            "METHOD",
            "ROUTE",
            "REQS",
            "RATE/S",
            "ERR%",
            "P50MS",
            "P95MS",
            "P99MS",
            "INFLIGHT",
            "CPUMS/REQ",
        ],
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rows() {
        let r = RouteRow {
            role: "server".into(),
            service: "python3".into(),
            pids: vec![1],
            method: "GET".into(),
            route: "/items/{id}".into(),
            requests: 10,
            rate: 1.0,
            error_pct: 10.0,
            p50_seconds: Some(0.002),
            p95_seconds: None,
            p99_seconds: Some(0.3),
            in_flight: 0,
            cpu_ms_per_request: Some(12.345),
        };
        let t = render(&[r]);
        assert!(
            t.contains("/items/{id}") && t.contains("2.000") && t.contains("300.0"),
            "{t}"
        );
        assert!(t.contains("CPUMS/REQ") && t.contains("12.35"), "{t}");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
