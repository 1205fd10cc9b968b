//! The runbook config: one TOML file per scenario, pinning the plugin and
//! granting it capabilities.
//!
//! Parsed twice, the ripgrep way: serde reads [`RawRunbook`] (every field
//! optional where the format allows, unknown fields rejected), then
//! [`Runbook::load`] turns it into a validated [`Runbook`] that cannot be
//! wrong: durations parsed, the plugin requirement parsed, grants normalised.
//! Every error names the file and the field.
//!
//! ```toml
//! [plugin]
//! path = "../plugins/target/wasm32-wasip2/release/database_corruption.wasm"
//! require = "database-corruption@^1.0"   # name@semver-requirement
//! sha256 = "…"                            # optional pin of the exact build
//!
//! [run]
//! rto = "42m"             # optional; overrides the plugin's describe()
//! call_timeout = "30s"    # per capability call (default 60s)
//! memory_limit_mib = 64   # per instance (default 64)
//!
//! [params]                # passed to every step, over describe()'s defaults
//! namespace = "resume-screening"
//!
//! [budgets]               # per-step time boxes overriding describe()
//! restore = "20m"
//!
//! [grants.k8s]            # deny by default: only what is listed
//! operations = ["get-deployment", "scale", "wait-ready"]
//! deployments = ["resume-screening/backend"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::policy::Grants;

/// Default per-instance linear memory limit.
pub const DEFAULT_MEMORY_LIMIT_MIB: u64 = 64;
/// Default per-call timeout for capability calls.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors reading or validating a runbook config. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read runbook config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the format.
    #[error("runbook config {path} is malformed: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What the TOML parser said, with line and column.
        message: String,
    },
    /// A field has a value that cannot be used.
    #[error("runbook config {path}: `{field}` {problem}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The offending field, dotted (`grants.k8s.deployments`).
        field: String,
        /// What is wrong and what is expected.
        problem: String,
    },
}

/// The runbook config as written (serde form). See the module docs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRunbook {
    /// Which plugin to run.
    pub plugin: RawPlugin,
    /// Run-wide settings.
    #[serde(default)]
    pub run: RawRun,
    /// Scenario parameters.
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// Per-step budget overrides, as durations ("20m").
    #[serde(default)]
    pub budgets: BTreeMap<String, String>,
    /// Capability grants.
    #[serde(default)]
    pub grants: crate::policy::RawGrants,
    /// Where the real backends are.
    #[serde(default)]
    pub backends: crate::backends::RawBackends,
    /// Retry backoff per class (see [`crate::retry`]).
    #[serde(default)]
    pub retries: crate::retry::RawRetries,
}

/// `[plugin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    /// Path to the `.wasm` component, relative to the config file.
    pub path: String,
    /// `name@semver-requirement`, e.g. `database-corruption@^1.0`.
    pub require: String,
    /// Optional sha256 (hex) of the exact component file.
    pub sha256: Option<String>,
}

/// `[run]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRun {
    /// RTO override ("42m").
    pub rto: Option<String>,
    /// Per-call timeout ("30s").
    pub call_timeout: Option<String>,
    /// Per-instance memory limit in MiB.
    pub memory_limit_mib: Option<u64>,
    /// Copy the audit log to this object-store location at run end
    /// (`s3://bucket/prefix/`), so the trail survives the machine.
    pub audit_mirror: Option<String>,
    /// Also copy it after every step (default false).
    #[serde(default)]
    pub audit_mirror_each_step: bool,
    /// How long a run's Kubernetes lease lives without renewal ("10m"): a
    /// dead run's lease expires after this.
    pub lease_ttl: Option<String>,
}

/// What the runbook requires of the plugin's identity.
#[derive(Debug, Clone)]
pub struct PluginPin {
    /// The component file.
    pub path: PathBuf,
    /// Required plugin name.
    pub name: String,
    /// Required version range.
    pub version: semver::VersionReq,
    /// Required sha256 of the file (lowercase hex), if pinned.
    pub sha256: Option<String>,
}

