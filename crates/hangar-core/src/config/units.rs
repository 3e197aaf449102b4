//! Units of fly.toml values: what a bare number means, and size strings.

/// What a bare number means in a duration field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumberUnit {
    /// Top-level `kill_timeout` (flyctl patches numbers to seconds).
    Seconds,
    /// Check `interval`, `timeout` and `grace_period` (flyctl patches numbers to milliseconds).
    Millis,
    /// Deploy timeouts: flyctl reads nanoseconds, which no one means; read seconds and warn.
    SecondsWithWarning,
}

/// Parses a size such as `"512mb"`, `"1gb"`, `"8g"`, `"1.5GiB"` or `"30"` (the default unit).
/// Units are binary (1 GB = 1024 MB) as in Docker's `RAMInBytes`, which flyctl uses.
/// Returns the size in units of `unit_mb` megabytes (1 for MB fields, 1024 for GB fields).
pub(crate) fn parse_size(s: &str, unit_mb: u64) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let bad =
        || format!("invalid size {s:?}: write a number with a unit, e.g. \"512mb\" or \"2gb\"");
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mb_per_unit: f64 = match unit {
        "" => unit_mb as f64,
        "b" => 1.0 / (1024.0 * 1024.0),
        "k" | "kb" | "kib" => 1.0 / 1024.0,
        "m" | "mb" | "mib" => 1.0,
        "g" | "gb" | "gib" => 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let mb = n * mb_per_unit;
    let value = mb / unit_mb as f64;
    if !value.is_finite() || value > 1e15 {
        return Err(bad());
    }
    if value.fract() != 0.0 {
        let name = if unit_mb == 1 { "MB" } else { "GB" };
        return Err(format!("size {s:?} is not a whole number of {name}"));
    }
    Ok(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_mb_and_gb() {
        for (input, unit, want) in [
            ("512mb", 1, 512),
            ("1gb", 1, 1024),
            ("8g", 1, 8192),
            ("1.5GiB", 1, 1536),
            ("2048", 1, 2048),
            ("30gb", 1024, 30),
            ("200", 1024, 200),
            ("1024mb", 1024, 1),
        ] {
            assert_eq!(parse_size(input, unit).unwrap(), want, "{input}");
        }
        for bad in ["", "mb", "12 parsecs", "-1gb", "1.1gb"] {
            assert!(parse_size(bad, 1024).is_err(), "{bad}");
        }
    }
}
