//! `LiveK8s` against the fake API server started in-process: every operation, its
//! error mapping and retries, asserting on both the results and the fake's
//! store / request log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use drhost::bindings::CapError;
use drhost::capability::k8s::K8sBackend;
use drhost::capability::k8s::live::{K8sSettings, LiveK8s, ObjectGuard, SecretSource};
use drhost_tests::fake_kube::{FakeKube, deployment};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

/// A fake API server, a backend connected to it through a kubeconfig file,
/// and a scratch directory (removed on drop).
struct Env {
    fake: FakeKube,
    k8s: LiveK8s,
    dir: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "kubeback-live-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    dir
}

fn allow_all() -> ObjectGuard {
    Arc::new(|_: &str, _: &str, _: &str| Ok(()))
}

async fn env_with(guard: ObjectGuard, secret_sources: BTreeMap<String, SecretSource>) -> Env {
    let fake = FakeKube::start().await.unwrap();
    let dir = scratch_dir();
    let kubeconfig = dir.join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    let settings = K8sSettings {
        kubeconfig: Some(kubeconfig),
        context: Some("fake".into()),
        manifest_dir: dir.join("manifests"),
        secret_sources,
    };
    let k8s = LiveK8s::connect(settings, guard).await.unwrap();
    Env { fake, k8s, dir }
}

async fn env() -> Env {
    env_with(allow_all(), BTreeMap::new()).await
}

/// A plain kube client for changing things "through the API" like a user.
async fn user_client(kubeconfig: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn namespace(fake: &FakeKube, name: &str) {
    fake.insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}));
}

