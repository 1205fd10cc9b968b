//! Fault injection for mock backends: per operation, an error kind, added
//! latency, a hang, and "fail N times then succeed".
//!
//! ```toml
//! [[faults]]
//! operation = "postgres.restore"   # capability.operation, as in the WIT
//! error = "unavailable"            # a cap-error kind (optional)
//! message = "server closed the connection"
//! latency = "200ms"                # added before the call (optional)
//! hang = false                     # never answer (the time box must fire)
//! times = 2                        # only the first 2 calls (default: all)
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::bindings::CapError;
use crate::fixture::lock;

/// One `[[faults]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultFixture {
    /// `capability.operation`, e.g. `k8s.scale`.
    pub operation: String,
    /// cap-error kind to return.
    pub error: Option<String>,
    /// Message carried by the error.
    pub message: Option<String>,
    /// Latency added before the call.
    pub latency: Option<String>,
    /// Never answer.
    #[serde(default)]
    pub hang: bool,
    /// Apply to the first N matching calls only.
    pub times: Option<u32>,
}

#[derive(Debug)]
struct Fault {
    operation: String,
    error: Option<CapError>,
    latency: Duration,
    hang: bool,
    remaining: Option<u32>,
}

/// The faults of one mock environment, shared by all its backends.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<Vec<Fault>>>);

impl Faults {
    /// Validates fault fixtures. `known_ops` lists `capability.operation`
    /// names that exist, so a typo is an error rather than a fault that never
    /// fires.
    ///
    /// # Errors
    /// A message naming the bad entry.
    pub fn new(fixtures: Vec<FaultFixture>, known_ops: &[String]) -> Result<Faults, String> {
        let mut faults = Vec::new();
        for (i, f) in fixtures.into_iter().enumerate() {
            if !known_ops.contains(&f.operation) {
                return Err(format!(
                    "faults[{i}].operation {:?} is not a capability operation; known: {}",
                    f.operation,
                    known_ops.join(", ")
                ));
            }
            let error = match &f.error {
                Some(kind) => Some(
                    CapError::from_kind(
                        kind,
                        f.message
                            .clone()
                            .unwrap_or_else(|| format!("{} failed (injected fault)", f.operation)),
                    )
                    .ok_or_else(|| {
                        format!(
                            "faults[{i}].error {kind:?} is not a cap-error kind; use one of {}",
                            CapError::KINDS.join(", ")
                        )
                    })?,
                ),
                None => None,
            };
            let latency =
                crate::fixture::parse_opt_duration(&f.latency, &format!("faults[{i}].latency"))?;
            if error.is_none() && !f.hang && latency.is_zero() {
                return Err(format!(
                    "faults[{i}] ({}) does nothing: give it an error, a latency or hang = true",
                    f.operation
                ));
            }
            faults.push(Fault {
                operation: f.operation,
                error,
                latency,
                hang: f.hang,
                remaining: f.times,
            });
        }
        Ok(Faults(Arc::new(Mutex::new(faults))))
    }

    /// Applies the faults matching `operation`: sleeps for latency, hangs
    /// forever, or returns the injected error. Each application counts
    /// against `times`.
    ///
    /// # Errors
    /// The injected error.
    pub async fn inject(&self, operation: &str) -> Result<(), CapError> {
        let (latency, hang, error) = {
            let mut faults = lock(&self.0);
            let Some(f) = faults
                .iter_mut()
                .find(|f| f.operation == operation && f.remaining != Some(0))
            else {
                return Ok(());
            };
            if let Some(n) = &mut f.remaining {
                *n -= 1;
            }
            (f.latency, f.hang, f.error.clone())
        };
        if !latency.is_zero() {
            crate::sim::sleep(latency).await;
        }
        if hang {
            std::future::pending::<()>().await;
        }
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
