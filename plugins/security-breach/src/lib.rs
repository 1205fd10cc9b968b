//! drhost scenario plugin: response to a security breach (Scenario 4 of the
//! DR runbook: unauthorized access, data exfiltration, malicious activity).
//!
//! Steps, in order (budgets from the runbook, RTO 80 minutes):
//!
//! | id                   | title                                   | budget | mutates |
//! |----------------------|-----------------------------------------|--------|---------|
//! | `immediate-response` | Isolate, revoke credentials, log more   | 5 min  | yes     |
//! | `containment`        | Contain: sessions, network policy       | 15 min | yes     |
//! | `investigation`      | Investigation (the operator's findings) | 30 min | no      |
//! | `remediation`        | Restore from a clean backup if needed   | 20 min | yes     |
//! | `restore-services`   | Restore and verify services             | 10 min | yes     |
//!
//! The runbook's five steps add up to the 80-minute RTO, so verification is
//! part of `restore-services` rather than a step of its own.
//!
//! - `immediate-response` scales the affected deployments to 0 (recording
//!   their replica counts), replaces the application secret from a secret
//!   source holding the *new* credentials (the host resolves it; the secret
//!   never enters the plugin), applies the logging bundle and tells the
//!   incident channel.
//! - `containment` makes sure nothing scaled the isolated deployments back
//!   (an autoscaler, a GitOps controller, or the intruder), terminates the
//!   database sessions (sessions opened with the stolen credentials survive a
//!   secret rotation) and applies the containment network policy bundle.
//! - `investigation` is the humans' step: the operator types the findings
//!   (recorded in state and the audit log), then whether to restore from a
//!   backup taken before a cut-off time (RFC 3339 UTC, or relative such as
//!   "6h ago"; empty for no restore). Its 30 minutes are a reminder: time
//!   spent waiting for the operator does not count against the budget.
//! - `remediation` restores the newest backup taken before the cut-off,
//!   after the operator confirms it; the host keeps the replaced database
//!   for forensics. Patching the vulnerability itself stays with the team.
//! - `restore-services` checks the database, scales the deployments back,
//!   waits for them and the health target, and tells the incident channel.
//!
//! State keys (kept across steps and resumed runs): `isolated/<deployment>`
//! (replica count before isolation), `investigation/findings`,
//! `restore/cutoff-ms` (milliseconds since the epoch, or `none`),
//! `restore/key` and `restore/kept-as` (what was restored, where the old
//! database was kept).
//!
//! Capabilities used: k8s (scale, get-deployment, wait-ready, replace-secret,
//! apply), postgres (terminate-connections, restore, integrity-check),
//! object-store (list), health (wait-healthy), operator (ask, confirm,
//! notify), clock (now-ms), state, log.

use drhost_sdk::prelude::*;
use drhost_sdk::{clock, health, k8s, object_store, operator, postgres, state};

/// Plugin name, as `describe` reports it and the runbook config pins it.
const NAME: &str = "security-breach";

/// Recovery time objective: 80 minutes (the sum of the step budgets).
const RTO_MS: u64 = 80 * MINUTE_MS;

const IMMEDIATE_RESPONSE: &str = "immediate-response";
const CONTAINMENT: &str = "containment";
const INVESTIGATION: &str = "investigation";
const REMEDIATION: &str = "remediation";
const RESTORE_SERVICES: &str = "restore-services";

/// Steps: id, title, budget, mutates.
const STEPS: &[StepRow] = &[
    (
        IMMEDIATE_RESPONSE,
        "Immediate response: isolate, revoke credentials, enable logging",
        5 * MINUTE_MS,
        StepKind::Mutates,
    ),
    (
        CONTAINMENT,
        "Containment: keep isolated, cut database sessions, network policy",
        15 * MINUTE_MS,
        StepKind::MutatesIdempotently,
    ),
    (
        INVESTIGATION,
        "Investigation: attack vector, data exposure, restore decision",
        30 * MINUTE_MS,
        StepKind::Reads,
    ),
    (
        REMEDIATION,
        "Remediation: restore from a clean backup if needed",
        20 * MINUTE_MS,
        StepKind::Mutates,
    ),
    (
        RESTORE_SERVICES,
        "Restore services and verify",
        10 * MINUTE_MS,
        StepKind::MutatesIdempotently,
    ),
];

/// Parameters: name, default, description. The defaults are both reported by
/// `describe` and used when a parameter is absent from `run_step`.
const PARAMS: &[ParamRow] = &[
    (
        "namespace",
        "resume-screening",
        "Kubernetes namespace of the affected deployments.",
    ),
    (
        "isolate",
        "backend",
        "Affected deployments to isolate (scale to 0), comma-separated.",
    ),
    (
        "replicas",
        "3",
        "Replica count to restore when the run has not recorded one: a number for every \
         isolated deployment, or per deployment as \"backend=3,celery-worker=2\".",
    ),
    (
        "secret",
        "resume-screening/resume-screening-secrets",
        "The application's Secret holding the compromised credentials, as namespace/name.",
    ),
    (
        "secret-source",
        "vault-rotated",
        "Named secret source (the runbook's [backends.k8s.secret_sources]) holding the NEW \
         credentials; the secret is replaced with its content.",
    ),
    (
        "logging-bundle",
        "audit-logging",
        "Manifest bundle that enables additional logging.",
    ),
    (
        "containment-bundle",
        "deny-egress",
        "Manifest bundle of network policies that contain the breach.",
    ),
    (
        "database",
        "resume_screening",
        "PostgreSQL database whose sessions are terminated and that may be restored.",
    ),
    (
        "backup-bucket",
        "resume-screening-backups",
        "Object-store bucket holding the backups.",
    ),
    (
        "backup-prefix",
        "postgres/",
        "Key prefix of the backups in the bucket.",
    ),
    (
        "health-target",
        "backend-api",
        "Health target (from the runbook config) that must be healthy once services are back.",
    ),
    (
        "ready-timeout",
        "4m",
        "How long to wait, in total, for the deployments to become ready when restoring services.",
    ),
    (
        "health-timeout",
        "3m",
        "How long to wait for the health target to become healthy.",
    ),
    (
        "notify-channel",
        "security-incident",
        "Notification channel for the incident (best effort); empty for none.",
    ),
];

