//! Test plugin for the host's sandbox tests: step `misbehave` does whatever
//! the `behaviour` parameter says, step `after` only logs "after ran" (so a
//! test can see whether the run went on).
//!
//! Behaviours: `loop` (CPU spin, no host calls), `memory` (grows the heap by
//! 1 MiB chunks forever), `recurse` (unbounded non-tail recursion), `hang`
//! (calls `k8s::get-deployment("ns", "app")`, which the test fixture makes
//! hang), `panic`, `ok`, `deny` (scales `other-namespace/payments`, reports
//! the error kind), `calls` (`count` get-deployment calls, default 1000),
//! `state-big` (stores a 1 MiB value, reports the error kind), `big-string`
//! (passes a 100 MB string to the `log` import, reports the error kind).
//!
//! Imports k8s, log and state (and nothing else from dr:recovery).

use core::hint::black_box;
use drhost_sdk::prelude::*;
use drhost_sdk::{k8s, state};

struct Misbehave;

const BEHAVIOURS: &str =
    "loop, memory, recurse, hang, panic, ok, deny, calls, state-big, big-string";

impl Guest for Misbehave {
    fn describe() -> ScenarioInfo {
        ScenarioInfo {
            name: "misbehave".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "Test plugin: misbehaves on demand to exercise the host's time boxes, \
                      memory limits, policy and error handling."
                .into(),
            rto_ms: 2_000,
            params: vec![
                param("behaviour", &format!("One of: {BEHAVIOURS}."), Some("ok")),
                param(
                    "count",
                    "Number of calls for behaviour `calls`.",
                    Some("1000"),
                ),
            ],
            steps: vec![
                step("misbehave", "Misbehave as told", 500, StepKind::Reads),
                step(
                    "after",
                    "Harmless step after the misbehaviour",
                    1_000,
                    StepKind::Reads,
                ),
            ],
        }
    }

    fn run_step(id: String, params: Vec<(String, String)>) -> Result<StepOutcome, String> {
        let p = Params::from(params);
        match id.as_str() {
            "misbehave" => misbehave(&p),
            "after" => {
                info!("after ran");
                Ok(StepOutcome::Done("after ran".into()))
            }
            other => Err(unknown_step(other, &["misbehave", "after"])),
        }
    }
}

drhost_sdk::export_scenario!(Misbehave);

fn misbehave(p: &Params) -> Result<StepOutcome, String> {
    match p.get_or("behaviour", "ok") {
        "loop" => spin(),
        "memory" => grow(),
        "recurse" => {
            let depth = recurse(black_box(0));
            Ok(StepOutcome::Done(format!("recursion ended at {depth}?")))
        }
        "hang" => {
            let r = k8s::get_deployment("ns", "app");
            Ok(StepOutcome::Done(format!(
                "get-deployment returned {}",
                r.map(|_| "ok").unwrap_or_else(|e| e.kind())
            )))
        }
        "panic" => panic!("misbehave: deliberate panic for the host test"),
        "ok" => {
            info!("ok");
            Ok(StepOutcome::Done("ok".into()))
        }
        "deny" => {
            let got = match k8s::scale("other-namespace", "payments", 0) {
                Ok(previous) => format!("ok ({previous})"),
                Err(e) => e.kind().to_string(),
            };
            Ok(StepOutcome::Done(format!("scale returned {got}")))
        }
        "calls" => {
            let count: u32 = p.parse_or("count", "1000")?;
            let mut errors = 0u32;
            for _ in 0..count {
                if k8s::get_deployment("ns", "app").is_err() {
                    errors += 1;
                }
            }
            Ok(StepOutcome::Done(format!(
                "made {count} get-deployment calls ({errors} errors)"
            )))
        }
        "state-big" => {
            let value = "x".repeat(1024 * 1024);
            let got = match state::set("k", &value) {
                Ok(()) => "ok",
                Err(e) => e.kind(),
            };
            Ok(StepOutcome::Done(format!("state set returned {got}")))
        }
        "big-string" => {
            let value = "y".repeat(100 * 1000 * 1000);
            // The raw import: the SDK's helpers would cut the message.
            let got = match drhost_sdk::log::log(drhost_sdk::log::Level::Info, black_box(&value)) {
                Ok(()) => "ok",
                Err(e) => e.kind(),
            };
            Ok(StepOutcome::Done(format!("log returned {got}")))
        }
        other => Err(format!(
            "unknown behaviour {other:?} (expected one of: {BEHAVIOURS})"
        )),
    }
}

/// Spins forever without host calls; `black_box` keeps the loop alive.
fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

/// Grows the heap by 1 MiB chunks forever, writing to every page.
fn grow() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1024 * 1024];
        for i in (0..chunk.len()).step_by(4096) {
            chunk[i] = 1;
        }
        chunks.push(black_box(chunk));
        black_box(&chunks);
    }
}

/// Recurses forever. Using the result after the call (through `black_box`)
/// rules out tail-call optimisation; keeping the frame in wasm locals (no
/// large stack buffer) makes it exhaust the engine's wasm call stack
/// ("call stack exhausted") rather than the shadow stack in linear memory.
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let deeper = black_box(recurse(black_box(n.wrapping_add(1))));
    deeper.wrapping_mul(31).wrapping_add(n)
}
