//! `drhost exec`: one capability operation by hand, without a plugin,
//! through the same gate as plugin calls — the runbook's grants decide, the
//! audit log records intent and outcome, the runbook's real backends do the
//! work. For on-call engineers who need one step of a runbook alone, and for
//! benchmarks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::audit::{AuditError, AuditWriter, Event, EventKind, PluginIdentity};
use crate::bindings::CapError;
use crate::capability::Capabilities;
use crate::capability::object_store::live::{LiveObjectStore, cap_error};
use crate::capability::operator::AutoApprove;
use crate::capability::postgres::restore::Progress;
use crate::gate::{Gate, GateConfig, StepScope};
use crate::policy::{Effect, Op};
use crate::runbook::Runbook;
use crate::runner::NullObserver;

/// One operation.
#[derive(Debug, Clone)]
pub enum ExecOp {
    /// `postgres restore DATABASE BUCKET KEY`.
    PgRestore {
        /// Target database.
        database: String,
        /// Bucket of the backup.
        bucket: String,
        /// Key of the backup.
        key: String,
    },
    /// `postgres check DATABASE`.
    PgCheck {
        /// Database.
        database: String,
    },
    /// `postgres query DATABASE SQL`.
    PgQuery {
        /// Database.
        database: String,
        /// One read-only statement.
        sql: String,
    },
    /// `postgres terminate-connections DATABASE`.
    PgTerminate {
        /// Database.
        database: String,
    },
    /// `object-store list BUCKET PREFIX`.
    ObjList {
        /// Bucket.
        bucket: String,
        /// Key prefix.
        prefix: String,
    },
    /// `object-store newest BUCKET PREFIX`.
    ObjNewest {
        /// Bucket.
        bucket: String,
        /// Key prefix.
        prefix: String,
    },
    /// `object-store head BUCKET KEY`.
    ObjHead {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// `object-store verify BUCKET KEY`.
    ObjVerify {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// `object-store get BUCKET KEY --out FILE`.
    ObjGet {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Where to write it.
        out: PathBuf,
    },
    /// `k8s status NAMESPACE NAME`.
    K8sStatus {
        /// Namespace.
        namespace: String,
        /// Deployment.
        name: String,
    },
    /// `k8s scale NAMESPACE NAME REPLICAS`.
    K8sScale {
        /// Namespace.
        namespace: String,
        /// Deployment.
        name: String,
        /// New replica count.
        replicas: u32,
    },
    /// `k8s rollout-undo NAMESPACE NAME [--to-revision N]`.
    K8sUndo {
        /// Namespace.
        namespace: String,
        /// Deployment.
        name: String,
        /// Target revision (default: the previous one).
        to_revision: Option<u64>,
    },
    /// `k8s wait-ready NAMESPACE NAME`.
    K8sWaitReady {
        /// Namespace.
        namespace: String,
        /// Deployment.
        name: String,
    },
    /// `k8s apply BUNDLE`.
    K8sApply {
        /// Bundle name.
        bundle: String,
    },
    /// `k8s replace-secret NAMESPACE NAME SOURCE`.
    K8sReplaceSecret {
        /// Namespace.
        namespace: String,
        /// Secret.
        name: String,
        /// Secret source name.
        source: String,
    },
    /// `k8s reachable`.
    K8sReachable,
    /// `health check TARGET`.
    HealthCheck {
        /// Target name.
        target: String,
    },
    /// `health wait TARGET`.
    HealthWait {
        /// Target name.
        target: String,
    },
    /// `notify CHANNEL MESSAGE`.
    Notify {
        /// Channel name.
        channel: String,
        /// Message.
        message: String,
    },
}

impl ExecOp {
    /// The policy's view of it.
    pub fn op(&self) -> Op<'_> {
        match self {
            ExecOp::PgRestore {
                database,
                bucket,
                key,
            } => Op::PgRestore {
                database,
                bucket,
                key,
            },
            ExecOp::PgCheck { database } => Op::PgIntegrityCheck { database },
            ExecOp::PgQuery { database, sql } => Op::PgQuery { database, sql },
            ExecOp::PgTerminate { database } => Op::PgTerminateConnections { database },
            ExecOp::ObjList { bucket, prefix } => Op::ObjList { bucket, prefix },
            ExecOp::ObjNewest { bucket, prefix } => Op::ObjNewest { bucket, prefix },
            ExecOp::ObjHead { bucket, key } => Op::ObjHead { bucket, key },
            ExecOp::ObjVerify { bucket, key } => Op::ObjVerify { bucket, key },
            ExecOp::ObjGet { bucket, key, .. } => Op::ObjGet { bucket, key },
            ExecOp::K8sStatus { namespace, name } => Op::K8sGetDeployment { namespace, name },
            ExecOp::K8sScale {
                namespace,
                name,
                replicas,
            } => Op::K8sScale {
                namespace,
                name,
                replicas: *replicas,
            },
            ExecOp::K8sUndo {
                namespace,
                name,
                to_revision,
            } => Op::K8sRolloutUndo {
                namespace,
                name,
                to_revision: *to_revision,
            },
            ExecOp::K8sWaitReady { namespace, name } => Op::K8sWaitReady {
                namespace,
                name,
                timeout_ms: 0,
            },
            ExecOp::K8sApply { bundle } => Op::K8sApply { bundle },
            ExecOp::K8sReplaceSecret {
                namespace,
                name,
                source,
            } => Op::K8sReplaceSecret {
                namespace,
                name,
                source,
            },
            ExecOp::K8sReachable => Op::K8sClusterReachable {},
            ExecOp::HealthCheck { target } => Op::HealthCheck { target },
            ExecOp::HealthWait { target } => Op::HealthWaitHealthy {
                target,
                timeout_ms: 0,
            },
            ExecOp::Notify { channel, message } => Op::OperatorNotify { channel, message },
        }
    }

    /// Whether it changes something (and so needs the operator's yes).
    pub fn mutates(&self) -> bool {
        self.op().class().effect == Effect::Mutate
    }
}

/// What `exec` did.
#[derive(Debug)]
pub struct ExecOutcome {
    /// The run id (names the audit log and restored databases).
    pub run_id: String,
    /// The audit log written.
    pub audit: PathBuf,
    /// The operation's result as JSON, or its error.
    pub result: Result<serde_json::Value, CapError>,
}

/// Why `exec` could not run the operation at all.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The backends cannot be built from the runbook.
    #[error("{0}: {1}")]
    Config(PathBuf, String),
    /// The audit log cannot be written.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The gate trapped (audit failure).
    #[error("{0}")]
    Gate(String),
}