fn default_of(name: &str) -> &'static str {
    param_default(PARAMS, name)
}

/// The parameters, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
struct Config {
    namespace: String,
    /// Deployments to isolate, with the fallback replica count.
    isolate: Vec<(String, u32)>,
    secret_namespace: String,
    secret_name: String,
    secret_source: String,
    logging_bundle: String,
    containment_bundle: String,
    database: String,
    bucket: String,
    prefix: String,
    health_target: String,
    ready_timeout_ms: u64,
    health_timeout_ms: u64,
    notify_channel: String,
}

/// Parses `replicas`: one number for every deployment, or `name=N` pairs
/// naming each of them.
fn parse_counts(raw: &str, deployments: &[String]) -> Result<Vec<(String, u32)>, String> {
    let raw = raw.trim();
    if !raw.contains('=') {
        let n: u32 = raw.parse().map_err(|_| {
            format!(
                "parameter `replicas` = {raw:?}: expected a replica count or \"name=N\" pairs \
                 (e.g. \"backend=3,celery-worker=2\")"
            )
        })?;
        return Ok(deployments.iter().map(|d| (d.clone(), n)).collect());
    }
    let p = Params::from(vec![("replicas".to_string(), raw.to_string())]);
    let pairs: Vec<(String, u32)> = p.pairs("replicas", "")?;
    if let Some((extra, _)) = pairs.iter().find(|(n, _)| !deployments.contains(n)) {
        return Err(format!(
            "parameter `replicas` names {extra}, which is not in `isolate` ({})",
            deployments.join(",")
        ));
    }
    deployments
        .iter()
        .map(|d| {
            pairs
                .iter()
                .rev()
                .find(|(n, _)| n == d)
                .map(|(_, c)| (d.clone(), *c))
                .ok_or_else(|| format!("parameter `replicas` gives no count for {d}"))
        })
        .collect()
}

impl Config {
    fn from_params(p: &Params) -> Result<Config, String> {
        let text = |name: &str| p.non_empty_or(name, default_of(name)).map(String::from);
        let deployments = p.list("isolate", default_of("isolate"));
        if deployments.is_empty() {
            return Err(
                "parameter `isolate` lists no deployments (expected e.g. \"backend\")".into(),
            );
        }
        let isolate = parse_counts(p.get_or("replicas", default_of("replicas")), &deployments)?;
        let secret = text("secret")?;
        let (secret_namespace, secret_name) = match secret.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                (ns.to_string(), name.to_string())
            }
            _ => {
                return Err(format!(
                    "parameter `secret` = {secret:?}: expected namespace/name (e.g. \
                     \"resume-screening/resume-screening-secrets\")"
                ));
            }
        };
        Ok(Config {
            namespace: text("namespace")?,
            isolate,
            secret_namespace,
            secret_name,
            secret_source: text("secret-source")?,
            logging_bundle: text("logging-bundle")?,
            containment_bundle: text("containment-bundle")?,
            database: text("database")?,
            bucket: text("backup-bucket")?,
            // An empty prefix is legitimate (backups at the bucket's root).
            prefix: p
                .get_or("backup-prefix", default_of("backup-prefix"))
                .trim()
                .to_string(),
            health_target: text("health-target")?,
            ready_timeout_ms: p.duration_ms("ready-timeout", default_of("ready-timeout"))?,
            health_timeout_ms: p.duration_ms("health-timeout", default_of("health-timeout"))?,
            notify_channel: p
                .get_or("notify-channel", default_of("notify-channel"))
                .trim()
                .to_string(),
        })
    }

    fn secret(&self) -> String {
        format!("{}/{}", self.secret_namespace, self.secret_name)
    }

    fn backup_location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

fn isolated_key(deployment: &str) -> String {
    format!("isolated/{deployment}")
}

const FINDINGS: &str = "investigation/findings";
const CUTOFF: &str = "restore/cutoff-ms";
const NO_RESTORE: &str = "none";
const RESTORED_KEY: &str = "restore/key";
const KEPT_AS: &str = "restore/kept-as";

struct SecurityBreach;

