//! Resuming an interrupted run: `drhost run RUNBOOK --resume RUN_ID`.
//!
//! The journal of a run is its audit log: hash-chained, every step start
//! and end, every approval, every `state` write, and every mutating call's
//! intent (fsynced before the call) and outcome, both carrying the call's
//! idempotency key `<run>:<step>:<n>`. A resume reads it back
//! ([`AuditWriter::resume`]: the chain must verify; a torn last line is cut
//! off and saved beside the log) and plans the rest of the run:
//!
//! - refused when the plugin's sha256 differs from the one recorded, when
//!   the parameters differ, when the run was a dry run, or when it already
//!   ended (completed, or halted by the plugin);
//! - the run continues at the first step that has not completed; the `state`
//!   file carries the values the plugin stored;
//! - a step that was in flight (a `step-start` without its `step-end`) is
//!   re-run from its start, and the gate replays every mutating call whose
//!   outcome is recorded instead of executing it again
//!   ([`crate::gate::Gate::set_replay`]). Calls with an intent but no
//!   outcome have an unknown effect: a step the plugin declares idempotent
//!   (or that does not mutate) is re-run anyway; for any other step the
//!   operator is shown those calls and decides.
//! - a step that had ended in failure (a stopped run) is simply run again,
//!   as a new attempt, after its approval.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::audit::{AuditWriter, EventKind, Record};
use crate::gate::RecordedCall;
use crate::plugin::Plugin;

/// What a resumed run does, worked out from the interrupted run's log.
#[derive(Debug)]
pub struct ResumePlan {
    /// The run being resumed.
    pub run_id: String,
    /// Index (in the plugin's step order) of the first step to run.
    pub start_at: usize,
    /// Steps that completed before the interruption.
    pub completed: Vec<String>,
    /// The step interrupted mid-way, if any.
    pub in_flight: Option<InFlight>,
    /// Where a torn last line was saved, if the log ended in one.
    pub torn: Option<PathBuf>,
    /// The interrupted run's operator and start time (for the console).
    pub started: String,
}

/// A step that was running when the host stopped.
#[derive(Debug)]
pub struct InFlight {
    /// Step id.
    pub step: String,
    /// Its mutating calls by idempotency key, in the order made.
    pub calls: Vec<(String, RecordedCall)>,
    /// Who approved the step before the interruption, if anybody did.
    pub approved_by: Option<String>,
}

impl InFlight {
    /// Calls whose intent was recorded but whose outcome was not: their
    /// effect is unknown.
    pub fn unknown(&self) -> impl Iterator<Item = &(String, RecordedCall)> {
        self.calls.iter().filter(|(_, c)| c.outcome.is_none())
    }

    /// The replay table for the gate.
    pub fn replay(&self) -> HashMap<String, RecordedCall> {
        self.calls.iter().cloned().collect()
    }

    /// One line per call, for the operator: `seq 12 k8s.scale {...}: done
    /// (replayed)` or `... : IN FLIGHT (effect unknown)`.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (key, c) in &self.calls {
            let state = match &c.outcome {
                Some(_) => "completed (its recorded outcome will be replayed)",
                None => "IN FLIGHT: effect unknown, check it",
            };
            s.push_str(&format!(
                "\n  seq {} {} {} [{key}]: {state}",
                c.intent_seq, c.op, c.args
            ));
        }
        s
    }
}

