//! Grants from the runbook config, and the decision for every capability call.
//!
//! Deny by default, exhaustively: [`Op`] has one variant per WIT import
//! function and [`Op::class`] / [`Grants::check`] match on it with no
//! wildcard arm, so a function added to the WIT does not compile until
//! somebody classifies it (read, mutate or internal) and decides which grant
//! covers it.
//!
//! Interface-level grants are checked at load time ([`Grants::grants_interface`]):
//! a plugin importing `dr:recovery/k8s` under a runbook without `[grants.k8s]`
//! is refused before any step runs. Call-level grants (namespaces,
//! deployments, buckets and prefixes, databases, targets, channels) are
//! checked by the gate on every call.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// One capability call, as the plugin made it. Serializes (untagged) to its
/// arguments, which is what the audit log records.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
#[allow(missing_docs)] // fields mirror the WIT parameters
pub enum Op<'a> {
    K8sGetDeployment {
        namespace: &'a str,
        name: &'a str,
    },
    K8sScale {
        namespace: &'a str,
        name: &'a str,
        replicas: u32,
    },
    K8sRolloutUndo {
        namespace: &'a str,
        name: &'a str,
        to_revision: Option<u64>,
    },
    K8sWaitReady {
        namespace: &'a str,
        name: &'a str,
        timeout_ms: u64,
    },
    K8sApply {
        bundle: &'a str,
    },
    K8sReplaceSecret {
        namespace: &'a str,
        name: &'a str,
        source: &'a str,
    },
    K8sClusterReachable {},
    PgRestore {
        database: &'a str,
        bucket: &'a str,
        key: &'a str,
    },
    PgIntegrityCheck {
        database: &'a str,
    },
    PgQuery {
        database: &'a str,
        sql: &'a str,
    },
    PgTerminateConnections {
        database: &'a str,
    },
    ObjList {
        bucket: &'a str,
        prefix: &'a str,
    },
    ObjNewest {
        bucket: &'a str,
        prefix: &'a str,
    },
    ObjHead {
        bucket: &'a str,
        key: &'a str,
    },
    /// Not a WIT import: `drhost exec object-store get` (download a backup).
    ObjGet {
        bucket: &'a str,
        key: &'a str,
    },
    ObjVerify {
        bucket: &'a str,
        key: &'a str,
    },
    HealthCheck {
        target: &'a str,
    },
    HealthWaitHealthy {
        target: &'a str,
        timeout_ms: u64,
    },
    OperatorConfirm {
        question: &'a str,
    },
    OperatorAsk {
        question: &'a str,
    },
    OperatorNotify {
        channel: &'a str,
        message: &'a str,
    },
    StateGet {
        key: &'a str,
    },
    StateSet {
        key: &'a str,
        bytes: usize,
    },
    StateDelete {
        key: &'a str,
    },
    ClockNow {},
    ClockSleep {
        ms: u64,
    },
}

/// What a call does to the world, which decides approvals, fsync and dry-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Reads only; runs in dry runs too.
    Read,
    /// Changes something outside the host; intent fsynced first; simulated in
    /// dry runs.
    Mutate,
    /// Touches only the run's own state (the `state` and `clock`
    /// capabilities); runs in dry runs too.
    Internal,
}

/// Static facts about an [`Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpClass {
    /// WIT interface name (`k8s`, `object-store`, ...).
    pub capability: &'static str,
    /// WIT function name (`scale`, `wait-ready`, ...).
    pub operation: &'static str,
    /// Read, mutate or internal.
    pub effect: Effect,
}

impl OpClass {
    /// Calls that wait for a person (`operator.confirm`, `operator.ask`):
    /// no time limit, and the wait does not count against the step's budget.
    pub fn waits_for_operator(&self) -> bool {
        self.capability == "operator" && matches!(self.operation, "confirm" | "ask")
    }
}

