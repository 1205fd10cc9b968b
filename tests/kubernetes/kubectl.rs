//! The real `kubectl` and raw HTTP against the fake API server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use drhost_tests::fake_kube::FakeKube;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Output of one kubectl run.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs kubectl with `KUBECONFIG=kubeconfig`; panics if kubectl is missing.
async fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env(
            "HOME",
            kubeconfig.parent().expect("kubeconfig has a parent"),
        )
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("kubectl not found on PATH: install kubectl (Debian: kubernetes-client)")
        }
        Err(e) => panic!("cannot run kubectl: {e}"),
    };
    if let Some(input) = stdin {
        let mut si = child.stdin.take().expect("stdin is piped");
        si.write_all(input.as_bytes()).await.expect("write stdin");
        drop(si);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl timed out")
        .expect("kubectl output");
    let o = Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("$ kubectl {}\n{}{}", args.join(" "), o.stdout, o.stderr);
    o
}

/// Like [`kubectl`] but asserts success.
async fn kubectl_ok(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let o = kubectl(kubeconfig, args, stdin).await;
    assert!(
        o.ok,
        "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
        o.stdout, o.stderr
    );
    o.stdout
}

/// A per-test scratch directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fakekube-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn backend_deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "backend", "namespace": "shop", "labels": {"app": "backend"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "backend"}},
            "template": {
                "metadata": {"labels": {"app": "backend"}},
                "spec": {"containers": [{"name": "backend", "image": "shop/backend:1.0"}]},
            },
        },
    })
}

/// Starts a server seeded with namespace `shop` and deployment `backend`, and writes a kubeconfig.
async fn seeded(name: &str) -> (FakeKube, PathBuf) {
    let kube = FakeKube::start().await.expect("start fake server");
    kube.insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
    kube.insert(backend_deployment());
    let cfg = scratch(name).join("kubeconfig");
    kube.write_kubeconfig(&cfg).expect("write kubeconfig");
    (kube, cfg)
}

fn deployment(kube: &FakeKube) -> Value {
    kube.get("apps/v1", "Deployment", Some("shop"), "backend")
        .expect("deployment exists")
}

