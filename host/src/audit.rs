//! The audit log: a hash-chained, append-only, fsynced record of everything a
//! run did, its verifier (`drhost audit verify`) and a timeline renderer
//! (`drhost audit show`).
//!
//! This module owns the on-disk format of `<dir>/<run-id>.audit.jsonl` and
//! everything that reads or writes it. Nothing else writes audit files.
//!
//! # Format
//!
//! JSON Lines, one file per run, one record per line, fields in exactly this
//! order: `seq`, `ts`, `run`, `plugin`, `step`, `event`, `capability`,
//! `operation`, `args`, `outcome`, `duration_ms`, `message`, `prev`, `hash`.
//! Absent values are written as `null`, never skipped. A line is
//!
//! ```text
//! <prefix>,"hash":"<64 lowercase hex>"}\n
//! ```
//!
//! where `<prefix>` is the compact serde_json serialization of the record
//! without `hash` and without its closing brace, and `hash` is the sha256 of
//! exactly those prefix bytes. `prev` is the `hash` of the previous record,
//! or 64 zeros ([`GENESIS_PREV`]) for `seq` 0. Hashing the bytes (not a
//! re-serialization) means any edited byte is detected, whitespace included.
//!
//! # Invariants
//!
//! - Append-only: the file is created with `create_new` (never reused or
//!   truncated) and opened in append mode; the writer never seeks or rewrites.
//! - `seq` starts at 0 and increases by exactly one per record; each `prev` is
//!   the previous record's `hash`.
//! - [`AuditWriter::append_durable`] returns only after the record is on disk
//!   (`File::sync_data`); the gate uses it for call intents before any
//!   mutation. [`AuditWriter::append`] only buffers (cheap, for read-only
//!   calls); [`AuditWriter::sync`] makes everything buffered durable.
//! - After any write, flush or fsync failure the writer is poisoned: every
//!   later call fails with [`AuditError::Poisoned`], because the chain on disk
//!   is no longer known. The run must stop.
//! - Secrets are referenced, never recorded: callers put secret *names* or
//!   source references in `args`, never secret bytes. This module cannot tell
//!   the difference and records what it is given.
//!
//! # What verification can and cannot detect
//!
//! [`verify`] reports the first problem in file order: an edited byte
//! anywhere in a record (hash mismatch), a removed record (a `seq` gap), an
//! inserted copy of a record, swapped records, a broken `prev` link, a torn
//! last line (a crash mid-write), or a malformed line.
//!
//! - Removing the *last* record(s) cannot be detected by the chain alone: the
//!   shortened file is a valid chain. The `run-end` record (a finished run
//!   without one was truncated or crashed) and the run journal (which knows
//!   how far the run got) cover that case.
//! - The chain has no key: someone who rewrites a record *and recomputes its
//!   hash* is caught only at the next record (a [`ProblemKind::BrokenLink`]);
//!   someone who recomputes every hash to the end of the file is not caught.
//!   Anchoring the last hash elsewhere (the journal, a ticket) closes that.
//! - An empty file is a problem, not a valid empty chain: every run writes
//!   `run-start` first, so an empty log means the run crashed before its first
//!   record reached the disk, or the file was emptied. It is reported as
//!   [`ProblemKind::Malformed`] at line 1, seq 0.
//! - A call intent without a later outcome, denial or timeout for the same
//!   step, capability and operation is not a chain error (the host crashed
//!   between the two); [`VerifyReport::open_intents`] lists them because the
//!   effect of that call is unknown.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// The `prev` of the first record (seq 0): 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// File name suffix of an audit log: `<run-id>.audit.jsonl`.
pub const FILE_SUFFIX: &str = ".audit.jsonl";

/// The bytes that separate a line's hashed prefix from its hash.
const HASH_MARKER: &[u8] = b",\"hash\":\"";

/// Length of a hex sha256.
const HEX_LEN: usize = 64;

/// The latest instant humantime can format (9999-12-31T23:59:59Z).
const MAX_TS_SECS: u64 = 253_402_300_799;

/// Longest run id accepted as a file name stem.
const MAX_RUN_ID_LEN: usize = 200;

/// The path of the audit log of run `run_id` under `dir`:
/// `<dir>/<run_id>.audit.jsonl`.
pub fn log_path(dir: &Path, run_id: &str) -> PathBuf {
    dir.join(format!("{run_id}{FILE_SUFFIX}"))
}

/// Identity of the plugin a record was written for (invariant 5).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct PluginIdentity {
    /// Plugin name, as reported by `describe()` and pinned by the runbook.
    pub name: String,
    /// Plugin semver.
    pub version: String,
    /// Hex sha256 of the plugin's wasm bytes.
    pub sha256: String,
}

/// What a record is about. Serialized in kebab-case (`call-intent`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The run started.
    RunStart,
    /// A step started.
    StepStart,
    /// The operator approved (or refused) something.
    Approval,
    /// A capability call is about to be made (fsynced before any mutation).
    CallIntent,
    /// A capability call returned (successfully or with a `cap-error`).
    CallOutcome,
    /// Policy denied a capability call.
    Denial,
    /// A call or a step ran out of time.
    Timeout,
    /// The guest trapped.
    Trap,
    /// Something the plugin logged.
    PluginOutput,
    /// A step ended.
    StepEnd,
    /// The run ended. A finished run without one was cut short.
    RunEnd,
    /// Anything else worth recording.
    Note,
}

impl EventKind {
    /// The kebab-case name, as written in the log.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::RunStart => "run-start",
            EventKind::StepStart => "step-start",
            EventKind::Approval => "approval",
            EventKind::CallIntent => "call-intent",
            EventKind::CallOutcome => "call-outcome",
            EventKind::Denial => "denial",
            EventKind::Timeout => "timeout",
            EventKind::Trap => "trap",
            EventKind::PluginOutput => "plugin-output",
            EventKind::StepEnd => "step-end",
            EventKind::RunEnd => "run-end",
            EventKind::Note => "note",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a caller hands to [`AuditWriter::append`]: a record without the
/// fields the writer fills in (seq, time, run, plugin, chain).
///
/// Text fields borrow where they can (`Cow`) and arguments/outcomes are
/// serialized once into raw JSON: an event is built and written on the hot
/// path of every capability call, so it allocates as little as possible.
#[derive(Clone, Debug)]
pub struct Event<'a> {
    /// The step id, if the event belongs to a step.
    pub step: Option<Cow<'a, str>>,
    /// What happened.
    pub kind: EventKind,
    /// Capability interface (`k8s`, `postgres`, ...), for call events.
    pub capability: Option<Cow<'a, str>>,
    /// Operation within the capability (`scale`, `restore`, ...).
    pub operation: Option<Cow<'a, str>>,
    /// Idempotency key of a mutating call (`<run>:<step>:<n>`, the n-th
    /// mutation of the step): the same on the intent and the outcome, and
    /// the same when a resumed run re-runs the step, so a call whose
    /// outcome is recorded is replayed, not executed again.
    pub key: Option<Cow<'a, str>>,
    /// Call arguments, as JSON. Secret references only, never secret bytes.
    pub args: Option<Box<RawValue>>,
    /// Call result or error, as JSON.
    pub outcome: Option<Box<RawValue>>,
    /// How long the call or step took, in milliseconds. A non-finite value
    /// is written as `null`.
    pub duration_ms: Option<f64>,
    /// Free text for humans.
    pub message: Option<Cow<'a, str>>,
}

/// Serializes a value to raw JSON; a value that cannot be serialized (a
/// map with non-string keys, which drhost never builds) is recorded as a
/// JSON string saying so, rather than losing the record.
pub fn raw_json(value: &impl Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|e| {
        serde_json::value::to_raw_value(&format!("<unserializable: {e}>"))
            .unwrap_or_else(|_| RawValue::NULL.to_owned())
    })
}

