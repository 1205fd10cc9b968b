//! A streaming reader for `pg_dump -Fc` (custom format) archives, parsed
//! natively: no `pg_restore` binary that must match the server at incident
//! time, and it yields each table's COPY text, which the restore needs to
//! spread one table's rows over several connections.
//!
//! The format is defined by PostgreSQL's `pg_backup_archiver.c` (header and
//! TOC) and `pg_backup_custom.c` (data blocks):
//!
//! ```text
//! "PGDMP" vmaj vmin vrev intSize offSize format
//! compression (byte algorithm since 1.15, else int level)
//! created: 7 ints (sec min hour mday mon year isdst); dbname; server version; pg_dump version
//! TOC: count, then per entry: dumpId hadDumper tableoid oid tag desc section defn dropStmt
//!      copyStmt namespace tablespace tableam [relkind since 1.16] owner "false"
//!      dependencies... NULL  dataOffset(flag byte + offSize bytes)
//! data: per block: type byte (1 = table data, 3 = large objects), dumpId,
//!       then chunks (int length, bytes) until a zero length; the chunks of a
//!       block form one zlib stream when the archive is gzip-compressed.
//! ```
//!
//! An int is a sign byte followed by `intSize` little-endian magnitude
//! bytes; a string is an int length (-1 for NULL) followed by the bytes.
//!
//! Supported: archive versions 1.12 to 1.16 (PostgreSQL 11 to 17 write
//! 1.13 to 1.16), uncompressed or gzip-compressed data. Read sequentially:
//! data blocks come in the order pg_dump wrote them, which is also how an
//! archive streamed from object storage arrives. Not supported yet, each
//! with a clear error: lz4/zstd compression (PostgreSQL 16+ `-Z lz4|zstd`),
//! large-object blocks.
//!
//! Every length read from the file is bounded before it is allocated, so a
//! corrupt or hostile archive produces an error, never a huge allocation or
//! a panic.

use std::io::{self, Read};

use flate2::read::ZlibDecoder;

/// Longest TOC string accepted (a view or function definition can be long,
/// but not this long).
pub const MAX_STRING_BYTES: i64 = 256 << 20;
/// Most TOC entries accepted.
pub const MAX_TOC_ENTRIES: i64 = 10_000_000;
/// Longest data chunk accepted (pg_dump writes chunks of at most a few
/// hundred KiB).
pub const MAX_CHUNK_BYTES: i64 = 64 << 20;

const MAGIC: &[u8; 5] = b"PGDMP";
const FORMAT_CUSTOM: u8 = 1;
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;

/// What a backup file is, judged by its first bytes (never by its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupFormat {
    /// A `pg_dump -Fc` archive.
    Custom,
    /// gzip-compressed: look inside after decompressing.
    Gzip,
    /// Anything else that looks like text: a plain SQL dump.
    PlainSql,
    /// Binary data that is none of the above.
    Unknown,
}

/// Classifies a backup by its first bytes (16 are enough).
pub fn sniff(prefix: &[u8]) -> BackupFormat {
    if prefix.starts_with(MAGIC) {
        BackupFormat::Custom
    } else if prefix.starts_with(&[0x1f, 0x8b]) {
        BackupFormat::Gzip
    } else if !prefix.is_empty()
        && prefix.iter().all(|&b| {
            b == b'\n' || b == b'\r' || b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80
        })
    {
        BackupFormat::PlainSql
    } else {
        BackupFormat::Unknown
    }
}

/// pg_dump writes the COPY end marker into a table's data block: the block
/// ends with a `\.` line followed by blank lines. Returns the rows without
/// it (what a `COPY ... FROM STDIN` over the protocol must be sent).
pub fn strip_copy_terminator(data: &[u8]) -> &[u8] {
    let mut end = data.len();
    while end > 0 && data[end - 1] == b'\n' {
        end -= 1;
    }
    let body = &data[..end];
    if body == b"\\." {
        return &data[..0];
    }
    match body.strip_suffix(b"\n\\.") {
        Some(rows) => &data[..rows.len() + 1],
        None => data,
    }
}

