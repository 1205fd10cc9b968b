//! The `k8s` capability: the bindgen host implementation (every call through
//! the gate) and its backends.

mod backend;
pub mod live;
pub mod mock;

pub use backend::K8sBackend;

use std::time::Duration;

use crate::bindings::CapError;
use crate::bindings::k8s::{DeploymentStatus, Host};
use crate::instance::PluginCtx;
use crate::policy::Op;

impl Host for PluginCtx {
    async fn get_deployment(
        &mut self,
        namespace: String,
        name: String,
    ) -> wasmtime::Result<Result<DeploymentStatus, CapError>> {
        let b = self.caps().k8s.clone();
        let op = Op::K8sGetDeployment {
            namespace: &namespace,
            name: &name,
        };
        self.call_retrying(op, || b.get_deployment(&namespace, &name), None)
            .await
    }

    async fn scale(
        &mut self,
        namespace: String,
        name: String,
        replicas: u32,
    ) -> wasmtime::Result<Result<u32, CapError>> {
        let b = self.caps().k8s.clone();
        let op = Op::K8sScale {
            namespace: &namespace,
            name: &name,
            replicas,
        };
        // Dry run: report the current count as "previous", read for real.
        let dry = async { b.get_deployment(&namespace, &name).await.map(|d| d.desired) };
        self.call_retrying(
            op,
            || b.scale(&namespace, &name, replicas),
            Some(Box::pin(dry)),
        )
        .await
    }

    async fn rollout_undo(
        &mut self,
        namespace: String,
        name: String,
        to_revision: Option<u64>,
    ) -> wasmtime::Result<Result<u64, CapError>> {
        let b = self.caps().k8s.clone();
        let op = Op::K8sRolloutUndo {
            namespace: &namespace,
            name: &name,
            to_revision,
        };
        let dry = async {
            let d = b.get_deployment(&namespace, &name).await?;
            Ok(to_revision.unwrap_or(d.revision))
        };
        self.call(
            op,
            b.rollout_undo(&namespace, &name, to_revision),
            Some(Box::pin(dry)),
        )
        .await
    }

    async fn wait_ready(
        &mut self,
        namespace: String,
        name: String,
        timeout_ms: u64,
    ) -> wasmtime::Result<Result<DeploymentStatus, CapError>> {
        let b = self.caps().k8s.clone();
        let op = Op::K8sWaitReady {
            namespace: &namespace,
            name: &name,
            timeout_ms,
        };
        let timeout = self.clip(Duration::from_millis(timeout_ms));
        self.call(op, b.wait_ready(&namespace, &name, timeout), None)
            .await
    }

    async fn apply(&mut self, bundle: String) -> wasmtime::Result<Result<Vec<String>, CapError>> {
        let b = self.caps().k8s.clone();
        let op = Op::K8sApply { bundle: &bundle };
        let dry = async { Ok(Vec::new()) };
        self.call_retrying(op, || b.apply(&bundle), Some(Box::pin(dry)))
            .await
    }

    async fn replace_secret(
        &mut self,
        namespace: String,
        name: String,
        source: String,
    ) -> wasmtime::Result<Result<(), CapError>> {
        let b = self.caps().k8s.clone();
        let op = Op::K8sReplaceSecret {
            namespace: &namespace,
            name: &name,
            source: &source,
        };
        let dry = async { Ok(()) };
        self.call_retrying(
            op,
            || b.replace_secret(&namespace, &name, &source),
            Some(Box::pin(dry)),
        )
        .await
    }

    async fn cluster_reachable(&mut self) -> wasmtime::Result<Result<String, CapError>> {
        let b = self.caps().k8s.clone();
        self.call_retrying(Op::K8sClusterReachable {}, || b.cluster_reachable(), None)
            .await
    }
}
