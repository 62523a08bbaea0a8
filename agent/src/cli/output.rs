//! Plain-text tables for the query commands.

/// `s` with its control characters escaped (`\n`, `\u{1b}`): cells hold
/// names any process chooses (its comm, its executable's name), which must
/// neither break a table's lines nor reach the terminal as escape sequences.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Renders rows under a header, each column as wide as its widest cell.
/// Columns whose header starts with '>' are right-aligned (numbers).
/// Control characters in cells are escaped ([`printable`]).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<std::borrow::Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let right: Vec<bool> = header.iter().map(|h| h.starts_with('>')).collect();
    let header: Vec<&str> = header.iter().map(|h| h.trim_start_matches('>')).collect();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = width.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, c) in cells.enumerate() {
            let w = width.get(i).copied().unwrap_or(0);
            if i > 0 {
                s.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                s.push_str(&format!("{c:>w$}"));
            } else {
                s.push_str(&format!("{c:<w$}"));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for r in &rows {
        out.push_str(&line(&mut r.iter().map(|c| &**c)));
    }
    out
}

/// `93.2s` / `12m 03s` / `3h 04m` / `2d 03h`.
pub fn human_duration(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..60 => format!("{secs:.1}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Writes a query's body to `-o FILE` (saying so on stderr) or to stdout.
pub fn write_body(output: Option<&std::path::Path>, body: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;

    use anyhow::Context as _;
    match output {
        Some(f) => {
            std::fs::write(f, body).with_context(|| format!("writing {}", f.display()))?;
            eprintln!("wrote {} ({} bytes)", f.display(), body.len());
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(body).context("writing to stdout")?;
            out.flush().context("writing to stdout")?;
        }
    }
    Ok(())
}

/// `<what>... 3s / 10s<hint>` on stderr, redrawn every half second until
/// the task is aborted (the caller then clears the line).
pub async fn show_progress(what: &'static str, total: std::time::Duration, hint: &'static str) {
    use std::io::Write as _;
    let start = std::time::Instant::now();
    loop {
        let el = start.elapsed().min(total);
        eprint!(
            "\r{what}... {}s / {}s{hint}",
            el.as_secs(),
            total.as_secs_f64().ceil() as u64
        );
        let _ = std::io::stderr().flush();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let t = table(
            &["NAME", ">N"],
            &[
                vec!["a".into(), "100".into()],
                vec!["long".into(), "2".into()],
            ],
        );
        assert_eq!(t, "NAME    N\na     100\nlong    2\n");
    }

    #[test]
    fn control_characters_in_cells_are_escaped() {
        let t = table(
            &["NAME", ">N"],
            &[vec!["x\"q\n\u{1b}[7m\u{fffd}".into(), "1".into()]],
        );
        assert_eq!(t, "NAME             N\nx\"q\\n\\u{1b}[7m\u{fffd}  1\n");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5.25), "5.2s");
        assert_eq!(human_duration(125.0), "2m 05s");
        assert_eq!(human_duration(7300.0), "2h 01m");
    }
}
