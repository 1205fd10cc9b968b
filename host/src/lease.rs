//! One run per target: before its first mutating step a run takes a lease
//! on what it may change, so a colleague's second run on the same target
//! fails fast, naming who holds it, instead of racing it.
//!
//! - **Kubernetes**: a `coordination.k8s.io/v1` `Lease` named
//!   [`K8S_LEASE_NAME`] in each namespace the runbook grants. Its
//!   `holderIdentity` is the run id, `leaseDurationSeconds` the configured
//!   TTL (`[run] lease_ttl`, default 10 minutes), renewed every third of it
//!   while the run lives; annotations name the operator, the host and when
//!   the run took it. A lease not renewed within its TTL belongs to a dead
//!   run and is taken over (and the take-over audited). A namespace that
//!   does not exist yet (a cluster being rebuilt) has nothing to race on
//!   and is skipped with a warning.
//! - **PostgreSQL**: a session-level advisory lock per granted database,
//!   key `hashtext('drhost-run:' || db)` (distinct from the restore's own
//!   lock), held on a connection whose `application_name` names the run.
//!   A dead run's session ends and its lock with it, so no TTL is needed;
//!   the holder is found through `pg_locks` and `pg_stat_activity`.
//!
//! `--break-lease` takes a lease from a live holder (for Kubernetes by
//! overwriting it, for PostgreSQL by terminating the holder's session); the
//! runner audits who was displaced. Leases are released at run end.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde::Serialize;
use tokio_postgres::NoTls;

use crate::fixture::lock;

/// Name of the Lease object in each namespace.
pub const K8S_LEASE_NAME: &str = "drhost-run";
/// Default `[run] lease_ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(600);

const ANN_OPERATOR: &str = "drhost.dev/operator";
const ANN_HOST: &str = "drhost.dev/host";
const ANN_SINCE: &str = "drhost.dev/since";

/// Who holds (or wants) a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// Run id.
    pub run_id: String,
    /// Operator's user name.
    pub operator: String,
    /// Host the run executes on.
    pub host: String,
    /// When the run took the lease (RFC 3339).
    pub since: String,
}

impl Holder {
    /// This process's identity for run `run_id`.
    pub fn this_run(run_id: &str) -> Holder {
        Holder {
            run_id: run_id.to_owned(),
            operator: crate::capability::operator::approver::operator_name(),
            host: hostname(),
            since: rfc3339(SystemTime::now()),
        }
    }

    /// "run R by OPERATOR on HOST since T".
    pub fn describe(&self) -> String {
        format!(
            "run {} by {} on {} since {}",
            self.run_id, self.operator, self.host, self.since
        )
    }

    fn application_name(&self) -> String {
        // PostgreSQL keeps 63 bytes of it.
        let s = format!("drhost {} {}@{}", self.run_id, self.operator, self.host);
        s.chars().take(63).collect()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Why a lease was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another live run holds it.
    #[error(
        "{target} is leased to {} (until {until}); another run is recovering it. \
         If that run is dead, wait for its lease to expire or run again with --break-lease",
        holder.describe()
    )]
    Held {
        /// What is leased.
        target: String,
        /// Who holds it.
        holder: Holder,
        /// When it expires unless renewed.
        until: String,
    },
    /// The lease could not be checked or taken.
    #[error("cannot take the lease on {target}: {message}")]
    Failed {
        /// What is leased.
        target: String,
        /// What went wrong.
        message: String,
    },
}

/// How a lease was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// It was free (or already ours).
    Free,
    /// Its holder's lease had expired (a dead run).
    Expired(Holder),
    /// `--break-lease` took it from a live holder.
    Broken(Holder),
    /// Nothing to lease there yet (e.g. the namespace does not exist).
    Skipped(String),
}

/// One leased target.
#[async_trait]
pub trait TargetLease: Send + Sync {
    /// "Kubernetes namespace resume-screening", "database resume_screening".
    fn target(&self) -> String;
    /// Takes the lease for `me`.
    async fn acquire(&self, me: &Holder, break_lease: bool) -> Result<Taken, LeaseError>;
    /// Keeps it alive.
    async fn renew(&self, me: &Holder) -> Result<(), LeaseError>;
    /// Gives it back (best effort: a lease left behind expires).
    async fn release(&self, me: &Holder);
}

/// A Kubernetes `Lease` in one namespace.
pub struct K8sLease {
    api: Api<Lease>,
    namespace: String,
    ttl: Duration,
}

impl K8sLease {
    /// The lease [`K8S_LEASE_NAME`] in `namespace` through `client`.
    pub fn new(client: kube::Client, namespace: &str, ttl: Duration) -> K8sLease {
        K8sLease {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            ttl,
        }
    }

    fn fail(&self, e: impl std::fmt::Display) -> LeaseError {
        LeaseError::Failed {
            target: self.target(),
            message: e.to_string(),
        }
    }