fn image_in_store(fake: &FakeKube, ns: &str, name: &str) -> String {
    let d = fake.get("apps/v1", "Deployment", Some(ns), name).unwrap();
    d["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string()
}

fn revision_in_store(fake: &FakeKube, ns: &str, name: &str) -> String {
    let d = fake.get("apps/v1", "Deployment", Some(ns), name).unwrap();
    d["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn requests_matching(fake: &FakeKube, method: &str, path: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|(m, p, _)| m == method && p.contains(path))
        .count()
}

/// Changes the container image through the API and waits for the rollout.
async fn set_image(e: &Env, ns: &str, name: &str, image: &str) {
    let client = user_client(&e.dir.join("kubeconfig")).await;
    let api: Api<Deployment> = Api::namespaced(client, ns);
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    e.k8s
        .wait_ready(ns, name, Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn cluster_reachable_reports_git_version() {
    let e = env().await;
    assert_eq!(e.k8s.cluster_reachable().await.unwrap(), "v1.32.0");
}

#[tokio::test]
async fn get_deployment_reads_spec_status_and_revision() {
    let e = env().await;
    e.fake.insert(deployment("shop", "web", 3, "nginx:1.26"));
    let ready = e
        .k8s
        .wait_ready("shop", "web", Duration::from_secs(5))
        .await
        .unwrap();
    let st = e.k8s.get_deployment("shop", "web").await.unwrap();
    assert_eq!(st, ready);
    assert_eq!((st.namespace.as_str(), st.name.as_str()), ("shop", "web"));
    assert_eq!((st.desired, st.ready, st.available), (3, 3, 3));
    assert_eq!(st.revision, 1);
    assert_eq!(st.images, vec!["nginx:1.26".to_string()]);

    let err = e.k8s.get_deployment("shop", "nope").await.unwrap_err();
    assert!(
        matches!(&err, CapError::NotFound(m) if m.contains("shop/nope")),
        "{err:?}"
    );
}

#[tokio::test]
async fn scale_returns_previous_and_writes_new() {
    let e = env().await;
    e.fake.insert(deployment("shop", "web", 2, "nginx:1.26"));
    assert_eq!(e.k8s.scale("shop", "web", 5).await.unwrap(), 2);
    let d = e
        .fake
        .get("apps/v1", "Deployment", Some("shop"), "web")
        .unwrap();
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(
        requests_matching(&e.fake, "PUT", "/deployments/web/scale"),
        1
    );
    assert_eq!(e.k8s.scale("shop", "web", 0).await.unwrap(), 5);
    let st = e
        .k8s
        .wait_ready("shop", "web", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((st.desired, st.ready), (0, 0));
}

#[tokio::test]
async fn scale_retries_a_conflict_with_a_fresh_read() {
    let e = env().await;
    e.fake.insert(deployment("shop", "web", 2, "nginx:1.26"));
    e.fake.fail_next("PUT", "/deployments/web/scale", 409, 1);
    assert_eq!(e.k8s.scale("shop", "web", 4).await.unwrap(), 2);
    assert_eq!(
        requests_matching(&e.fake, "GET", "/deployments/web/scale"),
        2
    );
    assert_eq!(
        requests_matching(&e.fake, "PUT", "/deployments/web/scale"),
        2
    );
    let d = e
        .fake
        .get("apps/v1", "Deployment", Some("shop"), "web")
        .unwrap();
    assert_eq!(d["spec"]["replicas"], 4);
}

#[tokio::test]
async fn rollout_undo_restores_previous_and_given_revisions() {
    let e = env().await;
    e.fake.insert(deployment("shop", "web", 2, "nginx:1.26"));
    e.k8s
        .wait_ready("shop", "web", Duration::from_secs(5))
        .await
        .unwrap();
    set_image(&e, "shop", "web", "nginx:1.27").await;
    assert_eq!(
        e.k8s.get_deployment("shop", "web").await.unwrap().revision,
        2
    );

    // Previous revision: back to 1.26, which becomes revision 3.
    let rev = e.k8s.rollout_undo("shop", "web", None).await.unwrap();
    assert_eq!(rev, 3);
    assert_eq!(image_in_store(&e.fake, "shop", "web"), "nginx:1.26");
    assert_eq!(revision_in_store(&e.fake, "shop", "web"), "3");
    let st = e
        .k8s
        .wait_ready("shop", "web", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(st.images, vec!["nginx:1.26".to_string()]);
    assert!(
        e.fake.requests().iter().any(|(m, p, ct)| m == "PATCH"
            && p.contains("/deployments/web")
            && ct.starts_with("application/json-patch+json")),
        "the undo is a JSON patch"
    );
    // The hash label must not leak into the deployment's template.
    let d = e
        .fake
        .get("apps/v1", "Deployment", Some("shop"), "web")
        .unwrap();
    assert!(
        d["spec"]["template"]["metadata"]["labels"]
            .get("pod-template-hash")
            .is_none()
    );

    // A given revision: 2 (1.27) again, now revision 4 — through one
    // conflict, which makes the undo start over from a fresh read.
    let patches_before = requests_matching(&e.fake, "PATCH", "/deployments/web");
    e.fake.fail_next("PATCH", "/deployments/web", 409, 1);
    let rev = e.k8s.rollout_undo("shop", "web", Some(2)).await.unwrap();
    assert_eq!(rev, 4);
    assert_eq!(
        requests_matching(&e.fake, "PATCH", "/deployments/web"),
        patches_before + 2
    );
    assert_eq!(image_in_store(&e.fake, "shop", "web"), "nginx:1.27");

    // Unknown revision: the error lists what exists.
    let err = e
        .k8s
        .rollout_undo("shop", "web", Some(9))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CapError::NotFound(m) if m.contains("revision 9 not found; known: 3,4")),
        "{err:?}"
    );
}

#[tokio::test]
async fn rollout_undo_without_history_or_when_paused_fails_clearly() {
    let e = env().await;
    e.fake.insert(deployment("shop", "web", 1, "nginx:1.26"));
    e.k8s
        .wait_ready("shop", "web", Duration::from_secs(5))
        .await
        .unwrap();
    let err = e.k8s.rollout_undo("shop", "web", None).await.unwrap_err();
    assert!(
        matches!(&err, CapError::NotFound(m) if m.contains("no previous revision")),
        "{err:?}"
    );
    assert_eq!(requests_matching(&e.fake, "PATCH", "/deployments/web"), 0);

    let mut paused = deployment("shop", "api", 1, "nginx:1.26");
    paused["spec"]["paused"] = json!(true);
    e.fake.insert(paused);
    let err = e.k8s.rollout_undo("shop", "api", None).await.unwrap_err();
    assert!(
        matches!(&err, CapError::Invalid(m) if m.contains("paused")),
        "{err:?}"
    );
}

#[tokio::test]
async fn wait_ready_uses_a_watch_and_returns_when_ready() {
    let e = env().await;
    e.fake.set_ready_delay(Duration::from_millis(200));
    e.fake.insert(deployment("shop", "web", 2, "nginx:1.26"));
    let start = std::time::Instant::now();
    let st = e
        .k8s
        .wait_ready("shop", "web", Duration::from_secs(5))
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!((st.desired, st.ready, st.available), (2, 2, 2));
    assert!(
        took >= Duration::from_millis(100),
        "returned before ready: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "too slow: {took:?}");
    let watches = e
        .fake
        .requests()
        .into_iter()
        .filter(|(m, p, _)| m == "GET" && p.contains("watch=true"))
        .collect::<Vec<_>>();
    assert_eq!(watches.len(), 1, "{watches:?}");
    assert!(
        watches[0].1.contains("fieldSelector=metadata.name%3Dweb"),
        "{watches:?}"
    );
    // One initial read, no polling.
    assert_eq!(requests_matching(&e.fake, "GET", "/deployments/web"), 1);
}

#[tokio::test]
async fn wait_ready_survives_a_failed_watch() {
    let e = env().await;
    e.fake.set_ready_delay(Duration::from_millis(300));
    e.fake.insert(deployment("shop", "web", 1, "nginx:1.26"));
    e.fake.fail_next("GET", "watch=true", 500, 1);
    let st = e
        .k8s
        .wait_ready("shop", "web", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(st.ready, 1);
    assert_eq!(requests_matching(&e.fake, "GET", "watch=true"), 2);
}

#[tokio::test]
async fn wait_ready_rereads_after_410_gone() {
    let e = env().await;
    e.fake.set_ready_delay(Duration::from_millis(300));
    e.fake.insert(deployment("shop", "web", 1, "nginx:1.26"));
    e.fake.fail_next("GET", "watch=true", 410, 1);
    let st = e
        .k8s
        .wait_ready("shop", "web", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(st.ready, 1);
    // Initial read, then a fresh read after the 410, then a second watch.
    let plain_gets = e
        .fake
        .requests()
        .iter()
        .filter(|(m, p, _)| m == "GET" && p.ends_with("/deployments/web"))
        .count();
    assert_eq!(plain_gets, 2);
    assert_eq!(requests_matching(&e.fake, "GET", "watch=true"), 2);
}

#[tokio::test]
async fn wait_ready_times_out_with_last_status() {
    let e = env().await;
    e.fake.insert(deployment("shop", "web", 2, "nginx:1.26"));
    e.fake.never_ready("shop", "web");
    let start = std::time::Instant::now();
    let err = e
        .k8s
        .wait_ready("shop", "web", Duration::from_millis(800))
        .await
        .unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(800));
    assert!(
        matches!(&err, CapError::TimedOut(m) if m.contains("shop/web") && m.contains("desired 2") && m.contains("ready 0")),
        "{err:?}"
    );
}

const BUNDLE: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
data:
  mode: restore
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: shop
stringData:
  user: app
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: nginx:1.26
";

fn managers(obj: &Value) -> Vec<String> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn apply_bundle_server_side_applies_every_object() {
    let e = env().await;
    std::fs::write(e.dir.join("manifests/restore.yaml"), BUNDLE).unwrap();
    let applied = e.k8s.apply("restore").await.unwrap();
    assert_eq!(
        applied,
        vec![
            "Namespace//shop",
            "ConfigMap/shop/settings",
            "Secret/shop/creds",
            "Deployment/shop/web"
        ]
    );
    let cm = e
        .fake
        .get("v1", "ConfigMap", Some("shop"), "settings")
        .unwrap();
    assert_eq!(cm["data"]["mode"], "restore");
    assert_eq!(managers(&cm), vec!["drhost"]);
    let dep = e
        .fake
        .get("apps/v1", "Deployment", Some("shop"), "web")
        .unwrap();
    assert_eq!(dep["spec"]["replicas"], 2);
    assert!(managers(&dep).contains(&"drhost".to_string()));
    assert!(e.fake.get("v1", "Secret", Some("shop"), "creds").is_some());
    assert!(e.fake.get("v1", "Namespace", None, "shop").is_some());
    let patches: Vec<_> = e
        .fake
        .requests()
        .into_iter()
        .filter(|(m, _, _)| m == "PATCH")
        .collect();
    assert_eq!(patches.len(), 4);
    for (_, path, ct) in &patches {
        assert!(ct.starts_with("application/apply-patch+yaml"), "{ct}");
        assert!(
            path.contains("fieldManager=drhost") && path.contains("force=true"),
            "{path}"
        );
    }
    // Discovery is cached per connection: a second apply asks nothing new.
    let discovery = |f: &FakeKube| {
        f.requests()
            .iter()
            .filter(|(m, p, _)| m == "GET" && (p == "/api/v1" || p == "/apis/apps/v1"))
            .count()
    };
    let before = discovery(&e.fake);
    e.k8s.apply("restore").await.unwrap();
    assert_eq!(discovery(&e.fake), before);
}

#[tokio::test]
async fn apply_directory_bundle_in_file_order() {
    let e = env().await;
    namespace(&e.fake, "shop");
    let dir = e.dir.join("manifests/multi");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("20-cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b, namespace: shop}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("10-cm.yml"),
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: shop}\n---\n",
    )
    .unwrap();
    let applied = e.k8s.apply("multi").await.unwrap();
    assert_eq!(applied, vec!["ConfigMap/shop/a", "ConfigMap/shop/b"]);
}

#[tokio::test]
async fn apply_refused_by_guard_sends_nothing() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let guard: ObjectGuard = Arc::new(move |kind: &str, ns: &str, name: &str| {
        record.lock().unwrap().push(format!("{kind}|{ns}|{name}"));
        if kind == "Secret" {
            Err(format!("secret {name} not granted"))
        } else {
            Ok(())
        }
    });
    let e = env_with(guard, BTreeMap::new()).await;
    std::fs::write(e.dir.join("manifests/restore.yaml"), BUNDLE).unwrap();
    let err = e.k8s.apply("restore").await.unwrap_err();
    assert!(
        matches!(&err, CapError::Denied(m) if m.contains("Secret/shop/creds") && m.contains("secret creds not granted")),
        "{err:?}"
    );
    let writes: Vec<_> = e
        .fake
        .requests()
        .into_iter()
        .filter(|(m, _, _)| m != "GET")
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    assert!(
        e.fake
            .get("v1", "ConfigMap", Some("shop"), "settings")
            .is_none()
    );
    // Every object was asked about, cluster-scoped ones with "" namespace.
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            "Namespace||shop",
            "ConfigMap|shop|settings",
            "Secret|shop|creds",
            "Deployment|shop|web"
        ]
    );
}

#[tokio::test]
async fn apply_rejects_bad_bundles() {
    let e = env().await;
    for bad in ["../etc", "a/b", ".hidden"] {
        assert!(
            matches!(e.k8s.apply(bad).await, Err(CapError::Invalid(_))),
            "{bad}"
        );
    }
    let err = e.k8s.apply("missing").await.unwrap_err();
    assert!(
        matches!(&err, CapError::NotFound(m) if m.contains("missing")),
        "{err:?}"
    );

    std::fs::write(
        e.dir.join("manifests/nons.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: shop}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
    )
    .unwrap();
    let err = e.k8s.apply("nons").await.unwrap_err();
    assert!(
        matches!(&err, CapError::Invalid(m) if m.contains("nons.yaml document #2") && m.contains("namespace")),
        "{err:?}"
    );
    std::fs::write(
        e.dir.join("manifests/kind.yaml"),
        "apiVersion: v1\nkind: Gizmo\nmetadata: {name: a, namespace: shop}\n",
    )
    .unwrap();
    let err = e.k8s.apply("kind").await.unwrap_err();
    assert!(
        matches!(&err, CapError::Invalid(m) if m.contains("kind.yaml document #1") && m.contains("Gizmo")),
        "{err:?}"
    );
    assert_eq!(requests_matching(&e.fake, "PATCH", "/"), 0);
}

#[tokio::test]
async fn replace_secret_from_file_keeps_metadata_and_replaces_data() {
    let dir = scratch_dir();
    let file = dir.join("db.yaml");
    std::fs::write(&file, "user: admin\npassword: s3cr3t-value\n").unwrap();
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("tls.key"), b"\x00binary\xff").unwrap();
    std::fs::write(keys.join(".hidden"), b"skip").unwrap();
    let sources = BTreeMap::from([
        ("db".to_string(), SecretSource::File(file)),
        ("keys".to_string(), SecretSource::File(keys)),
        (
            "bad".to_string(),
            SecretSource::File(dir.join("absent.yaml")),
        ),
    ]);
    let e = env_with(allow_all(), sources).await;
    e.fake.insert(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db", "namespace": "shop", "labels": {"team": "a"}, "annotations": {"note": "x"}},
        "type": "Opaque",
        "data": {"old": "b2xk"},
    }));
    e.k8s.replace_secret("shop", "db", "db").await.unwrap();
    let s = e.fake.get("v1", "Secret", Some("shop"), "db").unwrap();
    assert_eq!(s["metadata"]["labels"]["team"], "a");
    assert_eq!(s["metadata"]["annotations"]["note"], "x");
    assert_eq!(
        s["data"],
        json!({"password": "czNjcjN0LXZhbHVl", "user": "YWRtaW4="})
    );
    assert_eq!(requests_matching(&e.fake, "PUT", "/secrets/db"), 1);

    e.k8s.replace_secret("shop", "tls", "keys").await.unwrap();
    let s = e.fake.get("v1", "Secret", Some("shop"), "tls").unwrap();
    assert_eq!(s["data"], json!({"tls.key": "AGJpbmFyef8="}));
    assert_eq!(s["type"], "Opaque");

    let err = e.k8s.replace_secret("shop", "db", "bad").await.unwrap_err();
    assert!(
        matches!(&err, CapError::NotFound(m) if m.contains("absent.yaml")),
        "{err:?}"
    );
    let err = e
        .k8s
        .replace_secret("shop", "db", "unknown")
        .await
        .unwrap_err();
    assert!(matches!(err, CapError::NotFound(_)));
    let _ = std::fs::remove_dir_all(dir);
}

