//! A small, read-only S3 client for backups: list, head, verify, and fast
//! parallel reads of large objects. It uses only external crates (mainly
//! `aws-sdk-s3` without `aws-config`), so it can be tested on its own.
//!
//! # Design
//!
//! - **Configuration** ([`S3Config`]) is explicit. [`S3Config::resolve_env`]
//!   fills the values the caller left unset from the usual `AWS_*`
//!   variables. [`S3Store::new`] checks it and refuses missing credentials
//!   when the store is built, not at the first call.
//! - **Retries are ours, not the SDK's.** SDK retries are turned off. Every
//!   request goes through one loop: exponential backoff with jitter, capped at
//!   [`MAX_BACKOFF`], at most [`S3Config::max_retries`] retries. Only failures
//!   that may pass are retried: 5xx, `SlowDown`/throttling, timeouts, dropped
//!   connections and body read errors. The SDK cannot retry a GET whose body
//!   breaks halfway; this loop can, and it resumes from the last byte it got.
//! - **Large reads** ([`S3Store::open_stream`]) split the object into ranges of
//!   [`S3Config::range_size`] bytes. At most [`S3Config::max_in_flight`] ranges
//!   are fetched at once, each into its own memory buffer, and they are handed
//!   out strictly in order. Every range request sends `If-Match: <etag>`, so if
//!   the object is replaced mid-read the read fails with a clear error instead
//!   of mixing two versions. A range that breaks is asked for again from the
//!   byte where it stopped, not from its start.
//! - **Memory is bounded.** A range holds a semaphore permit from the moment
//!   its request starts until the consumer takes its bytes. So a stream never
//!   holds more than `max_in_flight * range_size` bytes of object data,
//!   however slow the consumer is. (A [`BlockingObjectReader`] also keeps the
//!   one range it is reading from.) A consumer that stops reading stops the
//!   downloads too: no new range starts until it reads again.
//! - **Cancellation**: dropping an [`ObjectStream`] (or its
//!   [`BlockingObjectReader`]) aborts the background task that drives the
//!   ranges, and that aborts every range request still running.
//! - **Checksums**: an object's sha256 is taken from `ChecksumSHA256` (HEAD
//!   with `ChecksumMode::Enabled`), stored as base64 and turned into lowercase
//!   hex. A composite (multipart, "checksum of checksums") value is not a hash
//!   of the content, so it is ignored. Without one, the user metadata
//!   `x-amz-meta-sha256` is used. The SDK does not check response checksums
//!   itself (`ResponseChecksumValidation::WhenRequired`): ranged reads carry
//!   none, and [`S3Store::verify`] reports a mismatch as `Ok(false)`, not as an
//!   error.
//!
//! # Time limits
//!
//! Connecting is limited to [`CONNECT_TIMEOUT`]. Each non-streaming attempt
//! (list, head, up to a GET's response headers) is limited to
//! [`ATTEMPT_TIMEOUT`]. A body that stops arriving is caught by the SDK's
//! stalled-stream protection. Nothing here limits a whole [`ObjectStream`]:
//! the caller wraps it in its own timeout.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_s3::Client;

use aws_sdk_s3::config::SharedCredentialsProvider;

use super::credentials;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// Default size of one ranged GET: 8 MiB.
pub const DEFAULT_RANGE_SIZE: u64 = 8 * 1024 * 1024;
/// Default number of ranged GETs in flight for one stream.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// The first ranged GET of a stream (see [`S3Store::open_range`]).
pub const FIRST_RANGE: u64 = 1024 * 1024;
/// Default number of retries of one request (so 6 attempts in all).
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// Default `max-keys` of one ListObjectsV2 page (the S3 maximum).
pub const DEFAULT_LIST_PAGE_SIZE: u32 = 1000;
/// Region used when neither the config nor the environment names one.
pub const DEFAULT_REGION: &str = "us-east-1";
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The wait before the first retry (before jitter); it doubles each time.
pub const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// Time limit for opening a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time limit for one attempt of a request, up to its response headers.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach an S3 service, and how hard to push it.
///
/// Build it with `S3Config { .., ..Default::default() }`, then call
/// [`S3Config::resolve_env`] to take what is left unset from the environment.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Endpoint URL (`http://127.0.0.1:9000`, `https://s3.example.com`);
    /// `None` means AWS's endpoint for the region.
    pub endpoint: Option<String>,
    /// Region used for signing (and for AWS's endpoint).
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// non-AWS servers (MinIO, Ceph, s3s) need; virtual-hosted otherwise.
    pub path_style: bool,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
    /// A `credential_process` command from an AWS profile, run by
    /// [`S3Store::new`] when no keys are set (see [`super::credentials`]).
    pub credential_process: Option<String>,
    /// The AWS profile to read (`None`: `$AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// Web identity federation (EKS IRSA), used when nothing above gave
    /// keys: the S3 client asks STS, and again before the keys expire.
    pub web_identity: Option<credentials::WebIdentity>,
    /// Where the credentials came from, for `drhost doctor` and messages
    /// ("environment", "profile ops (~/.aws/credentials)", ...).
    pub credentials_from: Option<String>,
    /// Bytes per ranged GET in [`S3Store::open_stream`]; default 8 MiB.
    pub range_size: u64,
    /// Ranged GETs in flight per stream; default 4.
    pub max_in_flight: usize,
    /// Retries of one request (or of one range) before giving up; default 5.
    pub max_retries: u32,
    /// `max-keys` of one ListObjectsV2 page; default 1000.
    pub list_page_size: u32,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            credential_process: None,
            profile: None,
            web_identity: None,
            credentials_from: None,
            range_size: DEFAULT_RANGE_SIZE,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_retries: DEFAULT_MAX_RETRIES,
            list_page_size: DEFAULT_LIST_PAGE_SIZE,
        }
    }
}

impl fmt::Debug for S3Config {
    /// Secrets are not printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redact(&self.secret_access_key))
            .field("session_token", &redact(&self.session_token))
            .field("credential_process", &self.credential_process)
            .field("profile", &self.profile)
            .field("web_identity", &self.web_identity)
            .field("credentials_from", &self.credentials_from)
            .field("range_size", &self.range_size)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_retries", &self.max_retries)
            .field("list_page_size", &self.list_page_size)
            .finish()
    }
}

impl S3Config {
    /// Fills the fields left `None` from the environment, then from the AWS
    /// shared files, in the AWS SDKs' order (see [`super::credentials`]):
    /// endpoint from `AWS_ENDPOINT_URL_S3` (then `AWS_ENDPOINT_URL`); keys
    /// from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// else from the profile (`profile`, `$AWS_PROFILE` or `default`: static
    /// keys or a `credential_process`); region from `AWS_REGION`,
    /// `AWS_DEFAULT_REGION`, the profile, then `us-east-1`. Empty variables
    /// count as unset. Values already set are kept.
    ///
    /// # Errors
    /// A profile that was asked for by name and does not exist, a shared
    /// file that cannot be parsed, or a profile whose credentials drhost
    /// cannot use (the message says what to write instead).
    pub fn resolve_env(self) -> Result<Self, String> {
        self.resolve_from(|name| std::env::var(name).ok())
    }

