//! DR drills and recovery reports, through the `drhost` binary: every
//! scenario drills and reports what its audit log holds; a drill on
//! simulated time reports exactly the fixture's latency model (a check of
//! values, not a timing), pacing does not change what it reports, the
//! report's figures match the audit log they are built from, an RTO
//! overrun is exit code 5, the operator's thinking time extends a step's
//! time box instead of killing it, and every scenario's drill writes its
//! report in all three formats (the HTML one self-contained).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use drhost_tests::{drhost_bin, repo_root};

fn drhost(args: &[&str], dir: &Path) -> Output {
    Command::new(drhost_bin())
        .args(args)
        .current_dir(repo_root())
        .env("DRHOST_CACHE_DIR", dir.join("cache"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run drhost")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs a drill into `dir` and returns (exit code, JSON report, report
/// file stem, output).
fn drill(
    dir: &Path,
    runbook: &Path,
    fixture: &Path,
    extra: &[&str],
) -> (i32, Value, PathBuf, String) {
    let audit = dir.join("audit");
    let mut args = vec![
        "drill",
        s(runbook),
        "--mock",
        s(fixture),
        "--audit-dir",
        s(&audit),
    ];
    args.extend_from_slice(extra);
    let out = drhost(&args, dir);
    let all = text(&out);
    let json_path = std::fs::read_dir(&audit)
        .unwrap_or_else(|e| panic!("no audit dir {}: {e}\n{all}", audit.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".drill.json"))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no .drill.json written:\n{all}"));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("read json"))
            .expect("report is JSON");
    let stem = PathBuf::from(json_path.to_string_lossy().trim_end_matches(".json"));
    (out.status.code().unwrap_or(-1), report, stem, all)
}

/// `<run>.drill` + `.ext`.
fn with_ext(stem: &Path, ext: &str) -> PathBuf {
    PathBuf::from(format!("{}.{ext}", stem.display()))
}

fn step_durations(report: &Value) -> Vec<(String, u64)> {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().expect("id").to_owned(),
                s["duration_ms"].as_u64().expect("duration"),
            )
        })
        .collect()
}

/// The latency model written in `runbooks/fixtures/database-corruption/drill.toml`.
fn database_corruption_model() -> Vec<(String, u64)> {
    [
        ("stop-services", 2 * 2_000),
        ("identify-corruption", 180_000 + 1_000),
        ("restore", 720_000),
        ("restart-services", 92_000),
        ("verify", 180_000 + 200 + 30_000 + 200),
    ]
    .iter()
    .map(|(id, ms)| (id.to_string(), *ms))
    .collect()
}

#[test]
fn drill_reports_exactly_the_fixture_latency_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = repo_root();
    let (code, report, stem, out) = drill(
        dir.path(),
        &root.join("runbooks/database-corruption.toml"),
        &root.join("runbooks/fixtures/database-corruption/drill.toml"),
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        step_durations(&report),
        database_corruption_model(),
        "{out}"
    );
    assert_eq!(report["total_ms"], 1_207_400, "{out}");
    assert_eq!(report["rto_ms"], 42 * 60_000);
    assert_eq!(report["outcome"], "completed");
    assert_eq!(report["simulated"], true);
    assert_eq!(report["audit"]["verified"], true);
    // Steps start where the previous one ended: no simulated time passes
    // between steps.
    let steps = report["steps"].as_array().expect("steps");
    let mut at = 0;
    for st in steps {
        assert_eq!(st["start_ms"], at, "{st}");
        at += st["duration_ms"].as_u64().expect("duration");
    }
    // The restored backup (10 minutes old) against the 15-minute RPO.
    let b = &report["backup"];
    assert_eq!(
        b["source"],
        "resume-screening-backups/postgres/backup_latest.dump.gz"
    );
    assert_eq!(b["restored"], true);
    assert_eq!(b["rpo_ms"], 15 * 60_000);
    assert_eq!(b["within_rpo"], true);
    let age = b["age_ms"].as_u64().expect("age");
    // Ten minutes when listed, plus the simulated time before the lookup.
    assert_eq!(age, 10 * 60_000 + 4_000 + 180_000 + 1_000, "{b}");

    // The other formats were written too.
    let md = std::fs::read_to_string(with_ext(&stem, "md")).expect("md");
    assert!(
        md.contains("| 3 | `restore` Restore from backup | 3m05s | 12m00s | 15m00s | 80% | done |"),
        "{md}"
    );
    assert!(md.contains("20m07s of the 42m00s RTO"), "{md}");
    let html = std::fs::read_to_string(with_ext(&stem, "html")).expect("html");
    assert_self_contained(&html);
    assert!(html.contains("<svg"), "no Gantt chart");
    assert_eq!(
        html.matches("class=\"actual\"").count(),
        5,
        "one actual bar per step"
    );
    assert_eq!(
        html.matches("class=\"budget\"").count(),
        5,
        "one budget bar per step"
    );
    assert!(html.contains("RTO 42m00s"));
}

