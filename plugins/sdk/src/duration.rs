//! Durations in milliseconds: parsing ("15m") and formatting ("3h12m").

/// One second in milliseconds.
pub const SECOND_MS: u64 = 1_000;
/// One minute in milliseconds.
pub const MINUTE_MS: u64 = 60 * SECOND_MS;
/// One hour in milliseconds.
pub const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// Parses a duration such as `"15m"`, `"90s"`, `"2h"`, `"500ms"`, `"1h30m"`
/// or `"1d"` into milliseconds. Units: `ms`, `s`, `m`, `h`, `d`; components
/// may be separated by spaces. A number without a unit is rejected (is
/// "15" minutes or milliseconds?).
///
/// ```
/// use drhost_sdk::parse_duration;
/// assert_eq!(parse_duration("15m"), Ok(900_000));
/// assert_eq!(parse_duration("1h 30m"), Ok(5_400_000));
/// assert!(parse_duration("15").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = |why: &str| {
        format!(
            "invalid duration {text:?}: {why} (expected e.g. \"500ms\", \"90s\", \"15m\", \"2h\", \"1h30m\")"
        )
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => SECOND_MS,
            "m" | "min" => MINUTE_MS,
            "h" => HOUR_MS,
            "d" => DAY_MS,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad("unknown unit")),
        };
        rest = rest[unit_len..].trim_start();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| bad("too large"))?;
    }
    Ok(total)
}

/// Formats milliseconds for people: `"3h12m"`, `"14m05s"`, `"15m"`, `"45s"`,
/// `"500ms"`. Hours drop the seconds, minutes drop the milliseconds.
///
/// ```
/// use drhost_sdk::fmt_duration;
/// assert_eq!(fmt_duration(11_520_000), "3h12m");
/// assert_eq!(fmt_duration(845_000), "14m05s");
/// ```
pub fn fmt_duration(ms: u64) -> String {
    let (h, m, s) = (
        ms / HOUR_MS,
        (ms % HOUR_MS) / MINUTE_MS,
        (ms % MINUTE_MS) / SECOND_MS,
    );
    if h > 0 {
        if m == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{m:02}m")
        }
    } else if m > 0 {
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s:02}s")
        }
    } else if s > 0 {
        format!("{s}s")
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_duration("15m"), Ok(15 * MINUTE_MS));
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert_eq!(parse_duration("2h"), Ok(2 * HOUR_MS));
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration(" 1h30m "), Ok(90 * MINUTE_MS));
        assert_eq!(parse_duration("1d"), Ok(24 * HOUR_MS));
        assert_eq!(parse_duration("0s"), Ok(0));
        for bad in [
            "",
            "15",
            "m",
            "15x",
            "1.5h",
            "-1m",
            "99999999999999999999ms",
            "1h-2m",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_duration("15").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_duration(3 * HOUR_MS + 12 * MINUTE_MS + 59_999), "3h12m");
        assert_eq!(fmt_duration(14 * MINUTE_MS + 5_000), "14m05s");
        assert_eq!(fmt_duration(15 * MINUTE_MS), "15m");
        assert_eq!(fmt_duration(2 * HOUR_MS), "2h");
        assert_eq!(fmt_duration(45_500), "45s");
        assert_eq!(fmt_duration(500), "500ms");
        assert_eq!(fmt_duration(0), "0ms");
        assert_eq!(fmt_duration(50 * HOUR_MS + 5 * MINUTE_MS), "50h05m");
    }
}
