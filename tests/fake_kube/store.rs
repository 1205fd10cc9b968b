//! The in-memory object store of the fake API server: the resource table,
//! create/update/delete with Kubernetes metadata semantics, the watch event
//! history, patch algorithms (merge, JSON, strategic, apply) and selectors.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

/// One kind of resource the server knows about.
#[derive(Debug)]
pub(crate) struct ResType {
    /// API group ("" for the core group).
    pub group: &'static str,
    /// API version inside the group.
    pub version: &'static str,
    /// Plural resource name as used in URLs.
    pub plural: &'static str,
    /// Singular resource name.
    pub singular: &'static str,
    /// Object kind.
    pub kind: &'static str,
    /// Whether objects live inside a namespace.
    pub namespaced: bool,
    /// Short names advertised in discovery.
    pub short_names: &'static [&'static str],
    /// Subresources advertised in discovery.
    pub subresources: &'static [&'static str],
}

impl ResType {
    /// `apiVersion` of objects of this type.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` as used in error messages (`deployments.apps`).
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether the main resource ignores status writes (status subresource).
    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }

    /// Whether `metadata.generation` is maintained.
    pub fn has_generation(&self) -> bool {
        matches!(self.kind, "Deployment" | "ReplicaSet")
    }
}

/// Every resource type served.
pub(crate) const RESOURCES: &[ResType] = &[
    ResType {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        subresources: &["status", "finalize"],
    },
    ResType {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        subresources: &[],
    },
    ResType {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        subresources: &[],
    },
    ResType {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        subresources: &["status"],
    },
    ResType {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        subresources: &["status"],
    },
    ResType {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        subresources: &[],
    },
    ResType {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        short_names: &["deploy"],
        subresources: &["scale", "status"],
    },
    ResType {
        group: "apps",
        version: "v1",
        plural: "replicasets",
        singular: "replicaset",
        kind: "ReplicaSet",
        namespaced: true,
        short_names: &["rs"],
        subresources: &["scale", "status"],
    },
    ResType {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        subresources: &[],
    },
    ResType {
        group: "networking.k8s.io",
        version: "v1",
        plural: "networkpolicies",
        singular: "networkpolicy",
        kind: "NetworkPolicy",
        namespaced: true,
        short_names: &["netpol"],
        subresources: &[],
    },
];

/// Index of the namespaces resource in [`RESOURCES`].
pub(crate) const NAMESPACES: usize = 0;
/// Index of the deployments resource in [`RESOURCES`].
pub(crate) const DEPLOYMENTS: usize = 6;
/// Index of the replicasets resource in [`RESOURCES`].
pub(crate) const REPLICASETS: usize = 7;

/// Finds a resource by group, version and plural name.
pub(crate) fn find_resource(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a resource by `apiVersion` and `kind`.
pub(crate) fn find_kind(api_version: &str, kind: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.api_version() == api_version && r.kind == kind)
}

/// An API error, rendered as a Kubernetes `Status` object.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `Conflict`, ...).
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// `details` of the Status (name, group, kind), if any.
    pub details: Option<Value>,
}

impl ApiError {
    /// An error with the standard reason for `code`.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason_for(code).to_string(),
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, res: &ResType, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": res.group, "kind": res.plural}));
        self
    }

    /// `NotFound` for an object.
    pub fn not_found(res: &ResType, name: &str) -> Self {
        ApiError::new(
            404,
            format!("{} \"{}\" not found", res.group_resource(), name),
        )
        .with_details(res, name)
    }

    /// `AlreadyExists` for an object.
    pub fn already_exists(res: &ResType, name: &str) -> Self {
        ApiError::new(
            409,
            format!("{} \"{}\" already exists", res.group_resource(), name),
        )
        .with_reason("AlreadyExists")
        .with_details(res, name)
    }

    /// Optimistic-concurrency `Conflict` for an object.
    pub fn conflict(res: &ResType, name: &str) -> Self {
        ApiError::new(
            409,
            format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                res.group_resource(),
                name
            ),
        )
        .with_details(res, name)
    }

    /// `Invalid` (422) for an object.
    pub fn invalid(res: &ResType, name: &str, why: &str) -> Self {
        ApiError::new(
            422,
            format!(
                "{}.{} \"{}\" is invalid: {}",
                res.kind, res.group, name, why
            )
            .replace(". \"", " \""),
        )
        .with_details(res, name)
    }

    /// Replaces the reason.
    pub fn with_reason(mut self, reason: &str) -> Self {
        self.reason = reason.to_string();
        self
    }

    /// The `Status` body.
    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