// The environment-variable secret source is tested end to end through
// `drhost exec` (cli.rs), where the variable is set on the child process:
// setting it here would race the other tests' threads.

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let e = env().await;
    e.fake.insert(deployment("shop", "web", 2, "nginx:1.26"));
    e.fake.fail_next("GET", "/deployments/web", 500, 2);
    let st = e.k8s.get_deployment("shop", "web").await.unwrap();
    assert_eq!(st.desired, 2);
    assert_eq!(requests_matching(&e.fake, "GET", "/deployments/web"), 3);
}

#[tokio::test]
async fn persistent_overload_is_unavailable_at_the_deadline() {
    let e = env().await;
    let settings = K8sSettings {
        kubeconfig: Some(e.dir.join("kubeconfig")),
        ..Default::default()
    };
    let k8s = LiveK8s::connect(settings, allow_all())
        .await
        .unwrap()
        .with_op_timeout(Duration::from_millis(700));
    e.fake.fail_next("*", "/version", 503, 100);
    let err = k8s.cluster_reachable().await.unwrap_err();
    assert!(
        matches!(&err, CapError::Unavailable(m) if m.contains("injected")),
        "{err:?}"
    );
    let tries = requests_matching(&e.fake, "GET", "/version");
    assert!((3..=5).contains(&tries), "{tries} attempts");
}

