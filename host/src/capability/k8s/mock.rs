//! Mock Kubernetes: deployments with replicas, readiness delays and revision
//! history; manifest bundles; secrets and secret sources. Scale changes
//! replicas; wait-ready sees them; undo moves to an earlier template.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use serde::Deserialize;

use super::K8sBackend;
use crate::bindings::CapError;
use crate::bindings::k8s::DeploymentStatus;
use crate::fixture::{MockLog, lock, parse_opt_duration};
use crate::mock_faults::Faults;

/// `[k8s]` in a fixture.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sFixture {
    /// Whether the API server answers (default true).
    pub reachable: Option<bool>,
    /// Deployments in the simulated cluster.
    #[serde(default)]
    pub deployments: Vec<DeploymentFixture>,
    /// Manifest bundles: name -> objects ("Kind/namespace/name").
    #[serde(default)]
    pub bundles: BTreeMap<String, Vec<String>>,
    /// Secret sources the operator has configured.
    #[serde(default)]
    pub secret_sources: Vec<String>,
    /// Existing secrets, "namespace/name".
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// One `[[k8s.deployments]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentFixture {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Current replicas (all ready at start unless `ready` says otherwise).
    pub replicas: u32,
    /// Ready replicas at start (default: `replicas`).
    pub ready: Option<u32>,
    /// Current revision (default 1).
    pub revision: Option<u64>,
    /// Images per revision, oldest first; the last is the current one.
    #[serde(default)]
    pub images: Vec<String>,
    /// How long new pods take to become ready after a scale ("50ms").
    pub ready_delay: Option<String>,
    /// Pods never become ready after a change.
    #[serde(default)]
    pub never_ready: bool,
    /// The deployment does not exist (a lost cluster) until a bundle that
    /// lists `Deployment/<namespace>/<name>` is applied; then it has
    /// `replicas`, ready after `ready_delay`.
    #[serde(default)]
    pub absent: bool,
}

#[derive(Debug, Clone)]
struct Deployment {
    replicas: u32,
    ready_before: u32,
    changed_at: Option<Instant>,
    ready_delay: Duration,
    never_ready: bool,
    /// (revision, image) pairs, oldest first; last is current.
    history: Vec<(u64, String)>,
    /// False until a bundle creates it (`absent = true`).
    exists: bool,
}

impl Deployment {
    fn ready_now(&self) -> u32 {
        match self.changed_at {
            None => self.ready_before.min(self.replicas),
            Some(_) if self.never_ready => 0,
            Some(t) if t.elapsed() >= self.ready_delay => self.replicas,
            Some(_) => self.ready_before.min(self.replicas),
        }
    }
    fn status(&self, namespace: &str, name: &str) -> DeploymentStatus {
        let ready = self.ready_now();
        let (revision, image) = self.history.last().cloned().unwrap_or((0, String::new()));
        DeploymentStatus {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            desired: self.replicas,
            ready,
            available: ready,
            revision,
            images: if image.is_empty() {
                vec![]
            } else {
                vec![image]
            },
        }
    }
    fn touch(&mut self) {
        self.ready_before = self.ready_now();
        self.changed_at = Some(Instant::now());
    }
}

/// The simulated cluster.
pub struct MockK8s {
    reachable: bool,
    deployments: Mutex<BTreeMap<(String, String), Deployment>>,
    bundles: BTreeMap<String, Vec<String>>,
    secret_sources: BTreeSet<String>,
    secrets: Mutex<BTreeMap<String, u32>>,
    faults: Faults,
    log: MockLog,
    /// The runbook's bundle-object check (kinds, namespaces), as the live
    /// backend applies it; none until [`MockK8s::set_object_guard`].
    guard: Mutex<Option<super::live::ObjectGuard>>,
}

impl MockK8s {
    /// Builds the simulation from its fixture section.
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn new(f: K8sFixture, faults: Faults, log: MockLog) -> Result<MockK8s, String> {
        let mut deployments = BTreeMap::new();
        for d in f.deployments {
            let delay = parse_opt_duration(&d.ready_delay, "k8s.deployments.ready_delay")?;
            let rev = d.revision.unwrap_or(1);
            let n = d.images.len() as u64;
            let history = if d.images.is_empty() {
                vec![(rev, String::new())]
            } else {
                // The last image is the current revision; earlier ones count down.
                d.images
                    .iter()
                    .enumerate()
                    .map(|(i, img)| (rev.saturating_sub(n - 1 - i as u64), img.clone()))
                    .collect()
            };
            deployments.insert(
                (d.namespace.clone(), d.name.clone()),
                Deployment {
                    replicas: d.replicas,
                    ready_before: d.ready.unwrap_or(d.replicas),
                    changed_at: None,
                    ready_delay: delay,
                    never_ready: d.never_ready,
                    history,
                    exists: !d.absent,
                },
            );
        }
        Ok(MockK8s {
            reachable: f.reachable.unwrap_or(true),
            deployments: Mutex::new(deployments),
            bundles: f.bundles,
            secret_sources: f.secret_sources.into_iter().collect(),
            secrets: Mutex::new(f.secrets.into_iter().map(|s| (s, 1)).collect()),
            faults,
            log,
            guard: Mutex::new(None),
        })
    }

