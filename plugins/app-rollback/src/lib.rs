//! drhost scenario plugin: recovery from application code corruption (a bad
//! deploy) by rolling the deployments back (Scenario 3 of the DR runbook).
//!
//! Steps, in order (budgets from the runbook, RTO 10 minutes):
//!
//! | id         | title                        | budget | mutates |
//! |------------|------------------------------|--------|---------|
//! | `rollback` | Roll back to previous version| 5 min  | yes     |
//! | `verify`   | Verify the rollback          | 5 min  | no      |
//!
//! `rollback` first reads every deployment (so a denied or missing one stops
//! the run before anything changes), then rolls each back like `kubectl
//! rollout undo`: to the previous revision, or to the revision given by the
//! `to-revision` parameter. `verify` waits for the pods, the health targets
//! and the critical-functionality checks. When the revision rolled back to is
//! unhealthy too, it stops and says so: it never rolls back further on its
//! own, because an older revision may not match the database schema or the
//! other services; the operator picks a known-good revision.
//!
//! State keys (kept across steps and resumed runs), per deployment `<d>`:
//! `rollback/<d>/before-revision`, `rollback/<d>/before-images` (what ran
//! before the rollback), `rollback/<d>/requested` (`previous` or the
//! revision asked for), `rollback/<d>/after-revision`,
//! `rollback/<d>/after-images` (what runs after it). A re-run of `rollback`
//! skips deployments that already have `after-revision`: rolling back twice
//! would return to the bad revision.
//!
//! Capabilities used: k8s (get-deployment, rollout-undo, wait-ready), health
//! (wait-healthy, check), clock (now-ms), state, log.

use drhost_sdk::prelude::*;
use drhost_sdk::{clock, health, k8s, state};

/// Plugin name, as `describe` reports it and the runbook config pins it.
const NAME: &str = "app-rollback";

/// Recovery time objective: 10 minutes (the sum of the step budgets).
const RTO_MS: u64 = 10 * MINUTE_MS;

const ROLLBACK: &str = "rollback";
const VERIFY: &str = "verify";

/// Steps: id, title, budget, mutates.
const STEPS: &[StepRow] = &[
    (
        ROLLBACK,
        "Roll back to the previous version",
        5 * MINUTE_MS,
        StepKind::Mutates,
    ),
    (
        VERIFY,
        "Verify the rollback",
        5 * MINUTE_MS,
        StepKind::Reads,
    ),
];

/// Parameters: name, default, description. The defaults are both reported by
/// `describe` and used when a parameter is absent from `run_step`.
const PARAMS: &[ParamRow] = &[
    (
        "namespace",
        "resume-screening",
        "Kubernetes namespace of the deployments.",
    ),
    (
        "deployments",
        "backend,frontend",
        "Deployments to roll back, comma-separated, in order.",
    ),
    (
        "to-revision",
        "",
        "Revision to roll back to: empty for each deployment's previous revision, a number for \
         every deployment, or per deployment as \"backend=11,frontend=7\" (then every deployment \
         must be named).",
    ),
    (
        "ready-timeout",
        "3m",
        "How long to wait, in total, for the deployments' pods to become ready after the rollback.",
    ),
    (
        "health-timeout",
        "90s",
        "How long to wait, in total, for the health targets to become healthy.",
    ),
    (
        "health-targets",
        "backend-api,frontend",
        "Health targets (from the runbook config) that must become healthy, comma-separated.",
    ),
    (
        "critical-checks",
        "backend-api-candidates",
        "Health targets checked once each for critical functionality (e.g. an endpoint that \
         reads candidates), comma-separated; empty for none.",
    ),
];

fn default_of(name: &str) -> &'static str {
    param_default(PARAMS, name)
}

/// Where to roll a deployment back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The revision before the current one (`kubectl rollout undo`).
    Previous,
    /// A given revision (`kubectl rollout undo --to-revision N`).
    Revision(u64),
}

impl Target {
    fn as_arg(self) -> Option<u64> {
        match self {
            Target::Previous => None,
            Target::Revision(r) => Some(r),
        }
    }

    fn describe(self) -> String {
        match self {
            Target::Previous => "previous".into(),
            Target::Revision(r) => r.to_string(),
        }
    }
}

