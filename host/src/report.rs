//! The end-of-run report for people: a step timeline against budgets and
//! the RTO, the mutations a dry run would have made, and where the audit log
//! is.

use std::fmt::Write;

use crate::runbook::fmt_duration;
use crate::runner::{RunOutcome, RunReport, StepStatus};

/// Renders a run report as plain text (what `drhost run` and `drhost test`
/// print at the end).
pub fn render(report: &RunReport) -> String {
    let mut s = String::new();
    let p = &report.plugin;
    let _ = writeln!(
        s,
        "\nrun {} — {}@{} (sha256 {}){}",
        report.run_id,
        p.name,
        p.version,
        &p.sha256[..p.sha256.len().min(12)],
        if report.dry_run { " — DRY RUN" } else { "" }
    );
    let _ = writeln!(
        s,
        "  {:<22} {:>9} {:>9}  {:<9} result",
        "step", "elapsed", "budget", "status"
    );
    for st in &report.steps {
        let over = st.elapsed > st.budget;
        let _ = writeln!(
            s,
            "  {:<22} {:>9} {:>9}  {:<9} {}{}",
            st.id,
            fmt_duration(st.elapsed),
            fmt_duration(st.budget),
            st.status.name(),
            first_line(st.status.message()),
            if over { "  [OVER BUDGET]" } else { "" }
        );
    }
    for id in &report.skipped {
        let _ = writeln!(s, "  {id:<22} {:>9} {:>9}  skipped", "-", "-");
    }
    let pct =
        100.0 * report.elapsed.as_secs_f64() / report.rto.as_secs_f64().max(f64::MIN_POSITIVE);
    let _ = writeln!(
        s,
        "  total {} of {} RTO ({pct:.1}%){}",
        fmt_duration(report.elapsed),
        fmt_duration(report.rto),
        if report.elapsed > report.rto {
            " — RTO EXCEEDED"
        } else {
            ""
        }
    );
    let verdict = match &report.outcome {
        RunOutcome::Completed => "completed: every step done".to_owned(),
        RunOutcome::Stopped { step, status } => match status {
            StepStatus::Halted(m) => format!("halted by the plugin in step {step}: {m}"),
            other => format!(
                "STOPPED in step {step} ({}): {}",
                other.name(),
                other.message()
            ),
        },
    };
    let _ = writeln!(s, "  outcome: {verdict}");
    let intended = report.intended_mutations();
    if report.dry_run {
        let _ = writeln!(
            s,
            "  dry run: {} mutation(s) would have been made:",
            intended.len()
        );
        for c in intended {
            let _ = writeln!(
                s,
                "    [{}] {}",
                c.step,
                c.render().trim_end_matches(" => dry-run")
            );
        }
    }
    let denied = report
        .calls
        .iter()
        .filter(|c| c.status == crate::gate::CallStatus::Denied)
        .count();
    if denied > 0 {
        let _ = writeln!(s, "  {denied} call(s) denied by policy (see the audit log)");
    }
    let _ = writeln!(s, "  audit log: {}", report.audit_path.display());
    match &report.audit_mirror {
        Some(Ok(to)) => {
            let _ = writeln!(s, "  audit log copied to {to}");
        }
        Some(Err(e)) => {
            let _ = writeln!(s, "  audit log NOT copied off this machine: {e}");
        }
        None => {}
    }
    let _ = writeln!(
        s,
        "  verify it: drhost audit verify {}",
        report.audit_path.display()
    );
    s
}

fn first_line(s: &str) -> &str {
    let l = s.lines().next().unwrap_or("");
    if l.len() > 100 {
        let mut end = 100;
        while !l.is_char_boundary(end) {
            end -= 1;
        }
        &l[..end]
    } else {
        l
    }
}
