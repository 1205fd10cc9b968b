//! `apply(bundle)`: reads a named manifest bundle (multi-document YAML),
//! resolves each kind through API discovery (cached per connection), asks
//! the [`ObjectGuard`](super::ObjectGuard) about every object before sending
//! anything, then server-side applies each object as field manager
//! `drhost` (forced).

use std::path::{Path, PathBuf};

use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{ApiResource, Scope};
use serde_json::Value;

use super::{LiveK8s, file_error, retry, reword};
use crate::bindings::CapError;

/// SSA field manager.
const FIELD_MANAGER: &str = "drhost";

/// One document of a bundle, checked and resolved.
#[derive(Debug)]
struct Doc {
    /// Where it came from: "file.yaml document #2".
    origin: String,
    api_version: String,
    kind: String,
    name: String,
    /// Set for namespaced kinds, `None` for cluster-scoped ones.
    namespace: Option<String>,
    body: Value,
}

impl Doc {
    fn id(&self) -> String {
        format!(
            "{}/{}/{}",
            self.kind,
            self.namespace.as_deref().unwrap_or(""),
            self.name
        )
    }
}

impl LiveK8s {
    /// See [`K8sBackend::apply`](crate::capability::k8s::K8sBackend::apply). Returns
    /// `Kind/namespace/name` per object in bundle order (`Kind//name` for
    /// cluster-scoped kinds).
    pub(crate) async fn apply_bundle(&self, bundle: &str) -> Result<Vec<String>, CapError> {
        check_bundle_name(bundle)?;
        let deadline = self.deadline();
        let files = bundle_files(&self.settings.manifest_dir, bundle).await?;
        let mut docs = Vec::new();
        for file in &files {
            let text = tokio::fs::read_to_string(file)
                .await
                .map_err(|e| file_error(&format!("bundle {bundle:?}: file"), file, &e))?;
            docs.extend(parse_documents(file, &text)?);
        }
        if docs.is_empty() {
            return Err(CapError::Invalid(format!(
                "bundle {bundle:?} has no objects"
            )));
        }

        // Resolve every kind (reads only) so the guard sees real scopes.
        let mut resolved = Vec::with_capacity(docs.len());
        for mut doc in docs {
            let (ar, namespaced) = self.resolve_kind(&doc, deadline).await?;
            let meta = doc.body.get_mut("metadata").and_then(Value::as_object_mut);
            if namespaced {
                let ns = meta
                    .and_then(|m| m.get("namespace"))
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty());
                let Some(ns) = ns else {
                    return Err(CapError::Invalid(format!(
                        "{}: {} {} is namespaced but has no metadata.namespace",
                        doc.origin, doc.kind, doc.name
                    )));
                };
                doc.namespace = Some(ns.to_string());
            } else if let Some(m) = meta {
                m.remove("namespace");
            }
            resolved.push((doc, ar));
        }

        // Every object must be granted before anything is sent.
        let refusals: Vec<String> = resolved
            .iter()
            .filter_map(|(doc, _)| {
                let ns = doc.namespace.as_deref().unwrap_or("");
                (self.guard)(&doc.kind, ns, &doc.name)
                    .err()
                    .map(|why| format!("{}: {why}", doc.id()))
            })
            .collect();
        if !refusals.is_empty() {
            return Err(CapError::Denied(format!(
                "bundle {bundle:?}: {}",
                refusals.join("; ")
            )));
        }

