//! A tiny deployment controller: one ReplicaSet per distinct pod template with
//! revision annotations like the real controller, and a deployment status that
//! becomes ready after a configurable delay.

use serde_json::{Value, json};

use super::store::{DEPLOYMENTS, REPLICASETS, Store, canonical_string, now_rfc3339, prune};

/// Annotation carrying the rollout revision.
pub(crate) const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const HASH_LABEL: &str = "pod-template-hash";

/// A deployment rollout that should become ready after the ready delay.
#[derive(Debug, Clone)]
pub(crate) struct PendingReady {
    /// Namespace.
    pub ns: String,
    /// Deployment name.
    pub name: String,
    /// Deployment uid (guards against delete + recreate).
    pub uid: String,
    /// Generation the readiness applies to.
    pub generation: i64,
}

/// The template with the hash label and Go zero values removed.
fn canonical_template(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    prune(&t).unwrap_or(json!({}))
}

/// `pod-template-hash` value: FNV-1a of the canonical template, safe-encoded like Kubernetes.
pub(crate) fn template_hash(template: &Value) -> String {
    let s = canonical_string(&canonical_template(template));
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHA[usize::from(b) % ALPHA.len()] as char)
        .collect()
}

fn revision_of(obj: &Value) -> i64 {
    obj["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn owned_by(obj: &Value, uid: &str) -> bool {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r["uid"].as_str() == Some(uid) && r["controller"] == json!(true))
        })
}

fn replicas_of(dep: &Value) -> i64 {
    dep["spec"]["replicas"].as_i64().unwrap_or(1)
}

/// Reconciles one deployment; returns a readiness timer to start, if any.
pub(crate) fn reconcile(
    store: &mut Store,
    ns: &str,
    name: &str,
    never_ready: bool,
) -> Option<PendingReady> {
    let dep = store.get(DEPLOYMENTS, ns, name)?.clone();
    let uid = dep["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let template = dep["spec"]["template"].clone();
    let hash = template_hash(&template);
    let replicas = replicas_of(&dep);

    let owned: Vec<Value> = store
        .list(REPLICASETS, Some(ns))
        .into_iter()
        .filter(|rs| owned_by(rs, &uid))
        .cloned()
        .collect();
    let max_rev = owned.iter().map(revision_of).max().unwrap_or(0);
    let current = owned
        .iter()
        .find(|rs| rs["metadata"]["labels"][HASH_LABEL].as_str() == Some(hash.as_str()));
    let old_dep_rev = revision_of(&dep);

    // The current ReplicaSet and its revision.
    let rs_name = format!("{name}-{hash}");
    let revision = match current {
        Some(rs) if revision_of(rs) == max_rev => max_rev,
        Some(rs) => {
            // Rolling back to an older template: it gets a new revision.
            let mut new = rs.clone();
            let old_rev = revision_of(rs);
            let ann = &mut new["metadata"]["annotations"];
            let history = ann[REVISION_HISTORY].as_str().unwrap_or("").to_string();
            let history = if history.is_empty() {
                old_rev.to_string()
            } else {
                format!("{history},{old_rev}")
            };
            ann[REVISION_HISTORY] = json!(history);
            ann[REVISION] = json!((max_rev + 1).to_string());
            store.write(REPLICASETS, ns, &rs_name, rs, new);
            max_rev + 1
        }
        None => {
            let mut pod_template = template.clone();
            pod_template["metadata"]["labels"][HASH_LABEL] = json!(hash);
            let mut labels = pod_template["metadata"]["labels"].clone();
            labels[HASH_LABEL] = json!(hash);
            let mut selector = dep["spec"]["selector"].clone();
            if !selector.is_object() {
                selector = json!({});
            }
            selector["matchLabels"][HASH_LABEL] = json!(hash);
            let rs = json!({
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": rs_name,
                    "namespace": ns,
                    "labels": labels,
                    "annotations": {
                        REVISION: (max_rev + 1).to_string(),
                        "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                        "deployment.kubernetes.io/max-replicas": (replicas + 1).to_string(),
                    },
                    "ownerReferences": [{
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": name,
                        "uid": uid,
                        "controller": true,
                        "blockOwnerDeletion": true,
                    }],
                },
                "spec": {"replicas": replicas, "selector": selector, "template": pod_template},
            });
            // Cannot conflict: the name embeds the template hash.
            let _ = store.create(REPLICASETS, ns, rs);
            max_rev + 1
        }
    };

    // Scale the current ReplicaSet up and the others to zero.
    for rs in store
        .list(REPLICASETS, Some(ns))
        .into_iter()
        .filter(|rs| owned_by(rs, &uid))
        .cloned()
        .collect::<Vec<_>>()
    {
        let rs_n = rs["metadata"]["name"].as_str().unwrap_or("").to_string();
        let want = if rs_n == rs_name { replicas } else { 0 };
        let mut new = rs.clone();
        new["spec"]["replicas"] = json!(want);
        if rs_n == rs_name {
            new["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] =
                json!(replicas.to_string());
        } else {
            new["status"] =
                json!({"replicas": 0, "observedGeneration": rs["metadata"]["generation"]});
        }
        store.write(REPLICASETS, ns, &rs_n, &rs, new);
    }

    // Deployment revision annotation and (not yet ready) status.
    let dep = store.get(DEPLOYMENTS, ns, name)?.clone();
    let generation = dep["metadata"]["generation"].as_i64().unwrap_or(1);
    let mut new = dep.clone();
    new["metadata"]["annotations"][REVISION] = json!(revision.to_string());
    let status = &dep["status"];
    let stale = status["observedGeneration"].as_i64() != Some(generation);
    let mut timer = None;
    if stale || (never_ready && status["readyReplicas"].as_i64() != Some(0)) {
        let template_changed = old_dep_rev != revision;
        let prev_ready = status["readyReplicas"].as_i64().unwrap_or(0);
        let ready = if template_changed || never_ready {
            0
        } else {
            prev_ready.min(replicas)
        };
        new["status"] = unready_status(&rs_name, generation, replicas, ready);
        if !never_ready {
            timer = Some(PendingReady {
                ns: ns.to_string(),
                name: name.to_string(),
                uid: uid.clone(),
                generation,
            });
        }
    }
    store.write(DEPLOYMENTS, ns, name, &dep, new);
    timer
}

fn condition(kind: &str, status: &str, reason: &str, message: String) -> Value {
    let now = now_rfc3339();
    json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
    })
}

