//! Retries: which capability calls the gate tries again, how often, and how
//! long it waits in between.
//!
//! - **What is retried**: an `unavailable` or `timed-out` answer (the
//!   backend may answer next time). Never `denied` or `invalid` (they will
//!   not change), nor `not-found`, `conflict` or `failed` (the backend
//!   answered; the plugin decides).
//! - **Which calls** ([`RetryClass`], per operation, in
//!   [`crate::policy::Op::retry_class`]): reads, and mutations that are
//!   idempotent by construction (scale to N, apply, replace a secret,
//!   terminate sessions, a restore into a fresh `<db>_restore_<run>`). Each
//!   retry of a mutation carries the same idempotency key (see
//!   [`crate::gate`]). Never retried: `k8s.rollout-undo` (twice is two
//!   revisions back), `operator.notify` (twice is two pages), questions to
//!   the operator, and host-internal calls.
//! - **One layer**: the Kubernetes and S3 backends retry transient
//!   failures themselves (with protocol knowledge: a 409 re-read, a ranged
//!   resume, `Retry-After`) and say so in the error they give up with; the
//!   gate does not retry those again ([`backend_retried`]). Its retries
//!   cover the backends that do not retry (PostgreSQL, health checks, the
//!   simulations) and failures a backend passed on at once.
//! - **How long**: exponential backoff with equal jitter (half the delay
//!   fixed, half random), capped, per class (`[retries]` in the runbook
//!   config); a retry is attempted only if its delay fits in what is left
//!   of the step's budget and of the RTO. Every retry is audited (`note`
//!   with the call's key and the error that caused it).

use std::time::Duration;

use serde::Deserialize;

use crate::bindings::CapError;

/// How an operation may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// Reads: retried with [`RetryPolicy::reads`].
    Read,
    /// Mutations that give the same result when repeated: retried with
    /// [`RetryPolicy::mutations`].
    IdempotentMutation,
    /// Not retried.
    Never,
}

/// Backoff of one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry (before jitter).
    pub first: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `retry` (1-based): `first * 2^(retry-1)`
    /// capped at `max`, of which the upper half is scaled by `jitter` in
    /// [0, 1).
    pub fn delay(&self, retry: u32, jitter: f64) -> Duration {
        let base = self
            .first
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max);
        let half = base / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// `[retries]`: backoff per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Reads.
    pub reads: Backoff,
    /// Idempotent mutations.
    pub mutations: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            reads: Backoff {
                attempts: 4,
                first: Duration::from_millis(250),
                max: Duration::from_secs(4),
            },
            mutations: Backoff {
                attempts: 3,
                first: Duration::from_secs(1),
                max: Duration::from_secs(8),
            },
        }
    }
}

impl RetryPolicy {
    /// The backoff for a class; `None` for [`RetryClass::Never`].
    pub fn for_class(&self, class: RetryClass) -> Option<Backoff> {
        match class {
            RetryClass::Read => Some(self.reads),
            RetryClass::IdempotentMutation => Some(self.mutations),
            RetryClass::Never => None,
        }
    }

    /// No retries at all.
    pub fn none() -> Self {
        let once = Backoff {
            attempts: 1,
            first: Duration::ZERO,
            max: Duration::ZERO,
        };
        RetryPolicy {
            reads: once,
            mutations: once,
        }
    }
}

/// Whether an error may go away on its own.
pub fn is_retryable(e: &CapError) -> bool {
    matches!(e, CapError::Unavailable(_) | CapError::TimedOut(_))
}

/// What a backend that retries on its own appends to the error it gives
/// up with: the Kubernetes backend (`(after N attempts)`, within its
/// operation time box) and the S3 client (`(gave up after N retries)`).
pub const BACKEND_GAVE_UP: [&str; 2] = [" attempts)", "(gave up after "];

/// Whether the backend already retried this error itself: the gate does
/// not multiply those attempts by its own (one retry layer per failure).
pub fn backend_retried(e: &CapError) -> bool {
    let m = e.message();
    (m.contains("(after ") && m.ends_with(BACKEND_GAVE_UP[0])) || m.contains(BACKEND_GAVE_UP[1])
}

/// `[retries.reads]` / `[retries.mutations]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    /// Attempts in all (1 disables retries).
    pub attempts: Option<u32>,
    /// First delay (`"250ms"`).
    pub first: Option<String>,
    /// Largest delay (`"4s"`).
    pub max: Option<String>,
}

