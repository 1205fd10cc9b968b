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
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(dir.path());
    let rb =
        Runbook::load(&misbehave_runbook(dir.path(), behaviour, budget, true)).expect("runbook");
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
        msg.contains("dr:recovery/k8s@0.1.0") && msg.contains("grants.k8s"),
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
        err.to_string().contains("implements dr:recovery@0.1.0"),
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
