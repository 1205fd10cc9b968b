//! The sandbox and the runtime, with real components built from
//! `tests/plugins/` and `plugins/`: hostile or broken plugins are stopped or
//! refused with a clear error, the host survives and goes on serving, the
//! audit log records it and verifies; the compiled-plugin cache is used;
//! dry runs change nothing; denied calls never reach a backend.

use std::path::Path;
use std::time::Duration;

use drhost::engine::{DrEngine, LoadSource};
use drhost::fixture::Fixture;
use drhost::plugin::PluginError;
use drhost::runbook::Runbook;
use drhost::runner::{RunOutcome, RunReport, StepStatus};
use drhost_tests::plugin;
use drhost_tests::support::{load, misbehave_fixture, misbehave_runbook, run};

fn engine(dir: &Path) -> DrEngine {
    DrEngine::new(Some(dir.join("cache"))).expect("engine")
}

/// Runs misbehave with `behaviour` and returns the report; checks the
/// audit log verifies whatever happened.
async fn misbehave(
    behaviour: &str,
    budget: &str,
    fixture_extra: &str,
) -> (tempfile::TempDir, RunReport) {
    misbehave_edited(behaviour, budget, fixture_extra, |t| t).await
}

/// [`misbehave`] with the runbook's text passed through `edit` first.
async fn misbehave_edited(
    behaviour: &str,
    budget: &str,
    fixture_extra: &str,
    edit: fn(String) -> String,
) -> (tempfile::TempDir, RunReport) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path());
    let path = misbehave_runbook(dir.path(), behaviour, budget, true);
    let text = std::fs::read_to_string(&path).expect("runbook");
    std::fs::write(&path, edit(text)).expect("runbook");
    let rb = Runbook::load(&path).expect("runbook");
    let fixture = Fixture::load(&misbehave_fixture(dir.path(), fixture_extra)).expect("fixture");
    let p = load(&engine, &rb, &plugin("misbehave"))
        .await
        .expect("load");
    let report = run(&engine, &p, &rb, &fixture, &dir.path().join("audit"), false).await;
    let verified = drhost::audit::verify(&report.audit_path).expect("verify");
    assert!(
        verified.is_ok(),
        "audit log must verify after {behaviour}: {verified}"
    );
    // The host survives: the same engine and plugin serve another run.
    let rb_ok = Runbook::load(&misbehave_runbook(dir.path(), "ok", "2s", true)).expect("runbook");
    let again = run(
        &engine,
        &p,
        &rb_ok,
        &fixture,
        &dir.path().join("audit2"),
        false,
    )
    .await;
    assert_eq!(
        again.outcome,
        RunOutcome::Completed,
        "host must keep serving after {behaviour}"
    );
    (dir, report)
}

fn stopped(report: &RunReport) -> (&str, &StepStatus) {
    match &report.outcome {
        RunOutcome::Stopped { step, status } => (step, status),
        other => panic!("expected the run to stop, got {other:?}"),
    }
}

