//! `[backends]` in the runbook config: where the real systems are, and the
//! real backends built from it. Secrets never live in the runbook: it names
//! the environment variables that hold them.
//!
//! ```toml
//! [backends.postgres]
//! host = "10.0.3.7"                 # default: $PGHOST or 127.0.0.1
//! port = 5432                       # default: $PGPORT or 5432
//! user = "drhost"                   # default: $PGUSER or postgres
//! password_env = "DRHOST_PG_PASSWORD"  # optional: the variable holding the password
//! maintenance_db = "postgres"       # where CREATE/ALTER/DROP DATABASE run
//! jobs = 0                          # load connections; 0 = server's cores (local) or 4
//! keep_previous = true              # keep <db>_before_<run> for forensics
//! no_owner = true                   # skip ALTER ... OWNER TO from plain dumps
//!
//! [[backends.postgres.validations]] # must pass before a restore is swapped in,
//! database = "resume_screening"     #   and are part of integrity-check
//! name = "candidates present"
//! sql = "SELECT count(*) FROM candidates"
//!
//! [backends.object_store]
//! endpoint = "http://127.0.0.1:9000" # default: $AWS_ENDPOINT_URL, else AWS
//! region = "eu-west-1"               # default: $AWS_REGION or us-east-1
//! path_style = true                  # for MinIO, Ceph and other S3-compatibles
//! profile = "backups"                # optional AWS profile (default: $AWS_PROFILE, else default)
//! # credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
//! # else the profile's keys or credential_process (~/.aws/credentials, ~/.aws/config)
//!
//! [backends.k8s]
//! kubeconfig = "~/.kube/config"      # default: $KUBECONFIG, ~/.kube/config, else in-cluster
//! context = "prod-eu"                # default: the current context
//! manifest_dir = "manifests"         # bundles: <dir>/<bundle>.yaml or <dir>/<bundle>/*.yaml
//! [backends.k8s.secret_sources]      # replace-secret reads these; plugins only name them
//! db-credentials = { file = "/etc/drhost/db-credentials.yaml" }  # key: value map, or a folder
//! db-credentials-new = { env = "NEW_DB_CREDENTIALS_JSON" }       # a JSON object
//!
//! [backends.health.targets.backend]  # plugins name targets, never URLs
//! url = "https://api.example.com/health"
//! expect_status = [200]              # default [200]
//! body_contains = "ok"               # optional
//! timeout = "5s"                     # per request
//! allow_private = false              # loopback/private addresses need this
//!
//! [backends.notify.channels.status-page]
//! url_env = "STATUSPAGE_WEBHOOK_URL" # or url = "..." when it holds no secret
//! headers_env = { Authorization = "STATUSPAGE_TOKEN" }
//! shape = "json"                     # or "slack"
//! required = false                   # default: a failed delivery is audited, not fatal
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::capability::health::live::HealthTarget;
use crate::capability::k8s::live::{K8sSettings, SecretSource};
use crate::capability::object_store::s3::S3Config;
use crate::capability::operator::webhook::{PayloadShape, WebhookChannel};
use crate::capability::postgres::checks::Validation;
use crate::capability::postgres::restore::Config as PgConfig;

/// `[backends]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackends {
    /// `[backends.postgres]`.
    pub postgres: Option<RawPostgres>,
    /// `[backends.object_store]`.
    pub object_store: Option<RawObjectStore>,
    /// `[backends.k8s]`.
    pub k8s: Option<RawK8s>,
    /// `[backends.health]`.
    pub health: Option<RawHealth>,
    /// `[backends.notify]`.
    pub notify: Option<RawNotify>,
}

/// `[backends.k8s]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawK8s {
    /// Kubeconfig file (default: `$KUBECONFIG`, `~/.kube/config`, else the
    /// in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current one).
    pub context: Option<String>,
    /// Where manifest bundles live, relative to the runbook (default
    /// `manifests`).
    pub manifest_dir: Option<PathBuf>,
    /// Named secret sources: `name = { file = "..." }` or `{ env = "VAR" }`.
    #[serde(default)]
    pub secret_sources: BTreeMap<String, RawSecretSource>,
}

/// One secret source as written: exactly one of `file` and `env`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecretSource {
    /// A YAML/JSON map file, or a directory of one file per key.
    pub file: Option<PathBuf>,
    /// An environment variable holding a JSON object.
    pub env: Option<String>,
}

/// `[backends.health]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Named targets.
    #[serde(default)]
    pub targets: BTreeMap<String, RawHealthTarget>,
}

