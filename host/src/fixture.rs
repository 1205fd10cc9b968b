//! Test fixtures: a TOML file that seeds every mock backend, scripts the
//! operator, injects faults, and (for `drhost test`) says what must happen.
//!
//! ```toml
//! description = "backup too old: the operator refuses the data loss"
//! runbook = "../../database-corruption.toml"   # grants and params for `drhost test`
//! [operator]
//! confirm = [false]          # answers to operator.confirm, in order
//! answers = ["phishing"]     # answers to operator.ask, in order
//! think_time = "3m"          # each scripted confirm/ask answer takes this long
//! approve_steps = true       # answer to mutating-step approvals
//! [[k8s.deployments]]
//! namespace = "resume-screening"
//! name = "backend"
//! replicas = 3
//! [[object_store.objects]]
//! bucket = "resume-screening-backups"
//! key = "postgres/backup_20261127_020000.dump.gz"
//! age = "3h"
//! [[postgres.databases]]
//! name = "resume_screening"
//! healthy = false
//! [[health.targets]]
//! name = "backend-api"
//! statuses = [503, 200]
//! [[faults]]
//! operation = "postgres.restore"
//! error = "failed"
//! [expect]
//! outcome = "halted"                      # completed|halted|failed|timed-out|trapped|declined
//! step = "restore"
//! calls = ["k8s.scale name=backend replicas=0 => ok", "operator.confirm"]
//! not_calls = ["postgres.restore"]
//! ```
//!
//! An expected call is a list of words: the first is `capability.operation`,
//! each other word must appear in the call's rendered form
//! (`k8s.scale namespace=… name=backend replicas=0 => ok`, see
//! [`crate::gate::CallRecord::render`]). `calls` must occur in this order
//! (other calls may come between); `not_calls` must not occur at all.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;

use crate::capability::Capabilities;
use crate::capability::health::mock::{HealthFixture, MockHealth};
use crate::capability::k8s::mock::{K8sFixture, MockK8s};
use crate::capability::object_store::mock::{MockObjectStore, ObjectStoreFixture};
use crate::capability::operator::mock::{MockNotify, NotifyFixture};
use crate::capability::operator::{Approver, ScriptedApprover};
use crate::capability::postgres::mock::{MockPostgres, PostgresFixture};
use crate::capability::state::StateStore;
use crate::gate::CallRecord;
use crate::mock_faults::{FaultFixture, Faults};
use crate::runner::RunReport;

/// Locks a mutex, recovering the data if another thread panicked while
/// holding it (the data are simple values that stay consistent).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Parses an optional duration field; absent is zero.
///
/// # Errors
/// A message naming `field`.
pub fn parse_opt_duration(value: &Option<String>, field: &str) -> Result<Duration, String> {
    match value {
        Some(s) => crate::runbook::parse_duration(s).map_err(|p| format!("{field} {p}")),
        None => Ok(Duration::ZERO),
    }
}

/// Every call that reached a mock backend, in order ("k8s.scale ns/name 0").
#[derive(Debug, Clone, Default)]
pub struct MockLog(Arc<Mutex<Vec<String>>>);

impl MockLog {
    /// Records one call.
    pub fn record(&self, call: String) {
        lock(&self.0).push(call);
    }
    /// All calls so far.
    pub fn entries(&self) -> Vec<String> {
        lock(&self.0).clone()
    }
}

/// Errors loading a fixture. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// Cannot read.
    #[error("cannot read fixture {path}: {source}")]
    Read {
        /// The fixture file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Bad TOML or bad values.
    #[error("fixture {path} is invalid: {message}")]
    Invalid {
        /// The fixture file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFixture {
    description: Option<String>,
    runbook: Option<String>,
    #[serde(default)]
    operator: OperatorFixture,
    #[serde(default)]
    k8s: K8sFixture,
    #[serde(default)]
    postgres: PostgresFixture,
    #[serde(default)]
    object_store: ObjectStoreFixture,
    #[serde(default)]
    health: HealthFixture,
    #[serde(default)]
    notify: NotifyFixture,
    #[serde(default)]
    faults: Vec<FaultFixture>,
    #[serde(default)]
    live: Vec<String>,
    expect: Option<Expect>,
}

/// `[operator]`: scripted answers.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorFixture {
    /// Answers to `operator.confirm`, in order (then the run's approver).
    pub confirm: Option<Vec<bool>>,
    /// Answer to mutating-step approvals (absent: the run's approver).
    pub approve_steps: Option<bool>,
    /// Answers to `operator.ask`, in order (then the run's approver).
    pub answers: Option<Vec<String>>,
    /// How long the operator takes to answer each scripted `confirm` or
    /// `ask` ("3m"; simulated time in drills).
    pub think_time: Option<String>,
}

/// `[expect]`: what `drhost test` checks.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// completed | halted | failed | timed-out | trapped | declined.
    pub outcome: String,
    /// The step the run ended in (for anything but completed).
    pub step: Option<String>,
    /// A substring of the outcome's message.
    pub message_contains: Option<String>,
    /// Calls that must happen, in order.
    #[serde(default)]
    pub calls: Vec<String>,
    /// Calls that must not happen.
    #[serde(default)]
    pub not_calls: Vec<String>,
}

