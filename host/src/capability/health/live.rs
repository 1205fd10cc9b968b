//! [`LiveHealth`]: HTTP health checks of named targets.
//!
//! One check is one GET: healthy iff the status is one of the target's
//! expected ones and, if set, the body (first 1 MiB) contains a substring.
//! An unhealthy target is an `Ok` result with `healthy: false` and a detail;
//! only a call that must not be attempted (address policy, see `net_guard.rs`)
//! or cannot be (bad URL, unknown target) is an `Err`.
//!
//! Client choice: every check builds its own `reqwest::Client`, pinned to
//! the addresses that were just resolved and checked. A cache keyed by
//! target would save building a rustls config (well under a millisecond
//! with the bundled webpki roots) and a TCP/TLS handshake per check, but
//! would have to be invalidated whenever DNS answers change; a health check
//! also wants a fresh connection anyway, so a stale pooled one cannot hide a
//! restarted or dead server.
//!
//! Redirects are followed only to the same scheme, host and port (which the
//! pin covers), at most 5 hops; any other redirect makes the check unhealthy
//! without a request to the new host. Environment proxies are ignored (a
//! proxy would defeat the address check).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Url;
use reqwest::redirect::{Attempt, Policy};

use super::HealthBackend;
use crate::bindings::CapError;
use crate::bindings::health::CheckResult;
use crate::capability::net_guard::{
    self as addr, AddrError, describe_error, fmt_duration, redact_url,
};

/// At most this much of a body is read for `body_contains`.
const MAX_BODY: usize = 1 << 20;
/// Same-origin redirects followed per check.
const MAX_REDIRECTS: usize = 5;
/// First pause between checks in `wait_healthy`; doubles up to the cap.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest pause between checks in `wait_healthy`.
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// One health-check target, as configured by the runbook's config layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTarget {
    /// What to GET; `http` or `https` only.
    pub url: Url,
    /// Statuses that count as healthy (default `[200]`; a range such as
    /// `200..=299` is written out as a list by the config layer).
    pub expect_status: Vec<u16>,
    /// If set, the body (first 1 MiB) must contain this substring.
    pub body_contains: Option<String>,
    /// Time box of one request, DNS lookup and body included (default 5 s).
    pub timeout: Duration,
    /// Allow loopback and private-range addresses (default false).
    /// Link-local, metadata, multicast and unspecified addresses are refused
    /// regardless.
    pub allow_private: bool,
}

impl HealthTarget {
    /// A target with the defaults: expect 200, no body check, 5 s timeout,
    /// public addresses only.
    pub fn new(url: Url) -> Self {
        HealthTarget {
            url,
            expect_status: vec![200],
            body_contains: None,
            timeout: Duration::from_secs(5),
            allow_private: false,
        }
    }
}

/// The real [`HealthBackend`]: HTTP(S) checks of the configured targets.
#[derive(Debug, Clone)]
pub struct LiveHealth {
    targets: BTreeMap<String, HealthTarget>,
}

impl LiveHealth {
    /// Validates the targets: http(s) URL with a host, at least one expected
    /// status, each in 100..=599, a non-zero timeout.
    pub fn new(targets: BTreeMap<String, HealthTarget>) -> Result<Self, String> {
        for (name, t) in &targets {
            let bad = |why: String| Err(format!("health target {name}: {why}"));
            if t.url.scheme() != "http" && t.url.scheme() != "https" {
                return bad(format!("scheme {:?} is not http or https", t.url.scheme()));
            }
            if t.url.host().is_none() {
                return bad("URL has no host".into());
            }
            if t.expect_status.is_empty() {
                return bad("expect_status is empty".into());
            }
            if let Some(s) = t.expect_status.iter().find(|s| !(100..=599).contains(*s)) {
                return bad(format!("expected status {s} is not an HTTP status"));
            }
            if t.timeout.is_zero() {
                return bad("timeout is zero".into());
            }
        }
        Ok(LiveHealth { targets })
    }

