//! Copies of the audit log off the machine (`[run] audit_mirror =
//! "s3://bucket/prefix/"`): at run end, and after every step with
//! `audit_mirror_each_step = true`, the whole log is uploaded to
//! `<prefix><run-id>.audit.jsonl` with its sha256 as the object's checksum.
//! The trail then survives the loss of the machine that ran the recovery.
//!
//! A failed upload never fails the recovery: the runner warns, records a
//! `note` in the log (which the next upload carries), and the end-of-run
//! report says where the log is and where it is not.

use std::path::Path;

use async_trait::async_trait;

use crate::capability::object_store::s3::{S3Config, S3Store};
use crate::runbook::AuditMirrorTarget;

/// Where audit logs are copied.
#[async_trait]
pub trait AuditSink: Send + Sync {
    /// Where copies go, for messages (`s3://bucket/prefix/`).
    fn location(&self) -> String;
    /// Uploads the log at `path` (all of it); returns where it went.
    async fn mirror(&self, path: &Path) -> Result<String, String>;
}

/// The runner's mirroring settings.
#[derive(Clone)]
pub struct AuditMirror {
    /// Where to.
    pub sink: std::sync::Arc<dyn AuditSink>,
    /// After every step too.
    pub each_step: bool,
}

/// An S3 bucket (any S3-compatible store).
pub struct S3AuditSink {
    store: S3Store,
    target: AuditMirrorTarget,
}

impl S3AuditSink {
    /// A sink for `target` with the client settings `cfg` (the runbook's
    /// `[backends.object_store]`, or the environment's).
    ///
    /// # Errors
    /// The settings are unusable (no credentials, bad endpoint).
    pub fn new(cfg: S3Config, target: AuditMirrorTarget) -> Result<Self, String> {
        let store = S3Store::new(cfg).map_err(|e| e.to_string())?;
        Ok(S3AuditSink { store, target })
    }
}

#[async_trait]
impl AuditSink for S3AuditSink {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.target.bucket, self.target.prefix)
    }

    async fn mirror(&self, path: &Path) -> Result<String, String> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{} has no file name", path.display()))?;
        let body = tokio::fs::read(path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let key = format!("{}{name}", self.target.prefix);
        let size = body.len();
        self.store
            .put_bytes(&self.target.bucket, &key, body.into())
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("s3://{}/{key} ({size} bytes)", self.target.bucket))
    }
}
