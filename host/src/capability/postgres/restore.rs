//! Restoring a PostgreSQL backup without ever touching the only copy: load
//! into a new database over several connections, verify, then swap names.
//!
//! ```text
//! advisory lock "drhost-restore:<db>"      a second restore of <db> is refused
//! CREATE DATABASE <db>_restore_<run> TEMPLATE template0
//! reader thread (source.rs) ── bounded channel ──▶ loader
//!   custom archive:                          plain SQL dump:
//!     pre-data    TOC order, 1 connection      statements in order, 1 connection;
//!     data        N connections (below)        SET/set_config replayed on all N;
//!     sequences   1 connection                 COPY blocks on N connections,
//!     post-data   N connections, dependency    a barrier before the next statement
//!                 order; index builds share a
//!                 table, constraints have it
//!                 alone (post_data.rs)
//!     comments, privileges  1 connection
//! verify      every table with data loaded; the runbook's validation queries
//! swap        terminate sessions on <db>; one transaction:
//!             <db> -> <db>_before_<run>, new -> <db>
//! ```
//!
//! **Data load, ranged** ([`restore_ranged`], an uncompressed custom archive
//! whose TOC records every data block's offset: what `pg_dump -Fc` writes to
//! a file, and so what sits in the bucket). The TOC gives each table's byte
//! extent; the N connections start on the N biggest tables, each reading
//! its own table's extent with its own ranged reads (S3 ranged GETs from the
//! TOC offsets, as `pg_restore` seeks in a file) and running its own `COPY`.
//! A connection whose table is done takes the biggest waiting table, or,
//! when none is left, joins the unfinished table with the most bytes left,
//! sharing its pieces. So different tables load side by side (no two
//! connections contend for one table's extension lock) and the tail is
//! still shared.
//!
//! **Data load, streamed** (gzip-wrapped or plain dumps, archives without
//! offsets: read front to back). Each table's COPY text arrives in pieces of
//! whole rows; every piece goes to whichever of the N load connections is
//! free, each running its own `COPY ... FROM STDIN` on that table. A table
//! is thereby loaded by all N connections at once: unlike `pg_restore -j`,
//! one huge table does not leave the other connections idle. Rows end up in
//! a different physical order than in the source, which SQL never promised.
//!
//! **Durability.** Load sessions run with `synchronous_commit = off`; the
//! swap transaction commits synchronously, which flushes the WAL of all that
//! came before it. Nothing is visible under the original name before that.
//!
//! **Failure.** On any error (SQL, a corrupt backup, the object store, the
//! server gone) the new database is dropped and the original is untouched;
//! if the drop itself fails, the error names the partial database to drop
//! by hand. A cancelled restore (timeout, Ctrl-C: the future is dropped)
//! aborts the load tasks and the reader, and drops the partial database in
//! the background.
//!
//! **Owners.** Objects belong to the restoring role. Plain dumps' `ALTER ...
//! OWNER TO` statements are skipped when `no_owner` is set (the default);
//! custom archives carry owners as TOC metadata, which is not applied.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_postgres::{Client, CopyInSink, NoTls};

use super::archive::{DataOffset, Header};
use super::archive::{Section, TocEntry};
use super::checks::{QueryLimits, Validation};
use super::post_data::HeldLocks;
use super::source::{CHANNEL_DEPTH, CopyTarget, Msg, RangeRead, SourceError};

pub use tokio_postgres::Config;

/// PostgreSQL's limit on identifier length (bytes).
const MAX_IDENT: usize = 63;
/// Load connections when the server's core count is unknown.
const DEFAULT_JOBS: usize = 4;
/// Pieces queued for the load connections.
const PIECES_IN_FLIGHT: usize = 4;

/// What to restore where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Connection settings for a maintenance database (`postgres`): the role
    /// needs CREATEDB and the right to rename and drop the target.
    pub admin: Config,
    /// The database to restore (it may or may not exist).
    pub database: String,
    /// Suffix for the new and the kept database names (the run id).
    pub run_id: String,
    /// Keep the previous database as `<db>_before_<run>` (default true).
    pub keep_previous: bool,
    /// Load connections; 0 picks the server's cores when it runs on this
    /// machine, else 4.
    pub jobs: usize,
    /// Skip `ALTER ... OWNER TO` in plain dumps (objects belong to the
    /// restoring role).
    pub no_owner: bool,
    /// Queries that must pass on the new database before the swap.
    pub validations: Vec<Validation>,
    /// Where progress is reported.
    pub progress: Progress,
}

impl RestoreOptions {
    /// Options with the defaults: keep the previous database, automatic
    /// jobs, no owners, no validations.
    pub fn new(admin: Config, database: impl Into<String>, run_id: impl Into<String>) -> Self {
        RestoreOptions {
            admin,
            database: database.into(),
            run_id: run_id.into(),
            keep_previous: true,
            jobs: 0,
            no_owner: true,
            validations: Vec::new(),
            progress: Progress::default(),
        }
    }
}

/// Live progress of a restore, shared with whoever displays it.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<ProgressState>);

#[derive(Debug, Default)]
struct ProgressState {
    read_bytes: Arc<AtomicU64>,
    total_bytes: AtomicU64,
    loaded_bytes: AtomicU64,
    phase: Mutex<String>,
}

/// A snapshot of [`Progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Bytes of the backup read (compressed, as stored).
    pub read_bytes: u64,
    /// The backup's size, when known (0 otherwise).
    pub total_bytes: u64,
    /// Bytes of COPY data sent to the server.
    pub loaded_bytes: u64,
    /// `schema`, `data public.candidates`, `post-data`, `verify`, `swap`.
    pub phase: String,
}

impl Progress {
    /// Records the backup's total size (for a percentage).
    pub fn set_total(&self, bytes: u64) {
        self.0.total_bytes.store(bytes, Ordering::Relaxed);
    }

    fn set_phase(&self, phase: impl Into<String>) {
        if let Ok(mut p) = self.0.phase.lock() {
            *p = phase.into();
        }
    }