fn image(dep: &Value) -> &str {
    dep["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or("")
}

fn revision(dep: &Value) -> &str {
    dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_scale_set_image_history_undo_status() {
    let (kube, cfg) = seeded("rollout").await;

    // get -o json
    let out = kubectl_ok(
        &cfg,
        &["get", "deploy", "-n", "shop", "backend", "-o", "json"],
        None,
    )
    .await;
    let dep: Value = serde_json::from_str(&out).expect("kubectl printed JSON");
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(revision(&dep), "1");

    // plain table output
    let out = kubectl_ok(&cfg, &["get", "deploy", "-n", "shop"], None).await;
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{out}"
    );
    assert!(out.contains("backend   2/2"), "{out}");
    let out = kubectl_ok(&cfg, &["get", "ns", "shop", "--no-headers"], None).await;
    assert!(out.starts_with("shop") && out.contains("Active"), "{out}");

    // scale
    let out = kubectl_ok(
        &cfg,
        &["scale", "deploy/backend", "-n", "shop", "--replicas=5"],
        None,
    )
    .await;
    assert!(out.contains("scaled"), "{out}");
    assert_eq!(deployment(&kube)["spec"]["replicas"], 5);
    assert!(
        kube.requests()
            .iter()
            .any(|(m, p, _)| m == "PATCH" && p.contains("/deployments/backend/scale")),
        "kubectl scale used the scale subresource"
    );

    // set image -> revision 2
    kubectl_ok(
        &cfg,
        &[
            "set",
            "image",
            "deploy/backend",
            "-n",
            "shop",
            "backend=shop/backend:2.0",
        ],
        None,
    )
    .await;
    let dep = deployment(&kube);
    assert_eq!(image(&dep), "shop/backend:2.0");
    assert_eq!(revision(&dep), "2");
    assert_eq!(dep["spec"]["replicas"], 5);
    kubectl_ok(
        &cfg,
        &[
            "rollout",
            "status",
            "deploy/backend",
            "-n",
            "shop",
            "--timeout=10s",
        ],
        None,
    )
    .await;

    // history lists 1 and 2
    let out = kubectl_ok(
        &cfg,
        &["rollout", "history", "deploy/backend", "-n", "shop"],
        None,
    )
    .await;
    let revs: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(revs, vec!["1", "2"], "{out}");

    // undo -> back to 1.0 as revision 3
    let out = kubectl_ok(
        &cfg,
        &["rollout", "undo", "deploy/backend", "-n", "shop"],
        None,
    )
    .await;
    assert!(out.contains("rolled back"), "{out}");
    let dep = deployment(&kube);
    assert_eq!(image(&dep), "shop/backend:1.0");
    assert_eq!(revision(&dep), "3");
    let out = kubectl_ok(
        &cfg,
        &[
            "rollout",
            "status",
            "deploy/backend",
            "-n",
            "shop",
            "--timeout=10s",
        ],
        None,
    )
    .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let out = kubectl_ok(
        &cfg,
        &["rollout", "history", "deploy/backend", "-n", "shop"],
        None,
    )
    .await;
    assert!(
        out.contains('3') && out.contains('2') && !out.contains("\n1 "),
        "{out}"
    );
    // Exactly two ReplicaSets: the 1.0 one (revision 3, current) and the 2.0 one.
    let out = kubectl_ok(&cfg, &["get", "rs", "-n", "shop", "-o", "json"], None).await;
    let rs: Value = serde_json::from_str(&out).expect("rs list JSON");
    assert_eq!(rs["items"].as_array().map(Vec::len), Some(2), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rollout_status_times_out_when_never_ready() {
    let (kube, cfg) = seeded("never").await;
    kube.never_ready("shop", "backend");
    let o = kubectl(
        &cfg,
        &[
            "rollout",
            "status",
            "deploy/backend",
            "-n",
            "shop",
            "--timeout=2s",
        ],
        None,
    )
    .await;
    assert!(!o.ok, "rollout status must fail: {}", o.stdout);
    assert!(o.stdout.contains("Waiting"), "{}", o.stdout);
}

const MANIFEST_V1: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
data:
  mode: blue
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: shop
stringData:
  password: hunter2
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: frontend
  namespace: shop
spec:
  replicas: 1
  selector:
    matchLabels:
      app: frontend
  template:
    metadata:
      labels:
        app: frontend
    spec:
      containers:
      - name: frontend
        image: shop/frontend:1.0
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply_get_delete() {
    let (kube, cfg) = seeded("apply").await;
    let apply = ["apply", "--server-side", "--validate=false", "-f", "-"];
    let out = kubectl_ok(&cfg, &apply, Some(MANIFEST_V1)).await;
    assert!(
        out.contains("configmap/settings serverside-applied"),
        "{out}"
    );
    let cm = kube
        .get("v1", "ConfigMap", Some("shop"), "settings")
        .expect("configmap created");
    assert_eq!(cm["data"]["mode"], "blue");
    assert_eq!(
        cm["metadata"]["managedFields"][0]["manager"], "kubectl",
        "{cm}"
    );
    let secret = kube
        .get("v1", "Secret", Some("shop"), "creds")
        .expect("secret created");
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
    let fe = kube
        .get("apps/v1", "Deployment", Some("shop"), "frontend")
        .expect("deployment created");
    assert_eq!(revision(&fe), "1");
    assert!(
        kube.requests()
            .iter()
            .any(|(m, _, ct)| m == "PATCH" && ct.starts_with("application/apply-patch+yaml")),
        "server-side apply sends apply patches"
    );

    // Apply again with changes: updated in place.
    let v2 = MANIFEST_V1
        .replace("mode: blue", "mode: green\n  extra: x")
        .replace("frontend:1.0", "frontend:1.1");
    kubectl_ok(&cfg, &apply, Some(&v2)).await;
    let cm = kube
        .get("v1", "ConfigMap", Some("shop"), "settings")
        .expect("configmap");
    assert_eq!(cm["data"]["mode"], "green");
    assert_eq!(cm["data"]["extra"], "x");
    assert_eq!(
        cm["metadata"]["managedFields"][0]["fieldsV1"],
        json!({"f:data": {"f:mode": {}, "f:extra": {}}})
    );
    // A field dropped from the applied configuration is removed.
    kubectl_ok(&cfg, &apply, Some(MANIFEST_V1)).await;
    let cm = kube
        .get("v1", "ConfigMap", Some("shop"), "settings")
        .expect("configmap");
    assert_eq!(cm["data"], json!({"mode": "blue"}));
    kubectl_ok(&cfg, &apply, Some(&v2)).await;
    let fe = kube
        .get("apps/v1", "Deployment", Some("shop"), "frontend")
        .expect("deployment");
    assert_eq!(image(&fe), "shop/frontend:1.1");
    // 1.0 (rev 1) -> 1.1 (rev 2) -> 1.0 again (rev 3) -> 1.1 again (rev 4).
    assert_eq!(revision(&fe), "4");

    // get secret
    let out = kubectl_ok(&cfg, &["get", "secret", "-n", "shop"], None).await;
    assert!(out.contains("creds"), "{out}");
    let out = kubectl_ok(
        &cfg,
        &[
            "get",
            "secret",
            "creds",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.password}",
        ],
        None,
    )
    .await;
    assert_eq!(out.trim(), "aHVudGVyMg==");

    // delete configmap
    let out = kubectl_ok(
        &cfg,
        &["delete", "configmap", "settings", "-n", "shop"],
        None,
    )
    .await;
    assert!(out.contains("deleted"), "{out}");
    assert!(
        kube.get("v1", "ConfigMap", Some("shop"), "settings")
            .is_none()
    );
    let o = kubectl(&cfg, &["get", "configmap", "settings", "-n", "shop"], None).await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains("NotFound") || o.stderr.contains("not found"),
        "{}",
        o.stderr
    );
}

// ---------------------------------------------------------------- raw HTTP

/// A response from [`http`].
struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn host(kube: &FakeKube) -> String {
    kube.url().trim_start_matches("http://").to_string()
}

fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = raw.split_once("\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            return out;
        }
        out.push_str(&rest[..n]);
        raw = rest[n..].trim_start_matches("\r\n");
    }
}

