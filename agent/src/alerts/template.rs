//! Annotation templates: a small subset of Prometheus's, compiled at load
//! time so a typo is a config error, not a broken notification.
//!
//! `{{ $value }}`, `{{ $labels.NAME }}`, optionally piped through one of
//! `humanize` (1.2k, 3.4M), `humanizePercentage` (0.05 -> 5%),
//! `humanizeDuration` (seconds -> 1m 3s) or `printf "%.Nf"`.

use super::store::Labels;

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Value(Format),
    Label(String, Format),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Plain,
    Humanize,
    Percentage,
    Duration,
    Fixed(usize),
}

impl Template {
    pub fn parse(src: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = src;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                format!(
                    "`{{{{` at offset {} is never closed with `}}}}`",
                    src.len() - rest.len() + open
                )
            })?;
            parts.push(action(after[..close].trim())?);
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            return Err("`}}` without a matching `{{`".into());
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    pub fn render(&self, value: f64, labels: &Labels) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Value(f) => out.push_str(&format_value(value, *f)),
                Part::Label(l, f) => {
                    let v = labels.get(l).map(String::as_str).unwrap_or("");
                    match (f, v.parse::<f64>()) {
                        (Format::Plain, _) | (_, Err(_)) => out.push_str(v),
                        (f, Ok(n)) => out.push_str(&format_value(n, *f)),
                    }
                }
            }
        }
        out
    }
}

fn action(a: &str) -> Result<Part, String> {
    let (var, pipe) = match a.split_once('|') {
        Some((v, p)) => (v.trim(), Some(p.trim())),
        None => (a, None),
    };
    let fmt = match pipe {
        None => Format::Plain,
        Some("humanize") => Format::Humanize,
        Some("humanizePercentage") => Format::Percentage,
        Some("humanizeDuration") => Format::Duration,
        Some(p) if p.starts_with("printf") => {
            let arg = p["printf".len()..].trim().trim_matches('"');
            let prec = arg
                .strip_prefix("%.")
                .and_then(|s| s.strip_suffix('f'))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n <= 12)
                .ok_or_else(|| format!("printf supports only \"%.Nf\" (N <= 12), got {arg:?}"))?;
            Format::Fixed(prec)
        }
        Some(p) => {
            return Err(format!(
                "unknown template function {p:?} (known: humanize, humanizePercentage, humanizeDuration, printf \"%.2f\")"
            ));
        }
    };
    if var == "$value" {
        return Ok(Part::Value(fmt));
    }
    if let Some(l) = var.strip_prefix("$labels.") {
        if l.is_empty() || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name in {var:?}"));
        }
        return Ok(Part::Label(l.to_owned(), fmt));
    }
    Err(format!(
        "unknown template variable {var:?} (use $value or $labels.NAME)"
    ))
}

fn format_value(v: f64, f: Format) -> String {
    match f {
        Format::Plain => format!("{v}"),
        Format::Fixed(n) => format!("{v:.n$}"),
        Format::Percentage => format!("{}%", trim(v * 100.0)),
        Format::Humanize => {
            let a = v.abs();
            let (d, s) = match a {
                _ if a >= 1e12 => (1e12, "T"),
                _ if a >= 1e9 => (1e9, "G"),
                _ if a >= 1e6 => (1e6, "M"),
                _ if a >= 1e3 => (1e3, "k"),
                _ => (1.0, ""),
            };
            format!("{}{s}", trim(v / d))
        }
        Format::Duration => {
            if !v.is_finite() || v < 0.0 {
                return format!("{v}");
            }
            if v < 1.0 {
                return format!("{}ms", trim(v * 1000.0));
            }
            let s = v as u64;
            match s {
                0..60 => format!("{}s", trim(v)),
                60..3600 => format!("{}m {}s", s / 60, s % 60),
                _ => format!("{}h {}m {}s", s / 3600, (s % 3600) / 60, s % 60),
            }
        }
    }
}

/// Four significant digits (like Go's `%.4g` for these magnitudes), no
/// trailing zeros.
fn trim(v: f64) -> String {
    let int_digits = if v == 0.0 || !v.is_finite() {
        1
    } else {
        v.abs().log10().floor() as i32 + 1
    };
    let decimals = (4 - int_digits).clamp(0, 12) as usize;
    let s = format!("{v:.decimals$}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_values_and_labels() {
        let t = Template::parse(
            "{{ $labels.service_name }} errors at {{ $value | humanizePercentage }} ({{$value|printf \"%.3f\"}}), p99 {{ $value | humanizeDuration }}, {{ $labels.missing }}!",
        )
        .unwrap();
        let labels: Labels = [("service_name".to_owned(), "api".to_owned())].into();
        assert_eq!(
            t.render(0.0512, &labels),
            "api errors at 5.12% (0.051), p99 51.2ms, !"
        );
        let t = Template::parse("{{ $value | humanize }}B").unwrap();
        assert_eq!(t.render(1_500_000.0, &labels), "1.5MB");
        assert_eq!(t.render(40_517_600.0, &labels), "40.52MB");
        assert_eq!(t.render(0.25, &labels), "0.25B");
        assert_eq!(t.render(0.0012345, &labels), "0.001234B");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(
            Template::parse("{{ $value ")
                .unwrap_err()
                .contains("never closed")
        );
        assert!(
            Template::parse("{{ $vlaue }}")
                .unwrap_err()
                .contains("unknown template variable")
        );
        assert!(
            Template::parse("{{ $value | shout }}")
                .unwrap_err()
                .contains("unknown template function")
        );
        assert!(
            Template::parse("{{ $value | printf \"%d\" }}")
                .unwrap_err()
                .contains("printf")
        );
        assert!(Template::parse("a }} b").is_err());
    }
}
