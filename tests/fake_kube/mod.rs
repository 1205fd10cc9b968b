//! A small, in-memory fake Kubernetes API server for integration tests.
//!
//! It speaks enough of the real REST API (discovery, CRUD, list/watch, merge /
//! JSON / strategic / server-side-apply patches, the deployment `scale` and
//! `status` subresources, `Status` error bodies) for `kubectl` and Rust clients
//! such as `kube` to work against it, and runs a tiny deployment controller
//! that maintains ReplicaSets, revisions and rollout status.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let kube = drhost_tests::fake_kube::FakeKube::start().await?;
//! kube.insert(serde_json::json!({
//!     "apiVersion": "v1", "kind": "ConfigMap",
//!     "metadata": {"name": "cfg", "namespace": "shop"},
//!     "data": {"k": "v"},
//! }));
//! kube.write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"))?;
//! # Ok(()) }
//! ```

mod controller;
mod store;

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use self::controller::PendingReady;
use self::store::{
    ApiError, ApiResult, Event, FieldSelector, LabelSelector, RESOURCES, ResType, Store, fields_v1,
    find_kind, find_resource, json_patch, merge_patch, now_rfc3339, parse_rfc3339,
    remove_dropped_fields, strategic_merge,
};

/// Kubernetes version reported by `/version`.
const GIT_VERSION: &str = "v1.32.0";

/// A Deployment manifest as the tests seed it: `replicas` pods of one
/// container named like the deployment, selected by `app: NAME`.
pub fn deployment(ns: &str, name: &str, replicas: u32, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": name, "image": image}]},
            },
        },
    })
}