impl Guest for SecurityBreach {
    fn describe() -> ScenarioInfo {
        ScenarioInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary: "Responds to a security breach (runbook Scenario 4): isolates the affected \
                      deployments, replaces the compromised credentials from a secret source \
                      holding new ones and enables additional logging; then keeps them isolated, \
                      terminates database sessions and applies a containment network policy; \
                      records the operator's investigation findings and restore decision; \
                      restores the newest backup taken before the operator's cut-off time (the \
                      replaced database is kept for forensics); finally checks the database, \
                      brings the services back and verifies their health."
                .into(),
            rto_ms: RTO_MS,
            params: param_infos(PARAMS),
            steps: step_infos(STEPS),
        }
    }

    fn run_step(id: String, params: Vec<(String, String)>) -> Result<StepOutcome, String> {
        with_step_id(&id, || {
            let cfg = Config::from_params(&Params::from(params))?;
            let result = match id.as_str() {
                IMMEDIATE_RESPONSE => immediate_response(&cfg),
                CONTAINMENT => containment(&cfg),
                INVESTIGATION => investigation(&cfg),
                REMEDIATION => remediation(&cfg),
                RESTORE_SERVICES => restore_services(&cfg),
                other => Err(unknown_step(other, &step_ids(STEPS))),
            };
            result.map_err(|e| {
                // Between isolation and restore-services the deployments stay
                // at 0: say so, and how to bring them back by hand.
                if [CONTAINMENT, INVESTIGATION, REMEDIATION].contains(&id.as_str()) {
                    format!("{e}. {}", isolation_note(&cfg))
                } else {
                    e
                }
            })
        })
    }
}

drhost_sdk::export_scenario!(SecurityBreach);

/// Step 1: isolate, revoke the compromised credentials, log more, tell the
/// incident channel.
fn immediate_response(cfg: &Config) -> Result<StepOutcome, String> {
    let ns = &cfg.namespace;
    let mut isolated = Vec::new();
    for (d, _) in &cfg.isolate {
        let key = isolated_key(d);
        let stored = state::get_u32(&key).with_ctx(|| format!("reading state {key}"))?;
        let previous =
            k8s::scale(ns, d, 0).with_ctx(|| format!("isolating {ns}/{d} (scaling it to 0)"))?;
        match stored {
            Some(count) => info!(
                "scaled {ns}/{d} to 0 (it had {previous}); keeping the count recorded by an earlier attempt: {count}"
            ),
            None if previous == 0 => warn!(
                "{ns}/{d} was already at 0 replicas; restore-services will use the `replicas` parameter"
            ),
            None => {
                state::set_u32(&key, previous)
                    .with_ctx(|| format!("recording {key} = {previous} in state"))?;
                info!("isolated {ns}/{d}: scaled from {previous} to 0 replicas");
            }
        }
        isolated.push(format!("{d} (was {previous})"));
    }

    let secret = cfg.secret();
    let source = &cfg.secret_source;
    k8s::replace_secret(&cfg.secret_namespace, &cfg.secret_name, source).map_err(|e| {
        let hint = if matches!(e, CapError::NotFound(_)) {
            format!(
                " Put the NEW credentials in a secret source named {source:?} \
                 ([backends.k8s.secret_sources] of the runbook config, e.g. \
                 {source} = {{ file = \"/etc/drhost/{source}.yaml\" }}) and run again."
            )
        } else {
            String::new()
        };
        format!(
            "replacing secret {secret} from source {source:?}: {e}. The compromised credentials \
             are STILL VALID: rotate them at their origin (database role, API keys) now.{hint} \
             Isolated so far: {}",
            isolated.join(", ")
        )
    })?;
    info!("replaced secret {secret} with the content of source {source:?}");

    let bundle = &cfg.logging_bundle;
    let objects = k8s::apply(bundle).with_ctx(|| {
        format!(
            "applying logging bundle {bundle:?} (already done: isolated {}; secret {secret} replaced)",
            isolated.join(", ")
        )
    })?;
    info!(
        "applied logging bundle {bundle:?}: {}",
        objects_text(&objects)
    );

    let summary = format!(
        "isolated in {ns}: {}; secret {secret} replaced from {source:?}; additional logging on \
         ({bundle}: {} objects)",
        isolated.join(", "),
        objects.len()
    );
    let notified = notify(
        cfg,
        &format!(
            "SECURITY INCIDENT (drhost {NAME}): immediate response done: {summary}. Next: \
             containment (database sessions terminated, {} applied), then investigation.",
            cfg.containment_bundle
        ),
    );
    Ok(StepOutcome::Done(format!("{summary}{notified}")))
}

/// Step 2: keep the deployments isolated, cut database sessions, apply the
/// containment network policy.
fn containment(cfg: &Config) -> Result<StepOutcome, String> {
    let ns = &cfg.namespace;
    let mut notes = Vec::new();
    for (d, _) in &cfg.isolate {
        let status = k8s::get_deployment(ns, d).with_ctx(|| format!("reading {ns}/{d}"))?;
        match isolation_check(status.desired, status.ready) {
            Isolation::Isolated => {
                info!("{ns}/{d} is still isolated (0 replicas)");
                notes.push(format!("{d} isolated"));
            }
            Isolation::Terminating => {
                info!(
                    "{ns}/{d} is scaled to 0; {} pods are still terminating",
                    status.ready
                );
                notes.push(format!("{d} isolated ({} pods terminating)", status.ready));
            }
            Isolation::ScaledBack => {
                warn!(
                    "{ns}/{d} was scaled back to {} replicas ({} ready) since it was isolated: an \
                     autoscaler, a GitOps controller or the intruder; scaling it to 0 again. \
                     Find out who (audit logs) and pause them.",
                    status.desired, status.ready
                );
                k8s::scale(ns, d, 0).with_ctx(|| format!("scaling {ns}/{d} to 0 again"))?;
                notes.push(format!(
                    "{d} had been scaled back to {}, isolated again",
                    status.desired
                ));
            }
        }
    }

    let db = &cfg.database;
    let terminated = postgres::terminate_connections(db)
        .with_ctx(|| format!("terminating the sessions connected to database {db}"))?;
    info!(
        "terminated {terminated} sessions on database {db}: sessions opened with the stolen \
         credentials do not survive the rotation"
    );

    let bundle = &cfg.containment_bundle;
    let objects = k8s::apply(bundle).with_ctx(|| {
        format!("applying containment bundle {bundle:?} (database sessions already terminated)")
    })?;
    info!(
        "applied containment bundle {bundle:?}: {}",
        objects_text(&objects)
    );
    Ok(StepOutcome::Done(format!(
        "{}; terminated {terminated} sessions on {db}; applied {bundle} ({})",
        notes.join(", "),
        objects_text(&objects)
    )))
}