/// One `[backends.health.targets.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthTarget {
    /// What to GET.
    pub url: String,
    /// Healthy statuses (default `[200]`).
    pub expect_status: Option<Vec<u16>>,
    /// A substring the body must contain.
    pub body_contains: Option<String>,
    /// Per-request timeout ("5s").
    pub timeout: Option<String>,
    /// Allow loopback/private addresses.
    pub allow_private: Option<bool>,
}

/// `[backends.notify]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// Named webhook channels.
    #[serde(default)]
    pub channels: BTreeMap<String, RawChannel>,
}

/// One `[backends.notify.channels.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    /// Webhook URL (when it holds no secret).
    pub url: Option<String>,
    /// The environment variable holding the URL (chat webhooks carry their
    /// secret in the URL).
    pub url_env: Option<String>,
    /// Request headers whose values come from environment variables:
    /// `{ Authorization = "STATUSPAGE_TOKEN" }`.
    #[serde(default)]
    pub headers_env: BTreeMap<String, String>,
    /// `json` (default: `{"text", "channel", "source"}`) or `slack`.
    pub shape: Option<String>,
    /// Per-attempt timeout ("5s").
    pub timeout: Option<String>,
    /// Allow loopback/private addresses.
    pub allow_private: Option<bool>,
    /// Whether a failed delivery fails the call (default false: it is
    /// audited and the plugin is told it went out best-effort).
    pub required: Option<bool>,
}

/// `[backends.postgres]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgres {
    /// Server host name or address.
    pub host: Option<String>,
    /// Server port.
    pub port: Option<u16>,
    /// Role to connect as.
    pub user: Option<String>,
    /// Name of the environment variable holding the password.
    pub password_env: Option<String>,
    /// Maintenance database.
    pub maintenance_db: Option<String>,
    /// Load connections (0 = automatic).
    pub jobs: Option<usize>,
    /// Keep the replaced database.
    pub keep_previous: Option<bool>,
    /// Skip owner changes from plain dumps.
    pub no_owner: Option<bool>,
    /// Validation queries.
    #[serde(default)]
    pub validations: Vec<RawValidation>,
}

/// One `[[backends.postgres.validations]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValidation {
    /// The database it applies to (all when absent).
    pub database: Option<String>,
    /// Shown in reports.
    pub name: String,
    /// One read-only statement whose first value must be true or above 0.
    pub sql: String,
}

/// `[backends.object_store]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObjectStore {
    /// S3 endpoint URL.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Path-style addressing.
    pub path_style: Option<bool>,
    /// Ranged-GET size in MiB (default 8).
    pub range_mib: Option<u64>,
    /// Ranged GETs in flight (default 4).
    pub parallel_ranges: Option<usize>,
    /// AWS profile for credentials and region (default: `$AWS_PROFILE`,
    /// else `default`), from `~/.aws/credentials` and `~/.aws/config`.
    pub profile: Option<String>,
}

/// Validated `[backends]`.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    /// PostgreSQL, when configured.
    pub postgres: Option<PostgresSettings>,
    /// The object store, when configured.
    pub object_store: Option<S3Config>,
    /// Kubernetes, when configured. Relative paths are resolved against the
    /// runbook's folder by [`Backends::resolve_paths`].
    pub k8s: Option<K8sSettings>,
    /// Health targets, when configured.
    pub health: Option<BTreeMap<String, HealthTarget>>,
    /// Notification channels, when configured.
    pub notify: Option<NotifySettings>,
}

/// Validated `[backends.notify]`.
#[derive(Debug, Clone, Default)]
pub struct NotifySettings {
    /// Channels by name.
    pub channels: BTreeMap<String, WebhookChannel>,
    /// Channels whose failed delivery fails the call.
    pub required: BTreeSet<String>,
}

/// Validated `[backends.postgres]`.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// Connection to the maintenance database.
    pub admin: PgConfig,
    /// Load connections (0 = automatic).
    pub jobs: usize,
    /// Keep the replaced database.
    pub keep_previous: bool,
    /// Skip owner changes from plain dumps.
    pub no_owner: bool,
    /// (database or all, query).
    pub validations: Vec<(Option<String>, Validation)>,
}

