//! The crash battery on simulations (issue "Reliability and security"):
//! the database-corruption drill (its latency model paced at 600x, about
//! two seconds a run) killed with SIGKILL at fixed-seed random instants,
//! then `drhost run --mock ... --resume RUN_ID`. For every crash point the
//! resumed run completes in the simulated world the interrupted run left
//! (`<run>.world.json`, saved after every mutation): the database restored
//! and healthy, the services back at their counts, the status page told
//! once per completed notify; no mutating call whose outcome was recorded
//! is executed twice; every byte of the audit log written before the
//! crash is still in place; and `drhost audit verify` passes. The battery
//! against real backends is `crash_battery` in `tests/postgres.rs`.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use drhost::audit::{EventKind, read_records};
use drhost_tests::crash::{
    CRASH_POINTS, Rng, assert_no_double_execution, assert_nothing_lost, before_crash, run_id,
    stderr_of, the_log,
};
use drhost_tests::{drhost_bin, repo_root};

const RUNBOOK: &str = "runbooks/database-corruption.toml";
const FIXTURE: &str = "runbooks/fixtures/database-corruption/drill.toml";
const TIME_SCALE: &str = "600";

fn drhost(audit: &Path, cache: &Path, resume: Option<&str>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(drhost_bin());
    cmd.current_dir(repo_root())
        .args([
            "run",
            RUNBOOK,
            "--mock",
            FIXTURE,
            "--time-scale",
            TIME_SCALE,
            "--yes",
        ])
        .arg("--audit-dir")
        .arg(audit)
        .env("DRHOST_CACHE_DIR", cache)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(id) = resume {
        cmd.arg("--resume").arg(id);
    }
    cmd
}

/// The simulated world at the end: restored, healthy, services back.
fn assert_recovered(audit: &Path, run: &str, point: &str) {
    let world = audit.join(format!("{run}.world.json"));
    let world: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&world).expect("world file")).expect("world JSON");
    let db = &world["postgres"]["resume_screening"];
    assert_eq!(db["healthy"], true, "{point}: {db}");
    assert_eq!(
        db["restored_from"], "resume-screening-backups/postgres/backup_latest.dump.gz",
        "{point}: {db}"
    );
    let deployments = world["k8s"]["deployments"].as_array().expect("deployments");
    for (name, replicas) in [("backend", 3), ("celery-worker", 2)] {
        let d = deployments
            .iter()
            .find(|d| d["name"] == name)
            .expect("deployment");
        assert_eq!(d["replicas"], replicas, "{point}: {d}");
    }
}

fn verify(log: &Path, point: &str) {
    let out = std::process::Command::new(drhost_bin())
        .args(["audit", "verify"])
        .arg(log)
        .output()
        .expect("audit verify");
    assert!(
        out.status.success(),
        "{point}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_crash_points_on_a_simulation_resume_to_a_recovered_world() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");

    let audit = dir.path().join("audit-full");
    let t0 = Instant::now();
    let out = drhost(&audit, &cache, None)
        .output()
        .await
        .expect("run drhost");
    let full = t0.elapsed();
    assert!(
        out.status.success(),
        "the uninterrupted run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = the_log(&audit).expect("a log");
    assert_recovered(&audit, &run_id(&log), "uninterrupted run");

    let mut rng = Rng(0x00c0_ffee_d00d_0002);
    let (mut survived, mut tried, mut asked, mut replayed, mut torn) = (0, 0, 0, 0, 0);
    let mut iteration = 0;
    while tried < CRASH_POINTS {
        iteration += 1;
        assert!(
            iteration <= 3 * CRASH_POINTS,
            "only {tried} of {iteration} kills landed before the run ended (a run takes {full:?})"
        );
        let audit = dir.path().join(format!("audit-{iteration}"));
        let kill_at = full.mul_f64(rng.next_f64());
        let point = format!("crash point {iteration} (SIGKILL after {kill_at:?} of ~{full:?})");
        let mut child = drhost(&audit, &cache, None).spawn().expect("spawn drhost");
        if let Ok(status) = tokio::time::timeout(kill_at, child.wait()).await {
            let err = stderr_of(&mut child).await;
            assert!(
                status.expect("wait").success(),
                "{point}: the run failed:\n{err}"
            );
            continue;
        }
        child.start_kill().expect("SIGKILL");
        let _ = child.wait().await;
        tried += 1;
        let Some(log) = the_log(&audit) else {
            // Killed before its first record: nothing happened; a new run
            // starts from the fixture.
            survived += 1;
            continue;
        };
        let run = run_id(&log);
        let (before, whole, finished) = before_crash(&log);
        if whole < before.len() {
            torn += 1;
        }
        if !finished {
            let out = drhost(&audit, &cache, Some(&run))
                .output()
                .await
                .expect("resume drhost");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{point}: the resume failed:\n{text}");
            assert!(text.contains("resuming run"), "{point}: {text}");
            if text.contains("may or may not have taken effect") {
                asked += 1;
            }
        }
        assert_nothing_lost(&log, &before, whole, &point);
        verify(&log, &point);
        let records = read_records(&log).expect("records");
        let (_, r) = assert_no_double_execution(&records, &point);
        replayed += r;
        // The status page heard once per notify whose outcome is recorded
        // (plus at most the one in flight at the crash).
        let notified = records
            .iter()
            .filter(|r| {
                r.event == EventKind::CallOutcome
                    && r.operation.as_deref() == Some("notify")
                    && r.outcome.as_ref().is_some_and(|o| o.get("ok").is_some())
            })
            .count();
        assert!(notified >= 1, "{point}: nobody was told");
        assert_recovered(&audit, &run, &point);
        survived += 1;
    }
    println!(
        "crash points survived: {survived}/{tried} (operator asked about calls in flight: {asked}; \
         calls replayed instead of executed again: {replayed}; torn last lines: {torn}; \
         one uninterrupted run: {full:?})"
    );
    assert_eq!(survived, tried);
    // Resuming a finished run is refused, naming why.
    let out = drhost(&dir.path().join("audit-full"), &cache, Some(&run_id(&log)))
        .output()
        .await
        .expect("resume a finished run");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("already ended"),
        "{text}"
    );
}

