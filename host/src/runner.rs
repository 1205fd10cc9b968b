//! The runner: drives a scenario step by step.
//!
//! For each step, in the order `describe()` lists them: approval (mutating
//! steps, skipped in dry runs since nothing mutates), a fresh `Store` and
//! instance (state crosses steps only through the `state` capability), two
//! fences — an epoch deadline that traps guest code past the budget, and a
//! `tokio` timeout around the whole call that also stops host calls — then
//! the plugin's captured stdout/stderr to the log and audit, and the step's
//! outcome. The first step that fails, traps, times out, halts or is
//! declined ends the run; the instance is dropped with it.
//!
//! The RTO is tracked across steps: the run warns once at 80% and the report
//! shows elapsed against it. Neither fence interrupts a blocking host
//! thread; backends are async and cancel at their next await.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use serde::Serialize;
use serde_json::json;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::audit::{AuditWriter, Event, EventKind, PluginIdentity};
use crate::bindings::{StepInfo, StepOutcome};
use crate::capability::Capabilities;
use crate::capability::operator::{Approval, ApprovalRequest, approver::ApprovalKind};
use crate::capability::state::StateStore;
use crate::gate::{CallRecord, CallStatus, Gate, GateConfig, StepScope};
use crate::instance::{PluginCtx, StepOutput};
use crate::plugin::Plugin;
use crate::runbook::{Runbook, fmt_duration};
use crate::sim::RunClock;

/// Where progress goes (the CLI's console, or nothing in tests).
pub trait RunObserver: Send + Sync {
    /// A step is about to run.
    fn step_started(&self, _index: usize, _total: usize, _step: &StepInfo, _budget: Duration) {}
    /// A step ended.
    fn step_finished(&self, _report: &StepReport) {}
    /// The plugin logged a message.
    fn plugin_log(&self, _step: &str, _level: &str, _message: &str) {}
    /// A capability call finished.
    fn call(&self, _record: &CallRecord) {}
    /// The operator answered.
    fn approval(&self, _request: &ApprovalRequest, _answer: &Approval) {}
    /// Something the operator should see (RTO at 80%, ...).
    fn warning(&self, _message: &str) {}
}

/// An observer that shows nothing.
pub struct NullObserver;
impl RunObserver for NullObserver {}

/// Errors that stop a run before or outside the plugin's steps (host
/// problems and bad config), as opposed to a plugin's failure, which is a
/// [`RunOutcome`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The audit log cannot be created or written.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The runbook's params or budgets do not fit the plugin.
    #[error("runbook config {path}: {problem}")]
    Config {
        /// The runbook config.
        path: PathBuf,
        /// What does not fit.
        problem: String,
    },
    /// The state file cannot be used.
    #[error("{0}")]
    State(String),
    /// The run cannot be resumed (see [`crate::resume`]).
    #[error("{0}")]
    Resume(String),
}

/// Options of one run.
pub struct RunOptions {
    /// Directory for the audit log and state file.
    pub audit_dir: PathBuf,
    /// Simulate mutations.
    pub dry_run: bool,
    /// Run id (generated when `None`).
    pub run_id: Option<String>,
    /// Real or simulated time (see [`crate::sim`]).
    pub clock: RunClock,
    /// The simulated environment, when the backends are mocks: the fixture
    /// file and its description (recorded in the audit log for reports).
    pub simulation: Option<String>,
    /// Copies of the audit log off the machine (`[run] audit_mirror`).
    pub audit_mirror: Option<crate::audit_mirror::AuditMirror>,
    /// Leases taken before the first mutating step (none in dry runs).
    pub leases: Vec<Arc<dyn crate::lease::TargetLease>>,
    /// `--break-lease`: take leases from live holders (audited).
    pub break_lease: bool,
    /// How often held leases are renewed.
    pub lease_renew_every: Duration,
    /// Continue the interrupted run `run_id` from its audit log (see
    /// [`crate::resume`]) instead of starting a new one.
    pub resume: bool,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "message")]
pub enum StepStatus {
    /// Done, with the plugin's summary.
    Done(String),
    /// The plugin ended the scenario cleanly.
    Halted(String),
    /// The plugin returned an error.
    Failed(String),
    /// The budget ran out.
    TimedOut(String),
    /// The plugin trapped (panic, memory limit, stack overflow, ...).
    Trapped(String),
    /// The operator refused the step.
    Declined(String),
}