impl PostgresSettings {
    /// The validation queries that apply to `database`.
    pub fn validations_for(&self, database: &str) -> Vec<Validation> {
        self.validations
            .iter()
            .filter(|(db, _)| db.as_deref().is_none_or(|d| d == database))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl Backends {
    /// Validates the raw form; errors are `(field, problem)`.
    ///
    /// # Errors
    /// A field that cannot be used: an unset password variable, zero or too
    /// many jobs, an endpoint that is not a URL, a validation without SQL.
    pub fn validate(raw: RawBackends) -> Result<Backends, (String, String)> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let postgres = match raw.postgres {
            None => None,
            Some(p) => {
                let mut admin = PgConfig::new();
                let host = p
                    .host
                    .or_else(|| env("PGHOST"))
                    .unwrap_or_else(|| "127.0.0.1".into());
                admin.host(&host);
                let port = match p.port {
                    Some(port) => port,
                    None => match env("PGPORT") {
                        Some(s) => s.parse().map_err(|_| {
                            (
                                "backends.postgres.port".to_owned(),
                                format!("not set, and $PGPORT={s:?} is not a port number"),
                            )
                        })?,
                        None => 5432,
                    },
                };
                admin.port(port);
                admin.user(
                    p.user
                        .or_else(|| env("PGUSER"))
                        .unwrap_or_else(|| "postgres".into()),
                );
                if let Some(var) = &p.password_env {
                    let Some(pw) = env(var) else {
                        return Err((
                            "backends.postgres.password_env".into(),
                            format!(
                                "names ${var}, which is not set (export it, or remove password_env for trust/peer auth)"
                            ),
                        ));
                    };
                    admin.password(pw);
                }
                admin.dbname(p.maintenance_db.as_deref().unwrap_or("postgres"));
                admin.application_name("drhost");
                admin.connect_timeout(std::time::Duration::from_secs(10));
                let jobs = p.jobs.unwrap_or(0);
                if jobs > 64 {
                    return Err((
                        "backends.postgres.jobs".into(),
                        format!("must be 0 (automatic) to 64, got {jobs}"),
                    ));
                }
                let mut names = BTreeSet::new();
                let mut validations = Vec::new();
                for (i, v) in p.validations.into_iter().enumerate() {
                    let field = format!("backends.postgres.validations[{i}]");
                    if v.name.trim().is_empty() || v.sql.trim().is_empty() {
                        return Err((field, "needs a name and an sql statement".into()));
                    }
                    if !names.insert((v.database.clone(), v.name.clone())) {
                        return Err((field, format!("repeats the name {:?}", v.name)));
                    }
                    validations.push((
                        v.database,
                        Validation {
                            name: v.name,
                            sql: v.sql,
                        },
                    ));
                }
                Some(PostgresSettings {
                    admin,
                    jobs,
                    keep_previous: p.keep_previous.unwrap_or(true),
                    no_owner: p.no_owner.unwrap_or(true),
                    validations,
                })
            }
        };
        let object_store = match raw.object_store {
            None => None,
            Some(o) => {
                if let Some(e) = &o.endpoint
                    && !(e.starts_with("http://") || e.starts_with("https://"))
                {
                    return Err((
                        "backends.object_store.endpoint".into(),
                        format!("must be an http:// or https:// URL, got {e:?}"),
                    ));
                }
                let mut cfg = S3Config {
                    endpoint: o.endpoint,
                    region: o.region,
                    path_style: o.path_style.unwrap_or(false),
                    ..S3Config::default()
                };
                if let Some(mib) = o.range_mib {
                    if !(1..=256).contains(&mib) {
                        return Err((
                            "backends.object_store.range_mib".into(),
                            format!("must be 1 to 256, got {mib}"),
                        ));
                    }
                    cfg.range_size = mib << 20;
                }
                if let Some(n) = o.parallel_ranges {
                    if !(1..=64).contains(&n) {
                        return Err((
                            "backends.object_store.parallel_ranges".into(),
                            format!("must be 1 to 64, got {n}"),
                        ));
                    }
                    cfg.max_in_flight = n;
                }
                cfg.profile = o.profile;
                Some(
                    cfg.resolve_env()
                        .map_err(|e| ("backends.object_store.profile".to_owned(), e))?,
                )
            }
        };
        let k8s = raw.k8s.map(validate_k8s).transpose()?;
        let health = raw.health.map(validate_health).transpose()?;
        let notify = raw.notify.map(|n| validate_notify(n, &env)).transpose()?;
        Ok(Backends {
            postgres,
            object_store,
            k8s,
            health,
            notify,
        })
    }

    /// Makes the file paths of `[backends]` relative to `base` (the
    /// runbook's folder) when they are not absolute.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(k) = &mut self.k8s {
            fix(&mut k.manifest_dir);
            if let Some(c) = &mut k.kubeconfig {
                fix(c);
            }
            for source in k.secret_sources.values_mut() {
                if let SecretSource::File(f) = source {
                    fix(f);
                }
            }
        }
    }
}