/// A log cut back to a point inside a step (a prefix of a chain verifies,
/// as a crash leaves it): `drhost runs` lists it as interrupted, a torn
/// half line is saved and cut off, a tampered log and changed parameters
/// are refused, and the resumed run completes and is listed as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_refuses_what_it_must_and_lists_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let audit = dir.path().join("audit");
    let out = drhost(&audit, &cache, None)
        .output()
        .await
        .expect("run drhost");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = the_log(&audit).expect("log");
    let run = run_id(&log);
    let text = std::fs::read_to_string(&log).expect("log");
    // Cut just after the restore's intent: the restore is in flight.
    let cut = text
        .lines()
        .position(|l| {
            l.contains("\"event\":\"call-intent\"") && l.contains("\"operation\":\"restore\"")
        })
        .expect("a restore intent");
    let mut prefix: String = text
        .lines()
        .take(cut + 1)
        .map(|l| format!("{l}\n"))
        .collect();
    let torn_half = "{\"seq\":999,\"ts\":\"2026-";
    prefix.push_str(torn_half);
    std::fs::write(&log, &prefix).expect("cut the log");

    let runs = |json: bool| {
        let mut c = std::process::Command::new(drhost_bin());
        c.arg("runs").arg("--audit-dir").arg(&audit);
        if json {
            c.arg("--json");
        }
        c.output().expect("drhost runs")
    };
    let listed: serde_json::Value =
        serde_json::from_slice(&runs(true).stdout).expect("runs --json");
    assert_eq!(listed[0]["run_id"], run.as_str(), "{listed}");
    assert_eq!(listed[0]["status"], "interrupted", "{listed}");
    assert_eq!(listed[0]["step"], "restore", "{listed}");
    let table = String::from_utf8_lossy(&runs(false).stdout).into_owned();
    assert!(
        table.contains("interrupted") && table.contains("--resume"),
        "{table}"
    );

    // Other parameters: refused, naming the parameter.
    let changed = dir.path().join("changed.toml");
    let rb = std::fs::read_to_string(repo_root().join(RUNBOOK))
        .expect("runbook")
        .replace("\"status-page\"\n", "\"ops-channel\"\n");
    let rb = rb.replace(
        "../plugins/",
        &format!("{}/plugins/", repo_root().display()),
    );
    std::fs::write(&changed, &rb).expect("write");
    let out = std::process::Command::new(drhost_bin())
        .current_dir(repo_root())
        .arg("run")
        .arg(&changed)
        .args(["--mock", FIXTURE, "--yes", "--resume", &run])
        .arg("--audit-dir")
        .arg(&audit)
        .env("DRHOST_CACHE_DIR", &cache)
        .stdin(Stdio::null())
        .output()
        .expect("resume with other params");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("parameters changed")
            && err.contains("notify-channel"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        prefix,
        "a refused resume changes nothing on disk"
    );

    // A tampered record: refused, the chain does not verify.
    let tampered_dir = dir.path().join("tampered");
    std::fs::create_dir_all(&tampered_dir).expect("dir");
    let tampered = tampered_dir.join(log.file_name().expect("name"));
    std::fs::write(
        &tampered,
        prefix.replacen("\"stop-services\"", "\"stop-servicez\"", 1),
    )
    .expect("write");
    let out = drhost(&tampered_dir, &cache, Some(&run))
        .output()
        .await
        .expect("resume tampered");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot resume"),
        "{err}"
    );

    // The real thing: the torn half line is saved and cut, the restore is
    // asked about (in flight, not idempotent) and the run completes.
    let out = drhost(&audit, &cache, Some(&run))
        .output()
        .await
        .expect("resume");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("torn line"), "{err}");
    assert!(err.contains("may or may not have taken effect"), "{err}");
    let saved = std::fs::read_to_string(format!("{}.torn-{}", log.display(), cut + 1))
        .expect("torn line saved");
    assert_eq!(saved, torn_half);
    let after = std::fs::read_to_string(&log).expect("log");
    assert!(after.starts_with(&prefix[..prefix.len() - torn_half.len()]));
    verify(&log, "resumed");
    let records = read_records(&log).expect("records");
    assert!(
        records.iter().any(|r| r.event == EventKind::CallOutcome
            && r.outcome.as_ref().is_some_and(|o| o["unknown"] == true)),
        "the in-flight restore is closed as unknown"
    );
    // stop-services had ended before the cut: only restore is re-run.
    assert_no_double_execution(&records, "resumed");
    let listed: serde_json::Value =
        serde_json::from_slice(&runs(true).stdout).expect("runs --json");
    assert_eq!(listed[0]["status"], "completed", "{listed}");
    assert_eq!(listed[0]["resumes"], 1, "{listed}");
}