/// A running fake API server. Dropping it stops the server.
pub struct FakeKube {
    inner: Arc<Inner>,
    addr: SocketAddr,
    task: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

/// One pending injected failure.
struct Fault {
    method: String,
    path: String,
    status: u16,
    remaining: usize,
}

/// State shared by the server, the controller timers and the handle.
struct Inner {
    store: Mutex<Store>,
    requests: Mutex<Vec<(String, String, String)>>,
    faults: Mutex<Vec<Fault>>,
    ready_delay: Mutex<Duration>,
    never_ready: Mutex<HashSet<(String, String)>>,
    /// When the controller last marked each deployment ready.
    ready_marks: Mutex<HashMap<(String, String), std::time::Instant>>,
    handle: tokio::runtime::Handle,
    shutdown: watch::Receiver<bool>,
    addr: SocketAddr,
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not wedge the server).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeKube {
    /// Starts on 127.0.0.1:0 (ephemeral port) in the current tokio runtime.
    pub async fn start() -> std::io::Result<FakeKube> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::new()),
            requests: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            ready_delay: Mutex::new(Duration::from_millis(50)),
            never_ready: Mutex::new(HashSet::new()),
            ready_marks: Mutex::new(HashMap::new()),
            handle: tokio::runtime::Handle::current(),
            shutdown: shutdown_rx,
            addr,
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeKube {
            inner,
            addr,
            task,
            shutdown,
        })
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig (server = [`url`](Self::url), static token
    /// `fake-token`, context `fake`, namespace `default`) to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> std::io::Result<()> {
        let cfg = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {}\n\
             users:\n\
             - name: fake\n  user:\n    token: fake-token\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\n",
            self.url()
        );
        std::fs::write(path, cfg)
    }

    /// Seeds (creates or replaces) an object directly, bypassing HTTP. The
    /// object is in the JSON form the API returns; its namespace (default
    /// `default`) is created if needed, and the deployment controller runs.
    ///
    /// # Panics
    /// If `apiVersion`/`kind` is not served or the object is malformed.
    pub fn insert(&self, mut obj: Value) {
        let api_version = obj["apiVersion"].as_str().unwrap_or("").to_string();
        let kind = obj["kind"].as_str().unwrap_or("").to_string();
        let res = find_kind(&api_version, &kind)
            .unwrap_or_else(|| panic!("fakekube: unsupported object {api_version} {kind}"));
        let rt = &RESOURCES[res];
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("fakekube: insert needs metadata.name"))
            .to_string();
        let ns = if rt.namespaced {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let mut store = lock(&self.inner.store);
        if rt.namespaced {
            store.ensure_namespace(&ns);
        }
        let result = if store.get(res, &ns, &name).is_some() {
            let status = obj.get("status").cloned();
            store
                .update(res, &ns, &name, obj, None)
                .and_then(|v| match status {
                    Some(s) if rt.has_status() => {
                        store.update(res, &ns, &name, json!({"status": s}), Some("status"))
                    }
                    _ => Ok(v),
                })
        } else {
            store.create(res, &ns, obj)
        };
        if let Err(e) = result {
            panic!("fakekube: insert failed: {}", e.message);
        }
        self.inner.run_controller(&mut store);
    }

    /// One object as the API would return it, or `None`.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let res = find_kind(api_version, kind)?;
        let ns = if RESOURCES[res].namespaced {
            ns.unwrap_or("default")
        } else {
            ""
        };
        lock(&self.inner.store).get(res, ns, name).cloned()
    }

    /// Every request seen so far: (method, path-with-query, content-type).
    pub fn requests(&self) -> Vec<(String, String, String)> {
        lock(&self.inner.requests).clone()
    }

    /// Fault injection: the next `n` requests whose method matches `method`
    /// (case-insensitive; `""` or `"*"` match any) and whose path-with-query
    /// contains `path_contains` get `status` with a Kubernetes `Status` body.
    pub fn fail_next(&self, method: &str, path_contains: &str, status: u16, n: usize) {
        lock(&self.inner.faults).push(Fault {
            method: method.to_string(),
            path: path_contains.to_string(),
            status,
            remaining: n,
        });
    }

    /// How long after a template/replicas change a deployment becomes ready (default 50 ms).
    pub fn set_ready_delay(&self, d: std::time::Duration) {
        *lock(&self.inner.ready_delay) = d;
    }

    /// When the controller last marked deployment `ns/name` ready (for
    /// measuring how soon a client notices).
    pub fn ready_marked_at(&self, ns: &str, name: &str) -> Option<std::time::Instant> {
        lock(&self.inner.ready_marks)
            .get(&(ns.to_string(), name.to_string()))
            .copied()
    }

    /// Keeps deployment `ns/name` unready from now on (its status shows 0 ready replicas).
    pub fn never_ready(&self, ns: &str, name: &str) {
        lock(&self.inner.never_ready).insert((ns.to_string(), name.to_string()));
        let mut store = lock(&self.inner.store);
        controller::mark_unready(&mut store, ns, name);
        store.dirty_deployments.clear();
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

impl Inner {
    /// Runs the deployment controller on every deployment written since the last run.
    fn run_controller(self: &Arc<Self>, store: &mut Store) {
        if store.dry_run {
            return;
        }
        let dirty = std::mem::take(&mut store.dirty_deployments);
        let never = lock(&self.never_ready).clone();
        for (ns, name) in dirty {
            let nr = never.contains(&(ns.clone(), name.clone()));
            if let Some(p) = controller::reconcile(store, &ns, &name, nr) {
                self.schedule_ready(p);
            }
        }
        store.dirty_deployments.clear();
    }

    fn schedule_ready(self: &Arc<Self>, p: PendingReady) {
        let delay = *lock(&self.ready_delay);
        let inner = self.clone();
        self.handle.spawn(async move {
            tokio::time::sleep(delay).await;
            if lock(&inner.never_ready).contains(&(p.ns.clone(), p.name.clone())) {
                return;
            }
            let mut store = lock(&inner.store);
            // Taken before the status is written: no client can have seen
            // it earlier (the figure errs by the write's microseconds).
            let marked = std::time::Instant::now();
            if controller::mark_ready(&mut store, &p) {
                lock(&inner.ready_marks).insert((p.ns.clone(), p.name.clone()), marked);
            }
            store.dirty_deployments.clear();
        });
    }

    fn take_fault(&self, method: &str, path: &str) -> Option<u16> {
        let mut faults = lock(&self.faults);
        let f = faults.iter_mut().find(|f| {
            f.remaining > 0
                && (f.method.is_empty() || f.method == "*" || f.method.eq_ignore_ascii_case(method))
                && path.contains(&f.path)
        })?;
        f.remaining -= 1;
        Some(f.status)
    }
}

// ---------------------------------------------------------------- HTTP plumbing

fn json_response(code: u16, v: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

fn not_found_path() -> ApiError {
    ApiError::new(404, "the server could not find the requested resource")
}

/// The single entry point: records the request, injects faults, routes.
async fn handle(State(inner): State<Arc<Inner>>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path_q = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let headers = req.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    lock(&inner.requests).push((method.to_string(), path_q.clone(), content_type.clone()));
    if let Some(code) = inner.take_fault(method.as_str(), &path_q) {
        return error_response(&ApiError::new(
            code,
            format!("fakekube: injected failure for {method} {}", uri.path()),
        ));
    }
    let query: HashMap<String, String> = Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let body = match axum::body::to_bytes(req.into_body(), 64 << 20).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::new(400, format!("reading body: {e}"))),
    };
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let ctx = Ctx {
        inner: &inner,
        method: &method,
        query: &query,
        content_type: &content_type,
        headers: &headers,
        body: &body,
    };
    match route(&ctx, &segs) {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

/// Everything a request handler needs.
struct Ctx<'a> {
    inner: &'a Arc<Inner>,
    method: &'a Method,
    query: &'a HashMap<String, String>,
    content_type: &'a str,
    headers: &'a HeaderMap,
    body: &'a Bytes,
}

impl Ctx<'_> {
    fn q(&self, k: &str) -> &str {
        self.query.get(k).map(String::as_str).unwrap_or("")
    }

    /// Whether the client accepts aggregated discovery (`apidiscovery.k8s.io/v2`).
    fn wants_aggregated(&self) -> bool {
        self.headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| {
                a.split(',').any(|t| {
                    t.contains("as=APIGroupDiscoveryList")
                        && t.contains("v=v2")
                        && !t.contains("v=v2beta1")
                })
            })
    }

    /// Whether the client asked for server-side printing (`as=Table`).
    fn wants_table(&self) -> bool {
        self.headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("as=Table"))
    }

    fn body_json(&self) -> ApiResult<Value> {
        let ct = self.content_type.split(';').next().unwrap_or("").trim();
        if ct.contains("protobuf") {
            return Err(ApiError::new(
                415,
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json (got {ct}; fakekube decodes no protobuf, so typed `kubectl create <kind>` subcommands are unsupported: use `kubectl create -f`)"
                ),
            ));
        }
        serde_json::from_slice(self.body).map_err(|e| {
            ApiError::new(
                400,
                format!(
                    "fakekube: the request body is not JSON ({e}); YAML bodies are not supported"
                ),
            )
        })
    }
}