impl StepStatus {
    /// Short name.
    pub fn name(&self) -> &'static str {
        match self {
            StepStatus::Done(_) => "done",
            StepStatus::Halted(_) => "halted",
            StepStatus::Failed(_) => "failed",
            StepStatus::TimedOut(_) => "timed-out",
            StepStatus::Trapped(_) => "trapped",
            StepStatus::Declined(_) => "declined",
        }
    }
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            StepStatus::Done(m)
            | StepStatus::Halted(m)
            | StepStatus::Failed(m)
            | StepStatus::TimedOut(m)
            | StepStatus::Trapped(m)
            | StepStatus::Declined(m) => m,
        }
    }
}

/// One step in the report.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Step id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Whether it mutates.
    pub mutates: bool,
    /// Its time box.
    pub budget: Duration,
    /// How long it ran (0 if declined).
    pub elapsed: Duration,
    /// How it ended.
    pub status: StepStatus,
    /// What the plugin printed (stdout then stderr), bounded.
    pub output: String,
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum RunOutcome {
    /// Every step done.
    Completed,
    /// A step ended the run (halted, failed, timed out, trapped, declined).
    Stopped {
        /// The step.
        step: String,
        /// How.
        status: StepStatus,
    },
}

impl RunOutcome {
    /// (outcome name, step, message): `("completed", None, "")`,
    /// `("timed-out", Some("restore"), "...")`.
    pub fn parts(&self) -> (&str, Option<&str>, &str) {
        match self {
            RunOutcome::Completed => ("completed", None, ""),
            RunOutcome::Stopped { step, status } => (status.name(), Some(step), status.message()),
        }
    }
    /// Whether the scenario ran to the end or was halted by the plugin on
    /// purpose.
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            RunOutcome::Completed
                | RunOutcome::Stopped {
                    status: StepStatus::Halted(_),
                    ..
                }
        )
    }
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Run id.
    pub run_id: String,
    /// Plugin identity.
    pub plugin: PluginIdentity,
    /// The audit log.
    pub audit_path: PathBuf,
    /// Whether mutations were simulated.
    pub dry_run: bool,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Steps that ran (or were declined), in order.
    pub steps: Vec<StepReport>,
    /// Steps never reached.
    pub skipped: Vec<String>,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// The RTO.
    pub rto: Duration,
    /// Every capability call.
    pub calls: Vec<CallRecord>,
    /// The plugin's state at the end.
    pub state: BTreeMap<String, String>,
    /// Where the audit log was copied at run end (`Ok`), or why it could
    /// not be (`Err`); `None` when no mirror is configured.
    pub audit_mirror: Option<Result<String, String>>,
}

impl RunReport {
    /// Mutations that a dry run simulated instead of performing.
    pub fn intended_mutations(&self) -> Vec<&CallRecord> {
        self.calls
            .iter()
            .filter(|c| c.status == CallStatus::DryRun)
            .collect()
    }
}

/// A new run id: UTC time plus 4 random hex digits.
pub fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let t = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let compact: String = t.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("{compact}-{:04x}", h.finish() & 0xffff)
}

/// Arms a store's guest-CPU fence: the memory limiter, and an epoch
/// callback that yields to the executor every tick (so the step's timeout
/// can fire) and traps once `past_deadline` says so.
pub fn arm_store(
    store: &mut Store<PluginCtx>,
    past_deadline: impl Fn() -> bool + Send + Sync + 'static,
) {
    store.limiter(|c| &mut c.limits);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if past_deadline() {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
}

/// A CPU fence at a fixed real-time instant.
pub fn real_time_fence(deadline: std::time::Instant) -> impl Fn() -> bool + Send + Sync + 'static {
    move || std::time::Instant::now() >= deadline
}

