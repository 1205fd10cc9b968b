//! The `drhost` binary as an on-call engineer uses it: every fixture of
//! every scenario through `drhost test`, `drhost run` on the simulated
//! environment, `drhost audit verify` catching each kind of tampering,
//! refusals without a terminal, and bad input getting clear errors with
//! exit code 2. The binary is the one `cargo test --workspace` builds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use drhost_tests::{drhost_bin, plugin, repo_root};

fn drhost(args: &[&str], dir: &Path) -> Output {
    Command::new(drhost_bin())
        .args(args)
        .current_dir(dir)
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

#[test]
fn every_fixture_of_every_scenario_passes_drhost_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    for scenario in [
        "cluster-failure",
        "database-corruption",
        "app-rollback",
        "security-breach",
    ] {
        let wasm = plugin(scenario);
        let fixtures = repo_root().join("runbooks/fixtures").join(scenario);
        let mut count = 0;
        for entry in std::fs::read_dir(&fixtures).expect("fixtures dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".toml") || name.contains("runbook") {
                continue;
            }
            let out = drhost(&["test", s(&wasm), "--fixture", s(&path)], dir.path());
            assert_eq!(
                out.status.code(),
                Some(0),
                "{scenario}/{name}:\n{}",
                text(&out)
            );
            assert!(
                text(&out).contains("PASS"),
                "{scenario}/{name}:\n{}",
                text(&out)
            );
            count += 1;
        }
        // A happy path and at least four failure paths (a step failing, a
        // timeout, a denied call, an unhealthy result).
        assert!(
            count >= 5,
            "{scenario}: expected at least 5 fixtures, found {count}"
        );
    }
}

#[test]
fn a_wrong_expectation_fails_with_a_diff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = repo_root().join("runbooks/fixtures/database-corruption/happy-path.toml");
    let fixture = std::fs::read_to_string(&src)
        .expect("read")
        .replace(
            "runbook = \"../../database-corruption.toml\"",
            &format!(
                "runbook = {:?}",
                repo_root().join("runbooks/database-corruption.toml")
            ),
        )
        .replace(
            "not_calls = [\"operator.confirm\"]",
            "not_calls = [\"k8s.scale name=backend replicas=0\"]",
        );
    let path = dir.path().join("wrong.toml");
    std::fs::write(&path, fixture).expect("write");
    let out = drhost(
        &[
            "test",
            s(&plugin("database-corruption")),
            "--fixture",
            s(&path),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("FAIL") && t.contains("not_calls") && t.contains("calls made:"),
        "{t}"
    );
}

/// `drhost run` of the database-corruption runbook on the happy-path
/// fixture, with `extra` flags, audit logs under `dir/audit`.
fn run_happy_path(dir: &Path, extra: &[&str]) -> Output {
    let root = repo_root();
    let runbook = root.join("runbooks/database-corruption.toml");
    let fixture = root.join("runbooks/fixtures/database-corruption/happy-path.toml");
    let audit = dir.join("audit");
    let mut args = vec![
        "run",
        s(&runbook),
        "--mock",
        s(&fixture),
        "--audit-dir",
        s(&audit),
    ];
    args.extend_from_slice(extra);
    drhost(&args, dir)
}