impl Op<'_> {
    /// Calls that take as long as their work (a restore, waiting for pods or
    /// health): bounded by what is left of the step's budget, not by the
    /// per-call timeout.
    pub fn is_long_running(&self) -> bool {
        matches!(
            self,
            Op::PgRestore { .. }
                | Op::K8sWaitReady { .. }
                | Op::HealthWaitHealthy { .. }
                | Op::ObjVerify { .. }
                | Op::ObjGet { .. }
                | Op::ClockSleep { .. }
        )
    }

    /// How this call may be retried (see [`crate::retry`]). Exhaustive by
    /// design: a new operation must be classified.
    pub fn retry_class(&self) -> crate::retry::RetryClass {
        use crate::retry::RetryClass::*;
        match self {
            Op::K8sGetDeployment { .. }
            | Op::K8sClusterReachable {}
            | Op::PgIntegrityCheck { .. }
            | Op::PgQuery { .. }
            | Op::ObjList { .. }
            | Op::ObjNewest { .. }
            | Op::ObjHead { .. }
            | Op::ObjVerify { .. }
            | Op::ObjGet { .. }
            | Op::HealthCheck { .. } => Read,
            // Absolute targets: the same result however often applied. A
            // restore goes into a fresh `<db>_restore_<run>` (a leftover is
            // dropped first) and swaps atomically.
            Op::K8sScale { .. }
            | Op::K8sApply { .. }
            | Op::K8sReplaceSecret { .. }
            | Op::PgRestore { .. }
            | Op::PgTerminateConnections { .. } => IdempotentMutation,
            // Waits retry inside themselves until their own deadline.
            Op::K8sWaitReady { .. } | Op::HealthWaitHealthy { .. } => Never,
            // Twice is two revisions back / two pages.
            Op::K8sRolloutUndo { .. } | Op::OperatorNotify { .. } => Never,
            Op::OperatorConfirm { .. } | Op::OperatorAsk { .. } => Never,
            Op::StateGet { .. }
            | Op::StateSet { .. }
            | Op::StateDelete { .. }
            | Op::ClockNow {}
            | Op::ClockSleep { .. } => Never,
        }
    }

    /// Interface, function and effect of this call. Exhaustive by design.
    pub fn class(&self) -> OpClass {
        use Effect::*;
        let (capability, operation, effect) = match self {
            Op::K8sGetDeployment { .. } => ("k8s", "get-deployment", Read),
            Op::K8sScale { .. } => ("k8s", "scale", Mutate),
            Op::K8sRolloutUndo { .. } => ("k8s", "rollout-undo", Mutate),
            Op::K8sWaitReady { .. } => ("k8s", "wait-ready", Read),
            Op::K8sApply { .. } => ("k8s", "apply", Mutate),
            Op::K8sReplaceSecret { .. } => ("k8s", "replace-secret", Mutate),
            Op::K8sClusterReachable {} => ("k8s", "cluster-reachable", Read),
            Op::PgRestore { .. } => ("postgres", "restore", Mutate),
            Op::PgIntegrityCheck { .. } => ("postgres", "integrity-check", Read),
            Op::PgQuery { .. } => ("postgres", "query", Read),
            Op::PgTerminateConnections { .. } => ("postgres", "terminate-connections", Mutate),
            Op::ObjList { .. } => ("object-store", "list", Read),
            Op::ObjNewest { .. } => ("object-store", "newest", Read),
            Op::ObjHead { .. } => ("object-store", "head", Read),
            Op::ObjVerify { .. } => ("object-store", "verify", Read),
            Op::ObjGet { .. } => ("object-store", "get", Read),
            Op::HealthCheck { .. } => ("health", "check", Read),
            Op::HealthWaitHealthy { .. } => ("health", "wait-healthy", Read),
            // Asking a person changes nothing; the answer is audited.
            Op::OperatorConfirm { .. } => ("operator", "confirm", Read),
            Op::OperatorAsk { .. } => ("operator", "ask", Read),
            Op::OperatorNotify { .. } => ("operator", "notify", Mutate),
            Op::StateGet { .. } => ("state", "get", Internal),
            Op::StateSet { .. } => ("state", "set", Internal),
            Op::StateDelete { .. } => ("state", "delete", Internal),
            Op::ClockNow {} => ("clock", "now-ms", Internal),
            Op::ClockSleep { .. } => ("clock", "sleep-ms", Internal),
        };
        OpClass {
            capability,
            operation,
            effect,
        }
    }
}

