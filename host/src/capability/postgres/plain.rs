//! Streaming splitter for PostgreSQL plain-format dumps (`pg_dump -Fp`).
//!
//! # What this module owns
//!
//! [`PlainReader`] turns the bytes of a plain dump (any [`BufRead`]; the
//! caller wraps gzip decompression around it) into a sequence of
//! [`PlainItem`]s, one at a time, the way `psql` would split the script:
//!
//! * complete SQL statements, each ending with its terminating `;`;
//! * psql meta-command lines (`\restrict KEY`, `\unrestrict KEY`,
//!   `\connect db`, ...);
//! * `COPY ... FROM stdin` blocks: the COPY statement, then the data lines
//!   passed through verbatim in bounded chunks, then the end marker.
//!
//! Splitting uses a real lexer modelled on psql's own (`psqlscan.l`): `--`
//! and nested `/* */` comments, `'...'` strings with `''`, `E'...'` strings
//! with backslash escapes, `"identifiers"`, `$$` and `$tag$` dollar quotes
//! (`$1` is a parameter, `a$b` an identifier), parenthesis depth (a `;`
//! inside `( )`, as in multi-action `CREATE RULE ... DO (...; ...)`, does not
//! end a statement) and psql's `BEGIN ... END` heuristic for SQL-standard
//! function bodies (`CREATE FUNCTION ... BEGIN ATOMIC ...; END;`). It follows
//! `SET standard_conforming_strings` so that `'...'` strings switch to
//! backslash escapes when a (old) dump turns it off.
//!
//! Memory is bounded by the largest single statement (or line) plus one COPY
//! chunk of about [`COPY_CHUNK_BYTES`]; nothing else of the dump is kept.
//! A hard cap (default [`DEFAULT_MAX_BYTES`], PostgreSQL's own 1 GiB limit on
//! a query or a COPY line) turns a corrupt dump without line ends into an
//! error instead of unbounded memory use.
//!
//! # What it deliberately does not do
//!
//! * It executes nothing and does not talk to a server.
//! * It does not judge meta-commands: deciding that `\connect` (from
//!   `pg_dump -C` or pg_dumpall) is unacceptable, or that `\restrict` is
//!   skipped, is the caller's business.
//! * It does not track session state beyond what lexing needs
//!   (`standard_conforming_strings`); [`is_session_setting`] only tells the
//!   caller which statements it must replay on every connection.
//! * It does not validate SQL: whatever a statement contains goes to the
//!   server, which reports syntax errors.
//! * Statements and meta-commands must be UTF-8 (dump taken with client
//!   encoding UTF8); COPY data is passed through as bytes in any encoding.

use std::io::{self, BufRead, Read};

/// Target size of one [`PlainItem::CopyData`] chunk: chunks hold whole lines
/// and never exceed this, except a single line longer than it, which is
/// passed alone.
pub const COPY_CHUNK_BYTES: usize = 64 * 1024;

/// Default cap on one statement, one meta-command line and one COPY data
/// line: 1 GiB, PostgreSQL's own limit on a query string or a COPY row.
pub const DEFAULT_MAX_BYTES: usize = 1024 * 1024 * 1024;

/// One piece of a plain dump, in dump order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlainItem {
    /// One complete SQL statement including its terminating `;`. Whitespace
    /// and comments between statements are dropped; comments inside a
    /// statement are kept verbatim. Empty statements (a lone `;`) are
    /// dropped.
    Statement(String),
    /// A psql meta-command such as `\restrict KEY`, `\unrestrict KEY` or
    /// `\connect db`: from the backslash to the end of its line, without the
    /// line end (`\n` or `\r\n`).
    MetaCommand(String),
    /// The start of a `COPY ... FROM stdin` block: the COPY statement text,
    /// including its `;`. [`PlainItem::CopyData`] chunks and one
    /// [`PlainItem::CopyEnd`] follow.
    CopyStart(String),
    /// A chunk of COPY data: whole lines only, each ending with `\n` (line
    /// ends are passed through unchanged, so `\r\n` stays `\r\n`), at most
    /// [`COPY_CHUNK_BYTES`] unless one line alone is longer, never empty and
    /// never including the terminating `\.` line. Bytes are not necessarily
    /// UTF-8.
    CopyData(Vec<u8>),
    /// The `\.` line ended the COPY block.
    CopyEnd,
}

/// Why a plain dump could not be split. Every variant names a line.
#[derive(Debug, thiserror::Error)]
pub enum PlainError {
    /// Reading the input failed (for example corrupt gzip data).
    #[error("reading the plain dump failed at line {line}: {source}")]
    Io {
        /// The line being read.
        line: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The input ended inside a statement, string, quoted identifier, dollar
    /// quote or block comment.
    #[error(
        "the plain dump ends inside an unterminated {what} \
         (in the statement or comment that starts at line {line_started})"
    )]
    UnterminatedStatement {
        /// Line where the unfinished statement (or, between statements, the
        /// unfinished comment) starts.
        line_started: u64,
        /// What is left open, with the line where it was opened.
        what: String,
    },
    /// The input ended inside a `COPY ... FROM stdin` block, before its `\.`
    /// line.
    #[error(
        "the plain dump ends inside the COPY data of the statement at line \
         {line_started}: no terminating `\\.` line"
    )]
    UnterminatedCopy {
        /// Line of the `COPY ... FROM stdin;` statement.
        line_started: u64,
    },
    /// A statement or meta-command is not valid UTF-8.
    #[error(
        "the {what} starting at line {line_started} is not valid UTF-8 \
         (first bad byte at offset {offset}); take the dump with client \
         encoding UTF8"
    )]
    InvalidUtf8 {
        /// Line where the statement or meta-command starts.
        line_started: u64,
        /// `"SQL statement"`, `"COPY statement"` or `"meta-command"`.
        what: &'static str,
        /// Byte offset of the first invalid byte within it.
        offset: usize,
    },
    /// A backslash (a psql meta-command) outside quotes in the middle of an
    /// unfinished SQL statement.
    #[error(
        "psql meta-command (`\\`) at line {line} inside the unfinished SQL \
         statement that starts at line {line_started}"
    )]
    MetaCommandInStatement {
        /// Line of the backslash.
        line: u64,
        /// Line where the unfinished statement starts.
        line_started: u64,
    },
    /// A single line is longer than the cap.
    #[error("line {line} of the plain dump is longer than the {limit}-byte limit")]
    LineTooLong {
        /// The line.
        line: u64,
        /// The cap in bytes.
        limit: usize,
    },
    /// A single statement is longer than the cap.
    #[error(
        "the SQL statement starting at line {line_started} is longer than \
         the {limit}-byte limit"
    )]
    StatementTooLong {
        /// Line where the statement starts.
        line_started: u64,
        /// The cap in bytes.
        limit: usize,
    },
    /// [`PlainReader::next_item`] was called again after it returned an
    /// error.
    #[error("the plain dump reader was used again after an error (at line {line})")]
    AfterError {
        /// Line reached when the first error happened.
        line: u64,
    },
}

/// Streaming splitter over a plain dump; see the [module docs](self).
pub struct PlainReader<R: BufRead> {
    reader: R,
    max_bytes: usize,
    /// Lines read so far (SQL and COPY data).
    lines_read: u64,
    /// The SQL line being lexed and how far.
    line: Vec<u8>,
    pos: usize,
    /// Number of `line`.
    line_no: u64,
    lex: Lexer,
    mode: Mode,
    /// A COPY data line that did not fit in the previous chunk.
    carry: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sql,
    Copy { started_at: u64, end_pending: bool },
    Done,
    Failed,
}