    /// The current figures.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            read_bytes: self.0.read_bytes.load(Ordering::Relaxed),
            total_bytes: self.0.total_bytes.load(Ordering::Relaxed),
            loaded_bytes: self.0.loaded_bytes.load(Ordering::Relaxed),
            phase: self.0.phase.lock().map(|p| p.clone()).unwrap_or_default(),
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreOutcome {
    /// The database that now serves under the original name.
    pub database: String,
    /// Where the previous one was kept, if it existed and was kept.
    pub kept_as: Option<String>,
    /// `custom` or `plain`.
    pub format: &'static str,
    /// The tables were read at their archive offsets, several at once
    /// ([`restore_ranged`] of a raw custom archive with offsets), rather
    /// than front to back.
    pub ranged: bool,
    /// Load connections used.
    pub jobs: usize,
    /// Tables loaded.
    pub tables: u32,
    /// Rows loaded.
    pub rows: u64,
    /// Bytes of the backup read (as stored).
    pub read_bytes: u64,
    /// Bytes of COPY data loaded.
    pub data_bytes: u64,
    /// Time per phase: schema, data, post-data, verify, swap.
    pub phases: Vec<(&'static str, Duration)>,
}

/// Why a restore failed. The original database is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Another restore of the same database holds the lock.
    #[error(
        "another restore of database {0:?} is running (advisory lock held); refusing to start a second one"
    )]
    Busy(String),
    /// A name that cannot be used.
    #[error("database name {0:?} cannot be restored: {1}")]
    BadName(String, String),
    /// The server could not be reached.
    #[error("cannot connect to PostgreSQL ({what}): {source}")]
    Connect {
        /// Which connection.
        what: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// The backup cannot be read.
    #[error("the backup cannot be restored: {0}")]
    Source(#[from] SourceError),
    /// The backup holds something a restore into one database cannot do.
    #[error("the backup cannot be restored: {0}")]
    Unsupported(String),
    /// A statement failed.
    #[error("restore failed in {phase} at {object}: {message}")]
    Sql {
        /// Restore phase.
        phase: &'static str,
        /// The object being restored (`TABLE public.candidates`).
        object: String,
        /// The server's message.
        message: String,
        /// The connection was lost (closed, or the server ended the session
        /// or shut down: SQLSTATE classes 08 and 57P): trying again may work.
        lost_connection: bool,
    },
    /// Verification found a difference.
    #[error("verification of the restored database failed: {0}")]
    Verify(String),
    /// The restore failed and the partial database could not be dropped.
    #[error(
        "{source}; the partial database {partial:?} could not be dropped ({why}): drop it by hand"
    )]
    PartialLeft {
        /// Why the restore failed.
        source: Box<RestoreError>,
        /// The partial database's name.
        partial: String,
        /// Why dropping it failed.
        why: String,
    },
}

impl RestoreError {
    /// Whether the cause is on the server's side of the connection (gone,
    /// unreachable) rather than in the backup or a statement.
    pub fn is_unavailable(&self) -> bool {
        match self {
            RestoreError::Connect { .. } => true,
            RestoreError::Sql {
                lost_connection, ..
            } => *lost_connection,
            RestoreError::PartialLeft { source, .. } => source.is_unavailable(),
            _ => false,
        }
    }
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = format!("{}: {}", db.code().code(), db.message());
            if let Some(d) = db.detail() {
                m.push_str(&format!(" ({d})"));
            }
            m
        }
        None => e.to_string(),
    }
}

fn sql_err(
    phase: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(tokio_postgres::Error) -> RestoreError {
    let object = object.into();
    move |e| {
        let mut message = db_message(&e);
        let missing_extension = e.as_db_error().is_some_and(|db| {
            db.message().contains("extension") && db.message().contains("is not available")
        });
        if missing_extension {
            message.push_str(
                "; the extension is not installed on this server: install its package \
                 (Debian: postgresql-<major>-<extension> or postgresql-contrib) or restore to a server that has it",
            );
        }
        let lost_connection = e.is_closed()
            || e.as_db_error().is_some_and(|db| {
                let code = db.code().code();
                code.starts_with("08") || code.starts_with("57P")
            });
        RestoreError::Sql {
            phase,
            object,
            message,
            lost_connection,
        }
    }
}

/// Quotes an identifier for SQL (`"a""b"`): names are never interpolated
/// raw.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `<base><suffix>`, cutting `base` (on a char boundary) so the whole fits
/// PostgreSQL's 63-byte identifier limit.
fn derived_name(base: &str, suffix: &str) -> String {
    let room = MAX_IDENT.saturating_sub(suffix.len());
    let mut end = base.len().min(room);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &base[..end])
}

/// Session settings every load connection gets (pg_restore's, plus bulk
/// load tuning); a custom archive's ENCODING, STDSTRINGS and SEARCHPATH
/// entries are added, a plain dump's own SETs are replayed after them.
const SESSION: &str = "SET statement_timeout = 0; SET lock_timeout = 0; \
    SET idle_in_transaction_session_timeout = 0; SET check_function_bodies = false; \
    SET xmloption = content; SET client_min_messages = warning; SET row_security = off; \
    SET synchronous_commit = off; SET maintenance_work_mem = '256MB';";

async fn connect(config: &Config, what: &str) -> Result<Client, RestoreError> {
    let (client, connection) =
        config
            .connect(NoTls)
            .await
            .map_err(|source| RestoreError::Connect {
                what: what.to_owned(),
                source,
            })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("postgres connection ended: {e}");
        }
    });
    Ok(client)
}

/// Drops the half-restored database if the restore future is dropped
/// (cancelled) before finishing; errors are handled inline instead.
struct Cleanup {
    admin: Config,
    database: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(db) = self.database.take() else {
            return;
        };
        let admin = self.admin.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            tracing::warn!("restore cancelled: dropping the partial database {db}");
            handle.spawn(async move {
                if let Err(why) = drop_database(&admin, &db).await {
                    tracing::warn!(
                        "could not drop the partial database {db}: {why}; drop it by hand"
                    );
                }
            });
        }
    }
}

async fn drop_database(admin: &Config, db: &str) -> Result<(), String> {
    let client = connect(admin, "cleanup").await.map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(db)
        ))
        .await
        .map_err(|e| db_message(&e))
}

