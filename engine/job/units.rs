//! Human-friendly sizes ("64MiB") and durations ("5s", "250ms") for job files.

use std::time::Duration;

/// Parses "64MiB", "1.5GB", "4096" (bytes) into a byte count.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("\"{text}\" is not a size; write e.g. \"64MiB\", \"512KB\" or \"1048576\"")
    })?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "\"{text}\": unknown size unit \"{other}\"; use B, KB, MB, GB, KiB, MiB or GiB"
            ));
        }
    };
    Ok((value * mult).round() as u64)
}

/// Parses "5s", "250ms", "2m", "1h", "7d" into a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("\"{text}\" is not a duration; write e.g. \"5s\", \"250ms\" or \"2m\"")
    })?;
    let secs = match unit.trim() {
        "ms" => value / 1e3,
        "s" | "" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => {
            return Err(format!(
                "\"{text}\": unknown duration unit \"{other}\"; use ms, s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a byte count for people ("12.3 MiB").
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 * 1024 * 1024);
        assert_eq!(parse_bytes("1.5 KB").unwrap(), 1500);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(
            parse_bytes("64 parsecs")
                .unwrap_err()
                .contains("unknown size unit")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
    }
}
