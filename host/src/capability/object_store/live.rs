//! The real object-store backend: [`super::s3::S3Store`] behind the
//! [`ObjectStoreBackend`] trait, with S3's errors mapped to `cap-error`.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::ObjectStoreBackend;
use super::s3::{ObjectMeta, S3Config, S3Error, S3Store};
use crate::bindings::CapError;
use crate::bindings::object_store::ObjectInfo;

/// S3 (or an S3-compatible store) as the `object-store` capability.
#[derive(Clone)]
pub struct LiveObjectStore {
    store: S3Store,
}

impl LiveObjectStore {
    /// Connects lazily: nothing is sent until the first call.
    ///
    /// # Errors
    /// Missing credentials or a malformed configuration.
    pub fn new(cfg: S3Config) -> Result<Self, S3Error> {
        Ok(LiveObjectStore {
            store: S3Store::new(cfg)?,
        })
    }

    /// The client, for restores and downloads.
    pub fn store(&self) -> &S3Store {
        &self.store
    }
}

/// S3's error as the WIT `cap-error`.
pub fn cap_error(e: S3Error) -> CapError {
    let m = e.to_string();
    match e {
        S3Error::NotFound(_) => CapError::NotFound(m),
        S3Error::Denied(_) => CapError::Denied(m),
        S3Error::Unavailable(_) => CapError::Unavailable(m),
        S3Error::Invalid(_) => CapError::Invalid(m),
        S3Error::Failed(_) => CapError::Failed(m),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The WIT record for one object, with its age now.
pub fn info(m: ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        age_ms: now_ms().saturating_sub(m.last_modified_ms),
        bucket: m.bucket,
        key: m.key,
        size: m.size,
        last_modified_ms: m.last_modified_ms,
        etag: m.etag,
        sha256: m.sha256_hex,
    }
}

#[async_trait]
impl ObjectStoreBackend for LiveObjectStore {
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, CapError> {
        let objects = self.store.list(bucket, prefix).await.map_err(cap_error)?;
        Ok(objects.into_iter().map(info).collect())
    }

    async fn newest(&self, bucket: &str, prefix: &str) -> Result<Option<ObjectInfo>, CapError> {
        let newest = self.store.newest(bucket, prefix).await.map_err(cap_error)?;
        Ok(newest.map(info))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, CapError> {
        self.store
            .head(bucket, key)
            .await
            .map(info)
            .map_err(cap_error)
    }

    async fn verify(&self, bucket: &str, key: &str) -> Result<bool, CapError> {
        self.store.verify(bucket, key).await.map_err(cap_error)
    }
}