    fn object(&self, me: &Holder, resource_version: Option<String>) -> Lease {
        let now = MicroTime(now_jiff());
        Lease {
            metadata: ObjectMeta {
                name: Some(K8S_LEASE_NAME.into()),
                namespace: Some(self.namespace.clone()),
                resource_version,
                annotations: Some(
                    [
                        (ANN_OPERATOR.to_owned(), me.operator.clone()),
                        (ANN_HOST.to_owned(), me.host.clone()),
                        (ANN_SINCE.to_owned(), me.since.clone()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.run_id.clone()),
                lease_duration_seconds: Some(i32::try_from(self.ttl.as_secs()).unwrap_or(i32::MAX)),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                ..Default::default()
            }),
        }
    }
}

fn now_jiff() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

fn holder_of(lease: &Lease) -> Option<(Holder, Option<SystemTime>)> {
    let spec = lease.spec.as_ref()?;
    let run_id = spec.holder_identity.clone().filter(|s| !s.is_empty())?;
    let ann = lease.metadata.annotations.clone().unwrap_or_default();
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .and_then(|t| u64::try_from(t.0.as_second()).ok())
        .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
    let expires = renewed.map(|r| {
        r + Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
        )
    });
    Some((
        Holder {
            run_id,
            operator: ann.get(ANN_OPERATOR).cloned().unwrap_or_else(|| "?".into()),
            host: ann.get(ANN_HOST).cloned().unwrap_or_else(|| "?".into()),
            since: ann
                .get(ANN_SINCE)
                .cloned()
                .or_else(|| spec.acquire_time.as_ref().map(|t| t.0.to_string()))
                .unwrap_or_else(|| "?".into()),
        },
        expires,
    ))
}

#[async_trait]
impl TargetLease for K8sLease {
    fn target(&self) -> String {
        format!("Kubernetes namespace {}", self.namespace)
    }

    async fn acquire(&self, me: &Holder, break_lease: bool) -> Result<Taken, LeaseError> {
        // Two attempts: a conflict means another run moved at the same
        // moment; the second look names it.
        for _ in 0..2 {
            let current = match self.api.get_opt(K8S_LEASE_NAME).await {
                Ok(c) => c,
                Err(e) => return Err(self.fail(e)),
            };
            let Some(current) = current else {
                return match self
                    .api
                    .create(&PostParams::default(), &self.object(me, None))
                    .await
                {
                    Ok(_) => Ok(Taken::Free),
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(Taken::Skipped(format!(
                        "namespace {} does not exist yet: nothing to lease there",
                        self.namespace
                    ))),
                    Err(e) => Err(self.fail(e)),
                };
            };
            let taken = match holder_of(&current) {
                None => Taken::Free,
                Some((h, _)) if h.run_id == me.run_id => Taken::Free,
                Some((h, expires)) => {
                    let live = expires.is_none_or(|e| e > SystemTime::now());
                    match (live, break_lease) {
                        (true, false) => {
                            return Err(LeaseError::Held {
                                target: self.target(),
                                until: expires.map(rfc3339).unwrap_or_else(|| "unknown".into()),
                                holder: h,
                            });
                        }
                        (true, true) => Taken::Broken(h),
                        (false, _) => Taken::Expired(h),
                    }
                }
            };
            let rv = current.metadata.resource_version.clone();
            match self
                .api
                .replace(K8S_LEASE_NAME, &PostParams::default(), &self.object(me, rv))
                .await
            {
                Ok(_) => return Ok(taken),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(self.fail(e)),
            }
        }
        Err(self.fail("the lease kept changing under us (409 twice)"))
    }

    async fn renew(&self, me: &Holder) -> Result<(), LeaseError> {
        let Some(mut current) = self
            .api
            .get_opt(K8S_LEASE_NAME)
            .await
            .map_err(|e| self.fail(e))?
        else {
            return Ok(());
        };
        match holder_of(&current) {
            Some((h, _)) if h.run_id == me.run_id => {}
            Some((h, _)) => {
                return Err(self.fail(format!(
                    "the lease was taken by {} (--break-lease?)",
                    h.describe()
                )));
            }
            None => return Ok(()),
        }
        if let Some(spec) = current.spec.as_mut() {
            spec.renew_time = Some(MicroTime(now_jiff()));
        }
        self.api
            .replace(K8S_LEASE_NAME, &PostParams::default(), &current)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    async fn release(&self, me: &Holder) {
        if let Ok(Some(current)) = self.api.get_opt(K8S_LEASE_NAME).await
            && holder_of(&current).is_some_and(|(h, _)| h.run_id == me.run_id)
        {
            let _ = self
                .api
                .delete(K8S_LEASE_NAME, &DeleteParams::default())
                .await;
        }
    }
}

/// A PostgreSQL advisory lock on one database, held by a session of its own.
pub struct PgLease {
    admin: tokio_postgres::Config,
    database: String,
    session: Mutex<Option<tokio_postgres::Client>>,
}

impl PgLease {
    /// The lease on `database`, taken through the maintenance database
    /// `admin` connects to.
    pub fn new(admin: tokio_postgres::Config, database: &str) -> PgLease {
        PgLease {
            admin,
            database: database.to_owned(),
            session: Mutex::new(None),
        }
    }

    fn fail(&self, e: impl std::fmt::Display) -> LeaseError {
        LeaseError::Failed {
            target: self.target(),
            message: e.to_string(),
        }
    }

