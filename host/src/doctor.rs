//! `drhost doctor --config RUNBOOK.toml`: before an incident (or at its
//! start), check that every backend the runbook configures answers and that
//! its credentials work — without changing anything anywhere.
//!
//! What each check does (reads only):
//! - **postgres**: connects to the maintenance database as the configured
//!   role, reads the server version, checks the role may create databases
//!   (a restore needs it) and whether `amcheck` can be used; each granted
//!   database must exist.
//! - **object store**: one `ListObjectsV2` page (one key) under every
//!   granted `bucket/prefix`: proves endpoint, credentials, signing and the
//!   bucket policy.
//! - **k8s**: the API server's version, then a read of every granted
//!   deployment; every granted bundle must exist in the manifest folder and
//!   every granted secret source must resolve (its bytes are not shown).
//! - **health**: one check of every target (an unhealthy target is reported,
//!   it is what the doctor is for).
//! - **notify**: channels are listed, never posted to (a status page must
//!   not announce a drill).
//!
//! Every check has its own time box; the report lists each with `ok`,
//! `warn` or `FAIL` and what it saw.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bindings::CapError;
use crate::capability::Capabilities;
use crate::capability::operator::RefuseApprover;
use crate::capability::postgres::restore::Progress;
use crate::runbook::Runbook;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Ok,
    /// Works, with something the operator should know.
    Warn,
    /// Does not work.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `postgres`, `object-store`, `k8s`, `health`, `notify`.
    pub backend: &'static str,
    /// What was checked (`deployment shop/backend`).
    pub subject: String,
    /// The outcome.
    pub status: Status,
    /// What was seen.
    pub detail: String,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

/// Time box of one check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

struct Report {
    checks: Vec<Check>,
}