/// Why an archive cannot be read. Messages say what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the underlying stream failed.
    #[error("reading the archive failed at byte {offset}: {source}")]
    Io {
        /// Bytes consumed before the failure.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// The stream ended inside a structure.
    #[error("the archive is truncated: it ends inside {what} at byte {offset}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes consumed.
        offset: u64,
    },
    /// Not a custom-format archive at all.
    #[error("not a pg_dump custom-format archive: {0}")]
    NotCustom(String),
    /// A version or feature this reader does not handle.
    #[error("unsupported archive: {0}")]
    Unsupported(String),
    /// A value that cannot be right.
    #[error("corrupt archive at byte {offset}: {problem}")]
    Corrupt {
        /// Bytes consumed.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
}

/// Compression of the data blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// zlib streams (pg_dump's default).
    Gzip,
    /// lz4 (PostgreSQL 16+).
    Lz4,
    /// zstd (PostgreSQL 16+).
    Zstd,
}

/// Archive header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Archive format version (major, minor, revision).
    pub version: (u8, u8, u8),
    /// Bytes per integer.
    pub int_size: u8,
    /// Bytes per file offset.
    pub off_size: u8,
    /// Data compression.
    pub compression: Compression,
    /// Name of the dumped database.
    pub database: String,
    /// Server version that was dumped.
    pub server_version: String,
    /// pg_dump version that wrote the archive.
    pub dump_version: String,
}

/// Which restore phase an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Not in a section (comments, ACLs follow their object).
    None,
    /// Schema before data (types, tables, functions, ...).
    PreData,
    /// Table data, sequence values, large objects.
    Data,
    /// Indexes, constraints, triggers, rules.
    PostData,
}

/// Where an entry's data block is, as recorded in the TOC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataOffset {
    /// The entry has data, but pg_dump wrote to a stream and did not record
    /// where (read the blocks sequentially).
    Unknown,
    /// At this byte offset of the file.
    At(u64),
    /// The entry has no data block.
    NoData,
}

/// One entry of the table of contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    /// pg_dump's id of the object; dependencies refer to it.
    pub dump_id: i32,
    /// Whether a data block was dumped for it.
    pub had_dumper: bool,
    /// Object name (`candidates`, `candidates_pkey`, ...).
    pub tag: String,
    /// Object kind (`TABLE`, `TABLE DATA`, `INDEX`, `FK CONSTRAINT`, ...).
    pub desc: String,
    /// Restore phase.
    pub section: Section,
    /// SQL that creates it (may be empty).
    pub defn: String,
    /// For table data: `COPY schema.table (cols) FROM stdin;`.
    pub copy_stmt: Option<String>,
    /// Schema, if any.
    pub namespace: Option<String>,
    /// Table access method, if any.
    pub table_am: Option<String>,
    /// Owner role, if any.
    pub owner: Option<String>,
    /// Dump ids this entry depends on.
    pub dependencies: Vec<i32>,
    /// Where its data block is.
    pub data_offset: DataOffset,
}

/// A reader that counts the bytes it consumed (for error messages and
/// progress).
struct Counting<R> {
    inner: R,
    offset: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// State of the data block being read.
#[derive(Debug, Default)]
struct ChunkState {
    /// Inside a block whose chunks are not all consumed.
    in_block: bool,
    /// Bytes left in the current chunk.
    remaining: u64,
}

/// A custom-format archive opened for sequential reading.
pub struct CustomArchive<R> {
    src: Counting<R>,
    header: Header,
    toc: std::sync::Arc<[TocEntry]>,
    chunk: ChunkState,
    /// Dump ids whose data block has been seen.
    seen: std::collections::HashSet<i32>,
}

impl<R: Read> CustomArchive<R> {
    /// Reads the header and the TOC.
    ///
    /// # Errors
    /// [`ArchiveError`] for a file that is not a custom archive, a version
    /// or compression this reader does not support, truncation or
    /// corruption.
    pub fn open(reader: R) -> Result<Self, ArchiveError> {
        let mut a = CustomArchive {
            src: Counting {
                inner: reader,
                offset: 0,
            },
            header: Header {
                version: (0, 0, 0),
                int_size: 4,
                off_size: 8,
                compression: Compression::None,
                database: String::new(),
                server_version: String::new(),
                dump_version: String::new(),
            },
            toc: std::sync::Arc::from(Vec::new()),
            chunk: ChunkState::default(),
            seen: std::collections::HashSet::new(),
        };
        a.read_header()?;
        a.read_toc()?;
        Ok(a)
    }

