//! The read side of a restore: one blocking thread turns the backup's bytes
//! (a file, or an object streaming from S3) into a sequence of [`Msg`]s
//! for the loader, whatever the format.
//!
//! ```text
//! bytes ─ count ─ BufReader ─ sniff ─┬─ PGDMP ........ custom archive ─┐
//!                                    ├─ 1f 8b ─ gunzip ─ sniff again ─┤─ Msg ─▶ bounded channel
//!                                    └─ text ......... plain SQL ─────┘
//! ```
//!
//! The format is judged by content, never by the file name. COPY data is
//! sent in pieces of whole lines (in COPY text format a raw newline always
//! ends a row: newlines inside values are written as `\n`), so the loader
//! can hand the pieces of one table to several connections at once. pg_dump's
//! `\.` end marker never reaches the server.
//!
//! Memory: the channel holds at most [`CHANNEL_DEPTH`] messages of at most
//! about [`PIECE`] bytes (a single row longer than that travels alone).

use std::io::{self, BufRead, BufReader, Read};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use tokio::sync::mpsc;

use super::archive::{
    ArchiveError, BackupFormat, CustomArchive, DataOffset, Header, TocEntry, sniff,
};
use super::plain::{PlainError, PlainItem, PlainReader};

/// Target size of one piece of COPY data.
pub const PIECE: usize = 512 * 1024;
/// Messages in flight between the reading thread and the loader.
pub const CHANNEL_DEPTH: usize = 16;
/// Bytes kept back at the end of a custom-archive data block until the
/// block ends, so pg_dump's `\.` end marker (and the blank line after it)
/// can be removed.
const HOLD_BACK: usize = 16;
/// Longest COPY row accepted (PostgreSQL's own limit on a row).
const MAX_ROW: usize = 1 << 30;

/// Which table a run of [`Msg::Data`] pieces belongs to.
#[derive(Debug)]
pub struct CopyTarget {
    /// `COPY schema.table (cols) FROM stdin;`
    pub stmt: String,
    /// For messages: `TABLE DATA public.candidates`.
    pub object: String,
    /// The TOC entry (custom archives).
    pub dump_id: Option<i32>,
}

/// What the reading thread sends, in backup order.
#[derive(Debug)]
pub enum Msg {
    /// First message for a custom archive: its table of contents.
    Custom(Vec<TocEntry>),
    /// First (and only) message for a custom archive that records where
    /// every table's data is, read from a [`RangeRead`] backup: the loader
    /// reads the tables itself, several at once ([`produce_table`]).
    CustomRanged(Header, Arc<[TocEntry]>),
    /// First message for a plain SQL dump.
    Plain,
    /// Plain dumps: one SQL statement.
    Statement(String),
    /// Plain dumps: a psql meta-command line (`\restrict`, `\connect`).
    Meta(String),
    /// The start of one table's rows.
    CopyStart(Arc<CopyTarget>),
    /// Whole rows of the current table.
    Data(Bytes),
    /// The end of the current table's rows.
    CopyEnd,
    /// The backup cannot be read further.
    Failed(SourceError),
}

/// Why the backup could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Neither a custom archive, gzip, nor plain SQL.
    #[error(
        "the backup is not a pg_dump custom archive, a plain SQL dump, or either gzip-compressed (it starts with {0})"
    )]
    UnknownFormat(String),
    /// Reading or decompressing failed.
    #[error("reading the backup failed after {offset} bytes: {source}")]
    Io {
        /// Compressed bytes consumed.
        offset: u64,
        /// The I/O error (an S3 error, corrupt gzip data, ...).
        source: io::Error,
    },
    /// The custom archive is damaged or unsupported.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The plain dump cannot be split.
    #[error(transparent)]
    Plain(#[from] PlainError),
    /// One row longer than PostgreSQL accepts (a corrupt backup).
    #[error("a COPY row of {0} is longer than 1 GiB: the backup is corrupt")]
    RowTooLong(String),
}

/// A reader that counts the bytes it hands out into a shared counter
/// (bytes read from the backup: the progress figure).
struct Counted<R, const N: usize> {
    inner: R,
    counts: [Arc<AtomicU64>; N],
}

impl<R: Read, const N: usize> Read for Counted<R, N> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for c in &self.counts {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// A backup that can be read from any offset: an S3 object (ranged GETs) or
/// a file. A raw custom archive read this way has each table's data read
/// by its own reader, so different tables load at once.
pub trait RangeRead: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// A reader over bytes `range` (blocking reads; called on a blocking
    /// thread).
    ///
    /// # Errors
    /// The range cannot be opened.
    fn open(&self, range: Range<u64>) -> io::Result<Box<dyn Read + Send>>;
}

