//! The read side of the PostgreSQL capability against a real server:
//! integrity checks, bounded read-only queries, and terminating sessions.
//! Groundwork for the real `PostgresBackend` (which also needs the
//! object-store read path for restores).
//!
//! - Integrity check: connectivity; `amcheck` (`bt_index_check` on every
//!   valid B-tree index outside the system catalogs, TOAST indexes
//!   included) when the extension is installed in the database,
//!   reported as not run otherwise (this module never installs it: a check
//!   must not change the database); validation queries from the runbook
//!   config.
//! - Query: exactly one statement (the server's parser checks that: a
//!   multi-statement string fails to prepare), run in a `READ ONLY`
//!   transaction with a statement timeout, results as text, bounded in rows
//!   and bytes. Caveat: `READ ONLY` stops writes, not every side effect of a
//!   function (`pg_terminate_backend` is allowed in a read-only
//!   transaction): give drhost a role without such privileges for queries.
//! - Terminate connections: every other session on the database.
//!
//! Database names are passed as parameters or quoted, never interpolated.

use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};

use super::restore::quote_ident;
use crate::bindings::CapError;
use crate::bindings::postgres::{Check, IntegrityReport};

/// A validation query from the runbook config: its first column of its
/// first row decides (`true`/`false`, or a number that must be above 0,
/// e.g. a row count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// Shown in the report (`candidates have rows`).
    pub name: String,
    /// One read-only statement.
    pub sql: String,
}

/// Bounds of a read-only query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Statement timeout.
    pub timeout: Duration,
    /// Most rows returned.
    pub max_rows: usize,
    /// Most bytes of text returned.
    pub max_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: Duration::from_secs(30),
            max_rows: 10_000,
            max_bytes: 1 << 20,
        }
    }
}

fn unavailable(what: &str, e: &tokio_postgres::Error) -> CapError {
    CapError::Unavailable(format!("{what}: {e}"))
}

fn failed(what: &str, e: &tokio_postgres::Error) -> CapError {
    match e.as_db_error() {
        Some(db) if db.code().code() == "57014" => {
            CapError::TimedOut(format!("{what}: {}", db.message()))
        }
        Some(db) if db.code().code() == "3D000" => {
            CapError::NotFound(format!("{what}: {}", db.message()))
        }
        Some(db) if db.code().code().starts_with("42") => {
            CapError::Invalid(format!("{what}: {} ({})", db.message(), db.code().code()))
        }
        Some(db) => CapError::Failed(format!("{what}: {} ({})", db.message(), db.code().code())),
        None => CapError::Unavailable(format!("{what}: {e}")),
    }
}

async fn connect(config: &Config, database: &str) -> Result<Client, CapError> {
    let mut c = config.clone();
    c.dbname(database);
    let (client, connection) = c.connect(NoTls).await.map_err(|e| match e.as_db_error() {
        Some(db) if db.code().code() == "3D000" => {
            CapError::NotFound(format!("database {database:?} does not exist"))
        }
        _ => unavailable(&format!("connecting to database {database:?}"), &e),
    })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Connectivity, amcheck where installed, and the validation queries.
///
/// # Errors
/// `not-found` for a missing database, `unavailable` when the server cannot
/// be reached. Failed checks are not errors: they are `ok: false` in the
/// report.
pub async fn integrity_check(
    config: &Config,
    database: &str,
    validations: &[Validation],
    limits: QueryLimits,
) -> Result<IntegrityReport, CapError> {
    let client = connect(config, database).await?;
    let mut checks = Vec::new();
    let version: String = client
        .query_one("SELECT current_setting('server_version')", &[])
        .await
        .map_err(|e| unavailable("checking connectivity", &e))?
        .get(0);
    checks.push(Check {
        name: "connectivity".into(),
        ok: true,
        detail: format!("connected to {database} (PostgreSQL {version})"),
    });

    let installed: bool = client
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_extension WHERE extname = 'amcheck')",
            &[],
        )
        .await
        .map_err(|e| failed("looking for amcheck", &e))?
        .get(0);
    if installed {
        let indexes = client
            .query(
                "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am a ON a.oid = c.relam \
                 WHERE a.amname = 'btree' AND i.indisvalid AND c.relpersistence <> 't' \
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 2",
                &[],
            )
            .await
            .map_err(|e| failed("listing B-tree indexes", &e))?;
        let mut broken = Vec::new();
        for row in &indexes {
            let oid: u32 = row.get(0);
            let name: String = row.get(1);
            if let Err(e) = client
                .execute("SELECT bt_index_check($1::oid)", &[&oid])
                .await
            {
                let why = e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string());
                broken.push(format!("{name}: {why}"));
            }
        }
        checks.push(Check {
            name: "amcheck".into(),
            ok: broken.is_empty(),
            detail: if broken.is_empty() {
                format!("{} B-tree indexes checked, all intact", indexes.len())
            } else {
                format!(
                    "{} of {} B-tree indexes corrupt: {}",
                    broken.len(),
                    indexes.len(),
                    broken.join("; ")
                )
            },
        });
    } else {
        checks.push(Check {
            name: "amcheck".into(),
            ok: true,
            detail: format!(
                "not run: the amcheck extension is not installed in {database} (CREATE EXTENSION amcheck to enable index checks)"
            ),
        });
    }

    for v in validations {
        let check = match query_read_only_on(&client, &v.sql, limits).await {
            Ok(rows) => {
                let value = rows
                    .first()
                    .and_then(|r| r.first())
                    .cloned()
                    .unwrap_or_default();
                let ok = match value.as_str() {
                    "t" | "true" => true,
                    "f" | "false" | "" => false,
                    n => n.parse::<f64>().is_ok_and(|x| x > 0.0),
                };
                Check {
                    name: v.name.clone(),
                    ok,
                    detail: if value.is_empty() {
                        "no value".into()
                    } else {
                        value
                    },
                }
            }
            Err(e) => Check {
                name: v.name.clone(),
                ok: false,
                detail: e.to_string(),
            },
        };
        checks.push(check);
    }
    Ok(IntegrityReport {
        database: database.to_owned(),
        healthy: checks.iter().all(|c| c.ok),
        checks,
    })
}

