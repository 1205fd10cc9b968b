//! The Kubernetes backend trait: what a real cluster client or the mock must
//! provide. Object-safe, async.

use std::time::Duration;

use async_trait::async_trait;

use crate::bindings::CapError;
use crate::bindings::k8s::DeploymentStatus;

/// Kubernetes operations behind the `k8s` interface. Arguments have passed
/// the policy; implementations need not re-check grants.
#[async_trait]
pub trait K8sBackend: Send + Sync {
    /// Status of one deployment.
    async fn get_deployment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<DeploymentStatus, CapError>;
    /// Sets the replica count; returns the previous one.
    async fn scale(&self, namespace: &str, name: &str, replicas: u32) -> Result<u32, CapError>;
    /// Rolls back; returns the revision now in effect.
    async fn rollout_undo(
        &self,
        namespace: &str,
        name: &str,
        to_revision: Option<u64>,
    ) -> Result<u64, CapError>;
    /// Waits until ready, at most `timeout` (already clipped to the step's
    /// budget by the caller).
    async fn wait_ready(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<DeploymentStatus, CapError>;
    /// Applies a named manifest bundle; returns "kind/namespace/name" of each
    /// object.
    async fn apply(&self, bundle: &str) -> Result<Vec<String>, CapError>;
    /// Replaces a secret from a named secret source.
    async fn replace_secret(
        &self,
        namespace: &str,
        name: &str,
        source: &str,
    ) -> Result<(), CapError>;
    /// The API server's version.
    async fn cluster_reachable(&self) -> Result<String, CapError>;
}

#[async_trait]
impl K8sBackend for super::super::Unavailable {
    async fn get_deployment(&self, _: &str, _: &str) -> Result<DeploymentStatus, CapError> {
        Err(self.err("k8s"))
    }
    async fn scale(&self, _: &str, _: &str, _: u32) -> Result<u32, CapError> {
        Err(self.err("k8s"))
    }
    async fn rollout_undo(&self, _: &str, _: &str, _: Option<u64>) -> Result<u64, CapError> {
        Err(self.err("k8s"))
    }
    async fn wait_ready(
        &self,
        _: &str,
        _: &str,
        _: Duration,
    ) -> Result<DeploymentStatus, CapError> {
        Err(self.err("k8s"))
    }
    async fn apply(&self, _: &str) -> Result<Vec<String>, CapError> {
        Err(self.err("k8s"))
    }
    async fn replace_secret(&self, _: &str, _: &str, _: &str) -> Result<(), CapError> {
        Err(self.err("k8s"))
    }
    async fn cluster_reachable(&self) -> Result<String, CapError> {
        Err(self.err("k8s"))
    }
}
