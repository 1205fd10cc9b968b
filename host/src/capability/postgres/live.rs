//! The real PostgreSQL backend: restores stream from the object store
//! straight into [`super::restore::restore`]; checks, queries and
//! terminations go to the server configured in `[backends.postgres]`.

use std::io::{self, Read};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::PostgresBackend;
use super::checks::{self, QueryLimits};
use super::restore::{Progress, RestoreError, RestoreOptions, restore_ranged};
use super::source::RangeRead;
use crate::backends::PostgresSettings;
use crate::bindings::CapError;
use crate::bindings::postgres::{IntegrityReport, PhaseTiming, RestoreReport};
use crate::capability::object_store::live::{LiveObjectStore, cap_error};
use crate::capability::object_store::s3::{ObjectMeta, S3Store};

/// PostgreSQL as the `postgres` capability.
pub struct LivePostgres {
    settings: PostgresSettings,
    store: Option<Arc<LiveObjectStore>>,
    run_id: String,
    progress: Progress,
}

impl LivePostgres {
    /// A backend for one run (`run_id` names the new and the kept
    /// databases). `store` is where backups are read from; without one,
    /// restores are `unavailable`.
    pub fn new(
        settings: PostgresSettings,
        store: Option<Arc<LiveObjectStore>>,
        run_id: &str,
        progress: Progress,
    ) -> Self {
        LivePostgres {
            settings,
            store,
            run_id: run_id.to_owned(),
            progress,
        }
    }
}

/// A backup in S3, readable at any offset through ranged GETs. The whole
/// object streams with the store's full `max_in_flight`; a part of it (one
/// table of a custom archive, several read at once) with half of it.
pub struct S3Backup {
    store: S3Store,
    meta: ObjectMeta,
    handle: tokio::runtime::Handle,
}

impl S3Backup {
    /// The object `meta` (from [`S3Store::head`]: its size and ETag) of
    /// `store`.
    ///
    /// # Panics
    /// Outside a Tokio runtime (its reads run on the current one).
    pub fn new(store: S3Store, meta: ObjectMeta) -> Self {
        S3Backup {
            store,
            meta,
            handle: tokio::runtime::Handle::current(),
        }
    }
}

impl RangeRead for S3Backup {
    fn size(&self) -> u64 {
        self.meta.size
    }

    fn open(&self, range: Range<u64>) -> io::Result<Box<dyn Read + Send>> {
        // One table's extent of several read at once (one per load
        // connection): half the in-flight ranges of half the size, so two
        // such streams hold no more than one whole-object stream
        // ((2 + 1) * 4 MiB each against (4 + 1) * 8 MiB with the defaults).
        let whole = range.start == 0 && range.end >= self.meta.size;
        let (in_flight, range_size) = if whole {
            (self.store.max_in_flight(), self.store.range_size())
        } else {
            (
                (self.store.max_in_flight() / 2).max(1),
                self.store.range_size() / 2,
            )
        };
        let _runtime = self.handle.enter();
        let stream = self
            .store
            .open_range(&self.meta, range, in_flight, range_size);
        Ok(Box::new(stream.into_blocking_reader(self.handle.clone())))
    }
}

/// A restore failure as the WIT `cap-error`.
pub fn restore_error(e: RestoreError) -> CapError {
    let m = e.to_string();
    match e {
        RestoreError::Busy(_) => CapError::Conflict(m),
        RestoreError::BadName(..) => CapError::Invalid(m),
        _ if e.is_unavailable() => CapError::Unavailable(m),
        RestoreError::Source(_) | RestoreError::Unsupported(_) => CapError::Invalid(m),
        _ => CapError::Failed(m),
    }
}

#[async_trait]
impl PostgresBackend for LivePostgres {
    async fn restore(
        &self,
        database: &str,
        bucket: &str,
        key: &str,
    ) -> Result<RestoreReport, CapError> {
        let Some(store) = &self.store else {
            return Err(CapError::Unavailable(
                "postgres.restore reads the backup from the object store, which this runbook does not configure ([backends.object_store])".into(),
            ));
        };
        let started = Instant::now();
        let meta = store.store().head(bucket, key).await.map_err(cap_error)?;
        self.progress.set_total(meta.size);
        let backup = Arc::new(S3Backup::new(store.store().clone(), meta));
        let mut options =
            RestoreOptions::new(self.settings.admin.clone(), database, self.run_id.clone());
        options.jobs = self.settings.jobs;
        options.keep_previous = self.settings.keep_previous;
        options.no_owner = self.settings.no_owner;
        options.validations = self.settings.validations_for(database);
        options.progress = self.progress.clone();
        let outcome = restore_ranged(&options, backup)
            .await
            .map_err(restore_error)?;
        tracing::info!(
            "restored {database} from {bucket}/{key}: {} format, {} tables, {} rows, {} bytes read, {} jobs, phases {:?}",
            outcome.format,
            outcome.tables,
            outcome.rows,
            outcome.read_bytes,
            outcome.jobs,
            outcome.phases
        );
        Ok(RestoreReport {
            database: outcome.database,
            source: format!("{bucket}/{key}"),
            bytes: outcome.read_bytes,
            tables: outcome.tables,
            kept_as: outcome.kept_as,
            duration_ms: started.elapsed().as_millis() as u64,
            phases: outcome
                .phases
                .iter()
                .map(|(name, d)| PhaseTiming {
                    name: (*name).to_owned(),
                    duration_ms: d.as_millis() as u64,
                })
                .collect(),
        })
    }

    async fn integrity_check(&self, database: &str) -> Result<IntegrityReport, CapError> {
        checks::integrity_check(
            &self.settings.admin,
            database,
            &self.settings.validations_for(database),
            QueryLimits::default(),
        )
        .await
    }

    async fn query(&self, database: &str, sql: &str) -> Result<Vec<Vec<String>>, CapError> {
        checks::query_read_only(&self.settings.admin, database, sql, QueryLimits::default()).await
    }

    async fn terminate_connections(&self, database: &str) -> Result<u32, CapError> {
        checks::terminate_connections(&self.settings.admin, database).await
    }
}