    fn target(&self, name: &str) -> Result<&HealthTarget, CapError> {
        self.targets.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.targets.keys().map(String::as_str).collect();
            CapError::Invalid(format!(
                "unknown health target {name:?}; known: {}",
                if known.is_empty() {
                    "(none)".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }

    /// One check of `t` within `timeout`.
    async fn check_once(
        &self,
        name: &str,
        t: &HealthTarget,
        timeout: Duration,
    ) -> Result<CheckResult, CapError> {
        let start = Instant::now();
        let result = |healthy: bool, status: u16, detail: String| CheckResult {
            target: name.to_string(),
            healthy,
            status,
            latency_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            detail,
        };
        let timed_out = || format!("timed out after {}", fmt_duration(timeout));

        let checked = match addr::resolve_checked(&t.url, t.allow_private, timeout).await {
            Ok(c) => c,
            Err(AddrError::Refused(why)) => {
                tracing::warn!(health_target = name, url = %redact_url(&t.url), %why, "health check refused");
                return Err(CapError::Denied(format!("health target {name}: {why}")));
            }
            Err(AddrError::BadUrl(why)) => {
                return Err(CapError::Invalid(format!("health target {name}: {why}")));
            }
            Err(AddrError::Lookup(why)) => return Ok(result(false, 0, why)),
        };
        let client = checked
            .pin(
                reqwest::Client::builder()
                    .no_proxy()
                    .redirect(same_origin_redirects())
                    .pool_max_idle_per_host(0)
                    .user_agent(concat!("drhost-health/", env!("CARGO_PKG_VERSION"))),
            )
            .build()
            .map_err(|e| {
                CapError::Failed(format!(
                    "health target {name}: cannot build HTTP client: {}",
                    describe_error(&e)
                ))
            })?;

        let remaining = timeout.saturating_sub(start.elapsed());
        let response = client.get(t.url.clone()).timeout(remaining).send().await;
        let res = match response {
            Err(e) => {
                let detail = if let Some(r) = find_redirect_refusal(&e) {
                    r.to_string()
                } else if e.is_timeout() {
                    timed_out()
                } else {
                    describe_error(&e)
                };
                result(false, 0, detail)
            }
            Ok(resp) => {
                let status = resp.status().as_u16();
                if !t.expect_status.contains(&status) {
                    let detail = format!(
                        "status {status}, expected {}",
                        fmt_statuses(&t.expect_status)
                    );
                    result(false, status, detail)
                } else if let Some(needle) = &t.body_contains {
                    match read_limited(resp, MAX_BODY).await {
                        Ok(body) if String::from_utf8_lossy(&body).contains(needle.as_str()) => {
                            result(true, status, "ok".into())
                        }
                        Ok(_) => result(false, status, format!("body does not contain {needle:?}")),
                        Err(e) if e.is_timeout() => {
                            result(false, status, format!("{} reading the body", timed_out()))
                        }
                        Err(e) => result(false, status, describe_error(&e)),
                    }
                } else {
                    result(true, status, "ok".into())
                }
            }
        };
        tracing::debug!(
            health_target = name,
            url = %redact_url(&t.url),
            healthy = res.healthy,
            status = res.status,
            latency_ms = res.latency_ms,
            detail = %res.detail,
            "health check"
        );
        Ok(res)
    }
}

#[async_trait]
impl HealthBackend for LiveHealth {
    async fn check(&self, target: &str) -> Result<CheckResult, CapError> {
        let t = self.target(target)?;
        self.check_once(target, t, t.timeout).await
    }

    async fn wait_healthy(&self, target: &str, timeout: Duration) -> Result<CheckResult, CapError> {
        let t = self.target(target)?;
        let deadline = Instant::now() + timeout;
        let mut backoff = BACKOFF_START;
        let last = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let r = self.check_once(target, t, t.timeout.min(remaining)).await?;
            if r.healthy {
                return Ok(r);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break r.detail;
            }
            tokio::time::sleep(backoff.min(remaining)).await;
            backoff = (backoff * 2).min(BACKOFF_CAP);
            if Instant::now() >= deadline {
                break r.detail;
            }
        };
        Err(CapError::TimedOut(format!(
            "target {target} not healthy after {}: last: {last}",
            fmt_duration(timeout)
        )))
    }
}

/// Why a redirect was not followed; carried through reqwest's error.
#[derive(Debug)]
enum RedirectRefusal {
    OtherHost(String),
    TooMany,
}

impl fmt::Display for RedirectRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedirectRefusal::OtherHost(to) => write!(f, "redirect to other host {to} not followed"),
            RedirectRefusal::TooMany => write!(f, "more than {MAX_REDIRECTS} redirects"),
        }
    }
}