/// `[retries]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    /// `[retries.reads]`.
    pub reads: Option<RawBackoff>,
    /// `[retries.mutations]`.
    pub mutations: Option<RawBackoff>,
}

impl RawRetries {
    /// Validates against the defaults; errors name the field.
    ///
    /// # Errors
    /// `(field, problem)`.
    pub fn resolve(&self) -> Result<RetryPolicy, (String, String)> {
        let d = RetryPolicy::default();
        let one = |raw: &Option<RawBackoff>, def: Backoff, name: &str| {
            let Some(raw) = raw else { return Ok(def) };
            let field = |f: &str| format!("retries.{name}.{f}");
            let attempts = raw.attempts.unwrap_or(def.attempts);
            if !(1..=20).contains(&attempts) {
                return Err((
                    field("attempts"),
                    format!("must be 1 to 20, got {attempts}"),
                ));
            }
            let dur = |v: &Option<String>, f: &str, def: Duration| match v {
                Some(s) => crate::runbook::parse_duration(s).map_err(|p| (field(f), p)),
                None => Ok(def),
            };
            let first = dur(&raw.first, "first", def.first)?;
            let max = dur(&raw.max, "max", def.max)?;
            if max < first {
                return Err((field("max"), "is shorter than `first`".to_owned()));
            }
            Ok(Backoff {
                attempts,
                first,
                max,
            })
        };
        Ok(RetryPolicy {
            reads: one(&self.reads, d.reads, "reads")?,
            mutations: one(&self.mutations, d.mutations, "mutations")?,
        })
    }
}

/// A small xorshift generator for jitter (no cryptographic need).
#[derive(Debug)]
pub struct Jitter(std::sync::atomic::AtomicU64);

impl Jitter {
    /// Seeded from the clock and the process id.
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32)
            | 1;
        Jitter(std::sync::atomic::AtomicU64::new(seed))
    }

    /// Uniform in [0, 1).
    pub fn next(&self) -> f64 {
        use std::sync::atomic::Ordering::Relaxed;
        let mut x = self.0.load(Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.store(x, Relaxed);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_half_jitter() {
        let b = Backoff {
            attempts: 5,
            first: Duration::from_millis(100),
            max: Duration::from_millis(350),
        };
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(50));
        let top = b.delay(1, 0.999_999);
        assert!(top > Duration::from_micros(99_990) && top < Duration::from_millis(100));
        assert_eq!(b.delay(2, 0.0), Duration::from_millis(100));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(175));
        assert_eq!(b.delay(30, 0.5), Duration::from_micros(262_500));
    }

    #[test]
    fn only_transient_errors_are_retried() {
        assert!(is_retryable(&CapError::Unavailable("x".into())));
        assert!(is_retryable(&CapError::TimedOut("x".into())));
        for e in [
            CapError::Denied("x".into()),
            CapError::Invalid("x".into()),
            CapError::Failed("x".into()),
            CapError::NotFound("x".into()),
            CapError::Conflict("x".into()),
        ] {
            assert!(!is_retryable(&e), "{e:?}");
        }
    }

    #[test]
    fn errors_a_backend_already_retried_are_recognised() {
        assert!(backend_retried(&CapError::Unavailable(
            "get deployment a/b: 503 (after 7 attempts)".into()
        )));
        assert!(backend_retried(&CapError::Unavailable(
            "GET s3://b/k: 503 SlowDown (gave up after 5 retries)".into()
        )));
        assert!(!backend_retried(&CapError::Unavailable(
            "connection refused".into()
        )));
    }

    #[test]
    fn config_is_validated_naming_the_field() {
        let raw: RawRetries = toml::from_str("[reads]\nattempts = 0\n").expect("toml");
        assert_eq!(raw.resolve().unwrap_err().0, "retries.reads.attempts");
        let raw: RawRetries =
            toml::from_str("[mutations]\nfirst = \"5s\"\nmax = \"1s\"\n").expect("toml");
        assert_eq!(raw.resolve().unwrap_err().0, "retries.mutations.max");
        let raw: RawRetries = toml::from_str("[reads]\nattempts = 1\n").expect("toml");
        assert_eq!(raw.resolve().expect("ok").reads.attempts, 1);
        assert_eq!(
            RawRetries::default().resolve().expect("ok"),
            RetryPolicy::default()
        );
    }

    #[test]
    fn jitter_stays_in_range() {
        let j = Jitter::new();
        for _ in 0..1000 {
            let x = j.next();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