        let params = &PatchParams::apply(FIELD_MANAGER).force();
        let total = resolved.len();
        let mut applied = Vec::with_capacity(total);
        for (doc, ar) in &resolved {
            let api: Api<DynamicObject> = match &doc.namespace {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
                None => Api::all_with(self.client.clone(), ar),
            };
            let api = &api;
            let what = format!("apply {} ({})", doc.id(), doc.origin);
            let (name, body) = (doc.name.as_str(), &doc.body);
            let result = retry(&what, deadline, false, move || async move {
                Ok(api.patch(name, params, &Patch::Apply(body)).await?)
            })
            .await;
            if let Err(e) = result {
                if applied.is_empty() {
                    return Err(e);
                }
                let done = applied.len();
                return Err(reword(e, |m| {
                    format!("bundle {bundle:?} partly applied ({done} of {total}): {m}")
                }));
            }
            tracing::info!(bundle, object = %doc.id(), "applied");
            applied.push(doc.id());
        }
        Ok(applied)
    }

    /// (ApiResource, namespaced) for a document's apiVersion/kind, from the
    /// group-version's resource list (cached per connection).
    async fn resolve_kind(
        &self,
        doc: &Doc,
        deadline: tokio::time::Instant,
    ) -> Result<(ApiResource, bool), CapError> {
        let key = (doc.api_version.clone(), doc.kind.clone());
        if let Some(hit) = self
            .discovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let (group, version) = match doc.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", doc.api_version.as_str()),
        };
        let gvk = &GroupVersionKind::gvk(group, version, &doc.kind);
        let client = &self.client;
        let what = format!("{}: discover {} {}", doc.origin, doc.api_version, doc.kind);
        let found = retry(&what, deadline, false, move || async move {
            Ok(kube::discovery::pinned_kind(client, gvk).await?)
        })
        .await;
        let (ar, caps) = match found {
            Ok(found) => found,
            Err(CapError::NotFound(_)) | Err(CapError::Failed(_)) => {
                return Err(CapError::Invalid(format!(
                    "{}: the API server does not serve kind {} in {}",
                    doc.origin, doc.kind, doc.api_version
                )));
            }
            Err(e) => return Err(e),
        };
        let entry = (ar, caps.scope == Scope::Namespaced);
        self.discovery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, entry.clone());
        Ok(entry)
    }
}

/// Bundle names are plain names: no path separators, no `..`, no leading dot.
fn check_bundle_name(bundle: &str) -> Result<(), CapError> {
    if bundle.is_empty()
        || bundle.contains('/')
        || bundle.contains('\\')
        || bundle.contains("..")
        || bundle.starts_with('.')
        || bundle.contains('\0')
    {
        return Err(CapError::Invalid(format!(
            "bad bundle name {bundle:?}: must be a plain name (no '/', '..', or leading '.')"
        )));
    }
    Ok(())
}

/// `<dir>/<bundle>.yaml`, `<dir>/<bundle>.yml`, or the sorted `*.yaml` /
/// `*.yml` files (dot-files skipped) of the directory `<dir>/<bundle>/`.
async fn bundle_files(dir: &Path, bundle: &str) -> Result<Vec<PathBuf>, CapError> {
    for ext in ["yaml", "yml"] {
        let file = dir.join(format!("{bundle}.{ext}"));
        if tokio::fs::metadata(&file).await.is_ok_and(|m| m.is_file()) {
            return Ok(vec![file]);
        }
    }
    let sub = dir.join(bundle);
    if !tokio::fs::metadata(&sub).await.is_ok_and(|m| m.is_dir()) {
        return Err(CapError::NotFound(format!(
            "bundle {bundle:?}: none of {0}.yaml, {0}.yml or {0}/ exists in {1}",
            bundle,
            dir.display()
        )));
    }
    let ctx = format!("bundle {bundle:?}: directory");
    let mut entries = tokio::fs::read_dir(&sub)
        .await
        .map_err(|e| file_error(&ctx, &sub, &e))?;
    let mut files = Vec::new();
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| file_error(&ctx, &sub, &e))?
    {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if is_yaml
            && !name.starts_with('.')
            && tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file())
        {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(CapError::NotFound(format!(
            "bundle {bundle:?}: directory {} has no .yaml/.yml files",
            sub.display()
        )));
    }
    Ok(files)
}