    /// [`S3Config::resolve_env`] with `lookup` in place of the environment
    /// (for tests that must not change the process's environment).
    ///
    /// # Errors
    /// As [`S3Config::resolve_env`].
    #[doc(hidden)]
    pub fn resolve_from_for_tests(
        self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        self.resolve_from(lookup)
    }

    /// [`S3Config::resolve_env`] with `lookup` in place of the environment.
    fn resolve_from(mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if self.endpoint.is_none() {
            self.endpoint = get("AWS_ENDPOINT_URL_S3").or_else(|| get("AWS_ENDPOINT_URL"));
        }
        let explicit_keys = self.access_key_id.is_some() && self.secret_access_key.is_some();
        if self.access_key_id.is_none() {
            self.access_key_id = get("AWS_ACCESS_KEY_ID");
        }
        if self.secret_access_key.is_none() {
            self.secret_access_key = get("AWS_SECRET_ACCESS_KEY");
        }
        if self.session_token.is_none() {
            self.session_token = get("AWS_SESSION_TOKEN");
        }
        let have_keys = self.access_key_id.is_some() && self.secret_access_key.is_some();
        if have_keys && self.credentials_from.is_none() {
            self.credentials_from = Some(
                if explicit_keys {
                    "runbook config"
                } else {
                    "environment"
                }
                .into(),
            );
        }
        let named = self.profile.clone().or_else(|| get("AWS_PROFILE"));
        let env_region = get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION"));
        // The shared files are read when they can still matter: for keys,
        // for the region, or because a profile was named (a typo must not
        // pass silently).
        if !have_keys || (self.region.is_none() && env_region.is_none()) || named.is_some() {
            let name = named.clone().unwrap_or_else(|| "default".into());
            let (creds_file, config_file) = credentials::shared_files(&get);
            let profile =
                credentials::load_profile(&name, creds_file.as_deref(), config_file.as_deref())?;
            match profile {
                None if named.is_some() => {
                    let files: Vec<String> = [creds_file, config_file]
                        .into_iter()
                        .flatten()
                        .map(|f| f.display().to_string())
                        .collect();
                    return Err(format!(
                        "AWS profile {name:?} is not in {}",
                        files.join(" or ")
                    ));
                }
                None => {}
                Some(profile) => {
                    if self.region.is_none() && env_region.is_none() {
                        self.region = profile.region();
                    }
                    if !have_keys {
                        let files: Vec<String> = profile
                            .files
                            .iter()
                            .map(|f| f.display().to_string())
                            .collect();
                        let from = format!("profile {name} ({})", files.join(", "));
                        match profile.credentials()? {
                            credentials::ProfileCredentials::Static {
                                access_key_id,
                                secret_access_key,
                                session_token,
                            } => {
                                self.access_key_id = Some(access_key_id);
                                self.secret_access_key = Some(secret_access_key);
                                self.session_token = session_token;
                                self.credentials_from = Some(from);
                            }
                            credentials::ProfileCredentials::Process(cmd) => {
                                self.credential_process = Some(cmd);
                                self.credentials_from =
                                    Some(format!("credential_process of {from}"));
                            }
                        }
                    }
                }
            }
        }
        if self.region.is_none() {
            self.region = Some(env_region.unwrap_or_else(|| DEFAULT_REGION.to_owned()));
        }
        let keyless = self.access_key_id.is_none()
            && self.secret_access_key.is_none()
            && self.credential_process.is_none();
        if keyless {
            let region = self.region.clone().unwrap_or_default();
            if let Some(w) = credentials::WebIdentity::from_env(&get, &region) {
                self.credentials_from = Some(format!("web identity (role {})", w.role_arn));
                self.web_identity = Some(w);
            }
        }
        Ok(self)
    }
}

/// What S3 says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Bucket name.
    pub bucket: String,
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, in milliseconds since the Unix epoch. A listing
    /// gives milliseconds; HEAD gives whole seconds (HTTP date).
    pub last_modified_ms: u64,
    /// ETag as the server sent it, quotes included (`"9b2c..."`), ready for
    /// an `If-Match` header.
    pub etag: Option<String>,
    /// sha256 of the content, lowercase hex: from `ChecksumSHA256` (a
    /// full-object one) or else the user metadata `sha256`. Only
    /// [`S3Store::head`] and [`S3Store::newest`] fill it: ListObjectsV2 does
    /// not return checksum values, so [`S3Store::list`] leaves it `None`.
    pub sha256_hex: Option<String>,
}

impl ObjectMeta {
    /// `s3://bucket/key`, for messages.
    pub fn url(&self) -> String {
        s3_url(&self.bucket, &self.key)
    }
}

/// Why an S3 operation failed. Each message names the bucket (and key) and
/// gives the server's error code and message when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3Error {
    /// The bucket or the key does not exist (404, `NoSuchKey`,
    /// `NoSuchBucket`).
    #[error("not found: {0}")]
    NotFound(String),
    /// The credentials were refused or lack a permission (403,
    /// `AccessDenied`, `SignatureDoesNotMatch`, `InvalidAccessKeyId`).
    #[error("access denied: {0} (check the credentials and the bucket policy)")]
    Denied(String),
    /// The service could not be reached or kept failing (5xx, `SlowDown`,
    /// timeouts, dropped connections) after all retries.
    #[error("S3 unavailable: {0}")]
    Unavailable(String),
    /// The request or the configuration is wrong (400, a bad endpoint,
    /// missing credentials, nothing to verify against).
    #[error("invalid S3 request: {0}")]
    Invalid(String),
    /// Anything else, for example an object that changed while it was read
    /// (412 on `If-Match`, a different size) or a local write error.
    #[error("S3 operation failed: {0}")]
    Failed(String),
}

impl S3Error {
    /// The message without the variant's prefix.
    pub fn detail(&self) -> &str {
        match self {
            Self::NotFound(m)
            | Self::Denied(m)
            | Self::Unavailable(m)
            | Self::Invalid(m)
            | Self::Failed(m) => m,
        }
    }

