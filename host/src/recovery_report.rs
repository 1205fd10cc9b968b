//! The recovery report of one run, rebuilt from its audit log alone
//! (`drhost report AUDIT.jsonl`, and the files `drhost drill` writes): the
//! step timeline against budgets and the RTO, every capability call with
//! its outcome, approvals, denials, the restored backup's age against the
//! RPO, the plugin's identity, and whether the audit chain verified.
//!
//! The audit log is the only input, so a report can be produced for any
//! run, on any machine, after the fact; and what the report says is what
//! the hash-chained log says (a report of a log that does not verify says
//! so first). In a drill on simulated time ([`crate::sim`]) the log's
//! timestamps and durations are simulated, and so is every figure here.
//!
//! Three renderings: Markdown (for a ticket or a post-mortem), JSON (for
//! tooling), and one self-contained HTML file with an SVG Gantt chart
//! (budget bar against actual bar per step, the RTO as a line, overruns in
//! red), no external assets.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

use crate::audit::{self, AuditError, EventKind, PluginIdentity, Record};
use crate::runbook::fmt_duration;

/// Errors building a report. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The log cannot be read or parsed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The log holds no run.
    #[error("audit log {path}: {problem}")]
    NotARun {
        /// The log.
        path: PathBuf,
        /// What is missing.
        problem: String,
    },
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    /// Run id.
    pub run_id: String,
    /// Name, version and sha256 of the plugin that ran.
    pub plugin: PluginIdentity,
    /// The runbook config.
    pub runbook: Option<String>,
    /// Who ran it.
    pub operator: Option<String>,
    /// When it started (RFC 3339, as the log records it).
    pub started_at: String,
    /// Whether the run was on simulated time (a drill on mocks).
    pub simulated: bool,
    /// The drill's real-time pacing (`None`: as fast as possible).
    pub time_scale: Option<f64>,
    /// The simulated environment (fixture), if any.
    pub simulation: Option<String>,
    /// Mutations were simulated (`--dry-run`).
    pub dry_run: bool,
    /// Recovery time objective.
    pub rto_ms: u64,
    /// Duration of the run; for a run cut short, up to its last record.
    pub total_ms: u64,
    /// Whether the log has the run's end (false: the host stopped mid-run).
    pub finished: bool,
    /// `completed`, `failed`, `halted`, `timed-out`, `trapped`, `declined`,
    /// or `cut-short` when the log ends before the run did.
    pub outcome: String,
    /// The step the run ended in (anything but completed).
    pub outcome_step: Option<String>,
    /// The outcome's message.
    pub outcome_message: String,
    /// Steps that ran, in order.
    pub steps: Vec<StepTiming>,
    /// Steps never reached.
    pub skipped: Vec<String>,
    /// Every capability call.
    pub calls: Vec<CallSummary>,
    /// Every question put to the operator.
    pub approvals: Vec<ApprovalSummary>,
    /// Calls the policy refused.
    pub denials: Vec<DenialSummary>,
    /// The backup restored (or the newest one seen) against the RPO.
    pub backup: Option<BackupAge>,
    /// The audit chain check.
    pub audit: AuditCheck,
}

/// One step on the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    /// Step id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Whether it mutates.
    pub mutates: bool,
    /// Its time box.
    pub budget_ms: u64,
    /// When it started, from the run's start.
    pub start_ms: u64,
    /// How long it took.
    pub duration_ms: u64,
    /// `done`, `failed`, ... (`running` if the log ends inside it).
    pub status: String,
    /// The step's result or error.
    pub message: String,
    /// Took longer than its budget (possible when the operator was slow to
    /// answer: waits for the operator extend the time box).
    pub over_budget: bool,
}

/// One capability call.
#[derive(Debug, Clone, Serialize)]
pub struct CallSummary {
    /// The step it was made in.
    pub step: String,
    /// `capability.operation`.
    pub op: String,
    /// Arguments as `name=value` words.
    pub args: String,
    /// `ok`, a cap-error kind, `denied`, `dry-run`, or `no-outcome` (the
    /// log ends between intent and outcome).
    pub status: String,
    /// Error or denial message.
    pub detail: String,
    /// When it started, from the run's start.
    pub start_ms: u64,
    /// How long it took.
    pub duration_ms: u64,
}

/// One question to the operator.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalSummary {
    /// The step.
    pub step: String,
    /// `step`, `confirm` or `text`.
    pub kind: String,
    /// The question.
    pub question: String,
    /// The answer.
    pub approved: bool,
    /// The text answer, for `text` questions.
    pub text: Option<String>,
    /// Who answered.
    pub by: String,
}

/// A refused call.
#[derive(Debug, Clone, Serialize)]
pub struct DenialSummary {
    /// The step.
    pub step: String,
    /// `capability.operation`.
    pub op: String,
    /// Arguments as `name=value` words.
    pub args: String,
    /// Why.
    pub reason: String,
}