impl<R: BufRead> PlainReader<R> {
    /// A reader with the default cap ([`DEFAULT_MAX_BYTES`]).
    pub fn new(reader: R) -> Self {
        Self::with_max_bytes(reader, DEFAULT_MAX_BYTES)
    }

    /// A reader that fails with [`PlainError::LineTooLong`] or
    /// [`PlainError::StatementTooLong`] instead of buffering more than
    /// `max_bytes` for one line or one statement.
    pub fn with_max_bytes(reader: R, max_bytes: usize) -> Self {
        Self {
            reader,
            max_bytes,
            lines_read: 0,
            line: Vec::new(),
            pos: 0,
            line_no: 0,
            lex: Lexer::new(),
            mode: Mode::Sql,
            carry: Vec::new(),
        }
    }

    /// The next item, or `Ok(None)` at a clean end of input. After an error,
    /// every further call returns [`PlainError::AfterError`].
    pub fn next_item(&mut self) -> Result<Option<PlainItem>, PlainError> {
        let result = self.step();
        if result.is_err() && self.mode != Mode::Failed {
            self.mode = Mode::Failed;
        }
        result
    }

    /// 1-based number of the last line read so far (0 before the first);
    /// for error messages.
    pub fn line(&self) -> u64 {
        self.lines_read
    }

    fn step(&mut self) -> Result<Option<PlainItem>, PlainError> {
        loop {
            match self.mode {
                Mode::Done => return Ok(None),
                Mode::Failed => {
                    return Err(PlainError::AfterError {
                        line: self.lines_read,
                    });
                }
                Mode::Copy {
                    started_at,
                    end_pending,
                } => return self.copy_step(started_at, end_pending).map(Some),
                Mode::Sql => {}
            }
            if self.pos >= self.line.len() && !self.read_sql_line()? {
                self.lex.at_eof()?;
                self.mode = Mode::Done;
                return Ok(None);
            }
            let scanned = self
                .lex
                .scan(&self.line, &mut self.pos, self.line_no, self.max_bytes)?;
            if let Some(scanned) = scanned {
                return self.finish(scanned).map(Some);
            }
        }
    }

    /// Reads the next line into `self.line`; false at end of input.
    fn read_sql_line(&mut self) -> Result<bool, PlainError> {
        // Do not keep a huge buffer alive after one huge line.
        if self.line.capacity() > 4 * COPY_CHUNK_BYTES {
            self.line = Vec::new();
        }
        self.line.clear();
        self.pos = 0;
        let number = self.lines_read.saturating_add(1);
        let n = read_line(&mut self.reader, &mut self.line, self.max_bytes, number)?;
        if n == 0 {
            return Ok(false);
        }
        self.lines_read = number;
        self.line_no = number;
        Ok(true)
    }

    fn finish(&mut self, scanned: Scanned) -> Result<PlainItem, PlainError> {
        match scanned {
            Scanned::Meta { text, line } => String::from_utf8(text)
                .map(PlainItem::MetaCommand)
                .map_err(|e| PlainError::InvalidUtf8 {
                    line_started: line,
                    what: "meta-command",
                    offset: e.utf8_error().valid_up_to(),
                }),
            Scanned::Statement {
                text,
                line_started,
                copy_in,
            } => {
                let what = if copy_in {
                    "COPY statement"
                } else {
                    "SQL statement"
                };
                let text = String::from_utf8(text).map_err(|e| PlainError::InvalidUtf8 {
                    line_started,
                    what,
                    offset: e.utf8_error().valid_up_to(),
                })?;
                if copy_in {
                    self.mode = Mode::Copy {
                        started_at: line_started,
                        end_pending: false,
                    };
                    return Ok(PlainItem::CopyStart(text));
                }
                if let Some(on) = std_strings_setting(&text) {
                    self.lex.std_strings = on;
                }
                Ok(PlainItem::Statement(text))
            }
        }
    }

    /// One step of COPY data mode. The rest of the SQL line that held the
    /// COPY statement stays in `self.line` and is lexed after the block, as
    /// psql does.
    fn copy_step(&mut self, started_at: u64, end_pending: bool) -> Result<PlainItem, PlainError> {
        if end_pending {
            self.mode = Mode::Sql;
            return Ok(PlainItem::CopyEnd);
        }
        let mut chunk = std::mem::take(&mut self.carry);
        if chunk.len() >= COPY_CHUNK_BYTES {
            return Ok(PlainItem::CopyData(chunk));
        }
        chunk.reserve(COPY_CHUNK_BYTES.saturating_sub(chunk.len()));
        loop {
            let start = chunk.len();
            let number = self.lines_read.saturating_add(1);
            let n = read_line(&mut self.reader, &mut chunk, self.max_bytes, number)?;
            if n == 0 {
                return Err(PlainError::UnterminatedCopy {
                    line_started: started_at,
                });
            }
            self.lines_read = number;
            let got = chunk.get(start..).unwrap_or_default();
            if matches!(got, b"\\.\n" | b"\\.\r\n" | b"\\.") {
                chunk.truncate(start);
                if chunk.is_empty() {
                    self.mode = Mode::Sql;
                    return Ok(PlainItem::CopyEnd);
                }
                self.mode = Mode::Copy {
                    started_at,
                    end_pending: true,
                };
                return Ok(PlainItem::CopyData(chunk));
            }
            if !got.ends_with(b"\n") {
                // Only the last line of the input lacks a line end, and it
                // is not `\.`.
                return Err(PlainError::UnterminatedCopy {
                    line_started: started_at,
                });
            }
            if chunk.len() >= COPY_CHUNK_BYTES {
                if chunk.len() > COPY_CHUNK_BYTES && start > 0 {
                    self.carry = chunk.split_off(start);
                }
                return Ok(PlainItem::CopyData(chunk));
            }
        }
    }
}