/// Splits a file into documents at `---` lines (as kubectl's YAML reader
/// does), skipping empty ones, and checks each has apiVersion, kind and
/// metadata.name (strings). Errors name the file and the 1-based document
/// number (a leading `---` does not start a document).
fn parse_documents(file: &Path, text: &str) -> Result<Vec<Doc>, CapError> {
    let mut chunks = vec![String::new()];
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") {
            chunks.push(bare.trim_start_matches("---").trim_start().to_string());
            chunks.last_mut().expect("pushed").push('\n');
        } else {
            chunks.last_mut().expect("non-empty").push_str(line);
        }
    }
    let blank = |c: &str| {
        c.lines()
            .map(str::trim)
            .all(|l| l.is_empty() || l.starts_with('#'))
    };
    if blank(&chunks[0]) {
        chunks.remove(0);
    }
    let mut docs = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let origin = format!("{} document #{}", file.display(), i + 1);
        if blank(chunk) {
            continue;
        }
        let body: Value = serde_saphyr::from_str(chunk)
            .map_err(|e| CapError::Invalid(format!("{origin}: not valid YAML: {e}")))?;
        if body.is_null() {
            continue;
        }
        if !body.is_object() {
            return Err(CapError::Invalid(format!("{origin}: not a mapping")));
        }
        let field = |ptr: &str| {
            body.pointer(ptr)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| {
                    CapError::Invalid(format!(
                        "{origin}: missing {}",
                        ptr.trim_start_matches('/').replace('/', ".")
                    ))
                })
        };
        let api_version = field("/apiVersion")?;
        let kind = field("/kind")?;
        let name = field("/metadata/name")?;
        docs.push(Doc {
            origin,
            api_version,
            kind,
            name,
            namespace: None,
            body,
        });
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_names() {
        assert!(check_bundle_name("restore-db").is_ok());
        for bad in ["", "a/b", "..", "x..y", ".hidden", "a\\b"] {
            assert!(
                matches!(check_bundle_name(bad), Err(CapError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn documents_split_and_checked() {
        let text = "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: ns\ndata:\n  k: \"1\"\n---\n---\n# only a comment\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: ns}\nspec:\n  replicas: 2\n";
        let docs = parse_documents(Path::new("b.yaml"), text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[0].kind.as_str(), docs[0].name.as_str()),
            ("ConfigMap", "a")
        );
        assert_eq!(docs[1].api_version, "apps/v1");
        assert_eq!(docs[1].body["spec"]["replicas"], 2);
        assert!(
            docs[1].origin.ends_with("document #4"),
            "{}",
            docs[1].origin
        );

        let err = parse_documents(
            Path::new("b.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
        )
        .unwrap_err();
        assert!(
            matches!(&err, CapError::Invalid(m) if m.contains("b.yaml document #1") && m.contains("metadata.name")),
            "{err:?}"
        );
        let err = parse_documents(Path::new("c.yaml"), "kind: [\n").unwrap_err();
        assert!(
            matches!(&err, CapError::Invalid(m) if m.contains("c.yaml document #1")),
            "{err:?}"
        );
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata:\n  script: |\n    echo hi\n    ---\n    done\n";
        let docs = parse_documents(Path::new("d.yaml"), text).unwrap();
        assert_eq!(docs.len(), 1);
        assert!(
            docs[0].body["data"]["script"]
                .as_str()
                .unwrap()
                .contains("---")
        );
        let err = parse_documents(Path::new("c.yaml"), "kind: [\n").unwrap_err();
        assert!(
            matches!(&err, CapError::Invalid(m) if m.contains("c.yaml")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn bundle_file_lookup() {
        let dir = std::env::temp_dir().join(format!("drhost-k8s-bundles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("multi")).unwrap();
        std::fs::write(dir.join("one.yml"), "x").unwrap();
        std::fs::write(dir.join("multi/b.yaml"), "x").unwrap();
        std::fs::write(dir.join("multi/a.yml"), "x").unwrap();
        std::fs::write(dir.join("multi/.c.yaml"), "x").unwrap();
        std::fs::write(dir.join("multi/README.md"), "x").unwrap();
        assert_eq!(
            bundle_files(&dir, "one").await.unwrap(),
            vec![dir.join("one.yml")]
        );
        assert_eq!(
            bundle_files(&dir, "multi").await.unwrap(),
            vec![dir.join("multi/a.yml"), dir.join("multi/b.yaml")]
        );
        assert!(matches!(
            bundle_files(&dir, "nope").await,
            Err(CapError::NotFound(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