/// Runs the main job and returns the audit log path.
fn main_job(dir: &Path) -> PathBuf {
    let out = run_happy_path(dir, &["--yes"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    for step in [
        "stop-services",
        "identify-corruption",
        "restore",
        "restart-services",
        "verify",
    ] {
        assert!(
            t.contains(&format!("✔ {step} done")),
            "step {step} missing:\n{t}"
        );
    }
    assert!(t.contains("outcome: completed"), "{t}");
    let line = t
        .lines()
        .find(|l| l.trim_start().starts_with("audit log: "))
        .expect("audit log line");
    PathBuf::from(line.trim_start().trim_start_matches("audit log: "))
}

#[test]
fn audit_verify_detects_every_kind_of_tampering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = main_job(dir.path());
    let out = drhost(&["audit", "verify", s(&log)], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("chain intact"), "{}", text(&out));
    let show = drhost(&["audit", "show", s(&log)], dir.path());
    assert_eq!(show.status.code(), Some(0));
    assert!(text(&show).contains("k8s.scale"), "{}", text(&show));

    let original = std::fs::read_to_string(&log).expect("read log");
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() > 10);
    let join = |ls: &[&str]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
    let edited = original.replacen("\"replicas\":0", "\"replicas\":1", 1);
    assert_ne!(edited, original, "the log records the scale to 0");
    let mut removed = lines.clone();
    removed.remove(5);
    let mut inserted = lines.clone();
    inserted.insert(6, lines[3]);
    let mut swapped = lines.clone();
    swapped.swap(4, 5);
    let torn = &original[..original.len() - 20];
    let cases: [(&str, String, &str); 5] = [
        ("edited byte", edited, "edited"),
        ("removed record", join(&removed), "seq 5"),
        ("inserted record", join(&inserted), "seq 6"),
        ("reordered records", join(&swapped), "seq 4"),
        ("torn last line", torn.to_owned(), "torn"),
    ];
    for (what, content, expected) in cases {
        let path = dir.path().join("tampered.audit.jsonl");
        std::fs::write(&path, content).expect("write");
        let out = drhost(&["audit", "verify", s(&path)], dir.path());
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {t}");
        assert!(t.contains(expected), "{what}: expected {expected:?} in {t}");
    }
}

#[test]
fn without_a_terminal_or_yes_mutating_steps_are_refused_not_hung() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_happy_path(dir.path(), &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("declined") && t.contains("no terminal"), "{t}");
    assert!(!t.contains("k8s.scale") || t.contains("skipped"), "{t}");
}

