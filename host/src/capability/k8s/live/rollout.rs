//! `rollout_undo`, done the way `kubectl rollout undo` does it
//! (k8s.io/kubectl/pkg/polymorphichelpers/rollback.go): find the
//! deployment's ReplicaSets (selector + controller ownerRef), pick the
//! revision (given, or the second newest), refuse paused deployments, skip
//! when the template already matches, and JSON-patch `/spec/template` and
//! `/metadata/annotations` — guarded by a `test` of the resourceVersion
//! read, so a concurrent change makes the whole undo retry from a fresh
//! read.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::time::Instant;

use super::{Attempt, LiveK8s, Watched, retry, revision_of, watch_until};
use crate::bindings::CapError;

/// Label the deployment controller adds to ReplicaSet templates.
const HASH_LABEL: &str = "pod-template-hash";
/// How long to wait for the controller to record the new revision.
const REVISION_WAIT: Duration = Duration::from_secs(5);

/// Deployment annotations kubectl keeps from the deployment (and never
/// copies from the ReplicaSet) when rolling back.
const ANNOTATIONS_TO_SKIP: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "apps.kubernetes.io/deprecated-rollback-to",
];

/// What the patch step did.
enum Undo {
    /// The template already matched the target: nothing sent.
    Skipped { current: u64 },
    /// Patched to the template of `target`.
    Patched {
        target: u64,
        before: u64,
        generation: i64,
        patched: Box<Deployment>,
    },
}

impl LiveK8s {
    /// See [`K8sBackend::rollout_undo`](crate::capability::k8s::K8sBackend::rollout_undo).
    pub(crate) async fn undo(
        &self,
        namespace: &str,
        name: &str,
        to_revision: Option<u64>,
    ) -> Result<u64, CapError> {
        let deadline = self.deadline();
        let deployments = &self.deployments(namespace);
        let replica_sets = &Api::<ReplicaSet>::namespaced(self.client.clone(), namespace);
        let what = format!("rollout undo deployment {namespace}/{name}");
        let what_ref = what.as_str();
        let undo = retry(&what, deadline, true, move || async move {
            let dep = deployments.get(name).await?;
            if dep.spec.paused == Some(true) {
                return Err(CapError::Invalid(format!(
                    "{what_ref}: the deployment is paused; resume it before rolling back"
                ))
                .into());
            }
            let selector = selector_string(&dep.spec.selector);
            let list = replica_sets
                .list(&ListParams::default().labels(&selector))
                .await?;
            let uid = dep.metadata.uid.clone().unwrap_or_default();
            let owned: Vec<ReplicaSet> = list
                .items
                .into_iter()
                .filter(|rs| controlled_by(rs, &uid))
                .collect();
            let (target, rs) = pick_revision(&owned, to_revision)
                .map_err(|m| CapError::NotFound(format!("{what_ref}: {m}")))?;
            let current = revision_of(&dep.metadata);
            let mut template = rs.spec.template.clone().ok_or_else(|| {
                CapError::Failed(format!("{what_ref}: revision {target} has no pod template"))
            })?;
            if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
                labels.remove(HASH_LABEL);
            }
            if same_ignoring_hash(&template, &dep.spec.template) {
                tracing::info!(
                    namespace,
                    name,
                    target,
                    "rollback skipped: template already matches"
                );
                return Ok(Undo::Skipped { current });
            }
            let annotations = rollback_annotations(&dep, rs);
            let patch: json_patch::Patch = serde_json::from_value(json!([
                {"op": "test", "path": "/metadata/resourceVersion",
                 "value": dep.resource_version().unwrap_or_default()},
                {"op": "replace", "path": "/spec/template", "value": template},
                {"op": "replace", "path": "/metadata/annotations", "value": annotations},
            ]))
            .map_err(|e| CapError::Failed(format!("{what_ref}: building patch: {e}")))?;
            let patched = deployments
                .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
                .await
                .map_err(|e| match e {
                    // A failed `test` op: the deployment changed since our read.
                    kube::Error::Api(s)
                        if s.code == 422
                            && s.message.contains("test")
                            && s.message.contains("/metadata/resourceVersion") =>
                    {
                        Attempt::Conflict(s.message)
                    }
                    e => Attempt::Kube(e),
                })?;
            Ok(Undo::Patched {
                target,
                before: current,
                generation: patched.metadata.generation.unwrap_or(0),
                patched: Box::new(patched),
            })
        })
        .await?;

        let (target, before, generation, patched) = match undo {
            Undo::Skipped { current } => return Ok(current),
            Undo::Patched {
                target,
                before,
                generation,
                patched,
            } => (target, before, generation, *patched),
        };
        tracing::info!(namespace, name, target, "rolled back");
        // The controller gives the restored ReplicaSet a new revision and
        // copies it to the deployment; report that if it happens in time.
        let wait_deadline = deadline.min(Instant::now() + REVISION_WAIT);
        let bumped = |d: &Deployment| {
            let observed = d.status.as_ref().and_then(|s| s.observed_generation);
            let revision = revision_of(&d.metadata);
            observed.unwrap_or(0) >= generation && revision != 0 && revision != before
        };
        match watch_until(deployments, namespace, name, wait_deadline, patched, bumped).await {
            Ok(Watched::Matched(d)) => Ok(revision_of(&d.metadata)),
            Ok(Watched::Expired(_)) | Err(_) => Ok(target),
        }
    }
}

