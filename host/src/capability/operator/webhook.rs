//! [`WebhookNotifier`]: `operator.notify` over JSON webhooks.
//!
//! Each call is one JSON POST to the channel's URL, retried on 5xx, 429
//! (honouring `Retry-After` seconds, capped at 5 s) and connection errors or
//! timeouts, with backoff from 250 ms: at most 3 attempts within 15 s.
//! 2xx is delivered; any other 4xx is a `Failed` with an excerpt of the
//! answer; redirects are not followed (a webhook POST has no business being
//! redirected, and following one could leak its headers elsewhere).
//!
//! Secrets: header values (e.g. `Authorization`) and the URL's user info,
//! path and query (tokens; Slack keeps its secret in the path) never appear
//! in errors, logs or `Debug` output: the URL is shown as
//! `scheme://host[:port]` and headers by name only. Body excerpts from the
//! server are scrubbed of those values too, in case the server echoes them.
//!
//! Destinations pass the same address check as health targets (`net_guard.rs`);
//! every attempt resolves, checks and pins afresh, on its own client.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use super::NotifyBackend;
use crate::bindings::CapError;
use crate::capability::net_guard::{
    self as addr, AddrError, describe_error, fmt_duration, redact_url,
};

/// Attempts per notification.
const MAX_ATTEMPTS: u32 = 3;
/// All attempts and pauses of one notification fit in this.
const TOTAL_BUDGET: Duration = Duration::from_secs(15);
/// Pause after the first failed attempt; doubles after each.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest `Retry-After` honoured.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(5);
/// Characters of a 4xx answer quoted in the error.
const EXCERPT_CHARS: usize = 200;
/// Bytes of a 4xx answer read for the excerpt.
const EXCERPT_READ: usize = 4096;

/// Shape of the JSON body posted to a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadShape {
    /// `{"text": message, "channel": channel name, "source": "drhost"}`
    #[default]
    Json,
    /// `{"text": message}` (Slack / Mattermost incoming webhooks)
    Slack,
}

/// One notification channel, as configured by the config layer.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookChannel {
    /// Where to POST; `http` or `https` only.
    pub url: Url,
    /// Extra request headers, values already resolved (e.g. `Authorization`
    /// from an environment variable). Never logged or shown.
    pub headers: Vec<(String, String)>,
    /// Time box of one attempt (clipped to what is left of the 15 s budget).
    pub timeout: Duration,
    /// Body shape.
    pub template: PayloadShape,
    /// Allow loopback and private-range addresses (default false).
    /// Link-local, metadata, multicast and unspecified addresses are refused
    /// regardless.
    pub allow_private: bool,
}

impl WebhookChannel {
    /// A channel with the defaults: no extra headers, 5 s per attempt,
    /// [`PayloadShape::Json`], public addresses only.
    pub fn new(url: Url) -> Self {
        WebhookChannel {
            url,
            headers: Vec::new(),
            timeout: Duration::from_secs(5),
            template: PayloadShape::Json,
            allow_private: false,
        }
    }
}

/// Shows the URL as `scheme://host[:port]` and headers by name only.
impl fmt::Debug for WebhookChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("WebhookChannel")
            .field("url", &redact_url(&self.url))
            .field("headers", &names)
            .field("timeout", &self.timeout)
            .field("template", &self.template)
            .field("allow_private", &self.allow_private)
            .finish()
    }
}

/// The real [`NotifyBackend`]: JSON webhooks per named channel.
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    channels: BTreeMap<String, WebhookChannel>,
    required: std::collections::BTreeSet<String>,
}

/// What one attempt came to.
enum Outcome {
    Delivered(u16),
    /// Not retried.
    Fatal(CapError),
    /// Retry may work; `Retry-After` if the server sent one.
    Retry(String, Option<Duration>),
}

impl WebhookNotifier {
    /// The notifier for these channels; a failed delivery to a channel in
    /// `required` fails the call, to any other it is best-effort (see
    /// [`NotifyBackend::must_deliver`]). Nothing is checked here: a bad URL
    /// or header is reported as `Invalid` by the `notify` that uses it.
    pub fn new(
        channels: BTreeMap<String, WebhookChannel>,
        required: std::collections::BTreeSet<String>,
    ) -> Self {
        WebhookNotifier { channels, required }
    }