    /// The same kind of error with `f` applied to its message.
    fn map_detail(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Self::NotFound(m) => Self::NotFound(f(m)),
            Self::Denied(m) => Self::Denied(f(m)),
            Self::Unavailable(m) => Self::Unavailable(f(m)),
            Self::Invalid(m) => Self::Invalid(f(m)),
            Self::Failed(m) => Self::Failed(f(m)),
        }
    }

    /// The closest `std::io::ErrorKind`, for [`BlockingObjectReader`].
    fn io_kind(&self) -> io::ErrorKind {
        match self {
            Self::NotFound(_) => io::ErrorKind::NotFound,
            Self::Denied(_) => io::ErrorKind::PermissionDenied,
            Self::Unavailable(_) => io::ErrorKind::ConnectionAborted,
            Self::Invalid(_) => io::ErrorKind::InvalidInput,
            Self::Failed(_) => io::ErrorKind::Other,
        }
    }
}

impl From<S3Error> for io::Error {
    /// An `io::Error` whose message is the `S3Error`'s.
    fn from(err: S3Error) -> Self {
        io::Error::new(err.io_kind(), err)
    }
}

/// One failed attempt: the error to report, and whether trying again may help.
#[derive(Debug)]
struct Failure {
    error: S3Error,
    retryable: bool,
}

impl Failure {
    fn retry(error: S3Error) -> Self {
        Self {
            error,
            retryable: true,
        }
    }

    fn fatal(error: S3Error) -> Self {
        Self {
            error,
            retryable: false,
        }
    }
}

/// Sorts an HTTP status and an S3 error code into an error kind, and says
/// whether a retry may help. `detail` is the whole message.
fn classify(status: Option<u16>, code: Option<&str>, detail: String) -> Failure {
    match (status, code.unwrap_or("")) {
        (_, "NoSuchKey" | "NoSuchBucket" | "NotFound") | (Some(404), _) => {
            Failure::fatal(S3Error::NotFound(detail))
        }
        (
            _,
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestTimeout"
            | "InternalError"
            | "ServiceUnavailable",
        )
        | (Some(429 | 500..=599), _) => Failure::retry(S3Error::Unavailable(detail)),
        (_, "AccessDenied" | "SignatureDoesNotMatch" | "InvalidAccessKeyId")
        | (Some(401 | 403), _) => Failure::fatal(S3Error::Denied(detail)),
        (_, "PreconditionFailed") | (Some(412), _) => Failure::fatal(S3Error::Failed(format!(
            "{detail} (the object was replaced while it was read: its ETag changed)"
        ))),
        (_, "InvalidRange") | (Some(416), _) => Failure::fatal(S3Error::Failed(format!(
            "{detail} (the object changed size while it was read)"
        ))),
        (Some(400), _) => Failure::fatal(S3Error::Invalid(detail)),
        _ => Failure::fatal(S3Error::Failed(detail)),
    }
}

/// Turns an SDK error into a [`Failure`]; `what` names the request, e.g.
/// `HEAD s3://bucket/key`.
fn from_sdk<E>(err: SdkError<E>, what: &str) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            let status = err.raw_response().map(|r| r.status().as_u16());
            let code = err.code().map(str::to_owned);
            let message = err.message().map(str::to_owned);
            let mut detail = what.to_owned();
            if let Some(status) = status {
                detail.push_str(&format!(": HTTP {status}"));
            }
            if let Some(code) = &code {
                detail.push_str(&format!(" {code}"));
            }
            if let Some(message) = &message {
                detail.push_str(&format!(": {message}"));
            }
            if matches!(err, SdkError::ResponseError(_)) {
                // The response could not be read or parsed: a broken
                // connection or a confused proxy. Worth another try.
                detail.push_str(&format!(": {}", DisplayErrorContext(&err)));
                return Failure::retry(S3Error::Unavailable(detail));
            }
            classify(status, code.as_deref(), detail)
        }
        SdkError::TimeoutError(_) => Failure::retry(S3Error::Unavailable(format!(
            "{what}: timed out: {}",
            DisplayErrorContext(&err)
        ))),
        SdkError::DispatchFailure(d) if d.is_user() => Failure::fatal(S3Error::Invalid(format!(
            "{what}: {}",
            DisplayErrorContext(&err)
        ))),
        SdkError::DispatchFailure(_) => Failure::retry(S3Error::Unavailable(format!(
            "{what}: connection failed: {}",
            DisplayErrorContext(&err)
        ))),
        SdkError::ConstructionFailure(_) => Failure::fatal(S3Error::Invalid(format!(
            "{what}: could not build the request: {}",
            DisplayErrorContext(&err)
        ))),
        _ => Failure::fatal(S3Error::Failed(format!(
            "{what}: {}",
            DisplayErrorContext(&err)
        ))),
    }
}

