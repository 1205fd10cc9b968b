//! Mock health targets: each answers a scripted sequence of HTTP statuses
//! (the last one repeats), e.g. `[503, 503, 200]`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::HealthBackend;
use crate::bindings::CapError;
use crate::bindings::health::CheckResult;
use crate::fixture::{MockLog, lock, parse_opt_duration};
use crate::mock_faults::Faults;

/// `[health]` in a fixture.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFixture {
    /// Pause between checks in wait-healthy (default 10ms).
    pub interval: Option<String>,
    /// Simulated targets.
    #[serde(default)]
    pub targets: Vec<TargetFixture>,
}

/// One `[[health.targets]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFixture {
    /// Target name, as granted in the runbook.
    pub name: String,
    /// Statuses answered in order; the last repeats. 0 = no response.
    pub statuses: Vec<u16>,
    /// Status that counts as healthy (default 200).
    pub expect_status: Option<u16>,
    /// Simulated latency of each answer in ms (default 5).
    pub latency_ms: Option<u64>,
}

struct Target {
    statuses: Vec<u16>,
    next: usize,
    expect: u16,
    latency_ms: u64,
}

/// The simulated endpoints.
pub struct MockHealth {
    targets: Mutex<BTreeMap<String, Target>>,
    interval: Duration,
    faults: Faults,
    log: MockLog,
}

impl MockHealth {
    /// Builds the simulation from its fixture section.
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn new(f: HealthFixture, faults: Faults, log: MockLog) -> Result<MockHealth, String> {
        let interval = match &f.interval {
            Some(_) => parse_opt_duration(&f.interval, "health.interval")?,
            None => Duration::from_millis(10),
        };
        let mut targets = BTreeMap::new();
        for t in f.targets {
            if t.statuses.is_empty() {
                return Err(format!(
                    "health.targets {:?}: statuses must not be empty",
                    t.name
                ));
            }
            targets.insert(
                t.name,
                Target {
                    statuses: t.statuses,
                    next: 0,
                    expect: t.expect_status.unwrap_or(200),
                    latency_ms: t.latency_ms.unwrap_or(5),
                },
            );
        }
        Ok(MockHealth {
            targets: Mutex::new(targets),
            interval,
            faults,
            log,
        })
    }

    /// One answer; also says whether any later answer could differ.
    fn answer(&self, target: &str) -> Result<(CheckResult, bool), CapError> {
        let mut map = lock(&self.targets);
        let t = map.get_mut(target).ok_or_else(|| {
            CapError::NotFound(format!("health target {target:?} is not defined"))
        })?;
        let i = t.next.min(t.statuses.len() - 1);
        t.next += 1;
        let status = t.statuses[i];
        let healthy = status == t.expect;
        let more = i + 1 < t.statuses.len();
        Ok((
            CheckResult {
                target: target.to_owned(),
                healthy,
                status,
                latency_ms: t.latency_ms,
                detail: if healthy {
                    "ok".into()
                } else if status == 0 {
                    "no response".into()
                } else {
                    format!("status {status}, expected {}", t.expect)
                },
            },
            more,
        ))
    }
}

#[async_trait]
impl HealthBackend for MockHealth {
    async fn check(&self, target: &str) -> Result<CheckResult, CapError> {
        self.log.record(format!("health.check {target}"));
        self.faults.inject("health.check").await?;
        let (r, _) = self.answer(target)?;
        crate::sim::sleep(Duration::from_millis(r.latency_ms)).await;
        Ok(r)
    }

    async fn wait_healthy(&self, target: &str, timeout: Duration) -> Result<CheckResult, CapError> {
        self.log.record(format!("health.wait-healthy {target}"));
        self.faults.inject("health.wait-healthy").await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (r, more) = self.answer(target)?;
            crate::sim::sleep(Duration::from_millis(r.latency_ms)).await;
            if r.healthy {
                return Ok(r);
            }
            if !more {
                // The script ends unhealthy: it will never recover, so the
                // simulation does not make the caller sit out the timeout.
                return Err(CapError::TimedOut(format!(
                    "{target} never became healthy (simulated; would have waited {}): {}",
                    crate::runbook::fmt_duration(timeout),
                    r.detail
                )));
            }
            if tokio::time::Instant::now() + self.interval > deadline {
                return Err(CapError::TimedOut(format!(
                    "{target} not healthy after {}: {}",
                    crate::runbook::fmt_duration(timeout),
                    r.detail
                )));
            }
            crate::sim::sleep(self.interval).await;
        }
    }
}