/// `capability.operation`, formatted only when a denial message needs it
/// (the policy check is on every call's hot path).
pub struct OpName(pub OpClass);

impl std::fmt::Display for OpName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0.capability, self.0.operation)
    }
}

/// `[grants]` as written in the runbook config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrants {
    /// `[grants.k8s]`.
    pub k8s: Option<RawK8sGrant>,
    /// `[grants.postgres]`.
    pub postgres: Option<RawPostgresGrant>,
    /// `[grants.object_store]`.
    pub object_store: Option<RawObjectStoreGrant>,
    /// `[grants.health]`.
    pub health: Option<RawHealthGrant>,
    /// `[grants.operator]`.
    pub operator: Option<RawOperatorGrant>,
}

/// `[grants.k8s]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawK8sGrant {
    /// WIT function names allowed (`get-deployment`, `scale`, ...).
    #[serde(default)]
    pub operations: Vec<String>,
    /// `namespace/name` of deployments the plugin may touch.
    #[serde(default)]
    pub deployments: Vec<String>,
    /// Manifest bundles the plugin may apply.
    #[serde(default)]
    pub bundles: Vec<String>,
    /// `namespace/name` of secrets the plugin may replace.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Secret sources the plugin may name.
    #[serde(default)]
    pub secret_sources: Vec<String>,
    /// Kinds a granted bundle may contain (`ConfigMap`, `Deployment`, ...).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Namespaces a granted bundle may write to (a `Namespace` object must
    /// be named here too).
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// `[grants.postgres]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPostgresGrant {
    /// WIT function names allowed (`restore`, `integrity-check`, ...).
    #[serde(default)]
    pub operations: Vec<String>,
    /// Databases the plugin may touch.
    #[serde(default)]
    pub databases: Vec<String>,
}

/// `[grants.object_store]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObjectStoreGrant {
    /// `bucket/prefix` locations the plugin may read (`bucket/` for all).
    #[serde(default)]
    pub locations: Vec<String>,
}

/// `[grants.health]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthGrant {
    /// Named health targets the plugin may check.
    #[serde(default)]
    pub targets: Vec<String>,
}

/// `[grants.operator]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOperatorGrant {
    /// Notification channels the plugin may post to.
    #[serde(default)]
    pub notify: Vec<String>,
}

/// Validated grants. `None` for an interface means it is not granted at all.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Kubernetes grant.
    pub k8s: Option<K8sGrant>,
    /// PostgreSQL grant.
    pub postgres: Option<PostgresGrant>,
    /// Object-store grant: (bucket, key prefix) pairs.
    pub object_store: Option<Vec<(String, String)>>,
    /// Health targets.
    pub health: Option<BTreeSet<String>>,
    /// Notify channels (confirm needs no grant).
    pub notify: BTreeSet<String>,
}

/// Validated `[grants.k8s]`.
#[derive(Debug, Clone, Default)]
pub struct K8sGrant {
    /// Allowed WIT functions.
    pub operations: BTreeSet<String>,
    /// Allowed `namespace/name` deployments.
    pub deployments: BTreeSet<String>,
    /// Allowed bundles.
    pub bundles: BTreeSet<String>,
    /// Allowed `namespace/name` secrets.
    pub secrets: BTreeSet<String>,
    /// Allowed secret sources.
    pub secret_sources: BTreeSet<String>,
    /// Kinds a bundle may contain.
    pub kinds: BTreeSet<String>,
    /// Namespaces a bundle may write to.
    pub namespaces: BTreeSet<String>,
}