    /// The simulated cluster's mutable state, for a resumed run (see
    /// [`crate::fixture::MockEnv::world`]). A rollout in progress is saved
    /// as its ready count; it starts over when loaded.
    pub fn world(&self) -> serde_json::Value {
        let deployments: Vec<serde_json::Value> = lock(&self.deployments)
            .iter()
            .map(|((ns, name), d)| {
                serde_json::json!({
                    "namespace": ns, "name": name, "replicas": d.replicas,
                    "ready": d.ready_now(), "history": d.history, "exists": d.exists,
                })
            })
            .collect();
        serde_json::json!({ "deployments": deployments, "secrets": *lock(&self.secrets) })
    }

    /// Loads what [`MockK8s::world`] saved.
    ///
    /// # Errors
    /// A message naming the malformed part.
    pub fn load_world(&self, world: &serde_json::Value) -> Result<(), String> {
        #[derive(Deserialize)]
        struct Saved {
            namespace: String,
            name: String,
            replicas: u32,
            ready: u32,
            history: Vec<(u64, String)>,
            exists: bool,
        }
        let saved: Vec<Saved> = serde_json::from_value(world["deployments"].clone())
            .map_err(|e| format!("k8s.deployments: {e}"))?;
        let secrets: BTreeMap<String, u32> = serde_json::from_value(world["secrets"].clone())
            .map_err(|e| format!("k8s.secrets: {e}"))?;
        let mut deployments = lock(&self.deployments);
        for s in saved {
            let d = deployments
                .entry((s.namespace.clone(), s.name.clone()))
                .or_insert_with(|| Deployment {
                    replicas: 0,
                    ready_before: 0,
                    changed_at: None,
                    ready_delay: Duration::ZERO,
                    never_ready: false,
                    history: Vec::new(),
                    exists: false,
                });
            d.replicas = s.replicas;
            d.ready_before = s.ready;
            // A rollout that had not finished goes on from now.
            d.changed_at = (s.ready < s.replicas).then(Instant::now);
            d.history = s.history;
            d.exists = s.exists;
        }
        *lock(&self.secrets) = secrets;
        Ok(())
    }

    /// Checks every object of an applied bundle with `guard` (the runbook's
    /// `[grants.k8s] kinds` and `namespaces`) before anything is applied,
    /// as the live backend does.
    pub fn set_object_guard(&self, guard: super::live::ObjectGuard) {
        *lock(&self.guard) = Some(guard);
    }

    /// Current status of a deployment (for tests asserting the simulation).
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<DeploymentStatus> {
        lock(&self.deployments)
            .get(&(namespace.to_owned(), name.to_owned()))
            .filter(|d| d.exists)
            .map(|d| d.status(namespace, name))
    }

    /// How many times a secret was replaced (0 if never, None if unknown).
    pub fn secret_version(&self, namespace: &str, name: &str) -> Option<u32> {
        lock(&self.secrets)
            .get(&format!("{namespace}/{name}"))
            .copied()
    }

    fn with<T>(
        &self,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Deployment) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        let mut map = lock(&self.deployments);
        match map.get_mut(&(namespace.to_owned(), name.to_owned())) {
            Some(d) if d.exists => f(d),
            _ => Err(CapError::NotFound(format!(
                "deployment {namespace}/{name} not found"
            ))),
        }
    }

    async fn enter(&self, op: &str, detail: String) -> Result<(), CapError> {
        self.log.record(format!("k8s.{op} {detail}"));
        if !self.reachable {
            return Err(CapError::Unavailable(
                "Kubernetes API server unreachable (simulated)".into(),
            ));
        }
        self.faults.inject(&format!("k8s.{op}")).await
    }
}

#[async_trait]
impl K8sBackend for MockK8s {
    async fn get_deployment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<DeploymentStatus, CapError> {
        self.enter("get-deployment", format!("{namespace}/{name}"))
            .await?;
        self.with(namespace, name, |d| Ok(d.status(namespace, name)))
    }

    async fn scale(&self, namespace: &str, name: &str, replicas: u32) -> Result<u32, CapError> {
        self.enter("scale", format!("{namespace}/{name} {replicas}"))
            .await?;
        self.with(namespace, name, |d| {
            let prev = d.replicas;
            if prev != replicas {
                d.touch();
                d.replicas = replicas;
            }
            Ok(prev)
        })
    }