/// Reads the whole backup, sending [`Msg`]s until the end or until the
/// receiver is gone (the restore was cancelled). Runs on a blocking thread.
/// `read_bytes` counts the backup's bytes consumed. With `random_access`
/// (the backup is a [`RangeRead`]), a raw custom archive whose TOC records
/// every data offset stops after the TOC with [`Msg::CustomRanged`].
pub fn produce(
    reader: impl Read,
    read_bytes: Arc<AtomicU64>,
    tx: mpsc::Sender<Msg>,
    random_access: bool,
) {
    let counter = read_bytes.clone();
    let offset = move || counter.load(Ordering::Relaxed);
    let mut outer = BufReader::with_capacity(
        256 * 1024,
        Counted {
            inner: reader,
            counts: [read_bytes],
        },
    );
    let send = |m: Msg| tx.blocking_send(m).is_ok();
    let fail = |e: SourceError| {
        let _ = tx.blocking_send(Msg::Failed(e));
    };
    let head = match peek(&mut outer) {
        Ok(h) => h,
        Err(source) => {
            return fail(SourceError::Io {
                offset: offset(),
                source,
            });
        }
    };
    match sniff(&head) {
        BackupFormat::Gzip => {
            let mut inner = BufReader::with_capacity(256 * 1024, MultiGzDecoder::new(outer));
            let head = match peek(&mut inner) {
                Ok(h) => h,
                Err(source) => {
                    return fail(SourceError::Io {
                        offset: offset(),
                        source,
                    });
                }
            };
            match sniff(&head) {
                BackupFormat::Custom => custom(inner, &send, &fail, false),
                BackupFormat::PlainSql => plain(inner, &send, &fail),
                _ => fail(SourceError::UnknownFormat(format!(
                    "gzip data holding {}",
                    describe(&head)
                ))),
            }
        }
        BackupFormat::Custom => custom(outer, &send, &fail, random_access),
        BackupFormat::PlainSql => plain(outer, &send, &fail),
        BackupFormat::Unknown => fail(SourceError::UnknownFormat(describe(&head))),
    }
}

/// The first bytes (up to 16) without consuming them, for [`sniff`].
fn peek(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let buf = reader.fill_buf()?;
    Ok(buf.get(..16).unwrap_or(buf).to_vec())
}

fn describe(head: &[u8]) -> String {
    if head.is_empty() {
        return "nothing: it is empty".into();
    }
    let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("bytes {}", hex.join(" "))
}

fn object(e: &TocEntry) -> String {
    match &e.namespace {
        Some(ns) => format!("{} {ns}.{}", e.desc, e.tag),
        None => format!("{} {}", e.desc, e.tag),
    }
}

fn custom(
    reader: impl Read,
    send: &dyn Fn(Msg) -> bool,
    fail: &dyn Fn(SourceError),
    random_access: bool,
) {
    let mut archive = match CustomArchive::open(reader) {
        Ok(a) => a,
        Err(e) => return fail(e.into()),
    };
    let toc = archive.toc().to_vec();
    let located = |e: &TocEntry| {
        !e.had_dumper
            || match e.data_offset {
                DataOffset::NoData => true,
                DataOffset::At(_) => e.copy_stmt.is_some(),
                DataOffset::Unknown => false,
            }
    };
    if random_access && toc.iter().all(located) {
        send(Msg::CustomRanged(archive.header().clone(), toc.into()));
        return;
    }
    let targets: std::collections::HashMap<i32, Arc<CopyTarget>> = toc
        .iter()
        .filter_map(|e| {
            let stmt = e.copy_stmt.as_ref()?;
            Some((
                e.dump_id,
                Arc::new(CopyTarget {
                    stmt: stmt.trim_end().to_owned(),
                    object: object(e),
                    dump_id: Some(e.dump_id),
                }),
            ))
        })
        .collect();
    if !send(Msg::Custom(toc)) {
        return;
    }
    loop {
        let mut block = match archive.next_block() {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => return fail(e.into()),
        };
        let Some(target) = targets.get(&block.dump_id).cloned() else {
            return fail(SourceError::Archive(ArchiveError::Corrupt {
                offset: 0,
                problem: format!(
                    "data block for dump id {} has no COPY statement in the TOC",
                    block.dump_id
                ),
            }));
        };
        let object = target.object.clone();
        if !send(Msg::CopyStart(target)) {
            return;
        }
        match send_rows(&mut block, &object, send) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => return fail(e),
        }
        if !send(Msg::CopyEnd) {
            return;
        }
    }
}