    fn channel(&self, name: &str) -> Result<&WebhookChannel, CapError> {
        self.channels.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.channels.keys().map(String::as_str).collect();
            CapError::Invalid(format!(
                "unknown notification channel {name:?}; known: {}",
                if known.is_empty() {
                    "(none)".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }

    async fn attempt(
        name: &str,
        ch: &WebhookChannel,
        headers: &HeaderMap,
        payload: &serde_json::Value,
        timeout: Duration,
        secrets: &[String],
    ) -> Outcome {
        let start = Instant::now();
        let checked = match addr::resolve_checked(&ch.url, ch.allow_private, timeout).await {
            Ok(c) => c,
            Err(AddrError::Refused(why)) => {
                return Outcome::Fatal(CapError::Denied(format!("webhook {name}: {why}")));
            }
            Err(AddrError::BadUrl(why)) => {
                return Outcome::Fatal(CapError::Invalid(format!("webhook {name}: {why}")));
            }
            Err(AddrError::Lookup(why)) => return Outcome::Retry(why, None),
        };
        let client = match checked
            .pin(
                reqwest::Client::builder()
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("drhost-notify/", env!("CARGO_PKG_VERSION"))),
            )
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                return Outcome::Fatal(CapError::Failed(format!(
                    "webhook {name}: cannot build HTTP client: {}",
                    describe_error(&e)
                )));
            }
        };
        let remaining = timeout.saturating_sub(start.elapsed());
        let resp = match client
            .post(ch.url.clone())
            .headers(headers.clone())
            .json(payload)
            .timeout(remaining)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Outcome::Retry(format!("timed out after {}", fmt_duration(timeout)), None);
            }
            Err(e) if e.is_builder() => {
                return Outcome::Fatal(CapError::Invalid(format!(
                    "webhook {name}: bad request: {}",
                    describe_error(&e)
                )));
            }
            Err(e) => return Outcome::Retry(describe_error(&e), None),
        };
        let status = resp.status();
        let code = status.as_u16();
        if status.is_success() {
            Outcome::Delivered(code)
        } else if code == 429 || status.is_server_error() {
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(RETRY_AFTER_CAP));
            Outcome::Retry(format!("answered {code}"), retry_after)
        } else if status.is_client_error() {
            let mut body = Vec::new();
            let mut resp = resp;
            while body.len() < EXCERPT_READ {
                match resp.chunk().await {
                    Ok(Some(c)) => {
                        body.extend_from_slice(&c[..c.len().min(EXCERPT_READ - body.len())])
                    }
                    _ => break,
                }
            }
            let mut text = String::from_utf8_lossy(&body).into_owned();
            for s in secrets {
                text = text.replace(s.as_str(), "[redacted]");
            }
            let excerpt: String = text.trim().chars().take(EXCERPT_CHARS).collect();
            Outcome::Fatal(CapError::Failed(format!(
                "webhook {name} answered {code}: {excerpt}"
            )))
        } else if status.is_redirection() {
            Outcome::Fatal(CapError::Failed(format!(
                "webhook {name} answered {code} (redirects are not followed)"
            )))
        } else {
            Outcome::Fatal(CapError::Failed(format!("webhook {name} answered {code}")))
        }
    }
}

/// The channel's headers as a map (values marked sensitive), or `Invalid`
/// naming the header but not its value.
fn header_map(name: &str, ch: &WebhookChannel) -> Result<HeaderMap, CapError> {
    let mut map = HeaderMap::new();
    for (k, v) in &ch.headers {
        let key = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
            CapError::Invalid(format!("webhook {name}: {k:?} is not a valid header name"))
        })?;
        let mut value = HeaderValue::from_str(v).map_err(|_| {
            CapError::Invalid(format!(
                "webhook {name}: the value of header {k} is not a valid header value"
            ))
        })?;
        value.set_sensitive(true);
        map.append(key, value);
    }
    Ok(map)
}