/// A validated runbook config.
#[derive(Debug, Clone)]
pub struct Runbook {
    /// The config file it was read from.
    pub path: PathBuf,
    /// The plugin pin.
    pub plugin: PluginPin,
    /// RTO override.
    pub rto: Option<Duration>,
    /// Per-call timeout.
    pub call_timeout: Duration,
    /// Per-instance memory limit in bytes.
    pub memory_limit_bytes: usize,
    /// Parameters, as strings.
    pub params: BTreeMap<String, String>,
    /// Per-step budget overrides.
    pub budgets: BTreeMap<String, Duration>,
    /// Validated grants.
    pub grants: Grants,
    /// Real backends configured (`[backends]`).
    pub backends: crate::backends::Backends,
    /// `[run] audit_mirror`: where the audit log is copied.
    pub audit_mirror: Option<AuditMirrorTarget>,
    /// `[run] lease_ttl` (default [`crate::lease::DEFAULT_LEASE_TTL`]).
    pub lease_ttl: Duration,
    /// `[retries]` (see [`crate::retry`]).
    pub retries: crate::retry::RetryPolicy,
}

/// Where `[run] audit_mirror` copies the audit log: `s3://bucket/prefix`,
/// with the object store's client settings from `[backends.object_store]`
/// (or the environment's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditMirrorTarget {
    /// Bucket.
    pub bucket: String,
    /// Key prefix (ends with `/` unless empty).
    pub prefix: String,
    /// After every step too, not only at run end.
    pub each_step: bool,
}

/// Parses `s3://bucket/prefix`.
///
/// # Errors
/// A message saying what is expected.
pub fn parse_s3_location(s: &str) -> Result<(String, String), String> {
    let rest = s
        .strip_prefix("s3://")
        .ok_or_else(|| format!("expected s3://BUCKET/PREFIX, got {s:?}"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty()
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(format!("{s:?}: {bucket:?} is not a bucket name"));
    }
    if prefix.split('/').any(|seg| seg == "..") {
        return Err(format!("{s:?}: the prefix must not contain `..`"));
    }
    let mut prefix = prefix.to_owned();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    Ok((bucket.to_owned(), prefix))
}

impl Runbook {
    /// Reads and validates a runbook config.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the field when the file cannot be
    /// read, is not valid TOML, has unknown fields, or holds a value that
    /// cannot be used (bad duration, bad requirement, bad grant).
    pub fn load(path: &Path) -> Result<Runbook, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Validates config text as if read from `path` (relative paths in it are
    /// resolved against `path`'s directory).
    ///
    /// # Errors
    /// As [`Runbook::load`], except for reading.
    pub fn parse(path: &Path, text: &str) -> Result<Runbook, ConfigError> {
        let raw: RawRunbook = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |field: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            problem,
        };
        let dir = path.parent().unwrap_or(Path::new("."));

        let (name, req) =
            parse_requirement(&raw.plugin.require).map_err(|p| invalid("plugin.require", p))?;
        let sha256 = match raw.plugin.sha256 {
            Some(s) => {
                let s = s.to_ascii_lowercase();
                if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(
                        "plugin.sha256",
                        format!("must be 64 hex digits, got {s:?}"),
                    ));
                }
                Some(s)
            }
            None => None,
        };
        let plugin = PluginPin {
            path: dir.join(&raw.plugin.path),
            name,
            version: req,
            sha256,
        };

        let rto = match &raw.run.rto {
            Some(s) => Some(parse_duration(s).map_err(|p| invalid("run.rto", p))?),
            None => None,
        };
        let call_timeout = match &raw.run.call_timeout {
            Some(s) => parse_duration(s).map_err(|p| invalid("run.call_timeout", p))?,
            None => DEFAULT_CALL_TIMEOUT,
        };
        let mib = raw.run.memory_limit_mib.unwrap_or(DEFAULT_MEMORY_LIMIT_MIB);
        if !(1..=4096).contains(&mib) {
            return Err(invalid(
                "run.memory_limit_mib",
                format!("must be between 1 and 4096, got {mib}"),
            ));
        }

        let mut params = BTreeMap::new();
        for (k, v) in raw.params {
            let s = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(invalid(
                        &format!("params.{k}"),
                        format!(
                            "must be a string, number or boolean, got a {}",
                            other.type_str()
                        ),
                    ));
                }
            };
            params.insert(k, s);
        }
        let mut budgets = BTreeMap::new();
        for (step, d) in raw.budgets {
            let d = parse_duration(&d).map_err(|p| invalid(&format!("budgets.{step}"), p))?;
            if d.is_zero() {
                return Err(invalid(
                    &format!("budgets.{step}"),
                    "must not be zero".into(),
                ));
            }
            budgets.insert(step, d);
        }
        let grants = Grants::validate(raw.grants)
            .map_err(|(field, problem)| invalid(&format!("grants.{field}"), problem))?;
        let mut backends = crate::backends::Backends::validate(raw.backends)
            .map_err(|(field, problem)| invalid(&field, problem))?;
        backends.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        let audit_mirror = match &raw.run.audit_mirror {
            Some(loc) => {
                let (bucket, prefix) =
                    parse_s3_location(loc).map_err(|p| invalid("run.audit_mirror", p))?;
                Some(AuditMirrorTarget {
                    bucket,
                    prefix,
                    each_step: raw.run.audit_mirror_each_step,
                })
            }
            None if raw.run.audit_mirror_each_step => {
                return Err(invalid(
                    "run.audit_mirror_each_step",
                    "needs run.audit_mirror (s3://BUCKET/PREFIX)".into(),
                ));
            }
            None => None,
        };
        let lease_ttl = match &raw.run.lease_ttl {
            Some(s) => {
                let d = parse_duration(s).map_err(|p| invalid("run.lease_ttl", p))?;
                if d < Duration::from_secs(15) {
                    return Err(invalid(
                        "run.lease_ttl",
                        format!("{s:?} is too short: at least 15s (it is renewed every third)"),
                    ));
                }
                d
            }
            None => crate::lease::DEFAULT_LEASE_TTL,
        };
        let retries = raw.retries.resolve().map_err(|(f, p)| invalid(&f, p))?;
        Ok(Runbook {
            retries,
            lease_ttl,
            audit_mirror,
            path: path.to_owned(),
            plugin,
            rto,
            call_timeout,
            memory_limit_bytes: (mib as usize) << 20,
            params,
            budgets,
            grants,
            backends,
        })
    }
}