fn assert_self_contained(html: &str) {
    for external in ["src=", "href=", "@import", "url(", "<script"] {
        assert!(
            !html.contains(external),
            "HTML report references something outside itself ({external})"
        );
    }
}

#[test]
fn pacing_changes_real_time_not_the_reported_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = repo_root();
    // 1207.4 simulated seconds at 20000x: about 60 ms of real waiting.
    let (code, report, _, out) = drill(
        dir.path(),
        &root.join("runbooks/database-corruption.toml"),
        &root.join("runbooks/fixtures/database-corruption/drill.toml"),
        &["--time-scale", "20000"],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(step_durations(&report), database_corruption_model());
    assert_eq!(report["time_scale"], 20000.0);
}

/// The report's figures are the audit log's: step durations, calls and
/// their failures, approvals, record count, total, plugin identity; and
/// `drhost report` rebuilds the same report from the log alone.
fn assert_report_matches_audit(dir: &Path, report: &Value, out: &str) {
    let audit_path = report["audit"]["path"].as_str().expect("audit path");
    let records: Vec<Value> = std::fs::read_to_string(audit_path)
        .expect("read audit")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    let of = |kind: &'static str| records.iter().filter(move |r| r["event"] == kind);
    let ends: Vec<(String, u64)> = of("step-end")
        .map(|r| {
            (
                r["step"].as_str().expect("step").to_owned(),
                r["duration_ms"].as_f64().expect("duration").round() as u64,
            )
        })
        .collect();
    assert_eq!(step_durations(report), ends, "{out}");
    let calls = report["calls"].as_array().expect("calls");
    assert_eq!(
        calls.len(),
        of("call-intent").count() + of("denial").count()
    );
    let failed_outcomes = of("call-outcome")
        .filter(|r| r["outcome"].get("error").is_some())
        .count();
    let failed_calls = calls
        .iter()
        .filter(|c| !matches!(c["status"].as_str(), Some("ok" | "dry-run" | "denied")))
        .count();
    assert_eq!(failed_calls, failed_outcomes);
    assert_eq!(
        report["denials"].as_array().expect("denials").len(),
        of("denial").count()
    );
    assert_eq!(
        report["approvals"].as_array().expect("approvals").len(),
        of("approval").count()
    );
    assert_eq!(report["audit"]["records"], records.len());
    assert_eq!(report["audit"]["verified"], true);
    let run_end = of("run-end").next().expect("run-end");
    assert_eq!(
        report["total_ms"].as_u64(),
        run_end["duration_ms"].as_f64().map(|d| d.round() as u64)
    );
    assert_eq!(report["outcome"], run_end["outcome"]["outcome"]);
    assert_eq!(report["plugin"], records[0]["plugin"]);

    let again = drhost(&["report", audit_path, "--format", "json"], dir);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let again: Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(&again, report);
}