fn audit_events(report: &RunReport) -> Vec<String> {
    drhost::audit::read_records(&report.audit_path)
        .expect("records")
        .iter()
        .map(|r| r.event.as_str().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_stopped_within_its_budget() {
    let (_dir, report) = misbehave("loop", "300ms", "").await;
    let (step, status) = stopped(&report);
    assert_eq!(step, "misbehave");
    assert!(
        matches!(status, StepStatus::TimedOut(m) if m.contains("300ms")),
        "{status:?}"
    );
    let ran = report.steps[0].elapsed;
    // Order of magnitude only: under 2x the budget (measured precisely in the bench).
    assert!(
        ran < Duration::from_millis(600),
        "loop ran {ran:?} for a 300ms budget"
    );
    assert!(audit_events(&report).contains(&"timeout".to_owned()));
    assert_eq!(report.skipped, vec!["after".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_the_memory_limit() {
    let (_dir, report) = misbehave("memory", "10s", "").await;
    let (_, status) = stopped(&report);
    assert!(
        matches!(status, StepStatus::Trapped(m) if m.contains("memory")),
        "{status:?}"
    );
    assert!(audit_events(&report).contains(&"trap".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_overflows_the_stack_cleanly() {
    let (_dir, report) = misbehave("recurse", "10s", "").await;
    let (_, status) = stopped(&report);
    assert!(
        matches!(status, StepStatus::Trapped(m) if m.contains("stack") && m.contains("recursion")),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_host_call_is_cut_by_the_step_budget() {
    let fault = "[[faults]]\noperation = \"k8s.get-deployment\"\nhang = true\n";
    let (_dir, report) = misbehave("hang", "300ms", fault).await;
    let (_, status) = stopped(&report);
    assert!(matches!(status, StepStatus::TimedOut(_)), "{status:?}");
    assert!(report.steps[0].elapsed < Duration::from_millis(600));
    // The gate clips each call to what is left of the step's budget, so the
    // hanging call itself is recorded as timed out (no dangling intent).
    let records = drhost::audit::read_records(&report.audit_path).expect("records");
    let outcome = records
        .iter()
        .find(|r| r.event.as_str() == "call-outcome")
        .and_then(|r| r.outcome.clone())
        .expect("call outcome");
    assert_eq!(outcome["error"]["kind"], "timed-out", "{outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_message_reaches_the_log() {
    let (_dir, report) = misbehave("panic", "10s", "").await;
    let (_, status) = stopped(&report);
    assert!(
        matches!(status, StepStatus::Trapped(m) if m.contains("panicked") && m.contains("deliberate panic")),
        "{status:?}"
    );
    let records = drhost::audit::read_records(&report.audit_path).expect("records");
    assert!(records.iter().any(|r| {
        r.event.as_str() == "plugin-output"
            && r.message
                .as_deref()
                .is_some_and(|m| m.contains("deliberate panic"))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_outside_the_grants_is_denied_audited_and_never_reaches_a_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path());
    let rb = Runbook::load(&misbehave_runbook(dir.path(), "deny", "2s", true)).expect("runbook");
    let fixture = Fixture::load(&misbehave_fixture(
        dir.path(),
        "[[k8s.deployments]]\nnamespace = \"other-namespace\"\nname = \"payments\"\nreplicas = 4\n",
    ))
    .expect("fixture");
    let p = load(&engine, &rb, &plugin("misbehave"))
        .await
        .expect("load");
    let report = run(&engine, &p, &rb, &fixture, dir.path(), false).await;
    assert_eq!(report.outcome, RunOutcome::Completed);
    assert!(
        report.steps[0].status.message().contains("denied"),
        "{:?}",
        report.steps[0]
    );
    assert_eq!(
        fixture
            .env
            .k8s
            .deployment("other-namespace", "payments")
            .map(|d| d.desired),
        Some(4)
    );
    assert!(
        fixture
            .env
            .log
            .entries()
            .iter()
            .all(|c| !c.contains("payments")),
        "{:?}",
        fixture.env.log.entries()
    );
    let denial = drhost::audit::read_records(&report.audit_path)
        .expect("records")
        .into_iter()
        .find(|r| r.event.as_str() == "denial")
        .expect("a denial record");
    assert!(
        denial
            .message
            .as_deref()
            .is_some_and(|m| m.contains("other-namespace/payments"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_importing_the_filesystem_is_refused_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path());
    let linker = drhost::plugin::linker(&engine).expect("linker");
    let err = drhost::plugin::load(&engine, &linker, &plugin("fs-access"), 64 << 20)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, PluginError::ForbiddenImport { ref import, .. } if import.starts_with("wasi:filesystem/")),
        "{err}"
    );
    assert!(err.to_string().contains("fs_access.wasm"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_importing_an_ungranted_interface_is_refused_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path());
    let rb = Runbook::load(&misbehave_runbook(dir.path(), "ok", "2s", false)).expect("runbook");
    let err = load(&engine, &rb, &plugin("misbehave"))
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("dr:recovery/k8s@0.2.0") && msg.contains("grants.k8s"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_built_against_another_wit_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path());
    let linker = drhost::plugin::linker(&engine).expect("linker");
    let err = drhost::plugin::load(&engine, &linker, &plugin("wrong-wit"), 64 << 20)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, PluginError::WitVersion { ref import, .. } if import.contains("@1.0.0")),
        "{err}"
    );
    assert!(
        err.to_string().contains("implements dr:recovery@0.2.0"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_core_module_files_get_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path());
    let linker = drhost::plugin::linker(&engine).expect("linker");
    let bytes = std::fs::read(plugin("database-corruption")).expect("read");
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "truncated.wasm",
            bytes[..bytes.len() / 2].to_vec(),
            "cannot be loaded",
        ),
        (
            "core.wasm",
            b"\0asm\x01\0\0\0".to_vec(),
            "core WebAssembly module",
        ),
        ("text.wasm", b"hello".to_vec(), "magic bytes"),
    ];
    for (name, content, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        let err = drhost::plugin::load(&engine, &linker, &path, 64 << 20)
            .await
            .err()
            .expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains(name) && msg.contains(expected),
            "{name}: {msg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_plugin_cache_is_used_on_the_second_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = plugin("database-corruption");
    let first = engine(dir.path());
    let linker = drhost::plugin::linker(&first).expect("linker");
    let p = drhost::plugin::load(&first, &linker, &wasm, 64 << 20)
        .await
        .expect("load");
    assert_eq!((p.source, first.compilations()), (LoadSource::Compiled, 1));
    drop((p, linker, first));
    // A new engine (a new process, as far as the cache can tell).
    let second = engine(dir.path());
    let linker = drhost::plugin::linker(&second).expect("linker");
    let p = drhost::plugin::load(&second, &linker, &wasm, 64 << 20)
        .await
        .expect("load");
    assert_eq!((p.source, second.compilations()), (LoadSource::Cache, 0));
    // A tampered cache entry is not loaded: it is recompiled.
    let entry = std::fs::read_dir(dir.path().join("cache"))
        .expect("cache dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .expect("a .cwasm entry");
    let mut bytes = std::fs::read(&entry).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entry, bytes).expect("write");
    let third = engine(dir.path());
    let linker = drhost::plugin::linker(&third).expect("linker");
    let p = drhost::plugin::load(&third, &linker, &wasm, 64 << 20)
        .await
        .expect("load");
    assert_eq!((p.source, third.compilations()), (LoadSource::Compiled, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_performs_no_mutation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path());
    let root = drhost_tests::repo_root();
    let rb = Runbook::load(&root.join("runbooks/database-corruption.toml")).expect("runbook");
    let fixture =
        Fixture::load(&root.join("runbooks/fixtures/database-corruption/happy-path.toml"))
            .expect("fixture");
    let p = load(&engine, &rb, &plugin("database-corruption"))
        .await
        .expect("load");
    let report = run(&engine, &p, &rb, &fixture, dir.path(), true).await;
    // Nothing changed in the simulation.
    let backend = fixture
        .env
        .k8s
        .deployment("resume-screening", "backend")
        .expect("backend");
    assert_eq!((backend.desired, backend.ready), (3, 3));
    let db = fixture
        .env
        .postgres
        .database("resume_screening")
        .expect("db");
    assert!(!db.healthy && db.restored_from.is_none(), "{db:?}");
    assert!(fixture.env.notify.sent().is_empty());
    // No mutating call reached a backend.
    let reached = fixture.env.log.entries();
    assert!(
        reached.iter().all(|c| !c.starts_with("k8s.scale")
            && !c.starts_with("postgres.restore")
            && !c.starts_with("operator.notify")),
        "{reached:?}"
    );
    // The report lists every intended mutation.
    let intended: Vec<String> = report
        .intended_mutations()
        .iter()
        .map(|c| c.op.clone())
        .collect();
    assert_eq!(
        intended.iter().filter(|o| *o == "k8s.scale").count(),
        4,
        "{intended:?}"
    );
    assert!(intended.contains(&"postgres.restore".to_owned()));
    // Nothing was restored, so the verify step finds the database still
    // corrupt: a dry run shows the plan, not a recovery.
    match &report.outcome {
        RunOutcome::Stopped { step, .. } => assert_eq!(step, "verify"),
        other => panic!("{other:?}"),
    }
}

/// The hostile-plugin battery with its count: every case is stopped or
/// refused with a clear error, the audit log verifies, and the same engine
/// serves the next run (checked by `misbehave_edited` for the run cases).
/// Prints `hostile plugins contained: N/N`; the figure is in BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugin_battery() {
    fn message(r: &RunReport) -> String {
        match &r.outcome {
            RunOutcome::Stopped { status, .. } => {
                format!("{}: {}", status.name(), status.message())
            }
            RunOutcome::Completed => format!(
                "completed: {}",
                r.steps.first().map(|s| s.status.message()).unwrap_or("")
            ),
        }
    }
    type Check = fn(&str) -> bool;
    type Edit = fn(String) -> String;
    /// behaviour, budget, fixture extra, runbook edit, expected outcome.
    type Case<'a> = (&'a str, &'a str, &'a str, Edit, Check);
    let hang = "[[faults]]\noperation = \"k8s.get-deployment\"\nhang = true\n";
    let runs: &[Case<'_>] = &[
        ("loop", "500ms", "", |t| t, |m| m.starts_with("timed-out")),
        (
            "memory",
            "5s",
            "",
            |t| t,
            |m| m.starts_with("trapped") && m.contains("memory"),
        ),
        ("recurse", "5s", "", |t| t, |m| m.starts_with("trapped")),
        ("hang", "500ms", hang, |t| t, |m| m.starts_with("timed-out")),
        (
            "panic",
            "5s",
            "",
            |t| t,
            |m| m.starts_with("trapped") && m.contains("deliberate panic"),
        ),
        // A million calls in one step: cut by the budget (or done within it).
        (
            "calls",
            "1s",
            "",
            |t| t.replace("[params]\n", "[params]\ncount = \"1000000\"\n"),
            |m| m.starts_with("timed-out") || m.contains("made 1000000"),
        ),
        (
            "state-big",
            "5s",
            "",
            |t| t,
            |m| m.contains("state set returned invalid"),
        ),
        // 100 MB through an import (memory raised so the string exists).
        (
            "big-string",
            "20s",
            "",
            |t| t.replace("memory_limit_mib = 64", "memory_limit_mib = 512"),
            |m| m.contains("log returned invalid"),
        ),
        (
            "deny",
            "5s",
            "",
            |t| t,
            |m| m.contains("scale returned denied"),
        ),
    ];
    let mut tried = 0;
    let mut contained = 0;
    let mut failures = Vec::new();
    for (behaviour, budget, extra, edit, check) in runs {
        tried += 1;
        let (_dir, report) = misbehave_edited(behaviour, budget, extra, *edit).await;
        let m = message(&report);
        if check(&m) {
            contained += 1;
        } else {
            failures.push(format!("{behaviour}: {m}"));
        }
    }

    // Refused at load, each with an error naming the file and the problem.
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path());
    let linker = drhost::plugin::linker(&engine).expect("linker");
    let good = std::fs::read(plugin("misbehave")).expect("wasm");
    let truncated = dir.path().join("truncated.wasm");
    std::fs::write(&truncated, &good[..good.len() / 2]).expect("write");
    let flipped = dir.path().join("flipped.wasm");
    let mut bytes = good.clone();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xa5;
    }
    std::fs::write(&flipped, &bytes).expect("write");
    for (what, path) in [
        ("imports wasi:filesystem", plugin("fs-access")),
        ("built against dr:recovery@1.0.0", plugin("wrong-wit")),
        ("truncated", truncated),
        ("corrupted", flipped),
    ] {
        tried += 1;
        match drhost::plugin::load(&engine, &linker, &path, 64 << 20).await {
            Err(e)
                if e.to_string()
                    .contains(path.file_name().and_then(|n| n.to_str()).unwrap_or("?")) =>
            {
                contained += 1
            }
            Err(e) => failures.push(format!("{what}: error does not name the file: {e}")),
            Ok(_) => failures.push(format!("{what}: loaded")),
        }
    }
    // A component claiming another plugin's name: the runbook's pin refuses it.
    tried += 1;
    let rb_path = misbehave_runbook(dir.path(), "ok", "2s", true);
    let text = std::fs::read_to_string(&rb_path).expect("runbook").replace(
        "require = \"misbehave@^0.1\"",
        "require = \"database-corruption@^1.0\"",
    );
    std::fs::write(&rb_path, text).expect("runbook");
    let rb = Runbook::load(&rb_path).expect("runbook");
    match load(&engine, &rb, &plugin("misbehave")).await {
        Err(e) if e.to_string().contains("database-corruption") => contained += 1,
        Err(e) => failures.push(format!("impostor: unclear error {e}")),
        Ok(_) => failures.push("impostor: loaded".into()),
    }

    println!("hostile plugins contained: {contained}/{tried}");
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(contained, tried);
    assert!(tried >= 14);
}