impl<'a> Event<'a> {
    /// An event of `kind` with every other field empty.
    pub fn new(kind: EventKind) -> Self {
        Event {
            step: None,
            kind,
            capability: None,
            operation: None,
            key: None,
            args: None,
            outcome: None,
            duration_ms: None,
            message: None,
        }
    }

    /// Sets the idempotency key of a mutating call.
    pub fn key(mut self, key: impl Into<Cow<'a, str>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the step id.
    pub fn step(mut self, step: impl Into<Cow<'a, str>>) -> Self {
        self.step = Some(step.into());
        self
    }

    /// Sets the capability and operation of a call.
    pub fn call(mut self, capability: &'a str, operation: &'a str) -> Self {
        self.capability = Some(Cow::Borrowed(capability));
        self.operation = Some(Cow::Borrowed(operation));
        self
    }

    /// Sets the call arguments (serialized now).
    pub fn args(mut self, args: impl Serialize) -> Self {
        self.args = Some(raw_json(&args));
        self
    }

    /// Sets already-serialized call arguments.
    pub fn raw_args(mut self, args: Box<RawValue>) -> Self {
        self.args = Some(args);
        self
    }

    /// Sets the call outcome (serialized now).
    pub fn outcome(mut self, outcome: impl Serialize) -> Self {
        self.outcome = Some(raw_json(&outcome));
        self
    }

    /// Sets the duration (recorded in milliseconds).
    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration_ms = Some(duration.as_secs_f64() * 1000.0);
        self
    }

    /// Sets the human-readable message.
    pub fn message(mut self, message: impl Into<Cow<'a, str>>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// One line of an audit log, as read back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the log, from 0.
    pub seq: u64,
    /// Wall-clock time, RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// Run id.
    pub run: String,
    /// The plugin the run was executing.
    pub plugin: PluginIdentity,
    /// Step id, if any.
    pub step: Option<String>,
    /// What happened.
    pub event: EventKind,
    /// Capability interface, for call events.
    pub capability: Option<String>,
    /// Operation within the capability.
    pub operation: Option<String>,
    /// Idempotency key of a mutating call (absent on other records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Call arguments.
    pub args: Option<Value>,
    /// Call outcome.
    pub outcome: Option<Value>,
    /// Duration in milliseconds.
    pub duration_ms: Option<f64>,
    /// Free text.
    pub message: Option<String>,
    /// Hash of the previous record ([`GENESIS_PREV`] for seq 0).
    pub prev: String,
    /// Hex sha256 of this line's bytes before `,"hash":"`.
    pub hash: String,
}

/// Errors reading or writing an audit log. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log of an interrupted run cannot be continued.
    #[error("cannot resume from {path}: {detail}", path = path.display())]
    Unresumable {
        /// The audit log.
        path: PathBuf,
        /// Why (the verify report).
        detail: String,
    },
    /// The run id cannot be used as a file name.
    #[error(
        "cannot create audit log in {dir}: invalid run id {run_id:?}: {reason}",
        dir = dir.display()
    )]
    InvalidRunId {
        /// Directory the log was to be created in.
        dir: PathBuf,
        /// The rejected run id.
        run_id: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The audit directory could not be created.
    #[error("cannot create audit directory {path}: {source}", path = path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// An audit log for this run already exists; it is never reused.
    #[error(
        "cannot create audit log {path}: it already exists (a run id is used once; \
         an audit log is never appended to by another run or overwritten)",
        path = path.display()
    )]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// The audit log could not be created.
    #[error("cannot create audit log {path}: {source}", path = path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A record could not be serialized (nothing was written).
    #[error("cannot serialize audit record for {path}: {detail}", path = path.display())]
    Serialize {
        /// The log the record was for.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Writing or flushing the log failed; the writer is now poisoned.
    #[error("cannot write audit log {path}: {source}", path = path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// fsync of the log (or of its directory) failed; the writer is now
    /// poisoned.
    #[error("cannot fsync {path}: {source}", path = path.display())]
    Sync {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// An earlier write, flush or fsync failed, so the state of the chain on
    /// disk is unknown and nothing more is written.
    #[error(
        "audit log {path} is unusable after an earlier write or fsync failure; \
         the run must stop",
        path = path.display()
    )]
    Poisoned {
        /// The file.
        path: PathBuf,
    },
    /// The log could not be read.
    #[error("cannot read audit log {path}: {source}", path = path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A line of the log is not a valid record.
    #[error(
        "audit log {path}, line {line}: not a valid audit record: {detail} \
         (run `drhost audit verify` on it)",
        path = path.display()
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong, with the column.
        detail: String,
    },
}

/// Serializes as RFC 3339 UTC with milliseconds, straight into the output
/// (no intermediate `String`).
struct Ts(SystemTime);

impl Serialize for Ts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_millis(self.0))
    }
}

/// The current time, clamped to what humantime can format (it panics before
/// the epoch and fails after year 9999). A clock that far off shows up in
/// the log as 1970 or 9999.
fn clamped_now() -> SystemTime {
    let now = crate::sim::now();
    let max = UNIX_EPOCH + Duration::from_secs(MAX_TS_SECS);
    if now < UNIX_EPOCH {
        UNIX_EPOCH
    } else if now > max {
        max
    } else {
        now
    }
}

/// A record as written: borrows everything, field order is the format.
/// Must match [`Record`] minus `hash`.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    ts: Ts,
    run: &'a str,
    plugin: &'a PluginIdentity,
    step: Option<&'a str>,
    event: EventKind,
    capability: Option<&'a str>,
    operation: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    args: Option<&'a RawValue>,
    outcome: Option<&'a RawValue>,
    duration_ms: Option<f64>,
    message: Option<&'a str>,
    prev: &'a str,
}

/// Appends lowercase hex of `bytes` to `out`.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Lowercase hex sha256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(HEX_LEN);
    push_hex(&mut out, &Sha256::digest(bytes));
    out
}

fn is_hex64(s: &str) -> bool {
    s.len() == HEX_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_run_id(run_id: &str) -> Result<(), &'static str> {
    if run_id.is_empty() {
        return Err("it is empty");
    }
    if run_id.len() > MAX_RUN_ID_LEN {
        return Err("it is longer than 200 bytes");
    }
    if run_id.starts_with('.') {
        return Err("it starts with '.'");
    }
    if !run_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// Makes a newly created directory entry durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| AuditError::Sync {
            path: dir.to_path_buf(),
            source,
        })
}

/// Directories cannot be opened for fsync here; the file's own fsyncs are
/// all there is.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), AuditError> {
    Ok(())
}

/// Writes one run's audit log. Single writer; not shared between threads
/// without a lock (the gate owns it behind one).
///
/// Dropping the writer flushes and fsyncs on a best-effort basis; call
/// [`AuditWriter::sync`] to learn whether that worked.
#[derive(Debug)]
pub struct AuditWriter {
    path: PathBuf,
    run_id: String,
    plugin: PluginIdentity,
    out: BufWriter<File>,
    /// Seq of the next record = number of records written.
    seq: u64,
    /// Hash of the last record written ([`GENESIS_PREV`] before the first).
    prev: String,
    /// Scratch for the hash being computed (swapped with `prev`).
    next_hash: String,
    /// Scratch for the line being built.
    line: Vec<u8>,
    poisoned: bool,
}