impl K8sGrant {
    /// Whether one object of a granted bundle may be applied: its kind must
    /// be in `kinds` and its namespace (or, for a `Namespace`, its name) in
    /// `namespaces`; other cluster-scoped kinds are never allowed.
    ///
    /// # Errors
    /// What was refused and which grant to change.
    pub fn bundle_object(&self, kind: &str, namespace: &str, name: &str) -> Result<(), String> {
        let object = format!("{kind}/{namespace}/{name}");
        if !self.kinds.contains(kind) {
            return Err(format!(
                "bundle object {object}: kind {kind} not granted (granted kinds: {}); add it to [grants.k8s] kinds",
                list(&self.kinds)
            ));
        }
        let ns = match (kind, namespace) {
            ("Namespace", "") => name,
            (_, "") => {
                return Err(format!(
                    "bundle object {object}: cluster-scoped {kind} objects are never applied by drhost"
                ));
            }
            (_, ns) => ns,
        };
        if !self.namespaces.contains(ns) {
            return Err(format!(
                "bundle object {object}: namespace {ns} not granted (granted namespaces: {}); add it to [grants.k8s] namespaces",
                list(&self.namespaces)
            ));
        }
        Ok(())
    }
}

/// Validated `[grants.postgres]`.
#[derive(Debug, Clone, Default)]
pub struct PostgresGrant {
    /// Allowed WIT functions.
    pub operations: BTreeSet<String>,
    /// Allowed databases.
    pub databases: BTreeSet<String>,
}

const K8S_OPS: &[&str] = &[
    "get-deployment",
    "scale",
    "rollout-undo",
    "wait-ready",
    "apply",
    "replace-secret",
    "cluster-reachable",
];
const PG_OPS: &[&str] = &[
    "restore",
    "integrity-check",
    "query",
    "terminate-connections",
];

fn known_ops(
    field: &str,
    ops: Vec<String>,
    known: &[&str],
) -> Result<BTreeSet<String>, (String, String)> {
    for op in &ops {
        if !known.contains(&op.as_str()) {
            return Err((
                field.to_owned(),
                format!("has unknown operation {op:?}; known: {}", known.join(", ")),
            ));
        }
    }
    Ok(ops.into_iter().collect())
}

fn qualified(field: &str, names: Vec<String>) -> Result<BTreeSet<String>, (String, String)> {
    for n in &names {
        match n.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {}
            _ => {
                return Err((
                    field.to_owned(),
                    format!("entries must be \"namespace/name\", got {n:?}"),
                ));
            }
        }
    }
    Ok(names.into_iter().collect())
}