/// Drops the partial database after `err`; if that fails too, the error
/// names it for the operator to drop by hand.
async fn abandon(admin: &Config, partial: String, err: RestoreError) -> RestoreError {
    match drop_database(admin, &partial).await {
        Ok(()) => err,
        Err(why) => RestoreError::PartialLeft {
            source: Box::new(err),
            partial,
            why,
        },
    }
}

/// Load connections to use: `jobs`, or the server's cores when it is local.
fn pick_jobs(jobs: usize, admin: &Config) -> usize {
    if jobs > 0 {
        return jobs;
    }
    let local = admin.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1")
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    });
    if local {
        std::thread::available_parallelism().map_or(DEFAULT_JOBS, usize::from)
    } else {
        DEFAULT_JOBS
    }
}

/// Restores the backup `reader` yields (custom archive or plain SQL, raw or
/// gzip; judged by content) as `options.database`. `reader` is read on a
/// blocking thread.
///
/// # Errors
/// [`RestoreError`]; the original database is untouched whenever this
/// returns an error, and the partial one is dropped (or named in the error).
pub async fn restore<R: Read + Send + 'static>(
    options: &RestoreOptions,
    reader: R,
) -> Result<RestoreOutcome, RestoreError> {
    restore_backup(options, Backup::Stream(Box::new(reader))).await
}

/// Like [`restore`], from a backup readable at any offset (an S3 object): a
/// raw custom archive whose TOC records the data offsets (any `pg_dump -Fc
/// -f FILE`) then loads several tables at once, each read by its own ranged
/// reader. Other backups are read front to back as by [`restore`].
///
/// # Errors
/// As [`restore`].
pub async fn restore_ranged(
    options: &RestoreOptions,
    backup: Arc<dyn RangeRead>,
) -> Result<RestoreOutcome, RestoreError> {
    restore_backup(options, Backup::Ranged(backup)).await
}

/// Where the bytes of a backup come from.
enum Backup {
    /// Front to back only.
    Stream(Box<dyn Read + Send>),
    /// At any offset.
    Ranged(Arc<dyn RangeRead>),
}

async fn restore_backup(
    options: &RestoreOptions,
    backup: Backup,
) -> Result<RestoreOutcome, RestoreError> {
    let target = &options.database;
    if target.is_empty() || target.len() > MAX_IDENT || target.contains('\0') {
        return Err(RestoreError::BadName(
            target.clone(),
            "must be 1 to 63 bytes, without NUL".into(),
        ));
    }
    if matches!(target.as_str(), "postgres" | "template0" | "template1") {
        return Err(RestoreError::BadName(
            target.clone(),
            "is a system database".into(),
        ));
    }
    let new_db = derived_name(target, &format!("_restore_{}", options.run_id));
    let kept = derived_name(target, &format!("_before_{}", options.run_id));
    let progress = &options.progress;

    // The session that holds the restore lock names the run, so that a
    // resumed run can tell its own dead attempt from another run.
    let me = format!("drhost restore {}", options.run_id);
    let mut admin_config = options.admin.clone();
    admin_config.application_name(&me);
    let admin = connect(&admin_config, "maintenance database").await?;
    let locked: bool = admin
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('drhost-restore:' || $1))",
            &[target],
        )
        .await
        .map_err(sql_err("locking", target.clone()))?
        .get(0);
    if !locked {
        take_over_own_lock(&admin, target, &me).await?;
    }
    let exists: bool = admin
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_database WHERE datname = $1)",
            &[target],
        )
        .await
        .map_err(sql_err("checking", target.clone()))?
        .get(0);

    // A leftover from a crashed earlier attempt of this very run.
    for sql in [
        format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&new_db)
        ),
        format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote_ident(&new_db)
        ),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .map_err(sql_err("creating the new database", new_db.clone()))?;
    }
    let mut cleanup = Cleanup {
        admin: options.admin.clone(),
        database: Some(new_db.clone()),
    };

    let mut new_config = options.admin.clone();
    new_config.dbname(&new_db);
    let jobs = pick_jobs(options.jobs, &options.admin);
    let loaded = load_and_verify(options, &new_config, &new_db, jobs, backup).await;
    let mut outcome = match loaded {
        Ok(o) => o,
        Err(e) => {
            cleanup.database = None;
            progress.set_phase("cleanup");
            return Err(abandon(&options.admin, new_db, e).await);
        }
    };

    progress.set_phase("swap");
    let swap_started = Instant::now();
    // An earlier attempt of this very run already swapped (the host died
    // before recording it, and the resumed run executed the restore
    // again): the original is already kept, and the database in place is
    // that attempt's restore, which this one supersedes.
    let already_kept: bool = admin
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&kept],
        )
        .await
        .map_err(sql_err("checking", kept.clone()))?
        .get(0);
    let superseded = derived_name(target, &format!("_superseded_{}", options.run_id));
    let mut swap = String::from("BEGIN;");
    if exists {
        swap.push_str(&format!(
            "ALTER DATABASE {} RENAME TO {};",
            quote_ident(target),
            quote_ident(if already_kept { &superseded } else { &kept })
        ));
    }
    swap.push_str(&format!(
        "ALTER DATABASE {} RENAME TO {}; COMMIT;",
        quote_ident(&new_db),
        quote_ident(target)
    ));
    // Sessions may reconnect between the terminate and the rename: retry a
    // few times on "being accessed by other users".
    let mut attempt = 0;
    loop {
        if exists {
            admin
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[target],
                )
                .await
                .map_err(sql_err("swap", target.clone()))?;
        }
        match admin.batch_execute(&swap).await {
            Ok(()) => break,
            Err(e) => {
                let _ = admin.batch_execute("ROLLBACK").await;
                let in_use = e.as_db_error().is_some_and(|d| d.code().code() == "55006");
                attempt += 1;
                if in_use && attempt < 10 {
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                    continue;
                }
                // Not swapped: the original is untouched; drop the new one.
                let err = sql_err("swap", target.clone())(e);
                cleanup.database = None;
                return Err(abandon(&options.admin, new_db, err).await);
            }
        }
    }
    cleanup.database = None;
    if exists && already_kept {
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(&superseded)
            ))
            .await
            .map_err(sql_err(
                "dropping an earlier attempt's restore",
                superseded.clone(),
            ))?;
    }
    let mut kept_as = (exists || already_kept).then(|| kept.clone());
    if (exists || already_kept) && !options.keep_previous {
        admin
            .batch_execute(&format!(
                "DROP DATABASE {} WITH (FORCE)",
                quote_ident(&kept)
            ))
            .await
            .map_err(sql_err("dropping the previous database", kept.clone()))?;
        kept_as = None;
    }
    outcome.phases.push(("swap", swap_started.elapsed()));
    outcome.kept_as = kept_as;
    progress.set_phase("done");
    Ok(outcome)
}

