//! drhost scenario plugin: recovery from PostgreSQL database corruption
//! (Scenario 2 of the DR runbook).
//!
//! Steps, in order (budgets from the runbook, RTO 42 minutes):
//!
//! | id                   | title                  | budget | mutates |
//! |----------------------|------------------------|--------|---------|
//! | `stop-services`      | Stop affected services | 2 min  | yes     |
//! | `identify-corruption`| Identify corruption    | 10 min | no      |
//! | `restore`            | Restore from backup    | 15 min | yes     |
//! | `restart-services`   | Restart services       | 5 min  | yes     |
//! | `verify`             | Verify data integrity  | 10 min | no      |
//!
//! State keys (kept across steps and resumed runs): `replicas/<service>`
//! (replica count to restore), `backup/key` and `backup/age-ms` (the backup
//! chosen by `identify-corruption`).
//!
//! Capabilities used: k8s (scale, wait-ready), postgres (integrity-check,
//! restore), object-store (newest), health (wait-healthy), operator
//! (confirm, notify), state, log.

use drhost_sdk::prelude::*;
use drhost_sdk::{health, k8s, object_store, operator, postgres, state};

/// Plugin name, as `describe` reports it and the runbook config pins it.
const NAME: &str = "database-corruption";

/// Recovery time objective: 42 minutes (the sum of the step budgets).
const RTO_MS: u64 = 42 * MINUTE_MS;

const STOP_SERVICES: &str = "stop-services";
const IDENTIFY_CORRUPTION: &str = "identify-corruption";
const RESTORE: &str = "restore";
const RESTART_SERVICES: &str = "restart-services";
const VERIFY: &str = "verify";

/// Steps: id, title, budget, mutates.
const STEPS: &[StepRow] = &[
    (
        STOP_SERVICES,
        "Stop affected services",
        2 * MINUTE_MS,
        StepKind::Mutates,
    ),
    (
        IDENTIFY_CORRUPTION,
        "Identify corruption",
        10 * MINUTE_MS,
        StepKind::Reads,
    ),
    (
        RESTORE,
        "Restore from backup",
        15 * MINUTE_MS,
        StepKind::Mutates,
    ),
    (
        RESTART_SERVICES,
        "Restart services",
        5 * MINUTE_MS,
        StepKind::MutatesIdempotently,
    ),
    (
        VERIFY,
        "Verify data integrity",
        10 * MINUTE_MS,
        StepKind::Reads,
    ),
];

/// Parameters: name, default, description. The defaults are both reported by
/// `describe` and used when a parameter is absent from `run_step`.
const PARAMS: &[ParamRow] = &[
    (
        "namespace",
        "resume-screening",
        "Kubernetes namespace of the services that use the database.",
    ),
    (
        "services",
        "backend=3,celery-worker=2",
        "Deployments to stop while the database is restored, as name=replicas; \
         the count is what they are scaled back to when the run has not recorded one.",
    ),
    (
        "database",
        "resume_screening",
        "PostgreSQL database to check and restore.",
    ),
    (
        "backup-bucket",
        "resume-screening-backups",
        "Object-store bucket holding the backups.",
    ),
    (
        "backup-prefix",
        "postgres/",
        "Key prefix of the backups in the bucket; the newest object under it is restored.",
    ),
    (
        "rpo",
        "15m",
        "Recovery point objective: an older backup needs the operator's approval of the data loss.",
    ),
    (
        "health-target",
        "backend-api",
        "Health target (from the runbook config) checked after the restore.",
    ),
    (
        "ready-timeout",
        "4m",
        "How long to wait for each deployment to become ready, and for the health target to become healthy.",
    ),
    (
        "notify-channel",
        "",
        "Notification channel told when the database is back; empty for none.",
    ),
];

fn default_of(name: &str) -> &'static str {
    param_default(PARAMS, name)
}

/// The parameters, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
struct Config {
    namespace: String,
    /// Service name and the replica count to restore when state has none.
    services: Vec<(String, u32)>,
    database: String,
    bucket: String,
    prefix: String,
    rpo_ms: u64,
    health_target: String,
    ready_timeout_ms: u64,
    notify_channel: String,
}

