//! Restoring a `pg_dump -Fc` archive into PostgreSQL without ever touching
//! the only copy: load into a new database, verify, then swap names.
//!
//! ```text
//! advisory lock "drhost-restore:<db>" (a second restore of <db> is refused)
//! CREATE DATABASE <db>_restore_<run> TEMPLATE template0
//!   pre-data  (types, tables, functions, ...; TOC order)
//!   data      (each table's COPY text streamed from the archive)
//!   post-data (indexes, constraints, triggers; TOC order), then comments, then ACLs
//! verify      (every table with data in the archive got its rows)
//! swap        (one transaction: <db> -> <db>_before_<run>, new -> <db>,
//!              after terminating the sessions on <db>)
//! ```
//!
//! The archive is read on a blocking thread ([`super::archive`]) and handed
//! over through a small bounded channel, so memory stays bounded whatever
//! the backup's size. Load sessions run with `synchronous_commit = off`;
//! the swap transaction commits synchronously, which flushes the WAL of
//! everything before it: that is the durability point.
//!
//! On any failure (SQL error, corrupt archive, cancellation) the new
//! database is dropped and the original is untouched; if the server is gone
//! the partial database keeps its `_restore_<run>` name for cleanup.
//!
//! Groundwork for the PostgreSQL issue: sequential (one connection), custom
//! format only, owners not restored (objects belong to the restoring role:
//! the `no-owner` behaviour), large objects refused by the archive reader.
//! Parallel loading, plain dumps, S3 streaming and progress reporting are
//! not wired in yet.

use std::io::Read;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_postgres::{Client, NoTls};

use super::archive::{ArchiveError, CustomArchive, Section, TocEntry};

pub use tokio_postgres::Config;

/// Bytes of COPY data per message between the reading thread and the loader.
const CHUNK: usize = 256 * 1024;
/// Messages in flight between the reading thread and the loader.
const CHANNEL_DEPTH: usize = 8;
/// Bytes held back at the end of each block so pg_dump's `\.` end marker can
/// be removed before the data reaches the server.
const HOLD_BACK: usize = 16;
/// PostgreSQL's limit on identifier length (bytes).
const MAX_IDENT: usize = 63;

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
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreOutcome {
    /// The database that now serves under the original name.
    pub database: String,
    /// Where the previous one was kept, if it existed and was kept.
    pub kept_as: Option<String>,
    /// Tables loaded.
    pub tables: u32,
    /// Rows loaded.
    pub rows: u64,
    /// Bytes of COPY data loaded.
    pub data_bytes: u64,
    /// Time per phase: schema, data, post-data, swap.
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
    /// The archive cannot be read.
    #[error("the backup cannot be read: {0}")]
    Archive(#[from] ArchiveError),
    /// A statement failed.
    #[error("restore failed in {phase} at {object}: {message}")]
    Sql {
        /// Restore phase.
        phase: &'static str,
        /// The object being restored (`TABLE public.candidates`).
        object: String,
        /// The server's message.
        message: String,
    },
    /// Verification found a difference.
    #[error("verification failed: {0}")]
    Verify(String),
}

fn sql_err(
    phase: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(tokio_postgres::Error) -> RestoreError {
    let object = object.into();
    move |e| RestoreError::Sql {
        phase,
        object,
        message: match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        },
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

/// Messages from the archive-reading thread.
enum Msg {
    Toc(Vec<TocEntry>),
    BlockStart(i32),
    Data(Bytes),
    BlockEnd,
    Failed(ArchiveError),
}

/// Reads the archive on the current (blocking) thread, sending the TOC and
/// then every data block's COPY rows (without pg_dump's `\.` marker).
fn read_archive(reader: impl Read, tx: mpsc::Sender<Msg>) {
    let send = |m: Msg| tx.blocking_send(m).is_ok();
    let mut archive = match CustomArchive::open(reader) {
        Ok(a) => a,
        Err(e) => {
            send(Msg::Failed(e));
            return;
        }
    };
    if !send(Msg::Toc(archive.toc().to_vec())) {
        return;
    }
    loop {
        let mut block = match archive.next_block() {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                send(Msg::Failed(e));
                return;
            }
        };
        if !send(Msg::BlockStart(block.dump_id)) {
            return;
        }
        let mut pending: Vec<u8> = Vec::with_capacity(CHUNK + HOLD_BACK);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match block.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    send(Msg::Failed(ArchiveError::Corrupt {
                        offset: 0,
                        problem: format!("data block {}: {e}", block.dump_id),
                    }));
                    return;
                }
            };
            pending.extend_from_slice(&buf[..n]);
            if pending.len() > CHUNK + HOLD_BACK {
                let keep = pending.split_off(pending.len() - HOLD_BACK);
                if !send(Msg::Data(Bytes::from(std::mem::replace(
                    &mut pending,
                    keep,
                )))) {
                    return;
                }
            }
        }
        let rows = super::archive::strip_copy_terminator(&pending);
        if !rows.is_empty() && !send(Msg::Data(Bytes::copy_from_slice(rows))) {
            return;
        }
        if !send(Msg::BlockEnd) {
            return;
        }
    }
}