/// A simulated environment: one mock per capability.
#[derive(Clone)]
pub struct MockEnv {
    /// Kubernetes.
    pub k8s: Arc<MockK8s>,
    /// PostgreSQL.
    pub postgres: Arc<MockPostgres>,
    /// Object store.
    pub object_store: Arc<MockObjectStore>,
    /// Health targets.
    pub health: Arc<MockHealth>,
    /// Notification channels.
    pub notify: Arc<MockNotify>,
    /// Calls that reached any mock.
    pub log: MockLog,
}

impl MockEnv {
    /// Holds the simulated cluster to the runbook's bundle grants (`kinds`,
    /// `namespaces`) as the live backend is: an applied bundle with an
    /// object outside them is denied before anything is applied.
    pub fn enforce_bundle_grants(&self, grants: &crate::policy::Grants) {
        let grant = grants.k8s.clone().unwrap_or_default();
        self.k8s
            .set_object_guard(Arc::new(move |kind: &str, ns: &str, name: &str| {
                grant.bundle_object(kind, ns, name)
            }));
    }

    /// The simulated world's mutable state (deployments, secrets,
    /// databases, delivered notifications) as JSON. A run on mocks saves it
    /// after every mutation (`<run>.world.json` beside the audit log) so
    /// that `drhost run --mock F --resume RUN` continues in the world the
    /// interrupted run left, not in the fixture's initial one.
    pub fn world(&self) -> serde_json::Value {
        serde_json::json!({
            "k8s": self.k8s.world(),
            "postgres": self.postgres.world(),
            "notify": self.notify.sent(),
        })
    }

    /// Loads a world saved by [`MockEnv::world`].
    ///
    /// # Errors
    /// A message naming the malformed part.
    pub fn load_world(&self, world: &serde_json::Value) -> Result<(), String> {
        self.k8s.load_world(&world["k8s"])?;
        self.postgres.load_world(&world["postgres"])?;
        let sent =
            serde_json::from_value(world["notify"].clone()).map_err(|e| format!("notify: {e}"))?;
        self.notify.load_sent(sent);
        Ok(())
    }

    /// Saves [`MockEnv::world`] to `path` atomically (temp file, fsync,
    /// rename).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save_world(&self, path: &std::path::Path) -> Result<(), String> {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&self.world()).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| format!("cannot save the simulated world to {}: {e}", path.display()))
    }

    /// Capabilities backed by these mocks.
    pub fn capabilities(&self, approver: Arc<dyn Approver>) -> Capabilities {
        Capabilities {
            k8s: self.k8s.clone(),
            postgres: self.postgres.clone(),
            object_store: self.object_store.clone(),
            health: self.health.clone(),
            notify: self.notify.clone(),
            approver,
            state: Arc::new(StateStore::default()),
            after_mutation: None,
        }
    }
}

/// A loaded fixture.
pub struct Fixture {
    /// The fixture file.
    pub path: PathBuf,
    /// What it simulates.
    pub description: String,
    /// The runbook config it is meant for (`runbook = "…"`, relative to the
    /// fixture), used by `drhost test` for grants and params.
    pub runbook: Option<PathBuf>,
    /// The mocks, seeded.
    pub env: MockEnv,
    /// Scripted operator answers.
    pub operator: OperatorFixture,
    /// Expectations, if any.
    pub expect: Option<Expect>,
    /// Capabilities served by the runbook's real backends instead of mocks
    /// (`live = ["postgres", "object-store"]`): a drill against staging
    /// databases with the rest simulated.
    pub live: Vec<String>,
    /// `[operator] think_time`.
    pub think_time: Duration,
}

/// Capabilities a fixture may hand to the runbook's real backends.
pub use crate::capability::LIVE_CAPABILITIES;

/// `capability.operation` names a fault may target.
pub const OPERATIONS: &[&str] = &[
    "k8s.get-deployment",
    "k8s.scale",
    "k8s.rollout-undo",
    "k8s.wait-ready",
    "k8s.apply",
    "k8s.replace-secret",
    "k8s.cluster-reachable",
    "postgres.restore",
    "postgres.integrity-check",
    "postgres.query",
    "postgres.terminate-connections",
    "object-store.list",
    "object-store.newest",
    "object-store.head",
    "object-store.verify",
    "health.check",
    "health.wait-healthy",
    "operator.notify",
];

const OUTCOMES: &[&str] = &[
    "completed",
    "halted",
    "failed",
    "timed-out",
    "trapped",
    "declined",
];

