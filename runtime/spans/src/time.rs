//! Times and durations as people read and write them: UTC timestamps, `1.5 ms`, `--since 10m`.

/// `2026-12-03 07:30:01.123 UTC` for nanoseconds since the Unix epoch.
pub fn utc(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let millis = (ns / 1_000_000) % 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{millis:03} UTC",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a day count from 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A duration in the unit that reads best: `850 ns`, `12.3 µs`, `4.56 ms`, `7.89 s`.
pub fn human(ns: i128) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let n = ns.unsigned_abs() as f64;
    if n < 1e3 {
        format!("{sign}{n} ns")
    } else if n < 1e6 {
        format!("{sign}{:.1} µs", n / 1e3)
    } else if n < 1e9 {
        format!("{sign}{:.2} ms", n / 1e6)
    } else {
        format!("{sign}{:.2} s", n / 1e9)
    }
}

/// Parses `90s`, `10m`, `2h`, `1d`, `500ms` (a number, then `ms`, `s`, `m`, `h` or `d`) into
/// nanoseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration: give a whole number and a unit, as 90s, 10m, 2h or 1d")
    })?;
    let unit_ns: u64 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use ms, s, m, h or d (as 90s, 10m, 2h, 1d)"
            ));
        }
    };
    number
        .checked_mul(unit_ns)
        .ok_or_else(|| format!("{text:?} is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        // 2024-02-29 12:34:56.789 UTC, a leap day.
        assert_eq!(
            utc(1_709_210_096_789_000_000),
            "2024-02-29 12:34:56.789 UTC"
        );
    }

    #[test]
    fn durations_parse_with_units_and_refuse_without() {
        assert_eq!(parse_duration("90s"), Ok(90_000_000_000));
        assert_eq!(parse_duration("10m"), Ok(600_000_000_000));
        assert_eq!(parse_duration("500ms"), Ok(500_000_000));
        assert!(parse_duration("10").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("m").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn human_durations_pick_their_unit() {
        assert_eq!(human(850), "850 ns");
        assert_eq!(human(12_345), "12.3 µs");
        assert_eq!(human(-4_560_000), "-4.56 ms");
        assert_eq!(human(7_890_000_000), "7.89 s");
    }
}