fn unready_status(rs_name: &str, generation: i64, replicas: i64, ready: i64) -> Value {
    let available = if ready >= replicas { "True" } else { "False" };
    let available_reason = if ready >= replicas {
        "MinimumReplicasAvailable"
    } else {
        "MinimumReplicasUnavailable"
    };
    let available_message = if ready >= replicas {
        "Deployment has minimum availability."
    } else {
        "Deployment does not have minimum availability."
    };
    json!({
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": replicas - ready,
        "conditions": [
            condition("Available", available, available_reason, available_message.to_string()),
            condition("Progressing", "True", "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing.")),
        ],
    })
}

/// Marks a rollout as complete, if it is still the current one.
pub(crate) fn mark_ready(store: &mut Store, p: &PendingReady) -> bool {
    let Some(dep) = store.get(DEPLOYMENTS, &p.ns, &p.name).cloned() else {
        return false;
    };
    if dep["metadata"]["uid"].as_str() != Some(p.uid.as_str())
        || dep["metadata"]["generation"].as_i64().unwrap_or(1) != p.generation
    {
        return false;
    }
    let replicas = replicas_of(&dep);
    let hash = template_hash(&dep["spec"]["template"]);
    let rs_name = format!("{}-{hash}", p.name);
    let mut new = dep.clone();
    new["status"] = json!({
        "observedGeneration": p.generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [
            condition("Available", "True", "MinimumReplicasAvailable",
                "Deployment has minimum availability.".to_string()),
            condition("Progressing", "True", "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed.")),
        ],
    });
    store.write(DEPLOYMENTS, &p.ns, &p.name, &dep, new);
    if let Some(rs) = store.get(REPLICASETS, &p.ns, &rs_name).cloned() {
        let mut new = rs.clone();
        new["status"] = json!({
            "replicas": replicas,
            "fullyLabeledReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "observedGeneration": rs["metadata"]["generation"],
        });
        store.write(REPLICASETS, &p.ns, &rs_name, &rs, new);
    }
    true
}

/// Forces a deployment's status to "not ready" (for `never_ready`).
pub(crate) fn mark_unready(store: &mut Store, ns: &str, name: &str) {
    let Some(dep) = store.get(DEPLOYMENTS, ns, name).cloned() else {
        return;
    };
    let generation = dep["metadata"]["generation"].as_i64().unwrap_or(1);
    let rs_name = format!("{name}-{}", template_hash(&dep["spec"]["template"]));
    let mut new = dep.clone();
    new["status"] = unready_status(&rs_name, generation, replicas_of(&dep), 0);
    store.write(DEPLOYMENTS, ns, name, &dep, new);
}
