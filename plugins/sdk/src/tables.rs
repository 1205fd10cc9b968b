//! A plugin's parameters and steps as `const` tables: [`param_infos`],
//! [`step_infos`], [`param_default`], [`step_ids`], and [`with_step_id`] for
//! the errors of `run_step`.
//!
//! Declaring the parameters and steps once, as tables, keeps `describe` and
//! `run_step` in agreement: the defaults `describe` reports are the ones
//! `run_step` falls back on, and the step ids an unknown step is told about
//! are the ones `describe` lists.
//!
//! ```
//! use drhost_sdk::prelude::*;
//!
//! const PARAMS: &[ParamRow] = &[("namespace", "default", "Kubernetes namespace.")];
//! const STEPS: &[StepRow] = &[
//!     ("stop", "Stop the backend", 2 * MINUTE_MS, StepKind::Mutates),
//!     ("verify", "Verify", 5 * MINUTE_MS, StepKind::Reads),
//! ];
//!
//! let params = param_infos(PARAMS);
//! assert_eq!(params[0].default_value.as_deref(), Some("default"));
//! assert_eq!(step_infos(STEPS)[1].id, "verify");
//! assert_eq!(param_default(PARAMS, "namespace"), "default");
//! let err = with_step_id("nope", || -> Result<StepOutcome, String> {
//!     Err(unknown_step("nope", &step_ids(STEPS)))
//! });
//! assert_eq!(err.unwrap_err(), "nope: unknown step `nope` (this plugin has: stop, verify)");
//! ```

use crate::bindings::dr::recovery::types::{ParamInfo, StepInfo};
use crate::{StepKind, param, step};

/// One row of a parameter table: `(name, default, description)`.
///
/// The default is both reported by `describe` and used by `run_step` when
/// the parameter is absent (look it up with [`param_default`]); `""` is a
/// legitimate default ("none").
pub type ParamRow = (&'static str, &'static str, &'static str);

/// One row of a step table: `(id, title, budget_ms, kind)`, the
/// arguments of [`step`](crate::step).
pub type StepRow = (&'static str, &'static str, u64, StepKind);

/// The `params` of `ScenarioInfo` from a parameter table: one
/// [`ParamInfo`] per row, in order, each with its default
/// (`Some(default)`, also when the default is `""`).
pub fn param_infos(table: &[ParamRow]) -> Vec<ParamInfo> {
    table
        .iter()
        .map(|(name, default, description)| param(name, description, Some(default)))
        .collect()
}

/// The `steps` of `ScenarioInfo` from a step table: one [`StepInfo`] per
/// row, in order.
pub fn step_infos(table: &[StepRow]) -> Vec<StepInfo> {
    table
        .iter()
        .map(|(id, title, budget, kind)| step(id, title, *budget, *kind))
        .collect()
}

/// The default of parameter `name` in a parameter table; `""` when the table
/// has no such parameter (the first row wins if a name is listed twice).
pub fn param_default(table: &[ParamRow], name: &str) -> &'static str {
    table
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, default, _)| *default)
        .unwrap_or("")
}

/// The ids of a step table, in order: what [`unknown_step`](crate::unknown_step)
/// lists as the steps the plugin has.
pub fn step_ids(table: &[StepRow]) -> Vec<&'static str> {
    table.iter().map(|(id, _, _, _)| *id).collect()
}

/// Runs a step's body and prefixes its error with the step id:
/// `"<id>: <error>"`, so the operator sees which step failed however deep
/// the error came from. The success value is passed through unchanged.
///
/// ```
/// use drhost_sdk::prelude::*;
/// let r: Result<StepOutcome, String> = with_step_id("restore", || Err("no backup".into()));
/// assert_eq!(r.unwrap_err(), "restore: no backup");
/// ```
pub fn with_step_id<T>(id: &str, run: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    run().map_err(|e| format!("{id}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MINUTE_MS, unknown_step};

    const PARAMS: &[ParamRow] = &[
        ("namespace", "resume-screening", "Kubernetes namespace."),
        ("notify-channel", "", "Channel; empty for none."),
        ("namespace", "shadowed", "Listed twice: the first row wins."),
    ];

    const STEPS: &[StepRow] = &[
        (
            "stop",
            "Stop the services",
            2 * MINUTE_MS,
            StepKind::Mutates,
        ),
        ("verify", "Verify", 10 * MINUTE_MS, StepKind::Reads),
    ];

    #[test]
    fn param_table() {
        let infos = param_infos(PARAMS);
        assert_eq!(infos.len(), 3);
        assert_eq!(
            infos[0],
            param(
                "namespace",
                "Kubernetes namespace.",
                Some("resume-screening")
            )
        );
        assert_eq!(infos[1].default_value.as_deref(), Some(""));
        assert_eq!(param_default(PARAMS, "namespace"), "resume-screening");
        assert_eq!(param_default(PARAMS, "notify-channel"), "");
        assert_eq!(param_default(PARAMS, "missing"), "");
        assert!(param_infos(&[]).is_empty());
    }

    #[test]
    fn step_table() {
        let infos = step_infos(STEPS);
        assert_eq!(
            infos,
            vec![
                step(
                    "stop",
                    "Stop the services",
                    2 * MINUTE_MS,
                    StepKind::Mutates
                ),
                step("verify", "Verify", 10 * MINUTE_MS, StepKind::Reads)
            ]
        );
        assert_eq!(step_ids(STEPS), ["stop", "verify"]);
        assert_eq!(
            unknown_step("x", &step_ids(STEPS)),
            "unknown step `x` (this plugin has: stop, verify)"
        );
    }

    #[test]
    fn step_id_prefix() {
        assert_eq!(with_step_id("stop", || Ok::<_, String>(3)), Ok(3));
        assert_eq!(
            with_step_id("stop", || Err::<(), _>(
                "scaling ns/backend to 0: denied".into()
            )),
            Err("stop: scaling ns/backend to 0: denied".to_string())
        );
        // Each call adds its own prefix.
        let nested = with_step_id("outer", || {
            with_step_id("inner", || Err::<(), _>("x".into()))
        });
        assert_eq!(nested.unwrap_err(), "outer: inner: x");
    }
}