impl Fixture {
    /// Reads a fixture and seeds the mocks.
    ///
    /// # Errors
    /// [`FixtureError`] naming the file and the problem.
    pub fn load(path: &Path) -> Result<Fixture, FixtureError> {
        let text = std::fs::read_to_string(path).map_err(|source| FixtureError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses fixture text as if read from `path`.
    ///
    /// # Errors
    /// [`FixtureError::Invalid`].
    pub fn parse(path: &Path, text: &str) -> Result<Fixture, FixtureError> {
        let invalid = |message: String| FixtureError::Invalid {
            path: path.to_owned(),
            message,
        };
        let raw: RawFixture =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
        if let Some(e) = &raw.expect
            && !OUTCOMES.contains(&e.outcome.as_str())
        {
            return Err(invalid(format!(
                "expect.outcome {:?} is not one of {}",
                e.outcome,
                OUTCOMES.join(", ")
            )));
        }
        let known: Vec<String> = OPERATIONS.iter().map(|s| s.to_string()).collect();
        let faults = Faults::new(raw.faults, &known).map_err(invalid)?;
        let log = MockLog::default();
        let object_store = Arc::new(
            MockObjectStore::new(raw.object_store, faults.clone(), log.clone()).map_err(invalid)?,
        );
        let env = MockEnv {
            k8s: Arc::new(MockK8s::new(raw.k8s, faults.clone(), log.clone()).map_err(invalid)?),
            postgres: Arc::new(
                MockPostgres::new(
                    raw.postgres,
                    object_store.clone(),
                    faults.clone(),
                    log.clone(),
                )
                .map_err(invalid)?,
            ),
            object_store,
            health: Arc::new(
                MockHealth::new(raw.health, faults.clone(), log.clone()).map_err(invalid)?,
            ),
            notify: Arc::new(MockNotify::new(raw.notify, faults, log.clone())),
            log,
        };
        let think_time =
            parse_opt_duration(&raw.operator.think_time, "operator.think_time").map_err(invalid)?;
        Ok(Fixture {
            think_time,
            path: path.to_owned(),
            description: raw.description.unwrap_or_default(),
            runbook: raw
                .runbook
                .map(|r| path.parent().unwrap_or(Path::new(".")).join(r)),
            env,
            operator: raw.operator,
            expect: raw.expect,
            live: {
                for l in &raw.live {
                    if !LIVE_CAPABILITIES.contains(&l.as_str()) {
                        return Err(invalid(format!(
                            "`live`: {l:?} has no real backend; one of: {}",
                            LIVE_CAPABILITIES.join(", ")
                        )));
                    }
                }
                raw.live
            },
        })
    }

    /// The approver for a run on this fixture: its scripted answers first,
    /// then `fallback`.
    pub fn approver(&self, fallback: Box<dyn Approver>) -> Arc<dyn Approver> {
        let o = &self.operator;
        if o.confirm.is_none() && o.approve_steps.is_none() && o.answers.is_none() {
            return Arc::from(fallback);
        }
        Arc::new(
            ScriptedApprover::new(
                o.confirm.clone().unwrap_or_default(),
                o.answers.clone().unwrap_or_default(),
                o.approve_steps,
                fallback,
            )
            .with_think_time(self.think_time),
        )
    }
}

fn matches(pattern: &str, call: &CallRecord) -> bool {
    let rendered = call.render();
    let mut words = pattern.split_whitespace();
    let Some(op) = words.next() else { return false };
    if op != call.op {
        return false;
    }
    let have: Vec<&str> = rendered.split_whitespace().collect();
    words.all(|w| have.contains(&w))
}

/// Checks a run against expectations. Returns one line per failed
/// expectation (empty when all hold).
pub fn check_expect(expect: &Expect, report: &RunReport) -> Vec<String> {
    let mut failures = Vec::new();
    let (outcome, step, message) = report.outcome.parts();
    if outcome != expect.outcome {
        failures.push(format!(
            "outcome: expected {}, got {outcome}{}",
            expect.outcome,
            if message.is_empty() {
                String::new()
            } else {
                format!(" ({message})")
            }
        ));
    }
    if let Some(want) = &expect.step
        && step != Some(want.as_str())
    {
        failures.push(format!(
            "step: expected the run to end in {want:?}, it ended in {step:?}"
        ));
    }
    if let Some(want) = &expect.message_contains
        && !message.contains(want.as_str())
    {
        failures.push(format!(
            "message: expected it to contain {want:?}, got {message:?}"
        ));
    }
    let mut next = 0;
    for pattern in &expect.calls {
        match report.calls[next..]
            .iter()
            .position(|c| matches(pattern, c))
        {
            Some(i) => next += i + 1,
            None => {
                let found_earlier = report.calls[..next].iter().any(|c| matches(pattern, c));
                failures.push(format!(
                    "calls: expected {pattern:?}{}",
                    if found_earlier {
                        " later (it happened, but before the previous expected call)"
                    } else {
                        " (never happened)"
                    }
                ));
            }
        }
    }
    for pattern in &expect.not_calls {
        for c in report.calls.iter().filter(|c| matches(pattern, c)) {
            failures.push(format!("not_calls: {pattern:?} happened: {}", c.render()));
        }
    }
    if !failures.is_empty() {
        failures.push("calls made:".into());
        for c in &report.calls {
            failures.push(format!("  [{}] {}", c.step, c.render()));
        }
    }
    failures
}