impl AuditWriter {
    /// Creates `<dir>/<run_id>.audit.jsonl` (dir created if needed; refuses
    /// an existing file) and fsyncs the directory so the new file survives a
    /// crash. Writes no record: the runner's first record is `run-start`.
    ///
    /// The run id must be a plain file name stem: ASCII letters, digits,
    /// `-`, `_` and `.`, not starting with `.`, at most 200 bytes.
    pub fn create(dir: &Path, run_id: &str, plugin: PluginIdentity) -> Result<Self, AuditError> {
        check_run_id(run_id).map_err(|reason| AuditError::InvalidRunId {
            dir: dir.to_path_buf(),
            run_id: run_id.to_owned(),
            reason,
        })?;
        fs::create_dir_all(dir).map_err(|source| AuditError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = log_path(dir, run_id);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    AuditError::AlreadyExists { path: path.clone() }
                } else {
                    AuditError::Create {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
        sync_dir(dir)?;
        Ok(AuditWriter {
            path,
            run_id: run_id.to_owned(),
            plugin,
            out: BufWriter::with_capacity(64 * 1024, file),
            seq: 0,
            prev: GENESIS_PREV.to_owned(),
            next_hash: String::with_capacity(HEX_LEN),
            line: Vec::with_capacity(1024),
            poisoned: false,
        })
    }

    /// Reopens the log of an interrupted run to append to its chain
    /// (`drhost run --resume`). The chain must verify; a torn last line (the
    /// host died mid-write) is the one damage repaired: its bytes are saved
    /// to `<log>.torn-<seq>` (fsynced) before the file is cut back to the
    /// last whole record, so nothing written is lost. Returns the writer,
    /// the records as read, and the path of the saved torn line if any.
    ///
    /// # Errors
    /// The file cannot be read or written, or its chain does not verify
    /// ([`AuditError::Unresumable`], with the verify report).
    pub fn resume(path: &Path) -> Result<(Self, Vec<Record>, Option<PathBuf>), AuditError> {
        // Refuses anything but an intact chain or a torn last line.
        let (records, report) = read_trusted(path)?;
        let mut torn = None;
        if report.problem.is_some() {
            let bytes = fs::read(path).map_err(|source| AuditError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let saved = PathBuf::from(format!("{}.torn-{}", path.display(), report.records));
            let write = |p: &Path, data: &[u8]| -> io::Result<()> {
                let mut f = File::create(p)?;
                f.write_all(data)?;
                f.sync_all()
            };
            write(&saved, &bytes[keep..]).map_err(|source| AuditError::Create {
                path: saved.clone(),
                source,
            })?;
            let file = OpenOptions::new().write(true).open(path).and_then(|f| {
                f.set_len(keep as u64)?;
                f.sync_all()
            });
            file.map_err(|source| AuditError::Write {
                path: path.to_path_buf(),
                source,
            })?;
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            torn = Some(saved);
        }
        let Some(last) = records.last() else {
            return Err(AuditError::Unresumable {
                path: path.to_path_buf(),
                detail: "the log holds no record".to_owned(),
            });
        };
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|source| AuditError::Create {
                path: path.to_path_buf(),
                source,
            })?;
        let writer = AuditWriter {
            path: path.to_path_buf(),
            run_id: last.run.clone(),
            plugin: last.plugin.clone(),
            out: BufWriter::with_capacity(64 * 1024, file),
            seq: records.len() as u64,
            prev: last.hash.clone(),
            next_hash: String::with_capacity(HEX_LEN),
            line: Vec::with_capacity(1024),
            poisoned: false,
        };
        Ok((writer, records, torn))
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run id written into every record.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The plugin identity written into subsequent records.
    pub fn plugin(&self) -> &PluginIdentity {
        &self.plugin
    }

    /// Sets the plugin identity for subsequent records (the writer may be
    /// created before `describe()` ran). Earlier records keep theirs.
    pub fn set_plugin(&mut self, plugin: PluginIdentity) {
        self.plugin = plugin;
    }

    /// Number of records written so far (buffered or durable); also the seq
    /// the next record gets.
    pub fn len(&self) -> u64 {
        self.seq
    }

    /// True when no record has been written yet.
    pub fn is_empty(&self) -> bool {
        self.seq == 0
    }

    /// Hash of the last record written ([`GENESIS_PREV`] before the first).
    /// Storing it elsewhere (the journal) anchors the chain's end.
    pub fn last_hash(&self) -> &str {
        &self.prev
    }

    /// Appends a record to the buffer (no fsync) and returns its seq. For
    /// read-only calls; use [`AuditWriter::append_durable`] before mutations.
    pub fn append(&mut self, event: Event<'_>) -> Result<u64, AuditError> {
        self.write_record(&event)
    }

    /// Appends a record, flushes and fsyncs (`File::sync_data`) before
    /// returning its seq. Used before any mutation.
    pub fn append_durable(&mut self, event: Event<'_>) -> Result<u64, AuditError> {
        let seq = self.write_record(&event)?;
        self.sync()?;
        Ok(seq)
    }

    /// Flushes and fsyncs everything buffered.
    pub fn sync(&mut self) -> Result<(), AuditError> {
        self.check_poisoned()?;
        if let Err(source) = self.out.flush() {
            self.poisoned = true;
            return Err(AuditError::Write {
                path: self.path.clone(),
                source,
            });
        }
        if let Err(source) = self.out.get_ref().sync_data() {
            self.poisoned = true;
            return Err(AuditError::Sync {
                path: self.path.clone(),
                source,
            });
        }
        Ok(())
    }

    fn check_poisoned(&self) -> Result<(), AuditError> {
        if self.poisoned {
            Err(AuditError::Poisoned {
                path: self.path.clone(),
            })
        } else {
            Ok(())
        }
    }

    /// Serializes `event` as the next record into the reusable line buffer,
    /// chains it and hands it to the `BufWriter`. Allocation-free once the
    /// buffers are warm (apart from what serializing `args` needs: nothing).
    fn write_record(&mut self, event: &Event<'_>) -> Result<u64, AuditError> {
        self.check_poisoned()?;
        let seq = self.seq;
        self.line.clear();
        // Secrets never reach the log (see `crate::redact`): redacted
        // copies only when something needed it.
        let args = event.args.as_deref().and_then(crate::redact::raw);
        let outcome = event.outcome.as_deref().and_then(crate::redact::raw);
        let message = event.message.as_deref().map(crate::redact::text);
        let body = Body {
            seq,
            ts: Ts(clamped_now()),
            run: &self.run_id,
            plugin: &self.plugin,
            step: event.step.as_deref(),
            event: event.kind,
            capability: event.capability.as_deref(),
            operation: event.operation.as_deref(),
            key: event.key.as_deref(),
            args: args.as_deref().or(event.args.as_deref()),
            outcome: outcome.as_deref().or(event.outcome.as_deref()),
            duration_ms: event.duration_ms,
            message: message.as_deref(),
            prev: &self.prev,
        };
        if let Err(e) = serde_json::to_writer(&mut self.line, &body) {
            return Err(AuditError::Serialize {
                path: self.path.clone(),
                detail: e.to_string(),
            });
        }
        // Drop the closing brace: the prefix is what gets hashed.
        if self.line.pop() != Some(b'}') {
            return Err(AuditError::Serialize {
                path: self.path.clone(),
                detail: "record did not serialize as a JSON object".to_owned(),
            });
        }
        self.next_hash.clear();
        push_hex(&mut self.next_hash, &Sha256::digest(&self.line));
        self.line.extend_from_slice(HASH_MARKER);
        self.line.extend_from_slice(self.next_hash.as_bytes());
        self.line.extend_from_slice(b"\"}\n");
        if let Err(source) = self.out.write_all(&self.line) {
            self.poisoned = true;
            return Err(AuditError::Write {
                path: self.path.clone(),
                source,
            });
        }
        std::mem::swap(&mut self.prev, &mut self.next_hash);
        self.seq += 1;
        Ok(seq)
    }
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        if !self.poisoned {
            // Best effort: errors cannot be reported from drop. Callers that
            // care call `sync()` first.
            let _ = self.sync();
        }
    }
}

/// Splits a file into lines. Returns the lines (without `\n`) and whether
/// the last one was terminated by `\n`. An empty file has no lines.
fn split_lines(bytes: &[u8]) -> (Vec<&[u8]>, bool) {
    if bytes.is_empty() {
        return (Vec::new(), true);
    }
    let (body, terminated) = match bytes.strip_suffix(b"\n") {
        Some(body) => (body, true),
        None => (bytes, false),
    };
    (body.split(|b| *b == b'\n').collect(), terminated)
}

/// A serde_json error for one line: the position is reported as a column
/// only ("line 1" of a single line would contradict the file's line number).
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => format!(
            "{} at column {}",
            text.get(..at).unwrap_or(&text),
            e.column()
        ),
        None => text,
    }
}