fn to_json<T: Serialize>(r: Result<T, CapError>) -> Result<serde_json::Value, CapError> {
    r.and_then(|v| serde_json::to_value(v).map_err(|e| CapError::Failed(e.to_string())))
}

/// Runs `op` against the runbook's real backends, within `timeout`.
///
/// # Errors
/// [`ExecError`] when nothing could be attempted; the operation's own
/// failure is `Ok` with `result: Err(..)`.
pub async fn exec(
    runbook: &Runbook,
    op: &ExecOp,
    audit_dir: &Path,
    timeout: Duration,
    progress: Progress,
) -> Result<ExecOutcome, ExecError> {
    let run_id = crate::runner::new_run_id();
    let caps = Capabilities::live(runbook, &run_id, Arc::new(AutoApprove), progress)
        .map_err(|e| ExecError::Config(runbook.path.clone(), e.0))?;
    let identity = PluginIdentity {
        name: "drhost-exec".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        sha256: String::new(),
    };
    let audit = AuditWriter::create(audit_dir, &run_id, identity)?;
    let gate = Gate::new(
        GateConfig {
            grants: runbook.grants.clone(),
            caps: caps.clone(),
            dry_run: false,
            call_timeout: timeout,
            observer: Arc::new(NullObserver),
            retries: runbook.retries,
            rto_deadline: None,
        },
        audit,
    );
    let audit_path = gate.audit_path();
    gate.record_durable(Event::new(EventKind::RunStart).args(json!({
        "runbook": runbook.path,
        "exec": format!("{op:?}"),
        "operator": crate::capability::operator::approver::operator_name(),
    })))?;
    let scope = StepScope::new("exec", tokio::time::Instant::now() + timeout);
    let trap = |e: wasmtime::Error| ExecError::Gate(format!("{e:#}"));
    let mut policy_op = op.op();
    // Waits are bounded by --timeout: that is what the audit records.
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    if let Op::K8sWaitReady { timeout_ms: t, .. } | Op::HealthWaitHealthy { timeout_ms: t, .. } =
        &mut policy_op
    {
        *t = timeout_ms;
    }
    let result = match op {
        ExecOp::PgRestore {
            database,
            bucket,
            key,
        } => to_json(
            gate.call(
                &scope,
                policy_op,
                caps.postgres.restore(database, bucket, key),
                None,
            )
            .await
            .map_err(trap)?,
        ),
        ExecOp::PgCheck { database } => to_json(
            gate.call(
                &scope,
                policy_op,
                caps.postgres.integrity_check(database),
                None,
            )
            .await
            .map_err(trap)?,
        ),
        ExecOp::PgQuery { database, sql } => to_json(
            gate.call(&scope, policy_op, caps.postgres.query(database, sql), None)
                .await
                .map_err(trap)?,
        ),
        ExecOp::PgTerminate { database } => to_json(
            gate.call(
                &scope,
                policy_op,
                caps.postgres.terminate_connections(database),
                None,
            )
            .await
            .map_err(trap)?,
        ),
        ExecOp::ObjList { bucket, prefix } => to_json(
            gate.call(
                &scope,
                policy_op,
                caps.object_store.list(bucket, prefix),
                None,
            )
            .await
            .map_err(trap)?,
        ),
        ExecOp::ObjNewest { bucket, prefix } => to_json(
            gate.call(
                &scope,
                policy_op,
                caps.object_store.newest(bucket, prefix),
                None,
            )
            .await
            .map_err(trap)?,
        ),
        ExecOp::ObjHead { bucket, key } => to_json(
            gate.call(&scope, policy_op, caps.object_store.head(bucket, key), None)
                .await
                .map_err(trap)?,
        ),
        ExecOp::ObjVerify { bucket, key } => to_json(
            gate.call(
                &scope,
                policy_op,
                caps.object_store.verify(bucket, key),
                None,
            )
            .await
            .map_err(trap)?,
        ),
        ExecOp::ObjGet { bucket, key, out } => {
            let download = async {
                let Some(cfg) = &runbook.backends.object_store else {
                    return Err(CapError::Unavailable(
                        "not configured: add [backends.object_store] to the runbook".into(),
                    ));
                };
                let store = LiveObjectStore::new(cfg.clone()).map_err(cap_error)?;
                let bytes = store
                    .store()
                    .download_to(bucket, key, out)
                    .await
                    .map_err(cap_error)?;
                Ok(json!({ "bytes": bytes, "out": out }))
            };
            to_json(
                gate.call(&scope, policy_op, download, None)
                    .await
                    .map_err(trap)?,
            )
        }
        ExecOp::K8sStatus { namespace, name } => to_json(
            gate.call(
                &scope,
                policy_op,
                caps.k8s.get_deployment(namespace, name),
                None,
            )
            .await
            .map_err(trap)?,
        ),
        ExecOp::K8sScale {
            namespace,
            name,
            replicas,
        } => to_json(
            gate.call(
                &scope,
                policy_op,
                caps.k8s.scale(namespace, name, *replicas),
                None,
            )
            .await
            .map_err(trap)?
            .map(|previous| json!({ "previous": previous, "replicas": replicas })),
        ),
        ExecOp::K8sUndo {
            namespace,
            name,
            to_revision,
        } => to_json(
            gate.call(
                &scope,
                policy_op,
                caps.k8s.rollout_undo(namespace, name, *to_revision),
                None,
            )
            .await
            .map_err(trap)?
            .map(|revision| json!({ "revision": revision })),
        ),
        ExecOp::K8sWaitReady { namespace, name } => to_json(
            gate.call(
                &scope,
                policy_op,
                caps.k8s.wait_ready(namespace, name, timeout),
                None,
            )
            .await
            .map_err(trap)?,
        ),
        ExecOp::K8sApply { bundle } => to_json(
            gate.call(&scope, policy_op, caps.k8s.apply(bundle), None)
                .await
                .map_err(trap)?,
        ),
        ExecOp::K8sReplaceSecret {
            namespace,
            name,
            source,
        } => to_json(
            gate.call(
                &scope,
                policy_op,
                caps.k8s.replace_secret(namespace, name, source),
                None,
            )
            .await
            .map_err(trap)?
            .map(|()| json!({ "replaced": format!("{namespace}/{name}") })),
        ),
        ExecOp::K8sReachable => to_json(
            gate.call(&scope, policy_op, caps.k8s.cluster_reachable(), None)
                .await
                .map_err(trap)?
                .map(|version| json!({ "version": version })),
        ),
        ExecOp::HealthCheck { target } => to_json(
            gate.call(&scope, policy_op, caps.health.check(target), None)
                .await
                .map_err(trap)?,
        ),
        ExecOp::HealthWait { target } => to_json(
            gate.call(
                &scope,
                policy_op,
                caps.health.wait_healthy(target, timeout),
                None,
            )
            .await
            .map_err(trap)?,
        ),
        ExecOp::Notify { channel, message } => to_json(
            gate.call(
                &scope,
                policy_op,
                caps.notify.notify(channel, message),
                None,
            )
            .await
            .map_err(trap)?
            .map(|()| json!({ "delivered": channel })),
        ),
    };
    let outcome = match &result {
        Ok(_) => json!({ "outcome": "completed" }),
        Err(e) => json!({ "outcome": "failed", "error": e.kind(), "message": e.message() }),
    };
    gate.record_durable(Event::new(EventKind::RunEnd).outcome(outcome))?;
    Ok(ExecOutcome {
        run_id,
        audit: audit_path,
        result,
    })
}