#[test]
fn every_scenario_drills_and_its_report_matches_its_audit_log() {
    let root = repo_root();
    for (scenario, plugin_version) in [
        ("cluster-failure", "1.0.0"),
        ("database-corruption", "1.0.0"),
        ("app-rollback", "1.0.0"),
        ("security-breach", "1.0.0"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (code, report, stem, out) = drill(
            dir.path(),
            &root.join(format!("runbooks/{scenario}.toml")),
            &root.join(format!("runbooks/fixtures/{scenario}/drill.toml")),
            &[],
        );
        assert_eq!(code, 0, "{scenario}: {out}");
        assert_eq!(report["outcome"], "completed", "{scenario}");
        assert_eq!(report["plugin"]["name"], scenario);
        assert_eq!(report["plugin"]["version"], plugin_version);
        assert!(
            report["total_ms"].as_u64().expect("total") > 0,
            "{scenario}: the latency model shows in simulated time"
        );
        assert_report_matches_audit(dir.path(), &report, &out);
        let html = std::fs::read_to_string(with_ext(&stem, "html")).expect("html");
        assert_self_contained(&html);
        let steps = report["steps"].as_array().expect("steps").len();
        assert_eq!(
            html.matches("class=\"actual\"").count(),
            steps,
            "{scenario}"
        );
        let md = std::fs::read_to_string(with_ext(&stem, "md")).expect("md");
        assert!(
            md.starts_with(&format!("# Recovery report: {scenario}@")),
            "{md}"
        );
    }
}

#[test]
fn a_failed_drill_reports_where_it_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = repo_root();
    let (code, report, _, out) = drill(
        dir.path(),
        &root.join("runbooks/app-rollback.toml"),
        &root.join("runbooks/fixtures/app-rollback/previous-also-unhealthy.toml"),
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["outcome_step"], "verify");
    let verify = &report["steps"][1];
    assert_eq!(verify["status"], "failed", "{verify}");
    assert_report_matches_audit(dir.path(), &report, &out);

    let denied = tempfile::tempdir().expect("tempdir");
    let (code, report, _, out) = drill(
        denied.path(),
        &root.join("runbooks/fixtures/cluster-failure/denied-runbook.toml"),
        &root.join("runbooks/fixtures/cluster-failure/denied-call.toml"),
        &[],
    );
    assert_eq!(code, 1, "{out}");
    let denials = report["denials"].as_array().expect("denials");
    assert_eq!(denials.len(), 1, "{denials:?}");
    assert_eq!(denials[0]["op"], "k8s.apply");
    assert_report_matches_audit(denied.path(), &report, &out);
}

/// A copy of a runbook with `[run]` settings replaced and the plugin path
/// made absolute, in `dir`.
fn runbook_variant(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let root = repo_root();
    let text =
        std::fs::read_to_string(root.join(format!("runbooks/{name}.toml"))).expect("runbook");
    let text = text.replace(
        "path = \"../plugins/",
        &format!("path = \"{}/plugins/", root.display()),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, edit(text)).expect("write runbook");
    path
}

#[test]
fn a_drill_over_its_rto_exits_5_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runbook = runbook_variant(dir.path(), "database-corruption", |t| {
        t.replace("rto = \"42m\"", "rto = \"15m\"")
    });
    let (code, report, stem, out) = drill(
        dir.path(),
        &runbook,
        &repo_root().join("runbooks/fixtures/database-corruption/drill.toml"),
        &[],
    );
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("RTO EXCEEDED"), "{out}");
    assert_eq!(report["outcome"], "completed");
    assert_eq!(report["rto_ms"], 15 * 60_000);
    let html = std::fs::read_to_string(with_ext(&stem, "html")).expect("html");
    assert!(
        html.contains("verdict bad"),
        "the verdict is not shown as bad"
    );
}