/// Turns a trap into a sentence for the operator, with the plugin's stderr.
pub fn explain_trap(err: &wasmtime::Error, output: &StepOutput, budget: Duration) -> String {
    let stderr = output.stderr.text();
    let text = format!("{err:#}");
    let what = match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!("exceeded its time box of {}", fmt_duration(budget)),
        Some(Trap::StackOverflow) => "overflowed its stack (unbounded recursion?)".into(),
        // Rust guests keep their stack in linear memory: overflowing it
        // shows up as an out-of-bounds access, not as a wasm stack overflow.
        Some(Trap::MemoryOutOfBounds) => {
            "accessed memory out of bounds (most often its stack overflowed: unbounded recursion?)"
                .into()
        }
        Some(Trap::UnreachableCodeReached) if stderr.contains("panicked") => "panicked".into(),
        _ if text.contains("memory") && (text.contains("grow") || text.contains("limit")) => {
            format!("exceeded its memory limit: {text}")
        }
        Some(t) => format!("trapped: {t}"),
        None => format!("failed in the host: {text}"),
    };
    let stderr = stderr.trim();
    if stderr.is_empty() {
        what
    } else {
        format!("{what}; plugin stderr: {stderr}")
    }
}

fn resolve_params(plugin: &Plugin, runbook: &Runbook) -> Result<Vec<(String, String)>, String> {
    let declared: BTreeMap<&str, Option<&String>> = plugin
        .info
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.default_value.as_ref()))
        .collect();
    for k in runbook.params.keys() {
        if !declared.contains_key(k.as_str()) {
            return Err(format!(
                "params.{k} is not a parameter of {} (it takes: {})",
                plugin.info.name,
                declared.keys().copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let mut out = Vec::new();
    for (name, default) in declared {
        if let Some(v) = runbook.params.get(name).or(default) {
            out.push((name.to_owned(), v.clone()));
        }
    }
    Ok(out)
}

fn budgets(plugin: &Plugin, runbook: &Runbook) -> Result<Vec<Duration>, String> {
    for k in runbook.budgets.keys() {
        if !plugin.info.steps.iter().any(|s| &s.id == k) {
            return Err(format!(
                "budgets.{k} names no step of {} (steps: {})",
                plugin.info.name,
                plugin
                    .info
                    .steps
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(plugin
        .info
        .steps
        .iter()
        .map(|s| {
            runbook
                .budgets
                .get(&s.id)
                .copied()
                .unwrap_or(Duration::from_millis(s.budget_ms))
        })
        .collect())
}

/// The RTO of a run: the runbook's override, else the plugin's.
pub fn rto(plugin: &Plugin, runbook: &Runbook) -> Duration {
    runbook
        .rto
        .unwrap_or(Duration::from_millis(plugin.info.rto_ms))
}

/// Runs `plugin` under `runbook` against `caps`.
///
/// # Errors
/// [`RunError`] for host-side problems (audit log, config that does not fit
/// the plugin). A plugin that fails, traps, times out, halts or is declined
/// is a normal [`RunReport`] with that outcome.
pub async fn run(
    engine: &crate::engine::DrEngine,
    plugin: &Plugin,
    runbook: &Runbook,
    mut caps: Capabilities,
    options: RunOptions,
    observer: Arc<dyn RunObserver>,
) -> Result<RunReport, RunError> {
    let config_err = |problem: String| RunError::Config {
        path: runbook.path.clone(),
        problem,
    };
    let params = resolve_params(plugin, runbook).map_err(config_err)?;
    let budgets = budgets(plugin, runbook).map_err(config_err)?;
    let rto = rto(plugin, runbook);
    let run_id = options.run_id.clone().unwrap_or_else(new_run_id);
    let (audit, resume) = if options.resume {
        let (audit, plan) = crate::resume::plan(&options.audit_dir, &run_id, plugin, &params)
            .map_err(RunError::Resume)?;
        (audit, Some(plan))
    } else {
        (
            AuditWriter::create(&options.audit_dir, &run_id, plugin.identity())?,
            None,
        )
    };
    let state_file = options.audit_dir.join(format!("{run_id}.state.json"));
    caps.state = Arc::new(StateStore::persistent(&state_file).map_err(RunError::State)?);
    let state = caps.state.clone();
    let gate = Arc::new(Gate::new(
        GateConfig {
            grants: runbook.grants.clone(),
            caps,
            dry_run: options.dry_run,
            call_timeout: runbook.call_timeout,
            observer: observer.clone(),
            retries: runbook.retries,
            rto_deadline: Some(Instant::now() + rto),
        },
        audit,
    ));
    let audit_path = gate.audit_path();
    let started = Instant::now();
    if let Some(plan) = &resume {
        record_resume(&gate, plan, observer.as_ref())?;
    } else {
        gate.record_durable(Event::new(EventKind::RunStart).args(json!({
        "runbook": runbook.path,
        "plugin_file": plugin.path,
        "params": params.iter().cloned().collect::<BTreeMap<_, _>>(),
        "rto_ms": rto.as_millis() as u64,
        "dry_run": options.dry_run,
        "operator": crate::capability::operator::approver::operator_name(),
        "clock": match options.clock {
            RunClock::Real => json!({ "simulated": false }),
            RunClock::Simulated { time_scale } => json!({ "simulated": true, "time_scale": time_scale }),
        },
        "simulation": options.simulation,
    })))?;
    }
    let start_at = resume.as_ref().map_or(0, |p| p.start_at);
    let in_flight = resume.and_then(|p| p.in_flight);

    let total = plugin.info.steps.len();
    let me = crate::lease::Holder::this_run(&run_id);
    let mut leases = Leases::default();
    let mut steps = Vec::new();
    let mut outcome = RunOutcome::Completed;
    let mut rto_warned = false;
    for (i, (info, budget)) in plugin
        .info
        .steps
        .iter()
        .zip(&budgets)
        .enumerate()
        .skip(start_at)
    {
        let interrupted = in_flight.as_ref().filter(|f| f.step == info.id);
        observer.step_started(i + 1, total, info, *budget);
        gate.record_durable(
            Event::new(EventKind::StepStart)
                .step(info.id.clone())
                .args(json!({ "title": info.title, "budget_ms": budget.as_millis() as u64, "mutates": info.mutates })),
        )?;
        let step_started = Instant::now();
        // A resumed run takes its leases back at once (the dead process's
        // are its own), so that they are released at its end even when
        // only read-only steps are left.
        let lease_refusal = if (info.mutates || options.resume) && !options.dry_run && !leases.taken
        {
            leases
                .take(&options, &me, &gate, observer.clone(), &info.id)
                .await?
        } else {
            None
        };
        let report = match (lease_refusal, interrupted) {
            (Some(refused), _) => Some(StepStatus::Failed(refused)),
            (None, Some(f)) => {
                gate.set_replay(f.replay());
                approve_interrupted(&gate, info, f).await?
            }
            (None, None) => approve_step(&gate, info).await,
        };
        let report = match report {
            Some(declined) => StepReport {
                id: info.id.clone(),
                title: info.title.clone(),
                mutates: info.mutates,
                budget: *budget,
                elapsed: Duration::ZERO,
                status: declined,
                output: String::new(),
            },
            None => {
                run_step(
                    engine,
                    plugin,
                    &gate,
                    info,
                    *budget,
                    &params,
                    runbook.memory_limit_bytes,
                    options.clock,
                )
                .await?
            }
        };
        gate.record_durable(
            Event::new(EventKind::StepEnd)
                .step(info.id.clone())
                .outcome(
                    json!({ "status": report.status.name(), "message": report.status.message() }),
                )
                .duration(step_started.elapsed()),
        )?;
        observer.step_finished(&report);
        if let Some(m) = options.audit_mirror.as_ref().filter(|m| m.each_step)
            && let Err(e) = m.sink.mirror(&gate.audit_path()).await
        {
            let msg = format!(
                "the audit log could not be copied to {} after step {}: {e}",
                m.sink.location(),
                info.id
            );
            warn_and_note(observer.as_ref(), &gate, &info.id, msg)?;
        }
        let stop = !matches!(report.status, StepStatus::Done(_));
        if stop {
            outcome = RunOutcome::Stopped {
                step: info.id.clone(),
                status: report.status.clone(),
            };
        }
        steps.push(report);
        let elapsed = started.elapsed();
        if !rto_warned && elapsed.as_secs_f64() >= 0.8 * rto.as_secs_f64() {
            rto_warned = true;
            let msg = format!(
                "{} of the {} RTO used ({:.0}%) after step {}",
                fmt_duration(elapsed),
                fmt_duration(rto),
                100.0 * elapsed.as_secs_f64() / rto.as_secs_f64().max(f64::MIN_POSITIVE),
                info.id
            );
            warn_and_note(observer.as_ref(), &gate, &info.id, msg)?;
        }
        if stop {
            break;
        }
    }
    let skipped: Vec<String> = plugin.info.steps[start_at + steps.len()..]
        .iter()
        .map(|s| s.id.clone())
        .collect();
    leases.release(&me, &gate).await?;
    let elapsed = started.elapsed();
    let (name, step, message) = outcome.parts();
    gate.record_durable(
        Event::new(EventKind::RunEnd)
            .outcome(json!({
                "outcome": name, "step": step, "message": message,
                "rto_ms": rto.as_millis() as u64, "within_rto": elapsed <= rto,
                "skipped": skipped,
            }))
            .duration(elapsed),
    )?;
    // The run-end record is on disk: the copy holds the whole run.
    let audit_mirror = match &options.audit_mirror {
        Some(m) => {
            let r = m.sink.mirror(&audit_path).await;
            if let Err(e) = &r {
                observer.warning(&format!(
                    "the audit log could not be copied to {}: {e}; it is only at {}",
                    m.sink.location(),
                    audit_path.display()
                ));
            }
            Some(r)
        }
        None => None,
    };
    Ok(RunReport {
        run_id,
        plugin: plugin.identity(),
        audit_path,
        dry_run: options.dry_run,
        outcome,
        steps,
        skipped,
        elapsed,
        rto,
        calls: gate.calls(),
        state: state.snapshot(),
        audit_mirror,
    })
}

/// The run's leases: taken before the first mutating step, renewed in the
/// background, released at the end.
#[derive(Default)]
struct Leases {
    taken: bool,
    held: Vec<Arc<dyn crate::lease::TargetLease>>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Leases {
    /// Takes every lease; `Some(reason)` when one is held by another run
    /// (those already taken are given back).
    async fn take(
        &mut self,
        options: &RunOptions,
        me: &crate::lease::Holder,
        gate: &Arc<Gate>,
        observer: Arc<dyn RunObserver>,
        step: &str,
    ) -> Result<Option<String>, RunError> {
        use crate::lease::Taken;
        self.taken = true;
        for lease in &options.leases {
            let target = lease.target();
            match lease.acquire(me, options.break_lease).await {
                Ok(taken) => {
                    let msg = match &taken {
                        Taken::Free => format!("lease on {target} taken by {}", me.describe()),
                        Taken::Expired(h) => format!(
                            "lease on {target} taken over from {}, whose lease had expired (a dead run?)",
                            h.describe()
                        ),
                        Taken::Broken(h) => format!(
                            "lease on {target} BROKEN with --break-lease: {} displaced",
                            h.describe()
                        ),
                        Taken::Skipped(why) => format!("no lease on {target}: {why}"),
                    };
                    if !matches!(taken, Taken::Free) {
                        observer.warning(&msg);
                    }
                    gate.record_durable(
                        Event::new(EventKind::Note)
                            .step(step.to_owned())
                            .call("lease", "acquire")
                            .message(msg),
                    )?;
                    if !matches!(taken, Taken::Skipped(_)) {
                        self.held.push(lease.clone());
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    gate.record_durable(
                        Event::new(EventKind::Note)
                            .step(step.to_owned())
                            .call("lease", "acquire")
                            .message(msg.clone()),
                    )?;
                    self.release(me, gate).await?;
                    return Ok(Some(format!("not started: {msg}")));
                }
            }
        }
        if !self.held.is_empty() {
            let held = self.held.clone();
            let me = me.clone();
            let every = options.lease_renew_every;
            self.renewer = Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    for lease in &held {
                        if let Err(e) = lease.renew(&me).await {
                            observer.warning(&format!("lease renewal: {e}"));
                        }
                    }
                }
            }));
        }
        Ok(None)
    }

    async fn release(&mut self, me: &crate::lease::Holder, gate: &Gate) -> Result<(), RunError> {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        for lease in self.held.drain(..) {
            lease.release(me).await;
            gate.record(
                Event::new(EventKind::Note)
                    .call("lease", "release")
                    .message(format!("lease on {} released", lease.target())),
            )?;
        }
        Ok(())
    }
}

/// Shows the operator a warning and records it in the audit log.
fn warn_and_note(
    observer: &dyn RunObserver,
    gate: &Gate,
    step: &str,
    msg: String,
) -> Result<(), RunError> {
    observer.warning(&msg);
    gate.record(
        Event::new(EventKind::Note)
            .step(step.to_owned())
            .message(msg),
    )?;
    Ok(())
}

/// Records the resumption of an interrupted run: what is re-run, what
/// completed, the torn line if any, and closes every call of unknown effect
/// with an `unknown` outcome (so the chain's open intents are the ones of
/// this attempt only).
fn record_resume(
    gate: &Gate,
    plan: &crate::resume::ResumePlan,
    observer: &dyn RunObserver,
) -> Result<(), RunError> {
    let operator = crate::capability::operator::approver::operator_name();
    let mut msg = format!(
        "resuming run {} (started {}) by {operator}: {} done",
        plan.run_id,
        plan.started,
        if plan.completed.is_empty() {
            "no step".to_owned()
        } else {
            plan.completed.join(", ")
        },
    );
    if let Some(f) = &plan.in_flight {
        msg.push_str(&format!("; step {} was interrupted", f.step));
    }
    if let Some(torn) = &plan.torn {
        msg.push_str(&format!(
            "; the log ended in a torn line (the host died mid-write), saved to {}",
            torn.display()
        ));
    }
    observer.warning(&msg);
    gate.record_durable(
        Event::new(EventKind::Note)
            .call("run", "resume")
            .args(json!({
                "operator": operator,
                "completed": plan.completed,
                "in_flight": plan.in_flight.as_ref().map(|f| &f.step),
                "torn_line_saved_to": plan.torn,
            }))
            .message(msg),
    )?;
    if let Some(f) = &plan.in_flight {
        for (key, call) in f.unknown() {
            let (capability, operation) = call.op.split_once('.').unwrap_or((&call.op, ""));
            gate.record_durable(
                Event::new(EventKind::CallOutcome)
                    .step(f.step.as_str())
                    .call(capability, operation)
                    .key(key.as_str())
                    .outcome(json!({ "unknown": true }))
                    .message(format!(
                        "effect unknown: the host stopped after the intent (seq {}) and before the outcome",
                        call.intent_seq
                    )),
            )?;
        }
    }
    Ok(())
}

/// The approval of a step a crash interrupted. A step that does not mutate
/// needs none. When calls of unknown effect remain and the plugin does not
/// declare the step idempotent, the operator is shown them and decides;
/// otherwise the approval given before the interruption stands (or is
/// asked, if there was none). `Some(status)` when declined.
async fn approve_interrupted(
    gate: &Gate,
    info: &StepInfo,
    f: &crate::resume::InFlight,
) -> Result<Option<StepStatus>, RunError> {
    if !info.mutates || gate.dry_run() {
        return Ok(None);
    }
    let unknown = f.unknown().count();
    if unknown > 0 && !info.idempotent {
        let request = ApprovalRequest {
            step: info.id.clone(),
            kind: ApprovalKind::Resume,
            question: format!(
                "Step {:?} ({}) was interrupted and {unknown} of its calls may or may not have \
                 taken effect. The plugin does not declare it safe to re-run. Calls:{}\nRe-run \
                 the step from its start (completed calls are replayed, not executed again; \
                 the in-flight ones are executed again)?",
                info.id,
                info.title,
                f.describe()
            ),
        };
        return Ok(match gate.approve(request).await {
            Ok(a) if a.approved => None,
            Ok(a) => Some(StepStatus::Declined(format!(
                "interrupted step {} not re-run ({} said no): check the in-flight calls by hand, \
                 then resume again or finish by hand",
                info.id, a.by
            ))),
            Err(e) => Some(StepStatus::Declined(format!(
                "approval could not be recorded: {e}"
            ))),
        });
    }
    match &f.approved_by {
        Some(by) => {
            gate.record(
                Event::new(EventKind::Note)
                    .step(info.id.clone())
                    .message(format!(
                        "resume: step {} re-run under the approval {by} gave before the interruption{}",
                        info.id,
                        if unknown > 0 {
                            " (the plugin declares it idempotent)"
                        } else {
                            ""
                        }
                    )),
            )?;
            Ok(None)
        }
        None => Ok(approve_step(gate, info).await),
    }
}

/// Asks approval for a mutating step; `Some(status)` when declined.
async fn approve_step(gate: &Gate, info: &StepInfo) -> Option<StepStatus> {
    if !info.mutates {
        return None;
    }
    if gate.dry_run() {
        return None;
    }
    let request = ApprovalRequest {
        step: info.id.clone(),
        kind: ApprovalKind::Step,
        question: format!(
            "Run step {:?} ({}), which changes the environment?",
            info.id, info.title
        ),
    };
    match gate.approve(request).await {
        Ok(a) if a.approved => None,
        Ok(a) => Some(StepStatus::Declined(format!(
            "step {} not approved by {}; nothing in it was done",
            info.id, a.by
        ))),
        Err(e) => Some(StepStatus::Declined(format!(
            "approval could not be recorded: {e}"
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    engine: &crate::engine::DrEngine,
    plugin: &Plugin,
    gate: &Arc<Gate>,
    info: &StepInfo,
    budget: Duration,
    params: &[(String, String)],
    memory_limit: usize,
    clock: RunClock,
) -> Result<StepReport, RunError> {
    let started = Instant::now();
    let scope = StepScope::new(info.id.clone(), started + budget);
    let deadline = scope.deadline.clone();
    let output = StepOutput::default();
    let mut store = Store::new(
        engine.engine(),
        PluginCtx::for_step(gate.clone(), scope, memory_limit, &output),
    );
    match clock {
        // The deadline moves while the operator is asked.
        RunClock::Real => {
            let d = deadline.clone();
            arm_store(&mut store, move || {
                std::time::Instant::now() >= d.at().into_std()
            });
        }
        // Virtual time does not pass while the guest computes: fence its
        // CPU in real time.
        RunClock::Simulated { time_scale } => arm_store(
            &mut store,
            real_time_fence(std::time::Instant::now() + crate::sim::cpu_fence(budget, time_scale)),
        ),
    }
    let call = async {
        let scenario = plugin.pre.instantiate_async(&mut store).await?;
        scenario.call_run_step(&mut store, &info.id, params).await
    };
    let result = {
        let mut call = std::pin::pin!(call);
        loop {
            let at = deadline.at();
            match tokio::time::timeout_at(at, &mut call).await {
                Ok(r) => break Ok(r),
                // Extended (the operator was asked) or still waiting for them.
                Err(_) if deadline.at() > at => continue,
                Err(e) => break Err(e),
            }
        }
    };
    drop(store);
    let elapsed = started.elapsed();
    let timed_out = || {
        StepStatus::TimedOut(format!(
            "step {} exceeded its budget of {} (stopped after {}); the instance was dropped",
            info.id,
            fmt_duration(budget),
            fmt_duration(elapsed)
        ))
    };
    let status = match result {
        Ok(Ok(Ok(StepOutcome::Done(m)))) => StepStatus::Done(m),
        Ok(Ok(Ok(StepOutcome::Halt(m)))) => StepStatus::Halted(m),
        Ok(Ok(Err(m))) => StepStatus::Failed(m),
        Ok(Err(e)) if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) => timed_out(),
        Ok(Err(e)) => StepStatus::Trapped(format!("plugin {}", explain_trap(&e, &output, budget))),
        Err(_) => timed_out(),
    };
    let fence = match &status {
        StepStatus::TimedOut(m) => Some((EventKind::Timeout, m)),
        StepStatus::Trapped(m) => Some((EventKind::Trap, m)),
        _ => None,
    };
    if let Some((kind, m)) = fence {
        gate.record_durable(
            Event::new(kind)
                .step(info.id.clone())
                .message(m.clone())
                .duration(elapsed),
        )?;
    }
    let mut text = String::new();
    for (name, cap) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        let t = cap.text();
        if !t.trim().is_empty() {
            gate.record(
                Event::new(EventKind::PluginOutput)
                    .step(info.id.clone())
                    .call("wasi", name)
                    .message(t.clone()),
            )?;
            for line in t.lines() {
                let line = crate::redact::text(line);
                tracing::info!(target: "plugin", step = %info.id, stream = name, "{line}");
            }
            text.push_str(&t);
        }
    }
    Ok(StepReport {
        id: info.id.clone(),
        title: info.title.clone(),
        mutates: info.mutates,
        budget,
        elapsed,
        status,
        output: text,
    })
}