/// Parses `to-revision`: empty, one number, or `name=N` pairs naming every
/// deployment. Returns the target of each deployment, in order.
fn parse_targets(raw: &str, deployments: &[String]) -> Result<Vec<(String, Target)>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(deployments
            .iter()
            .map(|d| (d.clone(), Target::Previous))
            .collect());
    }
    if !raw.contains('=') {
        let rev: u64 = raw.parse().map_err(|_| {
            format!(
                "parameter `to-revision` = {raw:?}: expected a revision number, \"name=N\" pairs \
                 (e.g. \"backend=11,frontend=7\") or empty for the previous revision"
            )
        })?;
        if rev == 0 {
            return Err(
                "parameter `to-revision`: revision 0 does not exist (revisions start at 1)".into(),
            );
        }
        return Ok(deployments
            .iter()
            .map(|d| (d.clone(), Target::Revision(rev)))
            .collect());
    }
    let p = Params::from(vec![("to-revision".to_string(), raw.to_string())]);
    let pairs: Vec<(String, u64)> = p.pairs("to-revision", "")?;
    for (name, rev) in &pairs {
        if !deployments.contains(name) {
            return Err(format!(
                "parameter `to-revision` names {name}, which is not in `deployments` ({})",
                deployments.join(",")
            ));
        }
        if *rev == 0 {
            return Err(format!(
                "parameter `to-revision`: {name}=0: revision 0 does not exist (revisions start at 1)"
            ));
        }
    }
    deployments
        .iter()
        .map(|d| {
            pairs
                .iter()
                .rev()
                .find(|(n, _)| n == d)
                .map(|(_, r)| (d.clone(), Target::Revision(*r)))
                .ok_or_else(|| {
                    format!(
                        "parameter `to-revision` gives no revision for {d}: name every deployment \
                         (e.g. \"{d}=N\"), or leave {d} out of `deployments` to leave it alone \
                         (rolling it back to its \"previous\" revision again could bring back the bad one)"
                    )
                })
        })
        .collect()
}

/// The parameters, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
struct Config {
    namespace: String,
    /// Each deployment with its rollback target, in order.
    targets: Vec<(String, Target)>,
    ready_timeout_ms: u64,
    health_timeout_ms: u64,
    health_targets: Vec<String>,
    critical_checks: Vec<String>,
}

impl Config {
    fn from_params(p: &Params) -> Result<Config, String> {
        let namespace = p.non_empty_or("namespace", default_of("namespace"))?;
        let deployments = p.list("deployments", default_of("deployments"));
        if deployments.is_empty() {
            return Err(
                "parameter `deployments` lists no deployments (expected e.g. \"backend,frontend\")"
                    .into(),
            );
        }
        let targets = parse_targets(p.get_or("to-revision", ""), &deployments)?;
        Ok(Config {
            namespace: namespace.to_string(),
            targets,
            ready_timeout_ms: p.duration_ms("ready-timeout", default_of("ready-timeout"))?,
            health_timeout_ms: p.duration_ms("health-timeout", default_of("health-timeout"))?,
            health_targets: p.list("health-targets", default_of("health-targets")),
            critical_checks: p.list("critical-checks", default_of("critical-checks")),
        })
    }

    fn deployments(&self) -> impl Iterator<Item = &str> {
        self.targets.iter().map(|(d, _)| d.as_str())
    }
}

fn key(deployment: &str, what: &str) -> String {
    format!("rollback/{deployment}/{what}")
}

const BEFORE_REVISION: &str = "before-revision";
const BEFORE_IMAGES: &str = "before-images";
const REQUESTED: &str = "requested";
const AFTER_REVISION: &str = "after-revision";
const AFTER_IMAGES: &str = "after-images";

fn images_text(images: &[String]) -> String {
    join_or(images, "no images reported")
}

struct AppRollback;

impl Guest for AppRollback {
    fn describe() -> ScenarioInfo {
        ScenarioInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "Recovers from application code corruption (runbook Scenario 3): rolls the \
                      deployments back to their previous revision (or a given one) the way \
                      `kubectl rollout undo` does, recording the revisions and images before and \
                      after, then checks the pods, the health endpoints and critical \
                      functionality. If the revision rolled back to is unhealthy too it stops \
                      and names the revisions tried: it never rolls back further on its own."
                .into(),
            rto_ms: RTO_MS,
            params: param_infos(PARAMS),
            steps: step_infos(STEPS),
        }
    }

    fn run_step(id: String, params: Vec<(String, String)>) -> Result<StepOutcome, String> {
        with_step_id(&id, || {
            let cfg = Config::from_params(&Params::from(params))?;
            match id.as_str() {
                ROLLBACK => rollback(&cfg),
                VERIFY => verify(&cfg),
                other => Err(unknown_step(other, &step_ids(STEPS))),
            }
        })
    }
}