    /// An archive whose header and TOC were read elsewhere, with `reader`
    /// positioned at byte `offset` of the file: the start of a data block
    /// recorded in the TOC ([`DataOffset::At`]). This is how several
    /// tables are read at once, each from its own ranged read, the way
    /// pg_restore seeks in a file. Only [`CustomArchive::block_at`] is
    /// meant to be called on it.
    pub fn positioned(
        header: Header,
        toc: std::sync::Arc<[TocEntry]>,
        reader: R,
        offset: u64,
    ) -> Self {
        CustomArchive {
            src: Counting {
                inner: reader,
                offset,
            },
            header,
            toc,
            chunk: ChunkState::default(),
            seen: std::collections::HashSet::new(),
        }
    }

    /// The data block of `dump_id`, which must start right here (see
    /// [`CustomArchive::positioned`]).
    ///
    /// # Errors
    /// Truncation or corruption, or a block of another entry (the TOC's
    /// offset is wrong).
    pub fn block_at(&mut self, dump_id: i32) -> Result<DataBlock<'_, R>, ArchiveError> {
        let at = self.src.offset;
        match self.next_block()? {
            Some(b) if b.dump_id == dump_id => Ok(b),
            Some(b) => Err(ArchiveError::Corrupt {
                offset: at,
                problem: format!(
                    "the TOC says the data of dump id {dump_id} starts here, but the block here is dump id {}",
                    b.dump_id
                ),
            }),
            None => Err(ArchiveError::Truncated {
                what: "a data block the TOC points to",
                offset: at,
            }),
        }
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The table of contents, in archive order.
    pub fn toc(&self) -> &[TocEntry] {
        &self.toc
    }

    /// The TOC entry with this dump id.
    pub fn entry(&self, dump_id: i32) -> Option<&TocEntry> {
        self.toc.iter().find(|e| e.dump_id == dump_id)
    }

    /// Bytes of the archive consumed so far.
    pub fn offset(&self) -> u64 {
        self.src.offset
    }

    /// The next data block, in file order; `None` at the end of the
    /// archive. A block not read to its end is skipped first.
    ///
    /// The format has no end marker, so the end is checked against the TOC:
    /// an archive that stops before the data of every entry that has data
    /// is reported as truncated, naming the first missing entry.
    ///
    /// # Errors
    /// Truncation, corruption, an unknown or repeated dump id, or a
    /// large-object block (not supported yet).
    pub fn next_block(&mut self) -> Result<Option<DataBlock<'_, R>>, ArchiveError> {
        self.drain_block()?;
        let mut kind = [0u8; 1];
        match self.src.read(&mut kind) {
            Ok(0) => return self.check_complete().map(|()| None),
            Ok(_) => {}
            Err(source) => {
                return Err(ArchiveError::Io {
                    offset: self.src.offset,
                    source,
                });
            }
        }
        let dump_id = self.read_int("a data block id")?;
        let dump_id = i32::try_from(dump_id)
            .map_err(|_| self.corrupt(format!("data block id {dump_id} out of range")))?;
        match kind[0] {
            BLK_DATA => {}
            BLK_BLOBS => {
                return Err(ArchiveError::Unsupported(format!(
                    "large objects (block for dump id {dump_id}) are not supported yet; dump with --no-large-objects or restore them with pg_restore"
                )));
            }
            other => {
                return Err(self.corrupt(format!(
                    "unknown data block type {other} for dump id {dump_id}"
                )));
            }
        }
        if self.entry(dump_id).is_none() {
            return Err(self.corrupt(format!(
                "data block for dump id {dump_id}, which is not in the TOC"
            )));
        }
        if !self.seen.insert(dump_id) {
            return Err(self.corrupt(format!("a second data block for dump id {dump_id}")));
        }
        self.chunk = ChunkState {
            in_block: true,
            remaining: 0,
        };
        let compression = self.header.compression;
        let chunks = Chunks { archive: self };
        let reader = match compression {
            Compression::None => BlockReader::Plain(chunks),
            Compression::Gzip => BlockReader::Zlib(Box::new(ZlibDecoder::new(chunks))),
            Compression::Lz4 | Compression::Zstd => {
                return Err(ArchiveError::Unsupported(
                    "lz4/zstd-compressed data (pg_dump -Z lz4|zstd); dump with -Z gzip or -Z 0"
                        .into(),
                ));
            }
        };
        Ok(Some(DataBlock { dump_id, reader }))
    }