/// The backup's age against the recovery point objective.
#[derive(Debug, Clone, Serialize)]
pub struct BackupAge {
    /// `bucket/key`.
    pub source: String,
    /// Whether this backup was restored (else: the newest one seen).
    pub restored: bool,
    /// Its age when the plugin looked it up.
    pub age_ms: u64,
    /// The scenario's `rpo` parameter, if it has one.
    pub rpo_ms: Option<u64>,
    /// `age <= rpo`, when the RPO is known.
    pub within_rpo: Option<bool>,
}

/// What `drhost audit verify` says about the log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditCheck {
    /// The log.
    pub path: PathBuf,
    /// Records that verified.
    pub records: u64,
    /// Whether the hash chain is intact.
    pub verified: bool,
    /// The first problem, if any.
    pub problem: Option<String>,
    /// Intents with no outcome (the host stopped between the two).
    pub open_intents: Vec<u64>,
}

impl RecoveryReport {
    /// Reads and verifies the audit log at `path` and builds its report.
    ///
    /// # Errors
    /// [`ReportError`] when the log cannot be read or holds no run.
    pub fn from_audit(path: &Path) -> Result<RecoveryReport, ReportError> {
        let verified = audit::verify(path)?;
        let records = audit::read_records(path)?;
        let check = AuditCheck {
            path: path.to_owned(),
            records: verified.records,
            verified: verified.is_ok(),
            problem: verified.problem.as_ref().map(|p| p.to_string()),
            open_intents: verified.open_intents.clone(),
        };
        Self::from_records(path, &records, check)
    }