impl Grants {
    /// Validates raw grants; the error is (field under `grants.`, problem).
    ///
    /// # Errors
    /// Unknown operation names, malformed `namespace/name` or `bucket/prefix`
    /// entries.
    pub fn validate(raw: RawGrants) -> Result<Grants, (String, String)> {
        let k8s = match raw.k8s {
            Some(k) => Some(K8sGrant {
                operations: known_ops("k8s.operations", k.operations, K8S_OPS)?,
                deployments: qualified("k8s.deployments", k.deployments)?,
                bundles: k.bundles.into_iter().collect(),
                secrets: qualified("k8s.secrets", k.secrets)?,
                secret_sources: k.secret_sources.into_iter().collect(),
                kinds: k.kinds.into_iter().collect(),
                namespaces: k.namespaces.into_iter().collect(),
            }),
            None => None,
        };
        let postgres = match raw.postgres {
            Some(p) => Some(PostgresGrant {
                operations: known_ops("postgres.operations", p.operations, PG_OPS)?,
                databases: p.databases.into_iter().collect(),
            }),
            None => None,
        };
        let object_store = match raw.object_store {
            Some(o) => {
                let mut locs = Vec::new();
                for l in o.locations {
                    let Some((bucket, prefix)) = l.split_once('/') else {
                        return Err((
                            "object_store.locations".into(),
                            format!(
                                "entries must be \"bucket/prefix\" (\"bucket/\" for the whole bucket), got {l:?}"
                            ),
                        ));
                    };
                    if bucket.is_empty() || (!prefix.is_empty() && normalise_key(prefix).is_err()) {
                        return Err((
                            "object_store.locations".into(),
                            format!("{l:?} is not a valid bucket/prefix"),
                        ));
                    }
                    locs.push((bucket.to_owned(), prefix.to_owned()));
                }
                Some(locs)
            }
            None => None,
        };
        Ok(Grants {
            k8s,
            postgres,
            object_store,
            health: raw.health.map(|h| h.targets.into_iter().collect()),
            notify: raw
                .operator
                .map(|o| o.notify)
                .unwrap_or_default()
                .into_iter()
                .collect(),
        })
    }

    /// Whether the runbook grants the WIT interface `iface` (`k8s`,
    /// `object-store`, ...). `types`, `log`, `state`, `clock` and `operator`
    /// are always granted (a plugin's own bookkeeping, and asking a human);
    /// `operator.notify` is still checked per channel.
    pub fn grants_interface(&self, iface: &str) -> bool {
        match iface {
            "types" | "log" | "state" | "clock" | "operator" => true,
            "k8s" => self.k8s.is_some(),
            "postgres" => self.postgres.is_some(),
            "object-store" => self.object_store.is_some(),
            "health" => self.health.is_some(),
            _ => false,
        }
    }

    /// Decides one call. `Err` is the denial message given to the plugin and
    /// the audit log.
    ///
    /// # Errors
    /// A message saying what was asked, what is granted, and which config
    /// section to change.
    pub fn check(&self, op: &Op<'_>) -> Result<(), String> {
        let class = op.class();
        let what = &OpName(class);
        match op {
            Op::K8sGetDeployment { namespace, name }
            | Op::K8sScale {
                namespace, name, ..
            }
            | Op::K8sRolloutUndo {
                namespace, name, ..
            }
            | Op::K8sWaitReady {
                namespace, name, ..
            } => {
                let g = self.k8s_op(what, class.operation)?;
                let full = format!("{namespace}/{name}");
                if !g.deployments.contains(&full) {
                    return Err(format!(
                        "{what} on deployment {full}: not granted (granted deployments: {}); add it to [grants.k8s] deployments",
                        list(&g.deployments)
                    ));
                }
                Ok(())
            }
            Op::K8sApply { bundle } => {
                let g = self.k8s_op(what, class.operation)?;
                if !g.bundles.contains(*bundle) {
                    return Err(format!(
                        "{what} of bundle {bundle:?}: not granted (granted bundles: {})",
                        list(&g.bundles)
                    ));
                }
                Ok(())
            }
            Op::K8sReplaceSecret {
                namespace,
                name,
                source,
            } => {
                let g = self.k8s_op(what, class.operation)?;
                let full = format!("{namespace}/{name}");
                if !g.secrets.contains(&full) {
                    return Err(format!(
                        "{what} on secret {full}: not granted (granted secrets: {})",
                        list(&g.secrets)
                    ));
                }
                if !g.secret_sources.contains(*source) {
                    return Err(format!(
                        "{what}: secret source {source:?} not granted (granted sources: {})",
                        list(&g.secret_sources)
                    ));
                }
                Ok(())
            }
            Op::K8sClusterReachable {} => self.k8s_op(what, class.operation).map(|_| ()),
            Op::PgRestore {
                database,
                bucket,
                key,
            } => {
                self.pg_db(what, class.operation, database)?;
                self.object_location(what, bucket, key)
            }
            Op::PgIntegrityCheck { database }
            | Op::PgQuery { database, .. }
            | Op::PgTerminateConnections { database } => {
                self.pg_db(what, class.operation, database)
            }
            Op::ObjList { bucket, prefix } | Op::ObjNewest { bucket, prefix } => {
                self.object_location(what, bucket, prefix)
            }
            Op::ObjHead { bucket, key }
            | Op::ObjVerify { bucket, key }
            | Op::ObjGet { bucket, key } => self.object_location(what, bucket, key),
            Op::HealthCheck { target } | Op::HealthWaitHealthy { target, .. } => {
                let Some(targets) = &self.health else {
                    return Err(format!(
                        "{what}: health is not granted by the runbook ([grants.health])"
                    ));
                };
                if !targets.contains(*target) {
                    return Err(format!(
                        "{what} of target {target:?}: not granted (granted targets: {})",
                        list(targets)
                    ));
                }
                Ok(())
            }
            Op::OperatorNotify { channel, .. } => {
                if !self.notify.contains(*channel) {
                    return Err(format!(
                        "{what} to channel {channel:?}: not granted (granted channels: {}); add it to [grants.operator] notify",
                        list(&self.notify)
                    ));
                }
                Ok(())
            }
            Op::OperatorConfirm { .. }
            | Op::OperatorAsk { .. }
            | Op::StateGet { .. }
            | Op::StateSet { .. }
            | Op::StateDelete { .. }
            | Op::ClockNow {}
            | Op::ClockSleep { .. } => Ok(()),
        }
    }