/// The standard `reason` for an HTTP status code.
pub(crate) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

/// Result of store operations.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// A watch event as recorded in the history.
#[derive(Debug)]
pub(crate) struct Event {
    /// Resource version at which this happened.
    pub rv: u64,
    /// Resource index.
    pub res: usize,
    /// Namespace ("" for cluster-scoped).
    pub ns: String,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object after the change (last state for deletions).
    pub obj: Value,
}

/// Max events kept for watches starting at an old resourceVersion.
const HISTORY_CAP: usize = 50_000;

type Key = (usize, String, String);

/// The object store.
pub(crate) struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    tx: broadcast::Sender<Arc<Event>>,
    /// Deployments written since the controller last ran.
    pub dirty_deployments: Vec<(String, String)>,
    /// When set, writes are computed but not committed.
    pub dry_run: bool,
    seq: u64,
}

impl Store {
    /// An empty store with the default namespaces.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        let mut s = Store {
            objects: BTreeMap::new(),
            rv: 100,
            history: VecDeque::new(),
            tx,
            dirty_deployments: Vec::new(),
            dry_run: false,
            seq: 0,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            s.ensure_namespace(ns);
        }
        s
    }

    /// Current (latest) resource version.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Subscribes to live events.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Events with rv > `after`, or `None` if the history no longer reaches back that far.
    pub fn events_after(&self, after: u64) -> Option<Vec<Arc<Event>>> {
        if let Some(first) = self.history.front()
            && first.rv > after + 1
            && self.history.len() >= HISTORY_CAP
        {
            return None;
        }
        Some(
            self.history
                .iter()
                .filter(|e| e.rv > after)
                .cloned()
                .collect(),
        )
    }

    /// Creates the namespace if missing.
    pub fn ensure_namespace(&mut self, ns: &str) {
        if self.get(NAMESPACES, "", ns).is_none() {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            // Cannot fail: the namespace does not exist.
            let _ = self.create(NAMESPACES, "", obj);
        }
    }

    /// One object.
    pub fn get(&self, res: usize, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(res, ns.to_string(), name.to_string()))
    }

    /// All objects of a resource, in one namespace or (`None`) all.
    pub fn list(&self, res: usize, ns: Option<&str>) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|((r, n, _), _)| *r == res && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v)
            .collect()
    }

    fn next_uid(&mut self) -> String {
        self.seq += 1;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let a = splitmix(nanos ^ self.seq.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let b = splitmix(a ^ self.seq);
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a as u16) & 0x0fff,
            ((b >> 48) as u16 & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    fn random_suffix(&mut self) -> String {
        const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut x = splitmix(self.seq.wrapping_add(self.rv) ^ now_nanos());
        self.seq += 1;
        (0..5)
            .map(|_| {
                let c = ALPHA[(x % ALPHA.len() as u64) as usize] as char;
                x /= ALPHA.len() as u64;
                c
            })
            .collect()
    }

    /// Stores `obj` under a fresh resourceVersion and emits an event.
    fn commit(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        mut obj: Value,
        kind: &'static str,
    ) -> Value {
        if self.dry_run {
            return obj;
        }
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let key = (res, ns.to_string(), name.to_string());
        if kind == "DELETED" {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key, obj.clone());
        }
        if res == DEPLOYMENTS {
            let k = (ns.to_string(), name.to_string());
            if !self.dirty_deployments.contains(&k) {
                self.dirty_deployments.push(k);
            }
        }
        let ev = Arc::new(Event {
            rv: self.rv,
            res,
            ns: ns.to_string(),
            kind,
            obj: obj.clone(),
        });
        self.history.push_back(ev.clone());
        if self.history.len() > HISTORY_CAP {
            self.history.pop_front();
        }
        let _ = self.tx.send(ev);
        obj
    }

    /// Creates an object (POST semantics).
    pub fn create(&mut self, res: usize, ns: &str, mut obj: Value) -> ApiResult<Value> {
        let rt = &RESOURCES[res];
        if !obj.is_object() {
            return Err(ApiError::new(400, "the body must be a JSON object"));
        }
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let mut name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if name.is_empty() {
            if let Some(g) = obj["metadata"]["generateName"].as_str() {
                name = format!("{g}{}", self.random_suffix());
                obj["metadata"]["name"] = json!(name);
            } else {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        }
        if rt.namespaced {
            if let Some(body_ns) = obj["metadata"]["namespace"].as_str()
                && !body_ns.is_empty()
                && body_ns != ns
            {
                return Err(ApiError::new(
                    400,
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            if self.get(NAMESPACES, "", ns).is_none() {
                return Err(ApiError::not_found(&RESOURCES[NAMESPACES], ns));
            }
            obj["metadata"]["namespace"] = json!(ns);
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        if self.get(res, ns, &name).is_some() {
            return Err(ApiError::already_exists(rt, &name));
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        let uid = self.next_uid();
        let meta = obj["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.remove("resourceVersion");
        meta.remove("deletionTimestamp");
        if rt.has_generation() {
            meta.insert("generation".into(), json!(1));
        }
        normalize_kind(rt, &mut obj);
        if rt.kind == "Namespace" {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        } else if rt.has_status() && !obj.get("status").is_some_and(Value::is_object) {
            obj["status"] = json!({});
        }
        Ok(self.commit(res, ns, &name, obj, "ADDED"))
    }

    /// Replaces an object (PUT semantics), or its `status` subresource.
    pub fn update(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        obj: Value,
        subresource: Option<&str>,
    ) -> ApiResult<Value> {
        let rt = &RESOURCES[res];
        let Some(old) = self.get(res, ns, name).cloned() else {
            return Err(ApiError::not_found(rt, name));
        };
        if !obj.is_object() {
            return Err(ApiError::new(400, "the body must be a JSON object"));
        }
        if let Some(n) = obj["metadata"]["name"].as_str()
            && n != name
        {
            return Err(ApiError::new(
                400,
                format!("the name of the object ({n}) does not match the name on the URL ({name})"),
            ));
        }
        if let Some(rv) = obj["metadata"]["resourceVersion"].as_str()
            && !rv.is_empty()
            && Some(rv) != old["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(rt, name));
        }
        let mut new = if subresource == Some("status") {
            let mut n = old.clone();
            n["status"] = obj.get("status").cloned().unwrap_or(json!({}));
            n
        } else {
            let mut n = obj;
            if rt.has_status() {
                match old.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(m) = n.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            n
        };
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        for k in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
            "generation",
        ] {
            match old["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        if subresource != Some("status")
            && old["metadata"].get("managedFields").is_some()
            && new["metadata"].get("managedFields").is_none()
        {
            new["metadata"]["managedFields"] = old["metadata"]["managedFields"].clone();
        }
        normalize_kind(rt, &mut new);
        Ok(self.write(res, ns, name, &old, new))
    }

    /// Commits `new` replacing `old` if anything changed, bumping the generation on spec changes.
    pub fn write(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        old: &Value,
        mut new: Value,
    ) -> Value {
        let rt = &RESOURCES[res];
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if rt.has_generation() && old.get("spec") != new.get("spec") {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = json!(g);
        }
        if &new == old {
            return new;
        }
        self.commit(res, ns, name, new, "MODIFIED")
    }

    /// Deletes an object, cascading to owned objects (and namespace contents).
    pub fn delete(&mut self, res: usize, ns: &str, name: &str) -> ApiResult<Value> {
        let rt = &RESOURCES[res];
        let Some(old) = self.get(res, ns, name).cloned() else {
            return Err(ApiError::not_found(rt, name));
        };
        if self.dry_run {
            return Ok(old);
        }
        let uid = old["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let deleted = self.commit(res, ns, name, old, "DELETED");
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|((_, n, _), v)| {
                (res == NAMESPACES && n == name)
                    || v["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (r, n, nm) in dependents {
            let _ = self.delete(r, &n, &nm);
        }
        Ok(deleted)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Kind-specific normalisation done by the real API server (Secret `stringData`).
fn normalize_kind(rt: &ResType, obj: &mut Value) {
    if rt.kind == "Secret" {
        if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
            if !obj["data"].is_object() {
                obj["data"] = json!({});
            }
            for (k, v) in sd {
                obj["data"][&k] = json!(base64(v.as_str().unwrap_or("").as_bytes()));
            }
        }
        if obj.get("type").is_none() {
            obj["type"] = json!("Opaque");
        }
    }
    if rt.kind == "Deployment" && obj["spec"].is_object() {
        // The API server's defaulting for apps/v1 Deployment (spec level only).
        let spec = &mut obj["spec"];
        for (k, v) in [
            ("replicas", json!(1)),
            ("revisionHistoryLimit", json!(10)),
            ("progressDeadlineSeconds", json!(600)),
            (
                "strategy",
                json!({"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            ),
        ] {
            if spec.get(k).is_none_or(Value::is_null) {
                spec[k] = v;
            }
        }
    }
}

/// Standard base64 with padding.
pub(crate) fn base64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Current time as RFC 3339 (UTC, seconds).
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (fractions and offsets ignored) to Unix seconds.
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok());
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

// ---------------------------------------------------------------- patches

/// RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The merge key of a list field for strategic merge patch, if it has one.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let first = items.iter().find(|v| v.is_object())?;
    let key = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "ports" if first.get("containerPort").is_some() => "containerPort",
        "ports" => "port",
        _ => return None,
    };
    Some(key)
}

/// The `fieldsV1` set (`{"f:data":{"f:k":{}}}`) owned by an applied configuration.
/// `apiVersion`, `kind`, `metadata.name` and `metadata.namespace` are not tracked.
pub(crate) fn fields_v1(applied: &Value) -> Value {
    let mut out = fields_of(applied, "");
    if let Some(m) = out.as_object_mut() {
        m.remove("f:apiVersion");
        m.remove("f:kind");
        m.remove("f:status");
        if let Some(Value::Object(meta)) = m.get_mut("f:metadata") {
            for k in [
                "f:name",
                "f:namespace",
                "f:resourceVersion",
                "f:managedFields",
            ] {
                meta.remove(k);
            }
            if meta.is_empty() {
                m.remove("f:metadata");
            }
        }
    }
    out
}

fn fields_of(v: &Value, field: &str) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (format!("f:{k}"), fields_of(v, k)))
                .collect(),
        ),
        Value::Array(items) => match merge_key(field, items) {
            Some(key) => Value::Object(
                items
                    .iter()
                    .filter_map(|it| {
                        let id = it.get(key)?;
                        let mut sub = fields_of(it, "");
                        sub["."] = json!({});
                        Some((format!("k:{}", json!({ key: id })), sub))
                    })
                    .collect(),
            ),
            None => json!({}),
        },
        _ => json!({}),
    }
}

/// Removes from `obj` the fields listed in the `old` fieldsV1 set but not in `new`
/// (server-side apply: a manager dropping a field from its configuration deletes it).
pub(crate) fn remove_dropped_fields(obj: &mut Value, old: &Value, new: &Value) {
    let Some(old_m) = old.as_object() else {
        return;
    };
    for (k, sub_old) in old_m {
        let sub_new = new.get(k);
        if let Some(f) = k.strip_prefix("f:") {
            match sub_new {
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove(f);
                    }
                }
                Some(sn) => {
                    if let Some(child) = obj.get_mut(f) {
                        remove_dropped_fields(child, sub_old, sn);
                    }
                }
            }
        } else if let Some(key_json) = k.strip_prefix("k:") {
            let Ok(Value::Object(key)) = serde_json::from_str::<Value>(key_json) else {
                continue;
            };
            let Some(list) = obj.as_array_mut() else {
                continue;
            };
            let matches = |it: &Value| key.iter().all(|(kk, vv)| it.get(kk) == Some(vv));
            match sub_new {
                None => list.retain(|it| !matches(it)),
                Some(sn) => {
                    if let Some(it) = list.iter_mut().find(|it| matches(it)) {
                        remove_dropped_fields(it, sub_old, sn);
                    }
                }
            }
        }
    }
}

/// Removes strategic-merge directives (`$patch`, `$setElementOrder/...`, ...) from a value.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Strategic merge patch: a merge patch whose known lists (containers, env, ...) merge by key.
pub(crate) fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (t.get_mut(field), v) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(_) => {
                if v.get("$patch").and_then(Value::as_str) == Some("delete") {
                    t.remove(k);
                } else {
                    strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            Value::Array(items) => match merge_key(k, items) {
                Some(key) => {
                    let entry = t.entry(k.clone()).or_insert(json!([]));
                    if !entry.is_array() {
                        *entry = json!([]);
                    }
                    let list = entry.as_array_mut().expect("array");
                    for item in items {
                        if item.get("$patch").and_then(Value::as_str) == Some("replace")
                            && item.get(key).is_none()
                        {
                            list.clear();
                            continue;
                        }
                        let id = item.get(key);
                        let pos = list.iter().position(|e| e.get(key) == id && id.is_some());
                        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        match (pos, delete) {
                            (Some(i), true) => {
                                list.remove(i);
                            }
                            (None, true) => {}
                            (Some(i), false) => strategic_merge(&mut list[i], item),
                            (None, false) => list.push(strip_directives(item)),
                        }
                    }
                }
                None => {
                    t.insert(k.clone(), strip_directives(v));
                }
            },
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
}

fn pointer_tokens(path: &str) -> ApiResult<Vec<String>> {
    if path.is_empty() {
        return Ok(vec![]);
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(ApiError::new(422, format!("invalid JSON pointer {path:?}")));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn pointer_parent<'a>(doc: &'a mut Value, tokens: &[String]) -> ApiResult<&'a mut Value> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| ApiError::new(422, format!("jsonpatch: path component {t:?} not found")))?;
    }
    Ok(cur)
}

fn json_add(doc: &mut Value, path: &str, value: Value, replace: bool) -> ApiResult<()> {
    let tokens = pointer_tokens(path)?;
    let Some((last, parent)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match pointer_parent(doc, parent)? {
        Value::Object(m) => {
            if replace && !m.contains_key(last) {
                return Err(ApiError::new(
                    422,
                    format!(
                        "jsonpatch replace operation does not apply: doc is missing key: {path}"
                    ),
                ));
            }
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(value);
            } else {
                let i: usize = last
                    .parse()
                    .map_err(|_| ApiError::new(422, format!("jsonpatch: bad index {last:?}")))?;
                if replace {
                    *a.get_mut(i)
                        .ok_or_else(|| ApiError::new(422, "jsonpatch: index out of range"))? =
                        value;
                } else if i <= a.len() {
                    a.insert(i, value);
                } else {
                    return Err(ApiError::new(422, "jsonpatch: index out of range"));
                }
            }
        }
        _ => {
            return Err(ApiError::new(
                422,
                format!("jsonpatch: cannot add at {path}"),
            ));
        }
    }
    Ok(())
}

fn json_remove(doc: &mut Value, path: &str) -> ApiResult<Value> {
    let tokens = pointer_tokens(path)?;
    let Some((last, parent)) = tokens.split_last() else {
        return Err(ApiError::new(422, "jsonpatch: cannot remove the root"));
    };
    let removed = match pointer_parent(doc, parent)? {
        Value::Object(m) => m.remove(last),
        Value::Array(a) => last
            .parse::<usize>()
            .ok()
            .filter(|i| *i < a.len())
            .map(|i| a.remove(i)),
        _ => None,
    };
    removed.ok_or_else(|| {
        ApiError::new(
            422,
            format!("jsonpatch remove operation does not apply: doc is missing path: {path}"),
        )
    })
}

/// RFC 6902 JSON patch.
pub(crate) fn json_patch(doc: &mut Value, patch: &Value) -> ApiResult<()> {
    let Some(ops) = patch.as_array() else {
        return Err(ApiError::new(
            400,
            "a JSON patch must be an array of operations",
        ));
    };
    for op in ops {
        let path = op["path"].as_str().unwrap_or("");
        match op["op"].as_str().unwrap_or("") {
            "add" => json_add(doc, path, op["value"].clone(), false)?,
            "replace" => json_add(doc, path, op["value"].clone(), true)?,
            "remove" => {
                json_remove(doc, path)?;
            }
            "move" => {
                let v = json_remove(doc, op["from"].as_str().unwrap_or(""))?;
                json_add(doc, path, v, false)?;
            }
            "copy" => {
                let v = doc
                    .pointer(op["from"].as_str().unwrap_or(""))
                    .cloned()
                    .ok_or_else(|| ApiError::new(422, "jsonpatch: copy from missing path"))?;
                json_add(doc, path, v, false)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&op["value"]) {
                    return Err(ApiError::new(
                        422,
                        format!("testing value {path} failed: test failed"),
                    ));
                }
            }
            other => {
                return Err(ApiError::new(
                    422,
                    format!("unexpected JSON patch op {other:?}"),
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- selectors

/// One requirement of a label selector.
#[derive(Debug, Clone)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (`a=b,c!=d,e in (x,y),!f`).
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelSelector(Vec<Req>);

impl LabelSelector {
    /// Parses a selector string.
    pub fn parse(s: &str) -> ApiResult<Self> {
        let mut terms = Vec::new();
        let mut depth = 0;
        let mut cur = String::new();
        for c in s.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    terms.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        terms.push(cur);
        let mut reqs = Vec::new();
        for t in terms.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            let set = |rest: &str| -> Vec<String> {
                rest.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(|x| x.trim().to_string())
                    .collect()
            };
            let req = if let Some((k, v)) = t.split_once("!=") {
                Req::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==") {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once('=') {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = t.split_once(" notin ") {
                Req::NotIn(k.trim().into(), set(rest))
            } else if let Some((k, rest)) = t.split_once(" in ") {
                Req::In(k.trim().into(), set(rest))
            } else if let Some(k) = t.strip_prefix('!') {
                Req::NotExists(k.trim().into())
            } else if t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                Req::Exists(t.into())
            } else {
                return Err(ApiError::new(
                    400,
                    format!("unable to parse requirement: {t:?}"),
                ));
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether `obj`'s labels match.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v),
            Req::NotEq(k, v) => get(k) != Some(v),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed field selector (`metadata.name=x,status.phase!=Running`).
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses a selector string.
    pub fn parse(s: &str) -> ApiResult<Self> {
        let mut out = Vec::new();
        for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (k, eq, v) = if let Some((k, v)) = t.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = t.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = t.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::new(400, format!("invalid field selector: {t:?}")));
            };
            out.push((k.trim().to_string(), eq, v.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    /// Whether `obj` matches.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| {
            let mut cur = obj;
            for p in path.split('.') {
                cur = &cur[p];
            }
            let have = match cur {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

// ---------------------------------------------------------------- canonical form

/// Drops nulls, empty objects and empty arrays (Go's zero values), recursively.
pub(crate) fn prune(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) => {
            let out: Map<String, Value> = m
                .iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k.clone(), v)))
                .collect();
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(a) => {
            let out: Vec<Value> = a.iter().map(|v| prune(v).unwrap_or(json!({}))).collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => Some(other.clone()),
    }
}

/// Serialises with sorted keys, independent of serde_json's map ordering.
pub(crate) fn canonical_string(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", json!(k), canonical_string(&m[k])))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical_string).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_indices() {
        assert_eq!(RESOURCES[NAMESPACES].plural, "namespaces");
        assert_eq!(RESOURCES[DEPLOYMENTS].plural, "deployments");
        assert_eq!(RESOURCES[REPLICASETS].plural, "replicasets");
    }

    #[test]
    fn base64_matches_reference() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"hunter2"), "aHVudGVyMg==");
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut t = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}});
        strategic_merge(
            &mut t,
            &json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "b", "image": "b:2"}]}}),
        );
        assert_eq!(t["spec"]["containers"][0]["image"], "a:1");
        assert_eq!(t["spec"]["containers"][1]["image"], "b:2");
    }

    #[test]
    fn apply_drops_fields_no_longer_applied() {
        let v1 = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"a": "1"}},
            "data": {"x": "1", "y": "2"}});
        let v2 = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c"}, "data": {"x": "1"}});
        let f1 = fields_v1(&v1);
        assert_eq!(
            f1,
            json!({"f:data": {"f:x": {}, "f:y": {}}, "f:metadata": {"f:labels": {"f:a": {}}}})
        );
        let mut obj = v1.clone();
        obj["data"]["other"] = json!("kept");
        remove_dropped_fields(&mut obj, &f1, &fields_v1(&v2));
        assert_eq!(obj["data"], json!({"x": "1", "other": "kept"}));
        assert!(obj["metadata"].get("labels").is_none());

        let d1 = json!({"spec": {"containers": [{"name": "a", "image": "i"}, {"name": "b"}]}});
        let d2 = json!({"spec": {"containers": [{"name": "a"}]}});
        let mut obj = d1.clone();
        remove_dropped_fields(&mut obj, &fields_v1(&d1), &fields_v1(&d2));
        assert_eq!(obj, json!({"spec": {"containers": [{"name": "a"}]}}));
    }

    #[test]
    fn json_patch_ops() {
        let mut d = json!({"a": {"b": [1, 2]}, "c": 1});
        json_patch(
            &mut d,
            &json!([
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "replace", "path": "/c", "value": 2},
                {"op": "remove", "path": "/a/b/0"},
                {"op": "test", "path": "/c", "value": 2}
            ]),
        )
        .unwrap();
        assert_eq!(d, json!({"a": {"b": [2, 3]}, "c": 2}));
        assert!(json_patch(&mut d, &json!([{"op": "test", "path": "/c", "value": 9}])).is_err());
    }

    #[test]
    fn rfc3339_round_trip() {
        let now = now_rfc3339();
        let secs = parse_rfc3339(&now).unwrap();
        let sys = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((sys - secs).abs() <= 2, "{now} -> {secs} vs {sys}");
        assert_eq!(parse_rfc3339("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
    }

    #[test]
    fn selectors() {
        let o = json!({"metadata": {"name": "x", "labels": {"app": "web", "tier": "fe"}}});
        assert!(
            LabelSelector::parse("app=web,tier in (fe,be)")
                .unwrap()
                .matches(&o)
        );
        assert!(!LabelSelector::parse("app=web,!tier").unwrap().matches(&o));
        assert!(FieldSelector::parse("metadata.name=x").unwrap().matches(&o));
        assert!(
            !FieldSelector::parse("metadata.name!=x")
                .unwrap()
                .matches(&o)
        );
    }
}