/// Appends one line (up to and including `\n`) to `buf`; 0 at end of input.
fn read_line<R: BufRead>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max_bytes: usize,
    line: u64,
) -> Result<usize, PlainError> {
    let cap = u64::try_from(max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let n = reader
        .by_ref()
        .take(cap)
        .read_until(b'\n', buf)
        .map_err(|source| PlainError::Io { line, source })?;
    if n > max_bytes {
        return Err(PlainError::LineTooLong {
            line,
            limit: max_bytes,
        });
    }
    Ok(n)
}

/// Whether `stmt` changes session state that every connection restoring
/// the dump must replay before running other statements: any `SET ...` or
/// `RESET ...` (including `SET ROLE` and `SET SESSION AUTHORIZATION`) and
/// `SELECT [pg_catalog.]set_config(...)`, which pg_dump uses for
/// `search_path`.
pub fn is_session_setting(stmt: &str) -> bool {
    let (first, rest) = first_word(stmt);
    if first.eq_ignore_ascii_case("set") || first.eq_ignore_ascii_case("reset") {
        return true;
    }
    if !first.eq_ignore_ascii_case("select") {
        return false;
    }
    let rest = rest.trim_start();
    let rest = strip_prefix_ignore_case(rest, "pg_catalog.").unwrap_or(rest);
    strip_prefix_ignore_case(rest, "set_config").is_some_and(|r| r.trim_start().starts_with('('))
}

/// The leading keyword of `s` (ASCII letters, digits, `_`) and what follows.
fn first_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    s.split_at_checked(end).unwrap_or((s, ""))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// `Some(on)` when `stmt` sets `standard_conforming_strings` (which decides
/// whether backslashes escape inside `'...'`), `None` otherwise.
fn std_strings_setting(stmt: &str) -> Option<bool> {
    let lower = stmt.to_ascii_lowercase();
    let body = lower.trim().trim_end_matches(';');
    let mut words = body
        .split(|c: char| c.is_ascii_whitespace() || c == '=')
        .filter(|w| !w.is_empty());
    match words.next()? {
        "reset" => match words.next()? {
            "standard_conforming_strings" | "all" => Some(true),
            _ => None,
        },
        "set" => {
            let mut name = words.next()?;
            if name == "session" || name == "local" {
                name = words.next()?;
            }
            if name != "standard_conforming_strings" {
                return None;
            }
            let mut value = words.next()?;
            if value == "to" {
                value = words.next()?;
            }
            match value.trim_matches(|c| c == '\'' || c == '"') {
                "on" | "true" | "yes" | "1" | "default" => Some(true),
                "off" | "false" | "no" | "0" => Some(false),
                _ => None,
            }
        }
        _ => None,
    }
}

/// What [`Lexer::scan`] found.
enum Scanned {
    Statement {
        text: Vec<u8>,
        line_started: u64,
        copy_in: bool,
    },
    Meta {
        text: Vec<u8>,
        line: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuoteKind {
    /// `'...'` with `''` (standard_conforming_strings on, `B''`, `X''`,
    /// `U&''`).
    Standard,
    /// `E'...'` (or `'...'` with standard_conforming_strings off): `\`
    /// escapes the next byte, `''` is a quote.
    Escape,
    /// `"identifier"` with `""`.
    Ident,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Normal,
    BlockComment { depth: u32, opened_at: u64 },
    Quote { kind: QuoteKind, opened_at: u64 },
    Dollar { tag: Vec<u8>, opened_at: u64 },
}

/// Whether the statement so far is `COPY ... FROM STDIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyScan {
    /// No token yet.
    Start,
    NotCopy,
    /// `COPY`, waiting for a top-level `FROM`.
    AwaitFrom,
    /// `COPY ... FROM`, the next token decides.
    SawFrom,
    FromStdin,
}

/// Lexer state that persists across lines.
struct Lexer {
    state: State,
    /// Bytes of the current statement from its first significant byte.
    stmt: Vec<u8>,
    in_stmt: bool,
    stmt_line: u64,
    paren_depth: u32,
    /// psql's heuristic for `CREATE FUNCTION ... BEGIN ATOMIC ... END`.
    begin_depth: u32,
    ident_count: u32,
    idents: [u8; 4],
    copy: CopyScan,
    /// `standard_conforming_strings` (on since PostgreSQL 9.1).
    std_strings: bool,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

fn is_dollar_tag_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

fn at(line: &[u8], i: usize) -> Option<u8> {
    line.get(i).copied()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

impl Lexer {
    fn new() -> Self {
        Self {
            state: State::Normal,
            stmt: Vec::new(),
            in_stmt: false,
            stmt_line: 0,
            paren_depth: 0,
            begin_depth: 0,
            ident_count: 0,
            idents: [0; 4],
            copy: CopyScan::Start,
            std_strings: true,
        }
    }

    /// Lexes `line` from `*pos`. Returns a statement or meta-command as soon
    /// as one is complete (leaving `*pos` just after it), or `None` once the
    /// whole line is consumed.
    fn scan(
        &mut self,
        line: &[u8],
        pos: &mut usize,
        line_no: u64,
        max_bytes: usize,
    ) -> Result<Option<Scanned>, PlainError> {
        let len = line.len();
        let mut i = *pos;
        // Where the current statement's bytes start in this line.
        let mut seg = if self.in_stmt { Some(i) } else { None };
        while i < len {
            match &mut self.state {
                State::BlockComment { depth, .. } => {
                    let rest = line.get(i..).unwrap_or_default();
                    match rest.windows(2).position(|w| w == b"/*" || w == b"*/") {
                        Some(off) => {
                            let opens = rest.get(off) == Some(&b'/');
                            i = i.saturating_add(off).saturating_add(2);
                            if opens {
                                *depth = depth.saturating_add(1);
                            } else {
                                *depth = depth.saturating_sub(1);
                                if *depth == 0 {
                                    self.state = State::Normal;
                                }
                            }
                        }
                        None => i = len,
                    }
                }
                State::Quote { kind, .. } => {
                    let kind = *kind;
                    let close = if kind == QuoteKind::Ident {
                        b'"'
                    } else {
                        b'\''
                    };
                    let escapes = kind == QuoteKind::Escape;
                    let rest = line.get(i..).unwrap_or_default();
                    match rest
                        .iter()
                        .position(|&c| c == close || (escapes && c == b'\\'))
                    {
                        None => i = len,
                        Some(off) => {
                            let j = i.saturating_add(off);
                            if at(line, j) == Some(b'\\') || at(line, j + 1) == Some(close) {
                                // `\x` in an escape string, or a doubled quote.
                                i = j.saturating_add(2).min(len);
                            } else {
                                i = j + 1;
                                self.state = State::Normal;
                            }
                        }
                    }
                }
                State::Dollar { tag, .. } => {
                    let rest = line.get(i..).unwrap_or_default();
                    match find(rest, tag) {
                        Some(off) => {
                            i = i.saturating_add(off).saturating_add(tag.len());
                            self.state = State::Normal;
                        }
                        None => i = len,
                    }
                }
                State::Normal => {
                    let Some(b) = at(line, i) else { break };
                    if is_space(b) {
                        i += 1;
                        continue;
                    }
                    if b == b'-' && at(line, i + 1) == Some(b'-') {
                        // To the end of the line; the newline is whitespace.
                        i = line
                            .get(i..)
                            .and_then(|rest| rest.iter().position(|&c| c == b'\n'))
                            .map_or(len, |off| i + off);
                        continue;
                    }
                    if b == b'/' && at(line, i + 1) == Some(b'*') {
                        self.state = State::BlockComment {
                            depth: 1,
                            opened_at: line_no,
                        };
                        i += 2;
                        continue;
                    }
                    if b == b'\\' {
                        if self.in_stmt {
                            return Err(PlainError::MetaCommandInStatement {
                                line: line_no,
                                line_started: self.stmt_line,
                            });
                        }
                        let text = trim_line_end(line.get(i..).unwrap_or_default()).to_vec();
                        *pos = len;
                        return Ok(Some(Scanned::Meta {
                            text,
                            line: line_no,
                        }));
                    }
                    if b == b';' && !self.in_stmt {
                        // An empty statement: nothing to send.
                        i += 1;
                        continue;
                    }
                    if !self.in_stmt {
                        self.in_stmt = true;
                        self.stmt_line = line_no;
                        seg = Some(i);
                    }
                    i = self.token(line, i, line_no);
                    if b == b';' && self.paren_depth == 0 && self.begin_depth == 0 {
                        let start = seg.unwrap_or(i);
                        self.push(line.get(start..i).unwrap_or_default(), max_bytes)?;
                        *pos = i;
                        return Ok(Some(self.end_statement()));
                    }
                }
            }
        }
        if let Some(start) = seg {
            self.push(line.get(start..len).unwrap_or_default(), max_bytes)?;
        }
        *pos = len;
        Ok(None)
    }

    /// Lexes one token starting with the significant byte at `i` in Normal
    /// state; returns the index after it.
    fn token(&mut self, line: &[u8], i: usize, line_no: u64) -> usize {
        let Some(b) = at(line, i) else {
            return i.saturating_add(1);
        };
        let quote = |kind| State::Quote {
            kind,
            opened_at: line_no,
        };
        match b {
            b'\'' => {
                self.other_token();
                self.state = quote(if self.std_strings {
                    QuoteKind::Standard
                } else {
                    QuoteKind::Escape
                });
                i + 1
            }
            b'"' => {
                self.other_token();
                self.state = quote(QuoteKind::Ident);
                i + 1
            }
            b'$' => {
                self.other_token();
                let mut j = i + 1;
                if at(line, j).is_some_and(|c| c.is_ascii_digit()) {
                    // `$1`: a positional parameter, never a dollar quote.
                    while at(line, j).is_some_and(|c| c.is_ascii_digit()) {
                        j += 1;
                    }
                    return j;
                }
                if at(line, j).is_some_and(is_ident_start) {
                    j += 1;
                    while at(line, j).is_some_and(is_dollar_tag_cont) {
                        j += 1;
                    }
                }
                if at(line, j) == Some(b'$') {
                    self.state = State::Dollar {
                        tag: line.get(i..=j).unwrap_or_default().to_vec(),
                        opened_at: line_no,
                    };
                    j + 1
                } else {
                    // A lone `$`: not a quote.
                    j
                }
            }
            b'(' => {
                self.other_token();
                self.paren_depth = self.paren_depth.saturating_add(1);
                i + 1
            }
            b')' => {
                self.other_token();
                self.paren_depth = self.paren_depth.saturating_sub(1);
                i + 1
            }
            c if c.is_ascii_digit() => {
                self.other_token();
                let mut j = i + 1;
                while at(line, j)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
                {
                    j += 1;
                }
                j
            }
            c if is_ident_start(c) => {
                let mut j = i + 1;
                // `$` continues an identifier: `a$b` is one word, not a quote.
                while at(line, j).is_some_and(is_ident_cont) {
                    j += 1;
                }
                let word = line.get(i..j).unwrap_or_default();
                let next = at(line, j);
                match (word, next) {
                    ([b'e' | b'E'], Some(b'\'')) => {
                        self.other_token();
                        self.state = quote(QuoteKind::Escape);
                        j + 1
                    }
                    ([b'b' | b'B' | b'x' | b'X'], Some(b'\'')) => {
                        self.other_token();
                        self.state = quote(QuoteKind::Standard);
                        j + 1
                    }
                    ([b'u' | b'U'], Some(b'&')) if at(line, j + 1) == Some(b'\'') => {
                        self.other_token();
                        self.state = quote(QuoteKind::Standard);
                        j + 2
                    }
                    _ => {
                        self.word_token(word);
                        j
                    }
                }
            }
            _ => {
                self.other_token();
                i + 1
            }
        }
    }

    /// A token that is not an identifier or keyword.
    fn other_token(&mut self) {
        self.copy = match self.copy {
            CopyScan::Start => CopyScan::NotCopy,
            CopyScan::SawFrom => CopyScan::AwaitFrom,
            other => other,
        };
    }

    /// An identifier or keyword.
    fn word_token(&mut self, word: &[u8]) {
        let is = |kw: &str| word.eq_ignore_ascii_case(kw.as_bytes());
        let top = self.paren_depth == 0;
        self.copy = match self.copy {
            CopyScan::Start if is("copy") => CopyScan::AwaitFrom,
            CopyScan::Start => CopyScan::NotCopy,
            CopyScan::AwaitFrom | CopyScan::SawFrom if top && is("from") => CopyScan::SawFrom,
            CopyScan::SawFrom if is("stdin") => CopyScan::FromStdin,
            CopyScan::SawFrom => CopyScan::AwaitFrom,
            other => other,
        };

        // psql's heuristic (psqlscan.l): in a statement that starts with
        // CREATE [OR REPLACE] {FUNCTION|PROCEDURE}, top-level BEGIN ... END
        // (and CASE ... END inside it) hold back the terminating `;`.
        if self.ident_count == 0 {
            self.idents = [0; 4];
        }
        if ["create", "function", "procedure", "or", "replace"]
            .iter()
            .any(|kw| is(kw))
        {
            let slot = usize::try_from(self.ident_count)
                .ok()
                .and_then(|n| self.idents.get_mut(n));
            if let (Some(slot), Some(first)) = (slot, word.first()) {
                *slot = first.to_ascii_lowercase();
            }
        }
        self.ident_count = self.ident_count.saturating_add(1);
        let [a, b, c, d] = self.idents;
        let create_routine = a == b'c'
            && (b == b'f' || b == b'p' || (b == b'o' && c == b'r' && (d == b'f' || d == b'p')));
        if create_routine && top {
            if is("begin") {
                self.begin_depth = self.begin_depth.saturating_add(1);
            } else if is("case") {
                if self.begin_depth >= 1 {
                    self.begin_depth = self.begin_depth.saturating_add(1);
                }
            } else if is("end") {
                self.begin_depth = self.begin_depth.saturating_sub(1);
            }
        }
    }

    fn push(&mut self, bytes: &[u8], max_bytes: usize) -> Result<(), PlainError> {
        if self.stmt.len().saturating_add(bytes.len()) > max_bytes {
            return Err(PlainError::StatementTooLong {
                line_started: self.stmt_line,
                limit: max_bytes,
            });
        }
        self.stmt.extend_from_slice(bytes);
        Ok(())
    }

    fn end_statement(&mut self) -> Scanned {
        let scanned = Scanned::Statement {
            text: std::mem::take(&mut self.stmt),
            line_started: self.stmt_line,
            copy_in: self.copy == CopyScan::FromStdin,
        };
        self.in_stmt = false;
        self.paren_depth = 0;
        self.begin_depth = 0;
        self.ident_count = 0;
        self.copy = CopyScan::Start;
        scanned
    }

    /// At end of input: an error if anything is left open.
    fn at_eof(&self) -> Result<(), PlainError> {
        let what = match &self.state {
            State::Normal if !self.in_stmt => return Ok(()),
            State::Normal if self.paren_depth > 0 => {
                "SQL statement: a `(` is never closed, so no `;` ends it".to_owned()
            }
            State::Normal if self.begin_depth > 0 => {
                "SQL statement: a function body `BEGIN` has no matching `END;`".to_owned()
            }
            State::Normal => "SQL statement: no terminating `;`".to_owned(),
            State::BlockComment { opened_at, .. } => {
                format!("block comment `/* ... */` opened at line {opened_at}")
            }
            State::Quote { kind, opened_at } => {
                let kind = match kind {
                    QuoteKind::Standard => "string literal `'...'`",
                    QuoteKind::Escape => "escape string literal `E'...'`",
                    QuoteKind::Ident => "quoted identifier `\"...\"`",
                };
                format!("{kind} opened at line {opened_at}")
            }
            State::Dollar { tag, opened_at } => format!(
                "dollar-quoted string `{}` opened at line {opened_at}",
                String::from_utf8_lossy(tag)
            ),
        };
        // Between statements only a block comment can be left open.
        let line_started = match &self.state {
            State::BlockComment { opened_at, .. } if !self.in_stmt => *opened_at,
            _ => self.stmt_line,
        };
        Err(PlainError::UnterminatedStatement { line_started, what })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor};

    fn st(s: &str) -> PlainItem {
        PlainItem::Statement(s.to_owned())
    }
    fn meta(s: &str) -> PlainItem {
        PlainItem::MetaCommand(s.to_owned())
    }
    fn copy(s: &str) -> PlainItem {
        PlainItem::CopyStart(s.to_owned())
    }
    fn data(b: &[u8]) -> PlainItem {
        PlainItem::CopyData(b.to_vec())
    }
    use PlainItem::CopyEnd as END;

    fn collect<R: BufRead>(reader: R) -> Result<Vec<PlainItem>, PlainError> {
        let mut r = PlainReader::new(reader);
        let mut out = Vec::new();
        while let Some(item) = r.next_item()? {
            out.push(item);
        }
        // Clean end stays clean.
        assert!(r.next_item()?.is_none());
        Ok(out)
    }

    /// Splits `input` read all at once and one byte at a time (both must
    /// agree) and compares with `expected`.
    fn check(input: &[u8], expected: &[PlainItem]) {
        let whole = collect(Cursor::new(input))
            .unwrap_or_else(|e| panic!("input {:?}: {e}", String::from_utf8_lossy(input)));
        assert_eq!(
            whole,
            expected,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
        let tiny = collect(BufReader::with_capacity(1, Cursor::new(input)))
            .unwrap_or_else(|e| panic!("byte-wise: {e}"));
        assert_eq!(
            tiny,
            expected,
            "byte-wise input {:?}",
            String::from_utf8_lossy(input)
        );
    }

    fn error(input: &[u8]) -> PlainError {
        match collect(Cursor::new(input)) {
            Ok(items) => panic!("expected an error, got {items:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn plain_statements_and_dropped_whitespace_and_comments() {
        check(
            b"--\n-- PostgreSQL database dump\n--\n\nSET a = 1;\n\n  SELECT 1;  SELECT\n  2;\n",
            &[st("SET a = 1;"), st("SELECT 1;"), st("SELECT\n  2;")],
        );
    }

    #[test]
    fn semicolon_in_line_comment() {
        check(
            b"SELECT 1 -- not; the end, it's \"odd\n  + 1;\n-- between; 'x\nSELECT 2;",
            &[
                st("SELECT 1 -- not; the end, it's \"odd\n  + 1;"),
                st("SELECT 2;"),
            ],
        );
    }

    #[test]
    fn semicolon_in_nested_block_comment() {
        check(
            b"/* lead; /* in; */ still; */ SELECT /* a /* b; */ c; */ 1;\nSELECT 2;\n",
            &[st("SELECT /* a /* b; */ c; */ 1;"), st("SELECT 2;")],
        );
        // `*/*` closes then opens; `/*/` only opens.
        check(b"SELECT 1 /*/ x */;\n", &[st("SELECT 1 /*/ x */;")]);
    }

    #[test]
    fn semicolon_in_standard_string_with_doubled_quote() {
        check(
            b"COMMENT ON TABLE t IS 'it''s; a table';\nSELECT 'a\\'; SELECT 2;\n",
            &[
                st("COMMENT ON TABLE t IS 'it''s; a table';"),
                // standard_conforming_strings on: `\` is an ordinary char.
                st("SELECT 'a\\';"),
                st("SELECT 2;"),
            ],
        );
    }

    #[test]
    fn escape_string_backslash_quote() {
        check(
            b"SELECT E'\\';', e'\\\\'; SELECT E'a''b;';\n",
            &[st("SELECT E'\\';', e'\\\\';"), st("SELECT E'a''b;';")],
        );
    }

    #[test]
    fn e_prefix_only_as_a_standalone_word() {
        // `somee'...'` is identifier + standard string: `\` does not escape.
        check(
            b"SELECT somee'x\\'; SELECT 2;",
            &[st("SELECT somee'x\\';"), st("SELECT 2;")],
        );
        // B'', X'', U&'' never treat `\` as an escape.
        check(
            b"SELECT B'1', X'\\', U&'d\\0061t\\'; SELECT 2;",
            &[st("SELECT B'1', X'\\', U&'d\\0061t\\';"), st("SELECT 2;")],
        );
    }

    #[test]
    fn semicolon_in_quoted_identifier() {
        check(
            b"CREATE TABLE \"a;\"\"b\" (\"x;\" int);\nSELECT 2;\n",
            &[
                st("CREATE TABLE \"a;\"\"b\" (\"x;\" int);"),
                st("SELECT 2;"),
            ],
        );
    }

    #[test]
    fn semicolon_in_dollar_quotes() {
        check(
            b"CREATE FUNCTION f() RETURNS int AS $$ select 1; $$ LANGUAGE sql;\nSELECT $$a'b\"c;$$;\n",
            &[
                st("CREATE FUNCTION f() RETURNS int AS $$ select 1; $$ LANGUAGE sql;"),
                st("SELECT $$a'b\"c;$$;"),
            ],
        );
    }

    #[test]
    fn nested_tagged_dollar_quotes() {
        let f = "CREATE FUNCTION g() RETURNS text LANGUAGE plpgsql AS $outer$\n\
                 BEGIN\n  EXECUTE $inner$ SELECT 1; $x$ $$ $inner$;\n  RETURN 'a;'; -- $outer\n\
                 END;\n$outer$;";
        check(
            format!("{f}\nSELECT 2;\n").as_bytes(),
            &[st(f), st("SELECT 2;")],
        );
        // Non-ASCII and underscore tags.
        check(
            "SELECT $é_1$;$é_1$, $_$;$_$;".as_bytes(),
            &[st("SELECT $é_1$;$é_1$, $_$;$_$;")],
        );
    }

    #[test]
    fn positional_parameters_are_not_dollar_quotes() {
        check(
            b"PREPARE q(int, int) AS SELECT $1 + $2$;\nSELECT $10;\n",
            &[
                st("PREPARE q(int, int) AS SELECT $1 + $2$;"),
                st("SELECT $10;"),
            ],
        );
    }

    #[test]
    fn dollar_inside_identifier_is_not_a_quote() {
        check(
            b"SELECT a$b$ FROM x$$; SELECT 2;\n",
            &[st("SELECT a$b$ FROM x$$;"), st("SELECT 2;")],
        );
        // A lone `$` before a non-tag character.
        check(
            b"SELECT $ ; SELECT 2;",
            &[st("SELECT $ ;"), st("SELECT 2;")],
        );
    }

    #[test]
    fn meta_commands_between_statements() {
        check(
            b"\\restrict abc123\n\nSET x = 1;\n\\connect -reuse-previous=on \"dbname='a b'\"\r\nSELECT 1; \\unrestrict abc123\n",
            &[
                meta("\\restrict abc123"),
                st("SET x = 1;"),
                meta("\\connect -reuse-previous=on \"dbname='a b'\""),
                st("SELECT 1;"),
                meta("\\unrestrict abc123"),
            ],
        );
        // A backslash at line start inside a string or body is content.
        check(
            b"SELECT 'a\n\\restrict x\n';\nSELECT $$\n\\x\n$$;\n",
            &[st("SELECT 'a\n\\restrict x\n';"), st("SELECT $$\n\\x\n$$;")],
        );
    }

    #[test]
    fn copy_block_with_tricky_data() {
        let mut input = Vec::new();
        input.extend_from_slice(b"COPY public.t (id, s) FROM stdin;\n");
        let rows: &[u8] =
            b"1\ta\\.b\n2\t;\n3\t'$$\"\\\\\n4\t\\.x\n5\t\xc3\xbc\xff\xfe\n6\t \\.\n7\t\\N\n";
        input.extend_from_slice(rows);
        input.extend_from_slice(b"\\.\nSELECT 1;\n");
        check(
            &input,
            &[
                copy("COPY public.t (id, s) FROM stdin;"),
                data(rows),
                END,
                st("SELECT 1;"),
            ],
        );
    }

    #[test]
    fn copy_empty_and_variants() {
        check(
            b"copy t from STDIN;\n\\.\nCOPY t (a, \"b c\") FROM stdin WITH (FORMAT text);\nx\n\\.\n",
            &[
                copy("copy t from STDIN;"),
                END,
                copy("COPY t (a, \"b c\") FROM stdin WITH (FORMAT text);"),
                data(b"x\n"),
                END,
            ],
        );
    }

    #[test]
    fn copy_lookalikes_are_statements() {
        check(
            b"COPY t TO stdout;\nCOPY t FROM '/tmp/stdin';\nSELECT 'COPY x FROM stdin;';\nCOPY (SELECT * FROM stdin) TO stdout;\n",
            &[
                st("COPY t TO stdout;"),
                st("COPY t FROM '/tmp/stdin';"),
                st("SELECT 'COPY x FROM stdin;';"),
                st("COPY (SELECT * FROM stdin) TO stdout;"),
            ],
        );
    }

    #[test]
    fn copy_ended_by_terminator_at_eof_without_newline() {
        check(
            b"COPY t FROM stdin;\n1\n2\n\\.",
            &[copy("COPY t FROM stdin;"), data(b"1\n2\n"), END],
        );
    }

    #[test]
    fn crlf_everywhere() {
        check(
            b"SET a = 1;\r\n-- c\r\nCOPY t FROM stdin;\r\n1\tx\r\n\\.\r\nSELECT\r\n 2;\r\n",
            &[
                st("SET a = 1;"),
                copy("COPY t FROM stdin;"),
                data(b"1\tx\r\n"),
                END,
                st("SELECT\r\n 2;"),
            ],
        );
    }

    #[test]
    fn sql_after_copy_statement_on_the_same_line_runs_after_the_block() {
        // psql reads COPY data from the following lines, then lexes the rest
        // of the COPY line.
        check(
            b"COPY t FROM stdin; SELECT 1;\na\n\\.\nSELECT 2;\n",
            &[
                copy("COPY t FROM stdin;"),
                data(b"a\n"),
                END,
                st("SELECT 1;"),
                st("SELECT 2;"),
            ],
        );
    }

    #[test]
    fn begin_atomic_function_bodies() {
        let f = "CREATE FUNCTION public.add(a integer, b integer) RETURNS integer\n    \
                 LANGUAGE sql\n    BEGIN ATOMIC\n SELECT (a + b);\n SELECT CASE WHEN a > 0 THEN 1 ELSE 2 END;\nEND;";
        let p = "CREATE OR REPLACE PROCEDURE p()\n LANGUAGE sql\n BEGIN ATOMIC\n  INSERT INTO t VALUES (1);\n END;";
        check(
            format!("{f}\n\n{p}\nBEGIN;\nEND;\n").as_bytes(),
            &[st(f), st(p), st("BEGIN;"), st("END;")],
        );
    }

    #[test]
    fn semicolons_inside_parentheses() {
        let rule = "CREATE RULE r AS\n    ON INSERT TO public.t DO ( NOTIFY a;\n NOTIFY b;\n);";
        check(
            format!("{rule}\nSELECT 1;\n").as_bytes(),
            &[st(rule), st("SELECT 1;")],
        );
    }

    #[test]
    fn standard_conforming_strings_off_enables_backslash_escapes() {
        check(
            b"SET standard_conforming_strings = off;\nSELECT '\\';';\nSET standard_conforming_strings TO 'on';\nSELECT '\\'; SELECT 2;\n",
            &[
                st("SET standard_conforming_strings = off;"),
                st("SELECT '\\';';"),
                st("SET standard_conforming_strings TO 'on';"),
                st("SELECT '\\';"),
                st("SELECT 2;"),
            ],
        );
    }

    #[test]
    fn empty_statements_and_trailing_comment_at_eof() {
        check(b";;\n SELECT 1;;\n-- end", &[st("SELECT 1;")]);
        check(b"", &[]);
        check(b"\n\n  \n/* only a comment */\n", &[]);
    }

    #[test]
    fn unterminated_string_reports_lines() {
        match error(b"SELECT 1;\n\nSELECT 'abc;\nmore\n") {
            PlainError::UnterminatedStatement { line_started, what } => {
                assert_eq!(line_started, 3);
                assert!(
                    what.contains("string literal") && what.contains("line 3"),
                    "{what}"
                );
            }
            other => panic!("{other:?}"),
        }
        let e = error(b"SELECT 1,\n  E'ab\\';\n");
        assert!(e.to_string().contains("escape string literal"), "{e}");
        assert!(e.to_string().contains("opened at line 2"), "{e}");
        let e = error(b"SELECT \"x;\n");
        assert!(e.to_string().contains("quoted identifier"), "{e}");
    }

    #[test]
    fn unterminated_comment_dollar_quote_and_statement() {
        match error(b"SELECT 1;\n/* a /* b */ still open;\n") {
            PlainError::UnterminatedStatement { line_started, what } => {
                assert_eq!(line_started, 2);
                assert!(what.contains("block comment"), "{what}");
            }
            other => panic!("{other:?}"),
        }
        match error(b"\nCREATE FUNCTION f() AS $fn$\nbegin; $fn end;\n") {
            PlainError::UnterminatedStatement { line_started, what } => {
                assert_eq!(line_started, 2);
                assert!(what.contains("$fn$") && what.contains("line 2"), "{what}");
            }
            other => panic!("{other:?}"),
        }
        match error(b"SELECT 1;\nSELECT 2\n") {
            PlainError::UnterminatedStatement { line_started, what } => {
                assert_eq!(line_started, 2);
                assert!(what.contains("no terminating"), "{what}");
            }
            other => panic!("{other:?}"),
        }
        let e = error(b"SELECT (1;\n");
        assert!(e.to_string().contains("never closed"), "{e}");
    }

    #[test]
    fn unterminated_copy_reports_its_line() {
        for input in [
            &b"SELECT 1;\nCOPY t FROM stdin;\n1\n2\n"[..],
            b"SELECT 1;\nCOPY t FROM stdin;\n1\n\\.x",
            b"SELECT 1;\nCOPY t FROM stdin;",
            b"SELECT 1;\nCOPY t FROM stdin;\n\\.\\.\n",
        ] {
            match error(input) {
                PlainError::UnterminatedCopy { line_started } => assert_eq!(line_started, 2),
                other => panic!("{other:?}"),
            }
        }
        let e = error(b"COPY t FROM stdin;\n");
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn invalid_utf8_statement_is_an_error_but_copy_data_is_not() {
        match error(b"SELECT 1;\nSELECT '\xff';\n") {
            PlainError::InvalidUtf8 {
                line_started,
                what,
                offset,
            } => {
                assert_eq!((line_started, what, offset), (2, "SQL statement", 8));
            }
            other => panic!("{other:?}"),
        }
        check(
            b"COPY t FROM stdin;\n\xff\xfe\x00\n\\.\n",
            &[copy("COPY t FROM stdin;"), data(b"\xff\xfe\x00\n"), END],
        );
    }

    #[test]
    fn meta_command_inside_a_statement_is_an_error() {
        match error(b"SELECT 1,\n\\connect other\n2;\n") {
            PlainError::MetaCommandInStatement { line, line_started } => {
                assert_eq!((line, line_started), (2, 1));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn caps_turn_huge_lines_and_statements_into_errors() {
        let mut r = PlainReader::with_max_bytes(
            Cursor::new(b"SELECT 1;\nSELECT 'xxxxxxxxxxxxxxxxxxxx';\n"),
            16,
        );
        assert_eq!(r.next_item().ok().flatten(), Some(st("SELECT 1;")));
        match r.next_item() {
            Err(PlainError::LineTooLong { line: 2, limit: 16 }) => {}
            other => panic!("{other:?}"),
        }
        // After an error, the reader refuses to continue.
        assert!(matches!(r.next_item(), Err(PlainError::AfterError { .. })));

        let mut r = PlainReader::with_max_bytes(Cursor::new(b"SELECT\n1,\n2,\n3,\n4;\n"), 12);
        match r.next_item() {
            Err(PlainError::StatementTooLong {
                line_started: 1,
                limit: 12,
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn io_errors_carry_the_line() {
        struct Failing(u8);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("corrupt gzip"));
                }
                self.0 -= 1;
                let line = b"SELECT 1;\n";
                let n = line.len().min(buf.len());
                buf.get_mut(..n)
                    .ok_or_else(|| io::Error::other("short"))?
                    .copy_from_slice(line.get(..n).unwrap_or_default());
                Ok(n)
            }
        }
        let mut r = PlainReader::new(BufReader::new(Failing(2)));
        assert_eq!(r.next_item().ok().flatten(), Some(st("SELECT 1;")));
        assert_eq!(r.next_item().ok().flatten(), Some(st("SELECT 1;")));
        match r.next_item() {
            Err(e @ PlainError::Io { line: 3, .. }) => {
                assert!(e.to_string().contains("corrupt gzip"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.line(), 2);
    }

    /// Deterministic pseudo-random numbers (no extra dependency).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
        fn below(&mut self, n: u64) -> usize {
            usize::try_from(self.next() % n).unwrap_or(0)
        }
    }

    fn split_copy(input: &[u8]) -> Vec<Vec<u8>> {
        let mut r = PlainReader::new(BufReader::with_capacity(4096, Cursor::new(input)));
        let mut chunks = Vec::new();
        let mut ended = false;
        while let Some(item) = r.next_item().unwrap_or_else(|e| panic!("{e}")) {
            match item {
                PlainItem::CopyStart(_) => {}
                PlainItem::CopyData(c) => chunks.push(c),
                PlainItem::CopyEnd => ended = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(ended);
        chunks
    }

    #[test]
    fn large_copy_is_chunked_on_line_boundaries_and_reassembles_exactly() {
        let mut rng = Lcg(42);
        let mut rows = Vec::new();
        for n in 0..20_000 {
            let len = rng.below(200);
            rows.extend_from_slice(format!("{n}\t").as_bytes());
            for _ in 0..len {
                // Anything but a line end: tabs, `\`, `.`, `;`, high bytes.
                let b = match rng.below(8) {
                    0 => b'\\',
                    1 => b'.',
                    2 => b';',
                    3 => b'\t',
                    4 => 0x80 + u8::try_from(rng.below(0x7f)).unwrap_or(0),
                    5 => b'\r',
                    _ => b'a' + u8::try_from(rng.below(26)).unwrap_or(0),
                };
                rows.push(b);
            }
            rows.push(b'\n');
        }
        // A line of exactly the chunk size and one larger than it.
        let mut exact = vec![b'x'; COPY_CHUNK_BYTES - 1];
        exact.push(b'\n');
        rows.extend_from_slice(&exact);
        let mut huge = vec![b'y'; COPY_CHUNK_BYTES * 3];
        huge.push(b'\n');
        rows.extend_from_slice(&huge);
        rows.extend_from_slice(b"last\n");

        let mut input = b"COPY big FROM stdin;\n".to_vec();
        input.extend_from_slice(&rows);
        input.extend_from_slice(b"\\.\n");
        let chunks = split_copy(&input);
        assert!(chunks.len() > 30, "only {} chunks", chunks.len());
        for c in &chunks {
            assert!(!c.is_empty());
            assert!(c.ends_with(b"\n"));
            assert!(
                c.len() <= COPY_CHUNK_BYTES || c == &huge,
                "chunk of {} bytes",
                c.len()
            );
        }
        assert!(chunks.iter().any(|c| c == &exact));
        assert!(chunks.iter().any(|c| c == &huge));
        assert_eq!(chunks.concat(), rows, "reassembled COPY data differs");
    }

    #[test]
    fn random_input_never_panics_and_always_ends() {
        let alphabet: &[&[u8]] = &[
            b"'",
            b"\"",
            b"$",
            b"$a$",
            b"$$",
            b"$1",
            b"E'",
            b"\\",
            b"\\.",
            b"\n",
            b"\r\n",
            b";",
            b"--",
            b"/*",
            b"*/",
            b"(",
            b")",
            b"COPY t FROM stdin;",
            b"\n\\.\n",
            b"BEGIN",
            b"END",
            b"CREATE FUNCTION",
            b"x",
            b" ",
            b"\xff",
            b"\xc3\xa9",
            b"U&'",
            b"\\restrict k\n",
        ];
        let mut rng = Lcg(7);
        for _ in 0..3_000 {
            let mut input = Vec::new();
            for _ in 0..rng.below(40) {
                let len = u64::try_from(alphabet.len()).unwrap_or(1);
                input.extend_from_slice(alphabet.get(rng.below(len)).copied().unwrap_or_default());
            }
            let mut r = PlainReader::with_max_bytes(Cursor::new(&input), 64);
            for _ in 0..10_000 {
                match r.next_item() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            assert!(matches!(
                r.next_item(),
                Ok(None) | Err(PlainError::AfterError { .. })
            ));
        }
    }

    #[test]
    fn session_settings() {
        for yes in [
            "SET statement_timeout = 0;",
            "set client_encoding = 'UTF8';",
            "SET SESSION AUTHORIZATION 'alice';",
            "SET ROLE alice;",
            "RESET ROLE;",
            "SELECT pg_catalog.set_config('search_path', '', false);",
            "select set_config ('a.b', 'c', false);",
            "  SET default_tablespace = '';",
        ] {
            assert!(is_session_setting(yes), "{yes}");
        }
        for no in [
            "SELECT pg_catalog.setval('s', 1, true);",
            "SETOF;",
            "UPDATE t SET a = 1;",
            "SELECT 1;",
            "CREATE TABLE set_config (a int);",
            "SELECT pg_catalog.set_configx('a', 'b', false);",
            "",
        ] {
            assert!(!is_session_setting(no), "{no}");
        }
    }

    #[test]
    fn standard_conforming_strings_recognition() {
        assert_eq!(
            std_strings_setting("SET standard_conforming_strings = off;"),
            Some(false)
        );
        assert_eq!(
            std_strings_setting("SET standard_conforming_strings=on;"),
            Some(true)
        );
        assert_eq!(
            std_strings_setting("set session standard_conforming_strings to 'off';"),
            Some(false)
        );
        assert_eq!(
            std_strings_setting("RESET standard_conforming_strings;"),
            Some(true)
        );
        assert_eq!(
            std_strings_setting("SET standard_conforming_strings TO DEFAULT;"),
            Some(true)
        );
        assert_eq!(std_strings_setting("SET search_path = off;"), None);
        assert_eq!(std_strings_setting("SELECT 1;"), None);
    }

    // ---- a real pg_dump -------------------------------------------------

    const PG_HINT: &str = "this test needs PostgreSQL: the client tools (psql, pg_dump; \
         `apt-get install postgresql-15` or postgresql-client) and a server on \
         127.0.0.1:5432 accepting user `postgres` with trust auth (e.g. \
         `pg_ctlcluster 15 main start`)";

    /// Finds a PostgreSQL client binary on PATH or in `pg_config --bindir`.
    fn pg_tool(name: &str) -> std::path::PathBuf {
        use std::process::Command;
        let on_path = Command::new(name).arg("--version").output();
        if on_path.is_ok_and(|o| o.status.success()) {
            return name.into();
        }
        let bindir = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        if let Some(dir) = bindir {
            let path = std::path::Path::new(&dir).join(name);
            if path.exists() {
                return path;
            }
        }
        panic!("`{name}` not found on PATH or in `pg_config --bindir`: {PG_HINT}");
    }

    fn psql(psql: &std::path::Path, db: &str, sql: &str) -> Vec<u8> {
        let out = std::process::Command::new(psql)
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-c", sql])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}; {PG_HINT}", psql.display()));
        assert!(
            out.status.success(),
            "psql -d {db} -c {sql:?} failed: {}\n{PG_HINT}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    struct DropDb {
        psql: std::path::PathBuf,
        name: String,
    }
    impl Drop for DropDb {
        fn drop(&mut self) {
            let _ = std::process::Command::new(&self.psql)
                .args([
                    "-X",
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                ])
                .arg(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .output();
        }
    }

    #[test]
    fn splits_a_real_pg_dump() {
        let psql_bin = pg_tool("psql");
        let pg_dump = pg_tool("pg_dump");
        let name = format!("drhost_plain_test_{}", std::process::id());
        psql(&psql_bin, "postgres", "SELECT 1");
        psql(
            &psql_bin,
            "postgres",
            &format!("DROP DATABASE IF EXISTS {name}"),
        );
        psql(
            &psql_bin,
            "postgres",
            &format!("CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0"),
        );
        let _drop = DropDb {
            psql: psql_bin.clone(),
            name: name.clone(),
        };
        psql(
            &psql_bin,
            &name,
            r#"
CREATE FUNCTION public.semi(a integer) RETURNS text LANGUAGE plpgsql AS $fn$
DECLARE x text := 'a;b $$ c';
BEGIN
  -- a comment; it's here
  RETURN $inner$;$inner$ || x || $1::text || E'\'';
END;
$fn$;
CREATE FUNCTION public.atomic_add(a integer, b integer) RETURNS integer LANGUAGE sql
BEGIN ATOMIC
  SELECT a + b;
  SELECT CASE WHEN a > b THEN a ELSE b END;
END;
CREATE TABLE public.t (id integer PRIMARY KEY, s text);
INSERT INTO public.t VALUES
  (1, E'tab\there'), (2, E'new\nline'), (3, E'back\\slash'), (4, '\.'),
  (5, E'\\.'), (6, 'ünïcødé ✓ 日本'), (7, NULL), (8, ';'), (9, E'a\\.b'),
  (10, '$$ $fn$'), (11, E'cr\rlf\r\n'), (12, '');
CREATE TABLE public."we;ird ""name""" (x integer);
CREATE TABLE public.big (id integer, payload text);
INSERT INTO public.big SELECT g, repeat(md5(g::text), 3) || E'\t;\\' FROM generate_series(1, 5000) g;
CREATE TABLE public.notes (x integer);
CREATE RULE notify_both AS ON INSERT TO public.notes DO ALSO (NOTIFY a; NOTIFY b);
CREATE VIEW public.v AS SELECT 'x;y'::text AS c, $q$;$q$::text AS d;
COMMENT ON TABLE public.t IS 'it''s; a "table"';
"#,
        );
        let mut child = std::process::Command::new(&pg_dump)
            .args(["-Fp", "-h", "127.0.0.1", "-U", "postgres", &name])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running pg_dump: {e}; {PG_HINT}"));
        let stdout = child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("pg_dump has no stdout"));
        // Tee the raw dump so it can be inspected and counted independently.
        struct Tee<R>(R, Vec<u8>);
        impl<R: Read> Read for Tee<R> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1.extend_from_slice(buf.get(..n).unwrap_or_default());
                Ok(n)
            }
        }
        let mut reader = PlainReader::new(BufReader::new(Tee(stdout, Vec::new())));
        let mut items = Vec::new();
        while let Some(item) = reader
            .next_item()
            .unwrap_or_else(|e| panic!("splitting pg_dump output: {e}"))
        {
            items.push(item);
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("pg_dump: {e}"));
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let raw = String::from_utf8_lossy(&reader.reader.get_ref().1).into_owned();

        let statements: Vec<&str> = items
            .iter()
            .filter_map(|i| match i {
                PlainItem::Statement(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        let starting = |p: &str| statements.iter().filter(|s| s.starts_with(p)).count();
        for s in &statements {
            assert!(s.ends_with(';'), "statement without `;`: {s:?}");
            assert!(!s.contains("\n\\"), "meta-command swallowed: {s:?}");
        }
        assert_eq!(starting("CREATE FUNCTION"), 2, "{statements:#?}");
        assert_eq!(starting("CREATE TABLE"), 4, "{statements:#?}");
        assert_eq!(starting("CREATE RULE"), 1, "{statements:#?}");
        assert_eq!(starting("CREATE VIEW"), 1, "{statements:#?}");
        assert_eq!(starting("COMMENT ON TABLE"), 1, "{statements:#?}");
        assert!(
            starting("SET ") >= 5
                && statements
                    .iter()
                    .any(|s| s.contains("set_config('search_path'"))
        );
        let semi = statements
            .iter()
            .find(|s| s.contains("FUNCTION public.semi"))
            .copied()
            .unwrap_or_default();
        assert!(
            semi.contains("RETURN $inner$;$inner$") && semi.contains("END;"),
            "{semi}"
        );
        let atomic = statements
            .iter()
            .find(|s| s.contains("FUNCTION public.atomic_add"))
            .copied()
            .unwrap_or_default();
        assert!(
            atomic.contains("BEGIN ATOMIC") && atomic.trim_end().ends_with("END;"),
            "{atomic}"
        );
        let rule = statements
            .iter()
            .find(|s| s.starts_with("CREATE RULE"))
            .copied()
            .unwrap_or_default();
        assert!(
            rule.contains("NOTIFY a;") && rule.contains("NOTIFY b"),
            "{rule}"
        );

        // Meta-commands: pg_dump 15.14+ brackets the dump with \restrict / \unrestrict.
        let metas: Vec<&PlainItem> = items
            .iter()
            .filter(|i| matches!(i, PlainItem::MetaCommand(_)))
            .collect();
        assert_eq!(
            metas.len(),
            raw.lines()
                .filter(|l| l.starts_with('\\') && *l != "\\.")
                .count()
        );
        for m in &metas {
            assert!(
                matches!(m, PlainItem::MetaCommand(c) if c.starts_with("\\restrict ") || c.starts_with("\\unrestrict ")),
                "{m:?}"
            );
        }

        // COPY blocks: one per "TABLE DATA" entry pg_dump wrote.
        let mut blocks: Vec<(String, Vec<u8>)> = Vec::new();
        let mut open = false;
        for item in &items {
            match item {
                PlainItem::CopyStart(s) => {
                    assert!(!open);
                    open = true;
                    blocks.push((s.clone(), Vec::new()));
                }
                PlainItem::CopyData(d) => {
                    assert!(open && d.ends_with(b"\n") && d.len() <= COPY_CHUNK_BYTES);
                    if let Some(b) = blocks.last_mut() {
                        b.1.extend_from_slice(d);
                    }
                }
                PlainItem::CopyEnd => {
                    assert!(open);
                    open = false;
                }
                _ => assert!(!open, "{item:?} inside a COPY block"),
            }
        }
        assert_eq!(blocks.len(), raw.matches("; Type: TABLE DATA;").count());
        assert_eq!(blocks.len(), 4);
        assert!(
            items
                .iter()
                .filter(|i| matches!(i, PlainItem::CopyData(_)))
                .count()
                > 3,
            "big table should span chunks"
        );

        // The COPY data round-trips byte for byte against the server's own output.
        for (table, query) in [
            ("public.t ", "COPY public.t (id, s) TO STDOUT"),
            ("public.big ", "COPY public.big (id, payload) TO STDOUT"),
        ] {
            let block = blocks
                .iter()
                .find(|b| b.0.starts_with(&format!("COPY {table}")))
                .unwrap_or_else(|| panic!("no COPY for {table}"));
            assert_eq!(
                block.1,
                psql(&psql_bin, &name, query),
                "COPY data of {table} differs"
            );
        }
    }
}