/// Whether an isolated deployment is still isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    Isolated,
    /// Scaled to 0, pods still shutting down.
    Terminating,
    /// Someone scaled it back up.
    ScaledBack,
}

fn isolation_check(desired: u32, ready: u32) -> Isolation {
    match (desired, ready) {
        (0, 0) => Isolation::Isolated,
        (0, _) => Isolation::Terminating,
        _ => Isolation::ScaledBack,
    }
}

const FINDINGS_QUESTION: &str = "Investigation findings, for the record: attack vector? data \
    exposed (which tables, how many records)? credentials or keys affected? vulnerability to \
    patch? (one line; recorded in the run's state and audit log)";

const CUTOFF_QUESTION: &str = "Restore the database from a backup taken before which time? \
    RFC 3339 UTC (e.g. 2026-11-27T02:00:00Z) or relative (e.g. \"6h ago\"); the newest backup \
    before it is proposed. Empty for no restore.";

/// Step 3: the operator's findings and restore decision.
fn investigation(_cfg: &Config) -> Result<StepOutcome, String> {
    let findings = operator::ask(FINDINGS_QUESTION)
        .ctx("asking the operator for the investigation findings")?;
    let findings = findings.trim().to_string();
    if findings.is_empty() {
        warn!("no investigation findings were given; the incident report will have none");
    } else {
        info!("investigation findings: {findings}");
    }
    state::set(FINDINGS, &findings).with_ctx(|| format!("recording {FINDINGS} in state"))?;

    let first =
        operator::ask(CUTOFF_QUESTION).ctx("asking the operator for the restore cut-off")?;
    let now = clock::now_ms().ctx("reading the clock")?;
    let cutoff = match parse_cutoff(&first, now) {
        Ok(c) => c,
        Err(why) => {
            warn!("{why}; asking once more");
            let second = operator::ask(&format!("{why}. {CUTOFF_QUESTION}"))
                .ctx("asking the operator for the restore cut-off again")?;
            let now = clock::now_ms().ctx("reading the clock")?;
            parse_cutoff(&second, now).map_err(|why| {
                format!(
                    "no valid restore cut-off after two answers ({first:?}, then {second:?}): \
                     {why}. Nothing was restored. Run again and answer e.g. \
                     2026-11-27T02:00:00Z or \"6h ago\", or nothing for no restore"
                )
            })?
        }
    };
    let findings_text = if findings.is_empty() {
        "no findings given".to_string()
    } else {
        format!("findings: {findings}")
    };
    match cutoff {
        None => {
            state::set(CUTOFF, NO_RESTORE).with_ctx(|| format!("recording {CUTOFF} in state"))?;
            info!("no restore requested");
            Ok(StepOutcome::Done(format!(
                "{findings_text}; no restore requested"
            )))
        }
        Some(ms) => {
            state::set_u64(CUTOFF, ms).with_ctx(|| format!("recording {CUTOFF} in state"))?;
            let text = fmt_rfc3339(ms);
            info!(
                "restore requested from a backup taken before {text} ({} ago)",
                fmt_duration(now.saturating_sub(ms))
            );
            Ok(StepOutcome::Done(format!(
                "{findings_text}; restore from a backup taken before {text}"
            )))
        }
    }
}