    fn check_complete(&self) -> Result<(), ArchiveError> {
        let missing = self.toc.iter().find(|e| {
            e.had_dumper && e.data_offset != DataOffset::NoData && !self.seen.contains(&e.dump_id)
        });
        match missing {
            Some(e) => Err(self.corrupt(format!(
                "the archive ends before the data of {} {} (dump id {}): truncated?",
                e.desc, e.tag, e.dump_id
            ))),
            None => Ok(()),
        }
    }

    fn drain_block(&mut self) -> Result<(), ArchiveError> {
        let mut buf = [0u8; 8192];
        while self.chunk.in_block {
            let n = self
                .read_chunk_bytes(&mut buf)
                .map_err(|source| ArchiveError::Io {
                    offset: self.src.offset,
                    source,
                })?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Reads raw (still compressed) bytes of the current block; 0 at its end.
    fn read_chunk_bytes(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.in_block && self.chunk.remaining == 0 {
            let len = self
                .read_int("a data chunk length")
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            if len == 0 {
                self.chunk.in_block = false;
                return Ok(0);
            }
            if !(1..=MAX_CHUNK_BYTES).contains(&len) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    self.corrupt(format!("data chunk length {len}")).to_string(),
                ));
            }
            self.chunk.remaining = len as u64;
        }
        if !self.chunk.in_block || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.chunk.remaining).unwrap_or(usize::MAX));
        let n = self.src.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                ArchiveError::Truncated {
                    what: "a data chunk",
                    offset: self.src.offset,
                }
                .to_string(),
            ));
        }
        self.chunk.remaining -= n as u64;
        Ok(n)
    }

    fn corrupt(&self, problem: String) -> ArchiveError {
        ArchiveError::Corrupt {
            offset: self.src.offset,
            problem,
        }
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), ArchiveError> {
        match self.src.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ArchiveError::Truncated {
                what,
                offset: self.src.offset,
            }),
            Err(source) => Err(ArchiveError::Io {
                offset: self.src.offset,
                source,
            }),
        }
    }

    fn read_byte(&mut self, what: &'static str) -> Result<u8, ArchiveError> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b, what)?;
        Ok(b[0])
    }

    fn read_int(&mut self, what: &'static str) -> Result<i64, ArchiveError> {
        let sign = self.read_byte(what)?;
        let mut bytes = [0u8; 8];
        let n = usize::from(self.header.int_size);
        self.read_exact(&mut bytes[..n], what)?;
        let magnitude = i64::from_le_bytes(bytes);
        Ok(if sign != 0 {
            magnitude.wrapping_neg()
        } else {
            magnitude
        })
    }

    fn read_str(&mut self, what: &'static str) -> Result<Option<String>, ArchiveError> {
        let len = self.read_int(what)?;
        if len < 0 {
            return Ok(None);
        }
        if len > MAX_STRING_BYTES {
            return Err(self.corrupt(format!("{what} claims {len} bytes")));
        }
        // Grow with the data actually present: a corrupt length must not
        // allocate up front.
        let mut buf = Vec::new();
        let got = (&mut self.src)
            .take(len as u64)
            .read_to_end(&mut buf)
            .map_err(|source| ArchiveError::Io {
                offset: self.src.offset,
                source,
            })?;
        if (got as u64) < len as u64 {
            return Err(ArchiveError::Truncated {
                what,
                offset: self.src.offset,
            });
        }
        String::from_utf8(buf).map(Some).map_err(|_| {
            self.corrupt(format!(
                "{what} is not UTF-8 (only UTF8-encoded dumps are supported)"
            ))
        })
    }

    fn read_header(&mut self) -> Result<(), ArchiveError> {
        let mut magic = [0u8; 5];
        match self.src.read_exact(&mut magic) {
            Ok(()) => {}
            Err(_) => {
                return Err(ArchiveError::NotCustom(
                    "the file is shorter than the 5-byte PGDMP signature".into(),
                ));
            }
        }
        if &magic != MAGIC {
            return Err(ArchiveError::NotCustom(match sniff(&magic) {
                BackupFormat::Gzip => "it is gzip-compressed: decompress it first".into(),
                BackupFormat::PlainSql => "it looks like a plain SQL dump".into(),
                _ => "it does not start with PGDMP".into(),
            }));
        }
        let vmaj = self.read_byte("the version")?;
        let vmin = self.read_byte("the version")?;
        let vrev = self.read_byte("the version")?;
        self.header.version = (vmaj, vmin, vrev);
        if vmaj != 1 || !(12..=16).contains(&vmin) {
            return Err(ArchiveError::Unsupported(format!(
                "archive version {vmaj}.{vmin}.{vrev}; this reader supports 1.12 to 1.16 (pg_dump 11 to 17)"
            )));
        }
        let int_size = self.read_byte("the integer size")?;
        if !(1..=8).contains(&int_size) {
            return Err(self.corrupt(format!("integer size {int_size}")));
        }
        self.header.int_size = int_size;
        let off_size = self.read_byte("the offset size")?;
        if !(1..=8).contains(&off_size) {
            return Err(self.corrupt(format!("offset size {off_size}")));
        }
        self.header.off_size = off_size;
        let format = self.read_byte("the format")?;
        if format != FORMAT_CUSTOM {
            return Err(ArchiveError::NotCustom(format!(
                "format code {format} (1 is custom; tar and directory archives are not read here)"
            )));
        }
        self.header.compression = if vmin >= 15 {
            match self.read_byte("the compression algorithm")? {
                0 => Compression::None,
                1 => Compression::Gzip,
                2 => Compression::Lz4,
                3 => Compression::Zstd,
                other => return Err(self.corrupt(format!("compression algorithm {other}"))),
            }
        } else {
            match self.read_int("the compression level")? {
                0 => Compression::None,
                _ => Compression::Gzip,
            }
        };
        for _ in 0..7 {
            self.read_int("the creation time")?;
        }
        self.header.database = self.read_str("the database name")?.unwrap_or_default();
        self.header.server_version = self.read_str("the server version")?.unwrap_or_default();
        self.header.dump_version = self.read_str("the pg_dump version")?.unwrap_or_default();
        Ok(())
    }

    fn read_toc(&mut self) -> Result<(), ArchiveError> {
        let count = self.read_int("the TOC size")?;
        if !(0..=MAX_TOC_ENTRIES).contains(&count) {
            return Err(self.corrupt(format!("TOC size {count}")));
        }
        let vmin = self.header.version.1;
        let mut toc = Vec::new();
        for _ in 0..count {
            let dump_id = self.read_int("a TOC entry id")?;
            let dump_id = i32::try_from(dump_id)
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| self.corrupt(format!("TOC entry id {dump_id} out of range")))?;
            let had_dumper = self.read_int("a TOC entry")? != 0;
            self.read_str("a TOC table oid")?;
            self.read_str("a TOC oid")?;
            let tag = self.read_str("a TOC tag")?.unwrap_or_default();
            let desc = self.read_str("a TOC description")?.unwrap_or_default();
            let section = match self.read_int("a TOC section")? {
                1 => Section::None,
                2 => Section::PreData,
                3 => Section::Data,
                4 => Section::PostData,
                other => return Err(self.corrupt(format!("section {other} of {desc} {tag}"))),
            };
            let defn = self.read_str("a TOC definition")?.unwrap_or_default();
            self.read_str("a TOC drop statement")?;
            let copy_stmt = self
                .read_str("a TOC COPY statement")?
                .filter(|s| !s.is_empty());
            let namespace = self.read_str("a TOC namespace")?.filter(|s| !s.is_empty());
            self.read_str("a TOC tablespace")?;
            let table_am = self
                .read_str("a TOC table access method")?
                .filter(|s| !s.is_empty());
            if vmin >= 16 {
                self.read_int("a TOC relkind")?;
            }
            let owner = self.read_str("a TOC owner")?.filter(|s| !s.is_empty());
            if self.read_str("a TOC WITH OIDS flag")?.as_deref() == Some("true") {
                return Err(ArchiveError::Unsupported(format!(
                    "table {tag} was dumped WITH OIDS"
                )));
            }
            let mut dependencies = Vec::new();
            while let Some(dep) = self.read_str("a TOC dependency")? {
                let id = dep
                    .trim()
                    .parse::<i32>()
                    .map_err(|_| self.corrupt(format!("dependency {dep:?} of {desc} {tag}")))?;
                dependencies.push(id);
            }
            let flag = self.read_byte("a data offset")?;
            let mut off = [0u8; 8];
            let n = usize::from(self.header.off_size);
            self.read_exact(&mut off[..n], "a data offset")?;
            let data_offset = match flag {
                1 => DataOffset::Unknown,
                2 => DataOffset::At(u64::from_le_bytes(off)),
                3 => DataOffset::NoData,
                other => {
                    return Err(self.corrupt(format!("data offset flag {other} of {desc} {tag}")));
                }
            };
            toc.push(TocEntry {
                dump_id,
                had_dumper,
                tag,
                desc,
                section,
                defn,
                copy_stmt,
                namespace,
                table_am,
                owner,
                dependencies,
                data_offset,
            });
        }
        self.toc = toc.into();
        Ok(())
    }
}