/// Session settings every load connection gets (pg_restore's, plus bulk
/// load tuning); the archive's ENCODING, STDSTRINGS and SEARCHPATH entries
/// are added to them.
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

/// Drops the half-restored database unless disarmed (also when the restore
/// future is cancelled: the drop spawns the cleanup).
struct Cleanup {
    admin: Config,
    database: Option<String>,
}

impl Cleanup {
    fn disarm(&mut self) {
        self.database = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(db) = self.database.take() else {
            return;
        };
        let admin = self.admin.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&db));
                match connect(&admin, "cleanup").await {
                    Ok(c) => {
                        if let Err(e) = c.batch_execute(&sql).await {
                            tracing::warn!(
                                "could not drop the partial database {db}: {e}; drop it by hand"
                            );
                        }
                    }
                    Err(e) => tracing::warn!(
                        "could not drop the partial database {db}: {e}; drop it by hand"
                    ),
                }
            });
        }
    }
}

/// Restores `reader` (a custom-format archive) as `options.database`.
///
/// # Errors
/// [`RestoreError`]; the original database is untouched whenever this
/// returns an error.
pub async fn restore_custom<R: Read + Send + 'static>(
    options: &RestoreOptions,
    reader: R,
) -> Result<RestoreOutcome, RestoreError> {
    let target = &options.database;
    if target.is_empty() || target.len() > MAX_IDENT || target.contains('\0') {
        return Err(RestoreError::BadName(
            target.clone(),
            "must be 1 to 63 bytes, without NUL".into(),
        ));
    }
    let new_db = derived_name(target, &format!("_restore_{}", options.run_id));
    let kept = derived_name(target, &format!("_before_{}", options.run_id));

    let admin = connect(&options.admin, "maintenance database").await?;
    let locked: bool = admin
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('drhost-restore:' || $1))",
            &[target],
        )
        .await
        .map_err(sql_err("locking", target.clone()))?
        .get(0);
    if !locked {
        return Err(RestoreError::Busy(target.clone()));
    }
    let exists: bool = admin
        .query_one(
            "SELECT exists(SELECT 1 FROM pg_database WHERE datname = $1)",
            &[target],
        )
        .await
        .map_err(sql_err("checking", target.clone()))?
        .get(0);

    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote_ident(&new_db)
        ))
        .await
        .map_err(sql_err("creating the new database", new_db.clone()))?;
    let mut cleanup = Cleanup {
        admin: options.admin.clone(),
        database: Some(new_db.clone()),
    };

    let (tx, mut rx) = mpsc::channel(CHANNEL_DEPTH);
    let reading = tokio::task::spawn_blocking(move || read_archive(reader, tx));

    let mut phases = Vec::new();
    let started = Instant::now();
    let toc = match rx.recv().await {
        Some(Msg::Toc(toc)) => toc,
        Some(Msg::Failed(e)) => return Err(e.into()),
        _ => {
            return Err(RestoreError::Verify(
                "the archive reader stopped before the table of contents".into(),
            ));
        }
    };
    let mut load_config = options.admin.clone();
    load_config.dbname(&new_db);
    let load = connect(&load_config, "new database").await?;
    let mut session = String::from(SESSION);
    for e in toc
        .iter()
        .filter(|e| matches!(e.desc.as_str(), "ENCODING" | "STDSTRINGS" | "SEARCHPATH"))
    {
        session.push_str(&e.defn);
    }
    load.batch_execute(&session)
        .await
        .map_err(sql_err("session setup", "settings"))?;

    let object = |e: &TocEntry| match &e.namespace {
        Some(ns) => format!("{} {ns}.{}", e.desc, e.tag),
        None => format!("{} {}", e.desc, e.tag),
    };
    let skip = |e: &TocEntry| {
        matches!(
            e.desc.as_str(),
            "ENCODING" | "STDSTRINGS" | "SEARCHPATH" | "DATABASE" | "DATABASE PROPERTIES"
        ) || e.defn.trim().is_empty()
    };
    let is_acl = |e: &TocEntry| matches!(e.desc.as_str(), "ACL" | "DEFAULT ACL");

    for e in toc
        .iter()
        .filter(|e| e.section == Section::PreData && !skip(e) && !is_acl(e))
    {
        load.batch_execute(&e.defn)
            .await
            .map_err(sql_err("pre-data", object(e)))?;
    }
    phases.push(("schema", started.elapsed()));

    let data_started = Instant::now();
    let (mut tables, mut rows, mut data_bytes) = (0u32, 0u64, 0u64);
    let mut loaded = std::collections::BTreeSet::new();
    while let Some(msg) = rx.recv().await {
        let id = match msg {
            Msg::BlockStart(id) => id,
            Msg::Failed(e) => return Err(e.into()),
            Msg::Toc(_) | Msg::Data(_) | Msg::BlockEnd => {
                return Err(RestoreError::Verify(
                    "the archive reader sent data out of order".into(),
                ));
            }
        };
        let entry = toc.iter().find(|e| e.dump_id == id).ok_or_else(|| {
            RestoreError::Verify(format!(
                "a data block for dump id {id}, which is not in the TOC"
            ))
        })?;
        let Some(copy) = entry.copy_stmt.as_deref() else {
            return Err(RestoreError::Verify(format!(
                "{} has data but no COPY statement",
                object(entry)
            )));
        };
        let sink = load
            .copy_in::<_, Bytes>(copy.trim_end())
            .await
            .map_err(sql_err("data", object(entry)))?;
        futures_util::pin_mut!(sink);
        loop {
            match rx.recv().await {
                Some(Msg::Data(chunk)) => {
                    data_bytes += chunk.len() as u64;
                    sink.send(chunk)
                        .await
                        .map_err(sql_err("data", object(entry)))?;
                }
                Some(Msg::BlockEnd) => break,
                Some(Msg::Failed(e)) => return Err(e.into()),
                Some(Msg::Toc(_) | Msg::BlockStart(_)) | None => {
                    return Err(RestoreError::Verify(format!(
                        "the data of {} ended early",
                        object(entry)
                    )));
                }
            }
        }
        rows += sink
            .as_mut()
            .finish()
            .await
            .map_err(sql_err("data", object(entry)))?;
        tables += 1;
        loaded.insert(id);
    }
    reading
        .await
        .map_err(|e| RestoreError::Verify(format!("the archive reader thread failed: {e}")))?;
    for e in toc
        .iter()
        .filter(|e| e.section == Section::Data && e.copy_stmt.is_none() && !skip(e))
    {
        // SEQUENCE SET and the like: small statements of the data section.
        load.batch_execute(&e.defn)
            .await
            .map_err(sql_err("data", object(e)))?;
    }
    phases.push(("data", data_started.elapsed()));

    let post_started = Instant::now();
    for e in toc
        .iter()
        .filter(|e| e.section == Section::PostData && !skip(e) && !is_acl(e))
    {
        load.batch_execute(&e.defn)
            .await
            .map_err(sql_err("post-data", object(e)))?;
    }
    for e in toc
        .iter()
        .filter(|e| e.section == Section::None && !skip(e) && !is_acl(e))
    {
        load.batch_execute(&e.defn)
            .await
            .map_err(sql_err("comments", object(e)))?;
    }
    for e in toc.iter().filter(|e| is_acl(e) && !skip(e)) {
        load.batch_execute(&e.defn)
            .await
            .map_err(sql_err("privileges", object(e)))?;
    }
    phases.push(("post-data", post_started.elapsed()));

    // Verify: every table that has data in the archive was loaded.
    if let Some(missing) = toc
        .iter()
        .find(|e| e.copy_stmt.is_some() && e.had_dumper && !loaded.contains(&e.dump_id))
    {
        return Err(RestoreError::Verify(format!(
            "the data of {} was never loaded",
            object(missing)
        )));
    }
    drop(load);

    let swap_started = Instant::now();
    let mut swap = String::from("BEGIN;");
    if exists {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[target],
            )
            .await
            .map_err(sql_err("swap", target.clone()))?;
        swap.push_str(&format!(
            "ALTER DATABASE {} RENAME TO {};",
            quote_ident(target),
            quote_ident(&kept)
        ));
    }
    swap.push_str(&format!(
        "ALTER DATABASE {} RENAME TO {}; COMMIT;",
        quote_ident(&new_db),
        quote_ident(target)
    ));
    if let Err(e) = admin.batch_execute(&swap).await {
        let _ = admin.batch_execute("ROLLBACK").await;
        return Err(sql_err("swap", target.clone())(e));
    }
    cleanup.disarm();
    let mut kept_as = exists.then(|| kept.clone());
    if exists && !options.keep_previous {
        admin
            .batch_execute(&format!(
                "DROP DATABASE {} WITH (FORCE)",
                quote_ident(&kept)
            ))
            .await
            .map_err(sql_err("dropping the previous database", kept.clone()))?;
        kept_as = None;
    }
    phases.push(("swap", swap_started.elapsed()));
    Ok(RestoreOutcome {
        database: target.clone(),
        kept_as,
        tables,
        rows,
        data_bytes,
        phases,
    })
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