/// Step 4: restore the newest backup taken before the cut-off, if one was
/// asked for.
fn remediation(cfg: &Config) -> Result<StepOutcome, String> {
    let db = &cfg.database;
    let cutoff = state::get(CUTOFF)
        .with_ctx(|| format!("reading {CUTOFF} from state"))?
        .ok_or_else(|| {
            format!("no restore decision recorded in state ({CUTOFF}); the {INVESTIGATION} step must run first")
        })?;
    let reminder = "patching the vulnerability and updating security policies stay with the team";
    if cutoff.trim() == NO_RESTORE {
        info!("no restore was requested; database {db} is left as it is");
        return Ok(StepOutcome::Done(format!(
            "no restore requested: database {db} left as it is; {reminder}"
        )));
    }
    let cutoff_ms: u64 = cutoff.trim().parse().map_err(|_| {
        format!("state {CUTOFF} holds {cutoff:?}, not a time; run the {INVESTIGATION} step again")
    })?;
    let cutoff_text = fmt_rfc3339(cutoff_ms);

    if let Some(key) = state::get(RESTORED_KEY).with_ctx(|| format!("reading {RESTORED_KEY}"))? {
        // Re-run after a resume: a second restore would replace the clean
        // copy and push the forensic copy further away.
        info!("database {db} was already restored from {key} by this run; not restoring again");
        return Ok(StepOutcome::Done(format!(
            "database {db} already restored from {key} by this run"
        )));
    }

    let location = cfg.backup_location();
    let objects = object_store::list(&cfg.bucket, &cfg.prefix)
        .with_ctx(|| format!("listing the backups under {location}"))?;
    let backups: Vec<Backup> = objects
        .iter()
        .map(|o| Backup {
            key: o.key.clone(),
            last_modified_ms: o.last_modified_ms,
            age_ms: o.age_ms,
            size: o.size,
        })
        .collect();
    for b in &backups {
        let side = if b.last_modified_ms < cutoff_ms {
            "before the cut-off"
        } else {
            "AFTER the cut-off (may hold the intruder's changes)"
        };
        info!(
            "backup {} taken at {} ({} old, {}): {side}",
            b.key,
            fmt_rfc3339(b.last_modified_ms),
            fmt_duration(b.age_ms),
            fmt_bytes(b.size)
        );
    }
    let chosen = choose_backup(&backups, cutoff_ms).map_err(|why| {
        format!("{why} (cut-off {cutoff_text}, backups under {location}). Nothing was restored")
    })?;
    let source = format!("s3://{}/{}", cfg.bucket, chosen.key);
    let question = format!(
        "restore database {db} from {source}, taken at {} ({} old, {} before the cut-off {cutoff_text})? \
         Writes since then are lost; the current database is kept for forensics.",
        fmt_rfc3339(chosen.last_modified_ms),
        fmt_duration(chosen.age_ms),
        fmt_duration(cutoff_ms - chosen.last_modified_ms),
    );
    let yes = operator::confirm(&question).ctx("asking the operator to confirm the restore")?;
    if !yes {
        return Ok(StepOutcome::Halt(format!(
            "the operator declined restoring {db} from {source}; nothing was restored. To restore \
             another backup by hand: `drhost exec --config <runbook> postgres restore {db} {} <key>`. \
             {}",
            cfg.bucket,
            isolation_note(cfg)
        )));
    }

    let report = postgres::restore(db, &cfg.bucket, &chosen.key)
        .with_ctx(|| format!("restoring database {db} from {source}"))?;
    state::set(RESTORED_KEY, &chosen.key)
        .with_ctx(|| format!("recording {RESTORED_KEY} in state"))?;
    let kept = match &report.kept_as {
        Some(old) => {
            state::set(KEPT_AS, old).with_ctx(|| format!("recording {KEPT_AS} in state"))?;
            format!("; the compromised database is kept as {old} for forensics")
        }
        // A simulated restore (dry run) reads nothing and keeps nothing.
        None if report.bytes == 0 && report.phases.is_empty() => String::new(),
        None => {
            warn!(
                "the host did not keep the replaced database: evidence in it is gone unless a \
                 snapshot was taken"
            );
            "; the replaced database was NOT kept".to_string()
        }
    };
    let summary = format!(
        "restored {} from {} ({} tables, {} in {}){kept}; {reminder}",
        report.database,
        report.source,
        report.tables,
        fmt_bytes(report.bytes),
        fmt_duration(report.duration_ms)
    );
    info!("{summary}");
    Ok(StepOutcome::Done(summary))
}

/// One backup, as listed.
#[derive(Debug, Clone, PartialEq)]
struct Backup {
    key: String,
    last_modified_ms: u64,
    age_ms: u64,
    size: u64,
}

/// The newest backup taken strictly before `cutoff_ms`.
fn choose_backup(backups: &[Backup], cutoff_ms: u64) -> Result<&Backup, String> {
    if let Some(b) = backups
        .iter()
        .filter(|b| b.last_modified_ms < cutoff_ms)
        .max_by_key(|b| b.last_modified_ms)
    {
        return Ok(b);
    }
    match backups.iter().min_by_key(|b| b.last_modified_ms) {
        None => Err("there are no backups at all".into()),
        Some(oldest) => Err(format!(
            "no backup was taken before the cut-off: the oldest available is {} taken at {} ({} \
             after the cut-off). Restore it by hand only if you are sure it is clean, or find an \
             older backup (offsite copy, snapshots)",
            oldest.key,
            fmt_rfc3339(oldest.last_modified_ms),
            fmt_duration(oldest.last_modified_ms - cutoff_ms)
        )),
    }
}