#[tokio::test]
async fn forbidden_is_denied_with_the_server_message() {
    let e = env().await;
    e.fake.insert(deployment("shop", "web", 2, "nginx:1.26"));
    e.fake.fail_next("GET", "/deployments/web/scale", 403, 1);
    let err = e.k8s.scale("shop", "web", 3).await.unwrap_err();
    assert!(
        matches!(&err, CapError::Denied(m) if m.contains("fakekube: injected failure")),
        "{err:?}"
    );
    // Not retried, nothing written.
    assert_eq!(
        requests_matching(&e.fake, "GET", "/deployments/web/scale"),
        1
    );
    assert_eq!(requests_matching(&e.fake, "PUT", "/scale"), 0);
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let dir = scratch_dir();
    let kubeconfig = dir.join("kubeconfig");
    {
        let fake = FakeKube::start().await.unwrap();
        fake.write_kubeconfig(&kubeconfig).unwrap();
    } // dropped: the port now refuses connections
    let settings = K8sSettings {
        kubeconfig: Some(kubeconfig),
        ..Default::default()
    };
    let k8s = LiveK8s::connect(settings, allow_all())
        .await
        .unwrap()
        .with_op_timeout(Duration::from_millis(500));
    let err = k8s.cluster_reachable().await.unwrap_err();
    assert!(matches!(err, CapError::Unavailable(_)), "{err:?}");
    let _ = std::fs::remove_dir_all(dir);
}