fn route(ctx: &Ctx<'_>, segs: &[&str]) -> ApiResult<Response> {
    match segs {
        ["version"] => Ok(json_response(
            200,
            &json!({
                "major": "1", "minor": "32", "gitVersion": GIT_VERSION,
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean", "buildDate": "2024-12-11T00:00:00Z",
                "goVersion": "go1.23.4", "compiler": "gc", "platform": "linux/amd64",
            }),
        )),
        ["healthz" | "readyz" | "livez"] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] if ctx.wants_aggregated() => Ok(aggregated_response(true)),
        ["apis"] if ctx.wants_aggregated() => Ok(aggregated_response(false)),
        ["api"] => Ok(json_response(
            200,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": ctx.inner.addr.to_string()}
                ],
            }),
        )),
        ["api", "v1"] => Ok(json_response(200, &resource_list("", "v1"))),
        ["apis"] => Ok(json_response(200, &group_list())),
        ["apis", g] => group_list()["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|x| x["name"] == json!(g)).cloned())
            .map(|mut g| {
                g["kind"] = json!("APIGroup");
                g["apiVersion"] = json!("v1");
                json_response(200, &g)
            })
            .ok_or_else(not_found_path),
        ["apis", g, v] if RESOURCES.iter().any(|r| r.group == *g && r.version == *v) => {
            Ok(json_response(200, &resource_list(g, v)))
        }
        ["api", "v1", rest @ ..] => resource(ctx, "", "v1", rest),
        ["apis", g, v, rest @ ..] => resource(ctx, g, v, rest),
        _ => Err(not_found_path()),
    }
}