    /// Builds the report from parsed records and their chain check.
    ///
    /// # Errors
    /// [`ReportError::NotARun`] when there is no run-start record.
    pub fn from_records(
        path: &Path,
        records: &[Record],
        audit: AuditCheck,
    ) -> Result<RecoveryReport, ReportError> {
        let start = records
            .iter()
            .find(|r| r.event == EventKind::RunStart)
            .ok_or_else(|| ReportError::NotARun {
                path: path.to_owned(),
                problem: "no run-start record: this is not the log of a scenario run".into(),
            })?;
        let t0 = parse_ts(&start.ts);
        let offset = |r: &Record| -> u64 {
            match (t0, parse_ts(&r.ts)) {
                (Some(a), Some(b)) => b.duration_since(a).unwrap_or_default().as_millis() as u64,
                _ => 0,
            }
        };
        let args = start.args.clone().unwrap_or(Value::Null);
        let params = args.get("params").cloned().unwrap_or(Value::Null);
        let clock = args.get("clock").cloned().unwrap_or(Value::Null);
        let mut report = RecoveryReport {
            run_id: start.run.clone(),
            plugin: start.plugin.clone(),
            runbook: str_of(&args, "runbook"),
            operator: str_of(&args, "operator"),
            started_at: start.ts.clone(),
            simulated: clock.get("simulated").and_then(Value::as_bool) == Some(true),
            time_scale: clock.get("time_scale").and_then(Value::as_f64),
            simulation: str_of(&args, "simulation"),
            dry_run: args.get("dry_run").and_then(Value::as_bool) == Some(true),
            rto_ms: args.get("rto_ms").and_then(Value::as_u64).unwrap_or(0),
            total_ms: records.last().map(offset).unwrap_or(0),
            finished: false,
            outcome: "cut-short".into(),
            outcome_step: None,
            outcome_message: "the log ends before the run did (the host stopped mid-run)".into(),
            steps: Vec::new(),
            skipped: Vec::new(),
            calls: Vec::new(),
            approvals: Vec::new(),
            denials: Vec::new(),
            backup: None,
            audit,
        };

        // Open intents by (step, capability, operation): index into calls.
        let mut open: BTreeMap<(String, String, String), Vec<usize>> = BTreeMap::new();
        // Objects seen in object-store answers: bucket/key -> age.
        let mut ages: BTreeMap<String, u64> = BTreeMap::new();
        let mut newest_seen: Option<String> = None;
        let mut restored: Option<String> = None;
        let mut last_ms: u64 = 0;
        for r in records {
            let step = r.step.clone().unwrap_or_default();
            // `drhost run --resume`: the step the host died in ended with
            // the last record before it.
            if r.event == EventKind::Note && r.operation.as_deref() == Some("resume") {
                for s in report.steps.iter_mut().filter(|s| s.status == "running") {
                    s.status = "interrupted".into();
                    s.message = "the host stopped; the run was resumed".into();
                    s.duration_ms = last_ms.saturating_sub(s.start_ms);
                    s.over_budget = s.duration_ms > s.budget_ms;
                }
            }
            last_ms = offset(r);
            let op = format!(
                "{}.{}",
                r.capability.as_deref().unwrap_or(""),
                r.operation.as_deref().unwrap_or("")
            );
            match r.event {
                EventKind::StepStart => {
                    let a = r.args.clone().unwrap_or(Value::Null);
                    report.steps.push(StepTiming {
                        id: step,
                        title: str_of(&a, "title").unwrap_or_default(),
                        mutates: a.get("mutates").and_then(Value::as_bool) == Some(true),
                        budget_ms: a.get("budget_ms").and_then(Value::as_u64).unwrap_or(0),
                        start_ms: offset(r),
                        duration_ms: 0,
                        status: "running".into(),
                        message: String::new(),
                        over_budget: false,
                    });
                }
                EventKind::StepEnd => {
                    if let Some(s) = report.steps.iter_mut().rev().find(|s| s.id == step) {
                        let o = r.outcome.clone().unwrap_or(Value::Null);
                        s.status = str_of(&o, "status").unwrap_or_else(|| "unknown".into());
                        s.message = str_of(&o, "message").unwrap_or_default();
                        s.duration_ms = r
                            .duration_ms
                            .map(|d| d.round() as u64)
                            .unwrap_or_else(|| offset(r).saturating_sub(s.start_ms));
                        s.over_budget = s.duration_ms > s.budget_ms;
                    }
                }
                EventKind::CallIntent => {
                    let args = r.args.clone().unwrap_or(Value::Null);
                    if op == "postgres.restore" {
                        restored = Some(format!(
                            "{}/{}",
                            str_of(&args, "bucket").unwrap_or_default(),
                            str_of(&args, "key").unwrap_or_default()
                        ));
                    }
                    report.calls.push(CallSummary {
                        step: step.clone(),
                        op: op.clone(),
                        args: render_args(&args),
                        status: "no-outcome".into(),
                        detail: String::new(),
                        start_ms: offset(r),
                        duration_ms: 0,
                    });
                    open.entry((
                        step,
                        r.capability.clone().unwrap_or_default(),
                        r.operation.clone().unwrap_or_default(),
                    ))
                    .or_default()
                    .push(report.calls.len() - 1);
                }
                EventKind::CallOutcome => {
                    let key = (
                        step,
                        r.capability.clone().unwrap_or_default(),
                        r.operation.clone().unwrap_or_default(),
                    );
                    let o = r.outcome.clone().unwrap_or(Value::Null);
                    if let Some(i) = open.get_mut(&key).and_then(Vec::pop) {
                        let c = &mut report.calls[i];
                        let (status, detail) = outcome_status(&o);
                        c.status = status;
                        c.detail = detail;
                        c.duration_ms = r.duration_ms.map(|d| d.round() as u64).unwrap_or(0);
                    }
                    if op.starts_with("object-store.")
                        && let Some(ok) = o.get("ok")
                    {
                        for info in object_infos(ok) {
                            if op == "object-store.newest" {
                                newest_seen = Some(info.0.clone());
                            }
                            ages.insert(info.0, info.1);
                        }
                    }
                }
                EventKind::Denial => {
                    let a = r.args.clone().unwrap_or(Value::Null);
                    let reason = r.message.clone().unwrap_or_default();
                    report.calls.push(CallSummary {
                        step: step.clone(),
                        op: op.clone(),
                        args: render_args(&a),
                        status: "denied".into(),
                        detail: reason.clone(),
                        start_ms: offset(r),
                        duration_ms: 0,
                    });
                    report.denials.push(DenialSummary {
                        step,
                        op,
                        args: render_args(&a),
                        reason,
                    });
                }
                EventKind::Approval => {
                    let a = r.args.clone().unwrap_or(Value::Null);
                    let o = r.outcome.clone().unwrap_or(Value::Null);
                    report.approvals.push(ApprovalSummary {
                        step,
                        kind: str_of(&a, "kind").unwrap_or_default(),
                        question: str_of(&a, "question").unwrap_or_default(),
                        approved: o.get("approved").and_then(Value::as_bool) == Some(true),
                        text: str_of(&o, "text"),
                        by: str_of(&o, "by").unwrap_or_default(),
                    });
                }
                EventKind::RunEnd => {
                    let o = r.outcome.clone().unwrap_or(Value::Null);
                    report.finished = true;
                    report.outcome = str_of(&o, "outcome").unwrap_or_else(|| "unknown".into());
                    report.outcome_step = str_of(&o, "step");
                    report.outcome_message = str_of(&o, "message").unwrap_or_default();
                    report.skipped = o
                        .get("skipped")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    if let Some(d) = r.duration_ms {
                        report.total_ms = d.round() as u64;
                    }
                }
                _ => {}
            }
        }
        // A step the log ends inside ran until the last record.
        let last = report.total_ms;
        for s in report.steps.iter_mut().filter(|s| s.status == "running") {
            s.duration_ms = last.saturating_sub(s.start_ms);
            s.over_budget = s.duration_ms > s.budget_ms;
        }
        let rpo_ms = params
            .get("rpo")
            .and_then(Value::as_str)
            .and_then(|s| crate::runbook::parse_duration(s).ok())
            .map(|d| d.as_millis() as u64);
        let chosen = restored
            .clone()
            .filter(|k| ages.contains_key(k))
            .map(|k| (k, true))
            .or_else(|| newest_seen.map(|k| (k, false)));
        report.backup = chosen.and_then(|(source, restored)| {
            let age_ms = *ages.get(&source)?;
            Some(BackupAge {
                source,
                restored,
                age_ms,
                rpo_ms,
                within_rpo: rpo_ms.map(|rpo| age_ms <= rpo),
            })
        });
        Ok(report)
    }

