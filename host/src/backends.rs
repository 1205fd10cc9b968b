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
//! ```

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::capability::object_store::s3::S3Config;
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
        Ok(Backends {
            postgres,
            object_store,
        })
    }
}