    fn k8s_op(&self, what: &OpName, operation: &str) -> Result<&K8sGrant, String> {
        let Some(g) = &self.k8s else {
            return Err(format!(
                "{what}: k8s is not granted by the runbook ([grants.k8s])"
            ));
        };
        if !g.operations.contains(operation) {
            return Err(format!(
                "{what}: operation not granted (granted k8s operations: {})",
                list(&g.operations)
            ));
        }
        Ok(g)
    }

    fn pg_db(&self, what: &OpName, operation: &str, database: &str) -> Result<(), String> {
        let Some(g) = &self.postgres else {
            return Err(format!(
                "{what}: postgres is not granted by the runbook ([grants.postgres])"
            ));
        };
        if !g.operations.contains(operation) {
            return Err(format!(
                "{what}: operation not granted (granted postgres operations: {})",
                list(&g.operations)
            ));
        }
        if !g.databases.contains(database) {
            return Err(format!(
                "{what} on database {database:?}: not granted (granted databases: {})",
                list(&g.databases)
            ));
        }
        Ok(())
    }

    fn object_location(&self, what: &OpName, bucket: &str, key: &str) -> Result<(), String> {
        let Some(locs) = &self.object_store else {
            return Err(format!(
                "{what}: object-store is not granted by the runbook ([grants.object_store])"
            ));
        };
        let key = normalise_key(key).map_err(|p| format!("{what} of {bucket}/{key}: {p}"))?;
        if locs
            .iter()
            .any(|(b, prefix)| b == bucket && key.starts_with(prefix.as_str()))
        {
            return Ok(());
        }
        let granted: BTreeSet<String> = locs.iter().map(|(b, p)| format!("{b}/{p}")).collect();
        Err(format!(
            "{what} of {bucket}/{key}: not under a granted location (granted: {})",
            list(&granted)
        ))
    }
}

