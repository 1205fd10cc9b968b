//! `drhost exec k8s ...` and `drhost doctor` end to end: the real binary,
//! a runbook with `[backends.k8s]` pointing at the fake API server, the
//! runbook's grants deciding, the audit log recording.

use std::path::{Path, PathBuf};
use std::process::Output;

use drhost_tests::fake_kube::{FakeKube, deployment};
use serde_json::{Value, json};

/// Runs the drhost binary with `env` added, off the async runtime (the
/// fake server keeps serving meanwhile).
async fn drhost(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(drhost_tests::drhost_bin());
    cmd.args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("drhost runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A runbook granting shop/backend, the `infra` bundle (ConfigMaps in
/// `shop` only) and the secret `shop/api-token` from source `new-token`.
fn setup(fake: &FakeKube) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    std::fs::create_dir(dir.path().join("manifests")).expect("mkdir");
    std::fs::write(
        dir.path().join("manifests/infra.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-config\n  namespace: shop\ndata:\n  LOG_LEVEL: debug\n",
    )
    .expect("bundle");
    std::fs::write(
        dir.path().join("manifests/sneaky.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\n  namespace: shop\ndata: {}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: elsewhere\n  namespace: kube-system\ndata: {}\n",
    )
    .expect("bundle");
    let runbook = dir.path().join("runbook.toml");
    std::fs::write(
        &runbook,
        r#"
[plugin]
path = "unused.wasm"
require = "exec-only"

[grants.k8s]
operations = ["get-deployment", "scale", "rollout-undo", "wait-ready", "apply", "replace-secret", "cluster-reachable"]
deployments = ["shop/backend"]
bundles = ["infra", "sneaky"]
kinds = ["ConfigMap"]
namespaces = ["shop"]
secrets = ["shop/api-token"]
secret_sources = ["new-token", "missing"]

[backends.k8s]
kubeconfig = "kubeconfig"
manifest_dir = "manifests"

[backends.k8s.secret_sources]
new-token = { env = "DRHOST_TEST_NEW_TOKEN" }
missing = { file = "no-such-file.yaml" }
"#,
    )
    .expect("runbook");
    (dir, runbook)
}

#[tokio::test]
async fn exec_k8s_operations_go_through_grants_and_reach_the_cluster() {
    let fake = FakeKube::start().await.expect("fake API server");
    fake.insert(deployment("shop", "backend", 2, "shop/backend:1.0"));
    fake.insert(deployment("shop", "other", 1, "shop/other:1.0"));
    let (dir, runbook) = setup(&fake);
    let d = dir.path();
    let rb = runbook.to_str().expect("utf-8");
    let audit = d.join("audit");
    let audit = audit.to_str().expect("utf-8");
    let exec = |extra: &[&str]| {
        let mut args = vec![
            "exec",
            "--config",
            rb,
            "--audit-dir",
            audit,
            "--yes",
            "--timeout",
            "20s",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>, env: Vec<(&'static str, &'static str)>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        drhost(d, &args, &env).await
    };

    let out = run(exec(&["k8s", "reachable"]), vec![]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("v1.32"), "{}", text(&out));

    let out = run(exec(&["k8s", "scale", "shop", "backend", "4"]), vec![]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["previous"], 2);
    let stored = fake
        .get("apps/v1", "Deployment", Some("shop"), "backend")
        .expect("exists");
    assert_eq!(stored["spec"]["replicas"], 4);

    // Not granted: denied before anything reaches the server.
    let before = fake.requests().len();
    let out = run(exec(&["k8s", "scale", "shop", "other", "0"]), vec![]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("denied") && text(&out).contains("shop/other"),
        "{}",
        text(&out)
    );
    assert_eq!(
        fake.requests().len(),
        before,
        "a denied call reached the API server"
    );
    let other = fake
        .get("apps/v1", "Deployment", Some("shop"), "other")
        .expect("exists");
    assert_eq!(other["spec"]["replicas"], 1);

    let out = run(exec(&["k8s", "wait-ready", "shop", "backend"]), vec![]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (v["desired"].clone(), v["ready"].clone()),
        (json!(4), json!(4))
    );

    // A bundle: applied; one with an object outside the granted namespaces:
    // refused as a whole, nothing sent.
    let out = run(exec(&["k8s", "apply", "infra"]), vec![]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let cm = fake
        .get("v1", "ConfigMap", Some("shop"), "app-config")
        .expect("applied");
    assert_eq!(cm["data"]["LOG_LEVEL"], "debug");
    let out = run(exec(&["k8s", "apply", "sneaky"]), vec![]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("kube-system"), "{}", text(&out));
    assert!(fake.get("v1", "ConfigMap", Some("shop"), "ok").is_none());
    assert!(
        fake.get("v1", "ConfigMap", Some("kube-system"), "elsewhere")
            .is_none()
    );

    // The secret's bytes come from the operator's environment, never from
    // argv, and never reach the audit log.
    let out = run(
        exec(&["k8s", "replace-secret", "shop", "api-token", "new-token"]),
        vec![("DRHOST_TEST_NEW_TOKEN", r#"{"token": "s3cr3t-value"}"#)],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let secret = fake
        .get("v1", "Secret", Some("shop"), "api-token")
        .expect("created");
    assert_eq!(secret["data"]["token"], "czNjcjN0LXZhbHVl");
    let out = run(
        exec(&["k8s", "replace-secret", "shop", "api-token", "new-token"]),
        vec![("DRHOST_TEST_NEW_TOKEN", r#"{"token": 12345}"#)],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("DRHOST_TEST_NEW_TOKEN") && !text(&out).contains("12345"),
        "{}",
        text(&out)
    );
    let mut logs = String::new();
    for e in std::fs::read_dir(d.join("audit")).expect("audit dir") {
        logs.push_str(&std::fs::read_to_string(e.expect("entry").path()).expect("read"));
    }
    assert!(logs.contains("replace-secret"), "audit lacks the call");
    assert!(!logs.contains("s3cr3t-value") && !logs.contains("czNjcjN0LXZhbHVl"));

    // Rollout undo after an image change.
    let mut changed = fake
        .get("apps/v1", "Deployment", Some("shop"), "backend")
        .expect("exists");
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = json!("shop/backend:2.0");
    changed["metadata"]
        .as_object_mut()
        .expect("meta")
        .remove("resourceVersion");
    fake.insert(changed);
    let out = run(exec(&["k8s", "rollout-undo", "shop", "backend"]), vec![]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let now = fake
        .get("apps/v1", "Deployment", Some("shop"), "backend")
        .expect("exists");
    assert_eq!(
        now["spec"]["template"]["spec"]["containers"][0]["image"],
        "shop/backend:1.0"
    );
    let out = run(exec(&["k8s", "status", "shop", "backend"]), vec![]).await;
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["images"], json!(["shop/backend:1.0"]));
    assert_eq!(v["revision"], 3);
}

#[tokio::test]
async fn doctor_reads_everything_and_reports_what_is_missing() {
    let fake = FakeKube::start().await.expect("fake API server");
    fake.insert(deployment("shop", "backend", 2, "shop/backend:1.0"));
    let (dir, runbook) = setup(&fake);
    let rb = runbook.to_str().expect("utf-8");
    // The fake's controller makes the pods ready shortly after the insert.
    for _ in 0..100 {
        let d = fake
            .get("apps/v1", "Deployment", Some("shop"), "backend")
            .expect("exists");
        if d["status"]["readyReplicas"] == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = drhost(dir.path(), &["doctor", "--config", rb, "--json"], &[]).await;
    // The `missing` file source and the unset variable fail the doctor.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let checks: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let status = |subject: &str| {
        checks
            .iter()
            .find(|c| c["subject"] == subject)
            .map(|c| c["status"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("no check of {subject}: {checks:?}"))
    };

    assert_eq!(status("API server"), "ok");
    assert_eq!(status("deployment shop/backend"), "ok");
    assert_eq!(status("bundle infra"), "ok");
    assert_eq!(status("secret source new-token"), "fail");
    assert_eq!(status("secret source missing"), "fail");
    // Reads only.
    let writes: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|(m, _, _)| m != "GET")
        .collect();
    assert!(writes.is_empty(), "doctor wrote: {writes:?}");

    // With the variable set and the file present, everything passes.
    std::fs::write(dir.path().join("no-such-file.yaml"), "k: v\n").expect("write");
    let out = drhost(
        dir.path(),
        &["doctor", "--config", rb],
        &[("DRHOST_TEST_NEW_TOKEN", "{}")],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("ok   k8s"), "{}", text(&out));

    // A cluster that is gone: the doctor says so and fails.
    drop(fake);
    let out = drhost(
        dir.path(),
        &["doctor", "--config", rb],
        &[("DRHOST_TEST_NEW_TOKEN", "{}")],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("FAIL k8s"), "{}", text(&out));
}