#[test]
fn dry_run_lists_intended_mutations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_happy_path(dir.path(), &["--dry-run"]);
    let t = text(&out);
    assert!(
        t.contains("DRY RUN") && t.contains("mutation(s) would have been made"),
        "{t}"
    );
    assert!(
        t.contains("postgres.restore bucket=resume-screening-backups database=resume_screening"),
        "{t}"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = repo_root();
    let good =
        std::fs::read_to_string(root.join("runbooks/database-corruption.toml")).expect("read");
    let plugin_line = format!("path = {:?}", plugin("database-corruption"));
    let good = good.replace(
        "path = \"../plugins/target/wasm32-wasip2/release/database_corruption.wasm\"",
        &plugin_line,
    );
    let happy = root.join("runbooks/fixtures/database-corruption/happy-path.toml");
    let cases: [(&str, String, &str); 10] = [
        (
            "endpoint.toml",
            format!("{good}\n[backends.object_store]\nendpoint = \"ftp://backups\"\n"),
            "backends.object_store.endpoint",
        ),
        (
            "password.toml",
            format!("{good}\n[backends.postgres]\npassword_env = \"DRHOST_TEST_UNSET_PASSWORD\"\n"),
            "DRHOST_TEST_UNSET_PASSWORD",
        ),
        (
            "jobs.toml",
            format!("{good}\n[backends.postgres]\njobs = 1000\n"),
            "backends.postgres.jobs",
        ),
        (
            "backend-typo.toml",
            format!("{good}\n[backends.postgress]\nhost = \"db\"\n"),
            "postgress",
        ),
        (
            "typo.toml",
            good.replace("[grants.health]", "[grants.healthz]"),
            "healthz",
        ),
        (
            "duration.toml",
            good.replace("rto = \"42m\"", "rto = \"42 minutes-ish\""),
            "run.rto",
        ),
        (
            "pin.toml",
            good.replace("database-corruption@^1.0", "database-corruption@^2"),
            "requires database-corruption@^2",
        ),
        (
            "sha.toml",
            good.replace(
                "# sha256 = \"<output of `drhost describe`>\"",
                &format!("sha256 = \"{}\"", "ab".repeat(32)),
            ),
            "sha256",
        ),
        (
            "param.toml",
            good.replace("rpo = \"15m\"", "rpo = \"15m\"\nbogus = 1"),
            "params.bogus",
        ),
        (
            "syntax.toml",
            good.replace("[params]", "[params"),
            "syntax.toml",
        ),
    ];
    for (name, content, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        let out = drhost(
            &[
                "run",
                s(&path),
                "--mock",
                s(&happy),
                "--yes",
                "--audit-dir",
                s(&dir.path().join("a")),
            ],
            dir.path(),
        );
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {t}");
        assert!(t.contains(expected), "{name}: expected {expected:?} in {t}");
        assert!(!t.contains("panicked"), "{name}: {t}");
    }
    let bad_fixture = dir.path().join("bad-fixture.toml");
    std::fs::write(
        &bad_fixture,
        "[[faults]]\noperation = \"k8s.delete\"\nerror = \"failed\"\n",
    )
    .expect("write");
    let out = drhost(
        &[
            "run",
            s(&root.join("runbooks/database-corruption.toml")),
            "--mock",
            s(&bad_fixture),
            "--yes",
        ],
        dir.path(),
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("bad-fixture.toml") && t.contains("k8s.delete"),
        "{t}"
    );

    // A fixture asking for a live backend that does not exist, or one the
    // runbook does not configure.
    for (live, expected) in [
        ("[\"kafka\"]", "kafka"),
        ("[\"k8s\"]", "no [backends.k8s]"),
        ("[\"postgres\"]", "no [backends.postgres]"),
    ] {
        let fixture = dir.path().join("live.toml");
        std::fs::write(
            &fixture,
            std::fs::read_to_string(&happy)
                .expect("read")
                .replace("runbook = \"../../database-corruption.toml\"\n", "")
                .replace("description =", &format!("live = {live}\ndescription =")),
        )
        .expect("write");
        let good_path = dir.path().join("good.toml");
        std::fs::write(&good_path, &good).expect("write");
        let out = drhost(
            &["run", s(&good_path), "--mock", s(&fixture), "--yes"],
            dir.path(),
        );
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{live}: {t}");
        assert!(t.contains(expected), "{live}: expected {expected:?} in {t}");
    }

    // A real run of a plugin that needs Kubernetes with a runbook that
    // configures no cluster: refused before the first step, saying what to
    // add.
    let good_path = dir.path().join("good.toml");
    let out = drhost(&["run", s(&good_path), "--yes"], dir.path());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("[backends.k8s]") && t.contains("--mock"), "{t}");
}

#[test]
fn describe_and_plan_show_steps_budgets_and_grants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = drhost(&["describe", s(&plugin("database-corruption"))], dir.path());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    for want in [
        "database-corruption@",
        "stop-services",
        "restore",
        "dr:recovery/k8s@0.2.0",
        "mutates",
    ] {
        assert!(t.contains(want), "describe lacks {want:?}:\n{t}");
    }
    let out = drhost(
        &[
            "plan",
            s(&repo_root().join("runbooks/database-corruption.toml")),
        ],
        dir.path(),
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("every import is granted") && t.contains("needs approval"),
        "{t}"
    );
    // Every part of a Kubernetes grant is shown, bundle contents included.
    let out = drhost(
        &[
            "plan",
            s(&repo_root().join("runbooks/cluster-failure.toml")),
        ],
        dir.path(),
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    for want in [
        "bundle kinds {\"ConfigMap\"",
        "bundle namespaces {\"resume-screening\"}",
        "secret sources {\"vault-resume-screening\"}",
    ] {
        assert!(t.contains(want), "plan lacks {want:?}:\n{t}");
    }
    // A runbook that does not grant an import the plugin has: plan says so.
    let rb = drhost_tests::support::misbehave_runbook(dir.path(), "ok", "1s", false);
    let out = drhost(&["plan", s(&rb)], dir.path());
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("NOT GRANTED"), "{t}");
}