drhost_sdk::export_scenario!(AppRollback);

/// Step 1: read every deployment, then roll each back.
fn rollback(cfg: &Config) -> Result<StepOutcome, String> {
    let ns = &cfg.namespace;

    // Read all of them first: a deployment that is missing or not granted
    // stops the run before anything is rolled back.
    let mut current = Vec::new();
    for (name, target) in &cfg.targets {
        let status = k8s::get_deployment(ns, name)
            .with_ctx(|| format!("reading deployment {ns}/{name} (nothing was rolled back)"))?;
        if let Target::Revision(r) = target
            && status.revision != 0
            && *r > status.revision
        {
            return Err(format!(
                "{ns}/{name} is at revision {}; revision {r} (from `to-revision`) does not exist yet. \
                 Nothing was rolled back. List its revisions with `kubectl -n {ns} rollout history deployment/{name}`",
                status.revision
            ));
        }
        current.push(status);
    }

    let mut done: Vec<String> = Vec::new();
    let mut lines = Vec::new();
    for ((name, target), status) in cfg.targets.iter().zip(&current) {
        if let Some(after) = state::get_u64(&key(name, AFTER_REVISION))
            .with_ctx(|| format!("reading state {}", key(name, AFTER_REVISION)))?
        {
            // Re-run after a resume: undoing again would bring the bad
            // revision back.
            info!(
                "{ns}/{name} was already rolled back by this run (to revision {after}); not rolling it back again"
            );
            lines.push(format!("{name}: already at revision {after}"));
            done.push(format!("{name} (revision {after})"));
            continue;
        }

        // Record what ran before, unless an earlier attempt did.
        let before_key = key(name, BEFORE_REVISION);
        let before =
            match state::get_u64(&before_key).with_ctx(|| format!("reading state {before_key}"))? {
                Some(rev) => rev,
                None => {
                    state::set_u64(&before_key, status.revision)
                        .with_ctx(|| format!("recording {before_key} in state"))?;
                    state::set(&key(name, BEFORE_IMAGES), &status.images.join("\n"))
                        .with_ctx(|| format!("recording {} in state", key(name, BEFORE_IMAGES)))?;
                    status.revision
                }
            };
        state::set(&key(name, REQUESTED), &target.describe())
            .with_ctx(|| format!("recording {} in state", key(name, REQUESTED)))?;

        if let Target::Revision(r) = target
            && *r == status.revision
        {
            warn!(
                "{ns}/{name} is already at revision {r} (images: {}); not rolling it back",
                images_text(&status.images)
            );
            record_after(name, status.revision, &status.images)?;
            lines.push(format!("{name}: already at revision {r}"));
            done.push(format!("{name} (revision {r})"));
            continue;
        }

        info!(
            "rolling back {ns}/{name} from revision {before} (images: {}) to {}",
            images_text(&status.images),
            target_text(*target, before)
        );
        let now = k8s::rollout_undo(ns, name, target.as_arg())
            .map_err(|e| undo_error(ns, name, *target, before, &e, &done))?;
        // The images now running (the revision's template), for the record
        // and for verify's messages.
        let images = match k8s::get_deployment(ns, name) {
            Ok(s) => s.images,
            Err(e) => {
                warn!("reading {ns}/{name} after the rollback failed: {e}");
                Vec::new()
            }
        };
        record_after(name, now, &images)?;
        if now == before {
            // Kubernetes skips an undo whose template already matches; a
            // dry run simulates the call and reports the current revision.
            info!(
                "{ns}/{name} stays at revision {before} (images: {}): the target template \
                 already matched, or this is a dry run",
                images_text(&images)
            );
            lines.push(format!(
                "{name}: unchanged at revision {now} ({})",
                images_text(&images)
            ));
        } else {
            info!(
                "{ns}/{name} rolled back: revision {before} -> {now} (images: {})",
                images_text(&images)
            );
            lines.push(format!(
                "{name}: revision {before} -> {now} ({})",
                images_text(&images)
            ));
        }
        done.push(format!("{name} (revision {now})"));
    }
    Ok(StepOutcome::Done(format!(
        "rolled back in {ns}: {}",
        lines.join("; ")
    )))
}

fn target_text(target: Target, before: u64) -> String {
    match target {
        Target::Previous => format!("the revision before {before}"),
        Target::Revision(r) => format!("the template of revision {r}"),
    }
}