/// The restore lock of `target` is held. If its holder is an earlier
/// attempt of this very run (its session is named `me`: the host died, or
/// was killed, and the run was resumed before the server noticed), that
/// session is ended and the lock taken; any other holder is another
/// restore, refused as [`RestoreError::Busy`].
async fn take_over_own_lock(
    admin: &tokio_postgres::Client,
    target: &String,
    me: &str,
) -> Result<(), RestoreError> {
    let lock_err = || sql_err("locking", target.clone());
    // The holder may end between our attempt and our look: a few rounds.
    for _ in 0..20 {
        let holder = admin
            .query_opt(
                "SELECT a.pid, coalesce(a.application_name, '') \
                 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                   AND l.classid::bigint = ((hashtext('drhost-restore:' || $1)::bigint >> 32) & 4294967295) \
                   AND l.objid::bigint = (hashtext('drhost-restore:' || $1)::bigint & 4294967295) \
                   AND a.pid <> pg_backend_pid()",
                &[target],
            )
            .await
            .map_err(lock_err())?;
        if let Some(row) = holder {
            let (pid, app): (i32, String) = (row.get(0), row.get(1));
            if app != me {
                tracing::warn!(pid, holder = %app, "the restore lock is held by another session");
                return Err(RestoreError::Busy(target.clone()));
            }
            tracing::warn!(
                pid,
                "ending the session of an earlier attempt of this run that still holds the restore lock"
            );
            admin
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .map_err(lock_err())?;
            // The lock goes with the session; wait for it briefly.
            admin
                .batch_execute("SET lock_timeout = '10s'")
                .await
                .map_err(lock_err())?;
            admin
                .execute(
                    "SELECT pg_advisory_lock(hashtext('drhost-restore:' || $1))",
                    &[target],
                )
                .await
                .map_err(lock_err())?;
            admin
                .batch_execute("RESET lock_timeout")
                .await
                .map_err(lock_err())?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got: bool = admin
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext('drhost-restore:' || $1))",
                &[target],
            )
            .await
            .map_err(lock_err())?
            .get(0);
        if got {
            return Ok(());
        }
    }
    Err(RestoreError::Busy(target.clone()))
}

/// Loads the backup into `new_db` and verifies it.
async fn load_and_verify(
    options: &RestoreOptions,
    new_config: &Config,
    new_db: &str,
    jobs: usize,
    backup: Backup,
) -> Result<RestoreOutcome, RestoreError> {
    let progress = options.progress.clone();
    let (tx, mut rx) = mpsc::channel(CHANNEL_DEPTH);
    let read_bytes = progress.0.read_bytes.clone();
    let ranged = match &backup {
        Backup::Ranged(r) => Some(r.clone()),
        Backup::Stream(_) => None,
    };
    // Dropping `rx` (on error or cancellation) stops the reading thread.
    let _reading = tokio::task::spawn_blocking(move || match backup {
        Backup::Stream(reader) => super::source::produce(reader, read_bytes, tx, false),
        Backup::Ranged(source) => match source.open(0..source.size()) {
            Ok(reader) => super::source::produce(reader, read_bytes, tx, true),
            Err(e) => {
                let _ = tx.blocking_send(Msg::Failed(SourceError::Io {
                    offset: 0,
                    source: e,
                }));
            }
        },
    });

    progress.set_phase("connecting");
    let mut clients = Vec::with_capacity(jobs);
    let lead = connect(new_config, "new database").await?;
    for i in 0..jobs {
        clients.push(connect(new_config, &format!("load connection {}", i + 1)).await?);
    }
    let mut loader = Loader {
        lead,
        workers: clients,
        progress: progress.clone(),
        phases: Vec::new(),
        tables: 0,
        rows: 0,
        no_owner: options.no_owner,
        data_sizes: HashMap::new(),
    };
    let mut read_ranged = false;
    let format = match rx.recv().await {
        Some(Msg::Custom(toc)) => {
            loader.custom(toc.into(), Feeding::Stream(&mut rx)).await?;
            "custom"
        }
        Some(Msg::CustomRanged(header, toc)) => {
            drop(rx); // the front-to-back reader is done
            let Some(source) = ranged else {
                return Err(RestoreError::Verify(
                    "the backup reader asked for random access to a stream".into(),
                ));
            };
            loader
                .custom(toc, Feeding::Ranged { source, header })
                .await?;
            read_ranged = true;
            "custom"
        }
        Some(Msg::Plain) => {
            loader.plain(&mut rx).await?;
            "plain"
        }
        Some(Msg::Failed(e)) => return Err(e.into()),
        Some(_) | None => {
            return Err(RestoreError::Verify(
                "the backup reader stopped before recognising the format".into(),
            ));
        }
    };

    let verify_started = Instant::now();
    progress.set_phase("verify");
    if !options.validations.is_empty() {
        let report = super::checks::integrity_check(
            &options.admin,
            new_db,
            &options.validations,
            QueryLimits::default(),
        )
        .await
        .map_err(|e| RestoreError::Verify(format!("{}: {}", e.kind(), e.message())))?;
        let failed: Vec<String> = report
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        if !failed.is_empty() {
            return Err(RestoreError::Verify(failed.join("; ")));
        }
    }
    loader.phases.push(("verify", verify_started.elapsed()));
    let snap = progress.snapshot();
    Ok(RestoreOutcome {
        database: options.database.clone(),
        kept_as: None,
        format,
        ranged: read_ranged,
        jobs,
        tables: loader.tables,
        rows: loader.rows,
        read_bytes: snap.read_bytes,
        data_bytes: snap.loaded_bytes,
        phases: loader.phases,
    })
}