/// Checks an object key or prefix for path tricks: no `.`/`..` or empty
/// segments, no leading `/`, no backslashes or control characters. Returns
/// the key unchanged when it is clean.
///
/// # Errors
/// What is wrong with the key.
pub fn normalise_key(key: &str) -> Result<&str, String> {
    if key.starts_with('/') {
        return Err("key must not start with '/'".into());
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return Err("key contains a backslash or a control character".into());
    }
    // S3 keys are literal, but a proxy or a tool down the line may decode
    // them: percent-escapes are refused rather than trusted (backup keys
    // never need them).
    let bytes = key.as_bytes();
    if bytes
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
    {
        return Err("key contains a percent-escape (e.g. %2e); write the key as it is".into());
    }
    let segments: Vec<&str> = key.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if *seg == "." || *seg == ".." {
            return Err(format!("key segment {seg:?} is not allowed"));
        }
        if seg.is_empty() && !last {
            return Err("key has an empty segment (\"//\")".into());
        }
    }
    Ok(key)
}

fn list(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants() -> Grants {
        let raw: RawGrants = toml::from_str(
            r#"
            [k8s]
            operations = ["get-deployment", "scale"]
            deployments = ["prod/backend"]
            [object_store]
            locations = ["backups/postgres/"]
            [health]
            targets = ["api"]
            [operator]
            notify = ["status"]
            "#,
        )
        .expect("test grants parse");
        Grants::validate(raw).expect("test grants validate")
    }

    fn check(op: Op<'_>, allowed: bool) {
        let r = grants().check(&op);
        assert_eq!(r.is_ok(), allowed, "{op:?} -> {r:?}");
    }

    #[test]
    fn decisions() {
        check(
            Op::K8sScale {
                namespace: "prod",
                name: "backend",
                replicas: 0,
            },
            true,
        );
        check(
            Op::K8sScale {
                namespace: "prod",
                name: "payments",
                replicas: 0,
            },
            false,
        );
        check(
            Op::K8sScale {
                namespace: "other",
                name: "backend",
                replicas: 0,
            },
            false,
        );
        check(
            Op::K8sRolloutUndo {
                namespace: "prod",
                name: "backend",
                to_revision: None,
            },
            false,
        );
        check(Op::K8sApply { bundle: "ns" }, false);
        check(Op::PgIntegrityCheck { database: "db" }, false);
        check(
            Op::ObjNewest {
                bucket: "backups",
                prefix: "postgres/",
            },
            true,
        );
        check(
            Op::ObjHead {
                bucket: "backups",
                key: "postgres/x.dump",
            },
            true,
        );
        check(
            Op::ObjHead {
                bucket: "backups",
                key: "postgres/../secrets/x",
            },
            false,
        );
        check(
            Op::ObjHead {
                bucket: "backups",
                key: "postgres//x",
            },
            false,
        );
        check(
            Op::ObjHead {
                bucket: "backups",
                key: "other/x",
            },
            false,
        );
        check(
            Op::ObjHead {
                bucket: "other",
                key: "postgres/x",
            },
            false,
        );
        check(Op::HealthCheck { target: "api" }, true);
        check(
            Op::HealthCheck {
                target: "http://169.254.169.254/",
            },
            false,
        );
        check(
            Op::OperatorNotify {
                channel: "status",
                message: "m",
            },
            true,
        );
        check(
            Op::OperatorNotify {
                channel: "chat",
                message: "m",
            },
            false,
        );
        check(Op::OperatorConfirm { question: "q" }, true);
        check(Op::StateSet { key: "k", bytes: 1 }, true);
    }

    #[test]
    fn interfaces() {
        let g = grants();
        assert!(g.grants_interface("k8s"));
        assert!(!g.grants_interface("postgres"));
        assert!(g.grants_interface("log"));
        assert!(!g.grants_interface("filesystem"));
    }

    #[test]
    fn bad_grants_are_rejected() {
        let raw: RawGrants = toml::from_str("[k8s]\noperations = [\"delete\"]").expect("parse");
        let err = Grants::validate(raw).expect_err("unknown op");
        assert!(err.1.contains("delete"), "{err:?}");
        let raw: RawGrants = toml::from_str("[k8s]\ndeployments = [\"backend\"]").expect("parse");
        assert!(Grants::validate(raw).is_err());
    }
}