    /// The run ended and took no longer than its RTO.
    pub fn within_rto(&self) -> bool {
        self.finished && self.total_ms <= self.rto_ms
    }

    /// One line: outcome, time against the RTO, overruns, chain.
    pub fn verdict(&self) -> String {
        let pct = 100.0 * self.total_ms as f64 / (self.rto_ms.max(1)) as f64;
        let over: Vec<&str> = self
            .steps
            .iter()
            .filter(|s| s.over_budget)
            .map(|s| s.id.as_str())
            .collect();
        format!(
            "{}: {} in {} of the {} RTO ({pct:.0}%){}{}; audit chain {}",
            if self.simulated {
                "drill (simulated time)"
            } else {
                "run"
            },
            self.outcome,
            ms(self.total_ms),
            ms(self.rto_ms),
            if self.finished && self.total_ms > self.rto_ms {
                " — RTO EXCEEDED"
            } else {
                ""
            },
            if over.is_empty() {
                String::new()
            } else {
                format!("; over budget: {}", over.join(", "))
            },
            if self.audit.verified {
                "verified"
            } else {
                "DOES NOT VERIFY"
            }
        )
    }

    /// The report as pretty JSON.
    ///
    /// # Errors
    /// Serialization failure (not expected).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let mut s = serde_json::to_string_pretty(self)?;
        s.push('\n');
        Ok(s)
    }

    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let p = &self.plugin;
        let _ = writeln!(s, "# Recovery report: {}@{}\n", p.name, p.version);
        if !self.audit.verified {
            let _ = writeln!(
                s,
                "> **The audit log does not verify**: {}. Figures below come from a log that may have been altered.\n",
                self.audit.problem.as_deref().unwrap_or("unknown problem")
            );
        }
        let _ = writeln!(s, "**{}**\n", self.verdict());
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| run | `{}` |", self.run_id);
        let _ = writeln!(
            s,
            "| plugin | {}@{} (sha256 `{}`) |",
            p.name, p.version, p.sha256
        );
        if let Some(rb) = &self.runbook {
            let _ = writeln!(s, "| runbook | `{}` |", md_cell(rb));
        }
        let _ = writeln!(s, "| started | {} |", self.started_at);
        if let Some(op) = &self.operator {
            let _ = writeln!(s, "| operator | {} |", md_cell(op));
        }
        let _ = writeln!(s, "| clock | {} |", self.clock_text());
        if let Some(sim) = &self.simulation {
            let _ = writeln!(s, "| simulation | {} |", md_cell(sim));
        }
        if self.dry_run {
            let _ = writeln!(s, "| mode | dry run: mutations simulated |");
        }
        let _ = writeln!(
            s,
            "| outcome | {}{} |",
            self.outcome,
            match &self.outcome_step {
                Some(st) => format!(" in step `{st}`: {}", md_cell(&self.outcome_message)),
                None => String::new(),
            }
        );
        let _ = writeln!(
            s,
            "| total | {} of {} RTO{} |",
            ms(self.total_ms),
            ms(self.rto_ms),
            if self.finished && self.total_ms > self.rto_ms {
                " — **exceeded**"
            } else {
                ""
            }
        );
        let budgets: u64 = self.steps.iter().map(|s| s.budget_ms).sum();
        let _ = writeln!(
            s,
            "| budgets | {} in all for the steps that ran{} |",
            ms(budgets),
            if budgets > self.rto_ms {
                " — **more than the RTO: the runbook cannot meet its own objective if every step uses its budget**"
            } else {
                ""
            }
        );
        if let Some(b) = &self.backup {
            let _ = writeln!(s, "| backup | {} |", md_cell(&b.text()));
        }
        let _ = writeln!(s, "| audit | {} |", md_cell(&self.audit_text()));

        let _ = writeln!(s, "\n## Timeline\n");
        let _ = writeln!(
            s,
            "| # | step | start | took | budget | used | status | result |\n|---|---|---|---|---|---|---|---|"
        );
        for (i, st) in self.steps.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | `{}` {} | {} | {} | {} | {:.0}%{} | {} | {} |",
                i + 1,
                st.id,
                md_cell(&st.title),
                ms(st.start_ms),
                ms(st.duration_ms),
                ms(st.budget_ms),
                100.0 * st.duration_ms as f64 / st.budget_ms.max(1) as f64,
                if st.over_budget { " **OVER**" } else { "" },
                st.status,
                md_cell(first_line(&st.message, 160))
            );
        }
        for id in &self.skipped {
            let _ = writeln!(s, "| - | `{id}` | | | | | skipped | |");
        }

        let (shown, internal) = self.visible_calls();
        let _ = writeln!(
            s,
            "\n## Calls ({}, and {internal} state/clock calls not listed)\n",
            shown.len()
        );
        let _ = writeln!(
            s,
            "| step | call | arguments | outcome | took |\n|---|---|---|---|---|"
        );
        for c in shown {
            let _ = writeln!(
                s,
                "| `{}` | `{}` | {} | {}{} | {} |",
                c.step,
                c.op,
                md_cell(&c.args),
                c.status,
                if c.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", md_cell(first_line(&c.detail, 160)))
                },
                ms(c.duration_ms)
            );
        }
        let _ = writeln!(s, "\n## Operator ({})\n", self.approvals.len());
        if self.approvals.is_empty() {
            let _ = writeln!(s, "No questions were put to the operator.");
        } else {
            let _ = writeln!(
                s,
                "| step | kind | question | answer | by |\n|---|---|---|---|---|"
            );
            for a in &self.approvals {
                let _ = writeln!(
                    s,
                    "| `{}` | {} | {} | {} | {} |",
                    a.step,
                    a.kind,
                    md_cell(&a.question),
                    md_cell(&a.answer_text()),
                    md_cell(&a.by)
                );
            }
        }
        let _ = writeln!(s, "\n## Denials ({})\n", self.denials.len());
        if self.denials.is_empty() {
            let _ = writeln!(s, "The policy refused no call.");
        } else {
            let _ = writeln!(s, "| step | call | arguments | reason |\n|---|---|---|---|");
            for d in &self.denials {
                let _ = writeln!(
                    s,
                    "| `{}` | `{}` | {} | {} |",
                    d.step,
                    d.op,
                    md_cell(&d.args),
                    md_cell(&d.reason)
                );
            }
        }
        s
    }

    /// The calls worth a reader's time (not `state.*` and `clock.*`, which
    /// the JSON keeps), and how many were left out.
    fn visible_calls(&self) -> (Vec<&CallSummary>, usize) {
        let internal = |c: &&CallSummary| {
            (c.op.starts_with("state.") || c.op.starts_with("clock.")) && c.status == "ok"
        };
        let shown: Vec<&CallSummary> = self.calls.iter().filter(|c| !internal(c)).collect();
        let hidden = self.calls.len() - shown.len();
        (shown, hidden)
    }

    fn clock_text(&self) -> String {
        if !self.simulated {
            return "real time".into();
        }
        match self.time_scale {
            Some(t) => format!("simulated (time scale {t}): durations are the simulation's"),
            None => "simulated (time scale max): durations are the simulation's".into(),
        }
    }

    fn audit_text(&self) -> String {
        let mut t = if self.audit.verified {
            format!(
                "chain verified ({} records): {}",
                self.audit.records,
                self.audit.path.display()
            )
        } else {
            format!(
                "DOES NOT VERIFY: {} ({})",
                self.audit.problem.as_deref().unwrap_or("unknown problem"),
                self.audit.path.display()
            )
        };
        if !self.audit.open_intents.is_empty() {
            let _ = write!(
                t,
                "; {} call(s) with an intent and no outcome (seq {:?}): their effect is unknown",
                self.audit.open_intents.len(),
                self.audit.open_intents
            );
        }
        t
    }

    /// The report as one self-contained HTML page (inline CSS and SVG).
    pub fn to_html(&self) -> String {
        let p = &self.plugin;
        let mut s = String::new();
        let title = format!(
            "Recovery report: {}@{} — run {}",
            p.name, p.version, self.run_id
        );
        let _ = write!(
            s,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{}</title><style>{CSS}</style></head><body>\n",
            esc(&title)
        );
        let _ = writeln!(s, "<h1>{}</h1>", esc(&title));
        if !self.audit.verified {
            let _ = writeln!(
                s,
                "<p class=\"alarm\">The audit log does not verify: {}. Figures below come from a log that may have been altered.</p>",
                esc(self.audit.problem.as_deref().unwrap_or("unknown problem"))
            );
        }
        let good = self.outcome == "completed" && self.within_rto();
        let _ = writeln!(
            s,
            "<p class=\"verdict {}\">{}</p>",
            if good { "ok" } else { "bad" },
            esc(&self.verdict())
        );
        let _ = writeln!(s, "<table class=\"facts\">");
        let mut fact = |k: &str, v: String| {
            let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", esc(k), v);
        };
        fact("run", format!("<code>{}</code>", esc(&self.run_id)));
        fact(
            "plugin",
            format!(
                "{}@{} <span class=\"dim\">sha256 <code>{}</code></span>",
                esc(&p.name),
                esc(&p.version),
                esc(&p.sha256)
            ),
        );
        if let Some(rb) = &self.runbook {
            fact("runbook", format!("<code>{}</code>", esc(rb)));
        }
        fact("started", esc(&self.started_at));
        if let Some(op) = &self.operator {
            fact("operator", esc(op));
        }
        fact("clock", esc(&self.clock_text()));
        if let Some(sim) = &self.simulation {
            fact("simulation", esc(sim));
        }
        if self.dry_run {
            fact("mode", "dry run: mutations simulated".into());
        }
        fact(
            "outcome",
            format!(
                "<b>{}</b>{}",
                esc(&self.outcome),
                match &self.outcome_step {
                    Some(st) => format!(
                        " in step <code>{}</code>: {}",
                        esc(st),
                        esc(&self.outcome_message)
                    ),
                    None => String::new(),
                }
            ),
        );
        fact(
            "total",
            format!(
                "{} of {} RTO{}",
                ms(self.total_ms),
                ms(self.rto_ms),
                if self.finished && self.total_ms > self.rto_ms {
                    " — <b class=\"red\">exceeded</b>"
                } else {
                    ""
                }
            ),
        );
        if let Some(b) = &self.backup {
            let cls = match b.within_rpo {
                Some(false) => "red",
                _ => "",
            };
            fact(
                "backup",
                format!("<span class=\"{cls}\">{}</span>", esc(&b.text())),
            );
        }
        fact("audit", esc(&self.audit_text()));
        let _ = writeln!(s, "</table>");

        let _ = writeln!(s, "<h2>Timeline against budgets and the RTO</h2>");
        s.push_str(&self.gantt_svg());
        let _ = writeln!(
            s,
            "<table><tr><th>#</th><th>step</th><th>start</th><th>took</th><th>budget</th><th>status</th><th>result</th></tr>"
        );
        for (i, st) in self.steps.iter().enumerate() {
            let _ = writeln!(
                s,
                "<tr class=\"{}\"><td>{}</td><td><code>{}</code><br><span class=\"dim\">{}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if st.over_budget || !matches!(st.status.as_str(), "done" | "halted") {
                    "bad"
                } else {
                    ""
                },
                i + 1,
                esc(&st.id),
                esc(&st.title),
                ms(st.start_ms),
                ms(st.duration_ms),
                ms(st.budget_ms),
                esc(&st.status),
                esc(&st.message)
            );
        }
        for id in &self.skipped {
            let _ = writeln!(
                s,
                "<tr class=\"dim\"><td>-</td><td><code>{}</code></td><td></td><td></td><td></td><td>skipped</td><td></td></tr>",
                esc(id)
            );
        }
        let _ = writeln!(s, "</table>");

        let (shown, internal) = self.visible_calls();
        let _ = writeln!(
            s,
            "<h2>Calls ({}, and {internal} state/clock calls not listed)</h2>",
            shown.len()
        );
        let _ = writeln!(
            s,
            "<table><tr><th>step</th><th>call</th><th>arguments</th><th>outcome</th><th>took</th></tr>"
        );
        for c in shown {
            let _ = writeln!(
                s,
                "<tr class=\"{}\"><td><code>{}</code></td><td><code>{}</code></td><td class=\"args\">{}</td><td>{}{}</td><td>{}</td></tr>",
                if c.status == "ok" || c.status == "dry-run" {
                    ""
                } else {
                    "bad"
                },
                esc(&c.step),
                esc(&c.op),
                esc(&c.args),
                esc(&c.status),
                if c.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", esc(&c.detail))
                },
                ms(c.duration_ms)
            );
        }
        let _ = writeln!(s, "</table>");
        let _ = writeln!(s, "<h2>Operator ({})</h2>", self.approvals.len());
        if self.approvals.is_empty() {
            let _ = writeln!(s, "<p>No questions were put to the operator.</p>");
        } else {
            let _ = writeln!(
                s,
                "<table><tr><th>step</th><th>kind</th><th>question</th><th>answer</th><th>by</th></tr>"
            );
            for a in &self.approvals {
                let _ = writeln!(
                    s,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&a.step),
                    esc(&a.kind),
                    esc(&a.question),
                    esc(&a.answer_text()),
                    esc(&a.by)
                );
            }
            let _ = writeln!(s, "</table>");
        }
        let _ = writeln!(s, "<h2>Denials ({})</h2>", self.denials.len());
        if self.denials.is_empty() {
            let _ = writeln!(s, "<p>The policy refused no call.</p>");
        } else {
            let _ = writeln!(
                s,
                "<table><tr><th>step</th><th>call</th><th>arguments</th><th>reason</th></tr>"
            );
            for d in &self.denials {
                let _ = writeln!(
                    s,
                    "<tr class=\"bad\"><td><code>{}</code></td><td><code>{}</code></td><td class=\"args\">{}</td><td>{}</td></tr>",
                    esc(&d.step),
                    esc(&d.op),
                    esc(&d.args),
                    esc(&d.reason)
                );
            }
            let _ = writeln!(s, "</table>");
        }
        let _ = writeln!(
            s,
            "<p class=\"dim\">Generated by drhost {} from the audit log alone.</p></body></html>",
            env!("CARGO_PKG_VERSION")
        );
        s
    }

    /// The Gantt chart: per step a budget bar (outline) from the step's
    /// start and an actual bar over it (red when over budget or failed), a
    /// dashed RTO line, and a time axis.
    pub fn gantt_svg(&self) -> String {
        const LABEL_W: f64 = 190.0;
        const CHART_W: f64 = 760.0;
        const ROW_H: f64 = 30.0;
        const TOP: f64 = 26.0;
        let span = self
            .steps
            .iter()
            .map(|s| (s.start_ms + s.budget_ms.max(s.duration_ms)) as f64)
            .fold(self.rto_ms.max(self.total_ms) as f64, f64::max)
            .max(1.0);
        let x = |t: f64| LABEL_W + CHART_W * t / span;
        let rows = self.steps.len().max(1) as f64;
        let height = TOP + rows * ROW_H + 34.0;
        let width = LABEL_W + CHART_W + 20.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"gantt\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" role=\"img\" aria-label=\"step timeline against budgets and the RTO\">"
        );
        // Axis ticks: a round step giving 5-10 ticks.
        let tick = nice_tick(span / 8.0);
        let mut t = 0.0;
        while t <= span + 0.5 {
            let tx = x(t);
            let _ = writeln!(
                s,
                "<line x1=\"{tx:.1}\" y1=\"{:.1}\" x2=\"{tx:.1}\" y2=\"{:.1}\" class=\"grid\"/><text x=\"{tx:.1}\" y=\"{:.1}\" class=\"tick\">{}</text>",
                TOP - 6.0,
                TOP + rows * ROW_H,
                TOP + rows * ROW_H + 16.0,
                esc(&ms(t as u64))
            );
            t += tick;
        }
        for (i, st) in self.steps.iter().enumerate() {
            let y = TOP + i as f64 * ROW_H;
            let bad = st.over_budget || !matches!(st.status.as_str(), "done" | "halted");
            let _ = writeln!(
                s,
                "<text x=\"6\" y=\"{:.1}\" class=\"label\">{}</text>",
                y + ROW_H * 0.62,
                esc(&st.id)
            );
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" class=\"budget\"><title>{} budget {}</title></rect>",
                x(st.start_ms as f64),
                y + 5.0,
                (x((st.start_ms + st.budget_ms) as f64) - x(st.start_ms as f64)).max(1.0),
                ROW_H - 10.0,
                esc(&st.id),
                esc(&ms(st.budget_ms))
            );
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" class=\"{}\"><title>{} took {} ({})</title></rect>",
                x(st.start_ms as f64),
                y + 10.0,
                (x((st.start_ms + st.duration_ms) as f64) - x(st.start_ms as f64)).max(2.0),
                ROW_H - 20.0,
                if bad { "actual over" } else { "actual" },
                esc(&st.id),
                esc(&ms(st.duration_ms)),
                esc(&st.status)
            );
        }
        let rx = x(self.rto_ms as f64);
        let _ = writeln!(
            s,
            "<line x1=\"{rx:.1}\" y1=\"{:.1}\" x2=\"{rx:.1}\" y2=\"{:.1}\" class=\"rto\"/><text x=\"{:.1}\" y=\"{:.1}\" class=\"rtolabel\">RTO {}</text>",
            TOP - 14.0,
            TOP + rows * ROW_H,
            rx - 4.0,
            TOP - 6.0,
            esc(&ms(self.rto_ms))
        );
        let _ = writeln!(s, "</svg>");
        s
    }
}

