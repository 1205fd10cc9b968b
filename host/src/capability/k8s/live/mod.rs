//! The live Kubernetes backend: [`LiveK8s`] implements [`K8sBackend`]
//! against a real API server with `kube` (kubeconfig or in-cluster service
//! account).
//!
//! This file holds the settings, the connection, the simple operations
//! (deployment status, scale, wait-ready, secret replacement, version), the
//! error mapping and the bounded retry helper. Bundle application lives in
//! `apply.rs`, `kubectl rollout undo` in `rollout.rs`.

mod apply;
mod rollout;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::{Scale, ScaleSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use tokio::time::Instant;

use super::K8sBackend;
use crate::bindings::CapError;
use crate::bindings::k8s::DeploymentStatus;

/// Annotation the deployment controller keeps the rollout revision in.
const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Default time box for operations that do not wait (everything but
/// `wait_ready`), retries included.
const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(30);
/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Largest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where the backend finds its cluster, manifests and secret material.
#[derive(Debug, Clone, Default)]
pub struct K8sSettings {
    /// Kubeconfig file. `None`: `KUBECONFIG` / `~/.kube/config`, else the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; `None` uses the current context.
    pub context: Option<String>,
    /// Bundles live here: `<manifest_dir>/<bundle>.yaml`, `<bundle>.yml`, or
    /// a directory `<manifest_dir>/<bundle>/` of `*.yaml`/`*.yml` files
    /// applied in file-name order.
    pub manifest_dir: PathBuf,
    /// Named secret sources for `replace_secret`.
    pub secret_sources: BTreeMap<String, SecretSource>,
}

/// Where the bytes of a secret come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A YAML or JSON file holding a map key -> string value, or a directory
    /// in which each regular file (names starting with `.` skipped) is one
    /// key with the file's bytes as value.
    File(PathBuf),
    /// An environment variable holding a JSON object key -> string value.
    Env(String),
}

/// Decides whether one object of a bundle may be applied:
/// `(kind, namespace or "" for cluster-scoped, name)` -> `Err(message)` if
/// not granted.
pub type ObjectGuard = Arc<dyn Fn(&str, &str, &str) -> Result<(), String> + Send + Sync>;

/// The live backend: one `kube` client plus settings, guard and a per
/// connection discovery cache.
///
/// Every call except `wait_ready` is time-boxed (default 30 s, see
/// [`LiveK8s::with_op_timeout`]) with transient failures retried inside
/// that box. `apply` returns `Kind/namespace/name` per object, with an
/// empty namespace for cluster-scoped kinds (`Namespace//shop`).
pub struct LiveK8s {
    client: Client,
    settings: K8sSettings,
    guard: ObjectGuard,
    op_timeout: Duration,
    /// (apiVersion, kind) -> (resource, namespaced)
    discovery: Mutex<HashMap<(String, String), (kube::discovery::ApiResource, bool)>>,
}

/// A [`LiveK8s`] built at its first call: reading the kubeconfig is async,
/// and a run that never calls Kubernetes must not fail on a broken one.
/// A failed connection is retried at the next call.
pub struct ConnectOnUse {
    settings: K8sSettings,
    guard: ObjectGuard,
    live: tokio::sync::OnceCell<LiveK8s>,
}

impl ConnectOnUse {
    /// Nothing is read until the first call.
    pub fn new(settings: K8sSettings, guard: ObjectGuard) -> Self {
        ConnectOnUse {
            settings,
            guard,
            live: tokio::sync::OnceCell::new(),
        }
    }