/// Strings that must not be echoed back from a server's answer: header
/// values (whole and their longer words), the query, its values, the
/// password and long path segments.
fn secrets(ch: &WebhookChannel) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (_, v) in &ch.headers {
        out.push(v.clone());
        out.extend(
            v.split_whitespace()
                .filter(|w| w.len() >= 6)
                .map(str::to_string),
        );
    }
    if let Some(q) = ch.url.query() {
        out.push(q.to_string());
    }
    out.extend(
        ch.url
            .query_pairs()
            .map(|(_, v)| v.into_owned())
            .filter(|v| v.len() >= 4),
    );
    if let Some(p) = ch.url.password() {
        out.push(p.to_string());
    }
    if let Some(segs) = ch.url.path_segments() {
        out.extend(segs.filter(|s| s.len() >= 16).map(str::to_string));
    }
    out.retain(|s| !s.is_empty());
    // Longest first, so a whole value is replaced before its parts.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

#[async_trait]
impl NotifyBackend for WebhookNotifier {
    fn must_deliver(&self, channel: &str) -> bool {
        self.required.contains(channel)
    }

    async fn notify(&self, channel: &str, message: &str) -> Result<(), CapError> {
        let ch = self.channel(channel)?;
        let headers = header_map(channel, ch)?;
        let secrets = secrets(ch);
        let payload = match ch.template {
            PayloadShape::Json => serde_json::json!({
                "text": message,
                "channel": channel,
                "source": "drhost",
            }),
            PayloadShape::Slack => serde_json::json!({ "text": message }),
        };
        let url = redact_url(&ch.url);
        let deadline = Instant::now() + TOTAL_BUDGET;
        let mut backoff = BACKOFF_START;
        let mut last = String::new();
        let mut attempts = 0;
        while attempts < MAX_ATTEMPTS {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            attempts += 1;
            let timeout = ch.timeout.min(remaining);
            match Self::attempt(channel, ch, &headers, &payload, timeout, &secrets).await {
                Outcome::Delivered(code) => {
                    tracing::debug!(channel, %url, attempt = attempts, status = code, "notification delivered");
                    return Ok(());
                }
                Outcome::Fatal(e) => {
                    tracing::warn!(channel, %url, attempt = attempts, error = ?e, "notification failed");
                    return Err(e);
                }
                Outcome::Retry(why, retry_after) => {
                    tracing::warn!(channel, %url, attempt = attempts, %why, "notification attempt failed");
                    last = why;
                    if attempts == MAX_ATTEMPTS {
                        break;
                    }
                    let pause = retry_after.unwrap_or(backoff);
                    backoff *= 2;
                    if Instant::now() + pause >= deadline {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
        Err(CapError::Unavailable(format!(
            "webhook {channel} ({url}) not delivered after {attempts} attempt(s): last: {last}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let mut ch = WebhookChannel::new(
            Url::parse("https://h.example/services/AAAAAAAAAAAAAAAAAAAA?token=qq1234").unwrap(),
        );
        ch.headers
            .push(("Authorization".into(), "Bearer sekrit-value".into()));
        let dbg = format!("{ch:?}");
        assert!(!dbg.contains("sekrit") && !dbg.contains("qq1234") && !dbg.contains("AAAA"));
        assert!(dbg.contains("Authorization"));
        let s = secrets(&ch);
        assert!(s.contains(&"Bearer sekrit-value".to_string()));
        assert!(s.contains(&"sekrit-value".to_string()));
        assert!(s.contains(&"qq1234".to_string()));
        assert!(s.contains(&"AAAAAAAAAAAAAAAAAAAA".to_string()));
    }

    #[test]
    fn bad_header_is_invalid_without_value() {
        let mut ch = WebhookChannel::new(Url::parse("https://h.example/").unwrap());
        ch.headers
            .push(("X-Token".into(), "bad\nvalue-secret".into()));
        let e = header_map("ops", &ch).unwrap_err();
        assert!(
            matches!(&e, CapError::Invalid(m) if !m.contains("secret")),
            "{e:?}"
        );
    }
}