#[test]
fn the_operators_thinking_time_extends_the_time_box_and_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = repo_root();
    // The backup is 3 hours old: the restore step asks the operator, who
    // takes 20 minutes to accept, longer than the step's 15-minute budget.
    let fixture =
        std::fs::read_to_string(root.join("runbooks/fixtures/database-corruption/drill.toml"))
            .expect("fixture")
            .replace(
                "size = 720000000\nage = \"10m\"",
                "size = 720000000\nage = \"3h\"",
            )
            .replace(
                "runbook = \"../../database-corruption.toml\"",
                &format!(
                    "runbook = \"{}\"\n\n[operator]\nconfirm = [true]\nthink_time = \"20m\"",
                    root.join("runbooks/database-corruption.toml").display()
                ),
            );
    let fixture_path = dir.path().join("slow-operator.toml");
    std::fs::write(&fixture_path, fixture).expect("write fixture");
    let (code, report, _, out) = drill(
        dir.path(),
        &root.join("runbooks/database-corruption.toml"),
        &fixture_path,
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let restore = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["id"] == "restore")
        .expect("restore step");
    assert_eq!(restore["status"], "done", "{restore}");
    assert_eq!(restore["duration_ms"], 20 * 60_000 + 720_000, "{restore}");
    assert_eq!(restore["over_budget"], true);
    assert!(
        out.contains("reminder, not a stop"),
        "no reminder shown:\n{out}"
    );
    let b = &report["backup"];
    assert_eq!(b["within_rpo"], false, "{b}");
    let approvals = report["approvals"].as_array().expect("approvals");
    assert!(
        approvals
            .iter()
            .any(|a| a["kind"] == "confirm" && a["approved"] == true && a["by"] == "fixture"),
        "{approvals:?}"
    );
}

#[test]
fn report_refuses_a_file_that_is_not_an_audit_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bogus = dir.path().join("notes.jsonl");
    std::fs::write(&bogus, "{\"hello\": 1}\n").expect("write");
    let out = drhost(&["report", s(&bogus)], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("notes.jsonl"), "{}", text(&out));
    let missing = drhost(&["report", "/nonexistent/x.audit.jsonl"], dir.path());
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
}

#[test]
fn time_scale_needs_a_simulation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = drhost(
        &[
            "drill",
            "runbooks/database-corruption.toml",
            "--time-scale",
            "60",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--time-scale"), "{}", text(&out));
    let out = drhost(
        &[
            "drill",
            "runbooks/database-corruption.toml",
            "--mock",
            "runbooks/fixtures/database-corruption/drill.toml",
            "--time-scale",
            "fast",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn secrets_in_errors_reach_no_log_console_or_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = repo_root();
    // A backend error that carries a connection string, a password and a
    // token (as a careless driver message would).
    let fixture = std::fs::read_to_string(root.join("runbooks/fixtures/database-corruption/restore-fails.toml"))
        .expect("fixture")
        .replace(
            "message = \"server closed the connection unexpectedly during COPY candidates\"",
            "message = \"server closed the connection unexpectedly: postgres://app:hunter2@db:5432/rs password=hunter2 url https://hooks/x?token=tok-hunter2\"",
        )
        .replace(
            "runbook = \"../../database-corruption.toml\"",
            &format!(
                "runbook = \"{}\"",
                root.join("runbooks/database-corruption.toml").display()
            ),
        );
    assert!(fixture.contains("hunter2"));
    let path = dir.path().join("leaky.toml");
    std::fs::write(&path, fixture).expect("write fixture");
    let (code, report, stem, out) = drill(
        dir.path(),
        &root.join("runbooks/database-corruption.toml"),
        &path,
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("hunter2"), "console:\n{out}");
    assert!(out.contains("[redacted]"), "console:\n{out}");
    let audit =
        std::fs::read_to_string(report["audit"]["path"].as_str().expect("path")).expect("audit");
    assert!(!audit.contains("hunter2"), "audit log holds the secret");
    assert!(
        audit.contains("postgres://app:[redacted]@db:5432/rs"),
        "{audit}"
    );
    for ext in ["json", "md", "html"] {
        let text = std::fs::read_to_string(with_ext(&stem, ext)).expect("report");
        assert!(!text.contains("hunter2"), "{ext} report holds the secret");
    }
    // What was redacted is still readable: the step and the failure.
    assert_eq!(report["outcome_step"], "restore");
    assert!(
        report["outcome_message"]
            .as_str()
            .expect("message")
            .contains("server closed the connection")
    );
    // The chain verifies: redaction happens before hashing.
    assert_eq!(report["audit"]["verified"], true);
}