/// The records of a log whose chain verifies, or whose only damage is a
/// torn last line (left out): what a resumed run may trust. Changes
/// nothing on disk. Returns the records and the verify report.
///
/// # Errors
/// The file cannot be read, or its chain does not verify
/// ([`AuditError::Unresumable`]).
pub fn read_trusted(path: &Path) -> Result<(Vec<Record>, VerifyReport), AuditError> {
    let report = verify(path)?;
    if let Some(problem) = &report.problem
        && (problem.kind != ProblemKind::TornLastLine || report.records == 0)
    {
        return Err(AuditError::Unresumable {
            path: path.to_path_buf(),
            detail: report.to_string(),
        });
    }
    let bytes = fs::read(path).map_err(|source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (lines, _) = split_lines(&bytes);
    let records = lines
        .iter()
        .take(report.records as usize)
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    Ok((records, report))
}

/// Parses every line of an audit log into records, without checking the
/// chain (use [`verify`] for that). Errors name the file and the 1-based
/// line. An empty file gives no records. A torn last line is an error.
pub fn read_records(path: &Path) -> Result<Vec<Record>, AuditError> {
    let bytes = fs::read(path).map_err(|source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (lines, _) = split_lines(&bytes);
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let record = serde_json::from_slice::<Record>(line).map_err(|e| AuditError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            detail: json_error(&e),
        })?;
        records.push(record);
    }
    Ok(records)
}

/// Kinds of chain problems [`verify`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The record's bytes do not match its hash: it was edited (any byte,
    /// whitespace and the hash itself included).
    EditedRecord,
    /// The seq jumps forward: the records in between were removed.
    MissingRecord,
    /// A record that does not belong here: a copy of another line, or a seq
    /// that already appeared.
    InsertedRecord,
    /// Records are out of order: the expected seq appears later in the file.
    Reordered,
    /// The record is intact and in sequence, but its `prev` is not the hash
    /// of the record before it (one of the two was rewritten with a
    /// recomputed hash).
    BrokenLink,
    /// The last line is incomplete: no trailing newline, or unparsable at
    /// the end of the file (the writer was interrupted).
    TornLastLine,
    /// A line that is not a record (unparsable in the middle of the file),
    /// or an empty file.
    Malformed,
}

impl ProblemKind {
    /// What happened to the record, as a phrase after "record seq N (line L)".
    fn phrase(self) -> &'static str {
        match self {
            ProblemKind::EditedRecord => "was edited",
            ProblemKind::MissingRecord => "is missing",
            ProblemKind::InsertedRecord => "is displaced by an inserted record",
            ProblemKind::Reordered => "is out of order",
            ProblemKind::BrokenLink => "does not link to the record before it",
            ProblemKind::TornLastLine => "is torn (incomplete last line)",
            ProblemKind::Malformed => "is malformed",
        }
    }
}

/// The first problem found in a chain.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainProblem {
    /// The first bad seq: the seq the record at that position should have had.
    pub seq: u64,
    /// 1-based line number where the problem was found.
    pub line: usize,
    /// What kind of problem.
    pub kind: ProblemKind,
    /// Specifics for the operator.
    pub detail: String,
}

impl fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record seq {} (line {}) {}: {}",
            self.seq,
            self.line,
            self.kind.phrase(),
            self.detail
        )
    }
}

/// The result of [`verify`].
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyReport {
    /// The file verified.
    pub path: PathBuf,
    /// Number of records that verified: all of them when the chain is
    /// intact, otherwise those before the first problem.
    pub records: u64,
    /// The first problem, if any.
    pub problem: Option<ChainProblem>,
    /// Seqs of call-intent records with no later call-outcome, denial or
    /// timeout for the same step, capability and operation: the host stopped
    /// between intent and outcome, so the effect of those calls is unknown.
    /// Not a chain error. Listed when the chain is intact or only its last
    /// line is torn (a crash); empty after any other problem, because the
    /// records past it cannot be trusted.
    pub open_intents: Vec<u64>,
}

impl VerifyReport {
    /// True when the chain is intact (open intents do not count).
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "audit log {}: ", self.path.display())?;
        match &self.problem {
            None => write!(f, "verified: {} records, chain intact", self.records)?,
            Some(problem) => write!(
                f,
                "{problem}; {} before it verif{}",
                plural(self.records, "record"),
                if self.records == 1 { "ies" } else { "y" }
            )?,
        }
        if !self.open_intents.is_empty() {
            let seqs: Vec<String> = self.open_intents.iter().map(u64::to_string).collect();
            write!(
                f,
                "; {} without an outcome (the host stopped mid-call; \
                 check the effect by hand): seq {}",
                plural(self.open_intents.len() as u64, "call intent"),
                seqs.join(", ")
            )?;
        }
        Ok(())
    }
}

/// "1 record", "2 records".
fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Checks that `line` ends with exactly `,"hash":"<rec.hash>"}` and that
/// `rec.hash` is the sha256 of the bytes before it.
fn check_self_hash(line: &[u8], rec: &Record) -> Result<(), String> {
    if !is_hex64(&rec.hash) {
        return Err(format!(
            "the hash field {:?} is not 64 lowercase hex digits",
            clean(&rec.hash, 80)
        ));
    }
    let mut suffix = Vec::with_capacity(HASH_MARKER.len() + HEX_LEN + 2);
    suffix.extend_from_slice(HASH_MARKER);
    suffix.extend_from_slice(rec.hash.as_bytes());
    suffix.extend_from_slice(b"\"}");
    let Some(prefix) = line.strip_suffix(suffix.as_slice()) else {
        return Err("the line does not end with its hash field as written \
                    (bytes were changed, added or moved around the hash)"
            .to_owned());
    };
    let computed = sha256_hex(prefix);
    if computed != rec.hash {
        return Err(format!(
            "hash mismatch (stored {}…, computed {}…)",
            short(&rec.hash),
            short(&computed)
        ));
    }
    Ok(())
}

/// First 12 characters of a hash, for messages.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Checks the hash chain of an audit log and lists open call intents.
/// Returns `Err` only when the file cannot be read; every problem with its
/// contents is in [`VerifyReport::problem`] (the first one in file order).
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let bytes = fs::read(path).map_err(|source| AuditError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (lines, terminated) = split_lines(&bytes);
    let parsed: Vec<Result<Record, serde_json::Error>> = lines
        .iter()
        .map(|line| serde_json::from_slice::<Record>(line))
        .collect();
    let (good, problem) = if lines.is_empty() {
        let problem = ChainProblem {
            seq: 0,
            line: 1,
            kind: ProblemKind::Malformed,
            detail: "the file is empty: no records (every run writes run-start first; \
                     the run crashed before its first record reached the disk, \
                     or the file was emptied)"
                .to_owned(),
        };
        (0, Some(problem))
    } else {
        check_chain(&lines, terminated, &parsed)
    };
    // Open intents mean "the host stopped mid-call" only when the records
    // can be trusted: an intact chain, or one whose only damage is a torn
    // last line (a crash). The first `good` lines parsed and verified.
    let trusted = problem
        .as_ref()
        .is_none_or(|p| p.kind == ProblemKind::TornLastLine);
    let open_intents = if trusted {
        open_intents(parsed.iter().take(good).filter_map(|r| r.as_ref().ok()))
    } else {
        Vec::new()
    };
    Ok(VerifyReport {
        path: path.to_path_buf(),
        records: good as u64,
        problem,
        open_intents,
    })
}