/// The wait before retry number `retry` (1-based): `BASE_BACKOFF * 2^(retry-1)`
/// capped at [`MAX_BACKOFF`], then scaled into `[1/2, 1]` of that by
/// `jitter` (in `[0, 1)`).
fn backoff(retry: u32, jitter: f64) -> Duration {
    let exp = retry.saturating_sub(1).min(16);
    let full = BASE_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A random number in `[0, 1)` from std's randomly keyed hasher, which is
/// enough for jitter.
fn jitter() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Splits `size` bytes into consecutive ranges of `range_size` bytes (the
/// last one shorter). No ranges for an empty object.
#[cfg(test)]
fn plan_ranges(size: u64, range_size: u64) -> Vec<Range<u64>> {
    plan_ranges_from(0..size, range_size, range_size)
}

/// Ranges covering `span` in order: the first `first` bytes long (at most
/// `range_size`), each next one twice the previous, up to `range_size`.
fn plan_ranges_from(span: Range<u64>, first: u64, range_size: u64) -> Vec<Range<u64>> {
    let range_size = range_size.max(1);
    let mut len = first.clamp(1, range_size);
    let mut ranges = Vec::new();
    let mut start = span.start;
    while start < span.end {
        let end = (start + len).min(span.end);
        ranges.push(start..end);
        start = end;
        len = (len * 2).min(range_size);
    }
    ranges
}

/// The `Range` header for bytes `[start, end)`.
fn range_header(start: u64, end: u64) -> String {
    format!("bytes={start}-{}", end - 1)
}

/// The total size in a `Content-Range` header (`bytes 0-99/1234` -> 1234);
/// `None` if absent, unknown (`*`) or malformed.
fn content_range_total(header: &str) -> Option<u64> {
    header.rsplit_once('/')?.1.trim().parse().ok()
}

/// A base64 `ChecksumSHA256` as lowercase hex. `None` for a composite value
/// (`<base64>-<parts>`, a checksum of part checksums) or anything that does
/// not decode to 32 bytes.
fn checksum_b64_to_hex(b64: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    (raw.len() == 32).then(|| hex::encode(raw))
}

/// A sha256 written by a person or a tool into user metadata, if it is one.
fn metadata_sha256(value: &str) -> Option<String> {
    let v = value.trim().to_ascii_lowercase();
    (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then_some(v)
}

/// Milliseconds since the epoch (0 for a missing or pre-1970 date).
fn millis(dt: Option<&DateTime>) -> u64 {
    dt.and_then(|d| d.to_millis().ok())
        .and_then(|ms| u64::try_from(ms).ok())
        .unwrap_or(0)
}

fn s3_url(bucket: &str, key: &str) -> String {
    format!("s3://{bucket}/{key}")
}

/// The object's sha256 from a HEAD response: a full-object `ChecksumSHA256`,
/// else the user metadata `sha256`.
fn sha256_of(head: &HeadObjectOutput) -> Option<String> {
    let composite = matches!(head.checksum_type(), Some(ChecksumType::Composite));
    let from_checksum = head
        .checksum_sha256()
        .filter(|_| !composite)
        .and_then(checksum_b64_to_hex);
    from_checksum.or_else(|| {
        head.metadata()
            .and_then(|m| m.get("sha256"))
            .and_then(|v| metadata_sha256(v))
    })
}

/// Settings the store needs after construction.
#[derive(Debug)]
struct Settings {
    range_size: u64,
    max_in_flight: usize,
    max_retries: u32,
    list_page_size: i32,
}

/// A read-only S3 client. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    settings: Arc<Settings>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Checks `cfg` and builds the client. It does not read the environment
    /// (call [`S3Config::resolve_env`] first for that) and does no network
    /// I/O; it runs the profile's `credential_process` when that is where
    /// the keys come from.
    ///
    /// # Errors
    ///
    /// [`S3Error::Invalid`] when credentials are missing (the message names
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`), the endpoint is not an
    /// `http(s)://` URL, or `range_size`, `max_in_flight` or `list_page_size`
    /// is 0.
    pub fn new(mut cfg: S3Config) -> Result<Self, S3Error> {
        if cfg.access_key_id.is_none()
            && cfg.secret_access_key.is_none()
            && let Some(cmd) = &cfg.credential_process
        {
            let keys = credentials::run_credential_process(cmd).map_err(S3Error::Invalid)?;
            cfg.access_key_id = Some(keys.access_key_id);
            cfg.secret_access_key = Some(keys.secret_access_key);
            cfg.session_token = keys.session_token;
        }
        let web_identity = cfg
            .web_identity
            .take()
            .filter(|_| cfg.access_key_id.is_none() && cfg.secret_access_key.is_none());
        let keys = (cfg.access_key_id.take(), cfg.secret_access_key.take());
        let credentials = match (keys, web_identity) {
            (_, Some(w)) => {
                crate::capability::install_crypto_provider();
                SharedCredentialsProvider::new(credentials::WebIdentityProvider(w))
            }
            ((Some(a), Some(s)), None) if !a.is_empty() && !s.is_empty() => {
                SharedCredentialsProvider::new(Credentials::new(
                    a,
                    s,
                    cfg.session_token.take(),
                    None,
                    "drhost-s3-config",
                ))
            }
            ((a, s), None) => {
                let missing: Vec<&str> = [
                    a.filter(|v| !v.is_empty())
                        .is_none()
                        .then_some("access key id (AWS_ACCESS_KEY_ID)"),
                    s.filter(|v| !v.is_empty())
                        .is_none()
                        .then_some("secret access key (AWS_SECRET_ACCESS_KEY)"),
                ]
                .into_iter()
                .flatten()
                .collect();
                return Err(S3Error::Invalid(format!(
                    "no S3 credentials: missing {}; set them in the environment \
                     (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, and AWS_SESSION_TOKEN \
                     for temporary credentials), in an AWS profile (AWS_PROFILE, \
                     ~/.aws/credentials), or use web identity (AWS_WEB_IDENTITY_TOKEN_FILE \
                     and AWS_ROLE_ARN)",
                    missing.join(" and ")
                )));
            }
        };
        if let Some(endpoint) = &cfg.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(S3Error::Invalid(format!(
                "S3 endpoint {endpoint:?} is not an http:// or https:// URL"
            )));
        }
        if cfg.range_size == 0 || cfg.max_in_flight == 0 || cfg.list_page_size == 0 {
            return Err(S3Error::Invalid(format!(
                "range_size ({}), max_in_flight ({}) and list_page_size ({}) must be above 0",
                cfg.range_size, cfg.max_in_flight, cfg.list_page_size
            )));
        }
        let region = cfg.region.unwrap_or_else(|| DEFAULT_REGION.to_owned());
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .force_path_style(cfg.path_style)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        builder = builder.credentials_provider(credentials);
        if let Some(endpoint) = cfg.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Ok(Self {
            client: Client::from_conf(builder.build()),
            settings: Arc::new(Settings {
                range_size: cfg.range_size,
                max_in_flight: cfg.max_in_flight,
                max_retries: cfg.max_retries,
                list_page_size: i32::try_from(cfg.list_page_size).unwrap_or(i32::MAX),
            }),
        })
    }

    /// Runs `attempt` until it succeeds, fails for good, or has been retried
    /// `max_retries` times, sleeping [`backoff`] between attempts.
    async fn with_retries<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, S3Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut retries = 0;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(f) if f.retryable && retries < self.settings.max_retries => {
                    retries += 1;
                    let wait = backoff(retries, jitter());
                    tracing::warn!(
                        request = what,
                        retry = retries,
                        wait_ms = wait.as_millis() as u64,
                        error = %f.error,
                        "S3 request failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(f) => return Err(gave_up(f, retries)),
            }
        }
    }

    /// All objects under `prefix` (every ListObjectsV2 page), oldest first,
    /// then by key. `sha256_hex` is `None`: listings carry no checksums.
    ///
    /// # Errors
    ///
    /// [`S3Error::NotFound`] for a missing bucket, [`S3Error::Denied`],
    /// [`S3Error::Unavailable`] after retries, and so on.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, S3Error> {
        let what = format!("LIST {}", s3_url(bucket, prefix));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .with_retries(&what, || {
                    let req = self
                        .client
                        .list_objects_v2()
                        .bucket(bucket)
                        .prefix(prefix)
                        .max_keys(self.settings.list_page_size)
                        .set_continuation_token(token.clone());
                    async { req.send().await.map_err(|e| from_sdk(e, &what)) }
                })
                .await?;
            for obj in page.contents() {
                let Some(key) = obj.key() else { continue };
                out.push(ObjectMeta {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                    size: obj.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
                    last_modified_ms: millis(obj.last_modified()),
                    etag: obj.e_tag().map(str::to_owned),
                    sha256_hex: None,
                });
            }
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(next)) => token = Some(next.to_owned()),
                (Some(true), None) => {
                    return Err(S3Error::Failed(format!(
                        "{what}: the listing is truncated but has no continuation token"
                    )));
                }
                _ => break,
            }
        }
        out.sort_by(|a, b| (a.last_modified_ms, &a.key).cmp(&(b.last_modified_ms, &b.key)));
        Ok(out)
    }

    /// The newest object under `prefix` (the last of [`S3Store::list`]), with
    /// its full metadata from [`S3Store::head`]; `None` when there is none.
    ///
    /// # Errors
    ///
    /// As [`S3Store::list`] and [`S3Store::head`].
    pub async fn newest(&self, bucket: &str, prefix: &str) -> Result<Option<ObjectMeta>, S3Error> {
        match self.list(bucket, prefix).await?.pop() {
            Some(last) => self.head(bucket, &last.key).await.map(Some),
            None => Ok(None),
        }
    }

    /// Uploads `body` to `bucket/key` with its sha256 as the object's
    /// checksum (the server checks it). The host's own write, used only to
    /// mirror audit logs (`[run] audit_mirror`); no capability reaches it.
    ///
    /// # Errors
    ///
    /// [`S3Error::Denied`], [`S3Error::NotFound`] (no such bucket),
    /// [`S3Error::Unavailable`] after retries, and so on.
    pub async fn put_bytes(&self, bucket: &str, key: &str, body: Bytes) -> Result<(), S3Error> {
        let what = format!("PUT {}", s3_url(bucket, key));
        let sum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&body));
        self.with_retries(&what, || {
            let req = self
                .client
                .put_object()
                .bucket(bucket)
                .key(key)
                .content_type("application/x-ndjson")
                .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
                .checksum_sha256(sum.clone())
                .body(aws_sdk_s3::primitives::ByteStream::from(body.clone()));
            async { req.send().await.map_err(|e| from_sdk(e, &what)) }
        })
        .await?;
        Ok(())
    }

    /// Metadata of one object, with its sha256 when one is stored.
    ///
    /// # Errors
    ///
    /// [`S3Error::NotFound`] for a missing key or bucket, [`S3Error::Denied`],
    /// [`S3Error::Unavailable`] after retries, and so on.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, S3Error> {
        let what = format!("HEAD {}", s3_url(bucket, key));
        let head = self
            .with_retries(&what, || {
                let req = self
                    .client
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .checksum_mode(ChecksumMode::Enabled);
                async { req.send().await.map_err(|e| from_sdk(e, &what)) }
            })
            .await?;
        Ok(ObjectMeta {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size: head
                .content_length()
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
            last_modified_ms: millis(head.last_modified()),
            etag: head.e_tag().map(str::to_owned),
            sha256_hex: sha256_of(&head),
        })
    }

    /// Reads the whole object (as [`S3Store::open_stream`] does), hashes it
    /// with sha256 and compares with the stored checksum: `Ok(true)` if they
    /// match, `Ok(false)` if not.
    ///
    /// # Errors
    ///
    /// [`S3Error::Invalid`] when the object has no stored sha256 (nothing to
    /// verify against); otherwise as [`S3Store::head`] and the stream.
    pub async fn verify(&self, bucket: &str, key: &str) -> Result<bool, S3Error> {
        let meta = self.head(bucket, key).await?;
        let Some(expected) = meta.sha256_hex.clone() else {
            return Err(S3Error::Invalid(format!(
                "{} has no stored sha256 (no ChecksumSHA256 and no x-amz-meta-sha256): \
                 there is nothing to verify it against",
                meta.url()
            )));
        };
        let mut stream = self.open_stream(&meta);
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next_chunk().await {
            let chunk = chunk?;
            // Hashing 8 MiB takes tens of milliseconds: keep it off the
            // async workers.
            hasher = tokio::task::spawn_blocking(move || {
                hasher.update(&chunk);
                hasher
            })
            .await
            .map_err(|e| S3Error::Failed(format!("hashing {}: {e}", meta.url())))?;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            tracing::warn!(object = %meta.url(), %expected, %actual, "sha256 mismatch");
        }
        Ok(actual == expected)
    }

    /// Downloads the object to `path` with parallel ranged GETs. It writes
    /// `<path>.part` first and renames it when complete, so `path` never holds
    /// a partial object; the `.part` file is removed on error or when the
    /// future is dropped. When a sha256 is stored, the content is checked
    /// against it on the way. Returns the number of bytes written.
    ///
    /// # Errors
    ///
    /// As [`S3Store::head`] and the stream; [`S3Error::Failed`] on a local
    /// write error or a sha256 mismatch (the partial file is removed).
    pub async fn download_to(&self, bucket: &str, key: &str, path: &Path) -> Result<u64, S3Error> {
        let meta = self.head(bucket, key).await?;
        let mut part = path.as_os_str().to_owned();
        part.push(".part");
        let part = PathBuf::from(part);
        // Removes the partial file on error, and when this future is dropped.
        let mut guard = RemoveOnDrop(Some(part.clone()));
        let written = self.download_part(&meta, &part).await?;
        std::fs::rename(&part, path).map_err(|e| {
            S3Error::Failed(format!(
                "{}: renaming {} to {}: {e}",
                meta.url(),
                part.display(),
                path.display()
            ))
        })?;
        guard.0 = None;
        Ok(written)
    }

    async fn download_part(&self, meta: &ObjectMeta, part: &Path) -> Result<u64, S3Error> {
        let url = meta.url();
        let local =
            |e: io::Error| S3Error::Failed(format!("{url}: writing {}: {e}", part.display()));
        let mut file = std::fs::File::create(part).map_err(local)?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut stream = self.open_stream(meta);
        while let Some(chunk) = stream.next_chunk().await {
            let chunk = chunk?;
            written += chunk.len() as u64;
            (file, hasher) = tokio::task::spawn_blocking(move || {
                file.write_all(&chunk)?;
                hasher.update(&chunk);
                Ok::<_, io::Error>((file, hasher))
            })
            .await
            .map_err(|e| local(io::Error::other(e)))?
            .map_err(local)?;
        }
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| local(io::Error::other(e)))?
            .map_err(local)?;
        if let Some(expected) = &meta.sha256_hex {
            let actual = hex::encode(hasher.finalize());
            if &actual != expected {
                return Err(S3Error::Failed(format!(
                    "{url}: downloaded content has sha256 {actual}, the stored checksum is \
                     {expected}: the object is corrupt"
                )));
            }
        }
        Ok(written)
    }

    /// Starts reading the object `meta` describes (usually from
    /// [`S3Store::head`]) with parallel ranged GETs, delivered in order by
    /// [`ObjectStream::next_chunk`]. See the module docs for the memory bound,
    /// retries and cancellation. `meta.size` decides the ranges, and
    /// `meta.etag`, when set, is sent as `If-Match`.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (it spawns the background task).
    pub fn open_stream(&self, meta: &ObjectMeta) -> ObjectStream {
        self.open_range(
            meta,
            0..meta.size,
            self.settings.max_in_flight,
            self.settings.range_size,
        )
    }

    /// Ranged GETs in flight per stream ([`S3Config::max_in_flight`]).
    pub fn max_in_flight(&self) -> usize {
        self.settings.max_in_flight
    }

    /// Bytes per ranged GET ([`S3Config::range_size`]).
    pub fn range_size(&self) -> u64 {
        self.settings.range_size
    }

    /// Like [`S3Store::open_stream`], for bytes `range` of the object only,
    /// with at most `max_in_flight` ranged GETs (at least 1) of at most
    /// `range_size` bytes at once. Several such streams read different parts
    /// of one object at once (the restore reads one per table), so each gets
    /// a share of the memory bound: `(max_in_flight + 1) * range_size`. The
    /// first range is [`FIRST_RANGE`] and the following ones double up to
    /// `range_size` (a slow start): the first bytes arrive sooner, and a
    /// reader that stops early (after a custom archive's TOC) has fetched
    /// little it does not use.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (it spawns the background task).
    pub fn open_range(
        &self,
        meta: &ObjectMeta,
        range: Range<u64>,
        max_in_flight: usize,
        range_size: u64,
    ) -> ObjectStream {
        let end = range.end.min(meta.size);
        let start = range.start.min(end);
        let range_size = range_size.max(FIRST_RANGE);
        let ranges = plan_ranges_from(start..end, FIRST_RANGE, range_size);
        let max_in_flight = max_in_flight.max(1);
        let (tx, rx) = mpsc::channel(max_in_flight);
        let target = Arc::new(meta.clone());
        tracing::debug!(
            object = %meta.url(),
            size = meta.size,
            ranges = ranges.len(),
            max_in_flight,
            "opening S3 stream"
        );
        let driver = tokio::spawn(drive(self.clone(), target, ranges, max_in_flight, tx));
        ObjectStream {
            size: end - start,
            rx: Some(rx),
            progress: Arc::new(AtomicU64::new(0)),
            driver: Some(driver),
        }
    }

    /// Fetches bytes `range` of the object into one buffer, resuming after a
    /// retryable failure from the first byte not yet received.
    async fn fetch_range(&self, target: &ObjectMeta, range: Range<u64>) -> Result<Bytes, S3Error> {
        let len = usize::try_from(range.end - range.start)
            .map_err(|_| S3Error::Invalid(format!("range {range:?} does not fit in memory")))?;
        let mut buf = BytesMut::with_capacity(len);
        let mut retries = 0;
        loop {
            let from = range.start + buf.len() as u64;
            match self.fetch_into(target, from, range.end, &mut buf).await {
                Ok(()) => return Ok(buf.freeze()),
                Err(f) if f.retryable && retries < self.settings.max_retries => {
                    retries += 1;
                    let wait = backoff(retries, jitter());
                    tracing::warn!(
                        object = %target.url(),
                        range = ?range,
                        resume_at = range.start + buf.len() as u64,
                        retry = retries,
                        wait_ms = wait.as_millis() as u64,
                        error = %f.error,
                        "S3 range read failed; resuming"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(f) => return Err(gave_up(f, retries)),
            }
        }
    }

    /// One GET of bytes `[from, end)`, appended to `buf`. On failure, `buf`
    /// keeps what arrived, so the next attempt starts after it.
    async fn fetch_into(
        &self,
        target: &ObjectMeta,
        from: u64,
        end: u64,
        buf: &mut BytesMut,
    ) -> Result<(), Failure> {
        let what = format!(
            "GET {} bytes {from}-{}",
            target.url(),
            end.saturating_sub(1)
        );
        let out = self
            .client
            .get_object()
            .bucket(&target.bucket)
            .key(&target.key)
            .range(range_header(from, end))
            .set_if_match(target.etag.clone())
            .send()
            .await
            .map_err(|e| from_sdk(e, &what))?;
        if let Some(total) = out.content_range().and_then(content_range_total)
            && total != target.size
        {
            return Err(Failure::fatal(S3Error::Failed(format!(
                "{what}: the object is now {total} bytes, it was {} when the read started \
                 (it was replaced mid-read)",
                target.size
            ))));
        }
        let want = end - from;
        if let Some(len) = out.content_length()
            && u64::try_from(len).ok() != Some(want)
        {
            return Err(Failure::fatal(S3Error::Failed(format!(
                "{what}: the server sent {len} bytes for a {want}-byte range"
            ))));
        }
        let expected_total = buf.len() as u64 + want;
        let mut body = out.body;
        let mut got = 0u64;
        loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    got += chunk.len() as u64;
                    if got > want {
                        return Err(Failure::fatal(S3Error::Failed(format!(
                            "{what}: the server sent more than the {want} bytes asked for"
                        ))));
                    }
                    buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => {
                    return Err(Failure::retry(S3Error::Unavailable(format!(
                        "{what}: reading the body failed after {got} of {want} bytes: {}",
                        DisplayErrorContext(&e)
                    ))));
                }
                None if (buf.len() as u64) < expected_total => {
                    return Err(Failure::retry(S3Error::Unavailable(format!(
                        "{what}: the connection closed after {got} of {want} bytes"
                    ))));
                }
                None => return Ok(()),
            }
        }
    }
}