/// The connections of one restore and what they did.
struct Loader {
    /// Schema statements, sequences, comments, privileges.
    lead: Client,
    /// Data and post-data (N connections).
    workers: Vec<Client>,
    progress: Progress,
    phases: Vec<(&'static str, Duration)>,
    tables: u32,
    rows: u64,
    no_owner: bool,
    /// COPY bytes per TABLE DATA entry: post-data runs the work on the
    /// biggest tables first (longest job first keeps the tail short).
    data_sizes: HashMap<i32, u64>,
}

fn toc_object(e: &TocEntry) -> String {
    match &e.namespace {
        Some(ns) => format!("{} {ns}.{}", e.desc, e.tag),
        None => format!("{} {}", e.desc, e.tag),
    }
}

impl Loader {
    async fn on_all(&self, sql: &str, phase: &'static str) -> Result<(), RestoreError> {
        self.lead
            .batch_execute(sql)
            .await
            .map_err(sql_err(phase, "session settings"))?;
        for w in &self.workers {
            w.batch_execute(sql)
                .await
                .map_err(sql_err(phase, "session settings"))?;
        }
        Ok(())
    }

    /// A custom archive: TOC-driven phases.
    async fn custom(
        &mut self,
        toc: Arc<[TocEntry]>,
        feeding: Feeding<'_>,
    ) -> Result<(), RestoreError> {
        let started = Instant::now();
        let mut session = String::from(SESSION);
        for e in toc
            .iter()
            .filter(|e| matches!(e.desc.as_str(), "ENCODING" | "STDSTRINGS" | "SEARCHPATH"))
        {
            session.push_str(&e.defn);
        }
        self.on_all(&session, "session setup").await?;
        let skip = |e: &TocEntry| {
            matches!(
                e.desc.as_str(),
                "ENCODING" | "STDSTRINGS" | "SEARCHPATH" | "DATABASE" | "DATABASE PROPERTIES"
            ) || e.defn.trim().is_empty()
        };
        let is_acl = |e: &TocEntry| matches!(e.desc.as_str(), "ACL" | "DEFAULT ACL");
        if let Some(e) = toc.iter().find(|e| e.desc == "BLOBS" || e.desc == "BLOB") {
            return Err(RestoreError::Unsupported(format!(
                "it contains large objects ({}), which drhost does not restore yet; use pg_restore for this backup",
                toc_object(e)
            )));
        }

        self.progress.set_phase("schema");
        for e in toc
            .iter()
            .filter(|e| e.section == Section::PreData && !skip(e) && !is_acl(e))
        {
            self.lead
                .batch_execute(&e.defn)
                .await
                .map_err(sql_err("pre-data", toc_object(e)))?;
        }
        self.phases.push(("schema", started.elapsed()));

        let data_started = Instant::now();
        let expected: HashSet<String> = toc
            .iter()
            .filter(|e| e.copy_stmt.is_some() && e.had_dumper)
            .map(toc_object)
            .collect();
        let loaded = match feeding {
            Feeding::Stream(rx) => self.data(rx).await?,
            Feeding::Ranged { source, header } => {
                self.data_ranged(source, header, toc.clone()).await?
            }
        };
        if let Some(missing) = expected.iter().find(|o| !loaded.contains(*o)) {
            return Err(RestoreError::Verify(format!(
                "the data of {missing} was never loaded"
            )));
        }
        self.progress.set_phase("sequences");
        for e in toc
            .iter()
            .filter(|e| e.section == Section::Data && e.copy_stmt.is_none() && !skip(e))
        {
            // SEQUENCE SET and the like: small statements of the data section.
            self.lead
                .batch_execute(&e.defn)
                .await
                .map_err(sql_err("data", toc_object(e)))?;
        }
        self.phases.push(("data", data_started.elapsed()));

        let post_started = Instant::now();
        self.progress.set_phase("post-data");
        let post: Vec<&TocEntry> = toc
            .iter()
            .filter(|e| e.section == Section::PostData && !skip(e) && !is_acl(e))
            .collect();
        self.post_data(&toc, &post).await?;
        for e in toc
            .iter()
            .filter(|e| e.section == Section::None && !skip(e) && !is_acl(e))
        {
            self.lead
                .batch_execute(&e.defn)
                .await
                .map_err(sql_err("comments", toc_object(e)))?;
        }
        for e in toc.iter().filter(|e| is_acl(e) && !skip(e)) {
            self.lead
                .batch_execute(&e.defn)
                .await
                .map_err(sql_err("privileges", toc_object(e)))?;
        }
        self.phases.push(("post-data", post_started.elapsed()));
        Ok(())
    }

