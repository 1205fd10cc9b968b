//! Test plugin built against `dr:recovery@1.0.0` (a copy of the contract in
//! `wit/` with only the version changed), so its component exports and
//! imports `dr:recovery/...@1.0.0` names. The host, which speaks
//! `dr:recovery@0.1.0`, must refuse it at load time with a clear error.
//!
//! Bindings are generated here directly, not through the SDK (which is tied
//! to the host's contract version).

#[allow(unsafe_code, missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        world: "scenario",
        path: "wit",
    });
}

use bindings::dr::recovery::log::{Level, log};
use bindings::dr::recovery::types::{ParamInfo, ScenarioInfo, StepInfo, StepOutcome};

struct WrongWit;

impl bindings::Guest for WrongWit {
    fn describe() -> ScenarioInfo {
        ScenarioInfo {
            name: "wrong-wit".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "Test plugin built against dr:recovery@1.0.0.".into(),
            rto_ms: 1_000,
            params: Vec::<ParamInfo>::new(),
            steps: vec![StepInfo {
                id: "log".into(),
                title: "Log a message".into(),
                budget_ms: 1_000,
                mutates: false,
            }],
        }
    }

    fn run_step(id: String, _params: Vec<(String, String)>) -> Result<StepOutcome, String> {
        match id.as_str() {
            "log" => {
                let _ = log(Level::Info, "wrong-wit ran");
                Ok(StepOutcome::Done("logged".into()))
            }
            other => Err(format!("unknown step `{other}` (this plugin has: log)")),
        }
    }
}

// The export macro expands here, in this crate, into `unsafe` glue.
#[allow(unsafe_code)]
const _: () = {
    bindings::export!(WrongWit with_types_in bindings);
};
