// The `postgres` capability module: the generated imports and records, plus
// helpers. Its documentation is on `pub mod postgres;` in lib.rs.

pub use crate::bindings::dr::recovery::postgres::*;

use crate::log::{self, Level};
use crate::{CapError, Context, fmt_bytes, fmt_duration};

/// Runs [`integrity_check`] on `database` and logs every check (see
/// [`log_checks`]). The error, ready for the step, is `"integrity check
/// of database {database}: {cap_error}"`; whether the database is healthy
/// is left to the caller (`report.healthy`, [`failed_checks`]).
pub fn integrity_check_logged(database: &str) -> Result<IntegrityReport, String> {
    logged_report(database, integrity_check(database))
}

/// [`integrity_check_logged`] once the call has returned.
fn logged_report(
    database: &str,
    result: Result<IntegrityReport, CapError>,
) -> Result<IntegrityReport, String> {
    let report = result.with_ctx(|| format!("integrity check of database {database}"))?;
    log_checks(&report.checks);
    Ok(report)
}

/// The log line for one integrity check: at `info`, `"integrity check
/// {name}: ok: {detail}"`; at `warn`, `"integrity check {name}: FAILED:
/// {detail}"`.
pub fn check_line(check: &Check) -> (Level, String) {
    if check.ok {
        (
            Level::Info,
            format!("integrity check {}: ok: {}", check.name, check.detail),
        )
    } else {
        (
            Level::Warn,
            format!("integrity check {}: FAILED: {}", check.name, check.detail),
        )
    }
}

/// Logs every check of an integrity report, one line each (see
/// [`check_line`]).
pub fn log_checks(checks: &[Check]) {
    for check in checks {
        let (level, line) = check_line(check);
        log::at(level, &line);
    }
}

/// The failed checks, each as `"{name} ({detail})"`, in order. Join them
/// with [`join_or`](crate::join_or) to say something when none is named.
pub fn failed_checks(checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{} ({})", c.name, c.detail))
        .collect()
}