/// Step 5: database intact, services back, healthy, incident channel told.
fn restore_services(cfg: &Config) -> Result<StepOutcome, String> {
    let ns = &cfg.namespace;
    let db = &cfg.database;

    // Check the database before letting traffic back in.
    let report = postgres::integrity_check_logged(db)?;
    if !report.healthy {
        return Err(format!(
            "database {db} fails its integrity check: {}; the services are NOT brought back. {}",
            postgres::failed_checks(&report.checks).join(", "),
            isolation_note(cfg)
        ));
    }

    let counts = restore_counts(cfg)?;
    for (d, n) in &counts {
        let previous = k8s::scale(ns, d, *n).with_ctx(|| format!("scaling {ns}/{d} to {n}"))?;
        info!("scaled {ns}/{d} from {previous} to {n} replicas");
    }
    let deadline = clock::now_ms()
        .ctx("reading the clock")?
        .saturating_add(cfg.ready_timeout_ms);
    let mut ready = Vec::new();
    for (d, _) in &counts {
        let now = clock::now_ms().ctx("reading the clock")?;
        let timeout = deadline.saturating_sub(now).max(SECOND_MS);
        let status = k8s::wait_ready(ns, d, timeout).with_ctx(|| {
            format!(
                "waiting for {ns}/{d} to become ready (up to {} in total)",
                fmt_duration(cfg.ready_timeout_ms)
            )
        })?;
        info!(
            "{ns}/{d} is ready: {}/{} replicas",
            status.ready, status.desired
        );
        ready.push(format!("{d} {}/{}", status.ready, status.desired));
    }

    let target = &cfg.health_target;
    health::require_healthy(target, cfg.health_timeout_ms)?;

    let restored = match state::get(RESTORED_KEY).ok().flatten() {
        Some(key) => {
            let kept = state::get(KEPT_AS).ok().flatten();
            format!(
                "; database restored from {key}{}",
                kept.map(|k| format!(" (compromised copy kept as {k})"))
                    .unwrap_or_default()
            )
        }
        None => String::new(),
    };
    let summary = format!(
        "services back in {ns}: {}; {target} healthy; {db} passed {} integrity checks{restored}",
        ready.join(", "),
        report.checks.len()
    );
    let findings = state::get(FINDINGS).ok().flatten().unwrap_or_default();
    let notified = notify(
        cfg,
        &format!(
            "RESOLVED (drhost {NAME}): {summary}. Findings: {}. Still in place: secret from {:?}, \
             containment policy {} (remove it once the vulnerability is patched), logging bundle {}.",
            if findings.is_empty() {
                "none recorded"
            } else {
                findings.as_str()
            },
            cfg.secret_source,
            cfg.containment_bundle,
            cfg.logging_bundle
        ),
    );
    Ok(StepOutcome::Done(format!("{summary}{notified}")))
}

/// The replica count each isolated deployment goes back to: the one recorded
/// in state, else the `replicas` parameter.
fn restore_counts(cfg: &Config) -> Result<Vec<(String, u32)>, String> {
    cfg.isolate
        .iter()
        .map(|(d, fallback)| {
            let key = isolated_key(d);
            let stored = state::get_u32(&key).with_ctx(|| format!("reading state {key}"))?;
            Ok((d.clone(), stored.unwrap_or(*fallback)))
        })
        .collect()
}

/// What the operator needs while the deployments are isolated: that they
/// are, and how to bring them back by hand.
fn isolation_note(cfg: &Config) -> String {
    // Reading state can fail too; the configured counts are the fallback.
    let counts = restore_counts(cfg).unwrap_or_else(|_| cfg.isolate.clone());
    isolation_text(&cfg.namespace, &counts)
}

fn isolation_text(ns: &str, counts: &[(String, u32)]) -> String {
    let listed: Vec<String> = counts
        .iter()
        .map(|(d, n)| format!("{d} (previously {n})"))
        .collect();
    let commands: Vec<String> = counts
        .iter()
        .map(|(d, n)| format!("kubectl -n {ns} scale deployment {d} --replicas={n}"))
        .collect();
    format!(
        "Still isolated (0 replicas) in {ns}: {}. To bring them back once it is safe: {}",
        listed.join(", "),
        commands.join("; ")
    )
}

/// Posts to the incident channel, best effort: returns the note for the
/// step's message.
fn notify(cfg: &Config, message: &str) -> String {
    operator::notify_best_effort(&cfg.notify_channel, message)
}

fn objects_text(objects: &[String]) -> String {
    join_or(objects, "no objects")
}

// ---- Time: the operator's cut-off ------------------------------------------

/// Parses the operator's cut-off answer at time `now_ms`: empty (or "none",
/// "no") for no restore, an RFC 3339 time, or "<duration> ago" ("6h ago",
/// "1d 2h ago"). A time in the future is refused (a local time typed as
/// UTC, most likely).
fn parse_cutoff(answer: &str, now_ms: u64) -> Result<Option<u64>, String> {
    let a = answer.trim();
    if a.is_empty() || a.eq_ignore_ascii_case("none") || a.eq_ignore_ascii_case("no") {
        return Ok(None);
    }
    let lower = a.to_ascii_lowercase();
    let ms = if let Some(d) = lower.strip_suffix("ago") {
        let d = d.trim();
        let ms = parse_duration(d).map_err(|e| format!("cut-off {a:?}: {e}"))?;
        if ms == 0 {
            return Err(format!(
                "cut-off {a:?}: that is now, not a time before the breach"
            ));
        }
        now_ms
            .checked_sub(ms)
            .ok_or_else(|| format!("cut-off {a:?} is before 1970"))?
    } else {
        parse_rfc3339(a).map_err(|e| {
            format!("cut-off {a:?}: {e} (expected e.g. 2026-11-27T02:00:00Z or \"6h ago\")")
        })?
    };
    if ms > now_ms {
        return Err(format!(
            "cut-off {a:?} ({}) is in the future (now is {}); give the time in UTC",
            fmt_rfc3339(ms),
            fmt_rfc3339(now_ms)
        ));
    }
    Ok(Some(ms))
}