    /// A custom archive read at its data offsets: up to N tables at once,
    /// each read by its own ranged reader and loaded by one connection (no
    /// two connections extending the same table, biggest tables first);
    /// when no table is left to start, a free connection joins the table
    /// with the most left to read. Returns the objects loaded.
    async fn data_ranged(
        &mut self,
        source: Arc<dyn RangeRead>,
        header: Header,
        toc: Arc<[TocEntry]>,
    ) -> Result<HashSet<String>, RestoreError> {
        let mut starts: Vec<u64> = toc
            .iter()
            .filter_map(|e| match e.data_offset {
                DataOffset::At(at) => Some(at),
                _ => None,
            })
            .collect();
        starts.sort_unstable();
        starts.dedup();
        let size = source.size();
        // Bytes read so far: the header and the TOC, which end where the
        // data begins (the front-to-back reader buffered a little more).
        self.progress
            .0
            .read_bytes
            .store(starts.first().copied().unwrap_or(size), Ordering::Relaxed);
        for e in &*toc {
            if let DataOffset::At(at) = e.data_offset
                && at >= size
            {
                return Err(RestoreError::Source(SourceError::Archive(
                    super::archive::ArchiveError::Corrupt {
                        offset: size,
                        problem: format!(
                            "the TOC says the data of {} starts at byte {at}, but the backup ends at byte {size}: truncated?",
                            toc_object(e)
                        ),
                    },
                )));
            }
        }
        let mut tables: Vec<TableRead> = toc
            .iter()
            .filter(|e| e.had_dumper)
            .filter_map(|e| {
                let DataOffset::At(at) = e.data_offset else {
                    return None;
                };
                let stmt = e.copy_stmt.as_ref()?;
                let end = starts
                    .iter()
                    .copied()
                    .find(|&s| s > at)
                    .unwrap_or(size)
                    .max(at);
                Some(TableRead {
                    range: at..end,
                    target: Arc::new(CopyTarget {
                        stmt: stmt.trim_end().to_owned(),
                        object: toc_object(e),
                        dump_id: Some(e.dump_id),
                    }),
                })
            })
            .collect();
        // Smallest first: `pop` takes the biggest.
        tables.sort_by_key(|t| {
            (
                t.range.end - t.range.start,
                std::cmp::Reverse(t.range.start),
            )
        });
        let objects: HashSet<String> = tables.iter().map(|t| t.target.object.clone()).collect();
        let shared = Arc::new(RangedLoad {
            source,
            archive: (header, toc),
            progress: self.progress.clone(),
            schedule: Mutex::new(Schedule {
                waiting: tables,
                reading: Vec::new(),
            }),
        });
        let mut tasks: JoinSet<Result<(Client, u64), RestoreError>> = JoinSet::new();
        for client in std::mem::take(&mut self.workers) {
            tasks.spawn(ranged_worker(client, shared.clone()));
        }
        while let Some(ended) = tasks.join_next().await {
            let (client, rows) = match ended {
                Ok(Ok(done)) => done,
                // Dropping `tasks` aborts the other connections' loads;
                // their readers stop when their feeds are dropped.
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(RestoreError::Verify(format!("a load task failed: {e}"))),
            };
            self.workers.push(client);
            self.rows += rows;
        }
        let finished = std::mem::take(
            &mut shared
                .schedule
                .lock()
                .map_err(|_| RestoreError::Verify("a load task panicked".into()))?
                .reading,
        );
        for feed in finished {
            if let Some(id) = feed.target.dump_id {
                *self.data_sizes.entry(id).or_default() += feed.loaded.load(Ordering::Relaxed);
            }
        }
        self.tables += objects.len() as u32;
        Ok(objects)
    }

    /// Streams every table's rows to the load connections until the reader
    /// is done (custom) or a non-COPY message arrives (plain; returned).
    /// Returns the objects loaded.
    async fn data(
        &mut self,
        rx: &mut mpsc::Receiver<Msg>,
    ) -> Result<HashSet<String>, RestoreError> {
        let (objects, _) = self.data_until_statement(rx, None).await?;
        Ok(objects)
    }

    async fn data_until_statement(
        &mut self,
        rx: &mut mpsc::Receiver<Msg>,
        first: Option<Arc<CopyTarget>>,
    ) -> Result<(HashSet<String>, Option<Msg>), RestoreError> {
        let mut pool = DataPool::start(std::mem::take(&mut self.workers), self.progress.clone());
        let mut objects = HashSet::new();
        let mut current = first;
        if let Some(t) = &current {
            objects.insert(t.object.clone());
            self.progress.set_phase(format!("data {}", t.object));
        }
        let mut rest = None;
        let mut in_copy = current.is_some();
        let result: Result<(), RestoreError> = async {
            while let Some(msg) = rx.recv().await {
                match msg {
                    Msg::CopyStart(t) if !in_copy => {
                        objects.insert(t.object.clone());
                        self.progress.set_phase(format!("data {}", t.object));
                        current = Some(t);
                        in_copy = true;
                    }
                    Msg::Data(data) if in_copy => {
                        if let Some(t) = &current {
                            if let Some(id) = t.dump_id {
                                *self.data_sizes.entry(id).or_default() += data.len() as u64;
                            }
                            pool.send(Piece {
                                target: t.clone(),
                                data,
                            })
                            .await?;
                        }
                    }
                    Msg::CopyEnd if in_copy => in_copy = false,
                    Msg::Failed(e) => return Err(e.into()),
                    other @ (Msg::Statement(_) | Msg::Meta(_)) if !in_copy => {
                        rest = Some(other);
                        return Ok(());
                    }
                    other => {
                        return Err(RestoreError::Verify(format!(
                            "the backup reader sent {other:?} out of order"
                        )));
                    }
                }
            }
            if in_copy {
                return Err(RestoreError::Verify(
                    "the backup ended inside a table's data".into(),
                ));
            }
            Ok(())
        }
        .await;
        // Always collect the connections back (and the first load error).
        let finished = pool.finish().await;
        result?;
        let (workers, rows) = finished?;
        self.workers = workers;
        self.rows += rows;
        self.tables += objects.len() as u32;
        Ok((objects, rest))
    }

    /// Post-data entries over the load connections: an entry starts once
    /// the entries it depends on are done, and never while another entry on
    /// one of the same tables runs (as pg_restore does: no lock waits, no
    /// deadlocks between constraint builds).
    async fn post_data(
        &mut self,
        toc: &[TocEntry],
        post: &[&TocEntry],
    ) -> Result<(), RestoreError> {
        let jobs = super::post_data::plan(toc, post, &self.data_sizes, toc_object);
        let mut state = vec![JobState::Waiting; jobs.len()];
        let mut free = std::mem::take(&mut self.workers);
        let mut running: JoinSet<(usize, Client, Result<(), tokio_postgres::Error>)> =
            JoinSet::new();
        let mut held = HeldLocks::default();
        let mut done = 0;
        while done < jobs.len() {
            while !free.is_empty() {
                let ready = (0..jobs.len())
                    .filter(|&j| {
                        state[j] == JobState::Waiting
                            && jobs[j].deps.iter().all(|&d| state[d] == JobState::Done)
                            && held.admits(&jobs[j])
                    })
                    .max_by_key(|&j| (jobs[j].weight, std::cmp::Reverse(j)));
                let Some(j) = ready else { break };
                let Some(client) = free.pop() else { break };
                state[j] = JobState::Running;
                held.take(&jobs[j]);
                let sql = jobs[j].sql.clone();
                running.spawn(async move {
                    let r = client.batch_execute(&sql).await;
                    (j, client, r)
                });
            }
            let Some(joined) = running.join_next().await else {
                let stuck = (0..jobs.len())
                    .find(|&j| state[j] == JobState::Waiting)
                    .map(|j| jobs[j].object.clone())
                    .unwrap_or_default();
                return Err(RestoreError::Verify(format!(
                    "post-data entries depend on each other in a cycle (at {stuck})"
                )));
            };
            let (j, client, result) = joined
                .map_err(|e| RestoreError::Verify(format!("a post-data task failed: {e}")))?;
            result.map_err(sql_err("post-data", jobs[j].object.clone()))?;
            state[j] = JobState::Done;
            held.release(&jobs[j]);
            free.push(client);
            done += 1;
        }
        self.workers = free;
        Ok(())
    }