/// Every check as `"{name}: {detail}"`, joined with `"; "`; `"no checks
/// reported"` when there are none. For a question or message that shows
/// what the integrity check found.
pub fn summarize_checks(checks: &[Check]) -> String {
    if checks.is_empty() {
        return "no checks reported".into();
    }
    checks
        .iter()
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One line for a finished restore: `"restored {database} from {source}:
/// {tables} tables, {size} read in {duration}"`, plus `"; the previous
/// database is kept as {kept_as}"` when the host kept it.
pub fn restore_summary(report: &RestoreReport) -> String {
    let kept = match &report.kept_as {
        Some(old) => format!("; the previous database is kept as {old}"),
        None => String::new(),
    };
    format!(
        "restored {} from {}: {} tables, {} read in {}{kept}",
        report.database,
        report.source,
        report.tables,
        fmt_bytes(report.bytes),
        fmt_duration(report.duration_ms)
    )
}

/// Whether restoring `database` from backup `source`, `age_ms` old, may
/// go on when the RPO is `rpo_ms`. Within the RPO: yes, logged at `info`
/// ("backup <source> is 5m old, within the RPO of 15m"). Beyond it: the
/// operator is asked [`rpo_question`] (`operator::confirm`; the question
/// is also logged as a warning) and the answer returned, an acceptance
/// logged as a warning (`"operator accepted losing up to 3h12m of writes
/// to {database}"`). `Ok(false)` means the operator declined: end the run
/// with `StepOutcome::Halt`, saying where things stand. The error, when
/// the operator cannot be asked, is `"asking the operator to accept the
/// data loss: {cap_error}"`.
pub fn accept_data_loss(
    database: &str,
    source: &str,
    age_ms: u64,
    rpo_ms: u64,
) -> Result<bool, String> {
    accept_data_loss_with(
        database,
        source,
        age_ms,
        rpo_ms,
        log::at,
        crate::operator::confirm,
    )
}

/// [`accept_data_loss`] with the logging and the operator passed in.
fn accept_data_loss_with(
    database: &str,
    source: &str,
    age_ms: u64,
    rpo_ms: u64,
    mut log: impl FnMut(Level, &str),
    confirm: impl FnOnce(&str) -> Result<bool, CapError>,
) -> Result<bool, String> {
    if age_ms <= rpo_ms {
        log(
            Level::Info,
            &format!(
                "backup {source} is {} old, within the RPO of {}",
                fmt_duration(age_ms),
                fmt_duration(rpo_ms)
            ),
        );
        return Ok(true);
    }
    let question = rpo_question(source, age_ms, rpo_ms);
    log(Level::Warn, &question);
    let yes = confirm(&question).ctx("asking the operator to accept the data loss")?;
    if yes {
        log(
            Level::Warn,
            &format!(
                "operator accepted losing up to {} of writes to {database}",
                fmt_duration(age_ms)
            ),
        );
    }
    Ok(yes)
}

/// The question for the operator (`operator::confirm`) before restoring
/// backup `source`, `age_ms` old, when the RPO is `rpo_ms`: how much
/// writing may be lost, and how far beyond the RPO that is.
///
/// ```
/// use drhost_sdk::{HOUR_MS, MINUTE_MS, postgres};
/// assert_eq!(
///     postgres::rpo_question("s3://b/x.dump.gz", 3 * HOUR_MS, 15 * MINUTE_MS),
///     "backup s3://b/x.dump.gz is 3h old; RPO is 15m: up to 3h of writes will be lost \
///      (2h45m beyond the RPO). Restore it?"
/// );
/// ```
pub fn rpo_question(source: &str, age_ms: u64, rpo_ms: u64) -> String {
    format!(
        "backup {source} is {} old; RPO is {}: up to {} of writes will be lost ({} beyond the RPO). Restore it?",
        fmt_duration(age_ms),
        fmt_duration(rpo_ms),
        fmt_duration(age_ms),
        fmt_duration(age_ms.saturating_sub(rpo_ms))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HOUR_MS, MINUTE_MS};

    fn check(name: &str, ok: bool, detail: &str) -> Check {
        Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        }
    }

    #[test]
    fn checks() {
        let checks = [
            check("connect", true, "connected in 3 ms"),
            check("pg_amcheck", false, "index candidates_pkey is corrupt"),
            check("row counts", false, "candidates: 0 rows"),
        ];
        assert_eq!(
            check_line(&checks[0]),
            (
                Level::Info,
                "integrity check connect: ok: connected in 3 ms".to_string()
            )
        );
        assert_eq!(
            check_line(&checks[1]),
            (
                Level::Warn,
                "integrity check pg_amcheck: FAILED: index candidates_pkey is corrupt".to_string()
            )
        );
        assert_eq!(
            failed_checks(&checks),
            [
                "pg_amcheck (index candidates_pkey is corrupt)",
                "row counts (candidates: 0 rows)"
            ]
        );
        assert!(failed_checks(&checks[..1]).is_empty());
        assert_eq!(
            summarize_checks(&checks[..2]),
            "connect: connected in 3 ms; pg_amcheck: index candidates_pkey is corrupt"
        );
        assert_eq!(summarize_checks(&[]), "no checks reported");
        // No checks, no log calls (natively a log call would panic).
        log_checks(&[]);
    }

    #[test]
    fn logged_integrity_check() {
        let report = IntegrityReport {
            database: "db".into(),
            healthy: true,
            checks: Vec::new(),
        };
        assert_eq!(logged_report("db", Ok(report.clone())), Ok(report));
        assert_eq!(
            logged_report(
                "db",
                Err(CapError::Unavailable("connection refused".into()))
            ),
            Err("integrity check of database db: unavailable: connection refused".to_string())
        );
    }

    #[test]
    fn data_loss() {
        let accept = |age_ms, answer: Result<bool, CapError>| {
            let mut lines = Vec::new();
            let mut asked = None;
            let result = accept_data_loss_with(
                "db",
                "s3://b/k",
                age_ms,
                15 * MINUTE_MS,
                |level, line: &str| lines.push((level, line.to_string())),
                |q: &str| {
                    asked = Some(q.to_string());
                    answer
                },
            );
            (result, lines, asked)
        };

        let (result, lines, asked) = accept(5 * MINUTE_MS, Ok(false));
        assert_eq!(result, Ok(true));
        assert_eq!(
            lines,
            [(
                Level::Info,
                "backup s3://b/k is 5m old, within the RPO of 15m".to_string()
            )]
        );
        assert_eq!(asked, None);
        // At the RPO exactly: still within it.
        assert_eq!(accept(15 * MINUTE_MS, Ok(false)).0, Ok(true));

        let question = rpo_question("s3://b/k", HOUR_MS, 15 * MINUTE_MS);
        let (result, lines, asked) = accept(HOUR_MS, Ok(true));
        assert_eq!(result, Ok(true));
        assert_eq!(asked.as_deref(), Some(question.as_str()));
        assert_eq!(
            lines,
            [
                (Level::Warn, question.clone()),
                (
                    Level::Warn,
                    "operator accepted losing up to 1h of writes to db".to_string()
                )
            ]
        );

        let (result, lines, _) = accept(HOUR_MS, Ok(false));
        assert_eq!(result, Ok(false));
        assert_eq!(lines, [(Level::Warn, question.clone())]);

        let (result, _, _) = accept(HOUR_MS, Err(CapError::TimedOut("no answer".into())));
        assert_eq!(
            result,
            Err("asking the operator to accept the data loss: timed-out: no answer".to_string())
        );
    }

    #[test]
    fn restore_and_rpo() {
        let mut report = RestoreReport {
            database: "resume_screening".into(),
            source: "s3://b/postgres/x.dump.gz".into(),
            bytes: 905 * 1024 * 1024,
            tables: 12,
            kept_as: Some("resume_screening_old".into()),
            duration_ms: 4 * MINUTE_MS + 5_000,
            phases: Vec::new(),
        };
        assert_eq!(
            restore_summary(&report),
            "restored resume_screening from s3://b/postgres/x.dump.gz: 12 tables, 905.0 MiB \
             read in 4m05s; the previous database is kept as resume_screening_old"
        );
        report.kept_as = None;
        assert!(restore_summary(&report).ends_with("read in 4m05s"));
        assert_eq!(
            rpo_question(
                "s3://b/postgres/x.dump.gz",
                3 * HOUR_MS + 12 * MINUTE_MS,
                15 * MINUTE_MS
            ),
            "backup s3://b/postgres/x.dump.gz is 3h12m old; RPO is 15m: up to 3h12m of writes \
             will be lost (2h57m beyond the RPO). Restore it?"
        );
        // Never called within the RPO, but must not underflow if it is.
        assert!(rpo_question("k", MINUTE_MS, HOUR_MS).contains("(0ms beyond the RPO)"));
    }
}