/// Deletes the file it names when dropped (unless emptied first).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The final error after `retries` retries.
fn gave_up(f: Failure, retries: u32) -> S3Error {
    if retries == 0 {
        f.error
    } else {
        f.error
            .map_detail(|m| format!("{m} (gave up after {retries} retries)"))
    }
}

/// A finished range with the permit that counts it against `max_in_flight`;
/// the permit is released when the consumer takes the bytes.
type RangeResult = Result<(Bytes, OwnedSemaphorePermit), S3Error>;

/// The background task of one stream: starts range fetches in order, each
/// once a permit is free, and queues their results (in order) for the
/// consumer. Aborting it drops `tasks`, which aborts every fetch.
async fn drive(
    store: S3Store,
    target: Arc<ObjectMeta>,
    ranges: Vec<Range<u64>>,
    max_in_flight: usize,
    tx: mpsc::Sender<oneshot::Receiver<RangeResult>>,
) {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut tasks = JoinSet::new();
    for range in ranges {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (done_tx, done_rx) = oneshot::channel();
        if tx.send(done_rx).await.is_err() {
            return; // the consumer is gone
        }
        let (store, target) = (store.clone(), target.clone());
        tasks.spawn(async move {
            let result = store.fetch_range(&target, range).await;
            let _ = done_tx.send(result.map(|bytes| (bytes, permit)));
        });
        while tasks.try_join_next().is_some() {}
    }
    drop(tx);
    while tasks.join_next().await.is_some() {}
}