    async fn rollout_undo(
        &self,
        namespace: &str,
        name: &str,
        to_revision: Option<u64>,
    ) -> Result<u64, CapError> {
        self.enter(
            "rollout-undo",
            format!("{namespace}/{name} {to_revision:?}"),
        )
        .await?;
        self.with(namespace, name, |d| {
            let target = match to_revision {
                Some(r) => d
                    .history
                    .iter()
                    .find(|(rev, _)| *rev == r)
                    .cloned()
                    .ok_or_else(|| {
                        CapError::NotFound(format!("{namespace}/{name} has no revision {r}"))
                    })?,
                None => {
                    if d.history.len() < 2 {
                        return Err(CapError::NotFound(format!(
                            "{namespace}/{name} has no previous revision to roll back to"
                        )));
                    }
                    d.history[d.history.len() - 2].clone()
                }
            };
            let next = d.history.iter().map(|(r, _)| *r).max().unwrap_or(0) + 1;
            // Like Kubernetes: the old template becomes the newest revision.
            d.history.retain(|(r, _)| *r != target.0);
            d.history.push((next, target.1));
            d.touch();
            Ok(next)
        })
    }

    async fn wait_ready(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<DeploymentStatus, CapError> {
        self.enter("wait-ready", format!("{namespace}/{name}"))
            .await?;
        let (never, remaining) = self.with(namespace, name, |d| {
            let rem = match d.changed_at {
                Some(t) => d.ready_delay.saturating_sub(t.elapsed()),
                None => Duration::ZERO,
            };
            Ok((
                d.never_ready && d.changed_at.is_some() && d.replicas > 0,
                rem,
            ))
        })?;
        if never {
            return Err(CapError::TimedOut(format!(
                "{namespace}/{name}: pods never became ready (simulated; waited up to {})",
                crate::runbook::fmt_duration(timeout)
            )));
        }
        if remaining > timeout {
            crate::sim::sleep(timeout).await;
            return Err(CapError::TimedOut(format!(
                "{namespace}/{name} not ready after {}",
                crate::runbook::fmt_duration(timeout)
            )));
        }
        crate::sim::sleep(remaining).await;
        self.with(namespace, name, |d| Ok(d.status(namespace, name)))
    }

    async fn apply(&self, bundle: &str) -> Result<Vec<String>, CapError> {
        self.enter("apply", bundle.to_owned()).await?;
        let objects =
            self.bundles.get(bundle).cloned().ok_or_else(|| {
                CapError::NotFound(format!("manifest bundle {bundle:?} not found"))
            })?;
        let guard = lock(&self.guard).clone();
        if let Some(guard) = guard {
            let refusals: Vec<String> = objects
                .iter()
                .filter_map(|object| {
                    let mut parts = object.splitn(3, '/');
                    let (kind, ns, name) = (
                        parts.next().unwrap_or(""),
                        parts.next().unwrap_or(""),
                        parts.next().unwrap_or(""),
                    );
                    guard(kind, ns, name)
                        .err()
                        .map(|why| format!("{object}: {why}"))
                })
                .collect();
            if !refusals.is_empty() {
                return Err(CapError::Denied(format!(
                    "bundle {bundle:?}: {}",
                    refusals.join("; ")
                )));
            }
        }
        // Deployments in the bundle are created (absent ones) or get new
        // pods (existing ones), as a server-side apply of their template would.
        let mut map = lock(&self.deployments);
        for object in &objects {
            let mut parts = object.splitn(3, '/');
            if let (Some("Deployment"), Some(ns), Some(name)) =
                (parts.next(), parts.next(), parts.next())
                && let Some(d) = map.get_mut(&(ns.to_owned(), name.to_owned()))
            {
                if !d.exists {
                    d.exists = true;
                    d.ready_before = 0;
                    d.changed_at = Some(Instant::now());
                } else {
                    d.touch();
                }
            }
        }
        Ok(objects)
    }

    async fn replace_secret(
        &self,
        namespace: &str,
        name: &str,
        source: &str,
    ) -> Result<(), CapError> {
        self.enter("replace-secret", format!("{namespace}/{name} {source}"))
            .await?;
        if !self.secret_sources.contains(source) {
            return Err(CapError::NotFound(format!(
                "secret source {source:?} is not configured"
            )));
        }
        *lock(&self.secrets)
            .entry(format!("{namespace}/{name}"))
            .or_insert(0) += 1;
        Ok(())
    }

    async fn cluster_reachable(&self) -> Result<String, CapError> {
        self.enter("cluster-reachable", String::new()).await?;
        Ok("v1.31.0 (simulated)".into())
    }
}