impl Config {
    fn from_params(p: &Params) -> Result<Config, String> {
        let text = |name: &str| p.non_empty_or(name, default_of(name)).map(String::from);
        let services: Vec<(String, u32)> = p.pairs("services", default_of("services"))?;
        if services.is_empty() {
            return Err("parameter `services` lists no services (expected e.g. \"backend=3,celery-worker=2\")".into());
        }
        Ok(Config {
            namespace: text("namespace")?,
            services,
            database: text("database")?,
            bucket: text("backup-bucket")?,
            // An empty prefix is legitimate (backups at the bucket's root).
            prefix: p
                .get_or("backup-prefix", default_of("backup-prefix"))
                .trim()
                .to_string(),
            rpo_ms: p.duration_ms("rpo", default_of("rpo"))?,
            health_target: text("health-target")?,
            ready_timeout_ms: p.duration_ms("ready-timeout", default_of("ready-timeout"))?,
            notify_channel: p.get_or("notify-channel", "").trim().to_string(),
        })
    }

    fn backup_location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

fn replicas_key(service: &str) -> String {
    format!("replicas/{service}")
}

const BACKUP_KEY: &str = "backup/key";
const BACKUP_AGE: &str = "backup/age-ms";

struct DatabaseCorruption;

impl Guest for DatabaseCorruption {
    fn describe() -> ScenarioInfo {
        ScenarioInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            summary:
                "Recovers from PostgreSQL database corruption (runbook Scenario 2): stops the \
                      services that write to the database, confirms the corruption and picks the \
                      newest backup (asking the operator before accepting data loss beyond the \
                      RPO), restores it into a new database that is verified and swapped in (the \
                      corrupt one is kept for forensics), restarts the services and verifies data \
                      integrity and health."
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
                STOP_SERVICES => stop_services(&cfg),
                IDENTIFY_CORRUPTION => identify_corruption(&cfg),
                RESTORE => restore(&cfg),
                RESTART_SERVICES => restart_services(&cfg),
                VERIFY => verify(&cfg),
                other => Err(unknown_step(other, &step_ids(STEPS))),
            }
        })
    }
}

drhost_sdk::export_scenario!(DatabaseCorruption);

/// Step 1: scale every service to 0, remembering the count to restore.
fn stop_services(cfg: &Config) -> Result<StepOutcome, String> {
    let ns = &cfg.namespace;
    let mut done = Vec::new();
    for (svc, configured) in &cfg.services {
        let key = replicas_key(svc);
        let stored = state::get_u32(&key).with_ctx(|| format!("reading state {key}"))?;
        let previous = k8s::scale(ns, svc, 0).with_ctx(|| format!("scaling {ns}/{svc} to 0"))?;
        let restore_to = match stored {
            Some(count) => {
                // Re-run (e.g. after a resume): the first attempt recorded the
                // count from before the incident; the deployment is probably
                // at 0 already because of us.
                info!(
                    "scaled {ns}/{svc} to 0 (it had {previous}); keeping the count recorded by an earlier attempt: {count}"
                );
                count
            }
            None => {
                let count = if previous == 0 {
                    warn!(
                        "{ns}/{svc} was already at 0 replicas; it will be restarted with the configured count {configured}"
                    );
                    *configured
                } else {
                    info!("scaled {ns}/{svc} from {previous} to 0 replicas");
                    previous
                };
                state::set_u32(&key, count)
                    .with_ctx(|| format!("recording {key} = {count} in state"))?;
                count
            }
        };
        done.push(format!("{svc} (will restore {restore_to})"));
    }
    Ok(StepOutcome::Done(format!(
        "scaled to 0 in {ns}: {}",
        done.join(", ")
    )))
}

/// Step 2: check the database, find the newest backup, and make sure the
/// operator wants a restore when the database looks healthy.
fn identify_corruption(cfg: &Config) -> Result<StepOutcome, String> {
    let db = &cfg.database;
    let report = postgres::integrity_check_logged(db)?;

    let location = cfg.backup_location();
    let backup = object_store::newest(&cfg.bucket, &cfg.prefix)
        .with_ctx(|| format!("finding the newest backup under {location}"))?
        .ok_or_else(|| format!("no backup under {location}"))?;
    info!(
        "newest backup: s3://{}/{} ({}, {} old)",
        backup.bucket,
        backup.key,
        fmt_bytes(backup.size),
        fmt_duration(backup.age_ms)
    );
    state::set(BACKUP_KEY, &backup.key).with_ctx(|| format!("recording {BACKUP_KEY} in state"))?;
    state::set_u64(BACKUP_AGE, backup.age_ms)
        .with_ctx(|| format!("recording {BACKUP_AGE} in state"))?;

    let backup_text = format!(
        "newest backup s3://{}/{} is {} old",
        cfg.bucket,
        backup.key,
        fmt_duration(backup.age_ms)
    );
    if report.healthy {
        let question = format!(
            "integrity check found no corruption in {db} ({}); restore from backup anyway?",
            postgres::summarize_checks(&report.checks)
        );
        let yes =
            operator::confirm(&question).ctx("asking the operator whether to restore anyway")?;
        if !yes {
            return Ok(StepOutcome::Halt(format!(
                "the integrity check found no corruption in {db} and the operator declined the restore. {}",
                stopped_services_note(cfg)
            )));
        }
        warn!("operator chose to restore {db} although the integrity check found no corruption");
        Ok(StepOutcome::Done(format!(
            "no corruption found in {db}, restore requested by the operator; {backup_text}"
        )))
    } else {
        Ok(StepOutcome::Done(format!(
            "{db} is corrupt: failed checks: {}; {backup_text}",
            join_or(&postgres::failed_checks(&report.checks), "none reported")
        )))
    }
}

