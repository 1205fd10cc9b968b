//! The `health` capability: host implementation (through the gate), the
//! backend trait, and the mock. Targets are names from the runbook; the
//! plugin never sees or chooses a URL.

pub mod live;
pub mod mock;

use std::time::Duration;

use async_trait::async_trait;

use crate::bindings::CapError;
use crate::bindings::health::{CheckResult, Host};
use crate::instance::PluginCtx;
use crate::policy::Op;

/// HTTP health checks behind the `health` interface.
#[async_trait]
pub trait HealthBackend: Send + Sync {
    /// One check of a named target.
    async fn check(&self, target: &str) -> Result<CheckResult, CapError>;
    /// Checks until healthy, at most `timeout` (already clipped to the
    /// step's budget).
    async fn wait_healthy(&self, target: &str, timeout: Duration) -> Result<CheckResult, CapError>;
}

#[async_trait]
impl HealthBackend for super::Unavailable {
    async fn check(&self, _: &str) -> Result<CheckResult, CapError> {
        Err(self.err("health"))
    }
    async fn wait_healthy(&self, _: &str, _: Duration) -> Result<CheckResult, CapError> {
        Err(self.err("health"))
    }
}

impl Host for PluginCtx {
    async fn check(&mut self, target: String) -> wasmtime::Result<Result<CheckResult, CapError>> {
        let b = self.caps().health.clone();
        self.call_retrying(
            Op::HealthCheck { target: &target },
            || b.check(&target),
            None,
        )
        .await
    }

    async fn wait_healthy(
        &mut self,
        target: String,
        timeout_ms: u64,
    ) -> wasmtime::Result<Result<CheckResult, CapError>> {
        let b = self.caps().health.clone();
        let timeout = self.clip(Duration::from_millis(timeout_ms));
        let op = Op::HealthWaitHealthy {
            target: &target,
            timeout_ms,
        };
        self.call(op, b.wait_healthy(&target, timeout), None).await
    }
}