    async fn live(&self) -> Result<&LiveK8s, CapError> {
        self.live
            .get_or_try_init(|| LiveK8s::connect(self.settings.clone(), self.guard.clone()))
            .await
    }
}

#[async_trait]
impl K8sBackend for ConnectOnUse {
    async fn get_deployment(&self, ns: &str, name: &str) -> Result<DeploymentStatus, CapError> {
        self.live().await?.get_deployment(ns, name).await
    }
    async fn scale(&self, ns: &str, name: &str, replicas: u32) -> Result<u32, CapError> {
        self.live().await?.scale(ns, name, replicas).await
    }
    async fn rollout_undo(
        &self,
        ns: &str,
        name: &str,
        to_revision: Option<u64>,
    ) -> Result<u64, CapError> {
        self.live().await?.rollout_undo(ns, name, to_revision).await
    }
    async fn wait_ready(
        &self,
        ns: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<DeploymentStatus, CapError> {
        self.live().await?.wait_ready(ns, name, timeout).await
    }
    async fn apply(&self, bundle: &str) -> Result<Vec<String>, CapError> {
        self.live().await?.apply(bundle).await
    }
    async fn replace_secret(&self, ns: &str, name: &str, source: &str) -> Result<(), CapError> {
        self.live().await?.replace_secret(ns, name, source).await
    }
    async fn cluster_reachable(&self) -> Result<String, CapError> {
        self.live().await?.cluster_reachable().await
    }
}

impl LiveK8s {
    /// Builds a client from the settings (explicit kubeconfig and/or
    /// context, else `kube::Config::infer`). Does not contact the server:
    /// use [`K8sBackend::cluster_reachable`] for that.
    pub async fn connect(settings: K8sSettings, guard: ObjectGuard) -> Result<LiveK8s, CapError> {
        crate::capability::install_crypto_provider();
        let options = KubeConfigOptions {
            context: settings.context.clone(),
            ..Default::default()
        };
        let mut config = match (&settings.kubeconfig, &settings.context) {
            (Some(path), _) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    CapError::Invalid(format!("kubeconfig {}: {e}", path.display()))
                })?;
                Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| CapError::Invalid(format!("kubeconfig {}: {e}", path.display())))?
            }
            (None, Some(ctx)) => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| CapError::Invalid(format!("kubeconfig context {ctx}: {e}")))?,
            (None, None) => Config::infer()
                .await
                .map_err(|e| CapError::Unavailable(format!("kubernetes configuration: {e}")))?,
        };
        // Retries are ours (bounded by each operation's deadline).
        config.default_retry = false;
        if config.connect_timeout.is_none() {
            config.connect_timeout = Some(Duration::from_secs(10));
        }
        let client = Client::try_from(config)
            .map_err(|e| CapError::Unavailable(format!("kubernetes client: {e}")))?;
        Ok(Self::with_client(client, settings, guard))
    }

    /// The underlying client (the host's own requests, e.g. run leases).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Wraps an existing client (its retry settings are left as they are).
    pub fn with_client(client: Client, settings: K8sSettings, guard: ObjectGuard) -> LiveK8s {
        LiveK8s {
            client,
            settings,
            guard,
            op_timeout: DEFAULT_OP_TIMEOUT,
            discovery: Mutex::new(HashMap::new()),
        }
    }

    /// Sets the time box of non-waiting operations, retries included
    /// (default 30 s).
    pub fn with_op_timeout(mut self, timeout: Duration) -> LiveK8s {
        self.op_timeout = timeout;
        self
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.op_timeout
    }

    fn deployments(&self, namespace: &str) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