/// Step 3: restore the chosen backup, after the operator accepted any data
/// loss beyond the RPO.
fn restore(cfg: &Config) -> Result<StepOutcome, String> {
    let db = &cfg.database;
    let missing = || {
        format!(
            "no backup recorded in state ({BACKUP_KEY}); the {IDENTIFY_CORRUPTION} step must run first"
        )
    };
    let key = state::get(BACKUP_KEY)
        .with_ctx(|| format!("reading {BACKUP_KEY} from state"))?
        .ok_or_else(missing)?;
    let age_ms = state::get_u64(BACKUP_AGE)
        .with_ctx(|| format!("reading {BACKUP_AGE} from state"))?
        .ok_or_else(missing)?;
    let source = format!("s3://{}/{key}", cfg.bucket);

    if !postgres::accept_data_loss(db, &source, age_ms, cfg.rpo_ms)? {
        return Ok(StepOutcome::Halt(format!(
            "the operator declined to restore {db} from {source} ({} old; RPO is {}). {}",
            fmt_duration(age_ms),
            fmt_duration(cfg.rpo_ms),
            stopped_services_note(cfg)
        )));
    }

    let report = postgres::restore(db, &cfg.bucket, &key)
        .with_ctx(|| format!("restoring database {db} from {source}"))?;
    let summary = postgres::restore_summary(&report);
    info!("{summary}");
    Ok(StepOutcome::Done(summary))
}

/// Step 4: scale the services back and wait until they are ready.
fn restart_services(cfg: &Config) -> Result<StepOutcome, String> {
    let ns = &cfg.namespace;
    let targets = restore_counts(cfg)?;
    for (svc, count) in &targets {
        let previous =
            k8s::scale(ns, svc, *count).with_ctx(|| format!("scaling {ns}/{svc} to {count}"))?;
        info!("scaled {ns}/{svc} from {previous} to {count} replicas");
    }
    let mut ready = Vec::new();
    for (svc, _) in &targets {
        let status = k8s::wait_ready(ns, svc, cfg.ready_timeout_ms).with_ctx(|| {
            format!(
                "waiting up to {} for {ns}/{svc} to become ready",
                fmt_duration(cfg.ready_timeout_ms)
            )
        })?;
        info!(
            "{ns}/{svc} is ready: {}/{} replicas ready, {} available",
            status.ready, status.desired, status.available
        );
        ready.push(format!("{svc} {}/{}", status.ready, status.desired));
    }
    Ok(StepOutcome::Done(format!(
        "ready in {ns}: {}",
        ready.join(", ")
    )))
}

/// Step 5: the database must pass its integrity check and the health target
/// must answer healthy; then tell the notification channel, if any.
fn verify(cfg: &Config) -> Result<StepOutcome, String> {
    let db = &cfg.database;
    let report = postgres::integrity_check_logged(db)?;
    if !report.healthy {
        return Err(format!(
            "database {db} is not healthy after the restore: failed checks: {}",
            join_or(&postgres::failed_checks(&report.checks), "none named")
        ));
    }

    let target = &cfg.health_target;
    health::require_healthy(target, cfg.ready_timeout_ms)?;

    let mut summary = format!(
        "{db} passed {} integrity checks; {target} is healthy",
        report.checks.len()
    );
    if !cfg.notify_channel.is_empty() {
        let key = state::get(BACKUP_KEY).ok().flatten();
        let message = match key {
            Some(key) => format!("database {db} restored from {key}; services back"),
            None => format!("database {db} restored from backup; services back"),
        };
        // The recovery itself succeeded: a failed notification is reported,
        // not turned into a failed run.
        summary.push_str(&operator::notify_best_effort(&cfg.notify_channel, &message));
    }
    Ok(StepOutcome::Done(summary))
}