/// Parses an RFC 3339 timestamp ("2026-11-27T02:00:00Z", fractional seconds
/// and a numeric offset such as "+01:00" allowed; `t`/`z` and a space for
/// the `T` too) into milliseconds since the Unix epoch.
fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let b = s.trim().as_bytes();
    if b.len() < 20 {
        return Err("too short for a date and time".into());
    }
    let num = |range: core::ops::Range<usize>, what: &str| -> Result<u64, String> {
        let part = &b[range];
        if part.iter().all(u8::is_ascii_digit) {
            Ok(part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
        } else {
            Err(format!("bad {what}"))
        }
    };
    let sep = |i: usize, want: &[u8], what: &str| -> Result<(), String> {
        if want.contains(&b[i]) {
            Ok(())
        } else {
            Err(format!("expected {what} at position {}", i + 1))
        }
    };
    let year = num(0..4, "year")?;
    sep(4, b"-", "'-'")?;
    let month = num(5..7, "month")?;
    sep(7, b"-", "'-'")?;
    let day = num(8..10, "day")?;
    sep(10, b"Tt ", "'T'")?;
    let hour = num(11..13, "hour")?;
    sep(13, b":", "':'")?;
    let minute = num(14..16, "minute")?;
    sep(16, b":", "':'")?;
    let second = num(17..19, "second")?;
    let mut i = 19;
    let mut millis = 0u64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err("no digits after '.'".into());
        }
        // First three digits are milliseconds; the rest is below our resolution.
        for k in 0..3 {
            let d = if start + k < i {
                u64::from(b[start + k] - b'0')
            } else {
                0
            };
            millis = millis * 10 + d;
        }
    }
    let offset_min: i64 = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let h = num(i + 1..i + 3, "offset hours")?;
            let m = num(i + 4..i + 6, "offset minutes")?;
            if h > 23 || m > 59 {
                return Err("bad offset".into());
            }
            let total = (h * 60 + m) as i64;
            if *sign == b'+' { total } else { -total }
        }
        _ => return Err("expected 'Z' or an offset like +01:00 after the time".into()),
    };
    if !(1970..=9999).contains(&year) {
        return Err("year out of range (1970-9999)".into());
    }
    if !(1..=12).contains(&month) {
        return Err("month out of range".into());
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err("day out of range for the month".into());
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err("time of day out of range".into());
    }
    // A leap second counts as the last second of its minute.
    let second = second.min(59);
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let secs = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64 - offset_min * 60;
    if secs < 0 {
        return Err("before 1970".into());
    }
    Ok(secs as u64 * 1000 + millis)
}