impl BackupAge {
    fn text(&self) -> String {
        format!(
            "{} {}: {} old{}",
            if self.restored {
                "restored"
            } else {
                "newest seen"
            },
            self.source,
            ms(self.age_ms),
            match (self.rpo_ms, self.within_rpo) {
                (Some(rpo), Some(true)) => format!(", within the {} RPO", ms(rpo)),
                (Some(rpo), _) => format!(
                    ", {} beyond the {} RPO: up to {} of data lost",
                    ms(self.age_ms.saturating_sub(rpo)),
                    ms(rpo),
                    ms(self.age_ms)
                ),
                (None, _) => " (the scenario has no `rpo` parameter)".into(),
            }
        )
    }
}

impl ApprovalSummary {
    fn answer_text(&self) -> String {
        match &self.text {
            Some(t) if !self.approved => format!("no answer {t:?}"),
            Some(t) if t.is_empty() => "(empty)".into(),
            Some(t) => t.clone(),
            None if self.approved => "yes".into(),
            None => "no".into(),
        }
    }
}

const CSS: &str = "body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1000px;color:#1d2330;padding:0 16px}\
h1{font-size:22px;margin-bottom:6px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #dde;padding-bottom:4px}\
table{border-collapse:collapse;width:100%;margin:8px 0}th,td{text-align:left;vertical-align:top;padding:4px 8px;border-bottom:1px solid #eef}\
th{background:#f4f6fa;font-weight:600}table.facts th{width:110px}code{font:12px ui-monospace,Menlo,Consolas,monospace}\
.dim{color:#778}.red{color:#c0392b}tr.bad td{background:#fff1f0}td.args{font:12px ui-monospace,Menlo,Consolas,monospace;word-break:break-all}\
.verdict{font-weight:600;padding:8px 12px;border-radius:6px}.verdict.ok{background:#e8f7ee;color:#17653a}.verdict.bad{background:#fdecea;color:#a12a1c}\
.alarm{background:#c0392b;color:#fff;padding:8px 12px;border-radius:6px;font-weight:600}\
svg.gantt{max-width:100%;height:auto;background:#fbfcfe;border:1px solid #e3e7ef;border-radius:6px}\
svg .grid{stroke:#e3e7ef}svg .tick{font:11px system-ui,sans-serif;fill:#778;text-anchor:middle}svg .label{font:12px ui-monospace,Menlo,monospace;fill:#1d2330}\
svg .budget{fill:#eef1f7;stroke:#9aa6bf;stroke-dasharray:4 2}svg .actual{fill:#2e86de}svg .actual.over{fill:#d63031}\
svg .rto{stroke:#d63031;stroke-width:2;stroke-dasharray:6 4}svg .rtolabel{font:bold 11px system-ui,sans-serif;fill:#d63031;text-anchor:end}\
td code{white-space:nowrap}";

