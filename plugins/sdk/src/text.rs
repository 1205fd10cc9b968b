//! Text for people: sizes ([`fmt_bytes`]) and lists ([`join_or`]).

/// Formats a byte count with binary units: `"512 B"`, `"1.5 KiB"`,
/// `"905.0 MiB"`, `"2.0 GiB"`, up to TiB (one decimal above bytes).
///
/// ```
/// use drhost_sdk::fmt_bytes;
/// assert_eq!(fmt_bytes(512), "512 B");
/// assert_eq!(fmt_bytes(905 * 1024 * 1024), "905.0 MiB");
/// ```
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Joins `items` with `", "`, or returns `empty` when there are none: for
/// messages that must say something about an empty list ("none", "no
/// objects", ...).
///
/// ```
/// use drhost_sdk::join_or;
/// assert_eq!(join_or(&["backend", "frontend"], "none"), "backend, frontend");
/// assert_eq!(join_or::<String>(&[], "none"), "none");
/// ```
pub fn join_or<S: AsRef<str>>(items: &[S], empty: &str) -> String {
    if items.is_empty() {
        empty.to_string()
    } else {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<&str>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(fmt_bytes(0), "0 B");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1023), "1023 B");
        assert_eq!(fmt_bytes(1024), "1.0 KiB");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(905 * 1024 * 1024), "905.0 MiB");
        assert_eq!(fmt_bytes(734_003_200), "700.0 MiB");
        assert_eq!(fmt_bytes(3 << 30), "3.0 GiB");
        assert_eq!(fmt_bytes(2048 << 40), "2048.0 TiB");
    }

    #[test]
    fn joins() {
        assert_eq!(join_or(&["a"], "none"), "a");
        assert_eq!(join_or(&["a".to_string(), "b".to_string()], "none"), "a, b");
        assert_eq!(join_or::<&str>(&[], "no objects"), "no objects");
        assert_eq!(join_or::<&str>(&[], ""), "");
    }
}