/// Walks the lines in order and returns how many verified (all of them
/// before the first problem) and the first problem.
fn check_chain(
    lines: &[&[u8]],
    terminated: bool,
    parsed: &[Result<Record, serde_json::Error>],
) -> (usize, Option<ChainProblem>) {
    let last = lines.len().saturating_sub(1);
    let mut expected_prev = GENESIS_PREV.to_owned();
    for (i, (line, rec)) in lines.iter().zip(parsed).enumerate() {
        let seq = i as u64;
        let line_no = i + 1;
        let problem = |kind, detail: String| {
            let problem = ChainProblem {
                seq,
                line: line_no,
                kind,
                detail,
            };
            (i, Some(problem))
        };
        if i == last && !terminated {
            return problem(
                ProblemKind::TornLastLine,
                format!(
                    "the last line ({} bytes) has no trailing newline: the writer \
                     was interrupted mid-record; the {} records before it are complete",
                    line.len(),
                    i
                ),
            );
        }
        let rec = match rec {
            Ok(rec) => rec,
            Err(e) if i == last => {
                return problem(
                    ProblemKind::TornLastLine,
                    format!(
                        "the last line is incomplete or unparsable: {}",
                        json_error(e)
                    ),
                );
            }
            Err(e) => {
                return problem(
                    ProblemKind::Malformed,
                    format!("not a valid audit record: {}", json_error(e)),
                );
            }
        };
        if let Err(detail) = check_self_hash(line, rec) {
            return problem(ProblemKind::EditedRecord, detail);
        }
        if rec.seq == seq {
            if rec.prev != expected_prev {
                let detail = if i == 0 {
                    format!(
                        "the first record's prev is {}…, not 64 zeros: the log does not \
                         start at the beginning of a run",
                        short(&rec.prev)
                    )
                } else {
                    format!(
                        "prev {}… is not the hash {}… of record seq {} (line {}): one of \
                         the two was rewritten and its hash recomputed",
                        short(&rec.prev),
                        short(&expected_prev),
                        seq - 1,
                        line_no - 1
                    )
                };
                return problem(ProblemKind::BrokenLink, detail);
            }
            expected_prev.clone_from(&rec.hash);
            continue;
        }
        // Out of sequence. A line whose hash appears elsewhere is a copy.
        let copy_of = parsed
            .iter()
            .enumerate()
            .find(|(j, r)| *j != i && r.as_ref().is_ok_and(|r| r.hash == rec.hash));
        if let Some((other, _)) = copy_of {
            return problem(
                ProblemKind::InsertedRecord,
                format!(
                    "line {line_no} (seq {}) is a copy of line {}",
                    rec.seq,
                    other + 1
                ),
            );
        }
        if rec.seq > seq {
            let later = parsed
                .iter()
                .enumerate()
                .skip(i + 1)
                .find(|(_, r)| r.as_ref().is_ok_and(|r| r.seq == seq));
            if let Some((j, _)) = later {
                return problem(
                    ProblemKind::Reordered,
                    format!(
                        "line {line_no} holds seq {} but seq {seq} is at line {}",
                        rec.seq,
                        j + 1
                    ),
                );
            }
            let detail = if rec.seq == seq + 1 {
                format!(
                    "line {line_no} holds seq {}: record seq {seq} was removed",
                    rec.seq
                )
            } else {
                format!(
                    "line {line_no} holds seq {}: records seq {seq} to {} were removed",
                    rec.seq,
                    rec.seq - 1
                )
            };
            return problem(ProblemKind::MissingRecord, detail);
        }
        // rec.seq < seq, and not a copy: that seq already verified earlier.
        let earlier = usize::try_from(rec.seq).map_or(0, |s| s + 1);
        return problem(
            ProblemKind::InsertedRecord,
            format!(
                "line {line_no} holds seq {}, which already appeared at line {earlier}: \
                 a record was inserted",
                rec.seq
            ),
        );
    }
    (lines.len(), None)
}

/// Seqs of call intents with no later outcome, denial or timeout for the
/// same (step, capability, operation). Each closing record closes the
/// oldest open intent with its key.
fn open_intents<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<u64> {
    // Outcomes of mutating calls carry their intent's idempotency key.
    type Key<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );
    let mut open: HashMap<Key<'a>, VecDeque<u64>> = HashMap::new();
    for rec in records {
        let key = (
            rec.step.as_deref(),
            rec.capability.as_deref(),
            rec.operation.as_deref(),
            rec.key.as_deref(),
        );
        match rec.event {
            EventKind::CallIntent => open.entry(key).or_default().push_back(rec.seq),
            EventKind::CallOutcome | EventKind::Denial | EventKind::Timeout => {
                if let Some(queue) = open.get_mut(&key) {
                    queue.pop_front();
                }
            }
            _ => {}
        }
    }
    let mut seqs: Vec<u64> = open.into_values().flatten().collect();
    seqs.sort_unstable();
    seqs
}

/// Makes text safe and short for a terminal: control characters and
/// bidirectional overrides are escaped (a plugin must not be able to move
/// the cursor or reorder what the operator reads), and text longer than
/// `max` characters is cut with `…`.
fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max + 8));
    for (n, c) in s.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Compact JSON of a value, cleaned for the terminal.
fn compact(value: &Value, max: usize) -> String {
    match serde_json::to_string(value) {
        Ok(s) => clean(&s, max),
        Err(e) => format!("<unprintable: {e}>"),
    }
}

fn format_offset(base: Option<SystemTime>, ts: &str) -> String {
    let (Some(base), Ok(t)) = (base, humantime::parse_rfc3339(ts)) else {
        return "?".to_owned();
    };
    match t.duration_since(base) {
        Ok(d) => format!("+{}.{:03}s", d.as_secs(), d.subsec_millis()),
        Err(e) => {
            let d = e.duration();
            format!("-{}.{:03}s", d.as_secs(), d.subsec_millis())
        }
    }
}

fn format_duration(ms: f64) -> String {
    if !ms.is_finite() {
        String::new()
    } else if ms < 1000.0 {
        format!("({ms:.1}ms)")
    } else {
        format!("({:.3}s)", ms / 1000.0)
    }
}

fn format_plugin(p: &PluginIdentity) -> String {
    if p.name.is_empty() && p.version.is_empty() && p.sha256.is_empty() {
        return "(not yet identified)".to_owned();
    }
    format!(
        "{}@{} (sha256 {}…)",
        clean(&p.name, 64),
        clean(&p.version, 32),
        clean(short(&p.sha256), 12)
    )
}