    /// A plain SQL dump: statements in order on the lead connection, session
    /// settings replayed on every connection, COPY blocks on all of them.
    async fn plain(&mut self, rx: &mut mpsc::Receiver<Msg>) -> Result<(), RestoreError> {
        self.on_all(SESSION, "session setup").await?;
        self.progress.set_phase("schema");
        let mut schema_time = Duration::ZERO;
        let mut data_time = Duration::ZERO;
        let mut next = rx.recv().await;
        let mut statements = 0u64;
        let mut mark = Instant::now();
        while let Some(msg) = next.take() {
            match msg {
                Msg::Statement(sql) => {
                    statements += 1;
                    if self.no_owner && is_owner_change(&sql) {
                        tracing::debug!("skipped (no-owner): {}", excerpt(&sql));
                    } else if super::plain::is_session_setting(&sql) {
                        self.on_all(&sql, "session setting").await?;
                    } else {
                        self.lead.batch_execute(&sql).await.map_err(sql_err(
                            "statement",
                            format!("statement {statements} ({})", excerpt(&sql)),
                        ))?;
                    }
                }
                Msg::Meta(meta) => {
                    let word = meta.split_whitespace().next().unwrap_or("");
                    match word {
                        "\\restrict" | "\\unrestrict" => {}
                        "\\connect" | "\\c" => {
                            return Err(RestoreError::Unsupported(format!(
                                "it switches databases (`{}`): it was taken with `pg_dump -C` or pg_dumpall; \
                                 restore a single-database dump (pg_dump without -C)",
                                excerpt(&meta)
                            )));
                        }
                        _ => {
                            return Err(RestoreError::Unsupported(format!(
                                "it contains the psql meta-command `{}`, which only psql can run",
                                excerpt(&meta)
                            )));
                        }
                    }
                }
                Msg::CopyStart(t) => {
                    schema_time += mark.elapsed();
                    mark = Instant::now();
                    let (_, rest) = self.data_until_statement(rx, Some(t)).await?;
                    data_time += mark.elapsed();
                    mark = Instant::now();
                    self.progress.set_phase("schema");
                    next = rest;
                    continue;
                }
                Msg::Failed(e) => return Err(e.into()),
                other => {
                    return Err(RestoreError::Verify(format!(
                        "the backup reader sent {other:?} out of order"
                    )));
                }
            }
            next = rx.recv().await;
        }
        schema_time += mark.elapsed();
        self.phases.push(("schema", schema_time));
        self.phases.push(("data", data_time));
        Ok(())
    }
}

/// `ALTER ... OWNER TO ...` (pg_dump writes one per object unless
/// `--no-owner`).
fn is_owner_change(sql: &str) -> bool {
    let s = sql.trim_start();
    s.len() > 6
        && s[..6].eq_ignore_ascii_case("alter ")
        && s.to_ascii_uppercase().contains(" OWNER TO ")
}

fn excerpt(s: &str) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Waiting,
    Running,
    Done,
}

/// How the loader gets a custom archive's table data.
enum Feeding<'a> {
    /// In archive order from the front-to-back reader.
    Stream(&'a mut mpsc::Receiver<Msg>),
    /// Each table from its own ranged reader.
    Ranged {
        source: Arc<dyn RangeRead>,
        header: Header,
    },
}

/// One table's data block: where it is in the archive.
struct TableRead {
    range: std::ops::Range<u64>,
    target: Arc<CopyTarget>,
}

/// Pieces of one table's rows from its reader thread, taken by the
/// connection(s) loading that table.
struct Feed {
    target: Arc<CopyTarget>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Msg>>,
    /// Archive bytes of the table's data block, and how many were read.
    extent: u64,
    read: Arc<AtomicU64>,
    /// COPY bytes loaded.
    loaded: AtomicU64,
    /// A connection saw its end.
    ended: std::sync::atomic::AtomicBool,
}

impl Feed {
    fn left(&self) -> u64 {
        self.extent
            .saturating_sub(self.read.load(Ordering::Relaxed))
    }
}

/// Tables not started yet (biggest last) and the feeds started.
struct Schedule {
    waiting: Vec<TableRead>,
    reading: Vec<Arc<Feed>>,
}

/// What the connections of a ranged data load share.
struct RangedLoad {
    source: Arc<dyn RangeRead>,
    archive: (Header, Arc<[TocEntry]>),
    progress: Progress,
    schedule: Mutex<Schedule>,
}

/// Feed depth per table: the memory bound splits over the tables read at
/// once.
const FEED_DEPTH: usize = 8;