/// The raw chunks of the current block, as a byte stream.
struct Chunks<'a, R> {
    archive: &'a mut CustomArchive<R>,
}

impl<R: Read> Read for Chunks<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.archive.read_chunk_bytes(buf)
    }
}

enum BlockReader<'a, R> {
    Plain(Chunks<'a, R>),
    Zlib(Box<ZlibDecoder<Chunks<'a, R>>>),
}

/// One data block: for `TABLE DATA` entries, the table's COPY text
/// (decompressed), readable as a stream.
pub struct DataBlock<'a, R> {
    /// The TOC entry it belongs to.
    pub dump_id: i32,
    reader: BlockReader<'a, R>,
}

impl<R: Read> Read for DataBlock<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.reader {
            BlockReader::Plain(c) => c.read(buf),
            BlockReader::Zlib(z) => z.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Synthetic archives written by a tiny writer that follows
    //! pg_backup_archiver.c's WriteInt/WriteStr; real pg_dump archives are
    //! read by the integration tests in tests/postgres.rs.

    use std::io::{Read, Write};

    use super::*;

    struct W {
        buf: Vec<u8>,
        vmin: u8,
    }

    impl W {
        fn int(&mut self, v: i64) {
            self.buf.push(u8::from(v < 0));
            self.buf
                .extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        }
        fn str(&mut self, s: Option<&str>) {
            match s {
                None => self.int(-1),
                Some(s) => {
                    self.int(s.len() as i64);
                    self.buf.extend_from_slice(s.as_bytes());
                }
            }
        }
        fn header(vmin: u8, compression: Compression) -> W {
            let mut w = W {
                buf: Vec::new(),
                vmin,
            };
            w.buf.extend_from_slice(b"PGDMP");
            w.buf.extend_from_slice(&[1, vmin, 0, 4, 8, FORMAT_CUSTOM]);
            if vmin >= 15 {
                w.buf.push(match compression {
                    Compression::None => 0,
                    Compression::Gzip => 1,
                    Compression::Lz4 => 2,
                    Compression::Zstd => 3,
                });
            } else {
                w.int(if compression == Compression::Gzip {
                    -1
                } else {
                    0
                });
            }
            for v in [1, 2, 3, 27, 10, 126, 0] {
                w.int(v);
            }
            w.str(Some("shop"));
            w.str(Some("15.19"));
            w.str(Some("15.19"));
            w
        }
        #[allow(clippy::too_many_arguments)] // mirrors the TOC entry layout
        fn entry(
            &mut self,
            id: i64,
            desc: &str,
            tag: &str,
            section: i64,
            copy: Option<&str>,
            deps: &[i64],
            has_data: bool,
        ) {
            self.int(id);
            self.int(i64::from(has_data));
            self.str(Some("0"));
            self.str(Some("0"));
            self.str(Some(tag));
            self.str(Some(desc));
            self.int(section);
            self.str(Some(&format!("-- {desc} {tag}")));
            self.str(Some(""));
            self.str(copy);
            self.str(Some("public"));
            self.str(Some(""));
            self.str(Some("heap"));
            if self.vmin >= 16 {
                self.int(i64::from(b'r'));
            }
            self.str(Some("postgres"));
            self.str(Some("false"));
            for d in deps {
                self.str(Some(&d.to_string()));
            }
            self.str(None);
            self.buf.push(if has_data { 1 } else { 3 });
            self.buf.extend_from_slice(&[0; 8]);
        }
        fn block(&mut self, id: i64, data: &[u8], compression: Compression, chunk: usize) {
            self.buf.push(BLK_DATA);
            self.int(id);
            let payload = match compression {
                Compression::Gzip => {
                    let mut e =
                        flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                    e.write_all(data).expect("compress");
                    e.finish().expect("compress")
                }
                _ => data.to_vec(),
            };
            for c in payload.chunks(chunk) {
                self.int(c.len() as i64);
                self.buf.extend_from_slice(c);
            }
            self.int(0);
        }
    }