/// Parses `name@requirement` (`database-corruption@^1.0`); a bare name
/// accepts any version.
///
/// # Errors
/// A message saying what is wrong with the requirement.
pub fn parse_requirement(s: &str) -> Result<(String, semver::VersionReq), String> {
    let (name, req) = match s.split_once('@') {
        Some((n, r)) => (n, r),
        None => (s, "*"),
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "must be `name@version-requirement` with a name of letters, digits, '-' or '_', got {s:?}"
        ));
    }
    let req = semver::VersionReq::parse(req)
        .map_err(|e| format!("has a bad version requirement {req:?}: {e}"))?;
    Ok((name.to_owned(), req))
}

/// Parses a duration such as `500ms`, `90s`, `15m`, `1h30m`, `2h`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "is not a duration ({e}); write e.g. \"500ms\", \"90s\", \"15m\", \"1h30m\", got {s:?}"
        )
    })
}

/// Formats a duration for people: `850ms`, `12.4s`, `14m05s`, `1h02m`.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[plugin]\npath = \"p.wasm\"\nrequire = \"x@^1\"\n";

    #[test]
    fn audit_mirror_locations() {
        assert_eq!(
            parse_s3_location("s3://trail/audit/prod"),
            Ok(("trail".into(), "audit/prod/".into()))
        );
        assert_eq!(
            parse_s3_location("s3://trail"),
            Ok(("trail".into(), String::new()))
        );
        for bad in ["trail/audit", "s3:///x", "s3://Trail/x", "s3://t/../x"] {
            assert!(parse_s3_location(bad).is_err(), "{bad}");
        }
        let rb = Runbook::parse(
            Path::new("rb.toml"),
            &format!(
                "{BASE}[run]\naudit_mirror = \"s3://trail/a\"\naudit_mirror_each_step = true\n"
            ),
        )
        .expect("valid");
        assert_eq!(
            rb.audit_mirror,
            Some(AuditMirrorTarget {
                bucket: "trail".into(),
                prefix: "a/".into(),
                each_step: true
            })
        );
        let e = Runbook::parse(
            Path::new("rb.toml"),
            &format!("{BASE}[run]\naudit_mirror = \"/var/log\"\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rb.toml") && e.contains("run.audit_mirror"),
            "{e}"
        );
        let e = Runbook::parse(
            Path::new("rb.toml"),
            &format!("{BASE}[run]\naudit_mirror_each_step = true\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs run.audit_mirror"), "{e}");
    }
}