fn is_leap(year: u64) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Formats milliseconds since the epoch as "2026-11-27T02:00:00Z".
fn fmt_rfc3339(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_matches_the_runbook() {
        let info = SecurityBreach::describe();
        assert_eq!(info.name, "security-breach");
        assert_eq!(info.version, "1.0.0");
        assert_eq!(info.rto_ms, 80 * 60_000);
        let ids: Vec<&str> = info.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                IMMEDIATE_RESPONSE,
                CONTAINMENT,
                INVESTIGATION,
                REMEDIATION,
                RESTORE_SERVICES
            ]
        );
        let budgets: Vec<u64> = info.steps.iter().map(|s| s.budget_ms / MINUTE_MS).collect();
        assert_eq!(budgets, [5, 15, 30, 20, 10]);
        assert_eq!(
            info.steps.iter().map(|s| s.budget_ms).sum::<u64>(),
            info.rto_ms
        );
        let mutating: Vec<bool> = info.steps.iter().map(|s| s.mutates).collect();
        assert_eq!(mutating, [true, true, false, true, true]);
        assert!(info.params.iter().all(|p| p.default_value.is_some()));
        // restore-services' waits fit in its budget.
        let cfg = Config::from_params(&Params::default()).unwrap();
        assert!(cfg.ready_timeout_ms + cfg.health_timeout_ms < 10 * MINUTE_MS);
    }

    #[test]
    fn defaults_parse() {
        let cfg = Config::from_params(&Params::default()).unwrap();
        assert_eq!(cfg.namespace, "resume-screening");
        assert_eq!(cfg.isolate, vec![("backend".to_string(), 3)]);
        assert_eq!(cfg.secret(), "resume-screening/resume-screening-secrets");
        assert_eq!(cfg.secret_source, "vault-rotated");
        assert_eq!(cfg.logging_bundle, "audit-logging");
        assert_eq!(cfg.containment_bundle, "deny-egress");
        assert_eq!(cfg.database, "resume_screening");
        assert_eq!(
            cfg.backup_location(),
            "s3://resume-screening-backups/postgres/"
        );
        assert_eq!(cfg.health_target, "backend-api");
        assert_eq!(cfg.notify_channel, "security-incident");
    }

    #[test]
    fn replicas_forms() {
        let ds = vec!["backend".to_string(), "celery-worker".to_string()];
        assert_eq!(
            parse_counts("2", &ds).unwrap(),
            vec![("backend".to_string(), 2), ("celery-worker".to_string(), 2)]
        );
        assert_eq!(
            parse_counts("celery-worker=1, backend=3", &ds).unwrap(),
            vec![("backend".to_string(), 3), ("celery-worker".to_string(), 1)]
        );
        assert!(
            parse_counts("backend=3", &ds)
                .unwrap_err()
                .contains("no count for celery-worker")
        );
        assert!(
            parse_counts("backend=3,web=1,celery-worker=1", &ds)
                .unwrap_err()
                .contains("names web")
        );
        assert!(
            parse_counts("three", &ds)
                .unwrap_err()
                .contains("`replicas`")
        );
    }

    #[test]
    fn bad_params_are_named() {
        let err = Config::from_params(&Params::from_strs(&[(
            "secret",
            "resume-screening-secrets",
        )]))
        .unwrap_err();
        assert!(
            err.contains("`secret`") && err.contains("namespace/name"),
            "{err}"
        );
        let err = Config::from_params(&Params::from_strs(&[("isolate", " ")])).unwrap_err();
        assert!(err.contains("`isolate`"), "{err}");
        let err = Config::from_params(&Params::from_strs(&[("secret-source", "")])).unwrap_err();
        assert!(err.contains("`secret-source` is empty"), "{err}");
        let err = Config::from_params(&Params::from_strs(&[("ready-timeout", "4")])).unwrap_err();
        assert!(err.starts_with("parameter `ready-timeout`"), "{err}");
        let cfg = Config::from_params(&Params::from_strs(&[("notify-channel", "")])).unwrap();
        assert_eq!(cfg.notify_channel, "");
    }

    #[test]
    fn unknown_step_is_an_error() {
        let err = SecurityBreach::run_step("nope".into(), vec![]).unwrap_err();
        assert!(err.starts_with("nope: unknown step `nope`"), "{err}");
        assert!(err.contains("immediate-response"), "{err}");
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Ok(951_868_800_000));
        assert_eq!(parse_rfc3339("2026-11-27T02:00:00Z"), Ok(1_795_744_800_000));
        assert_eq!(parse_rfc3339("2026-11-27t02:00:00z"), Ok(1_795_744_800_000));
        assert_eq!(parse_rfc3339("2026-11-27 02:00:00Z"), Ok(1_795_744_800_000));
        assert_eq!(
            parse_rfc3339("2026-11-27T03:00:00+01:00"),
            Ok(1_795_744_800_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-26T21:30:00-04:30"),
            Ok(1_795_744_800_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-27T02:00:00.250123Z"),
            Ok(1_795_744_800_250)
        );
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00Z"), Ok(1_709_208_000_000));
        for bad in [
            "",
            "2026-11-27",
            "2026-11-27T02:00:00",
            "2026-11-27T02:00Z",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-31T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T02:60:00Z",
            "2026/11/27T02:00:00Z",
            "2026-11-27T02:00:00.Z",
            "2026-11-27T02:00:00+0100",
            "2026-11-27T02:00:00Zjunk",
            "1969-12-31T23:59:59Z",
            "yesterday at 2am, roughly",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(fmt_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_rfc3339(1_795_744_800_999), "2026-11-27T02:00:00Z");
        for ms in [
            0u64,
            951_782_400_000,
            1_709_208_000_000,
            1_795_744_800_000,
            4_102_444_799_000,
        ] {
            assert_eq!(parse_rfc3339(&fmt_rfc3339(ms)), Ok(ms), "{ms}");
        }
    }

    #[test]
    fn cutoff_answers() {
        let now = 1_795_744_800_000; // 2026-11-27T02:00:00Z
        assert_eq!(parse_cutoff("", now), Ok(None));
        assert_eq!(parse_cutoff("  none ", now), Ok(None));
        assert_eq!(parse_cutoff("6h ago", now), Ok(Some(now - 6 * HOUR_MS)));
        assert_eq!(parse_cutoff("1d 2h AGO", now), Ok(Some(now - 26 * HOUR_MS)));
        assert_eq!(
            parse_cutoff("2026-11-26T20:00:00Z", now),
            Ok(Some(now - 6 * HOUR_MS))
        );
        let err = parse_cutoff("2026-11-27T03:00:00Z", now).unwrap_err();
        assert!(err.contains("in the future"), "{err}");
        let err = parse_cutoff("yesterday", now).unwrap_err();
        assert!(err.contains("expected e.g. 2026-11-27T02:00:00Z"), "{err}");
        assert!(
            parse_cutoff("6 ago", now)
                .unwrap_err()
                .contains("missing unit")
        );
        assert!(parse_cutoff("0s ago", now).is_err());
        assert!(parse_cutoff("ago", now).is_err());
    }

    fn backup(key: &str, hours_before_now: u64, now: u64) -> Backup {
        Backup {
            key: key.into(),
            last_modified_ms: now - hours_before_now * HOUR_MS,
            age_ms: hours_before_now * HOUR_MS,
            size: 700 << 20,
        }
    }

    #[test]
    fn choosing_a_backup() {
        let now = 1_795_744_800_000;
        let backups = vec![
            backup("postgres/a", 30, now),
            backup("postgres/b", 20, now),
            backup("postgres/c", 8, now),
            backup("postgres/d", 2, now),
        ];
        let cutoff = now - 6 * HOUR_MS;
        assert_eq!(choose_backup(&backups, cutoff).unwrap().key, "postgres/c");
        // Strictly before: a backup taken at the cut-off itself is not clean.
        assert_eq!(
            choose_backup(&backups, now - 8 * HOUR_MS).unwrap().key,
            "postgres/b"
        );
        let err = choose_backup(&backups, now - 48 * HOUR_MS).unwrap_err();
        assert!(
            err.contains("oldest available is postgres/a taken at 2026-11-25T20:00:00Z (18h after the cut-off)"),
            "{err}"
        );
        assert_eq!(
            choose_backup(&[], cutoff).unwrap_err(),
            "there are no backups at all"
        );
    }

    #[test]
    fn isolation() {
        assert_eq!(isolation_check(0, 0), Isolation::Isolated);
        assert_eq!(isolation_check(0, 2), Isolation::Terminating);
        assert_eq!(isolation_check(3, 0), Isolation::ScaledBack);
        let note = isolation_text("ns", &[("backend".into(), 3)]);
        assert_eq!(
            note,
            "Still isolated (0 replicas) in ns: backend (previously 3). To bring them back once \
             it is safe: kubectl -n ns scale deployment backend --replicas=3"
        );
    }
}