    const ROWS_A: &[u8] = b"1\talice\t{\"a\": 1}\n2\tb\\tob\t\\N\n";
    const ROWS_B: &[u8] = b"10\tx\n";

    fn sample(vmin: u8, compression: Compression) -> Vec<u8> {
        let mut w = W::header(vmin, compression);
        w.int(4);
        w.entry(1, "TABLE", "a", 2, None, &[], false);
        w.entry(
            2,
            "TABLE DATA",
            "a",
            3,
            Some("COPY public.a (id, name, doc) FROM stdin;\n"),
            &[1],
            true,
        );
        w.entry(
            3,
            "TABLE DATA",
            "b",
            3,
            Some("COPY public.b (id) FROM stdin;\n"),
            &[],
            true,
        );
        w.entry(4, "INDEX", "a_pkey", 4, None, &[1, 2], false);
        w.block(2, ROWS_A, compression, 7);
        w.block(3, ROWS_B, compression, 1024);
        w.buf
    }

    type Blocks = Vec<(i32, Vec<u8>)>;

    fn read_all(bytes: &[u8]) -> Result<(CustomArchive<&[u8]>, Blocks), ArchiveError> {
        let mut a = CustomArchive::open(bytes)?;
        let mut blocks = Vec::new();
        while let Some(mut b) = a.next_block()? {
            let mut data = Vec::new();
            b.read_to_end(&mut data)
                .map_err(|source| ArchiveError::Io { offset: 0, source })?;
            blocks.push((b.dump_id, data));
        }
        Ok((a, blocks))
    }