/// An object being read by parallel ranged GETs, delivered in order. Made by
/// [`S3Store::open_stream`]. Dropping it stops every request it started.
pub struct ObjectStream {
    size: u64,
    rx: Option<mpsc::Receiver<oneshot::Receiver<RangeResult>>>,
    progress: Arc<AtomicU64>,
    driver: Option<JoinHandle<()>>,
}

impl fmt::Debug for ObjectStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStream")
            .field("size", &self.size)
            .field("bytes_read", &self.bytes_read())
            .field("finished", &self.rx.is_none())
            .finish()
    }
}

impl ObjectStream {
    /// The next piece of the object, in order (one range, up to
    /// `range_size` bytes); `None` at the end. After an error the stream is
    /// finished and returns `None`.
    ///
    /// Cancel-safe only between chunks: dropping a pending call loses the
    /// chunk it was waiting for, so drop the stream after that.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, S3Error>> {
        let chunk = self.recv().await;
        if let Some(Ok(bytes)) = &chunk {
            self.progress
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        chunk
    }

    /// The next chunk, without counting it.
    async fn recv(&mut self) -> Option<Result<Bytes, S3Error>> {
        let rx = self.rx.as_mut()?;
        let Some(pending) = rx.recv().await else {
            self.finish();
            return None;
        };
        match pending.await {
            Ok(Ok((bytes, permit))) => {
                drop(permit); // the bytes are the consumer's now
                Some(Ok(bytes))
            }
            Ok(Err(e)) => {
                self.finish();
                Some(Err(e))
            }
            Err(_) => {
                self.finish();
                Some(Err(S3Error::Failed(
                    "a range read ended without a result (its task panicked or was aborted)"
                        .to_owned(),
                )))
            }
        }
    }