/// The replica count each service goes back to: the one recorded in state,
/// else the configured one.
fn restore_counts(cfg: &Config) -> Result<Vec<(String, u32)>, String> {
    cfg.services
        .iter()
        .map(|(svc, configured)| {
            let key = replicas_key(svc);
            let stored = state::get_u32(&key).with_ctx(|| format!("reading state {key}"))?;
            Ok((svc.clone(), stored.unwrap_or(*configured)))
        })
        .collect()
}

/// What an operator needs after a halt: the services are still at 0, and how
/// to bring them back.
fn stopped_services_note(cfg: &Config) -> String {
    // Reading state can fail too; the configured counts are the fallback.
    let counts = restore_counts(cfg).unwrap_or_else(|_| cfg.services.clone());
    services_note(&cfg.namespace, &counts)
}

fn services_note(ns: &str, counts: &[(String, u32)]) -> String {
    let listed: Vec<String> = counts
        .iter()
        .map(|(svc, n)| format!("{svc} (previously {n})"))
        .collect();
    let commands: Vec<String> = counts
        .iter()
        .map(|(svc, n)| format!("kubectl -n {ns} scale deployment {svc} --replicas={n}"))
        .collect();
    format!(
        "The services are still scaled to 0 in {ns}: {}. To bring them back: {}",
        listed.join(", "),
        commands.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_matches_the_runbook() {
        let info = DatabaseCorruption::describe();
        assert_eq!(info.name, "database-corruption");
        assert_eq!(info.version, "1.0.0");
        assert_eq!(info.rto_ms, 42 * 60_000);
        let ids: Vec<&str> = info.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                STOP_SERVICES,
                IDENTIFY_CORRUPTION,
                RESTORE,
                RESTART_SERVICES,
                VERIFY
            ]
        );
        assert_eq!(
            info.steps.iter().map(|s| s.budget_ms).sum::<u64>(),
            info.rto_ms
        );
        let mutating: Vec<bool> = info.steps.iter().map(|s| s.mutates).collect();
        assert_eq!(mutating, [true, false, true, true, false]);
        assert_eq!(info.params.len(), 9);
        assert!(info.params.iter().all(|p| p.default_value.is_some()));
    }

    #[test]
    fn defaults_parse() {
        let cfg = Config::from_params(&Params::default()).unwrap();
        assert_eq!(cfg.namespace, "resume-screening");
        assert_eq!(
            cfg.services,
            vec![("backend".to_string(), 3), ("celery-worker".to_string(), 2)]
        );
        assert_eq!(cfg.database, "resume_screening");
        assert_eq!(
            cfg.backup_location(),
            "s3://resume-screening-backups/postgres/"
        );
        assert_eq!(cfg.rpo_ms, 15 * 60_000);
        assert_eq!(cfg.health_target, "backend-api");
        assert_eq!(cfg.ready_timeout_ms, 4 * 60_000);
        assert_eq!(cfg.notify_channel, "");
    }

    #[test]
    fn bad_params_are_named() {
        let err = Config::from_params(&Params::from_strs(&[("rpo", "soon")])).unwrap_err();
        assert!(err.starts_with("parameter `rpo`"), "{err}");
        let err = Config::from_params(&Params::from_strs(&[("services", "backend")])).unwrap_err();
        assert!(err.contains("`services`"), "{err}");
        let err = Config::from_params(&Params::from_strs(&[("services", " , ")])).unwrap_err();
        assert!(err.contains("lists no services"), "{err}");
        let err = Config::from_params(&Params::from_strs(&[("database", "")])).unwrap_err();
        assert!(err.contains("`database` is empty"), "{err}");
    }

    #[test]
    fn unknown_step_is_an_error() {
        let err = DatabaseCorruption::run_step("nope".into(), vec![]).unwrap_err();
        assert!(err.starts_with("nope: unknown step `nope`"), "{err}");
        assert!(err.contains("stop-services"), "{err}");
    }

    #[test]
    fn messages() {
        let note = services_note("ns", &[("backend".into(), 3), ("celery-worker".into(), 2)]);
        assert!(note.contains(
            "still scaled to 0 in ns: backend (previously 3), celery-worker (previously 2)"
        ));
        assert!(note.contains("kubectl -n ns scale deployment backend --replicas=3"));
    }
}
