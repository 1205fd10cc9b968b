//! [`CapError`] (the contract's `cap-error`) and [`Context`].

use core::fmt;

/// Why a capability call failed (`dr:recovery/types.cap-error`). Every variant
/// carries a human-readable message from the host saying what failed and on
/// what.
///
/// `Display` prints `"<kind>: <message>"`, e.g. `denied: namespace
/// "payments" is not granted`. Use [`Context::ctx`] to say what the step was
/// doing: `k8s::scale(ns, svc, 0).ctx("scaling backend")?` fails the step
/// with `"scaling backend: denied: ..."`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CapError {
    /// The runbook's grants do not allow this call (or the operator refused
    /// it). Never retried.
    Denied(String),
    /// The call did not finish within its time box (per-call timeout or what
    /// is left of the step's budget).
    TimedOut(String),
    /// The named object does not exist.
    NotFound(String),
    /// The object changed under us (e.g. a concurrent update).
    Conflict(String),
    /// The backend is unreachable or overloaded; retrying later may work.
    Unavailable(String),
    /// The arguments are malformed (bad name, size limit exceeded, ...).
    /// Never retried.
    Invalid(String),
    /// The backend tried and failed.
    Failed(String),
}

impl CapError {
    /// The WIT case name: `denied`, `timed-out`, `not-found`, `conflict`,
    /// `unavailable`, `invalid` or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            CapError::Denied(_) => "denied",
            CapError::TimedOut(_) => "timed-out",
            CapError::NotFound(_) => "not-found",
            CapError::Conflict(_) => "conflict",
            CapError::Unavailable(_) => "unavailable",
            CapError::Invalid(_) => "invalid",
            CapError::Failed(_) => "failed",
        }
    }

    /// The host's message.
    pub fn message(&self) -> &str {
        match self {
            CapError::Denied(m)
            | CapError::TimedOut(m)
            | CapError::NotFound(m)
            | CapError::Conflict(m)
            | CapError::Unavailable(m)
            | CapError::Invalid(m)
            | CapError::Failed(m) => m,
        }
    }

    /// Whether trying again later may succeed (`unavailable`, `timed-out`,
    /// `conflict`).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CapError::Unavailable(_) | CapError::TimedOut(_) | CapError::Conflict(_)
        )
    }
}

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = self.message();
        if message.is_empty() {
            f.write_str(self.kind())
        } else {
            write!(f, "{}: {}", self.kind(), message)
        }
    }
}

impl std::error::Error for CapError {}

/// Lets `?` turn a [`CapError`] into the `String` error of `run_step`
/// (`"<kind>: <message>"`). Prefer [`Context::ctx`], which also says what
/// was being done.
impl From<CapError> for String {
    fn from(e: CapError) -> String {
        e.to_string()
    }
}

/// Adds what the step was doing to an error, producing the `Err(String)` a
/// step returns: `"<what>: <error>"`.
///
/// Implemented for every `Result<T, E: Display>`, so it works on capability
/// results (`Result<T, CapError>`) and on already-contextualised
/// `Result<T, String>` alike.
///
/// ```
/// use drhost_sdk::{CapError, Context};
/// let r: Result<u32, CapError> = Err(CapError::Denied("not granted".into()));
/// assert_eq!(r.ctx("scaling ns/backend to 0").unwrap_err(),
///            "scaling ns/backend to 0: denied: not granted");
/// ```
pub trait Context<T> {
    /// Prefixes the error with `what` (anything `Display`).
    fn ctx(self, what: impl fmt::Display) -> Result<T, String>;

    /// Like [`Context::ctx`], building the prefix only on error.
    fn with_ctx<S: fmt::Display>(self, what: impl FnOnce() -> S) -> Result<T, String>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: impl fmt::Display) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }

    fn with_ctx<S: fmt::Display>(self, what: impl FnOnce() -> S) -> Result<T, String> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_kind_and_message() {
        assert_eq!(
            CapError::TimedOut("after 5s".into()).to_string(),
            "timed-out: after 5s"
        );
        assert_eq!(CapError::NotFound(String::new()).to_string(), "not-found");
    }

    #[test]
    fn question_mark_and_ctx() {
        fn f() -> Result<(), String> {
            Err(CapError::Failed("boom".into()))?;
            Ok(())
        }
        assert_eq!(f().unwrap_err(), "failed: boom");
        let r: Result<(), String> = Err("inner".into());
        assert_eq!(
            r.with_ctx(|| format!("step {}", 1)).unwrap_err(),
            "step 1: inner"
        );
    }
}
