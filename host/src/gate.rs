//! The gate: the one path every capability call takes.
//!
//! ```text
//! policy check -> idempotency key (mutations) -> replay (resumed runs)
//! -> audit intent (fsynced before a mutation) -> dry-run interception
//! -> per-call timeout -> backend [-> retry, see crate::retry] -> audit outcome
//! ```
//!
//! Architecture invariant: no capability reaches a backend except through
//! [`Gate::call`] / [`Gate::call_retrying`]; the host implementations in
//! [`crate::capability`] only build an [`Op`] and two futures (the real
//! call, or a closure making it per attempt, and for mutations the dry-run
//! simulation). A denied call never polls either future.
//!
//! The gate does not time out a step (the runner does): it bounds each call
//! by the per-call timeout and by what is left of the step's budget, and
//! retries only when the delay fits in what is left of the budget and RTO.
//!
//! An audit write that fails is a trap, not a `cap-error`: nothing may
//! happen that the audit trail does not show.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::audit::{AuditError, AuditWriter, Event, EventKind, raw_json};
use crate::bindings::CapError;
use crate::bindings::log::Level;
use crate::capability::Capabilities;
use crate::capability::operator::{Approval, ApprovalRequest};
use crate::fixture::lock;
use crate::policy::{Effect, Grants, Op};
use crate::runner::RunObserver;

/// A boxed future yielding a capability result (the dry-run simulation).
pub type SimFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CapError>> + Send + 'a>>;

/// Which step a call belongs to, and when that step's time box closes.
#[derive(Debug, Clone)]
pub struct StepScope {
    /// Step id.
    pub step: String,
    /// The step's deadline (extended while the operator is asked).
    pub deadline: Arc<StepDeadline>,
    /// Mutating calls made so far in this attempt of the step: the `n` of
    /// the next idempotency key.
    mutations: Arc<std::sync::atomic::AtomicU32>,
}

impl StepScope {
    /// A scope for `step` whose time box closes at `deadline`.
    pub fn new(step: impl Into<String>, deadline: tokio::time::Instant) -> StepScope {
        StepScope {
            step: step.into(),
            deadline: Arc::new(StepDeadline::new(deadline)),
            mutations: Arc::default(),
        }
    }

    /// The idempotency key of the next mutating call of this step:
    /// `<run>:<step>:<n>`. A deterministic plugin makes the same calls in
    /// the same order when its step is re-run, so the keys match.
    fn next_key(&self, run_id: &str) -> String {
        let n = self
            .mutations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{run_id}:{}:{n}", self.step)
    }

    /// Time left in the step (zero once past the deadline).
    pub fn remaining(&self) -> Duration {
        self.deadline
            .at()
            .saturating_duration_since(tokio::time::Instant::now())
    }
}

/// A step's deadline. Time spent waiting for the operator (`confirm`,
/// `ask`) does not count against the budget: while a wait is open the
/// deadline moves with the clock ([`StepDeadline::at`] stays ahead of now
/// by what was left when the wait began, at least [`PAUSED_RECHECK`]), and
/// when it closes the deadline is pushed back by the wait's length.
#[derive(Debug)]
pub struct StepDeadline {
    state: Mutex<DeadlineState>,
}

#[derive(Debug)]
struct DeadlineState {
    at: tokio::time::Instant,
    /// Open operator waits, and when the first of them began.
    waits: u32,
    paused_since: Option<tokio::time::Instant>,
}

/// While the operator is being asked, how often a deadline is re-read by
/// those waiting on it.
pub const PAUSED_RECHECK: Duration = Duration::from_secs(1);

impl StepDeadline {
    /// A deadline at `at`.
    pub fn new(at: tokio::time::Instant) -> StepDeadline {
        StepDeadline {
            state: Mutex::new(DeadlineState {
                at,
                waits: 0,
                paused_since: None,
            }),
        }
    }

