//! Test plugin: its step reads a file with `std::fs`, so the component
//! imports `wasi:filesystem`, which no runbook can grant. The host must
//! refuse it at load time; `describe` itself works normally.

use drhost_sdk::prelude::*;

struct FsAccess;

impl Guest for FsAccess {
    fn describe() -> ScenarioInfo {
        ScenarioInfo {
            name: "fs-access".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "Test plugin: reads a host file, which the sandbox must not allow.".into(),
            rto_ms: 1_000,
            params: vec![param("path", "File to read.", Some("/etc/hostname"))],
            steps: vec![step(
                "read-file",
                "Read a file from the host",
                1_000,
                StepKind::Reads,
            )],
        }
    }

    fn run_step(id: String, params: Vec<(String, String)>) -> Result<StepOutcome, String> {
        let p = Params::from(params);
        match id.as_str() {
            "read-file" => {
                let path = p.get_or("path", "/etc/hostname");
                let bytes = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
                Ok(StepOutcome::Done(format!(
                    "read {} bytes from {path}",
                    bytes.len()
                )))
            }
            other => Err(unknown_step(other, &["read-file"])),
        }
    }
}

drhost_sdk::export_scenario!(FsAccess);