/// A minimal HTTP/1.1 client (one request per connection).
async fn http(kube: &FakeKube, method: &str, path: &str, ct: &str, body: &str) -> Resp {
    let mut s = TcpStream::connect(host(kube)).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        host(kube),
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp { status, body }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_put_with_stale_resource_version_conflicts() {
    let (kube, _cfg) = seeded("stale").await;
    let path = "/apis/apps/v1/namespaces/shop/deployments/backend";
    let dep = http(&kube, "GET", path, "", "").await.json();
    let mut stale = dep.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let r = http(&kube, "PUT", path, "application/json", &stale.to_string()).await;
    assert_eq!(r.status, 409);
    let st = r.json();
    assert_eq!(st["kind"], "Status");
    assert_eq!(st["reason"], "Conflict");
    assert_eq!(st["code"], 409);

    // With the current resourceVersion the update goes through.
    let mut fresh = dep;
    fresh["metadata"]["labels"]["tier"] = json!("api");
    let r = http(&kube, "PUT", path, "application/json", &fresh.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(deployment(&kube)["metadata"]["labels"]["tier"], "api");

    // Create of an existing object: AlreadyExists.
    let r = http(
        &kube,
        "POST",
        "/apis/apps/v1/namespaces/shop/deployments",
        "application/json",
        &backend_deployment().to_string(),
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["reason"], "AlreadyExists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_not_found_status_shape() {
    let (kube, _cfg) = seeded("notfound").await;
    let r = http(
        &kube,
        "GET",
        "/apis/apps/v1/namespaces/shop/deployments/x",
        "",
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "deployments.apps \"x\" not found", "reason": "NotFound",
            "details": {"name": "x", "group": "apps", "kind": "deployments"}, "code": 404,
        })
    );
    let r = http(
        &kube,
        "GET",
        "/api/v1/namespaces/shop/configmaps/nope",
        "",
        "",
    )
    .await;
    assert_eq!(r.json()["message"], "configmaps \"nope\" not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_watch_delivers_modified_after_scale() {
    let (kube, _cfg) = seeded("watch").await;
    let list = http(
        &kube,
        "GET",
        "/apis/apps/v1/namespaces/shop/deployments",
        "",
        "",
    )
    .await;
    let rv = list.json()["metadata"]["resourceVersion"]
        .as_str()
        .expect("list resourceVersion")
        .to_string();
    let mut s = TcpStream::connect(host(&kube)).await.expect("connect");
    let req = format!(
        "GET /apis/apps/v1/namespaces/shop/deployments?watch=true&resourceVersion={rv}&fieldSelector=metadata.name%3Dbackend&timeoutSeconds=10 HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("send watch");
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.expect("read watch");
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&buf).contains("\"replicas\":7") {
                break;
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = http(
        &kube,
        "PATCH",
        "/apis/apps/v1/namespaces/shop/deployments/backend/scale",
        "application/merge-patch+json",
        r#"{"spec":{"replicas":7}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["kind"], "Scale");
    let raw = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("watch delivered in time")
        .expect("reader task");
    assert!(raw.contains("transfer-encoding: chunked"), "{raw}");
    let body = dechunk(raw.split_once("\r\n\r\n").expect("head").1);
    let events: Vec<Value> = body
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("event JSON"))
        .collect();
    assert!(
        events.iter().any(|e| e["type"] == "MODIFIED"
            && e["object"]["spec"]["replicas"] == 7
            && e["object"]["metadata"]["name"] == "backend"),
        "{body}"
    );
    assert!(events.iter().all(|e| e["object"]["kind"] == "Deployment"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_discovery_plain_and_aggregated() {
    let kube = FakeKube::start().await.expect("start");
    let groups = http(&kube, "GET", "/apis", "", "").await.json();
    assert_eq!(groups["kind"], "APIGroupList");
    let names: Vec<&str> = groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(names, ["apps", "coordination.k8s.io", "networking.k8s.io"]);
    let apps = http(&kube, "GET", "/apis/apps/v1", "", "").await.json();
    let scale = apps["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == "deployments/scale")
        .expect("deployments/scale")
        .clone();
    assert_eq!(
        (&scale["group"], &scale["version"], &scale["kind"]),
        (&json!("autoscaling"), &json!("v1"), &json!("Scale"))
    );
    let core = http(&kube, "GET", "/api/v1", "", "").await.json();
    assert!(
        core["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .any(|r| {
                r["name"] == "namespaces"
                    && r["namespaced"] == false
                    && r["singularName"] == "namespace"
            })
    );
    assert_eq!(
        http(&kube, "GET", "/version", "", "").await.json()["gitVersion"],
        "v1.32.0"
    );

    // Aggregated discovery when asked for it.
    let mut s = TcpStream::connect(host(&kube)).await.expect("connect");
    s.write_all(
        b"GET /apis HTTP/1.1\r\nHost: x\r\nAccept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    assert!(raw.contains("as=APIGroupDiscoveryList"), "{raw}");
    let doc: Value =
        serde_json::from_str(raw.split_once("\r\n\r\n").expect("body").1).expect("JSON");
    assert_eq!(doc["kind"], "APIGroupDiscoveryList");
    assert_eq!(doc["items"][0]["metadata"]["name"], "apps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_fail_next_injects_errors() {
    let (kube, cfg) = seeded("fault").await;
    kube.fail_next("GET", "/deployments/backend", 500, 1);
    let path = "/apis/apps/v1/namespaces/shop/deployments/backend";
    let r = http(&kube, "GET", path, "", "").await;
    assert_eq!(r.status, 500);
    let st = r.json();
    assert_eq!(st["kind"], "Status");
    assert_eq!(st["reason"], "InternalError");
    // Only one failure was injected.
    assert_eq!(http(&kube, "GET", path, "", "").await.status, 200);

    // kubectl sees an injected 403.
    kube.fail_next("get", "/deployments/backend", 403, 1);
    let o = kubectl(&cfg, &["get", "deploy", "backend", "-n", "shop"], None).await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains("Forbidden") || o.stderr.contains("forbidden"),
        "{}",
        o.stderr
    );
    assert!(
        kube.requests()
            .iter()
            .any(|(m, p, _)| m == "GET" && p.starts_with(path))
    );
}