/// Milliseconds as a duration ("4m12s", "850ms").
fn ms(v: u64) -> String {
    fmt_duration(Duration::from_millis(v))
}

/// A round tick interval near `raw` milliseconds (1, 2 or 5 times a power
/// of ten of seconds or minutes).
fn nice_tick(raw: f64) -> f64 {
    let candidates = [
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1e3, 2e3, 5e3, 10e3, 15e3, 30e3,
        60e3, 120e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 7200e3, 14400e3,
    ];
    candidates
        .iter()
        .copied()
        .find(|c| *c >= raw)
        .unwrap_or(raw.max(1.0))
}

fn parse_ts(ts: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(ts).ok()
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// `name=value` words, as `drhost test` expectations match them.
fn render_args(args: &Value) -> String {
    match args {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => "none".into(),
                    other => other.to_string(),
                };
                format!("{k}={v}")
            })
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Status and detail of a call-outcome record's outcome.
fn outcome_status(o: &Value) -> (String, String) {
    if o.get("dry_run").and_then(Value::as_bool) == Some(true) {
        return ("dry-run".into(), String::new());
    }
    if let Some(e) = o.get("error") {
        return (
            str_of(e, "kind").unwrap_or_else(|| "failed".into()),
            str_of(e, "message").unwrap_or_default(),
        );
    }
    if o.get("unknown").and_then(Value::as_bool) == Some(true) {
        return (
            "unknown".into(),
            "the host stopped after the intent and before the outcome; the run was resumed".into(),
        );
    }
    ("ok".into(), String::new())
}