    #[test]
    fn reads_every_supported_version_and_compression() {
        for vmin in [12, 13, 14, 15, 16] {
            for compression in [Compression::None, Compression::Gzip] {
                let bytes = sample(vmin, compression);
                let (a, blocks) =
                    read_all(&bytes).unwrap_or_else(|e| panic!("1.{vmin} {compression:?}: {e}"));
                assert_eq!(a.header().version, (1, vmin, 0));
                assert_eq!(a.header().compression, compression);
                assert_eq!(a.header().database, "shop");
                assert_eq!(a.toc().len(), 4);
                let index = &a.toc()[3];
                assert_eq!(
                    (
                        index.desc.as_str(),
                        index.section,
                        index.dependencies.clone()
                    ),
                    ("INDEX", Section::PostData, vec![1, 2])
                );
                assert_eq!(
                    a.toc()[1].copy_stmt.as_deref(),
                    Some("COPY public.a (id, name, doc) FROM stdin;\n")
                );
                assert_eq!(a.toc()[1].data_offset, DataOffset::Unknown);
                assert_eq!(a.toc()[0].data_offset, DataOffset::NoData);
                assert_eq!(blocks, vec![(2, ROWS_A.to_vec()), (3, ROWS_B.to_vec())]);
            }
        }
    }