    /// The deadline now: fixed, or while the operator is asked, ahead of
    /// the clock by what was left when the wait began.
    pub fn at(&self) -> tokio::time::Instant {
        let s = lock(&self.state);
        match s.paused_since {
            Some(since) => {
                let left = s.at.saturating_duration_since(since).max(PAUSED_RECHECK);
                tokio::time::Instant::now() + left
            }
            None => s.at,
        }
    }

    /// When the time box would close if the current wait ended now (the
    /// fixed deadline when no wait is open).
    pub fn unpaused_at(&self) -> tokio::time::Instant {
        let s = lock(&self.state);
        match s.paused_since {
            Some(since) => s.at + since.elapsed(),
            None => s.at,
        }
    }

    /// Starts an operator wait; the deadline is extended by its length when
    /// the guard drops.
    pub fn operator_wait(self: &Arc<Self>) -> OperatorWait {
        let mut s = lock(&self.state);
        s.waits += 1;
        if s.waits == 1 {
            s.paused_since = Some(tokio::time::Instant::now());
        }
        OperatorWait(self.clone())
    }
}

/// An open operator wait (see [`StepDeadline::operator_wait`]).
pub struct OperatorWait(Arc<StepDeadline>);

impl Drop for OperatorWait {
    fn drop(&mut self) {
        let mut s = lock(&self.0.state);
        s.waits = s.waits.saturating_sub(1);
        if s.waits == 0
            && let Some(since) = s.paused_since.take()
        {
            s.at += since.elapsed();
        }
    }
}

/// How a call ended, as recorded for reports and `drhost test`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallStatus {
    /// The backend answered with a value.
    Ok,
    /// The backend (or the timeout) answered with this cap-error kind.
    Error(&'static str),
    /// The policy refused it; no backend saw it.
    Denied,
    /// A mutation simulated because of `--dry-run`.
    DryRun,
    /// A mutation whose outcome was already recorded before a crash: a
    /// resumed run returned that outcome and did not execute it again.
    Replayed,
}

impl CallStatus {
    /// Short name (`ok`, `denied`, `dry-run`, or the error kind).
    pub fn as_str(&self) -> &str {
        match self {
            CallStatus::Ok => "ok",
            CallStatus::Error(kind) => kind,
            CallStatus::Denied => "denied",
            CallStatus::DryRun => "dry-run",
            CallStatus::Replayed => "replayed",
        }
    }
}

/// One capability call, for the run report and fixture expectations.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    /// Step it was made in.
    pub step: String,
    /// `capability.operation`.
    pub op: String,
    /// Read, mutate or internal.
    pub effect: Effect,
    /// Arguments as audited (raw JSON).
    pub args: Box<RawValue>,
    /// How it ended.
    pub status: CallStatus,
    /// Error or denial message, empty when ok.
    pub detail: String,
    /// Time spent, including policy and audit.
    pub duration: Duration,
}

impl CallRecord {
    /// `k8s.scale namespace=prod name=backend replicas=0 => ok`: the form
    /// fixture expectations match against.
    pub fn render(&self) -> String {
        let mut s = self.op.clone();
        let args: Value = serde_json::from_str(self.args.get()).unwrap_or(Value::Null);
        if let Value::Object(map) = &args {
            for (k, v) in map {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => "none".into(),
                    other => other.to_string(),
                };
                s.push(' ');
                s.push_str(k);
                s.push('=');
                s.push_str(&v);
            }
        }
        s.push_str(" => ");
        s.push_str(self.status.as_str());
        s
    }
}