fn record_after(name: &str, revision: u64, images: &[String]) -> Result<(), String> {
    state::set(&key(name, AFTER_IMAGES), &images.join("\n"))
        .with_ctx(|| format!("recording {} in state", key(name, AFTER_IMAGES)))?;
    state::set_u64(&key(name, AFTER_REVISION), revision)
        .with_ctx(|| format!("recording {} in state", key(name, AFTER_REVISION)))
}

/// The message for a failed undo: what failed, what it means, what was
/// already rolled back.
fn undo_error(
    ns: &str,
    name: &str,
    target: Target,
    before: u64,
    e: &CapError,
    done: &[String],
) -> String {
    let what = match (target, e) {
        (Target::Previous, CapError::NotFound(_)) => format!(
            "{ns}/{name} (revision {before}) has no previous revision to roll back to: {e}. The bad \
             code may be in its only revision; deploy a known-good image instead"
        ),
        (Target::Revision(r), CapError::NotFound(_)) => format!(
            "{ns}/{name} has no revision {r} to roll back to: {e}. List its revisions with \
             `kubectl -n {ns} rollout history deployment/{name}` and set `to-revision` to one of them"
        ),
        _ => format!(
            "rolling back {ns}/{name} from revision {before} to {}: {e}",
            target_text(target, before)
        ),
    };
    if done.is_empty() {
        format!("{what}. Nothing was rolled back")
    } else {
        format!(
            "{what}. Already rolled back by this run: {}",
            done.join(", ")
        )
    }
}

/// What the run recorded for one deployment.
#[derive(Debug, Clone, Default, PartialEq)]
struct Record {
    name: String,
    before_revision: Option<u64>,
    before_images: Vec<String>,
    requested: Option<String>,
    after_revision: Option<u64>,
    after_images: Vec<String>,
}