/// One read-only statement on `database`; rows as text (NULL as empty).
///
/// # Errors
/// `invalid` for more than one statement or a syntax error, `timed-out`
/// past the statement timeout, `invalid` past the row or byte bound,
/// `failed` for a write attempt (read-only transaction), `not-found` for a
/// missing database.
pub async fn query_read_only(
    config: &Config,
    database: &str,
    sql: &str,
    limits: QueryLimits,
) -> Result<Vec<Vec<String>>, CapError> {
    let client = connect(config, database).await?;
    query_read_only_on(&client, sql, limits).await
}

async fn query_read_only_on(
    client: &Client,
    sql: &str,
    limits: QueryLimits,
) -> Result<Vec<Vec<String>>, CapError> {
    // The server's parser is the judge of "one statement": preparing a
    // string with several fails.
    client
        .prepare(sql)
        .await
        .map_err(|e| failed("the query must be exactly one valid statement", &e))?;
    let timeout_ms = limits.timeout.as_millis().max(1);
    client
        .batch_execute(&format!(
            "BEGIN READ ONLY; SET LOCAL statement_timeout = {timeout_ms}"
        ))
        .await
        .map_err(|e| failed("starting a read-only transaction", &e))?;
    let result = client.simple_query(sql).await;
    let _ = client.batch_execute("ROLLBACK").await;
    let messages = result.map_err(|e| failed("query", &e))?;
    let (mut rows, mut bytes) = (Vec::new(), 0usize);
    for m in messages {
        if let SimpleQueryMessage::Row(row) = m {
            if rows.len() >= limits.max_rows {
                return Err(CapError::Invalid(format!(
                    "the result has more than {} rows; add a LIMIT",
                    limits.max_rows
                )));
            }
            let mut out = Vec::with_capacity(row.len());
            for i in 0..row.len() {
                let v = row.get(i).unwrap_or("").to_owned();
                bytes += v.len();
                out.push(v);
            }
            if bytes > limits.max_bytes {
                return Err(CapError::Invalid(format!(
                    "the result is larger than {} bytes; select less",
                    limits.max_bytes
                )));
            }
            rows.push(out);
        }
    }
    Ok(rows)
}

/// Terminates every other session on `database`; returns how many.
///
/// # Errors
/// `unavailable` when the server cannot be reached; `failed` without the
/// privilege to signal those sessions.
pub async fn terminate_connections(config: &Config, database: &str) -> Result<u32, CapError> {
    let client = connect(config, "postgres").await?;
    let n: i64 = client
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&database],
        )
        .await
        .map_err(|e| {
            failed(
                &format!("terminating sessions on {}", quote_ident(database)),
                &e,
            )
        })?
        .get(0);
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}