/// kubectl's revision choice: the given one, or else the second-highest
/// revision among the deployment's ReplicaSets. Errors list what exists.
fn pick_revision(
    owned: &[ReplicaSet],
    to_revision: Option<u64>,
) -> Result<(u64, &ReplicaSet), String> {
    let mut by_rev: BTreeMap<u64, &ReplicaSet> = BTreeMap::new();
    for rs in owned {
        let rev = revision_of(&rs.metadata);
        if rev > 0 {
            by_rev.insert(rev, rs);
        }
    }
    let known = || {
        if by_rev.is_empty() {
            "none".to_string()
        } else {
            by_rev
                .keys()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    match to_revision {
        Some(rev) if rev > 0 => by_rev
            .get(&rev)
            .map(|rs| (rev, *rs))
            .ok_or_else(|| format!("revision {rev} not found; known: {}", known())),
        _ => by_rev
            .iter()
            .rev()
            .nth(1)
            .map(|(rev, rs)| (*rev, *rs))
            .ok_or_else(|| format!("no previous revision to roll back to (known: {})", known())),
    }
}

/// The deployment's annotations from the skip list, plus every other
/// annotation of the ReplicaSet (as kubectl builds them).
fn rollback_annotations(dep: &Deployment, rs: &ReplicaSet) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(a) = &dep.metadata.annotations {
        for k in ANNOTATIONS_TO_SKIP {
            if let Some(v) = a.get(k) {
                out.insert(k.to_string(), v.clone());
            }
        }
    }
    if let Some(a) = &rs.metadata.annotations {
        for (k, v) in a {
            if !ANNOTATIONS_TO_SKIP.contains(&k.as_str()) {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// The ReplicaSet's controller ownerRef points at this uid.
fn controlled_by(rs: &ReplicaSet, uid: &str) -> bool {
    !uid.is_empty()
        && rs.metadata.owner_references.as_ref().is_some_and(|refs| {
            refs.iter()
                .any(|r| r.controller == Some(true) && r.uid == uid)
        })
}

/// kubectl's equalIgnoreHash: templates equal once the hash label is gone
/// (and an empty label map equals none).
fn same_ignoring_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    fn normalize(t: &PodTemplateSpec) -> serde_json::Value {
        let mut t = t.clone();
        if let Some(meta) = t.metadata.as_mut() {
            if let Some(labels) = meta.labels.as_mut() {
                labels.remove(HASH_LABEL);
            }
            if meta.labels.as_ref().is_some_and(|l| l.is_empty()) {
                meta.labels = None;
            }
        }
        serde_json::to_value(t).unwrap_or_default()
    }
    normalize(a) == normalize(b)
}

/// A label selector in the API's string syntax.
fn selector_string(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({values})", e.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelectorRequirement, ObjectMeta, OwnerReference,
    };

    fn rs(rev: u64, owner: &str) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("web-{rev}")),
                annotations: Some(
                    [
                        (
                            super::super::REVISION_ANNOTATION.to_string(),
                            rev.to_string(),
                        ),
                        ("team".to_string(), "a".to_string()),
                    ]
                    .into(),
                ),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "Deployment".into(),
                    name: "web".into(),
                    uid: owner.into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: ReplicaSetSpec::default(),
            status: None,
        }
    }

    #[test]
    fn picks_previous_or_given_revision() {
        let sets = vec![rs(1, "u"), rs(3, "u"), rs(2, "u")];
        assert_eq!(pick_revision(&sets, None).unwrap().0, 2);
        assert_eq!(pick_revision(&sets, Some(0)).unwrap().0, 2);
        assert_eq!(pick_revision(&sets, Some(1)).unwrap().0, 1);
        assert_eq!(
            pick_revision(&sets, Some(7)).unwrap_err(),
            "revision 7 not found; known: 1,2,3"
        );
        let err = pick_revision(&sets[..1], None).unwrap_err();
        assert!(err.contains("no previous revision"), "{err}");
    }

    #[test]
    fn ownership_and_annotations() {
        assert!(controlled_by(&rs(1, "u"), "u"));
        assert!(!controlled_by(&rs(1, "other"), "u"));
        let dep = Deployment {
            metadata: ObjectMeta {
                annotations: Some(
                    [
                        (
                            super::super::REVISION_ANNOTATION.to_string(),
                            "3".to_string(),
                        ),
                        ("dropped".to_string(), "x".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        let a = rollback_annotations(&dep, &rs(1, "u"));
        assert_eq!(
            a.get(super::super::REVISION_ANNOTATION).map(String::as_str),
            Some("3")
        );
        assert_eq!(a.get("team").map(String::as_str), Some("a"));
        assert!(!a.contains_key("dropped"));
    }

    #[test]
    fn selector_syntax() {
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(selector_string(&sel), "app=web,tier in (a,b),!canary");
    }

    #[test]
    fn template_comparison_ignores_hash() {
        let mut a = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([(HASH_LABEL.to_string(), "abc".to_string())].into()),
                ..Default::default()
            }),
            spec: None,
        };
        let b = PodTemplateSpec {
            metadata: Some(ObjectMeta::default()),
            spec: None,
        };
        assert!(same_ignoring_hash(&a, &b));
        a.metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("x".into(), "y".into());
        assert!(!same_ignoring_hash(&a, &b));
    }
}