/// (bucket/key, age) of every object-info in an object-store answer (one
/// object, an optional one, or a list).
fn object_infos(ok: &Value) -> Vec<(String, u64)> {
    let one = |v: &Value| -> Option<(String, u64)> {
        let bucket = v.get("bucket")?.as_str()?;
        let key = v.get("key")?.as_str()?;
        let age = v.get("age_ms").or_else(|| v.get("age-ms"))?.as_u64()?;
        Some((format!("{bucket}/{key}"), age))
    };
    match ok {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn first_line(s: &str, max: usize) -> &str {
    let l = s.lines().next().unwrap_or("");
    if l.len() <= max {
        return l;
    }
    let mut end = max;
    while !l.is_char_boundary(end) {
        end -= 1;
    }
    &l[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(md_cell("a|b\nc"), "a\\|b c");
        assert_eq!(nice_tick(7.0 * 60_000.0), 600e3);
        assert_eq!(
            object_infos(
                &serde_json::json!([{"bucket":"b","key":"k1","age_ms":5},{"bucket":"b","key":"k2","age_ms":7}])
            ),
            vec![("b/k1".to_string(), 5), ("b/k2".to_string(), 7)]
        );
        assert_eq!(
            outcome_status(&serde_json::json!({"error":{"kind":"timed-out","message":"m"}})),
            ("timed-out".to_string(), "m".to_string())
        );
        assert_eq!(
            outcome_status(&serde_json::json!({"dry_run":true,"simulated":1})).0,
            "dry-run"
        );
        assert_eq!(outcome_status(&serde_json::json!({"ok":1})).0, "ok");
        assert_eq!(
            outcome_status(&serde_json::json!({"unknown": true})).0,
            "unknown"
        );
    }
}