fn read_record(name: &str) -> Record {
    // Best effort: these only feed messages.
    let text = |what: &str| state::get(&key(name, what)).ok().flatten();
    let lines = |what: &str| {
        text(what)
            .map(|t| {
                t.lines()
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    Record {
        name: name.to_string(),
        before_revision: text(BEFORE_REVISION).and_then(|t| t.trim().parse().ok()),
        before_images: lines(BEFORE_IMAGES),
        requested: text(REQUESTED),
        after_revision: text(AFTER_REVISION).and_then(|t| t.trim().parse().ok()),
        after_images: lines(AFTER_IMAGES),
    }
}

fn rev_text(rev: Option<u64>) -> String {
    rev.map_or_else(|| "?".to_string(), |r| r.to_string())
}

/// "backend: revision 12 (registry/backend:2.4.1) rolled back to revision 13
/// (registry/backend:2.4.0; asked for: previous)".
fn tried_text(r: &Record) -> String {
    format!(
        "{}: revision {} ({}) rolled back to revision {} ({}; asked for: {})",
        r.name,
        rev_text(r.before_revision),
        images_text(&r.before_images),
        rev_text(r.after_revision),
        images_text(&r.after_images),
        r.requested.as_deref().unwrap_or("previous"),
    )
}

/// The message when the rollback did not bring the application back.
fn still_unhealthy_message(ns: &str, problems: &[String], records: &[Record]) -> String {
    let tried: Vec<String> = records.iter().map(tried_text).collect();
    let pairs: Vec<String> = records.iter().map(|r| format!("{}=N", r.name)).collect();
    let first = records.first().map_or("backend", |r| r.name.as_str());
    format!(
        "the application is still unhealthy after the rollback: {}. The revision rolled back to is \
         unhealthy too, so drhost stops here and does NOT roll back further on its own. Revisions \
         tried: {}. Pick a known-good revision (`kubectl -n {ns} rollout history deployment/<name>`), \
         then either set `to-revision = \"{}\"` in [params] of the runbook config and `drhost run` it \
         again, or roll one deployment back by hand: `drhost exec --config <runbook> k8s rollout-undo \
         {ns} {first} --to-revision N`",
        problems.join("; "),
        tried.join("; "),
        pairs.join(","),
    )
}

/// Milliseconds left until `deadline`, at least one second so a wait still
/// looks once.
fn left(deadline: u64) -> Result<u64, String> {
    let now = clock::now_ms().ctx("reading the clock")?;
    Ok(deadline.saturating_sub(now).max(SECOND_MS))
}

/// Step 2: pods ready, health targets healthy, critical checks passing.
fn verify(cfg: &Config) -> Result<StepOutcome, String> {
    let ns = &cfg.namespace;
    let records: Vec<Record> = cfg.deployments().map(read_record).collect();
    let mut problems = Vec::new();
    let mut good = Vec::new();

    let start = clock::now_ms().ctx("reading the clock")?;
    let ready_deadline = start.saturating_add(cfg.ready_timeout_ms);
    for r in &records {
        let name = &r.name;
        let timeout = left(ready_deadline)?;
        match k8s::wait_ready(ns, name, timeout) {
            Ok(status) => {
                if let Some(after) = r.after_revision
                    && status.revision != 0
                    && status.revision != after
                {
                    warn!(
                        "{ns}/{name} is at revision {} but the rollback left it at {after}: \
                         something else changed it since",
                        status.revision
                    );
                }
                info!(
                    "{ns}/{name} is ready: {}/{} replicas at revision {} ({})",
                    status.ready,
                    status.desired,
                    status.revision,
                    images_text(&status.images)
                );
                good.push(format!("{name} {}/{} ready", status.ready, status.desired));
            }
            Err(e) => {
                warn!("{ns}/{name}: pods not ready: {e}");
                problems.push(format!("{name}: pods not ready ({e})"));
            }
        }
    }
    if !problems.is_empty() {
        // Health checks of an application whose pods are not ready only
        // add noise.
        return Err(still_unhealthy_message(ns, &problems, &records));
    }

    let health_deadline = clock::now_ms()
        .ctx("reading the clock")?
        .saturating_add(cfg.health_timeout_ms);
    for target in &cfg.health_targets {
        let timeout = left(health_deadline)?;
        match health::wait_healthy(target, timeout) {
            Ok(c) if c.healthy => {
                info!(
                    "health target {target} is healthy (status {}, {} ms)",
                    c.status, c.latency_ms
                );
                good.push(format!("{target} healthy"));
            }
            Ok(c) => {
                warn!(
                    "health target {target} is unhealthy: status {}: {}",
                    c.status, c.detail
                );
                problems.push(format!(
                    "health target {target} unhealthy (status {}: {})",
                    c.status, c.detail
                ));
            }
            Err(e) => {
                warn!("health target {target}: {e}");
                problems.push(format!("health target {target}: {e}"));
            }
        }
    }
    if !problems.is_empty() {
        return Err(still_unhealthy_message(ns, &problems, &records));
    }

    for check in &cfg.critical_checks {
        match health::check(check) {
            Ok(c) if c.healthy => {
                info!(
                    "critical check {check} passed (status {}, {} ms)",
                    c.status, c.latency_ms
                );
                good.push(format!("{check} ok"));
            }
            Ok(c) => {
                warn!(
                    "critical check {check} FAILED: status {}: {}",
                    c.status, c.detail
                );
                problems.push(format!(
                    "critical check {check} failed (status {}: {})",
                    c.status, c.detail
                ));
            }
            Err(e) => {
                warn!("critical check {check}: {e}");
                problems.push(format!("critical check {check}: {e}"));
            }
        }
    }
    if !problems.is_empty() {
        return Err(still_unhealthy_message(ns, &problems, &records));
    }

    let revisions: Vec<String> = records
        .iter()
        .map(|r| format!("{} at revision {}", r.name, rev_text(r.after_revision)))
        .collect();
    Ok(StepOutcome::Done(format!(
        "rollback verified in {ns} ({}): {}",
        revisions.join(", "),
        good.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn describe_matches_the_runbook() {
        let info = AppRollback::describe();
        assert_eq!(info.name, "app-rollback");
        assert_eq!(info.version, "1.0.0");
        assert_eq!(info.rto_ms, 10 * 60_000);
        let ids: Vec<&str> = info.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, [ROLLBACK, VERIFY]);
        assert_eq!(
            info.steps.iter().map(|s| s.budget_ms).sum::<u64>(),
            info.rto_ms
        );
        let mutating: Vec<bool> = info.steps.iter().map(|s| s.mutates).collect();
        assert_eq!(mutating, [true, false]);
        assert!(info.params.iter().all(|p| p.default_value.is_some()));
        // Waits fit in the verify budget.
        let cfg = Config::from_params(&Params::default()).unwrap();
        assert!(cfg.ready_timeout_ms + cfg.health_timeout_ms < 5 * MINUTE_MS);
    }

    #[test]
    fn defaults_parse() {
        let cfg = Config::from_params(&Params::default()).unwrap();
        assert_eq!(cfg.namespace, "resume-screening");
        assert_eq!(
            cfg.targets,
            vec![
                ("backend".to_string(), Target::Previous),
                ("frontend".to_string(), Target::Previous)
            ]
        );
        assert_eq!(cfg.ready_timeout_ms, 3 * MINUTE_MS);
        assert_eq!(cfg.health_targets, names(&["backend-api", "frontend"]));
        assert_eq!(cfg.critical_checks, names(&["backend-api-candidates"]));
        let cfg = Config::from_params(&Params::from_strs(&[("critical-checks", "")])).unwrap();
        assert!(cfg.critical_checks.is_empty());
    }

    #[test]
    fn to_revision_forms() {
        let ds = names(&["backend", "frontend"]);
        assert_eq!(
            parse_targets(" 11 ", &ds).unwrap(),
            vec![
                ("backend".to_string(), Target::Revision(11)),
                ("frontend".to_string(), Target::Revision(11))
            ]
        );
        assert_eq!(
            parse_targets("frontend=7, backend=11", &ds).unwrap(),
            vec![
                ("backend".to_string(), Target::Revision(11)),
                ("frontend".to_string(), Target::Revision(7))
            ]
        );
        let err = parse_targets("backend=11", &ds).unwrap_err();
        assert!(err.contains("no revision for frontend"), "{err}");
        let err = parse_targets("backend=11,api=3,frontend=2", &ds).unwrap_err();
        assert!(err.contains("names api"), "{err}");
        assert!(
            parse_targets("latest", &ds)
                .unwrap_err()
                .contains("expected a revision number")
        );
        assert!(parse_targets("0", &ds).unwrap_err().contains("revision 0"));
        assert!(parse_targets("backend=x,frontend=1", &ds).is_err());
        assert!(parse_targets("backend=0,frontend=1", &ds).is_err());
    }

    #[test]
    fn bad_params_are_named() {
        let err = Config::from_params(&Params::from_strs(&[("deployments", " , ")])).unwrap_err();
        assert!(err.contains("`deployments`"), "{err}");
        let err = Config::from_params(&Params::from_strs(&[("ready-timeout", "3")])).unwrap_err();
        assert!(err.starts_with("parameter `ready-timeout`"), "{err}");
        let err = Config::from_params(&Params::from_strs(&[("namespace", " ")])).unwrap_err();
        assert!(err.contains("`namespace` is empty"), "{err}");
    }

    #[test]
    fn unknown_step_is_an_error() {
        let err = AppRollback::run_step("nope".into(), vec![]).unwrap_err();
        assert!(err.starts_with("nope: unknown step `nope`"), "{err}");
        assert!(err.contains("rollback, verify"), "{err}");
    }

    #[test]
    fn messages() {
        let records = vec![
            Record {
                name: "backend".into(),
                before_revision: Some(12),
                before_images: names(&["reg/backend:2.4.1"]),
                requested: Some("previous".into()),
                after_revision: Some(13),
                after_images: names(&["reg/backend:2.4.0"]),
            },
            Record {
                name: "frontend".into(),
                ..Record::default()
            },
        ];
        let m = still_unhealthy_message(
            "ns",
            &["health target backend-api: timed-out: status 500".into()],
            &records,
        );
        assert!(m.contains("does NOT roll back further"), "{m}");
        assert!(
            m.contains(
                "backend: revision 12 (reg/backend:2.4.1) rolled back to revision 13 \
                 (reg/backend:2.4.0; asked for: previous)"
            ),
            "{m}"
        );
        assert!(
            m.contains("frontend: revision ? (no images reported)"),
            "{m}"
        );
        assert!(m.contains("to-revision = \"backend=N,frontend=N\""), "{m}");
        assert!(
            m.contains(
                "drhost exec --config <runbook> k8s rollout-undo ns backend --to-revision N"
            ),
            "{m}"
        );

        let e = undo_error(
            "ns",
            "frontend",
            Target::Previous,
            7,
            &CapError::NotFound("no previous revision".into()),
            &["backend (revision 13)".into()],
        );
        assert!(
            e.contains("has no previous revision to roll back to"),
            "{e}"
        );
        assert!(
            e.ends_with("Already rolled back by this run: backend (revision 13)"),
            "{e}"
        );
        let e = undo_error(
            "ns",
            "backend",
            Target::Revision(9),
            12,
            &CapError::Failed("webhook said no".into()),
            &[],
        );
        assert_eq!(
            e,
            "rolling back ns/backend from revision 12 to the template of revision 9: failed: \
             webhook said no. Nothing was rolled back"
        );
    }
}