/// Reads the log of run `run_id` in `audit_dir` and plans its resumption;
/// returns the log reopened to append to its chain, and the plan.
///
/// # Errors
/// A message naming the log and why the run cannot be resumed.
pub fn plan(
    audit_dir: &Path,
    run_id: &str,
    plugin: &Plugin,
    params: &[(String, String)],
) -> Result<(AuditWriter, ResumePlan), String> {
    let path = crate::audit::log_path(audit_dir, run_id);
    if !path.exists() {
        return Err(format!(
            "no audit log {} for run {run_id} (`drhost runs --audit-dir {}` lists the runs there)",
            path.display(),
            audit_dir.display()
        ));
    }
    // Checked before anything on disk changes: a refused resume leaves the
    // log as it found it.
    let (records, _) = crate::audit::read_trusted(&path).map_err(|e| e.to_string())?;
    let refuse = |why: String| {
        Err(format!(
            "cannot resume run {run_id} ({}): {why}",
            path.display()
        ))
    };
    let Some(start) = records.first().filter(|r| r.event == EventKind::RunStart) else {
        return refuse("its first record is not run-start".into());
    };
    let me = plugin.identity();
    if start.plugin.sha256 != me.sha256 {
        return refuse(format!(
            "it ran plugin {}@{} sha256 {} but {} is {}@{} sha256 {}; \
             a run resumes only with the plugin it started with",
            start.plugin.name,
            start.plugin.version,
            start.plugin.sha256,
            plugin.path.display(),
            me.name,
            me.version,
            me.sha256
        ));
    }
    let args = start.args.clone().unwrap_or(Value::Null);
    if args.get("dry_run").and_then(Value::as_bool) == Some(true) {
        return refuse("it was a dry run, which changed nothing; start a new run".into());
    }
    let recorded: BTreeMap<String, String> = args
        .get("params")
        .and_then(|p| serde_json::from_value(p.clone()).ok())
        .unwrap_or_default();
    let now: BTreeMap<String, String> = params.iter().cloned().collect();
    if recorded != now {
        let diff: Vec<String> = recorded
            .keys()
            .chain(now.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| recorded.get(*k) != now.get(*k))
            .map(|k| {
                format!(
                    "{k}: was {:?}, now {:?}",
                    recorded.get(k).map_or("(unset)", String::as_str),
                    now.get(k).map_or("(unset)", String::as_str)
                )
            })
            .collect();
        return refuse(format!(
            "the runbook's parameters changed since it started ({}); resume with the same parameters",
            diff.join("; ")
        ));
    }
    if let Some(end) = records.iter().rev().find(|r| r.event == EventKind::RunEnd) {
        let outcome = end.outcome.as_ref();
        let name = outcome
            .and_then(|o| o.get("outcome"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let last = records.last().map(|r| r.seq);
        if Some(end.seq) == last && matches!(name, "completed" | "halted") {
            return refuse(format!("it already ended ({name}) at {}", end.ts));
        }
    }

    // The last status of each step, and the steps started after their
    // last end.
    let mut status: HashMap<&str, &str> = HashMap::new();
    let mut open_step: Option<(&str, usize)> = None;
    for (i, r) in records.iter().enumerate() {
        let Some(step) = r.step.as_deref() else {
            continue;
        };
        match r.event {
            EventKind::StepStart => open_step = Some((step, i)),
            EventKind::StepEnd => {
                let s = r
                    .outcome
                    .as_ref()
                    .and_then(|o| o.get("status"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                status.insert(step, s);
                if open_step.is_some_and(|(o, _)| o == step) {
                    open_step = None;
                }
            }
            _ => {}
        }
    }
    let steps = &plugin.info.steps;
    let start_at = steps
        .iter()
        .position(|s| status.get(s.id.as_str()) != Some(&"done"))
        .unwrap_or(steps.len());
    if start_at == steps.len() {
        return refuse("every step is done; nothing is left to run".into());
    }
    let completed = steps[..start_at].iter().map(|s| s.id.clone()).collect();
    let in_flight = match open_step {
        Some((step, from)) if step == steps[start_at].id => Some(in_flight(step, &records[from..])),
        Some((step, _)) => {
            return refuse(format!(
                "step {step} was in flight but the next step to run is {}; the log does not \
                 follow this plugin's step order",
                steps[start_at].id
            ));
        }
        None => None,
    };
    let (audit, reread, torn) = AuditWriter::resume(&path).map_err(|e| e.to_string())?;
    if reread.len() != records.len() {
        return refuse("the log changed while it was being read".into());
    }
    let plan = ResumePlan {
        run_id: run_id.to_owned(),
        start_at,
        completed,
        in_flight,
        torn,
        started: format!(
            "{} by {}",
            start.ts,
            args.get("operator")
                .and_then(Value::as_str)
                .unwrap_or("an unknown operator")
        ),
    };
    Ok((audit, plan))
}

/// The mutating calls (those with an idempotency key) and the approval of
/// an interrupted step, from its last `step-start` on. Earlier resumes of
/// the same step are included: their replays and outcomes carry the keys.
fn in_flight(step: &str, records: &[Record]) -> InFlight {
    let mut calls: Vec<(String, RecordedCall)> = Vec::new();
    let mut approved_by = None;
    // Every attempt since the step last ended shares the keys.
    for r in records {
        if r.step.as_deref() != Some(step) {
            continue;
        }
        let op = || {
            format!(
                "{}.{}",
                r.capability.as_deref().unwrap_or(""),
                r.operation.as_deref().unwrap_or("")
            )
        };
        match (r.event, &r.key) {
            (EventKind::CallIntent, Some(key)) => {
                match calls.iter_mut().find(|(k, _)| k == key) {
                    // Executed again after an earlier resume: the newest
                    // intent is the one whose outcome counts.
                    Some((_, c)) => {
                        c.intent_seq = r.seq;
                        c.outcome = None;
                    }
                    None => calls.push((
                        key.clone(),
                        RecordedCall {
                            op: op(),
                            args: r.args.clone().unwrap_or(Value::Null),
                            intent_seq: r.seq,
                            outcome: None,
                        },
                    )),
                }
            }
            (EventKind::CallOutcome, Some(key)) => {
                let known = r
                    .outcome
                    .as_ref()
                    .filter(|o| o.get("ok").is_some() || o.get("error").is_some());
                if let (Some((_, c)), Some(o)) = (calls.iter_mut().find(|(k, _)| k == key), known) {
                    c.outcome = Some((r.seq, o.clone()));
                }
            }
            (EventKind::Approval, _) => {
                let o = r.outcome.as_ref();
                let kind = r
                    .args
                    .as_ref()
                    .and_then(|a| a.get("kind"))
                    .and_then(Value::as_str);
                if matches!(kind, Some("step" | "resume"))
                    && o.and_then(|o| o.get("approved")).and_then(Value::as_bool) == Some(true)
                {
                    approved_by = o
                        .and_then(|o| o.get("by"))
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                }
            }
            _ => {}
        }
    }
    InFlight {
        step: step.to_owned(),
        calls,
        approved_by,
    }
}
