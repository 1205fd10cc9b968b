//! drhost test plugin `prober`: makes the capability calls listed in its
//! `calls` parameter, one per line, fields separated by `|`:
//!
//! ```text
//! k8s.scale|kube-system|coredns|0
//! object-store.head|other-bucket|postgres/x
//! postgres.query|postgres|SELECT 1
//! operator.notify|other-channel|hello
//! ```
//!
//! and reports each call's result kind (`ok` or the cap-error kind) in its
//! step summary, one `op -> kind` per line. The policy-escape battery in
//! `tests/scenarios.rs` uses it to attempt every escape through the real
//! host and gate.

use drhost_sdk::prelude::*;
use drhost_sdk::{health, k8s, object_store, operator, postgres};

struct Prober;

fn kind<T>(r: Result<T, CapError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.kind().into(),
    }
}

fn num(s: Option<&&str>) -> u64 {
    s.and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn call(line: &str) -> String {
    let f: Vec<&str> = line.split('|').collect();
    let a = |i: usize| f.get(i).copied().unwrap_or("");
    match a(0) {
        "k8s.get-deployment" => kind(k8s::get_deployment(a(1), a(2))),
        "k8s.scale" => kind(k8s::scale(a(1), a(2), num(f.get(3)) as u32)),
        "k8s.rollout-undo" => kind(k8s::rollout_undo(a(1), a(2), None)),
        "k8s.wait-ready" => kind(k8s::wait_ready(a(1), a(2), num(f.get(3)))),
        "k8s.apply" => kind(k8s::apply(a(1))),
        "k8s.replace-secret" => kind(k8s::replace_secret(a(1), a(2), a(3))),
        "object-store.list" => kind(object_store::list(a(1), a(2))),
        "object-store.newest" => kind(object_store::newest(a(1), a(2))),
        "object-store.head" => kind(object_store::head(a(1), a(2))),
        "object-store.verify" => kind(object_store::verify(a(1), a(2))),
        "postgres.query" => kind(postgres::query(a(1), a(2))),
        "postgres.restore" => kind(postgres::restore(a(1), a(2), a(3))),
        "postgres.integrity-check" => kind(postgres::integrity_check(a(1))),
        "postgres.terminate-connections" => kind(postgres::terminate_connections(a(1))),
        "health.check" => kind(health::check(a(1))),
        "health.wait-healthy" => kind(health::wait_healthy(a(1), num(f.get(2)))),
        "operator.notify" => kind(operator::notify(a(1), a(2))),
        other => format!("unknown-op {other}"),
    }
}

impl Guest for Prober {
    fn describe() -> ScenarioInfo {
        ScenarioInfo {
            name: "prober".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "Test plugin: makes the capability calls its `calls` parameter lists.".into(),
            rto_ms: 60_000,
            params: vec![param("calls", "One call per line: op|arg|arg...", Some(""))],
            steps: vec![step(
                "probe",
                "Make the listed calls",
                30_000,
                StepKind::Mutates,
            )],
        }
    }

    fn run_step(id: String, params: Vec<(String, String)>) -> Result<StepOutcome, String> {
        if id != "probe" {
            return Err(unknown_step(&id, &["probe"]));
        }
        let p = Params::from(params);
        let lines: Vec<String> = p
            .get_or("calls", "")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| format!("{} -> {}", l.split('|').next().unwrap_or(""), call(l)))
            .collect();
        Ok(StepOutcome::Done(lines.join("\n")))
    }
}

drhost_sdk::export_scenario!(Prober);
