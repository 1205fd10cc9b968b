// The `health` capability module: the generated imports and records, plus
// helpers. Its documentation is on `pub mod health;` in lib.rs.

pub use crate::bindings::dr::recovery::health::*;

use crate::{Context, fmt_duration};

/// Waits up to `timeout_ms` for `target` to become healthy
/// ([`wait_healthy`]) and logs it at `info` (`"health target {target} is
/// healthy (status 200, 5 ms)"`). The error, ready for the step, is
/// `"waiting up to {timeout} for health target {target}: {cap_error}"`
/// when the call fails, and `"health target {target} is unhealthy: status
/// {status}: {detail}"` when the target never became healthy.
pub fn require_healthy(target: &str, timeout_ms: u64) -> Result<CheckResult, String> {
    let check = wait_healthy(target, timeout_ms).with_ctx(|| {
        format!(
            "waiting up to {} for health target {target}",
            fmt_duration(timeout_ms)
        )
    })?;
    let check = healthy_or_err(target, check)?;
    crate::info!(
        "health target {target} is healthy (status {}, {} ms)",
        check.status,
        check.latency_ms
    );
    Ok(check)
}

/// `check` if it is healthy, else the error [`require_healthy`] returns.
fn healthy_or_err(target: &str, check: CheckResult) -> Result<CheckResult, String> {
    if check.healthy {
        Ok(check)
    } else {
        Err(format!(
            "health target {target} is unhealthy: status {}: {}",
            check.status, check.detail
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_is_an_error() {
        let mut check = CheckResult {
            target: "backend-api".into(),
            healthy: true,
            status: 200,
            latency_ms: 5,
            detail: "ok".into(),
        };
        assert_eq!(
            healthy_or_err("backend-api", check.clone()),
            Ok(check.clone())
        );
        check.healthy = false;
        check.status = 503;
        check.detail = "database unreachable".into();
        assert_eq!(
            healthy_or_err("backend-api", check).unwrap_err(),
            "health target backend-api is unhealthy: status 503: database unreachable"
        );
    }
}