/// Reads one table's data block from `range` of a [`RangeRead`] custom
/// archive (`range` starts at the block, as the TOC records) and sends its
/// rows as [`Msg::Data`] pieces; the channel closing is the end. Runs on a
/// blocking thread; stops when the receiver is gone.
pub fn produce_table(
    source: &dyn RangeRead,
    archive: (Header, Arc<[TocEntry]>),
    dump_id: i32,
    range: Range<u64>,
    object: &str,
    read_bytes: [Arc<AtomicU64>; 2],
    tx: mpsc::Sender<Msg>,
) {
    let send = |m: Msg| tx.blocking_send(m).is_ok();
    let fail = |e: SourceError| {
        let _ = tx.blocking_send(Msg::Failed(e));
    };
    let start = range.start;
    let reader = match source.open(range) {
        Ok(r) => r,
        Err(source) => {
            return fail(SourceError::Io {
                offset: start,
                source,
            });
        }
    };
    let counted = BufReader::with_capacity(
        256 * 1024,
        Counted {
            inner: reader,
            counts: read_bytes,
        },
    );
    let (header, toc) = archive;
    let mut archive = CustomArchive::positioned(header, toc, counted, start);
    let mut block = match archive.block_at(dump_id) {
        Ok(b) => b,
        Err(e) => return fail(e.into()),
    };
    if let Err(e) = send_rows(&mut block, object, &send) {
        fail(e);
    }
}

/// Sends one data block's COPY rows as [`Msg::Data`] pieces of whole lines,
/// without pg_dump's `\.` end marker. `Ok(false)`: the receiver is gone.
fn send_rows(
    block: &mut impl Read,
    object: &str,
    send: &dyn Fn(Msg) -> bool,
) -> Result<bool, SourceError> {
    let mut buf = vec![0u8; PIECE];
    let mut pending: Vec<u8> = Vec::with_capacity(PIECE + HOLD_BACK);
    loop {
        let n = match block.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Err(SourceError::Archive(ArchiveError::Corrupt {
                    offset: 0,
                    problem: format!("data of {object}: {e}"),
                }));
            }
        };
        pending.extend_from_slice(&buf[..n]);
        if pending.len() >= PIECE + HOLD_BACK {
            let sendable = &pending[..pending.len() - HOLD_BACK];
            match memrchr_newline(sendable) {
                Some(p) => {
                    let rest = pending.split_off(p + 1);
                    let piece = std::mem::replace(&mut pending, rest);
                    if !send(Msg::Data(Bytes::from(piece))) {
                        return Ok(false);
                    }
                }
                None if pending.len() > MAX_ROW => {
                    return Err(SourceError::RowTooLong(object.to_owned()));
                }
                None => {}
            }
        }
    }
    let rows = super::archive::strip_copy_terminator(&pending);
    Ok(rows.is_empty() || send(Msg::Data(Bytes::copy_from_slice(rows))))
}

fn memrchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().rposition(|&c| c == b'\n')
}

fn plain(reader: impl BufRead, send: &dyn Fn(Msg) -> bool, fail: &dyn Fn(SourceError)) {
    let mut plain = PlainReader::new(reader);
    if !send(Msg::Plain) {
        return;
    }
    let mut piece: Vec<u8> = Vec::new();
    loop {
        let item = match plain.next_item() {
            Ok(Some(i)) => i,
            Ok(None) => return,
            Err(e) => return fail(e.into()),
        };
        let ok = match item {
            PlainItem::Statement(s) => send(Msg::Statement(s)),
            PlainItem::MetaCommand(m) => send(Msg::Meta(m)),
            PlainItem::CopyStart(stmt) => {
                let copy_line = plain.line();
                let stmt = stmt.trim_end().to_owned();
                let object = format!(
                    "COPY at line {copy_line} ({})",
                    stmt.split(" FROM ").next().unwrap_or(&stmt)
                );
                send(Msg::CopyStart(Arc::new(CopyTarget {
                    stmt,
                    object,
                    dump_id: None,
                })))
            }
            PlainItem::CopyData(data) => {
                // Coalesce the splitter's small chunks into pieces.
                if piece.is_empty() {
                    piece = data;
                } else {
                    piece.extend_from_slice(&data);
                }
                if piece.len() >= PIECE {
                    send(Msg::Data(Bytes::from(std::mem::take(&mut piece))))
                } else {
                    true
                }
            }
            PlainItem::CopyEnd => {
                let flushed =
                    piece.is_empty() || send(Msg::Data(Bytes::from(std::mem::take(&mut piece))));
                flushed && send(Msg::CopyEnd)
            }
        };
        if !ok {
            return;
        }
    }
}