/// The JSON of a call outcome in the audit log (serialized straight from
/// the value: no intermediate `serde_json::Value` on the hot path).
#[derive(Serialize)]
#[serde(untagged)]
enum Outcome<'a, T> {
    Ok { ok: &'a T },
    Failed { error: ErrorJson<'a> },
    Simulated { dry_run: bool, simulated: &'a T },
    SimulatedError { dry_run: bool, error: ErrorJson<'a> },
}

#[derive(Serialize)]
struct ErrorJson<'a> {
    kind: &'static str,
    message: &'a str,
}

fn failed_outcome(e: &CapError) -> Box<RawValue> {
    let outcome: Outcome<'_, ()> = Outcome::Failed {
        error: ErrorJson::of(e),
    };
    raw_json(&outcome)
}

impl<'a> ErrorJson<'a> {
    fn of(e: &'a CapError) -> Self {
        ErrorJson {
            kind: e.kind(),
            message: e.message(),
        }
    }
}

/// Builds the real call's future: once ([`Gate::call`]) or once per
/// attempt ([`Gate::call_retrying`]).
trait MakeCall<T> {
    type Fut: Future<Output = Result<T, CapError>>;
    /// The next attempt's future; `None` when it cannot be made again.
    fn make(&mut self) -> Option<Self::Fut>;
    /// Whether more than one attempt can be made.
    fn can_repeat(&self) -> bool;
}

struct Once<F>(Option<F>);

impl<T, F: Future<Output = Result<T, CapError>>> MakeCall<T> for Once<F> {
    type Fut = F;
    fn make(&mut self) -> Option<F> {
        self.0.take()
    }
    fn can_repeat(&self) -> bool {
        false
    }
}

struct Each<M>(M);

impl<T, M, F> MakeCall<T> for Each<M>
where
    M: FnMut() -> F,
    F: Future<Output = Result<T, CapError>>,
{
    type Fut = F;
    fn make(&mut self) -> Option<F> {
        Some((self.0)())
    }
    fn can_repeat(&self) -> bool {
        true
    }
}

/// How many call records a run keeps for its report and fixture
/// expectations; later calls are still audited, only not kept in memory.
pub const MAX_CALL_RECORDS: usize = 100_000;

/// Settings for a gate.
pub struct GateConfig {
    /// The runbook's grants.
    pub grants: Grants,
    /// The backends.
    pub caps: Capabilities,
    /// Simulate mutations instead of performing them.
    pub dry_run: bool,
    /// Per-call timeout.
    pub call_timeout: Duration,
    /// Where progress and plugin logs go.
    pub observer: Arc<dyn RunObserver>,
    /// Retry backoff per class (`[retries]`).
    pub retries: crate::retry::RetryPolicy,
    /// When the run's RTO runs out: no retry is attempted past it.
    pub rto_deadline: Option<Instant>,
}

/// The gate of one run. Shared by every instance of the run.
pub struct Gate {
    grants: Grants,
    caps: Capabilities,
    dry_run: bool,
    call_timeout: Duration,
    observer: Arc<dyn RunObserver>,
    audit: Mutex<AuditWriter>,
    calls: Mutex<Vec<CallRecord>>,
    run_id: String,
    retries: crate::retry::RetryPolicy,
    rto_deadline: Option<Instant>,
    jitter: crate::retry::Jitter,
    /// Mutating calls recorded before a crash, by idempotency key (set by
    /// a resumed run, see [`crate::resume`]).
    replay: Mutex<HashMap<String, RecordedCall>>,
}

/// A mutating call found in the audit log of an interrupted run.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    /// `capability.operation`.
    pub op: String,
    /// The arguments as audited (redacted).
    pub args: Value,
    /// Seq of the intent record.
    pub intent_seq: u64,
    /// The outcome record's seq and JSON, if the call finished.
    pub outcome: Option<(u64, Value)>,
}

fn trap(e: AuditError) -> wasmtime::Error {
    wasmtime::Error::msg(format!(
        "audit log write failed, stopping: {e} (nothing is done that the audit trail does not show)"
    ))
}

