//! [`Params`]: the scenario parameters passed to `run_step`.

use crate::duration::parse_duration;
use core::str::FromStr;

/// The parameters `run_step` receives (`list<tuple<string, string>>`), after
/// the host applied the runbook config and the defaults from `describe`.
///
/// Lookups take the default a plugin declared too, so a plugin behaves the
/// same when a host (or a test) passes fewer parameters. Every error is a
/// `String` naming the parameter, ready to be returned from `run_step`.
///
/// ```
/// use drhost_sdk::Params;
/// let p = Params::from(vec![("rpo".to_string(), "15m".to_string())]);
/// assert_eq!(p.duration_ms("rpo", "1h"), Ok(900_000));
/// assert_eq!(p.get_or("namespace", "default"), "default");
/// assert!(p.required("database").unwrap_err().contains("database"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Wraps the `params` of `run_step`.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Params { pairs }
    }

    /// The value of `name` (the last one if given twice), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, or `default` when absent.
    pub fn get_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.get(name).unwrap_or(default)
    }

    /// Builds parameters from string pairs, e.g. in a plugin's unit tests:
    /// `Params::from_strs(&[("rpo", "15m")])`.
    pub fn from_strs(pairs: &[(&str, &str)]) -> Self {
        Params::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The value of `name` (or `default` when absent), trimmed; an error
    /// saying "parameter `name` is empty" when that is blank. For parameters
    /// that have a default but must not be set to nothing.
    pub fn non_empty_or<'a>(&'a self, name: &str, default: &'a str) -> Result<&'a str, String> {
        let value = self.get_or(name, default).trim();
        if value.is_empty() {
            Err(format!("parameter `{name}` is empty"))
        } else {
            Ok(value)
        }
    }

    /// The value of `name`; an error saying the parameter is missing or empty
    /// otherwise.
    pub fn required(&self, name: &str) -> Result<&str, String> {
        match self.get(name) {
            Some(v) if !v.trim().is_empty() => Ok(v),
            Some(_) => Err(format!(
                "parameter `{name}` is empty; set it in the runbook config's [params]"
            )),
            None => Err(format!(
                "missing required parameter `{name}`; set it in the runbook config's [params]"
            )),
        }
    }

    /// Parses `name` (or `default` when absent) with `FromStr`.
    pub fn parse_or<T: FromStr>(&self, name: &str, default: &str) -> Result<T, String>
    where
        T::Err: core::fmt::Display,
    {
        let raw = self.get_or(name, default);
        raw.trim()
            .parse()
            .map_err(|e| format!("parameter `{name}` = {raw:?}: {e}"))
    }

    /// Parses `name` (or `default` when absent) as a duration such as "15m",
    /// "90s", "2h" or "500ms" (see [`parse_duration`]), in milliseconds.
    pub fn duration_ms(&self, name: &str, default: &str) -> Result<u64, String> {
        parse_duration(self.get_or(name, default)).map_err(|e| format!("parameter `{name}`: {e}"))
    }

    /// Splits `name` (or `default` when absent) on commas: `"a, b,,c"` gives
    /// `["a", "b", "c"]` (items trimmed, empty ones dropped).
    pub fn list(&self, name: &str, default: &str) -> Vec<String> {
        split_list(self.get_or(name, default))
    }

    /// Parses `name` (or `default`) as a comma-separated list of `key=value`
    /// pairs, e.g. `"backend=3,celery-worker=2"`. Each value is parsed with
    /// `FromStr`; an item without `=` or with a bad value is an error.
    pub fn pairs<T: FromStr>(&self, name: &str, default: &str) -> Result<Vec<(String, T)>, String>
    where
        T::Err: core::fmt::Display,
    {
        split_list(self.get_or(name, default))
            .into_iter()
            .map(|item| {
                let (k, v) = item
                    .split_once('=')
                    .ok_or_else(|| format!("parameter `{name}`: item {item:?} is not key=value"))?;
                let (k, v) = (k.trim(), v.trim());
                if k.is_empty() {
                    return Err(format!(
                        "parameter `{name}`: item {item:?} has an empty key"
                    ));
                }
                let v = v
                    .parse()
                    .map_err(|e| format!("parameter `{name}`: item {item:?}: {e}"))?;
                Ok((k.to_string(), v))
            })
            .collect()
    }

    /// All parameters, in the order received.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl From<Vec<(String, String)>> for Params {
    fn from(pairs: Vec<(String, String)>) -> Self {
        Params::new(pairs)
    }
}

fn split_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Params {
        Params::from_strs(pairs)
    }

    #[test]
    fn lookups() {
        let ps = p(&[("a", "1"), ("a", "2"), ("empty", " ")]);
        assert_eq!(ps.get("a"), Some("2"));
        assert_eq!(ps.get_or("b", "x"), "x");
        assert_eq!(ps.required("a"), Ok("2"));
        assert!(
            ps.required("b")
                .unwrap_err()
                .contains("missing required parameter `b`")
        );
        assert!(ps.required("empty").unwrap_err().contains("is empty"));
        assert_eq!(ps.parse_or::<u32>("a", "0"), Ok(2));
        assert!(ps.parse_or::<u32>("empty", "0").is_err());
    }

    #[test]
    fn from_strs_and_non_empty() {
        let ps = Params::from_strs(&[("ns", " payments "), ("blank", "  ")]);
        assert_eq!(
            ps,
            Params::from(vec![
                ("ns".to_string(), " payments ".to_string()),
                ("blank".to_string(), "  ".to_string())
            ])
        );
        assert_eq!(ps.non_empty_or("ns", "default"), Ok("payments"));
        assert_eq!(ps.non_empty_or("absent", " default "), Ok("default"));
        assert_eq!(
            ps.non_empty_or("blank", "default"),
            Err("parameter `blank` is empty".to_string())
        );
        assert_eq!(
            ps.non_empty_or("absent", ""),
            Err("parameter `absent` is empty".to_string())
        );
    }

    #[test]
    fn durations_lists_pairs() {
        let ps = p(&[
            ("t", "4m"),
            ("bad", "4"),
            ("l", " a, b,,c "),
            ("s", "backend=3, celery-worker=2"),
        ]);
        assert_eq!(ps.duration_ms("t", "1s"), Ok(240_000));
        assert_eq!(ps.duration_ms("missing", "90s"), Ok(90_000));
        assert!(
            ps.duration_ms("bad", "1s")
                .unwrap_err()
                .starts_with("parameter `bad`: invalid duration")
        );
        assert_eq!(ps.list("l", ""), vec!["a", "b", "c"]);
        assert!(ps.list("none", "").is_empty());
        assert_eq!(
            ps.pairs::<u32>("s", "").unwrap(),
            vec![("backend".to_string(), 3), ("celery-worker".to_string(), 2)]
        );
        assert!(
            ps.pairs::<u32>("x", "backend")
                .unwrap_err()
                .contains("not key=value")
        );
        assert!(ps.pairs::<u32>("x", "backend=three").is_err());
    }
}