impl std::error::Error for RedirectRefusal {}

/// Follows redirects only to the first URL's scheme, host and port.
fn same_origin_redirects() -> Policy {
    Policy::custom(|attempt: Attempt<'_>| {
        let Some(first) = attempt.previous().first() else {
            return attempt.stop();
        };
        let next = attempt.url();
        let same = next.scheme() == first.scheme()
            && next.host() == first.host()
            && next.port_or_known_default() == first.port_or_known_default();
        if !same {
            let to = redact_url(next);
            attempt.error(RedirectRefusal::OtherHost(to))
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(RedirectRefusal::TooMany)
        } else {
            attempt.follow()
        }
    })
}

fn find_redirect_refusal(e: &reqwest::Error) -> Option<&RedirectRefusal> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<RedirectRefusal>() {
            return Some(r);
        }
        src = s.source();
    }
    None
}

/// Reads at most `limit` bytes of the body.
async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while body.len() < limit {
        match resp.chunk().await? {
            Some(chunk) => {
                let take = chunk.len().min(limit - body.len());
                body.extend_from_slice(&chunk[..take]);
            }
            None => break,
        }
    }
    Ok(body)
}

/// `200`, `one of 200, 204`, `200-299`.
fn fmt_statuses(statuses: &[u16]) -> String {
    let mut s: Vec<u16> = statuses.to_vec();
    s.sort_unstable();
    s.dedup();
    let mut runs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let mut j = i;
        while j + 1 < s.len() && s[j + 1] == s[j] + 1 {
            j += 1;
        }
        runs.push(if j > i + 1 {
            format!("{}-{}", s[i], s[j])
        } else if j == i + 1 {
            format!("{}, {}", s[i], s[j])
        } else {
            s[i].to_string()
        });
        i = j + 1;
    }
    if s.len() == 1 || (runs.len() == 1 && s.len() > 2) {
        runs.join(", ")
    } else {
        format!("one of {}", runs.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(fmt_statuses(&[200]), "200");
        assert_eq!(fmt_statuses(&[204, 200]), "one of 200, 204");
        assert_eq!(fmt_statuses(&[200, 201]), "one of 200, 201");
        let range: Vec<u16> = (200..=299).collect();
        assert_eq!(fmt_statuses(&range), "200-299");
        let mut v: Vec<u16> = (200..=299).collect();
        v.push(304);
        assert_eq!(fmt_statuses(&v), "one of 200-299, 304");
    }

    #[test]
    fn new_validates() {
        let mut t = HealthTarget::new(Url::parse("ftp://x/").unwrap());
        let m = |t: &HealthTarget| BTreeMap::from([("a".to_string(), t.clone())]);
        assert!(LiveHealth::new(m(&t)).unwrap_err().contains("scheme"));
        t.url = Url::parse("http://x/").unwrap();
        assert!(LiveHealth::new(m(&t)).is_ok());
        t.expect_status.clear();
        assert!(LiveHealth::new(m(&t)).is_err());
        t.expect_status = vec![1000];
        assert!(LiveHealth::new(m(&t)).is_err());
        t.expect_status = vec![200];
        t.timeout = Duration::ZERO;
        assert!(LiveHealth::new(m(&t)).is_err());
    }
}