/// Renders records as a timeline for `drhost audit show`: a header, then
/// one line per record with the offset from the first record, seq, step,
/// event, `capability.operation`, compact args, `-> outcome`, `-- message`
/// and duration. Denials, timeouts and traps are marked `!!`; call intents
/// that never got an outcome are marked `??`. Text from the log is cleaned
/// of control characters and long values are cut.
pub fn render_timeline(records: &[Record]) -> String {
    use fmt::Write as _;
    let Some(first) = records.first() else {
        return "no audit records\n".to_owned();
    };
    let base = humantime::parse_rfc3339(&first.ts).ok();
    let open = open_intents(records);
    let step_width = records
        .iter()
        .filter_map(|r| r.step.as_deref())
        .map(|s| clean(s, 32).chars().count())
        .max()
        .unwrap_or(1)
        .max(1);
    let seq_width = records.last().map_or(1, |r| r.seq.to_string().len() + 1);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {}  plugin {}  started {}  {} records",
        clean(&first.run, 80),
        format_plugin(&first.plugin),
        clean(&first.ts, 40),
        records.len()
    );
    let mut plugin = &first.plugin;
    for rec in records {
        if &rec.plugin != plugin {
            plugin = &rec.plugin;
            let _ = writeln!(out, "   plugin is now {}", format_plugin(plugin));
        }
        let marker = match rec.event {
            EventKind::Denial | EventKind::Timeout | EventKind::Trap => "!!",
            EventKind::CallIntent if open.binary_search(&rec.seq).is_ok() => "??",
            _ => "  ",
        };
        let mut fields: Vec<String> = Vec::new();
        match (rec.capability.as_deref(), rec.operation.as_deref()) {
            (Some(c), Some(o)) => fields.push(format!("{}.{}", clean(c, 32), clean(o, 48))),
            (Some(c), None) => fields.push(clean(c, 32)),
            (None, Some(o)) => fields.push(clean(o, 48)),
            (None, None) => {}
        }
        if let Some(args) = &rec.args {
            fields.push(compact(args, 120));
        }
        if let Some(outcome) = &rec.outcome {
            fields.push(format!("-> {}", compact(outcome, 120)));
        }
        if let Some(message) = &rec.message {
            fields.push(format!("-- {}", clean(message, 200)));
        }
        if let Some(ms) = rec.duration_ms {
            let d = format_duration(ms);
            if !d.is_empty() {
                fields.push(d);
            }
        }
        if marker == "??" {
            fields.push("(no outcome recorded)".to_owned());
        }
        let line = format!(
            "{marker} {offset:>10}  {seq:<seq_width$}  {step:<step_width$}  {event:<13}  {rest}",
            offset = format_offset(base, &rec.ts),
            seq = format!("#{}", rec.seq),
            step = rec
                .step
                .as_deref()
                .map_or_else(|| "-".to_owned(), |s| clean(s, 32)),
            event = rec.event.as_str(),
            rest = fields.join("  "),
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plugin() -> PluginIdentity {
        PluginIdentity {
            name: "db-corruption".to_owned(),
            version: "1.2.0".to_owned(),
            sha256: "ab".repeat(32),
        }
    }

    /// Writes a 10-record run and returns (tempdir, path).
    fn sample_log() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = AuditWriter::create(dir.path(), "run-1", plugin()).expect("create");
        w.append(Event::new(EventKind::RunStart).message("start"))
            .expect("append");
        w.append(Event::new(EventKind::StepStart).step("check"))
            .expect("append");
        w.append_durable(
            Event::new(EventKind::CallIntent)
                .step("check")
                .call("k8s", "scale")
                .args(json!({"deployment": "api", "replicas": 0})),
        )
        .expect("append");
        w.append(
            Event::new(EventKind::CallOutcome)
                .step("check")
                .call("k8s", "scale")
                .outcome(json!({"ok": 3}))
                .duration(Duration::from_millis(12)),
        )
        .expect("append");
        w.append(
            Event::new(EventKind::PluginOutput)
                .step("check")
                .message("hello world"),
        )
        .expect("append");
        w.append(
            Event::new(EventKind::CallIntent)
                .step("check")
                .call("health", "check")
                .args(json!({"target": "api"})),
        )
        .expect("append");
        w.append(
            Event::new(EventKind::CallOutcome)
                .step("check")
                .call("health", "check")
                .outcome(json!({"ok": "healthy"})),
        )
        .expect("append");
        w.append(Event::new(EventKind::StepEnd).step("check"))
            .expect("append");
        w.append(Event::new(EventKind::Note).message("n"))
            .expect("append");
        w.append(Event::new(EventKind::RunEnd)).expect("append");
        w.sync().expect("sync");
        assert_eq!(w.len(), 10);
        let path = w.path().to_path_buf();
        (dir, path)
    }

    fn lines_of(path: &Path) -> Vec<Vec<u8>> {
        let bytes = fs::read(path).expect("read");
        let (lines, terminated) = split_lines(&bytes);
        assert!(terminated);
        lines.into_iter().map(<[u8]>::to_vec).collect()
    }

    fn write_lines(path: &Path, lines: &[Vec<u8>]) {
        let mut bytes = Vec::new();
        for l in lines {
            bytes.extend_from_slice(l);
            bytes.push(b'\n');
        }
        fs::write(path, bytes).expect("write");
    }

    /// Applies `edit` to line `index` (0-based) and verifies.
    fn verify_with_edit(index: usize, edit: impl FnOnce(&mut Vec<u8>)) -> VerifyReport {
        let (_dir, path) = sample_log();
        let mut lines = lines_of(&path);
        edit(&mut lines[index]);
        write_lines(&path, &lines);
        verify(&path).expect("verify")
    }

    fn find(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len())
            .position(|w| w == needle)
            .expect("needle in line")
    }

    fn problem(report: &VerifyReport) -> &ChainProblem {
        report.problem.as_ref().expect("a problem")
    }

    #[test]
    fn untouched_log_verifies() {
        let (_dir, path) = sample_log();
        let report = verify(&path).expect("verify");
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.records, 10);
        assert!(report.open_intents.is_empty());
        assert!(
            report
                .to_string()
                .ends_with("verified: 10 records, chain intact"),
            "{report}"
        );
        assert_eq!(
            path.file_name().and_then(|n| n.to_str()),
            Some("run-1.audit.jsonl")
        );
    }

    #[test]
    fn line_format_and_round_trip() {
        let (_dir, path) = sample_log();
        let records = read_records(&path).expect("read");
        let lines = lines_of(&path);
        assert_eq!(records.len(), 10);
        assert_eq!(records[0].prev, GENESIS_PREV);
        for (i, (rec, line)) in records.iter().zip(&lines).enumerate() {
            assert_eq!(rec.seq, i as u64);
            assert_eq!(rec.run, "run-1");
            assert_eq!(rec.plugin, plugin());
            if i > 0 {
                assert_eq!(rec.prev, records[i - 1].hash);
            }
            // Record serializes to exactly the written line: field order of
            // `Record` and the writer's `Body` agree.
            let again = serde_json::to_vec(rec).expect("serialize");
            assert_eq!(&again, line, "line {}", i + 1);
            let text = std::str::from_utf8(line).expect("utf8");
            assert!(text.starts_with("{\"seq\":"), "{text}");
            assert!(humantime::parse_rfc3339(&rec.ts).is_ok(), "{}", rec.ts);
            assert!(rec.ts.ends_with('Z') && rec.ts.len() == 24, "{}", rec.ts);
        }
        assert_eq!(records[2].event, EventKind::CallIntent);
        assert_eq!(records[2].capability.as_deref(), Some("k8s"));
        assert_eq!(records[3].duration_ms, Some(12.0));
        let text = std::str::from_utf8(&lines[2]).expect("utf8");
        assert!(text.contains("\"event\":\"call-intent\""), "{text}");
        assert!(text.contains("\"step\":\"check\""), "{text}");
        let text = std::str::from_utf8(&lines[0]).expect("utf8");
        assert!(
            text.contains("\"step\":null,\"event\":\"run-start\""),
            "{text}"
        );
    }

    #[test]
    fn edited_args_byte_is_detected() {
        let report = verify_with_edit(2, |l| {
            let at = find(l, b"\"replicas\":0");
            l[at + 11] = b'1';
        });
        let p = problem(&report);
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::EditedRecord, 2, 3));
        assert_eq!(report.records, 2);
        assert!(
            report
                .to_string()
                .contains("record seq 2 (line 3) was edited: hash mismatch"),
            "{report}"
        );
    }

    #[test]
    fn edited_ts_byte_is_detected() {
        let report = verify_with_edit(4, |l| {
            let at = find(l, b"\"ts\":\"") + 6;
            // Change the last digit of the year: still a valid timestamp.
            l[at + 3] = if l[at + 3] == b'1' { b'2' } else { b'1' };
        });
        let p = problem(&report);
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::EditedRecord, 4, 5));
    }

    #[test]
    fn added_whitespace_is_detected() {
        let report = verify_with_edit(3, |l| {
            let at = find(l, b"\"seq\":") + 6;
            l.insert(at, b' ');
        });
        let p = problem(&report);
        assert_eq!((p.kind, p.seq), (ProblemKind::EditedRecord, 3));

        // Trailing whitespace after the closing brace.
        let report = verify_with_edit(5, |l| l.push(b' '));
        let p = problem(&report);
        assert_eq!((p.kind, p.seq), (ProblemKind::EditedRecord, 5));

        // A space inside a string changed to another character.
        let report = verify_with_edit(4, |l| {
            let at = find(l, b"hello world") + 5;
            l[at] = b'_';
        });
        let p = problem(&report);
        assert_eq!((p.kind, p.seq), (ProblemKind::EditedRecord, 4));
    }

    #[test]
    fn edited_hash_is_detected() {
        let report = verify_with_edit(6, |l| {
            let at = find(l, b"\"hash\":\"") + 8;
            l[at] = if l[at] == b'0' { b'1' } else { b'0' };
        });
        let p = problem(&report);
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::EditedRecord, 6, 7));

        // Upper-casing the hash keeps its value but not its bytes.
        let report = verify_with_edit(6, |l| {
            let at = find(l, b"\"hash\":\"") + 8;
            l[at..at + 64].make_ascii_uppercase();
        });
        let p = problem(&report);
        assert_eq!((p.kind, p.seq), (ProblemKind::EditedRecord, 6));
    }

    #[test]
    fn edited_seq_is_detected_as_edit() {
        let report = verify_with_edit(5, |l| l[7] = b'6');
        let p = problem(&report);
        assert_eq!((p.kind, p.seq), (ProblemKind::EditedRecord, 5));
    }

    #[test]
    fn unparsable_middle_line_is_malformed() {
        let report = verify_with_edit(4, |l| l[0] = b'[');
        let p = problem(&report);
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::Malformed, 4, 5));
        assert!(p.detail.contains("at column"), "{p}");
        assert!(!p.detail.contains("line 1"), "{p}");
        assert_eq!(report.records, 4);
    }

    #[test]
    fn removed_middle_record_is_missing() {
        let (_dir, path) = sample_log();
        let mut lines = lines_of(&path);
        lines.remove(4);
        write_lines(&path, &lines);
        let report = verify(&path).expect("verify");
        let p = problem(&report);
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::MissingRecord, 4, 5));
        assert!(
            report
                .to_string()
                .contains("record seq 4 (line 5) is missing"),
            "{report}"
        );

        let mut lines = lines_of(&path);
        lines.drain(1..3);
        write_lines(&path, &lines);
        let report = verify(&path).expect("verify");
        let p = problem(&report);
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::MissingRecord, 1, 2));
    }

    #[test]
    fn removed_first_record_is_missing() {
        let (_dir, path) = sample_log();
        let mut lines = lines_of(&path);
        lines.remove(0);
        write_lines(&path, &lines);
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::MissingRecord, 0, 1));
    }

    #[test]
    fn removed_last_record_is_not_detectable_by_the_chain() {
        let (_dir, path) = sample_log();
        let mut lines = lines_of(&path);
        lines.pop();
        write_lines(&path, &lines);
        let report = verify(&path).expect("verify");
        assert!(report.is_ok(), "documented limitation: {report}");
        assert_eq!(report.records, 9);
        let records = read_records(&path).expect("read");
        assert!(records.iter().all(|r| r.event != EventKind::RunEnd));
    }

    #[test]
    fn inserted_copy_is_detected() {
        // A copy of an earlier line, inserted later.
        let (_dir, path) = sample_log();
        let mut lines = lines_of(&path);
        let copy = lines[2].clone();
        lines.insert(6, copy);
        write_lines(&path, &lines);
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::InsertedRecord, 6, 7));
        assert!(p.detail.contains("copy of line 3"), "{p}");

        // A copy of a later line, inserted earlier.
        let (_dir, path) = sample_log();
        let mut lines = lines_of(&path);
        let copy = lines[8].clone();
        lines.insert(3, copy);
        write_lines(&path, &lines);
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::InsertedRecord, 3, 4));

        // A line duplicated in place.
        let (_dir, path) = sample_log();
        let mut lines = lines_of(&path);
        let copy = lines[5].clone();
        lines.insert(5, copy);
        write_lines(&path, &lines);
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::InsertedRecord, 6, 7));
    }

    #[test]
    fn swapped_records_are_reordered() {
        let (_dir, path) = sample_log();
        let mut lines = lines_of(&path);
        lines.swap(3, 4);
        write_lines(&path, &lines);
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::Reordered, 3, 4));
        assert!(p.detail.contains("seq 3 is at line 5"), "{p}");

        let mut lines = lines_of(&path);
        lines.swap(3, 4);
        lines.swap(1, 7);
        write_lines(&path, &lines);
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::Reordered, 1, 2));
    }

    /// Rewrites line `index` with `edit` applied to its record and its hash
    /// recomputed, as a forger without a key could.
    fn rehash(line: &[u8], edit: impl FnOnce(&mut Record)) -> Vec<u8> {
        let mut rec: Record = serde_json::from_slice(line).expect("parse");
        edit(&mut rec);
        let mut bytes = serde_json::to_vec(&rec).expect("serialize");
        let cut = bytes.len() - (HASH_MARKER.len() + HEX_LEN + 2);
        bytes.truncate(cut);
        let hash = sha256_hex(&bytes);
        bytes.extend_from_slice(HASH_MARKER);
        bytes.extend_from_slice(hash.as_bytes());
        bytes.extend_from_slice(b"\"}");
        bytes
    }

    #[test]
    fn rehashed_edit_breaks_the_next_link() {
        let (_dir, path) = sample_log();
        let mut lines = lines_of(&path);
        lines[3] = rehash(&lines[3], |r| r.outcome = Some(json!({"ok": 0})));
        write_lines(&path, &lines);
        let report = verify(&path).expect("verify");
        let p = problem(&report);
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::BrokenLink, 4, 5));
        assert_eq!(report.records, 4);

        // A rehashed first record with a non-genesis prev.
        let (_dir, path) = sample_log();
        let mut lines = lines_of(&path);
        lines[0] = rehash(&lines[0], |r| r.prev = "1".repeat(64));
        write_lines(&path, &lines);
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::BrokenLink, 0, 1));
    }

    #[test]
    fn forged_inserted_record_is_detected() {
        let (_dir, path) = sample_log();
        let mut lines = lines_of(&path);
        // A self-consistent forged seq 4 that links to seq 3, inserted
        // before the real seq 4.
        let forged = rehash(&lines[4], |r| r.message = Some("forged".to_owned()));
        lines.insert(4, forged);
        write_lines(&path, &lines);
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::InsertedRecord, 5, 6));
    }

    #[test]
    fn torn_last_line_is_detected() {
        let (_dir, path) = sample_log();
        let bytes = fs::read(&path).expect("read");
        let lines = lines_of(&path);
        let last_len = lines[9].len();
        // Cut the last record in half.
        let cut = bytes.len() - 1 - last_len / 2;
        fs::write(&path, &bytes[..cut]).expect("write");
        let report = verify(&path).expect("verify");
        let p = problem(&report);
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::TornLastLine, 9, 10));
        assert_eq!(report.records, 9);

        // A complete record whose newline never made it.
        fs::write(&path, &bytes[..bytes.len() - 1]).expect("write");
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!((p.kind, p.seq), (ProblemKind::TornLastLine, 9));

        // Garbage at the end with a newline: unparsable at EOF.
        let mut with_garbage = bytes.clone();
        with_garbage.extend_from_slice(b"{\"seq\":10,\"ts\n");
        fs::write(&path, &with_garbage).expect("write");
        let p = verify(&path).expect("verify").problem.expect("problem");
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::TornLastLine, 10, 11));

        // read_records refuses a torn line, naming file and line.
        fs::write(&path, &bytes[..cut]).expect("write");
        let err = read_records(&path).expect_err("torn");
        let msg = err.to_string();
        assert!(msg.contains("line 10: not a valid audit record"), "{msg}");
        assert!(msg.contains("at column"), "{msg}");
        assert!(msg.contains("run-1.audit.jsonl"), "{msg}");
    }

    #[test]
    fn empty_file_is_malformed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("e.audit.jsonl");
        fs::write(&path, b"").expect("write");
        let report = verify(&path).expect("verify");
        let p = problem(&report);
        assert_eq!((p.kind, p.seq, p.line), (ProblemKind::Malformed, 0, 1));
        assert_eq!(report.records, 0);
        assert!(read_records(&path).expect("read").is_empty());
    }

    #[test]
    fn open_intents_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = AuditWriter::create(dir.path(), "run-2", plugin()).expect("create");
        w.append(Event::new(EventKind::RunStart)).expect("append");
        let scale = || {
            Event::new(EventKind::CallIntent)
                .step("s1")
                .call("k8s", "scale")
        };
        let first = w.append_durable(scale()).expect("append");
        let second = w.append_durable(scale()).expect("append");
        w.append(
            Event::new(EventKind::CallOutcome)
                .step("s1")
                .call("k8s", "scale")
                .outcome(json!({"ok": 1})),
        )
        .expect("append");
        // Same capability and operation in another step does not close it.
        w.append(
            Event::new(EventKind::CallOutcome)
                .step("s2")
                .call("k8s", "scale"),
        )
        .expect("append");
        let restore = w
            .append_durable(
                Event::new(EventKind::CallIntent)
                    .step("s1")
                    .call("postgres", "restore"),
            )
            .expect("append");
        w.append(
            Event::new(EventKind::Timeout)
                .step("s1")
                .call("postgres", "restore"),
        )
        .expect("append");
        let health = w
            .append_durable(
                Event::new(EventKind::CallIntent)
                    .step("s1")
                    .call("health", "check"),
            )
            .expect("append");
        w.append(
            Event::new(EventKind::Denial)
                .step("s1")
                .call("health", "check"),
        )
        .expect("append");
        let path = w.path().to_path_buf();
        drop(w);
        let report = verify(&path).expect("verify");
        assert!(report.is_ok(), "{report}");
        assert_ne!(first, second);
        assert_eq!(report.open_intents, vec![second]);
        assert!(restore < health);
        assert!(
            report
                .to_string()
                .contains("1 call intent without an outcome"),
            "{report}"
        );
        let shown = render_timeline(&read_records(&path).expect("read"));
        assert!(shown.contains("(no outcome recorded)"), "{shown}");
    }

    #[test]
    fn crash_between_intent_and_outcome() {
        // The outcome record was torn by a crash: the intent is open and the
        // chain problem is only the torn line.
        let (_dir, path) = sample_log();
        let bytes = fs::read(&path).expect("read");
        let lines = lines_of(&path);
        let keep: usize = lines[..3].iter().map(|l| l.len() + 1).sum();
        fs::write(&path, &bytes[..keep + 40]).expect("write");
        let report = verify(&path).expect("verify");
        let p = problem(&report);
        assert_eq!((p.kind, p.seq), (ProblemKind::TornLastLine, 3));
        assert_eq!(report.open_intents, vec![2]);

        // After any other problem the rest is untrusted: no open intents.
        let report = verify_with_edit(3, |l| l.push(b' '));
        assert_eq!(problem(&report).kind, ProblemKind::EditedRecord);
        assert!(report.open_intents.is_empty());
        assert!(
            report.to_string().ends_with("; 3 records before it verify"),
            "{report}"
        );
    }

    #[test]
    fn create_refuses_existing_file_and_bad_run_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("a").join("b");
        let w = AuditWriter::create(&nested, "r1", PluginIdentity::default()).expect("create");
        assert!(w.is_empty());
        assert_eq!(w.run_id(), "r1");
        let err = AuditWriter::create(&nested, "r1", plugin()).expect_err("exists");
        assert!(matches!(err, AuditError::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains("r1.audit.jsonl"), "{err}");
        for bad in ["", "../x", "a/b", ".hidden", "a b", "x:y"] {
            let err = AuditWriter::create(&nested, bad, plugin()).expect_err(bad);
            assert!(
                matches!(err, AuditError::InvalidRunId { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn create_error_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").expect("write");
        let err = AuditWriter::create(&file, "r", plugin()).expect_err("not a dir");
        let msg = err.to_string();
        assert!(msg.starts_with("cannot create audit directory"), "{msg}");
        assert!(msg.contains("not-a-dir"), "{msg}");
    }

    #[test]
    fn set_plugin_applies_to_later_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w =
            AuditWriter::create(dir.path(), "r", PluginIdentity::default()).expect("create");
        w.append(Event::new(EventKind::RunStart)).expect("append");
        w.set_plugin(plugin());
        assert_eq!(w.plugin(), &plugin());
        w.append(Event::new(EventKind::StepStart).step("a"))
            .expect("append");
        let last = w.last_hash().to_owned();
        let path = w.path().to_path_buf();
        w.sync().expect("sync");
        let records = read_records(&path).expect("read");
        assert_eq!(records[0].plugin, PluginIdentity::default());
        assert_eq!(records[1].plugin, plugin());
        assert_eq!(records[1].hash, last);
        assert!(verify(&path).expect("verify").is_ok());
        let shown = render_timeline(&records);
        assert!(
            shown.contains("plugin is now db-corruption@1.2.0"),
            "{shown}"
        );
    }

    #[test]
    fn verify_missing_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope.audit.jsonl");
        let err = verify(&path).expect_err("missing");
        assert!(
            err.to_string().starts_with("cannot read audit log"),
            "{err}"
        );
        assert!(err.to_string().contains("nope.audit.jsonl"), "{err}");
    }

    #[test]
    fn timeline_is_readable() {
        let (_dir, path) = sample_log();
        let mut records = read_records(&path).expect("read");
        records[4].message = Some("evil\u{1b}[2Jtext\u{202e}".to_owned());
        records[3].outcome = Some(json!({"big": "x".repeat(500)}));
        let shown = render_timeline(&records);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 11, "{shown}");
        assert!(
            lines[0].starts_with("run run-1  plugin db-corruption@1.2.0"),
            "{shown}"
        );
        assert!(lines[1].contains("+0.000s"), "{shown}");
        assert!(lines[3].contains("k8s.scale"), "{shown}");
        assert!(
            lines[3].contains("{\"deployment\":\"api\",\"replicas\":0}"),
            "{shown}"
        );
        assert!(lines[4].contains("-> {\"big\":\"xxx"), "{shown}");
        assert!(lines[4].contains('…'), "{shown}");
        assert!(lines[4].contains("(12.0ms)"), "{shown}");
        assert!(
            lines[5].contains("-- evil\\u{1b}[2Jtext\\u{202e}"),
            "{shown}"
        );
        assert!(!shown.contains('\u{1b}'));
        assert!(lines[3].contains("call-intent"), "{shown}");
        assert!(lines[3].contains("#2"), "{shown}");
        assert!(lines[3].contains("check"), "{shown}");

        let mut denial = records[2].clone();
        denial.event = EventKind::Denial;
        denial.ts = "not a time".to_owned();
        let shown = render_timeline(&[records[0].clone(), denial]);
        let last = shown.lines().last().expect("line");
        assert!(last.starts_with("!!"), "{shown}");
        assert!(last.contains(" ? "), "{shown}");
        assert_eq!(render_timeline(&[]), "no audit records\n");
    }

    #[test]
    fn event_kinds_serialize_kebab_case() {
        let all = [
            EventKind::RunStart,
            EventKind::StepStart,
            EventKind::Approval,
            EventKind::CallIntent,
            EventKind::CallOutcome,
            EventKind::Denial,
            EventKind::Timeout,
            EventKind::Trap,
            EventKind::PluginOutput,
            EventKind::StepEnd,
            EventKind::RunEnd,
            EventKind::Note,
        ];
        for kind in all {
            let json = serde_json::to_string(&kind).expect("serialize");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let back: EventKind = serde_json::from_str(&json).expect("parse");
            assert_eq!(back, kind);
        }
    }

    #[test]
    fn non_finite_duration_is_null_and_still_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut w = AuditWriter::create(dir.path(), "r", plugin()).expect("create");
        let mut e = Event::new(EventKind::Note);
        e.duration_ms = Some(f64::NAN);
        w.append(e).expect("append");
        let path = w.path().to_path_buf();
        w.sync().expect("sync");
        assert!(verify(&path).expect("verify").is_ok());
        assert_eq!(read_records(&path).expect("read")[0].duration_ms, None);
    }
}
