//! `drhost runs`: the runs recorded in an audit directory, with their
//! status, read from their audit logs (the journal of each run).
//!
//! A log whose last record is not `run-end` belongs to a run that is still
//! going or that was interrupted (the host crashed or was killed); the
//! listing says which step it was in and how to resume it. A log whose
//! chain does not verify is listed as such: it cannot be resumed.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::audit::{EventKind, ProblemKind, Record};

/// One run, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// The audit log.
    pub audit_log: PathBuf,
    /// `name@version` of the plugin.
    pub plugin: String,
    /// When the run started (RFC 3339), empty when unknown.
    pub started: String,
    /// Who started it.
    pub operator: String,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// `completed`, `stopped`, `interrupted` (no run-end: running or
    /// crashed) or `unreadable` (the chain does not verify).
    pub status: String,
    /// The step it stopped or was interrupted in, if any.
    pub step: Option<String>,
    /// One line for the operator.
    pub detail: String,
    /// How many times it was resumed.
    pub resumes: usize,
}

/// Lists the runs whose audit logs are in `dir`, oldest first.
///
/// # Errors
/// The directory cannot be read.
pub fn list(dir: &Path) -> Result<Vec<RunSummary>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read audit directory {}: {e}", dir.display()))?;
    let mut runs = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(run_id) = name.strip_suffix(crate::audit::FILE_SUFFIX) else {
            continue;
        };
        runs.push(summarize(run_id, &path));
    }
    runs.sort_by(|a, b| (&a.started, &a.run_id).cmp(&(&b.started, &b.run_id)));
    Ok(runs)
}

/// Summarizes one log.
fn summarize(run_id: &str, path: &Path) -> RunSummary {
    let mut s = RunSummary {
        run_id: run_id.to_owned(),
        audit_log: path.to_owned(),
        plugin: String::new(),
        started: String::new(),
        operator: String::new(),
        dry_run: false,
        status: "unreadable".into(),
        step: None,
        detail: String::new(),
        resumes: 0,
    };
    let report = match crate::audit::verify(path) {
        Ok(r) => r,
        Err(e) => {
            s.detail = e.to_string();
            return s;
        }
    };
    let torn = report
        .problem
        .as_ref()
        .is_some_and(|p| p.kind == ProblemKind::TornLastLine);
    if report.problem.is_some() && !torn {
        s.detail = report.to_string();
        return s;
    }
    // The verified records (a torn last line is left out).
    let records: Vec<Record> = std::fs::read(path)
        .map(|bytes| {
            bytes
                .split(|b| *b == b'\n')
                .take(report.records as usize)
                .filter_map(|l| serde_json::from_slice(l).ok())
                .collect()
        })
        .unwrap_or_default();
    if let Some(first) = records.first() {
        s.plugin = format!("{}@{}", first.plugin.name, first.plugin.version);
        s.started = first.ts.clone();
        let args = first.args.as_ref();
        let field = |k: &str| args.and_then(|a| a.get(k));
        s.operator = field("operator")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        s.dry_run = field("dry_run").and_then(Value::as_bool) == Some(true);
    }
    s.resumes = records
        .iter()
        .filter(|r| r.event == EventKind::Note && r.operation.as_deref() == Some("resume"))
        .count();
    let last_step = records
        .iter()
        .rev()
        .find(|r| r.event == EventKind::StepStart)
        .and_then(|r| r.step.clone());
    match records.last() {
        Some(end) if end.event == EventKind::RunEnd => {
            let o = end.outcome.as_ref();
            let get = |k: &str| o.and_then(|o| o.get(k)).and_then(Value::as_str);
            s.status = get("outcome").unwrap_or("ended").to_owned();
            s.step = get("step").map(str::to_owned);
            s.detail = get("message").unwrap_or_default().to_owned();
        }
        Some(_) => {
            s.status = "interrupted".into();
            s.step = last_step.clone();
            s.detail = format!(
                "no run-end record: still running, or the host stopped{}{}; \
                 resume with `drhost run RUNBOOK --resume {run_id}`",
                last_step
                    .as_deref()
                    .map(|st| format!(" in step {st}"))
                    .unwrap_or_default(),
                if torn { " (its last line is torn)" } else { "" },
            );
            if !report.open_intents.is_empty() {
                s.detail.push_str(&format!(
                    "; {} call(s) in flight with unknown effect (audit seq {})",
                    report.open_intents.len(),
                    report
                        .open_intents
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        None => s.detail = "the log holds no record".into(),
    }
    s
}

/// The listing as a table for a terminal.
pub fn render(runs: &[RunSummary]) -> String {
    let mut out = format!(
        "{:<28} {:<26} {:<25} {:<12} {:<22} {}\n",
        "RUN", "PLUGIN", "STARTED", "STATUS", "STEP", "DETAIL"
    );
    for r in runs {
        out.push_str(&format!(
            "{:<28} {:<26} {:<25} {:<12} {:<22} {}{}{}\n",
            r.run_id,
            r.plugin,
            r.started,
            r.status,
            r.step.as_deref().unwrap_or("-"),
            if r.dry_run { "(dry run) " } else { "" },
            if r.resumes > 0 {
                format!("(resumed {}x) ", r.resumes)
            } else {
                String::new()
            },
            crate::redact::text(&r.detail)
        ));
    }
    out
}