fn group_list() -> Value {
    let mut groups: Vec<Value> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if groups.iter().any(|g| g["name"] == json!(r.group)) {
            continue;
        }
        let gv = json!({"groupVersion": r.api_version(), "version": r.version});
        groups.push(json!({"name": r.group, "versions": [gv.clone()], "preferredVersion": gv}));
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(group: &str, version: &str) -> Value {
    let mut out = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        out.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            "shortNames": r.short_names,
            "categories": if matches!(r.kind, "Pod" | "Service" | "Deployment" | "ReplicaSet") {
                json!(["all"])
            } else {
                json!([])
            },
        }));
        for sub in r.subresources {
            let mut s = json!({
                "name": format!("{}/{}", r.plural, sub),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            });
            if *sub == "scale" {
                s["group"] = json!("autoscaling");
                s["version"] = json!("v1");
                s["kind"] = json!("Scale");
            } else if *sub == "finalize" {
                s["verbs"] = json!(["update"]);
            }
            out.push(s);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out})
}

/// Content type of aggregated discovery documents.
const AGGREGATED_CT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Aggregated discovery (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`) for
/// `/api` (`core`) or `/apis`.
fn aggregated_response(core: bool) -> Response {
    let verbs = json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ]);
    let mut groups: Vec<Value> = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group.is_empty() == core) {
        let gvk = |kind: &str| json!({"group": r.group, "version": r.version, "kind": kind});
        let subresources: Vec<Value> = r
            .subresources
            .iter()
            .map(|sub| match *sub {
                "scale" => json!({"subresource": sub,
                    "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                    "verbs": ["get", "patch", "update"]}),
                "finalize" => {
                    json!({"subresource": sub, "responseKind": gvk(r.kind), "verbs": ["update"]})
                }
                _ => json!({"subresource": sub, "responseKind": gvk(r.kind),
                    "verbs": ["get", "patch", "update"]}),
            })
            .collect();
        let mut res = json!({
            "resource": r.plural,
            "responseKind": gvk(r.kind),
            "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": r.singular,
            "verbs": verbs,
        });
        if !r.short_names.is_empty() {
            res["shortNames"] = json!(r.short_names);
        }
        if matches!(r.kind, "Pod" | "Service" | "Deployment" | "ReplicaSet") {
            res["categories"] = json!(["all"]);
        }
        if !subresources.is_empty() {
            res["subresources"] = json!(subresources);
        }
        match groups
            .iter_mut()
            .find(|g| g["metadata"]["name"] == json!(r.group))
        {
            Some(g) => {
                if let Some(list) = g["versions"][0]["resources"].as_array_mut() {
                    list.push(res);
                }
            }
            None => groups.push(json!({
                "metadata": {"name": r.group},
                "versions": [{"version": r.version, "resources": [res], "freshness": "Current"}],
            })),
        }
    }
    let body = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": groups,
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, AGGREGATED_CT)],
        body.to_string(),
    )
        .into_response()
}

/// What a resource URL addresses.
struct Target {
    res: usize,
    /// `None` for cluster-scoped objects and cross-namespace lists.
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(group: &str, version: &str, rest: &[&str]) -> ApiResult<Target> {
    let find = |plural: &str| find_resource(group, version, plural).ok_or_else(not_found_path);
    match rest {
        ["namespaces", ns, plural, tail @ ..]
            if !(tail.is_empty() && matches!(*plural, "status" | "finalize")) =>
        {
            let res = find(plural)?;
            if !RESOURCES[res].namespaced || tail.len() > 2 {
                return Err(not_found_path());
            }
            Ok(Target {
                res,
                ns: Some(ns.to_string()),
                name: tail.first().map(|s| s.to_string()),
                sub: tail.get(1).map(|s| s.to_string()),
            })
        }
        [plural, tail @ ..] => {
            let res = find(plural)?;
            if tail.len() > 2 || (RESOURCES[res].namespaced && !tail.is_empty()) {
                return Err(not_found_path());
            }
            Ok(Target {
                res,
                ns: None,
                name: tail.first().map(|s| s.to_string()),
                sub: tail.get(1).map(|s| s.to_string()),
            })
        }
        [] => Err(not_found_path()),
    }
}

fn resource(ctx: &Ctx<'_>, group: &str, version: &str, rest: &[&str]) -> ApiResult<Response> {
    let t = parse_target(group, version, rest)?;
    let rt = &RESOURCES[t.res];
    if let Some(sub) = &t.sub
        && !rt.subresources.contains(&sub.as_str())
    {
        return Err(not_found_path());
    }
    let ns = t.ns.clone().unwrap_or_default();
    let dry_run = !ctx.q("dryRun").is_empty();
    let mut store = lock(&ctx.inner.store);
    store.dry_run = dry_run;
    let result = dispatch(ctx, &mut store, &t, &ns);
    store.dry_run = false;
    ctx.inner.run_controller(&mut store);
    drop(store);
    match result? {
        Reply::Json(_, v) if ctx.wants_table() && *ctx.method == Method::GET && t.sub.is_none() => {
            Ok(json_response(
                200,
                &to_table(rt, &v, ctx.q("includeObject")),
            ))
        }
        Reply::Json(code, v) => Ok(json_response(code, &v)),
        Reply::Watch => watch_response(ctx, &t),
    }
}

/// What a dispatched request produced.
enum Reply {
    Json(u16, Value),
    Watch,
}

fn dispatch(ctx: &Ctx<'_>, store: &mut Store, t: &Target, ns: &str) -> ApiResult<Reply> {
    let rt = &RESOURCES[t.res];
    let sub = t.sub.as_deref();
    let method = ctx.method;
    let Some(name) = t.name.as_deref() else {
        return match *method {
            Method::GET if matches!(ctx.q("watch"), "true" | "1") => Ok(Reply::Watch),
            Method::GET => list(ctx, store, t).map(|v| Reply::Json(200, v)),
            Method::POST => {
                if rt.namespaced && t.ns.is_none() {
                    return Err(ApiError::new(405, "create requires a namespace"));
                }
                store
                    .create(t.res, ns, ctx.body_json()?)
                    .map(|v| Reply::Json(201, v))
            }
            Method::DELETE => {
                let items = list(ctx, store, t)?;
                let mut deleted = Vec::new();
                for item in items["items"].as_array().into_iter().flatten() {
                    let n = item["metadata"]["name"].as_str().unwrap_or("");
                    let ins = item["metadata"]["namespace"].as_str().unwrap_or("");
                    if let Ok(d) = store.delete(t.res, ins, n) {
                        deleted.push(d);
                    }
                }
                let mut l = items;
                l["items"] = json!(deleted);
                Ok(Reply::Json(200, l))
            }
            _ => Err(ApiError::new(405, format!("method {method} not allowed"))),
        };
    };
    if rt.namespaced && t.ns.is_none() {
        return Err(not_found_path());
    }
    match (method.clone(), sub) {
        (Method::GET, Some("scale")) => {
            let obj = store
                .get(t.res, ns, name)
                .ok_or_else(|| ApiError::not_found(rt, name))?;
            Ok(Reply::Json(200, scale_of(obj)))
        }
        (Method::GET, _) => store
            .get(t.res, ns, name)
            .cloned()
            .map(|v| Reply::Json(200, v))
            .ok_or_else(|| ApiError::not_found(rt, name)),
        (Method::PUT, Some("scale")) => {
            let body = ctx.body_json()?;
            set_scale(store, t.res, ns, name, &body).map(|v| Reply::Json(200, v))
        }
        (Method::PUT, _) => store
            .update(t.res, ns, name, ctx.body_json()?, sub)
            .map(|v| Reply::Json(200, v)),
        (Method::PATCH, _) => patch(ctx, store, t.res, ns, name, sub),
        (Method::DELETE, None) => store.delete(t.res, ns, name).map(|v| Reply::Json(200, v)),
        _ => Err(ApiError::new(405, format!("method {method} not allowed"))),
    }
}

fn list(ctx: &Ctx<'_>, store: &Store, t: &Target) -> ApiResult<Value> {
    let rt = &RESOURCES[t.res];
    let labels = LabelSelector::parse(ctx.q("labelSelector"))?;
    let fields = FieldSelector::parse(ctx.q("fieldSelector"))?;
    let items: Vec<Value> = store
        .list(t.res, t.ns.as_deref())
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .cloned()
        .collect();
    Ok(json!({
        "kind": format!("{}List", rt.kind),
        "apiVersion": rt.api_version(),
        "metadata": {"resourceVersion": store.resource_version().to_string()},
        "items": items,
    }))
}

/// The `autoscaling/v1` `Scale` view of a deployment or replicaset.
fn scale_of(obj: &Value) -> Value {
    let mut sel: Vec<String> = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    sel.sort();
    let m = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": sel.join(",")},
    })
}

fn set_scale(
    store: &mut Store,
    res: usize,
    ns: &str,
    name: &str,
    scale: &Value,
) -> ApiResult<Value> {
    let rt = &RESOURCES[res];
    let old = store
        .get(res, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    if let Some(rv) = scale["metadata"]["resourceVersion"].as_str()
        && !rv.is_empty()
        && Some(rv) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(ApiError::conflict(rt, name));
    }
    let Some(replicas) = scale["spec"]["replicas"].as_i64().filter(|r| *r >= 0) else {
        return Err(ApiError::invalid(
            rt,
            name,
            "spec.replicas: Invalid value: must be greater than or equal to 0",
        ));
    };
    let mut new = old.clone();
    new["spec"]["replicas"] = json!(replicas);
    let written = store.write(res, ns, name, &old, new);
    Ok(scale_of(&written))
}

fn patch(
    ctx: &Ctx<'_>,
    store: &mut Store,
    res: usize,
    ns: &str,
    name: &str,
    sub: Option<&str>,
) -> ApiResult<Reply> {
    let rt = &RESOURCES[res];
    let ct = ctx.content_type.split(';').next().unwrap_or("").trim();
    let patch = ctx.body_json()?;
    let apply = ct == "application/apply-patch+yaml";
    let manager = ctx.q("fieldManager");
    if apply && manager.is_empty() {
        return Err(ApiError::new(
            422,
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    let applied_fields = fields_v1(&patch);
    let managed = |obj: &mut Value| {
        let entry = json!({
            "manager": manager, "operation": "Apply", "apiVersion": rt.api_version(),
            "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": applied_fields,
        });
        let mut list: Vec<Value> = obj["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        list.retain(|e| !(e["manager"] == json!(manager) && e["operation"] == json!("Apply")));
        list.push(entry);
        obj["metadata"]["managedFields"] = json!(list);
    };
    let Some(old) = store.get(res, ns, name).cloned() else {
        if apply && sub.is_none() {
            let mut obj = patch;
            if obj["metadata"]["name"].as_str().is_some_and(|n| n != name) {
                return Err(ApiError::new(
                    400,
                    "the name in the body does not match the URL",
                ));
            }
            obj["metadata"]["name"] = json!(name);
            managed(&mut obj);
            return store.create(res, ns, obj).map(|v| Reply::Json(201, v));
        }
        return Err(ApiError::not_found(rt, name));
    };
    if sub == Some("scale") {
        let mut scale = scale_of(&old);
        match ct {
            "application/json-patch+json" => json_patch(&mut scale, &patch)?,
            "application/merge-patch+json" => merge_patch(&mut scale, &patch),
            _ => strategic_merge(&mut scale, &patch),
        }
        return set_scale(store, res, ns, name, &scale).map(|v| Reply::Json(200, v));
    }
    let mut new = old.clone();
    match ct {
        "application/merge-patch+json" => merge_patch(&mut new, &patch),
        "application/json-patch+json" => json_patch(&mut new, &patch)?,
        "application/strategic-merge-patch+json" => strategic_merge(&mut new, &patch),
        "application/apply-patch+yaml" => {
            let previous = old["metadata"]["managedFields"]
                .as_array()
                .and_then(|l| {
                    l.iter().find(|e| {
                        e["manager"] == json!(manager) && e["operation"] == json!("Apply")
                    })
                })
                .map(|e| e["fieldsV1"].clone())
                .unwrap_or(json!({}));
            remove_dropped_fields(&mut new, &previous, &applied_fields);
            strategic_merge(&mut new, &patch);
            managed(&mut new);
        }
        other => {
            return Err(ApiError::new(
                415,
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
                ),
            ));
        }
    }
    store
        .update(res, ns, name, new, sub)
        .map(|v| Reply::Json(200, v))
}

// ---------------------------------------------------------------- watch

/// Which events a watch delivers.
struct WatchFilter {
    res: usize,
    /// Render objects as one-row Tables (`kubectl get -w`), with this `includeObject`.
    table: Option<String>,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, res: usize, ns: &str, obj: &Value) -> bool {
        res == self.res
            && self.ns.as_deref().is_none_or(|n| n == ns)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }
}

fn event_line(kind: &str, obj: &Value, table: Option<&str>) -> Bytes {
    let obj = match (table, kind) {
        (Some(include), "ADDED" | "MODIFIED" | "DELETED") => {
            let res = obj["apiVersion"]
                .as_str()
                .zip(obj["kind"].as_str())
                .and_then(|(a, k)| find_kind(a, k));
            match res {
                Some(r) => to_table(&RESOURCES[r], obj, include),
                None => obj.clone(),
            }
        }
        _ => obj.clone(),
    };
    let mut s = json!({"type": kind, "object": obj}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// State of one watch stream.
struct WatchState {
    inner: Arc<Inner>,
    rx: broadcast::Receiver<Arc<Event>>,
    shutdown: watch::Receiver<bool>,
    pending: VecDeque<Bytes>,
    last_rv: u64,
    filter: WatchFilter,
    deadline: tokio::time::Instant,
    done: bool,
}

impl WatchState {
    fn push(&mut self, ev: &Event) {
        if ev.rv > self.last_rv {
            self.last_rv = ev.rv;
            if self.filter.matches(ev.res, &ev.ns, &ev.obj) {
                let line = event_line(ev.kind, &ev.obj, self.filter.table.as_deref());
                self.pending.push_back(line);
            }
        }
    }
}

fn watch_response(ctx: &Ctx<'_>, t: &Target) -> ApiResult<Response> {
    let rt: &ResType = &RESOURCES[t.res];
    let filter = WatchFilter {
        res: t.res,
        table: ctx
            .wants_table()
            .then(|| ctx.q("includeObject").to_string()),
        ns: t.ns.clone(),
        labels: LabelSelector::parse(ctx.q("labelSelector"))?,
        fields: FieldSelector::parse(ctx.q("fieldSelector"))?,
    };
    let timeout = ctx.q("timeoutSeconds").parse::<u64>().unwrap_or(1800);
    let send_initial = ctx.q("sendInitialEvents") == "true";
    let bookmarks = ctx.q("allowWatchBookmarks") == "true";
    let rv_param = ctx.q("resourceVersion");
    let from_rv = if rv_param.is_empty() || rv_param == "0" {
        None
    } else {
        Some(
            rv_param
                .parse::<u64>()
                .map_err(|_| ApiError::new(400, format!("invalid resourceVersion {rv_param:?}")))?,
        )
    };
    let store = lock(&ctx.inner.store);
    let mut st = WatchState {
        inner: ctx.inner.clone(),
        rx: store.subscribe(),
        shutdown: ctx.inner.shutdown.clone(),
        pending: VecDeque::new(),
        last_rv: store.resource_version(),
        filter,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        done: false,
    };
    if send_initial || from_rv.is_none() {
        for obj in store.list(t.res, t.ns.as_deref()) {
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
            if st.filter.matches(t.res, ns, obj) {
                let line = event_line("ADDED", obj, st.filter.table.as_deref());
                st.pending.push_back(line);
            }
        }
        if send_initial && bookmarks {
            let bm = json!({
                "kind": rt.kind, "apiVersion": rt.api_version(),
                "metadata": {
                    "resourceVersion": store.resource_version().to_string(),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                },
            });
            st.pending.push_back(event_line("BOOKMARK", &bm, None));
        }
    } else if let Some(rv) = from_rv {
        match store.events_after(rv) {
            Some(evs) => {
                st.last_rv = rv;
                for ev in evs {
                    st.push(&ev);
                }
                st.last_rv = store.resource_version();
            }
            None => {
                let e = ApiError::new(
                    410,
                    format!(
                        "too old resource version: {rv} ({})",
                        store.resource_version()
                    ),
                )
                .with_reason("Expired");
                st.pending
                    .push_back(event_line("ERROR", &e.to_status(), None));
                st.done = true;
            }
        }
    }
    drop(store);
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(b) = st.pending.pop_front() {
                return Some((Ok::<Bytes, Infallible>(b), st));
            }
            if st.done || *st.shutdown.borrow() {
                return None;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(st.deadline) => return None,
                r = st.shutdown.changed() => if r.is_err() { return None },
                r = st.rx.recv() => match r {
                    Ok(ev) => st.push(&ev),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let evs = lock(&st.inner.store).events_after(st.last_rv);
                        match evs {
                            Some(evs) => evs.iter().for_each(|ev| st.push(ev)),
                            None => st.done = true,
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

// ---------------------------------------------------------------- server-side printing

/// Go's `duration.HumanDuration`, as used in the AGE column.
fn human_duration(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    if secs < 0 {
        "0s".to_string()
    } else if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", secs % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 730 {
        format!("{d}d")
    } else {
        format!("{}y{}d", d / 365, d % 365)
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// Kind-specific columns (after NAME, before AGE) and their cells.
fn table_columns(kind: &str, o: &Value) -> Vec<(&'static str, &'static str, Value)> {
    let count = |v: &Value| v.as_object().map_or(0, |m| m.len());
    match kind {
        "Namespace" => vec![("Status", "string", o["status"]["phase"].clone())],
        "Secret" => vec![
            ("Type", "string", o["type"].clone()),
            ("Data", "string", json!(count(&o["data"]))),
        ],
        "ConfigMap" => vec![(
            "Data",
            "string",
            json!(count(&o["data"]) + count(&o["binaryData"])),
        )],
        "Deployment" => vec![
            (
                "Ready",
                "string",
                json!(format!(
                    "{}/{}",
                    int(&o["status"]["readyReplicas"]),
                    o["spec"]["replicas"].as_i64().unwrap_or(1)
                )),
            ),
            (
                "Up-to-date",
                "integer",
                json!(int(&o["status"]["updatedReplicas"])),
            ),
            (
                "Available",
                "integer",
                json!(int(&o["status"]["availableReplicas"])),
            ),
        ],
        "ReplicaSet" => vec![
            ("Desired", "integer", json!(int(&o["spec"]["replicas"]))),
            ("Current", "integer", json!(int(&o["status"]["replicas"]))),
            (
                "Ready",
                "integer",
                json!(int(&o["status"]["readyReplicas"])),
            ),
        ],
        "Service" => vec![
            (
                "Type",
                "string",
                json!(o["spec"]["type"].as_str().unwrap_or("ClusterIP")),
            ),
            (
                "Cluster-IP",
                "string",
                json!(o["spec"]["clusterIP"].as_str().unwrap_or("<none>")),
            ),
        ],
        "Pod" => vec![(
            "Status",
            "string",
            json!(o["status"]["phase"].as_str().unwrap_or("Pending")),
        )],
        "Lease" => vec![(
            "Holder",
            "string",
            json!(o["spec"]["holderIdentity"].as_str().unwrap_or("")),
        )],
        _ => vec![],
    }
}

/// A `meta.k8s.io/v1` `Table` for an object or a list (server-side printing for `kubectl get`).
fn to_table(rt: &ResType, v: &Value, include_object: &str) -> Value {
    let items: Vec<&Value> = match v["items"].as_array() {
        Some(items) => items.iter().collect(),
        None => vec![v],
    };
    let now = parse_rfc3339(&now_rfc3339()).unwrap_or(0);
    let mut columns = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace.", "priority": 0})];
    for (name, ty, _) in table_columns(rt.kind, &json!({})) {
        columns.push(
            json!({"name": name, "type": ty, "format": "", "description": name, "priority": 0}),
        );
    }
    columns.push(json!({"name": "Age", "type": "string", "format": "",
        "description": "CreationTimestamp is a timestamp representing the server time when this object was created.",
        "priority": 0}));
    let rows: Vec<Value> = items
        .into_iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            cells.extend(table_columns(rt.kind, o).into_iter().map(|(_, _, c)| c));
            let created = o["metadata"]["creationTimestamp"]
                .as_str()
                .and_then(parse_rfc3339)
                .unwrap_or(now);
            cells.push(json!(human_duration(now - created)));
            let object = match include_object {
                "Object" => o.clone(),
                "None" => Value::Null,
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"]}),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": v["metadata"]["resourceVersion"]
            .as_str().map(str::to_string).unwrap_or_default()},
        "columnDefinitions": columns,
        "rows": rows,
    })
}
