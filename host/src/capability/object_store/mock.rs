//! Mock object store: objects with size, age (relative to when the fixture
//! was loaded), optional checksum and a corruption flag.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Deserialize;

use super::ObjectStoreBackend;
use crate::bindings::CapError;
use crate::bindings::object_store::ObjectInfo;
use crate::fixture::{MockLog, parse_opt_duration};
use crate::mock_faults::Faults;

/// `[object_store]` in a fixture.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreFixture {
    /// The objects in the simulated buckets.
    #[serde(default)]
    pub objects: Vec<ObjectFixture>,
}

/// One `[[object_store.objects]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectFixture {
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Age when the fixture is loaded ("10m", "3h").
    pub age: Option<String>,
    /// Stored sha256 (hex).
    pub sha256: Option<String>,
    /// The content does not match its checksum (verify -> false; restore fails).
    #[serde(default)]
    pub corrupt: bool,
}

/// One simulated object, as the postgres mock also sees it.
#[derive(Debug, Clone)]
pub struct MockObject {
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification.
    pub modified: SystemTime,
    /// Stored checksum.
    pub sha256: Option<String>,
    /// Content is corrupt.
    pub corrupt: bool,
}

impl MockObject {
    fn info(&self) -> ObjectInfo {
        let ms =
            |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        ObjectInfo {
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            size: self.size,
            last_modified_ms: ms(self.modified),
            age_ms: crate::sim::now()
                .duration_since(self.modified)
                .unwrap_or_default()
                .as_millis() as u64,
            etag: Some(format!("\"mock-{:x}\"", self.size)),
            sha256: self.sha256.clone(),
        }
    }
}

/// The simulated buckets.
pub struct MockObjectStore {
    objects: Vec<MockObject>,
    faults: Faults,
    log: MockLog,
}

impl MockObjectStore {
    /// Builds the simulation from its fixture section.
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn new(
        f: ObjectStoreFixture,
        faults: Faults,
        log: MockLog,
    ) -> Result<MockObjectStore, String> {
        let now = crate::sim::now();
        let mut objects = Vec::new();
        for (i, o) in f.objects.into_iter().enumerate() {
            let age = parse_opt_duration(&o.age, &format!("object_store.objects[{i}].age"))?;
            objects.push(MockObject {
                bucket: o.bucket,
                key: o.key,
                size: o.size,
                modified: now.checked_sub(age).unwrap_or(now),
                sha256: o.sha256,
                corrupt: o.corrupt,
            });
        }
        objects.sort_by_key(|o| o.modified);
        Ok(MockObjectStore {
            objects,
            faults,
            log,
        })
    }

    /// Looks an object up (used by the postgres mock's restore).
    pub fn find(&self, bucket: &str, key: &str) -> Option<&MockObject> {
        self.objects
            .iter()
            .find(|o| o.bucket == bucket && o.key == key)
    }

    async fn enter(&self, op: &str, detail: String) -> Result<(), CapError> {
        self.log.record(format!("object-store.{op} {detail}"));
        self.faults.inject(&format!("object-store.{op}")).await
    }

    fn under<'a>(
        &'a self,
        bucket: &'a str,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a MockObject> {
        self.objects
            .iter()
            .filter(move |o| o.bucket == bucket && o.key.starts_with(prefix))
    }
}

#[async_trait]
impl ObjectStoreBackend for MockObjectStore {
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, CapError> {
        self.enter("list", format!("{bucket}/{prefix}")).await?;
        Ok(self.under(bucket, prefix).map(MockObject::info).collect())
    }

    async fn newest(&self, bucket: &str, prefix: &str) -> Result<Option<ObjectInfo>, CapError> {
        self.enter("newest", format!("{bucket}/{prefix}")).await?;
        Ok(self.under(bucket, prefix).last().map(MockObject::info))
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, CapError> {
        self.enter("head", format!("{bucket}/{key}")).await?;
        self.find(bucket, key)
            .map(MockObject::info)
            .ok_or_else(|| CapError::NotFound(format!("object {bucket}/{key} not found")))
    }

    async fn verify(&self, bucket: &str, key: &str) -> Result<bool, CapError> {
        self.enter("verify", format!("{bucket}/{key}")).await?;
        let o = self
            .find(bucket, key)
            .ok_or_else(|| CapError::NotFound(format!("object {bucket}/{key} not found")))?;
        Ok(!o.corrupt)
    }
}
