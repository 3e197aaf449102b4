//! How the CLI prints: plain tables and lines for people, JSON for scripts.

use std::fmt::Display;
use std::io::{self, Write};

use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Where results go, and in which form.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// Print JSON instead of text.
    pub json: bool,
}

impl Output {
    /// Prints `value` as pretty JSON.
    pub fn json<T: Serialize + ?Sized>(&self, value: &T) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(value)?;
        self.line(text)?;
        Ok(())
    }

    /// Prints one line. A closed stdout (`hangar ... | head`) surfaces as
    /// `BrokenPipe`, which `main` treats as a normal end.
    pub fn line(&self, text: impl Display) -> io::Result<()> {
        let mut out = io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()
    }

    /// Prints a table with a header row; an empty table prints `empty` instead.
    pub fn table(&self, header: &[&str], rows: Vec<Vec<String>>, empty: &str) -> io::Result<()> {
        if rows.is_empty() {
            return self.line(empty);
        }
        self.line(render_table(header, rows))
    }
}

/// Renders rows as columns separated by two spaces, without borders, like `docker ps`.
pub fn render_table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
        .to_string()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Bytes for people: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Precision loss is irrelevant for one decimal of a size.
    #[allow(clippy::cast_precision_loss)]
    let mut value = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// An RFC 3339 time as an age (`5s ago`, `3m ago`, `2h ago`, `4d ago`); unparsable
/// times are shown as given.
pub fn age(rfc3339: &str, now: OffsetDateTime) -> String {
    let Ok(then) = OffsetDateTime::parse(rfc3339, &Rfc3339) else {
        return rfc3339.to_owned();
    };
    let secs = (now - then).whole_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// Unix milliseconds as RFC 3339 (UTC, seconds).
pub fn millis_to_rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// The first 12 hex digits of a digest, like `docker images`.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.get(..12).unwrap_or(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_no_borders_and_no_trailing_spaces() {
        let text = render_table(
            &["ID", "STATE"],
            vec![
                vec!["abc".into(), "started".into()],
                vec!["0123456789abcd".into(), "stopped".into()],
            ],
        );
        assert_eq!(
            text,
            "ID              STATE\nabc             started\n0123456789abcd  stopped"
        );
    }

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
        let now = OffsetDateTime::parse("2026-01-01T12:00:00Z", &Rfc3339).unwrap();
        assert_eq!(age("2026-01-01T11:59:30Z", now), "30s ago");
        assert_eq!(age("2026-01-01T09:00:00Z", now), "3h ago");
        assert_eq!(age("2025-12-25T12:00:00Z", now), "7d ago");
        assert_eq!(age("yesterday", now), "yesterday");
        assert_eq!(millis_to_rfc3339(1_767_268_800_123), "2026-01-01T12:00:00Z");
        assert_eq!(short_digest("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_digest("abc"), "abc");
    }
}