    /// Stops the background work and marks the stream finished.
    fn finish(&mut self) {
        self.rx = None;
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
    }

    /// Size of the object in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes handed to the consumer so far.
    pub fn bytes_read(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// A shared counter of the bytes handed to the consumer, for a progress
    /// report running elsewhere.
    pub fn progress(&self) -> Arc<AtomicU64> {
        self.progress.clone()
    }

    /// A `std::io::Read` over the rest of the stream, for code running on a
    /// `spawn_blocking` thread or a plain thread. Each `read` that needs a new
    /// range waits for it with `handle.block_on`, which parks only the
    /// calling thread; the downloads go on in `handle`'s runtime. It counts
    /// bytes in [`ObjectStream::progress`] as `read` returns them.
    ///
    /// Do not use the reader from an async task: `Handle::block_on` panics
    /// there. With a current-thread runtime, that runtime must be running
    /// (for example awaiting the `spawn_blocking` handle).
    pub fn into_blocking_reader(self, handle: Handle) -> BlockingObjectReader {
        BlockingObjectReader {
            stream: self,
            handle,
            current: Bytes::new(),
        }
    }
}

impl Drop for ObjectStream {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Blocking `std::io::Read` over an [`ObjectStream`]; see
/// [`ObjectStream::into_blocking_reader`]. Errors are `io::Error`s whose
/// message is the [`S3Error`]'s (and whose inner error is the `S3Error`).
#[derive(Debug)]
pub struct BlockingObjectReader {
    stream: ObjectStream,
    handle: Handle,
    current: Bytes,
}

impl BlockingObjectReader {
    /// Size of the object in bytes.
    pub fn size(&self) -> u64 {
        self.stream.size()
    }

    /// Bytes returned by `read` so far.
    pub fn bytes_read(&self) -> u64 {
        self.stream.bytes_read()
    }

