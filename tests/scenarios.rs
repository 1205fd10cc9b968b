//! The scenarios of the DR runbook end to end on real backends, nothing
//! simulated: the fake Kubernetes API server (held to `kubectl` in
//! tests/kubernetes.rs), a real S3 server (s3s-fs, SigV4), the real
//! PostgreSQL server, and a real HTTP server for health endpoints and the
//! notification webhook. Each runs the shipped runbook config from
//! `runbooks/` with only its `[backends]` pointed at those servers.
//! (database-corruption's run is in tests/postgres.rs, next to the
//! corruption it repairs.)
//!
//! Needs PostgreSQL on `$PGHOST` (default 127.0.0.1) as `$PGUSER` (default
//! postgres): `.ci/ensure-postgres` starts it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use drhost_tests::fake_kube::{FakeKube, deployment};
use drhost_tests::pg::{self, psql_at as psql};
use drhost_tests::s3_server::S3Server;
use drhost_tests::{drhost_bin, plugin, repo_root};

const BUCKET: &str = "resume-screening-backups";

/// Databases named `prefix%`, dropped when the test ends.
struct Databases(String);
impl Drop for Databases {
    fn drop(&mut self) {
        let names = psql(
            "postgres",
            &format!(
                "SELECT datname FROM pg_database WHERE datname LIKE '{}%'",
                self.0
            ),
        );
        for name in names.lines().filter(|l| !l.is_empty()) {
            let _ = pg::env(&mut Command::new("psql"))
                .args(["-X", "-q", "-d", "postgres", "-c"])
                .arg(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .output();
        }
    }
}

/// A health endpoint server: `/health`, `/frontend`, `/api/candidates`
/// answer with `status` (shared, so a test can make them fail), `/hook`
/// records POST bodies.
struct Http {
    addr: SocketAddr,
    status: Arc<Mutex<u16>>,
    posts: Arc<Mutex<Vec<String>>>,
    /// Requests to the health endpoints.
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

async fn http() -> Http {
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    let status = Arc::new(Mutex::new(200u16));
    let posts = Arc::new(Mutex::new(Vec::new()));
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let answer = move |body: &'static str, status: Arc<Mutex<u16>>| {
        let counter = counter.clone();
        move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let code = *status.lock().expect("lock");
            async move {
                (
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    body,
                )
            }
        }
    };
    let recorded = posts.clone();
    let app = axum::Router::new()
        .route("/health", get(answer("ok", status.clone())))
        .route("/frontend", get(answer("<html>ok</html>", status.clone())))
        .route(
            "/api/candidates",
            get(answer("{\"results\": [{\"id\": 1}]}", status.clone())),
        )
        .route(
            "/hook",
            post(move |body: String| {
                let recorded = recorded.clone();
                async move {
                    recorded.lock().expect("lock").push(body);
                    "ok"
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Http {
        addr,
        status,
        posts,
        hits,
    }
}

/// Everything a scenario runs against.
struct Scene {
    dir: tempfile::TempDir,
    kube: FakeKube,
    s3: S3Server,
    http: Http,
    /// The database the runbook restores (`<prefix>db`).
    database: String,
    _databases: Databases,
}

/// Servers up; a source database with 500 candidates dumped (`pg_dump
/// -Fc`) into the bucket as `postgres/backup_latest.dump`.
async fn scene(tag: &str) -> Scene {
    let prefix = format!("drhost_{tag}_{}_", std::process::id());
    let databases = Databases(prefix.clone());
    let source = format!("{prefix}src");
    psql("postgres", &format!("CREATE DATABASE \"{source}\""));
    psql(
        &source,
        "CREATE TABLE candidates (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO candidates SELECT g, 'candidate ' || g FROM generate_series(1, 500) g;",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let dump = dir.path().join("backup.dump");
    let out = pg::env(&mut Command::new("pg_dump"))
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(&source)
        .output()
        .expect("pg_dump is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s3 = S3Server::start().await.expect("S3 server");
    s3.create_bucket(BUCKET).await.expect("bucket");
    s3.put_object(
        BUCKET,
        "postgres/backup_latest.dump",
        std::fs::read(&dump).expect("dump"),
    )
    .await
    .expect("upload");
    let kube = FakeKube::start().await.expect("fake API server");
    kube.set_ready_delay(Duration::from_millis(30));
    Scene {
        dir,
        kube,
        s3,
        http: http().await,
        database: format!("{prefix}db"),
        _databases: databases,
    }
}

impl Scene {
    /// `runbooks/<scenario>.toml` with the plugin built from `plugins/`,
    /// the database renamed, and `[backends]` pointed at the scene, written
    /// next to `manifests/` copied from `runbooks/manifests/<scenario>`.
    fn runbook(&self, scenario: &str, secret_sources: &str) -> PathBuf {
        let root = repo_root();
        let text = std::fs::read_to_string(root.join(format!("runbooks/{scenario}.toml")))
            .expect("runbook");
        let wasm = format!(
            "../plugins/target/wasm32-wasip2/release/{}.wasm",
            scenario.replace('-', "_")
        );
        let text = text
            .replace(&wasm, plugin(scenario).to_str().expect("utf-8"))
            .replace("\"resume_screening\"", &format!("\"{}\"", self.database));
        let manifests = root.join(format!("runbooks/manifests/{scenario}"));
        let backends = self.backends(&manifests, secret_sources);
        let path = self.dir.path().join(format!("{scenario}.toml"));
        std::fs::write(&path, format!("{text}{backends}")).expect("write runbook");
        path
    }

    /// The cluster-failure runbook, its secret source a file in the scene
    /// (`DATABASE_PASSWORD: from-vault`).
    fn cluster_failure_runbook(&self) -> PathBuf {
        let secrets = self.dir.path().join("vault.yaml");
        std::fs::write(
            &secrets,
            "DATABASE_PASSWORD: from-vault\nJWT_SIGNING_KEY: k1\n",
        )
        .expect("secret source");
        self.runbook(
            "cluster-failure",
            &format!(
                "vault-resume-screening = {{ file = \"{}\" }}",
                secrets.display()
            ),
        )
    }

    /// `[backends]` pointed at the scene's servers.
    fn backends(&self, manifests: &Path, secret_sources: &str) -> String {
        let kubeconfig = self.dir.path().join("kubeconfig");
        self.kube.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let http = self.http.addr;
        format!(
            "\n[backends.k8s]\nkubeconfig = \"kubeconfig\"\nmanifest_dir = \"{}\"\n\
             [backends.k8s.secret_sources]\n{secret_sources}\n\n\
             [backends.postgres]\nhost = \"{}\"\nuser = \"{}\"\njobs = 2\n\n\
             [backends.object_store]\nendpoint = \"{}\"\npath_style = true\n\n\
             [backends.health.targets.backend-api]\nurl = \"http://{http}/health\"\nallow_private = true\n\n\
             [backends.health.targets.frontend]\nurl = \"http://{http}/frontend\"\nallow_private = true\n\n\
             [backends.health.targets.backend-api-candidates]\nurl = \"http://{http}/api/candidates\"\nbody_contains = \"results\"\nallow_private = true\n\n\
             [backends.notify.channels.status-page]\nurl = \"http://{http}/hook\"\nallow_private = true\nrequired = true\n\n\
             [backends.notify.channels.security-incident]\nurl = \"http://{http}/hook\"\nallow_private = true\nrequired = true\n",
            manifests.display(),
            pg::host(),
            pg::user(),
            self.s3.endpoint
        )
    }

    /// `drhost ARGS` with the S3 credentials and PostgreSQL settings in its
    /// environment; returns (success, stdout+stderr).
    async fn drhost(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = tokio::process::Command::new(drhost_bin());
        cmd.args(args)
            .env("DRHOST_CACHE_DIR", self.dir.path().join("cache"))
            .env("PGHOST", pg::host())
            .env("PGUSER", pg::user())
            .stdin(std::process::Stdio::null());
        for (k, v) in self.s3.env() {
            cmd.env(k, v);
        }
        let out = cmd.output().await.expect("run drhost");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `drhost run RUNBOOK --yes --audit-dir <dir>/AUDIT EXTRA...`;
    /// returns (success, output, audit dir).
    async fn run_yes(
        &self,
        runbook: &Path,
        audit: &str,
        extra: &[&str],
    ) -> (bool, String, PathBuf) {
        let audit = self.dir.path().join(audit);
        let mut args = vec![
            "run",
            runbook.to_str().expect("utf-8"),
            "--yes",
            "--audit-dir",
            audit.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        let (ok, out) = self.drhost(&args).await;
        (ok, out, audit)
    }

    fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    fn deployment_in(&self, ns: &str, name: &str) -> Value {
        self.kube
            .get("apps/v1", "Deployment", Some(ns), name)
            .unwrap_or_else(|| panic!("deployment {ns}/{name} missing"))
    }

    fn deployment(&self, name: &str) -> Value {
        self.kube
            .get("apps/v1", "Deployment", Some("resume-screening"), name)
            .unwrap_or_else(|| panic!("deployment {name} missing"))
    }

    fn rows(&self) -> String {
        psql(&self.database, "SELECT count(*) FROM candidates")
    }
}

/// The one audit log in `dir`.
fn audit_log(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("audit dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".audit.jsonl"))
        .expect("an audit log")
}

/// The run's audit log verifies (`drhost audit verify`).
fn assert_audit_verifies(audit: &Path) {
    let log = audit_log(audit);
    let verify = Command::new(drhost_bin())
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .expect("audit verify");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

fn decoded_secret(kube: &FakeKube, key: &str) -> String {
    use base64::Engine;
    let secret = kube
        .get(
            "v1",
            "Secret",
            Some("resume-screening"),
            "resume-screening-secrets",
        )
        .expect("the secret exists");
    let b64 = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {secret}"));
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64"),
    )
    .expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failure_rebuilds_an_empty_cluster_and_restores_the_database() {
    let sc = scene("cf").await;
    let runbook = sc.cluster_failure_runbook();
    // The trail leaves the machine: copied to the bucket after every step.
    let text = std::fs::read_to_string(&runbook).expect("runbook");
    std::fs::write(
        &runbook,
        text.replacen(
            "[run]\n",
            "[run]\naudit_mirror = \"s3://resume-screening-backups/audit/\"\naudit_mirror_each_step = true\n",
            1,
        ),
    )
    .expect("write runbook");
    let audit = sc.audit_dir();
    let (ok, out) = sc
        .drhost(&[
            "run",
            runbook.to_str().expect("utf-8"),
            "--yes",
            "--audit-dir",
            audit.to_str().expect("utf-8"),
        ])
        .await;
    assert!(ok, "drhost run failed:\n{out}");
    assert!(
        out.contains("audit log copied to s3://resume-screening-backups/audit/"),
        "{out}"
    );
    let log = audit_log(&audit);
    let name = log
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        std::fs::read(sc.s3.object_path(BUCKET, &format!("audit/{name}"))).expect("the copy"),
        std::fs::read(&log).expect("the log"),
        "the bucket holds the whole log"
    );

    // Infrastructure from the shipped manifests, the secret from its source.
    assert!(
        sc.kube
            .get("v1", "Namespace", None, "resume-screening")
            .is_some(),
        "namespace not created"
    );
    assert!(
        sc.kube
            .get(
                "v1",
                "ConfigMap",
                Some("resume-screening"),
                "resume-screening-config"
            )
            .is_some(),
        "configmap not applied"
    );
    assert_eq!(decoded_secret(&sc.kube, "DATABASE_PASSWORD"), "from-vault");
    // The applications, at the runbook's counts and ready.
    for (name, replicas) in [("backend", 3), ("frontend", 2), ("celery-worker", 2)] {
        let d = sc.deployment(name);
        assert_eq!(d["spec"]["replicas"], replicas, "{name}");
        assert_eq!(d["status"]["readyReplicas"], replicas, "{name}");
    }
    // Every applied object went through server-side apply as drhost.
    assert!(
        sc.kube.requests().iter().any(|(m, p, ct)| m == "PATCH"
            && p.contains("fieldManager=drhost")
            && ct.contains("apply-patch")),
        "no server-side apply seen"
    );
    // The database is back with its rows; the status page was told.
    assert_eq!(sc.rows(), "500");
    let posts = sc.http.posts.lock().expect("lock").clone();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_audit_verifies(&audit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_rollback_undoes_a_bad_deploy_and_stops_when_the_previous_one_is_bad_too() {
    let sc = scene("ar").await;
    // Two revisions each: a good one, then the bad deploy.
    for (name, replicas, good, bad) in [
        ("backend", 3, "rs/backend:2.4.0", "rs/backend:2.4.1"),
        ("frontend", 2, "rs/frontend:1.8.2", "rs/frontend:1.8.3"),
    ] {
        sc.kube
            .insert(deployment("resume-screening", name, replicas, good));
        tokio::time::sleep(Duration::from_millis(100)).await;
        sc.kube
            .insert(deployment("resume-screening", name, replicas, bad));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let d = sc.deployment(name);
        assert_eq!(
            d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2",
            "{name}: {d}"
        );
    }
    let runbook = sc.runbook("app-rollback", "");
    // The failing run below waits out the health timeout: keep it short.
    let text = std::fs::read_to_string(&runbook).expect("runbook");
    assert!(text.contains("health-timeout = \"90s\""), "{text}");
    std::fs::write(
        &runbook,
        text.replace("health-timeout = \"90s\"", "health-timeout = \"3s\""),
    )
    .expect("write runbook");
    // A drill against real backends is the same command without --mock:
    // real time, real calls, the same report.
    let audit = sc.audit_dir();
    let (ok, out) = sc
        .drhost(&[
            "drill",
            runbook.to_str().expect("utf-8"),
            "--audit-dir",
            audit.to_str().expect("utf-8"),
            "--format",
            "json",
        ])
        .await;
    assert!(ok, "drhost drill failed:\n{out}");
    let report_path = std::fs::read_dir(&audit)
        .expect("audit dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".drill.json"))
        .expect("a drill report");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("read")).expect("json");
    assert_eq!(report["simulated"], false);
    assert_eq!(report["outcome"], "completed");
    assert_eq!(report["audit"]["verified"], true);
    assert_eq!(
        report["calls"]
            .as_array()
            .expect("calls")
            .iter()
            .filter(|c| c["op"] == "k8s.rollout-undo" && c["status"] == "ok")
            .count(),
        2
    );
    for (name, good) in [
        ("backend", "rs/backend:2.4.0"),
        ("frontend", "rs/frontend:1.8.2"),
    ] {
        let d = sc.deployment(name);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"], good,
            "{name}"
        );
        assert_eq!(
            d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3",
            "{name}: the old template came back as revision 3"
        );
    }
    assert_audit_verifies(&audit);

    // Now the API fails even on the rolled-back version: the second run
    // rolls back once more (to the bad 2.4.1), sees it unhealthy, and stops
    // naming the revisions instead of going further back.
    *sc.http.status.lock().expect("lock") = 500;
    let audit2 = sc.dir.path().join("audit2");
    let (ok, out) = sc
        .drhost(&[
            "run",
            runbook.to_str().expect("utf-8"),
            "--yes",
            "--audit-dir",
            audit2.to_str().expect("utf-8"),
        ])
        .await;
    assert!(!ok, "the run should fail:\n{out}");
    assert!(out.contains("does NOT roll back further"), "{out}");
    let undos = sc
        .kube
        .requests()
        .into_iter()
        .filter(|(m, p, _)| m == "PATCH" && p.contains("/deployments/backend"))
        .count();
    assert_eq!(undos, 2, "one undo per run, never a third");
    assert_audit_verifies(&audit2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_breach_isolates_rotates_contains_and_restores_a_clean_backup() {
    let sc = scene("sb").await;
    sc.kube.insert(deployment(
        "resume-screening",
        "backend",
        3,
        "rs/backend:2.4.1",
    ));
    sc.kube.insert(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "resume-screening-secrets", "namespace": "resume-screening"},
        "data": {"DATABASE_PASSWORD": "c3RvbGVu"},
    }));
    // The compromised database: the backup's content plus the intruder's row.
    psql("postgres", &format!("CREATE DATABASE \"{}\"", sc.database));
    psql(
        &sc.database,
        "CREATE TABLE candidates (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO candidates SELECT g, 'candidate ' || g FROM generate_series(1, 500) g;
         INSERT INTO candidates VALUES (9999, 'backdoor');",
    );
    let rotated = sc.dir.path().join("rotated.yaml");
    std::fs::write(&rotated, "DATABASE_PASSWORD: rotated\n").expect("secret source");
    let runbook = sc.runbook(
        "security-breach",
        &format!("vault-rotated = {{ file = \"{}\" }}", rotated.display()),
    );
    // The operator's answers: findings, then a cut-off just after the
    // backup was taken (it is the only one, so it is chosen).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cutoff = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let fixture = sc.dir.path().join("operator.toml");
    std::fs::write(
        &fixture,
        format!(
            "description = \"security breach on real backends, the operator's answers scripted\"\n\
             live = [\"k8s\", \"postgres\", \"object-store\", \"health\", \"notify\"]\n\
             [operator]\nanswers = [\"SQL injection in /api/candidates/search; backdoor row inserted\", \"{cutoff}\"]\n\
             confirm = [true]\n"
        ),
    )
    .expect("fixture");
    let audit = sc.audit_dir();
    let (ok, out) = sc
        .drhost(&[
            "run",
            runbook.to_str().expect("utf-8"),
            "--mock",
            fixture.to_str().expect("utf-8"),
            "--yes",
            "--audit-dir",
            audit.to_str().expect("utf-8"),
        ])
        .await;
    assert!(ok, "drhost run failed:\n{out}");

    // Isolated then restored: two scale writes, back at 3 and ready.
    let scales: Vec<String> = sc
        .kube
        .requests()
        .into_iter()
        .filter(|(m, p, _)| m != "GET" && p.contains("/deployments/backend/scale"))
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    assert_eq!(scales.len(), 2, "{scales:?}");
    let d = sc.deployment("backend");
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["status"]["readyReplicas"], 3);
    // Credentials rotated from the source; logging and containment applied.
    assert_eq!(decoded_secret(&sc.kube, "DATABASE_PASSWORD"), "rotated");
    assert!(
        sc.kube
            .get(
                "networking.k8s.io/v1",
                "NetworkPolicy",
                Some("resume-screening"),
                "incident-deny-egress"
            )
            .is_some(),
        "containment policy not applied"
    );
    assert!(
        sc.kube
            .get(
                "v1",
                "ConfigMap",
                Some("resume-screening"),
                "resume-screening-logging"
            )
            .is_some(),
        "logging configmap not applied"
    );
    // The clean backup is in place (no backdoor) and the compromised
    // database is kept for forensics, backdoor included.
    assert_eq!(sc.rows(), "500");
    let kept = psql(
        "postgres",
        &format!(
            "SELECT datname FROM pg_database WHERE datname LIKE '{}_before_%'",
            sc.database
        ),
    );
    assert_eq!(kept.lines().count(), 1, "{kept}");
    assert_eq!(
        psql(kept.trim(), "SELECT name FROM candidates WHERE id = 9999"),
        "backdoor"
    );
    let posts = sc.http.posts.lock().expect("lock").clone();
    assert_eq!(posts.len(), 2, "incident opened and resolved: {posts:?}");
    assert_audit_verifies(&audit);
}

/// A Lease as another run would have left it in `resume-screening`,
/// renewed `renewed_ago` ago with a `ttl_s` TTL.
fn foreign_lease(renewed_ago: Duration, ttl_s: i64) -> Value {
    let renewed =
        humantime::format_rfc3339_micros(std::time::SystemTime::now() - renewed_ago).to_string();
    serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {
            "name": "drhost-run", "namespace": "resume-screening",
            "annotations": {
                "drhost.dev/operator": "bob",
                "drhost.dev/host": "ops-2",
                "drhost.dev/since": "2026-12-01T20:00:00Z",
            },
        },
        "spec": {
            "holderIdentity": "20261201T200000Z-b0b0",
            "leaseDurationSeconds": ttl_s,
            "acquireTime": renewed, "renewTime": renewed,
        },
    })
}

fn undo_patches(kube: &FakeKube) -> usize {
    kube.requests()
        .into_iter()
        .filter(|(m, p, _)| m == "PATCH" && p.contains("/deployments/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_namespace_refuses_a_second_run_until_the_lease_is_broken_or_expires() {
    let sc = scene("ls").await;
    for (name, good, bad) in [
        ("backend", "rs/backend:2.4.0", "rs/backend:2.4.1"),
        ("frontend", "rs/frontend:1.8.2", "rs/frontend:1.8.3"),
    ] {
        sc.kube
            .insert(deployment("resume-screening", name, 2, good));
        tokio::time::sleep(Duration::from_millis(100)).await;
        sc.kube.insert(deployment("resume-screening", name, 2, bad));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runbook = sc.runbook("app-rollback", "");
    // Another run holds the namespace, renewed a minute ago: refused
    // before the first mutating step, naming the holder; nothing changed.
    sc.kube.insert(foreign_lease(Duration::from_secs(60), 600));
    let (ok, out, _) = sc.run_yes(&runbook, "audit-held", &[]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("run 20261201T200000Z-b0b0 by bob on ops-2 since 2026-12-01T20:00:00Z"),
        "{out}"
    );
    assert!(out.contains("--break-lease"), "{out}");
    assert_eq!(undo_patches(&sc.kube), 0, "a refused run changed something");

    // --break-lease takes it, says whom it displaced, and releases it at
    // the end.
    let (ok, out, audit) = sc
        .run_yes(&runbook, "audit-broken", &["--break-lease"])
        .await;
    assert!(ok, "{out}");
    assert_eq!(undo_patches(&sc.kube), 2);
    let log = audit_log(&audit);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("BROKEN with --break-lease: run 20261201T200000Z-b0b0 by bob"),
        "{text}"
    );
    assert!(text.contains("lease on Kubernetes namespace resume-screening released"));
    assert_audit_verifies(&audit);
    assert!(
        sc.kube
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                Some("resume-screening"),
                "drhost-run"
            )
            .is_none(),
        "the lease was not released"
    );

    // A lease its holder stopped renewing (a dead run) is taken over.
    sc.kube.insert(foreign_lease(Duration::from_secs(3600), 60));
    let (ok, out, _) = sc.run_yes(&runbook, "audit-expired", &[]).await;
    assert!(ok, "{out}");
    assert!(out.contains("whose lease had expired"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_run_is_refused_and_break_lease_ends_its_session() {
    let sc = scene("lp").await;
    let secrets = sc.dir.path().join("vault.yaml");
    std::fs::write(&secrets, "DATABASE_PASSWORD: from-vault\n").expect("secret source");
    let runbook = sc.runbook(
        "cluster-failure",
        &format!(
            "vault-resume-screening = {{ file = \"{}\" }}",
            secrets.display()
        ),
    );
    // Another drhost run's session holds the database's run lock.
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(pg::host())
        .user(pg::user())
        .dbname("postgres")
        .application_name("drhost 20261201T200000Z-a11c alice@ops-3");
    let (holder, connection) = cfg.connect(tokio_postgres::NoTls).await.expect("connect");
    let holder_task = tokio::spawn(connection);
    let database = sc.database.clone();
    holder
        .execute(
            "SELECT pg_advisory_lock(hashtext('drhost-run:' || $1)::bigint)",
            &[&database],
        )
        .await
        .expect("lock");

    let audit = sc.audit_dir();
    let args = [
        "run",
        runbook.to_str().expect("utf-8"),
        "--yes",
        "--audit-dir",
        audit.to_str().expect("utf-8"),
    ];
    let (ok, out) = sc.drhost(&args).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "database {database} is leased to run 20261201T200000Z-a11c by alice on ops-3"
        )),
        "{out}"
    );
    assert!(
        sc.kube
            .get("v1", "Namespace", None, "resume-screening")
            .is_none(),
        "the refused run applied something"
    );

    let mut broken = args.to_vec();
    broken.push("--break-lease");
    let (ok, out) = sc.drhost(&broken).await;
    assert!(ok, "{out}");
    assert_eq!(sc.rows(), "500");
    // The displaced session was terminated.
    assert!(
        holder.simple_query("SELECT 1").await.is_err(),
        "the holder's session survived --break-lease"
    );
    holder_task.abort();
}

/// The policy-escape battery: the `prober` test plugin attempts, through
/// the real host, gate and backends, every way out of its grants we could
/// think of. Each attempt must come back `denied`, be audited, and reach
/// no backend: the fake API server sees no write and no request for
/// anything outside the grants, the health server no request, and no
/// attempt has a `call-intent` (the gate refuses before any backend is
/// polled) except the bundle whose objects the Kubernetes guard refuses
/// after discovery reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_policy_escapes_are_denied_audited_and_reach_no_backend() {
    let sc = scene("pe").await;
    sc.kube.insert(deployment(
        "resume-screening",
        "backend",
        2,
        "rs/backend:2.4.0",
    ));
    sc.kube
        .insert(deployment("kube-system", "coredns", 2, "coredns:1.11"));
    sc.kube.insert(deployment(
        "resume-screening",
        "frontend",
        2,
        "rs/frontend:1.8.2",
    ));
    let db = sc.database.clone();
    let manifests = sc.dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests");
    // A granted bundle whose objects are not: a ConfigMap (kind not
    // granted) and a Deployment in kube-system (namespace not granted).
    std::fs::write(
        manifests.join("escalate.yaml"),
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: x
  namespace: resume-screening
data:
  a: b
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: miner
  namespace: kube-system
spec:
  replicas: 1
  selector:
    matchLabels: {app: miner}
  template:
    metadata:
      labels: {app: miner}
    spec:
      containers: [{name: miner, image: evil/miner}]
"#,
    )
    .expect("bundle");
    let attempts = [
        // Kubernetes: other namespaces, deployments, secrets, sources, bundles.
        "k8s.scale|kube-system|coredns|0".to_owned(),
        "k8s.scale|resume-screening|frontend|0".into(),
        "k8s.scale|RESUME-SCREENING|backend|0".into(),
        "k8s.scale|resume-screening/../kube-system|coredns|0".into(),
        "k8s.get-deployment|default|backend".into(),
        "k8s.rollout-undo|resume-screening|frontend".into(),
        "k8s.wait-ready|kube-system|coredns|1000".into(),
        "k8s.replace-secret|resume-screening|other-secret|vault".into(),
        "k8s.replace-secret|resume-screening|app-secrets|other-source".into(),
        "k8s.replace-secret|kube-system|app-secrets|vault".into(),
        "k8s.apply|../escalate".into(),
        "k8s.apply|other-bundle".into(),
        "k8s.apply|escalate".into(),
        // Object store: other buckets, prefixes, traversal, encoded keys.
        "object-store.head|other-bucket|postgres/backup_latest.dump".into(),
        "object-store.head|resume-screening-backups|secrets/creds".into(),
        "object-store.head|resume-screening-backups|postgres/../secrets/creds".into(),
        "object-store.head|resume-screening-backups|postgres/%2e%2e/secrets/creds".into(),
        "object-store.list|resume-screening-backups|".into(),
        "object-store.newest|resume-screening-backups|post".into(),
        "object-store.verify|other-bucket|postgres/backup_latest.dump".into(),
        // PostgreSQL: other databases, injection through names.
        "postgres.query|postgres|SELECT 1".into(),
        format!("postgres.query|{db}\"; DROP DATABASE \"{db}\"; --|SELECT 1"),
        format!("postgres.integrity-check|{db}' OR '1'='1"),
        format!("postgres.query|{}|SELECT 1", db.to_uppercase()),
        "postgres.restore|postgres|resume-screening-backups|postgres/backup_latest.dump".into(),
        format!("postgres.restore|{db}|other-bucket|postgres/backup_latest.dump"),
        "postgres.terminate-connections|template1".into(),
        // Health: targets not granted, URLs and metadata addresses as names.
        "health.check|metadata".into(),
        "health.check|http://169.254.169.254/latest/meta-data/".into(),
        "health.wait-healthy|frontend|1000".into(),
        // Notifications: channels not granted, URLs as channel names.
        "operator.notify|other-channel|hello".into(),
        "operator.notify|https://evil.example/hook|hello".into(),
    ];
    let text = format!(
        "[plugin]\npath = {:?}\nrequire = \"prober@^0.1\"\n\n[params]\ncalls = \"\"\"\n{}\n\"\"\"\n\n\
         [grants.k8s]\noperations = [\"get-deployment\", \"scale\", \"rollout-undo\", \"wait-ready\", \"apply\", \"replace-secret\"]\n\
         deployments = [\"resume-screening/backend\"]\nbundles = [\"escalate\"]\nsecrets = [\"resume-screening/app-secrets\"]\n\
         secret_sources = [\"vault\"]\nkinds = [\"Deployment\"]\nnamespaces = [\"resume-screening\"]\n\n\
         [grants.postgres]\noperations = [\"query\", \"integrity-check\", \"restore\", \"terminate-connections\"]\ndatabases = [\"{db}\"]\n\n\
         [grants.object_store]\nlocations = [\"resume-screening-backups/postgres/\"]\n\n\
         [grants.health]\ntargets = [\"backend-api\"]\n\n[grants.operator]\nnotify = [\"status-page\"]\n{}",
        plugin("prober"),
        attempts.join("\n"),
        sc.backends(&manifests, "vault = { env = \"DRHOST_TEST_VAULT\" }")
    );
    let runbook = sc.dir.path().join("prober.toml");
    std::fs::write(&runbook, text).expect("runbook");
    let before: Vec<(String, String, String)> = sc.kube.requests();
    let (ok, out, audit) = sc.run_yes(&runbook, "audit", &[]).await;
    assert!(ok, "{out}");

    // Every attempt came back denied.
    let log = audit_log(&audit);
    let records: Vec<Value> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    let summary = records
        .iter()
        .find(|r| r["event"] == "step-end")
        .and_then(|r| r["outcome"]["message"].as_str())
        .expect("the probe step's summary")
        .to_owned();
    let results: Vec<&str> = summary.lines().collect();
    assert_eq!(results.len(), attempts.len(), "{summary}");
    let denied = results.iter().filter(|l| l.ends_with("-> denied")).count();
    println!("policy escapes denied: {denied}/{}", attempts.len());
    assert_eq!(denied, attempts.len(), "not denied:\n{summary}");

    // Audited: a denial record each, but for the guarded bundle, whose
    // refusal is the call's audited outcome.
    let denials = records.iter().filter(|r| r["event"] == "denial").count();
    assert_eq!(denials, attempts.len() - 1);
    let intents: Vec<String> = records
        .iter()
        .filter(|r| {
            r["event"] == "call-intent" && r["capability"] != "state" && r["capability"] != "log"
        })
        .map(|r| format!("{}.{} {}", r["capability"], r["operation"], r["args"]))
        .collect();
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert!(intents[0].contains("escalate"), "{intents:?}");

    // Nothing reached a backend: no write to the API server, no request
    // about anything outside the grants, no health request.
    // (The run's own lease is the only write, and it is not the plugin's.)
    let requests: Vec<(String, String, String)> = sc.kube.requests()[before.len()..]
        .iter()
        .filter(|(_, p, _)| !p.contains("/leases"))
        .cloned()
        .collect();
    assert!(
        requests.iter().all(|(m, _, _)| m == "GET"),
        "a write reached the API server: {requests:?}"
    );
    assert!(
        !requests.iter().any(|(_, p, _)| p.contains("kube-system")
            || p.contains("frontend")
            || p.contains("secrets")),
        "{requests:?}"
    );
    assert_eq!(
        sc.http.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a health request was made"
    );
    let coredns = sc.deployment_in("kube-system", "coredns");
    assert_eq!(coredns["spec"]["replicas"], 2);
    assert_audit_verifies(&audit);
}

/// What a fault case expects of the run.
enum Expect {
    /// The run completes: the cluster rebuilt, the database restored.
    Completes,
    /// The run stops, and its output names the cause (each substring, any
    /// case); the original database is intact.
    Stops(&'static [&'static str]),
}

/// The backend-fault battery (issue "Reliability and security"):
/// cluster-failure on every real backend, one fault injected per case:
/// Kubernetes 500s, a 409 storm, watch disconnects and an API server gone
/// for good; S3 503s, dropped streams and a bucket that never answers; a
/// health endpoint flapping and one down; PostgreSQL sessions killed in the
/// middle of the restore. Each run either completes (every object applied,
/// the database restored, `audit verify` passes) or stops with an error
/// naming the cause while the database it was to replace is intact (its
/// marker row there, no `_restore_` leftover). Prints `fault scenarios
/// survived: N/N` (recorded in BENCHMARKS.md). The PostgreSQL server
/// itself restarted mid-restore is `server_killed` in tests/postgres.rs
/// (it needs a throwaway cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_fault_battery_completes_or_stops_cleanly_with_the_data_intact() {
    use drhost_tests::s3_server::{Fault, FlakyProxy};
    type Setup = Box<dyn Fn(&Scene) + Send + Sync>;
    /// (what happens, S3 proxy fault, set-up, expectation, operation the
    /// gate must be seen retrying).
    type Case = (
        &'static str,
        Option<Fault>,
        Setup,
        Expect,
        Option<&'static str>,
    );
    let none: fn(&Scene) = |_| {};
    let cases: Vec<Case> = vec![
        (
            "Kubernetes answers 500 to the first 3 server-side applies",
            None,
            Box::new(|sc: &Scene| sc.kube.fail_next("PATCH", "fieldManager=drhost", 500, 3)),
            Expect::Completes,
            None,
        ),
        (
            "Kubernetes answers 409 to 6 secret replacements in a row (a concurrent writer)",
            None,
            Box::new(|sc: &Scene| sc.kube.fail_next("PUT", "/secrets/", 409, 6)),
            Expect::Completes,
            None,
        ),
        (
            "Kubernetes answers 409 to every server-side apply (a field-manager conflict)",
            None,
            Box::new(|sc: &Scene| {
                sc.kube
                    .fail_next("PATCH", "fieldManager=drhost", 409, 100_000)
            }),
            Expect::Stops(&["conflict"]),
            None,
        ),
        (
            "the first 4 deployment watches are cut (500)",
            None,
            Box::new(|sc: &Scene| sc.kube.fail_next("GET", "watch=", 500, 4)),
            Expect::Completes,
            None,
        ),
        (
            "the Kubernetes API answers 503 to everything",
            None,
            Box::new(|sc: &Scene| sc.kube.fail_next("*", "/", 503, 100_000)),
            Expect::Stops(&["503"]),
            None,
        ),
        (
            "S3 answers 503 SlowDown to the first 3 requests",
            Some(Fault::SlowDown { times: 3 }),
            Box::new(none),
            Expect::Completes,
            None,
        ),
        (
            "S3 drops 2 download streams after 3000 bytes",
            Some(Fault::DropAfterBytes {
                bytes: 3000,
                times: 2,
            }),
            Box::new(none),
            Expect::Completes,
            None,
        ),
        (
            "S3 answers 503 SlowDown to everything",
            Some(Fault::SlowDown { times: 100_000 }),
            Box::new(none),
            Expect::Stops(&["503"]),
            None,
        ),
        (
            "the health endpoints answer 503 to their first 3 requests, then 200",
            None,
            Box::new(|sc: &Scene| {
                use std::sync::atomic::Ordering::SeqCst;
                *sc.http.status.lock().expect("lock") = 503;
                let status = sc.http.status.clone();
                let hits = sc.http.hits.clone();
                let from = hits.load(SeqCst);
                std::thread::spawn(move || {
                    while hits.load(SeqCst) < from + 3 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    *status.lock().expect("lock") = 200;
                });
            }),
            Expect::Completes,
            None,
        ),
        (
            "the health endpoints answer 500 for good",
            None,
            Box::new(|sc: &Scene| *sc.http.status.lock().expect("lock") = 500),
            Expect::Stops(&["backend-api"]),
            None,
        ),
        (
            "PostgreSQL ends the restore's sessions mid-load",
            None,
            Box::new(|sc: &Scene| {
                // Once the new database has sessions, end them (as a
                // failover or an administrator would), once: polled every
                // 2 ms by the server itself, for up to a minute.
                let sql = format!(
                    "DO $$ DECLARE n int; BEGIN FOR i IN 1..30000 LOOP \
                     PERFORM pg_stat_clear_snapshot(); SELECT count(pg_terminate_backend(pid)) INTO n FROM pg_stat_activity \
                     WHERE datname LIKE '{}\\_restore\\_%' AND pid <> pg_backend_pid(); \
                     EXIT WHEN n > 0; PERFORM pg_sleep(0.002); END LOOP; END $$",
                    sc.database
                );
                std::thread::spawn(move || psql("postgres", &sql));
            }),
            Expect::Completes,
            // The cut restore was retried by the gate.
            Some("postgres.restore"),
        ),
    ];
    let tried = cases.len();
    let mut survived = 0;
    let mut report = Vec::new();
    for (i, (name, s3_fault, setup, expect, retried)) in cases.into_iter().enumerate() {
        let sc = scene(&format!("fb{i}")).await;
        // The database the run replaces, with a marker row.
        psql("postgres", &format!("CREATE DATABASE \"{}\"", sc.database));
        psql(
            &sc.database,
            "CREATE TABLE marker (note text); INSERT INTO marker VALUES ('original');",
        );
        let runbook = sc.cluster_failure_runbook();
        // Waits and per-call limits in seconds, not minutes: a fault that
        // lasts must stop the run within the test's patience.
        let text = std::fs::read_to_string(&runbook).expect("runbook");
        std::fs::write(
            &runbook,
            text.replace("ready-timeout = \"4m\"", "ready-timeout = \"6s\"")
                .replace("call_timeout = \"5m\"", "call_timeout = \"20s\""),
        )
        .expect("write runbook");
        let proxy = match s3_fault {
            Some(f) => {
                let p = FlakyProxy::start(sc.s3.addr, f).await.expect("proxy");
                let text = std::fs::read_to_string(&runbook).expect("runbook");
                std::fs::write(&runbook, text.replace(&sc.s3.endpoint, &p.endpoint))
                    .expect("write runbook");
                Some(p)
            }
            None => None,
        };
        setup(&sc);
        let (ok, out, audit) = sc.run_yes(&runbook, "audit", &[]).await;
        let leftovers = psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname LIKE '{}\\_restore\\_%'",
                sc.database
            ),
        );
        let outcome = match expect {
            Expect::Completes => {
                assert!(ok, "{name}: the run did not complete:\n{out}");
                assert_eq!(sc.rows(), "500", "{name}: database not restored");
                for (d, replicas) in [("backend", 3), ("frontend", 2), ("celery-worker", 2)] {
                    assert_eq!(
                        sc.deployment(d)["spec"]["replicas"],
                        replicas,
                        "{name}: {d}"
                    );
                }
                "completed"
            }
            Expect::Stops(words) => {
                assert!(!ok, "{name}: the run should have stopped:\n{out}");
                let lower = out.to_lowercase();
                for w in words {
                    assert!(
                        lower.contains(&w.to_lowercase()),
                        "{name}: the error does not name {w:?}:\n{out}"
                    );
                }
                // Untouched, or replaced by a complete restore with the
                // original kept beside it.
                let marker = psql(
                    "postgres",
                    &format!(
                        "SELECT datname FROM pg_database WHERE datname = '{0}' OR datname LIKE '{0}\\_before\\_%' ORDER BY 1",
                        sc.database
                    ),
                );
                let holder = marker.lines().last().expect("a database with the marker");
                assert_eq!(
                    psql(holder, "SELECT note FROM marker"),
                    "original",
                    "{name}: the original data is not intact"
                );
                "stopped cleanly"
            }
        };
        assert_audit_verifies(&audit);
        assert_eq!(leftovers, "0", "{name}: a partial restore was left behind");
        if let Some(p) = &proxy {
            assert!(p.faults_injected() > 0, "{name}: no fault was injected");
        }
        if let Some(op) = retried {
            let log = std::fs::read_to_string(audit_log(&audit)).expect("log");
            assert!(
                log.lines().any(|l| l.contains("\"event\":\"note\"")
                    && l.contains(&format!(
                        "\"operation\":\"{}\"",
                        op.split('.').nth(1).unwrap_or("")
                    ))
                    && l.contains("retrying in")),
                "{name}: no retry of {op} in the audit log (was the fault injected?)"
            );
        }
        survived += 1;
        report.push(format!("  {name}: {outcome}"));
    }
    println!(
        "fault scenarios survived: {survived}/{tried}\n{}",
        report.join("\n")
    );
    assert_eq!(survived, tried);
}