    #[test]
    fn a_block_not_read_to_the_end_is_skipped() {
        let bytes = sample(14, Compression::Gzip);
        let mut a = CustomArchive::open(&bytes[..]).expect("open");
        {
            let mut first = a.next_block().expect("block").expect("some");
            let mut two = [0u8; 2];
            first.read_exact(&mut two).expect("read");
            assert_eq!(&two, b"1\t");
        }
        let mut second = a.next_block().expect("block").expect("some");
        let mut rest = Vec::new();
        second.read_to_end(&mut rest).expect("read");
        assert_eq!((second.dump_id, rest.as_slice()), (3, ROWS_B));
        drop(second);
        assert!(a.next_block().expect("end").is_none());
    }

    #[test]
    fn truncation_anywhere_is_an_error_not_a_panic() {
        let bytes = sample(16, Compression::Gzip);
        for cut in 0..bytes.len() {
            let result = read_all(&bytes[..cut]);
            assert!(
                result.is_err(),
                "cut at {cut} of {} was accepted",
                bytes.len()
            );
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let bytes = sample(15, Compression::Gzip);
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                let _ = read_all(&b);
            }
        }
    }

    #[test]
    fn unsupported_and_foreign_inputs_are_named() {
        let err = |bytes: &[u8]| match CustomArchive::open(bytes) {
            Err(e) => e.to_string(),
            Ok(_) => "accepted".into(),
        };
        assert!(err(b"\x1f\x8b\x08\x00rest").contains("gzip"));
        assert!(err(b"--\n-- PostgreSQL database dump\n").contains("plain SQL"));
        let mut v = sample(14, Compression::None);
        v[6] = 11;
        assert!(err(&v).contains("1.11"), "{}", err(&v));
        let mut v = sample(14, Compression::None);
        v[10] = 5;
        assert!(err(&v).contains("format code 5"), "{}", err(&v));
        let lz4 = sample(16, Compression::Lz4);
        let mut a = CustomArchive::open(&lz4[..]).expect("header and TOC are readable");
        assert!(matches!(a.next_block(), Err(ArchiveError::Unsupported(m)) if m.contains("lz4")));
    }

    #[test]
    fn copy_terminator_is_stripped_only_at_the_end() {
        let cases: [(&[u8], &[u8]); 6] = [
            (b"1\ta\n2\tb\n\\.\n\n\n", b"1\ta\n2\tb\n"),
            (b"1\ta\n\\.\n", b"1\ta\n"),
            (b"\\.\n\n\n", b""),
            (b"1\ta\n", b"1\ta\n"),
            (b"x\\.\n", b"x\\.\n"),
            (b"", b""),
        ];
        for (input, want) in cases {
            assert_eq!(
                strip_copy_terminator(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn sniffing_uses_content_not_names() {
        assert_eq!(sniff(b"PGDMP\x01\x0e"), BackupFormat::Custom);
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), BackupFormat::Gzip);
        assert_eq!(
            sniff(b"--\n-- PostgreSQL database dump"),
            BackupFormat::PlainSql
        );
        assert_eq!(sniff(&[0, 1, 2, 3]), BackupFormat::Unknown);
        assert_eq!(sniff(b""), BackupFormat::Unknown);
    }
}