impl Gate {
    /// A gate writing to `audit`.
    pub fn new(config: GateConfig, audit: AuditWriter) -> Gate {
        Gate {
            grants: config.grants,
            caps: config.caps,
            dry_run: config.dry_run,
            call_timeout: config.call_timeout,
            observer: config.observer,
            run_id: audit.run_id().to_owned(),
            retries: config.retries,
            rto_deadline: config.rto_deadline,
            jitter: crate::retry::Jitter::new(),
            audit: Mutex::new(audit),
            calls: Mutex::new(Vec::new()),
            replay: Mutex::new(HashMap::new()),
        }
    }

    /// Arms replay for a resumed run: a mutating call whose key is here and
    /// whose outcome was recorded returns that outcome instead of reaching
    /// the backend again.
    pub fn set_replay(&self, calls: HashMap<String, RecordedCall>) {
        *lock(&self.replay) = calls;
    }

    /// The backends.
    pub fn caps(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether mutations are simulated.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// The observer (console progress).
    pub fn observer(&self) -> &Arc<dyn RunObserver> {
        &self.observer
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<CallRecord> {
        lock(&self.calls).clone()
    }

    /// Appends an audit record (buffered).
    ///
    /// # Errors
    /// The audit log cannot be written.
    pub fn record(&self, event: Event) -> Result<u64, AuditError> {
        lock(&self.audit).append(event)
    }

    /// Appends an audit record and fsyncs it.
    ///
    /// # Errors
    /// The audit log cannot be written or synced.
    pub fn record_durable(&self, event: Event) -> Result<u64, AuditError> {
        lock(&self.audit).append_durable(event)
    }

    /// Path of the audit log.
    pub fn audit_path(&self) -> std::path::PathBuf {
        lock(&self.audit).path().to_owned()
    }

    /// Sets the plugin identity recorded from now on.
    pub fn set_plugin(&self, plugin: crate::audit::PluginIdentity) {
        lock(&self.audit).set_plugin(plugin);
    }

    /// Asks the operator (step approvals and `operator.confirm`) and audits
    /// the answer durably, with who gave it.
    ///
    /// # Errors
    /// The answer could not be audited; it must then be treated as a no.
    pub async fn approve(&self, request: ApprovalRequest) -> Result<Approval, CapError> {
        let answer = self.caps.approver.ask(&request).await;
        let event = Event::new(EventKind::Approval)
            .step(request.step.clone())
            .call("operator", "approval")
            .args(json!({ "kind": request.kind, "question": request.question }))
            .outcome(match &answer.text {
                Some(text) => json!({ "approved": answer.approved, "by": answer.by, "text": text }),
                None => json!({ "approved": answer.approved, "by": answer.by }),
            });
        self.record_durable(event).map_err(|e| {
            CapError::Failed(format!("cannot record the approval in the audit log: {e}"))
        })?;
        self.observer.approval(&request, &answer);
        Ok(answer)
    }

    /// A plugin log message: to the observer and the audit log.
    ///
    /// # Errors
    /// A trap if the audit log cannot be written.
    pub fn plugin_log(&self, step: &str, level: Level, message: &str) -> wasmtime::Result<()> {
        self.observer.plugin_log(step, level.as_str(), message);
        let event = Event::new(EventKind::Note)
            .step(step)
            .call("log", level.as_str())
            .message(message);
        self.record(event).map_err(trap)?;
        Ok(())
    }

    /// Runs one capability call through policy, audit, dry-run and timeout.
    ///
    /// `real` is polled only if the policy allows the call and it is not a
    /// dry-run mutation; `dry` (required for mutations) only in dry runs.
    ///
    /// # Errors
    /// The outer `Err` is a trap: the audit log failed, or a mutation has no
    /// dry-run simulation (a host bug). Guest-visible failures are the inner
    /// `Err(CapError)`.
    pub async fn call<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        scope: &StepScope,
        op: Op<'_>,
        real: impl Future<Output = Result<T, CapError>>,
        dry: Option<SimFuture<'_, T>>,
    ) -> wasmtime::Result<Result<T, CapError>> {
        self.call_with(scope, op, Once(Some(real)), dry).await
    }

    /// [`Gate::call`] for an operation that may be retried (see
    /// [`crate::retry`]): `make` builds the real call's future, once per
    /// attempt.
    ///
    /// # Errors
    /// As [`Gate::call`].
    pub async fn call_retrying<T, F, Fut>(
        &self,
        scope: &StepScope,
        op: Op<'_>,
        make: F,
        dry: Option<SimFuture<'_, T>>,
    ) -> wasmtime::Result<Result<T, CapError>>
    where
        T: Serialize + serde::de::DeserializeOwned,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CapError>>,
    {
        self.call_with(scope, op, Each(make), dry).await
    }

    async fn call_with<T: Serialize + serde::de::DeserializeOwned, M: MakeCall<T>>(
        &self,
        scope: &StepScope,
        op: Op<'_>,
        mut make: M,
        dry: Option<SimFuture<'_, T>>,
    ) -> wasmtime::Result<Result<T, CapError>> {
        let started = Instant::now();
        let backoff = self
            .retries
            .for_class(op.retry_class())
            .filter(|b| b.attempts > 1 && make.can_repeat());
        let class = op.class();
        let long_running = op.is_long_running();
        let args = raw_json(&op);
        let base = || {
            Event::new(EventKind::CallIntent)
                .step(scope.step.as_str())
                .call(class.capability, class.operation)
        };

        if let Err(reason) = self.grants.check(&op) {
            let event = Event {
                kind: EventKind::Denial,
                ..base()
            }
            .raw_args(args.clone())
            .message(reason.as_str());
            self.record_durable(event).map_err(trap)?;
            self.finish(
                scope,
                &class,
                args,
                CallStatus::Denied,
                reason.clone(),
                started,
            );
            return Ok(Err(CapError::Denied(reason)));
        }

        let mutates = class.effect == Effect::Mutate;
        let key = mutates.then(|| scope.next_key(&self.run_id));
        if let Some(key) = &key
            && let Some(replayed) = self.replay(scope, &class, &args, key, started)?
        {
            return Ok(replayed);
        }
        let base = || match &key {
            Some(k) => base().key(k.as_str()),
            None => base(),
        };
        let intent = base().raw_args(args.clone());
        if mutates {
            self.record_durable(intent).map_err(trap)?;
        } else {
            self.record(intent).map_err(trap)?;
        }

        if mutates && self.dry_run {
            let Some(dry) = dry else {
                return Err(wasmtime::Error::msg(format!(
                    "host bug: {}.{} mutates but has no dry-run simulation",
                    class.capability, class.operation
                )));
            };
            let simulated = dry.await;
            let outcome = match &simulated {
                Ok(v) => Outcome::Simulated {
                    dry_run: true,
                    simulated: v,
                },
                Err(e) => Outcome::SimulatedError {
                    dry_run: true,
                    error: ErrorJson::of(e),
                },
            };
            let event = Event {
                kind: EventKind::CallOutcome,
                ..base()
            }
            .outcome(outcome)
            .duration(started.elapsed())
            .message("dry run: not performed");
            self.record_durable(event).map_err(trap)?;
            self.finish(
                scope,
                &class,
                args,
                CallStatus::DryRun,
                String::new(),
                started,
            );
            return Ok(simulated);
        }

        let mut attempt = 1u32;
        let result = loop {
            let Some(real) = make.make() else {
                return Err(wasmtime::Error::msg(
                    "host bug: a call was retried that cannot be repeated",
                ));
            };
            let limit = if long_running {
                scope.remaining()
            } else {
                self.call_timeout.min(scope.remaining())
            };
            let timed = if class.waits_for_operator() {
                Ok(self.wait_for_operator(scope, real).await?)
            } else {
                tokio::time::timeout(limit, real).await
            };
            let result = match timed {
                Ok(r) => r,
                Err(_) => Err(CapError::TimedOut(format!(
                    "{}.{} did not answer within {} ({})",
                    class.capability,
                    class.operation,
                    crate::runbook::fmt_duration(limit),
                    if limit < self.call_timeout {
                        "the rest of the step's budget"
                    } else {
                        "the per-call timeout"
                    }
                ))),
            };
            let Err(e) = &result else { break result };
            let Some(b) = backoff.filter(|b| {
                crate::retry::is_retryable(e)
                    && !crate::retry::backend_retried(e)
                    && attempt < b.attempts
            }) else {
                break result;
            };
            let delay = b.delay(attempt, self.jitter.next());
            let left = scope.remaining().min(self.rto_left());
            let note = |msg: String| {
                self.record(
                    Event {
                        kind: EventKind::Note,
                        ..base()
                    }
                    .message(msg),
                )
                .map_err(trap)
            };
            if delay >= left {
                note(format!(
                    "attempt {attempt} failed ({}: {}); not retried: the next attempt (in {}) \
                     would not fit in what is left of the step's budget or the RTO ({})",
                    e.kind(),
                    e.message(),
                    crate::runbook::fmt_duration(delay),
                    crate::runbook::fmt_duration(left)
                ))?;
                break result;
            }
            note(format!(
                "attempt {attempt} of {} failed ({}: {}); retrying in {}",
                b.attempts,
                e.kind(),
                e.message(),
                crate::runbook::fmt_duration(delay)
            ))?;
            tokio::time::sleep(delay).await;
            attempt += 1;
        };
        let result = match result {
            Err(e) if attempt > 1 => Err(CapError::from_kind(
                e.kind(),
                format!("{} (after {attempt} attempts)", e.message()),
            )
            .unwrap_or(e)),
            other => other,
        };
        // A run on mocks saves the simulated world before the outcome is
        // recorded (a resumed run continues in it).
        if mutates && let Some(save) = &self.caps.after_mutation {
            save().map_err(wasmtime::Error::msg)?;
        }
        let (outcome, status, detail) = match &result {
            Ok(v) => (
                raw_json(&Outcome::Ok { ok: v }),
                CallStatus::Ok,
                String::new(),
            ),
            Err(e) => (
                failed_outcome(e),
                CallStatus::Error(e.kind()),
                e.message().to_owned(),
            ),
        };
        let event = Event {
            kind: EventKind::CallOutcome,
            outcome: Some(outcome),
            ..base()
        }
        .duration(started.elapsed());
        if mutates {
            self.record_durable(event).map_err(trap)?;
        } else {
            self.record(event).map_err(trap)?;
        }
        self.finish(scope, &class, args, status, detail, started);
        Ok(result)
    }

    /// What is left of the run's RTO (unbounded when none is set).
    fn rto_left(&self) -> Duration {
        self.rto_deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        })
    }

    /// Replays a mutating call recorded before a crash (see
    /// [`Gate::set_replay`]): `Some(result)` when the audit log holds an
    /// outcome for `key` with the same operation and arguments. A recorded
    /// intent without an outcome, or a call that differs (the plugin did
    /// something else this time), is executed; the runner decided that
    /// re-running the step is acceptable.
    fn replay<T: serde::de::DeserializeOwned>(
        &self,
        scope: &StepScope,
        class: &crate::policy::OpClass,
        args: &RawValue,
        key: &str,
        started: Instant,
    ) -> wasmtime::Result<Option<Result<T, CapError>>> {
        let op = format!("{}.{}", class.capability, class.operation);
        let Some(recorded) = lock(&self.replay).get(key).cloned() else {
            return Ok(None);
        };
        // The log holds redacted arguments: compare like with like.
        let now: Value = match crate::redact::raw(args) {
            Some(redacted) => serde_json::from_str(redacted.get()),
            None => serde_json::from_str(args.get()),
        }
        .unwrap_or(Value::Null);
        let note = |msg: String| {
            self.record(
                Event::new(EventKind::Note)
                    .step(scope.step.as_str())
                    .call(class.capability, class.operation)
                    .key(key)
                    .message(msg),
            )
            .map_err(trap)
        };
        if recorded.op != op || recorded.args != now {
            note(format!(
                "resume: the plugin's call {key} is {op} {now} but the interrupted run recorded {} {} (seq {}); \
                 executing it (the plugin is not deterministic)",
                recorded.op, recorded.args, recorded.intent_seq
            ))?;
            return Ok(None);
        }
        let Some((outcome_seq, outcome)) = recorded.outcome else {
            note(format!(
                "resume: {op} {key} was in flight when the host stopped (intent seq {}, no outcome); \
                 executing it again",
                recorded.intent_seq
            ))?;
            return Ok(None);
        };
        let result: Result<T, CapError> = if let Some(ok) = outcome.get("ok") {
            serde_json::from_value(ok.clone()).map_err(|e| {
                CapError::Conflict(format!(
                    "{op} was executed before the host stopped (audit seq {outcome_seq}) but its \
                     recorded result cannot be replayed ({e}); it is not executed twice: check its \
                     effect by hand"
                ))
            })
        } else {
            let error = outcome.get("error");
            let text = |f: &str| {
                error
                    .and_then(|e| e.get(f))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            Err(CapError::from_kind(&text("kind"), text("message"))
                .unwrap_or_else(|| CapError::Failed(text("message"))))
        };
        let event = Event::new(EventKind::CallOutcome)
            .step(scope.step.as_str())
            .call(class.capability, class.operation)
            .key(key)
            .outcome(&outcome)
            .duration(started.elapsed())
            .message(format!(
                "replayed from audit seq {outcome_seq}: executed before the host stopped, not executed again"
            ));
        self.record_durable(event).map_err(trap)?;
        let detail = match &result {
            Ok(_) => String::new(),
            Err(e) => e.message().to_owned(),
        };
        self.finish(
            scope,
            class,
            args.to_owned(),
            CallStatus::Replayed,
            detail,
            started,
        );
        Ok(Some(result))
    }

    /// Awaits an answer from the operator with no time limit: the wait
    /// extends the step's deadline (see [`StepDeadline`]). When the step's
    /// budget runs out meanwhile, the operator is reminded once (console and
    /// audit); the step is not stopped.
    async fn wait_for_operator<T>(
        &self,
        scope: &StepScope,
        answer: impl Future<Output = Result<T, CapError>>,
    ) -> wasmtime::Result<Result<T, CapError>> {
        let budget_end = scope.deadline.unpaused_at();
        let _wait = scope.deadline.operator_wait();
        let mut answer = std::pin::pin!(answer);
        let mut reminded = false;
        loop {
            tokio::select! {
                r = &mut answer => return Ok(r),
                () = tokio::time::sleep_until(budget_end), if !reminded => {
                    reminded = true;
                    let msg = format!(
                        "step {}: its time box has run out while waiting for the operator; \
                         this is a reminder, not a stop (the wait does not count against the budget)",
                        scope.step
                    );
                    self.observer.warning(&msg);
                    self.record(Event::new(EventKind::Note).step(scope.step.as_str()).message(msg))
                        .map_err(trap)?;
                }
            }
        }
    }

    fn finish(
        &self,
        scope: &StepScope,
        class: &crate::policy::OpClass,
        args: Box<RawValue>,
        status: CallStatus,
        detail: String,
        started: Instant,
    ) {
        let record = CallRecord {
            step: scope.step.clone(),
            op: format!("{}.{}", class.capability, class.operation),
            effect: class.effect,
            args,
            status,
            detail,
            duration: started.elapsed(),
        };
        self.observer.call(&record);
        let mut calls = lock(&self.calls);
        if calls.len() < MAX_CALL_RECORDS {
            calls.push(record);
        }
    }
}