impl Report {
    async fn run<F, T>(
        &mut self,
        backend: &'static str,
        subject: String,
        fut: F,
        judge: impl FnOnce(T) -> (Status, String),
    ) where
        F: Future<Output = Result<T, CapError>>,
    {
        let start = Instant::now();
        let (status, detail) = match tokio::time::timeout(CHECK_TIMEOUT, fut).await {
            Ok(Ok(v)) => judge(v),
            Ok(Err(e)) => (Status::Fail, format!("{}: {}", e.kind(), e.message())),
            Err(_) => (
                Status::Fail,
                format!("no answer within {}s", CHECK_TIMEOUT.as_secs()),
            ),
        };
        self.checks.push(Check {
            backend,
            subject,
            status,
            detail,
            millis: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }

    fn note(&mut self, backend: &'static str, subject: String, status: Status, detail: String) {
        self.checks.push(Check {
            backend,
            subject,
            status,
            detail,
            millis: 0,
        });
    }
}

/// Runs every check the runbook's `[backends]` and `[grants]` call for.
/// A runbook without `[backends]` gets one `warn` line saying so.
///
/// # Errors
/// A backend that cannot even be built from the config (the message names
/// the section).
pub async fn doctor(runbook: &Runbook) -> Result<Vec<Check>, String> {
    let caps = Capabilities::live(
        runbook,
        "doctor",
        std::sync::Arc::new(RefuseApprover),
        Progress::default(),
    )
    .map_err(|e| e.0)?;
    let b = &runbook.backends;
    let g = &runbook.grants;
    let mut r = Report { checks: Vec::new() };

    if let Some(pg) = &b.postgres {
        let databases: Vec<String> = g
            .postgres
            .as_ref()
            .map(|p| p.databases.iter().cloned().collect())
            .unwrap_or_default();
        r.run(
            "postgres",
            "server".into(),
            postgres_checks(pg.admin.clone(), databases),
            |lines: Vec<(Status, String)>| {
                let worst = lines
                    .iter()
                    .map(|(s, _)| *s)
                    .max_by_key(|s| *s as u8)
                    .unwrap_or(Status::Ok);
                let text: Vec<String> = lines.into_iter().map(|(_, t)| t).collect();
                (worst, text.join("; "))
            },
        )
        .await;
    }

    if b.object_store.is_some() {
        for (bucket, prefix) in g.object_store.clone().unwrap_or_default() {
            r.run(
                "object-store",
                format!("s3://{bucket}/{prefix}"),
                caps.object_store.newest(&bucket, &prefix),
                |newest| match newest {
                    Some(o) => (
                        Status::Ok,
                        format!(
                            "newest {} ({} bytes, {} old)",
                            o.key,
                            o.size,
                            humantime::format_duration(Duration::from_secs(o.age_ms / 1000))
                        ),
                    ),
                    None => (
                        Status::Warn,
                        "reachable, credentials work, but nothing is stored there".into(),
                    ),
                },
            )
            .await;
        }
    }

    if let Some(k) = &b.k8s {
        r.run(
            "k8s",
            "API server".into(),
            caps.k8s.cluster_reachable(),
            |v| (Status::Ok, format!("version {v}")),
        )
        .await;
        let grant = g.k8s.clone().unwrap_or_default();
        let reachable = r.checks.last().is_some_and(|c| c.status != Status::Fail);
        for d in grant.deployments.iter().filter(|_| !reachable) {
            r.note(
                "k8s",
                format!("deployment {d}"),
                Status::Fail,
                "not read: the API server did not answer".into(),
            );
        }
        for d in grant.deployments.iter().filter(|_| reachable) {
            let (ns, name) = d.split_once('/').unwrap_or(("", d));
            r.run(
                "k8s",
                format!("deployment {d}"),
                caps.k8s.get_deployment(ns, name),
                |s| {
                    let status = if s.ready >= s.desired {
                        Status::Ok
                    } else {
                        Status::Warn
                    };
                    (
                        status,
                        format!(
                            "{}/{} ready, revision {}, {}",
                            s.ready,
                            s.desired,
                            s.revision,
                            s.images.join(", ")
                        ),
                    )
                },
            )
            .await;
        }
        for bundle in &grant.bundles {
            let dir = &k.manifest_dir;
            let found = ["yaml", "yml"]
                .iter()
                .map(|ext| dir.join(format!("{bundle}.{ext}")))
                .chain(std::iter::once(dir.join(bundle)))
                .find(|p| p.exists());
            match found {
                Some(p) => r.note(
                    "k8s",
                    format!("bundle {bundle}"),
                    Status::Ok,
                    p.display().to_string(),
                ),
                None => r.note(
                    "k8s",
                    format!("bundle {bundle}"),
                    Status::Fail,
                    format!(
                        "not found: no {bundle}.yaml, {bundle}.yml or {bundle}/ in {}",
                        dir.display()
                    ),
                ),
            }
        }
        for source in &grant.secret_sources {
            let (status, detail) = match k.secret_sources.get(source) {
                None => (
                    Status::Fail,
                    "granted but not defined in [backends.k8s.secret_sources]".into(),
                ),
                Some(crate::capability::k8s::live::SecretSource::File(p)) => {
                    if p.exists() {
                        (Status::Ok, format!("file {} present", p.display()))
                    } else {
                        (Status::Fail, format!("file {} does not exist", p.display()))
                    }
                }
                Some(crate::capability::k8s::live::SecretSource::Env(v)) => {
                    if std::env::var_os(v).is_some() {
                        (Status::Ok, format!("${v} is set"))
                    } else {
                        (Status::Fail, format!("${v} is not set"))
                    }
                }
            };
            r.note("k8s", format!("secret source {source}"), status, detail);
        }
    }

    if let Some(targets) = &b.health {
        for name in targets.keys() {
            r.run(
                "health",
                format!("target {name}"),
                caps.health.check(name),
                |c| {
                    let status = if c.healthy { Status::Ok } else { Status::Warn };
                    (status, format!("{} ({} ms)", c.detail, c.latency_ms))
                },
            )
            .await;
        }
    }

    if let Some(n) = &b.notify {
        for name in n.channels.keys() {
            let required = if n.required.contains(name) {
                "required"
            } else {
                "best-effort"
            };
            r.note(
                "notify",
                format!("channel {name}"),
                Status::Ok,
                format!("configured ({required}); not posted to: the doctor never notifies"),
            );
        }
    }

    if r.checks.is_empty() {
        r.note(
            "runbook",
            runbook.path.display().to_string(),
            Status::Warn,
            "configures no [backends]: nothing to check (runs need --mock)".into(),
        );
    }
    Ok(r.checks)
}

/// Connects as the configured role and reads what a restore will need.
async fn postgres_checks(
    admin: tokio_postgres::Config,
    databases: Vec<String>,
) -> Result<Vec<(Status, String)>, CapError> {
    let (client, conn) = admin
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| CapError::Unavailable(format!("cannot connect: {e}")))?;
    let conn = tokio::spawn(conn);
    let q = |e: tokio_postgres::Error| CapError::Failed(e.to_string());
    let mut lines = Vec::new();
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_user::text, \
             (SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user), \
             EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck')",
            &[],
        )
        .await
        .map_err(q)?;
    let (version, user, createdb, amcheck): (String, String, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    lines.push((Status::Ok, format!("PostgreSQL {version} as {user}")));
    lines.push(if createdb {
        (Status::Ok, "may create databases".to_owned())
    } else {
        (
            Status::Fail,
            format!("role {user} may not create databases: a restore needs CREATEDB"),
        )
    });
    lines.push(if amcheck {
        (Status::Ok, "amcheck available".to_owned())
    } else {
        (
            Status::Warn,
            "amcheck not installed on the server: integrity checks skip B-tree verification"
                .to_owned(),
        )
    });
    for db in databases {
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                &[&db],
            )
            .await
            .map_err(q)?
            .get(0);
        lines.push(if exists {
            (Status::Ok, format!("database {db} exists"))
        } else {
            (
                Status::Warn,
                format!("database {db} does not exist (a restore would create it)"),
            )
        });
    }
    drop(client);
    let _ = conn.await;
    Ok(lines)
}