#[async_trait]
impl K8sBackend for LiveK8s {
    async fn get_deployment(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<DeploymentStatus, CapError> {
        let api = &self.deployments(namespace);
        let what = format!("get deployment {namespace}/{name}");
        let d = retry(&what, self.deadline(), false, move || async move {
            Ok(api.get(name).await?)
        })
        .await?;
        Ok(deployment_status(namespace, name, &d))
    }

    async fn scale(&self, namespace: &str, name: &str, replicas: u32) -> Result<u32, CapError> {
        let want = i32::try_from(replicas)
            .map_err(|_| CapError::Invalid(format!("replicas {replicas} out of range")))?;
        let api = &self.deployments(namespace);
        let what = format!("scale deployment {namespace}/{name}");
        let previous = retry(&what, self.deadline(), true, move || async move {
            let current = api.get_scale(name).await?;
            let previous = current.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            // The read's resourceVersion makes the write conditional: a
            // concurrent change gives 409 and a fresh attempt.
            let next = Scale {
                metadata: current.metadata,
                spec: Some(ScaleSpec {
                    replicas: Some(want),
                }),
                status: None,
            };
            api.replace_scale(name, &PostParams::default(), &next)
                .await?;
            Ok(previous.max(0) as u32)
        })
        .await?;
        tracing::info!(namespace, name, previous, replicas, "scaled deployment");
        Ok(previous)
    }

    async fn rollout_undo(
        &self,
        namespace: &str,
        name: &str,
        to_revision: Option<u64>,
    ) -> Result<u64, CapError> {
        self.undo(namespace, name, to_revision).await
    }

    async fn wait_ready(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<DeploymentStatus, CapError> {
        let deadline = Instant::now() + timeout;
        let api = &self.deployments(namespace);
        let what = format!("get deployment {namespace}/{name}");
        let first = retry(&what, deadline, false, move || async move {
            Ok(api.get(name).await?)
        })
        .await
        .map_err(|e| match e {
            CapError::Unavailable(m) if Instant::now() >= deadline => {
                CapError::TimedOut(format!("{m} (wait_ready timeout {timeout:?})"))
            }
            e => e,
        })?;
        match watch_until(api, namespace, name, deadline, first, deployment_ready).await? {
            Watched::Matched(d) => Ok(deployment_status(namespace, name, &d)),
            Watched::Expired(d) => Err(CapError::TimedOut(format!(
                "deployment {namespace}/{name} not ready after {timeout:?}: {}",
                describe_rollout(&d)
            ))),
        }
    }

    async fn apply(&self, bundle: &str) -> Result<Vec<String>, CapError> {
        self.apply_bundle(bundle).await
    }

    async fn replace_secret(
        &self,
        namespace: &str,
        name: &str,
        source: &str,
    ) -> Result<(), CapError> {
        let src = self.settings.secret_sources.get(source).ok_or_else(|| {
            CapError::NotFound(format!("secret source {source:?} is not configured"))
        })?;
        let data: BTreeMap<String, ByteString> = load_secret_source(source, src)
            .await?
            .into_iter()
            .map(|(k, v)| (k, ByteString(v)))
            .collect();
        let keys = data.len();
        let api = &Api::<Secret>::namespaced(self.client.clone(), namespace);
        let data = &data;
        let what = format!("replace secret {namespace}/{name}");
        retry(&what, self.deadline(), true, move || async move {
            match api.get_opt(name).await? {
                Some(mut s) => {
                    s.data = Some(data.clone());
                    s.string_data = None;
                    s.metadata.managed_fields = None;
                    api.replace(name, &PostParams::default(), &s).await?;
                }
                None => {
                    let s = Secret {
                        metadata: ObjectMeta {
                            name: Some(name.to_string()),
                            namespace: Some(namespace.to_string()),
                            ..Default::default()
                        },
                        type_: Some("Opaque".to_string()),
                        data: Some(data.clone()),
                        ..Default::default()
                    };
                    // 409 AlreadyExists: someone created it meanwhile; the
                    // retry reads it and replaces.
                    api.create(&PostParams::default(), &s).await?;
                }
            }
            Ok(())
        })
        .await?;
        tracing::info!(namespace, name, source, keys, "replaced secret");
        Ok(())
    }

    async fn cluster_reachable(&self) -> Result<String, CapError> {
        let client = &self.client;
        let info = retry(
            "get API server version",
            self.deadline(),
            false,
            move || async move { Ok(client.apiserver_version().await?) },
        )
        .await?;
        Ok(info.git_version)
    }
}

// ---------------------------------------------------------------- status --

/// Revision annotation of an object (0 if absent or unparsable).
fn revision_of(meta: &ObjectMeta) -> u64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn count(v: Option<i32>) -> u32 {
    v.unwrap_or(0).max(0) as u32
}

/// spec.replicas, defaulting to 1 like the API server.
fn desired_replicas(d: &Deployment) -> u32 {
    count(Some(d.spec.replicas.unwrap_or(1)))
}

/// The wit view of a deployment.
fn deployment_status(namespace: &str, name: &str, d: &Deployment) -> DeploymentStatus {
    let st = d.status.as_ref();
    DeploymentStatus {
        namespace: namespace.to_string(),
        name: name.to_string(),
        desired: desired_replicas(d),
        ready: count(st.and_then(|s| s.ready_replicas)),
        available: count(st.and_then(|s| s.available_replicas)),
        revision: revision_of(&d.metadata),
        images: d
            .spec
            .template
            .spec
            .as_ref()
            .map(|p| {
                p.containers
                    .iter()
                    .filter_map(|c| c.image.clone())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Rollout complete: the controller has seen the latest spec and every
/// desired replica is updated, ready and available (no old ones left).
/// Zero desired replicas with nothing running counts as ready.
fn deployment_ready(d: &Deployment) -> bool {
    let st = d.status.as_ref();
    let generation = d.metadata.generation.unwrap_or(0);
    let observed = st.and_then(|s| s.observed_generation).unwrap_or(0);
    let want = desired_replicas(d);
    observed >= generation
        && count(st.and_then(|s| s.updated_replicas)) == want
        && count(st.and_then(|s| s.ready_replicas)) == want
        && count(st.and_then(|s| s.available_replicas)) == want
        && count(st.and_then(|s| s.replicas)) <= want
}

/// Human summary of a deployment's rollout state, for timeouts.
fn describe_rollout(d: &Deployment) -> String {
    let st = d.status.as_ref();
    format!(
        "generation {} (observed {}), desired {}, replicas {}, updated {}, ready {}, available {}",
        d.metadata.generation.unwrap_or(0),
        st.and_then(|s| s.observed_generation).unwrap_or(0),
        desired_replicas(d),
        count(st.and_then(|s| s.replicas)),
        count(st.and_then(|s| s.updated_replicas)),
        count(st.and_then(|s| s.ready_replicas)),
        count(st.and_then(|s| s.available_replicas)),
    )
}

// ----------------------------------------------------------------- watch --

/// How a [`watch_until`] ended.
enum Watched {
    /// The predicate held for this version.
    Matched(Deployment),
    /// The deadline passed; the last version seen.
    Expired(Deployment),
}

/// Watches one deployment (fieldSelector `metadata.name`) from `last`'s
/// resourceVersion until `pred` holds or `deadline` passes. A watch that
/// ends (server timeout, disconnect) is re-established from the last
/// resourceVersion seen; 410 Gone re-reads the object first.
async fn watch_until(
    api: &Api<Deployment>,
    namespace: &str,
    name: &str,
    deadline: Instant,
    mut last: Deployment,
    pred: impl Fn(&Deployment) -> bool,
) -> Result<Watched, CapError> {
    let what = format!("watch deployment {namespace}/{name}");
    let mut rv = last.resource_version().unwrap_or_default();
    let mut backoff = FIRST_BACKOFF;
    loop {
        if pred(&last) {
            return Ok(Watched::Matched(last));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Watched::Expired(last));
        }
        let secs = (deadline - now).as_secs().saturating_add(1).min(290) as u32;
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(secs);
        let mut gone = false;
        match tokio::time::timeout_at(deadline, api.watch(&wp, &rv)).await {
            Err(_) => return Ok(Watched::Expired(last)),
            Ok(Err(e)) if api_code(&e) == Some(410) => gone = true,
            Ok(Err(e)) if is_transient(&e) => {
                tracing::debug!(namespace, name, error = %e, "watch failed; retrying");
            }
            Ok(Err(e)) => return Err(map_kube_error(&what, &e)),
            Ok(Ok(stream)) => {
                let mut stream = stream.boxed();
                loop {
                    let event = match tokio::time::timeout_at(deadline, stream.next()).await {
                        Err(_) => return Ok(Watched::Expired(last)),
                        Ok(None) => break,
                        Ok(Some(Err(e))) => {
                            tracing::debug!(namespace, name, error = %e, "watch stream error");
                            break;
                        }
                        Ok(Some(Ok(ev))) => ev,
                    };
                    match event {
                        WatchEvent::Added(d) | WatchEvent::Modified(d) => {
                            rv = d.resource_version().unwrap_or(rv);
                            last = d;
                            backoff = FIRST_BACKOFF;
                            if pred(&last) {
                                return Ok(Watched::Matched(last));
                            }
                        }
                        WatchEvent::Deleted(_) => {
                            return Err(CapError::NotFound(format!(
                                "deployment {namespace}/{name} was deleted while waiting"
                            )));
                        }
                        WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                        WatchEvent::Error(s) if s.code == 410 => {
                            gone = true;
                            break;
                        }
                        WatchEvent::Error(s) => {
                            tracing::debug!(namespace, name, code = s.code, message = %s.message, "watch error event");
                            break;
                        }
                    }
                }
            }
        }
        if gone {
            // Our resourceVersion is too old: start over from a fresh read.
            let fresh = retry(&what, deadline, false, move || async move {
                Ok(api.get(name).await?)
            })
            .await;
            match fresh {
                Ok(d) => {
                    rv = d.resource_version().unwrap_or_default();
                    last = d;
                    continue;
                }
                Err(_) if Instant::now() >= deadline => return Ok(Watched::Expired(last)),
                Err(e) => return Err(e),
            }
        }
        // Stream ended or failed: pause a little before re-watching.
        tokio::time::sleep_until(deadline.min(Instant::now() + backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

// --------------------------------------------------------------- secrets --

/// Reads a secret source into key -> bytes. Error messages name the source,
/// file or variable, never any of the content.
async fn load_secret_source(
    source: &str,
    src: &SecretSource,
) -> Result<BTreeMap<String, Vec<u8>>, CapError> {
    match src {
        SecretSource::File(path) => {
            let meta = tokio::fs::metadata(path)
                .await
                .map_err(|e| file_error(&format!("secret source {source:?}: file"), path, &e))?;
            if meta.is_dir() {
                read_secret_dir(source, path).await
            } else {
                let bytes = tokio::fs::read(path).await.map_err(|e| {
                    file_error(&format!("secret source {source:?}: file"), path, &e)
                })?;
                let text = String::from_utf8(bytes).map_err(|_| {
                    CapError::Invalid(format!(
                        "secret source {source:?}: file {} is not UTF-8 text",
                        path.display()
                    ))
                })?;
                parse_secret_map(&text).map_err(|why| {
                    CapError::Invalid(format!(
                        "secret source {source:?}: file {} {why}",
                        path.display()
                    ))
                })
            }
        }
        SecretSource::Env(var) => {
            let text = std::env::var(var).map_err(|e| match e {
                std::env::VarError::NotPresent => CapError::NotFound(format!(
                    "secret source {source:?}: environment variable {var} is not set"
                )),
                std::env::VarError::NotUnicode(_) => CapError::Invalid(format!(
                    "secret source {source:?}: environment variable {var} is not UTF-8"
                )),
            })?;
            let map: BTreeMap<String, String> = serde_json::from_str(&text).map_err(|e| {
                // serde_json's message may quote a value: report only where.
                CapError::Invalid(format!(
                    "secret source {source:?}: environment variable {var} is not a JSON object \
                     of string values (line {}, column {})",
                    e.line(),
                    e.column()
                ))
            })?;
            Ok(map.into_iter().map(|(k, v)| (k, v.into_bytes())).collect())
        }
    }
}

/// Parses a YAML/JSON map of scalar values. The error says what is wrong
/// without quoting content (parser messages can echo the input).
fn parse_secret_map(text: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let value: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|_| "is not valid YAML or JSON".to_string())?;
    let serde_json::Value::Object(map) = value else {
        return Err("is not a map of key -> value".to_string());
    };
    map.into_iter()
        .map(|(k, v)| {
            let bytes = match v {
                serde_json::Value::String(s) => s.into_bytes(),
                serde_json::Value::Number(n) => n.to_string().into_bytes(),
                serde_json::Value::Bool(b) => b.to_string().into_bytes(),
                serde_json::Value::Null => Vec::new(),
                _ => return Err(format!("has a non-scalar value under key {k:?}")),
            };
            Ok((k, bytes))
        })
        .collect()
}

/// Each regular file (symlinks followed, dot-files skipped) is one key.
async fn read_secret_dir(source: &str, dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, CapError> {
    let ctx = format!("secret source {source:?}: directory");
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| file_error(&ctx, dir, &e))?;
    let mut out = BTreeMap::new();
    loop {
        let entry = match entries.next_entry().await {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(e) => return Err(file_error(&ctx, dir, &e)),
        };
        let Some(key) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let path = entry.path();
        if key.starts_with('.') {
            continue;
        }
        let ctx = format!("secret source {source:?}: file");
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|e| file_error(&ctx, &path, &e))?;
        if !meta.is_file() {
            continue;
        }
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| file_error(&ctx, &path, &e))?;
        out.insert(key, bytes);
    }
    Ok(out)
}

/// An I/O error on a named file: missing -> NotFound, else Failed.
fn file_error(ctx: &str, path: &Path, e: &std::io::Error) -> CapError {
    let msg = format!("{ctx} {}: {e}", path.display());
    if e.kind() == std::io::ErrorKind::NotFound {
        CapError::NotFound(msg)
    } else {
        CapError::Failed(msg)
    }
}

// ------------------------------------------------------- errors & retry --

/// Why one attempt of a retried operation failed.
pub(crate) enum Attempt {
    /// A client/API error, classified by [`retry`].
    Kube(kube::Error),
    /// The object changed under us (e.g. a failed JSON-patch test);
    /// retried when conflicts are, else reported as Conflict.
    Conflict(String),
    /// Final: returned as is.
    Done(CapError),
}

impl From<kube::Error> for Attempt {
    fn from(e: kube::Error) -> Self {
        Attempt::Kube(e)
    }
}

impl From<CapError> for Attempt {
    fn from(e: CapError) -> Self {
        Attempt::Done(e)
    }
}

/// The HTTP status of an API error.
fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Worth retrying: overload, server errors, transport trouble.
fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code == 408 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// Maps a client error onto the capability error vocabulary. API errors
/// carry the API server's message.
pub(crate) fn map_kube_error(what: &str, e: &kube::Error) -> CapError {
    match e {
        kube::Error::Api(s) => {
            let msg = if s.message.is_empty() {
                format!("{what}: HTTP {} {}", s.code, s.reason)
            } else {
                format!("{what}: {}", s.message)
            };
            match s.code {
                401 | 403 => CapError::Denied(msg),
                404 => CapError::NotFound(msg),
                409 | 410 => CapError::Conflict(msg),
                400 | 422 => CapError::Invalid(msg),
                408 | 429 | 500..=599 => CapError::Unavailable(msg),
                _ => CapError::Failed(msg),
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            CapError::Unavailable(format!("{what}: cannot reach the API server: {e}"))
        }
        kube::Error::Auth(_) => CapError::Unavailable(format!("{what}: authentication: {e}")),
        _ => CapError::Failed(format!("{what}: {e}")),
    }
}

/// Runs `op` until it succeeds, fails for good, or `deadline` passes.
/// Transient failures (5xx, 429, transport errors) and, if
/// `retry_conflicts`, 409 conflicts are retried with exponential backoff
/// (100 ms doubling, capped at 2 s); each attempt is itself cut off at the
/// deadline. `op` must redo its reads so a retried conflict sees fresh state.
pub(crate) async fn retry<T, F, Fut>(
    what: &str,
    deadline: Instant,
    retry_conflicts: bool,
    mut op: F,
) -> Result<T, CapError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt>>,
{
    let mut delay = FIRST_BACKOFF;
    let mut attempt = 1u32;
    loop {
        let result = tokio::time::timeout_at(deadline, op()).await.map_err(|_| {
            CapError::Unavailable(format!("{what}: no answer within the time limit"))
        })?;
        let (retryable, err) = match result {
            Ok(v) => return Ok(v),
            Err(Attempt::Done(e)) => return Err(e),
            Err(Attempt::Conflict(msg)) => (
                retry_conflicts,
                CapError::Conflict(format!("{what}: {msg}")),
            ),
            Err(Attempt::Kube(e)) => (
                is_transient(&e) || (retry_conflicts && api_code(&e) == Some(409)),
                map_kube_error(what, &e),
            ),
        };
        if !retryable || Instant::now() + delay >= deadline {
            if retryable && attempt > 1 {
                return Err(reword(err, |m| format!("{m} (after {attempt} attempts)")));
            }
            return Err(err);
        }
        tracing::debug!(what, attempt, ?delay, "retrying after {}", kind_of(&err));
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_BACKOFF);
        attempt += 1;
    }
}

fn kind_of(e: &CapError) -> &'static str {
    match e {
        CapError::Denied(_) => "denied",
        CapError::TimedOut(_) => "timed out",
        CapError::NotFound(_) => "not found",
        CapError::Conflict(_) => "conflict",
        CapError::Unavailable(_) => "unavailable",
        CapError::Invalid(_) => "invalid",
        CapError::Failed(_) => "failed",
    }
}

/// Rewrites an error's message, keeping its kind.
pub(crate) fn reword(e: CapError, f: impl FnOnce(String) -> String) -> CapError {
    match e {
        CapError::Denied(m) => CapError::Denied(f(m)),
        CapError::TimedOut(m) => CapError::TimedOut(f(m)),
        CapError::NotFound(m) => CapError::NotFound(f(m)),
        CapError::Conflict(m) => CapError::Conflict(f(m)),
        CapError::Unavailable(m) => CapError::Unavailable(f(m)),
        CapError::Invalid(m) => CapError::Invalid(f(m)),
        CapError::Failed(m) => CapError::Failed(f(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus as K8sStatus};
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use kube::core::Status;

    fn api_err(code: u16, message: &str) -> kube::Error {
        let mut s = Status::failure(message, "Reason");
        s.code = code;
        kube::Error::Api(s.boxed())
    }

    fn deployment(replicas: Option<i32>, status: Option<K8sStatus>) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                generation: Some(2),
                annotations: Some([(REVISION_ANNOTATION.to_string(), "3".to_string())].into()),
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas,
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "app".into(),
                            image: Some("nginx:1.27".into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            },
            status,
        }
    }

    #[test]
    fn status_maps_fields_and_defaults() {
        let d = deployment(
            None,
            Some(K8sStatus {
                ready_replicas: Some(1),
                available_replicas: Some(0),
                ..Default::default()
            }),
        );
        let s = deployment_status("ns", "web", &d);
        assert_eq!(s.desired, 1);
        assert_eq!((s.ready, s.available, s.revision), (1, 0, 3));
        assert_eq!(s.images, vec!["nginx:1.27".to_string()]);
    }

    #[test]
    fn readiness_rules() {
        let full = K8sStatus {
            observed_generation: Some(2),
            replicas: Some(2),
            updated_replicas: Some(2),
            ready_replicas: Some(2),
            available_replicas: Some(2),
            ..Default::default()
        };
        assert!(deployment_ready(&deployment(Some(2), Some(full.clone()))));
        let stale = K8sStatus {
            observed_generation: Some(1),
            ..full.clone()
        };
        assert!(!deployment_ready(&deployment(Some(2), Some(stale))));
        let old_pods = K8sStatus {
            replicas: Some(3),
            ..full.clone()
        };
        assert!(!deployment_ready(&deployment(Some(2), Some(old_pods))));
        let zero = K8sStatus {
            observed_generation: Some(2),
            ..Default::default()
        };
        assert!(deployment_ready(&deployment(Some(0), Some(zero))));
        assert!(!deployment_ready(&deployment(Some(1), None)));
    }

    #[test]
    fn error_mapping() {
        let e = map_kube_error("op", &api_err(403, "forbidden: nope"));
        assert_eq!(e, CapError::Denied("op: forbidden: nope".into()));
        assert!(matches!(
            map_kube_error("op", &api_err(404, "x")),
            CapError::NotFound(_)
        ));
        assert!(matches!(
            map_kube_error("op", &api_err(409, "x")),
            CapError::Conflict(_)
        ));
        assert!(matches!(
            map_kube_error("op", &api_err(422, "x")),
            CapError::Invalid(_)
        ));
        assert!(matches!(
            map_kube_error("op", &api_err(400, "x")),
            CapError::Invalid(_)
        ));
        assert!(matches!(
            map_kube_error("op", &api_err(503, "x")),
            CapError::Unavailable(_)
        ));
        assert!(matches!(
            map_kube_error("op", &api_err(429, "x")),
            CapError::Unavailable(_)
        ));
        assert!(is_transient(&api_err(500, "x")));
        assert!(!is_transient(&api_err(409, "x")));
    }

    #[tokio::test]
    async fn retry_backs_off_then_succeeds() {
        let mut calls = 0;
        let calls_ref = &mut calls;
        let start = Instant::now();
        let v = retry("op", Instant::now() + Duration::from_secs(5), false, || {
            *calls_ref += 1;
            let n = *calls_ref;
            async move {
                if n < 3 {
                    Err(Attempt::Kube(api_err(500, "boom")))
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
        // 100 ms + 200 ms of backoff.
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn retry_gives_up_at_deadline_and_not_on_final_errors() {
        let err = retry::<(), _, _>(
            "op",
            Instant::now() + Duration::from_millis(350),
            false,
            || async { Err(Attempt::Kube(api_err(503, "overloaded"))) },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, CapError::Unavailable(m) if m.contains("overloaded") && m.contains("attempts")),
            "{err:?}"
        );
        let mut calls = 0;
        let calls_ref = &mut calls;
        let err = retry::<(), _, _>("op", Instant::now() + Duration::from_secs(5), false, || {
            *calls_ref += 1;
            async { Err(Attempt::Kube(api_err(409, "changed"))) }
        })
        .await
        .unwrap_err();
        assert!(matches!(err, CapError::Conflict(_)));
        assert_eq!(calls, 1);
    }

    #[test]
    fn secret_map_parsing_hides_content() {
        let m = parse_secret_map("user: admin\npassword: \"s3cr3t\"\nport: 5432\n").unwrap();
        assert_eq!(m["user"], b"admin");
        assert_eq!(m["port"], b"5432");
        let m = parse_secret_map(r#"{"token": "abc"}"#).unwrap();
        assert_eq!(m["token"], b"abc");
        let e = parse_secret_map("- hunter2\n").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse_secret_map("key: [hunter2\n").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