impl RangedLoad {
    /// The next table for a free connection: the biggest not started (its
    /// reader starts now), else the started one with the most left to read;
    /// `None` when every table is fully read.
    fn next_feed(&self) -> Result<Option<Arc<Feed>>, RestoreError> {
        let mut schedule = self
            .schedule
            .lock()
            .map_err(|_| RestoreError::Verify("a load task panicked".into()))?;
        if let Some(table) = schedule.waiting.pop() {
            let (tx, rx) = mpsc::channel(FEED_DEPTH);
            let feed = Arc::new(Feed {
                target: table.target.clone(),
                rx: tokio::sync::Mutex::new(rx),
                extent: table.range.end - table.range.start,
                read: Arc::new(AtomicU64::new(0)),
                loaded: AtomicU64::new(0),
                ended: std::sync::atomic::AtomicBool::new(false),
            });
            let source = self.source.clone();
            let archive = (self.archive.0.clone(), self.archive.1.clone());
            let counters = [self.progress.0.read_bytes.clone(), feed.read.clone()];
            let dump_id = table.target.dump_id.unwrap_or_default();
            let object = table.target.object.clone();
            tokio::task::spawn_blocking(move || {
                super::source::produce_table(
                    source.as_ref(),
                    archive,
                    dump_id,
                    table.range,
                    &object,
                    counters,
                    tx,
                );
            });
            self.progress
                .set_phase(format!("data {}", feed.target.object));
            schedule.reading.push(feed.clone());
            return Ok(Some(feed));
        }
        Ok(schedule
            .reading
            .iter()
            .filter(|f| !f.ended.load(Ordering::Relaxed))
            .max_by_key(|f| f.left())
            .cloned())
    }
}

/// One load connection of a ranged data load: takes tables until none is
/// left, each with its own `COPY ... FROM STDIN`.
async fn ranged_worker(
    client: Client,
    load: Arc<RangedLoad>,
) -> Result<(Client, u64), RestoreError> {
    let mut rows = 0u64;
    while let Some(feed) = load.next_feed()? {
        let object = feed.target.object.clone();
        let mut sink = Box::pin(
            client
                .copy_in::<_, Bytes>(feed.target.stmt.as_str())
                .await
                .map_err(sql_err("data", object.clone()))?,
        );
        loop {
            let msg = feed.rx.lock().await.recv().await;
            match msg {
                Some(Msg::Data(data)) => {
                    let len = data.len() as u64;
                    sink.send(data)
                        .await
                        .map_err(sql_err("data", object.clone()))?;
                    feed.loaded.fetch_add(len, Ordering::Relaxed);
                    load.progress
                        .0
                        .loaded_bytes
                        .fetch_add(len, Ordering::Relaxed);
                }
                Some(Msg::Failed(e)) => return Err(e.into()),
                Some(other) => {
                    return Err(RestoreError::Verify(format!(
                        "the reader of {object} sent {other:?}"
                    )));
                }
                None => break,
            }
        }
        feed.ended.store(true, Ordering::Relaxed);
        rows += sink
            .as_mut()
            .finish()
            .await
            .map_err(sql_err("data", object))?;
    }
    Ok((client, rows))
}

/// Whole rows of one table for one load connection.
struct Piece {
    target: Arc<CopyTarget>,
    data: Bytes,
}

type LoadResult = Result<(Client, u64), RestoreError>;

/// N load connections taking pieces from one queue; each keeps a
/// `COPY ... FROM STDIN` open on the table of its last piece.
struct DataPool {
    tx: mpsc::Sender<Piece>,
    tasks: JoinSet<LoadResult>,
}

impl DataPool {
    fn start(workers: Vec<Client>, progress: Progress) -> DataPool {
        let (tx, rx) = mpsc::channel(PIECES_IN_FLIGHT);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut tasks = JoinSet::new();
        for client in workers {
            tasks.spawn(load_worker(client, rx.clone(), progress.clone()));
        }
        DataPool { tx, tasks }
    }

    async fn send(&mut self, piece: Piece) -> Result<(), RestoreError> {
        tokio::select! {
            biased;
            Some(ended) = self.tasks.join_next() => Err(match ended {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => RestoreError::Verify("a load connection stopped early".into()),
                Err(e) => RestoreError::Verify(format!("a load task failed: {e}")),
            }),
            sent = self.tx.send(piece) => sent.map_err(|_| {
                RestoreError::Verify("every load connection stopped".into())
            }),
        }
    }

    /// Closes the queue, waits for every connection to finish its COPY, and
    /// returns the connections and the rows loaded.
    async fn finish(self) -> Result<(Vec<Client>, u64), RestoreError> {
        let DataPool { tx, mut tasks } = self;
        drop(tx);
        let mut clients = Vec::new();
        let mut rows = 0;
        let mut first_error = None;
        while let Some(ended) = tasks.join_next().await {
            match ended {
                Ok(Ok((client, n))) => {
                    clients.push(client);
                    rows += n;
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error
                        .get_or_insert(RestoreError::Verify(format!("a load task failed: {e}")));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok((clients, rows)),
        }
    }
}

async fn load_worker(
    client: Client,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Piece>>>,
    progress: Progress,
) -> LoadResult {
    type Sink = Pin<Box<CopyInSink<Bytes>>>;
    let mut current: Option<(Arc<CopyTarget>, Sink)> = None;
    let mut rows = 0u64;
    loop {
        let next = queue.lock().await.recv().await;
        let Some(piece) = next else { break };
        let same = current
            .as_ref()
            .is_some_and(|(t, _)| Arc::ptr_eq(t, &piece.target));
        if !same {
            if let Some((t, mut sink)) = current.take() {
                rows += sink
                    .as_mut()
                    .finish()
                    .await
                    .map_err(sql_err("data", t.object.clone()))?;
            }
            let sink = client
                .copy_in::<_, Bytes>(piece.target.stmt.as_str())
                .await
                .map_err(sql_err("data", piece.target.object.clone()))?;
            current = Some((piece.target.clone(), Box::pin(sink)));
        }
        if let Some((t, sink)) = current.as_mut() {
            let len = piece.data.len() as u64;
            sink.send(piece.data)
                .await
                .map_err(sql_err("data", t.object.clone()))?;
            progress.0.loaded_bytes.fetch_add(len, Ordering::Relaxed);
        }
    }
    if let Some((t, mut sink)) = current.take() {
        rows += sink
            .as_mut()
            .finish()
            .await
            .map_err(sql_err("data", t.object.clone()))?;
    }
    Ok((client, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_and_fit_the_identifier_limit() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            quote_ident("Robert'); DROP TABLE x;--"),
            "\"Robert'); DROP TABLE x;--\""
        );
        let long = "é".repeat(40);
        let name = derived_name(&long, "_restore_20261127T000000Z-abcd");
        assert!(name.len() <= MAX_IDENT, "{}", name.len());
        assert!(name.ends_with("_restore_20261127T000000Z-abcd"));
    }
}