type FieldError = (String, String);

fn parse_timeout(field: String, value: Option<&str>) -> Result<Duration, FieldError> {
    let Some(v) = value else {
        return Ok(Duration::from_secs(5));
    };
    match humantime::parse_duration(v) {
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(300) => Ok(d),
        Ok(_) => Err((field, format!("must be above 0 and at most 5m, got {v:?}"))),
        Err(e) => Err((field, format!("is not a duration like \"5s\": {e}"))),
    }
}

fn parse_url(field: String, value: &str) -> Result<url::Url, FieldError> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(u),
        Ok(_) => Err((
            field,
            "must be an http:// or https:// URL with a host".into(),
        )),
        // The value may be a secret (a webhook URL): not echoed.
        Err(e) => Err((field, format!("is not a URL: {e}"))),
    }
}

fn validate_k8s(k: RawK8s) -> Result<K8sSettings, FieldError> {
    let mut secret_sources = BTreeMap::new();
    for (name, src) in k.secret_sources {
        let field = format!("backends.k8s.secret_sources.{name}");
        let source = match (src.file, src.env) {
            (Some(f), None) => SecretSource::File(f),
            (None, Some(e)) if !e.trim().is_empty() => SecretSource::Env(e),
            _ => return Err((field, "needs exactly one of `file` and `env`".into())),
        };
        secret_sources.insert(name, source);
    }
    Ok(K8sSettings {
        kubeconfig: k.kubeconfig,
        context: k.context,
        manifest_dir: k.manifest_dir.unwrap_or_else(|| PathBuf::from("manifests")),
        secret_sources,
    })
}

fn validate_health(h: RawHealth) -> Result<BTreeMap<String, HealthTarget>, FieldError> {
    let mut targets = BTreeMap::new();
    for (name, t) in h.targets {
        let field = |f: &str| format!("backends.health.targets.{name}.{f}");
        let mut target = HealthTarget::new(parse_url(field("url"), &t.url)?);
        if let Some(codes) = t.expect_status {
            if codes.is_empty() || codes.iter().any(|c| !(100..=599).contains(c)) {
                return Err((
                    field("expect_status"),
                    format!("must list HTTP statuses (100-599), got {codes:?}"),
                ));
            }
            target.expect_status = codes;
        }
        target.body_contains = t.body_contains;
        target.timeout = parse_timeout(field("timeout"), t.timeout.as_deref())?;
        target.allow_private = t.allow_private.unwrap_or(false);
        targets.insert(name, target);
    }
    crate::capability::health::live::LiveHealth::new(targets.clone())
        .map_err(|e| ("backends.health.targets".to_owned(), e))?;
    Ok(targets)
}

fn validate_notify(
    n: RawNotify,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<NotifySettings, FieldError> {
    let mut settings = NotifySettings::default();
    for (name, c) in n.channels {
        let field = |f: &str| format!("backends.notify.channels.{name}.{f}");
        let url = match (&c.url, &c.url_env) {
            (Some(u), None) => parse_url(field("url"), u)?,
            (None, Some(var)) => match env(var) {
                Some(u) => parse_url(field("url_env"), &u)?,
                None => {
                    return Err((field("url_env"), format!("names ${var}, which is not set")));
                }
            },
            _ => {
                return Err((
                    field("url"),
                    "needs exactly one of `url` and `url_env`".into(),
                ));
            }
        };
        let mut channel = WebhookChannel::new(url);
        for (header, var) in c.headers_env {
            let Some(value) = env(&var) else {
                return Err((
                    field(&format!("headers_env.{header}")),
                    format!("names ${var}, which is not set"),
                ));
            };
            channel.headers.push((header, value));
        }
        channel.template = match c.shape.as_deref() {
            None | Some("json") => PayloadShape::Json,
            Some("slack") => PayloadShape::Slack,
            Some(other) => {
                return Err((
                    field("shape"),
                    format!("must be \"json\" or \"slack\", got {other:?}"),
                ));
            }
        };
        channel.timeout = parse_timeout(field("timeout"), c.timeout.as_deref())?;
        channel.allow_private = c.allow_private.unwrap_or(false);
        if c.required.unwrap_or(false) {
            settings.required.insert(name.clone());
        }
        settings.channels.insert(name, channel);
    }
    Ok(settings)
}