    /// The shared progress counter (see [`ObjectStream::progress`]).
    pub fn progress(&self) -> Arc<AtomicU64> {
        self.stream.progress()
    }
}

impl Read for BlockingObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            match self.handle.block_on(self.stream.recv()) {
                None => return Ok(0),
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(e.into()),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        self.stream.progress.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_ranges_covers_the_object_once_in_order() {
        let check = |size: u64, range: u64, expected: &[(u64, u64)]| {
            let got: Vec<(u64, u64)> = plan_ranges(size, range)
                .into_iter()
                .map(|r| (r.start, r.end))
                .collect();
            assert_eq!(got, expected, "size {size}, range {range}");
        };
        check(0, 8, &[]);
        check(1, 8, &[(0, 1)]);
        check(8, 8, &[(0, 8)]);
        check(9, 8, &[(0, 8), (8, 9)]);
        check(20, 8, &[(0, 8), (8, 16), (16, 20)]);
        check(3, 0, &[(0, 1), (1, 2), (2, 3)]); // a zero range size is treated as 1
        let mib = 1024 * 1024;
        let ranges = plan_ranges(50 * mib, 8 * mib);
        assert_eq!(ranges.len(), 7);
        assert_eq!(ranges.last(), Some(&(48 * mib..50 * mib)));
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn ranges_start_small_and_double_up_to_the_range_size() {
        let got: Vec<(u64, u64)> = plan_ranges_from(100..200, 10, 32)
            .into_iter()
            .map(|r| (r.start, r.end))
            .collect();
        assert_eq!(
            got,
            [(100, 110), (110, 130), (130, 162), (162, 194), (194, 200)]
        );
        assert!(plan_ranges_from(5..5, 1, 8).is_empty());
        // A first range bigger than the range size is clamped to it.
        assert_eq!(plan_ranges_from(0..20, 64, 8).len(), 3);
    }

    #[test]
    fn range_header_is_inclusive() {
        assert_eq!(range_header(0, 8), "bytes=0-7");
        assert_eq!(range_header(100, 101), "bytes=100-100");
    }

    #[test]
    fn content_range_total_parses_the_size() {
        assert_eq!(content_range_total("bytes 0-99/1234"), Some(1234));
        assert_eq!(content_range_total("bytes 0-99/*"), None);
        assert_eq!(content_range_total("garbage"), None);
    }

    #[test]
    fn checksum_base64_becomes_hex() {
        // sha256("") in both encodings.
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            checksum_b64_to_hex("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
            Some(empty.to_owned())
        );
        // Composite (multipart) checksums are not content hashes.
        assert_eq!(
            checksum_b64_to_hex("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=-3"),
            None
        );
        // A CRC32 is not a sha256.
        assert_eq!(checksum_b64_to_hex("AAAAAA=="), None);
        assert_eq!(
            metadata_sha256(&empty.to_uppercase()),
            Some(empty.to_owned())
        );
        assert_eq!(metadata_sha256("abc"), None);
    }

    #[test]
    fn errors_are_classified_by_status_and_code() {
        let check = |status: Option<u16>, code: Option<&str>, kind: &str, retry: bool| {
            let f = classify(status, code, "X".to_owned());
            let got = match f.error {
                S3Error::NotFound(_) => "not-found",
                S3Error::Denied(_) => "denied",
                S3Error::Unavailable(_) => "unavailable",
                S3Error::Invalid(_) => "invalid",
                S3Error::Failed(_) => "failed",
            };
            assert_eq!((got, f.retryable), (kind, retry), "{status:?} {code:?}");
        };
        check(Some(404), Some("NoSuchKey"), "not-found", false);
        check(Some(404), Some("NoSuchBucket"), "not-found", false);
        check(Some(404), None, "not-found", false); // HEAD has no body
        check(Some(403), Some("SignatureDoesNotMatch"), "denied", false);
        check(Some(403), None, "denied", false);
        check(Some(503), Some("SlowDown"), "unavailable", true);
        check(Some(500), Some("InternalError"), "unavailable", true);
        check(Some(502), None, "unavailable", true);
        check(Some(429), None, "unavailable", true);
        check(Some(400), Some("RequestTimeout"), "unavailable", true);
        check(Some(400), Some("InvalidArgument"), "invalid", false);
        check(Some(412), Some("PreconditionFailed"), "failed", false);
        check(Some(416), Some("InvalidRange"), "failed", false);
        check(Some(409), Some("Conflict"), "failed", false);
    }

    #[test]
    fn error_messages_keep_their_detail() {
        let e = classify(
            Some(404),
            Some("NoSuchKey"),
            "HEAD s3://b/k: NoSuchKey".into(),
        )
        .error;
        assert_eq!(e.to_string(), "not found: HEAD s3://b/k: NoSuchKey");
        let e = gave_up(Failure::retry(S3Error::Unavailable("GET x".into())), 5);
        assert_eq!(e.detail(), "GET x (gave up after 5 retries)");
        let io: io::Error = e.clone().into();
        assert_eq!(io.to_string(), e.to_string());
        assert_eq!(io.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        assert_eq!(backoff(1, 1.0), BASE_BACKOFF);
        assert_eq!(backoff(1, 0.0), BASE_BACKOFF / 2);
        assert_eq!(backoff(3, 1.0), BASE_BACKOFF * 4);
        assert_eq!(backoff(30, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(30, 0.0), MAX_BACKOFF / 2);
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn resolve_fills_only_missing_values() {
        let env = |name: &str| {
            match name {
                "AWS_ENDPOINT_URL" => Some("http://generic"),
                "AWS_ENDPOINT_URL_S3" => Some("http://s3-specific"),
                "AWS_DEFAULT_REGION" => Some("eu-west-1"),
                "AWS_ACCESS_KEY_ID" => Some("AKID"),
                "AWS_SECRET_ACCESS_KEY" => Some("SECRET"),
                "AWS_SESSION_TOKEN" => Some(""),
                _ => None,
            }
            .map(str::to_owned)
        };
        let cfg = S3Config {
            access_key_id: Some("mine".into()),
            ..Default::default()
        }
        .resolve_from(env)
        .unwrap();
        assert_eq!(cfg.endpoint.as_deref(), Some("http://s3-specific"));
        assert_eq!(cfg.region.as_deref(), Some("eu-west-1"));
        assert_eq!(cfg.access_key_id.as_deref(), Some("mine"));
        assert_eq!(cfg.secret_access_key.as_deref(), Some("SECRET"));
        assert_eq!(cfg.session_token, None, "empty variables are unset");
        let bare = S3Config::default().resolve_from(|_| None).unwrap();
        assert_eq!(bare.region.as_deref(), Some(DEFAULT_REGION));
        assert!(
            !format!("{cfg:?}").contains("SECRET"),
            "Debug hides secrets"
        );
    }

    #[test]
    fn keys_and_region_come_from_the_named_profile_when_the_environment_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[ops]\naws_access_key_id = AKOPS\naws_secret_access_key = sops\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[profile ops]\nregion = eu-north-1\n[profile proc]\ncredential_process = printf '{\"Version\":1,\"AccessKeyId\":\"AKPROC\",\"SecretAccessKey\":\"sproc\"}'\n",
        )
        .unwrap();
        let files = |extra: &'static [(&'static str, &'static str)]| {
            let creds = creds.display().to_string();
            let config = config.display().to_string();
            move |k: &str| match k {
                "AWS_SHARED_CREDENTIALS_FILE" => Some(creds.clone()),
                "AWS_CONFIG_FILE" => Some(config.clone()),
                _ => extra
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned()),
            }
        };
        let ops = S3Config::default()
            .resolve_from(files(&[("AWS_PROFILE", "ops")]))
            .unwrap();
        assert_eq!(ops.access_key_id.as_deref(), Some("AKOPS"));
        assert_eq!(ops.region.as_deref(), Some("eu-north-1"));
        assert!(
            ops.credentials_from
                .as_deref()
                .unwrap()
                .contains("profile ops")
        );
        // The environment's keys and region win over the profile's.
        let env = S3Config::default()
            .resolve_from(files(&[
                ("AWS_PROFILE", "ops"),
                ("AWS_ACCESS_KEY_ID", "AKENV"),
                ("AWS_SECRET_ACCESS_KEY", "senv"),
                ("AWS_REGION", "ap-south-1"),
            ]))
            .unwrap();
        assert_eq!(env.access_key_id.as_deref(), Some("AKENV"));
        assert_eq!(env.region.as_deref(), Some("ap-south-1"));
        assert_eq!(env.credentials_from.as_deref(), Some("environment"));
        // A credential_process runs when the store is built.
        let proc = S3Config {
            profile: Some("proc".into()),
            ..Default::default()
        }
        .resolve_from(files(&[]))
        .unwrap();
        assert!(proc.access_key_id.is_none() && proc.credential_process.is_some());
        S3Store::new(proc).unwrap();
        // A named profile that does not exist is an error, not anonymous access.
        let err = S3Config::default()
            .resolve_from(files(&[("AWS_PROFILE", "typo")]))
            .unwrap_err();
        assert!(
            err.contains("\"typo\"") && err.contains("credentials"),
            "{err}"
        );
    }

    #[test]
    fn missing_credentials_are_refused_by_name() {
        let err = S3Store::new(S3Config::default()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, S3Error::Invalid(_)), "{msg}");
        assert!(
            msg.contains("AWS_ACCESS_KEY_ID") && msg.contains("AWS_SECRET_ACCESS_KEY"),
            "{msg}"
        );
        let err = S3Store::new(S3Config {
            access_key_id: Some("a".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("missing secret access key"),
            "{err}"
        );
        let err = S3Store::new(S3Config {
            access_key_id: Some("a".into()),
            secret_access_key: Some("s".into()),
            endpoint: Some("127.0.0.1:9000".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("not an http"), "{err}");
    }
}
