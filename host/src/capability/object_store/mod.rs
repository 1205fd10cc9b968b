//! The `object-store` capability: host implementation (through the gate), the
//! backend trait, and the mock. Read-only: backups are read, never written.

pub mod credentials;
pub mod live;
pub mod mock;
pub mod s3;

use async_trait::async_trait;

use crate::bindings::CapError;
use crate::bindings::object_store::{Host, ObjectInfo};
use crate::instance::PluginCtx;
use crate::policy::Op;

/// Object-store operations behind the `object-store` interface.
#[async_trait]
pub trait ObjectStoreBackend: Send + Sync {
    /// Objects under `prefix`, oldest first.
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, CapError>;
    /// Newest object under `prefix`.
    async fn newest(&self, bucket: &str, prefix: &str) -> Result<Option<ObjectInfo>, CapError>;
    /// Metadata of one object.
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, CapError>;
    /// Whether the content matches the stored checksum.
    async fn verify(&self, bucket: &str, key: &str) -> Result<bool, CapError>;
}

#[async_trait]
impl ObjectStoreBackend for super::Unavailable {
    async fn list(&self, _: &str, _: &str) -> Result<Vec<ObjectInfo>, CapError> {
        Err(self.err("object-store"))
    }
    async fn newest(&self, _: &str, _: &str) -> Result<Option<ObjectInfo>, CapError> {
        Err(self.err("object-store"))
    }
    async fn head(&self, _: &str, _: &str) -> Result<ObjectInfo, CapError> {
        Err(self.err("object-store"))
    }
    async fn verify(&self, _: &str, _: &str) -> Result<bool, CapError> {
        Err(self.err("object-store"))
    }
}

impl Host for PluginCtx {
    async fn list(
        &mut self,
        bucket: String,
        prefix: String,
    ) -> wasmtime::Result<Result<Vec<ObjectInfo>, CapError>> {
        let b = self.caps().object_store.clone();
        let op = Op::ObjList {
            bucket: &bucket,
            prefix: &prefix,
        };
        self.call_retrying(op, || b.list(&bucket, &prefix), None)
            .await
    }

    async fn newest(
        &mut self,
        bucket: String,
        prefix: String,
    ) -> wasmtime::Result<Result<Option<ObjectInfo>, CapError>> {
        let b = self.caps().object_store.clone();
        let op = Op::ObjNewest {
            bucket: &bucket,
            prefix: &prefix,
        };
        self.call_retrying(op, || b.newest(&bucket, &prefix), None)
            .await
    }

    async fn head(
        &mut self,
        bucket: String,
        key: String,
    ) -> wasmtime::Result<Result<ObjectInfo, CapError>> {
        let b = self.caps().object_store.clone();
        let op = Op::ObjHead {
            bucket: &bucket,
            key: &key,
        };
        self.call_retrying(op, || b.head(&bucket, &key), None).await
    }

    async fn verify(
        &mut self,
        bucket: String,
        key: String,
    ) -> wasmtime::Result<Result<bool, CapError>> {
        let b = self.caps().object_store.clone();
        let op = Op::ObjVerify {
            bucket: &bucket,
            key: &key,
        };
        self.call_retrying(op, || b.verify(&bucket, &key), None)
            .await
    }
}