    async fn connect(&self, me: &Holder) -> Result<tokio_postgres::Client, LeaseError> {
        let mut c = self.admin.clone();
        c.application_name(me.application_name());
        let (client, connection) = c.connect(NoTls).await.map_err(|e| self.fail(e))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// `hashtext('drhost-run:' || db)`, split as `pg_locks` shows an advisory
/// lock on a bigint key (classid = high 32 bits, objid = low 32 bits).
const HOLDER_SQL: &str = "\
    SELECT a.pid, coalesce(a.application_name, ''), a.backend_start::text \
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
      AND l.classid::bigint = ((hashtext('drhost-run:' || $1)::bigint >> 32) & 4294967295) \
      AND l.objid::bigint = (hashtext('drhost-run:' || $1)::bigint & 4294967295) \
      AND a.pid <> pg_backend_pid()";

#[async_trait]
impl TargetLease for PgLease {
    fn target(&self) -> String {
        format!("database {}", self.database)
    }

    async fn acquire(&self, me: &Holder, break_lease: bool) -> Result<Taken, LeaseError> {
        if lock(&self.session).is_some() {
            return Ok(Taken::Free);
        }
        let client = self.connect(me).await?;
        let try_lock = "SELECT pg_try_advisory_lock(hashtext('drhost-run:' || $1)::bigint)";
        let got: bool = client
            .query_one(try_lock, &[&self.database])
            .await
            .map_err(|e| self.fail(e))?
            .get(0);
        let mut taken = Taken::Free;
        if !got {
            let row = client
                .query_opt(HOLDER_SQL, &[&self.database])
                .await
                .map_err(|e| self.fail(e))?;
            let (pid, app, start): (i32, String, String) = match &row {
                Some(r) => (r.get(0), r.get(1), r.get(2)),
                None => (0, String::new(), "?".into()),
            };
            let holder = parse_application_name(&app, &start);
            // An earlier process of this very run (killed, then resumed
            // before the server noticed): its lease is ours to take over.
            let own = holder.run_id == me.run_id;
            if !break_lease && !own {
                return Err(LeaseError::Held {
                    target: self.target(),
                    holder,
                    until: "its session ends".into(),
                });
            }
            if pid != 0 {
                client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(|e| self.fail(e))?;
            }
            // The lock is released as the session ends; wait for it briefly.
            let lock_wait = "SET lock_timeout = '10s'; ";
            client
                .batch_execute(lock_wait)
                .await
                .map_err(|e| self.fail(e))?;
            client
                .execute(
                    "SELECT pg_advisory_lock(hashtext('drhost-run:' || $1)::bigint)",
                    &[&self.database],
                )
                .await
                .map_err(|e| self.fail(e))?;
            taken = if own {
                Taken::Expired(holder)
            } else {
                Taken::Broken(holder)
            };
        }
        *lock(&self.session) = Some(client);
        Ok(taken)
    }

    async fn renew(&self, _me: &Holder) -> Result<(), LeaseError> {
        // The session holds the lock; a lost session is found at release.
        Ok(())
    }

    async fn release(&self, _me: &Holder) {
        let client = lock(&self.session).take();
        if let Some(client) = client {
            let _ = client
                .execute(
                    "SELECT pg_advisory_unlock(hashtext('drhost-run:' || $1)::bigint)",
                    &[&self.database],
                )
                .await;
        }
    }
}

/// The holder named by a session's `application_name` ("drhost RUN
/// OPERATOR@HOST"), or what is known of a foreign session.
fn parse_application_name(app: &str, backend_start: &str) -> Holder {
    let mut words = app.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("drhost"), Some(run), Some(who)) => {
            let (operator, host) = who.split_once('@').unwrap_or((who, "?"));
            Holder {
                run_id: run.to_owned(),
                operator: operator.to_owned(),
                host: host.to_owned(),
                since: backend_start.to_owned(),
            }
        }
        _ => Holder {
            run_id: "?".into(),
            operator: if app.is_empty() {
                "a session without an application_name".into()
            } else {
                format!("a session named {app:?}")
            },
            host: "?".into(),
            since: backend_start.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_round_trips_through_application_name() {
        let me = Holder {
            run_id: "20261201T120000Z-ab12".into(),
            operator: "alice".into(),
            host: "ops-1".into(),
            since: "2026-12-01T12:00:00Z".into(),
        };
        let parsed = parse_application_name(&me.application_name(), "2026-12-01 12:00:00+00");
        assert_eq!(parsed.run_id, me.run_id);
        assert_eq!(parsed.operator, "alice");
        assert_eq!(parsed.host, "ops-1");
        let foreign = parse_application_name("psql", "t");
        assert_eq!(foreign.run_id, "?");
        assert!(foreign.operator.contains("psql"));
        let e = LeaseError::Held {
            target: "database rs".into(),
            holder: me,
            until: "its session ends".into(),
        }
        .to_string();
        assert!(
            e.contains("run 20261201T120000Z-ab12 by alice on ops-1 since 2026-12-01T12:00:00Z"),
            "{e}"
        );
        assert!(e.contains("--break-lease"), "{e}");
    }
}
