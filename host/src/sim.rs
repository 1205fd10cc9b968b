//! Simulated time for runs on mock backends (`drhost run --mock`,
//! `drhost test`, `drhost drill`).
//!
//! A run on mocks executes on a current-thread tokio runtime whose clock is
//! paused ([`simulated_runtime`]): `tokio::time` is virtual and jumps
//! straight to the next timer whenever every task waits. A mock's latency
//! (`ready_delay = "2m"`, a restore at 50 MB/s, an injected `latency`) is a
//! `tokio::time::sleep` of that length, so it takes no real time, and
//! everything measured with `tokio::time::Instant` (step durations, call
//! durations, what the audit log records) is simulated time, exactly the
//! fixture's latency model: guest CPU time and host work count zero.
//!
//! `--time-scale N` paces the simulation: each mock latency also waits
//! `latency / N` of real time ([`sleep`]), so an operator watching a drill
//! sees it unfold (`--time-scale 60` plays an hour in a minute). The real
//! wait runs on a blocking thread, which keeps tokio from advancing the
//! virtual clock meanwhile; simulated durations stay exact.
//!
//! Time boxes are simulated too: a hung mock call times out when the
//! virtual clock reaches the step's deadline, instantly in real time.
//! Guest CPU cannot be measured in virtual time (a busy loop never lets the
//! clock advance), so the CPU fence of a simulated step is real time:
//! [`cpu_fence`].
//!
//! Real backends never run on a paused clock (a socket read would let the
//! virtual clock jump past every timeout): a fixture with `live = [...]`
//! runs in real time.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Real-time pacing of mock latencies: `f64` bits of the time scale, 0 for
/// none (instant).
static PACE: AtomicU64 = AtomicU64::new(0);

/// How a run's clock works.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunClock {
    /// Real time: real backends, or mocks in a test harness.
    Real,
    /// Simulated time on a paused runtime; `time_scale` real pacing
    /// (`None`: as fast as possible).
    Simulated {
        /// Simulated seconds per real second, if paced.
        time_scale: Option<f64>,
    },
}

impl RunClock {
    /// Whether time is simulated.
    pub fn is_simulated(&self) -> bool {
        matches!(self, RunClock::Simulated { .. })
    }
}

/// Parses `--time-scale`: a positive number, or `max` for no pacing.
///
/// # Errors
/// A message naming the flag.
pub fn parse_time_scale(s: &str) -> Result<Option<f64>, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(None);
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
        _ => Err(format!(
            "--time-scale {s:?}: expected a positive number (simulated seconds per real second, e.g. 60) or `max`"
        )),
    }
}

/// A current-thread runtime with its clock paused: the runtime of a
/// simulated run. `time_scale` sets the real-time pacing of mock latencies
/// for the process.
///
/// # Errors
/// The runtime cannot be built.
pub fn simulated_runtime(time_scale: Option<f64>) -> std::io::Result<tokio::runtime::Runtime> {
    PACE.store(time_scale.unwrap_or(0.0).to_bits(), Ordering::SeqCst);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()?;
    let start = rt.block_on(async { tokio::time::Instant::now() });
    let _ = SIM_EPOCH.set((SystemTime::now(), start));
    Ok(rt)
}

/// Wall-clock time and paused-clock instant when the simulated runtime
/// started: simulated wall-clock time is their sum with the virtual time
/// elapsed since.
static SIM_EPOCH: OnceLock<(SystemTime, tokio::time::Instant)> = OnceLock::new();

/// The wall clock: real, or in a simulated run the real start time plus
/// the simulated time elapsed (so `clock.now-ms` and object ages advance
/// with the simulation).
pub fn now() -> SystemTime {
    match SIM_EPOCH.get() {
        Some((wall, start)) => {
            *wall + tokio::time::Instant::now().saturating_duration_since(*start)
        }
        None => SystemTime::now(),
    }
}

fn pace() -> Option<f64> {
    let v = f64::from_bits(PACE.load(Ordering::SeqCst));
    (v > 0.0).then_some(v)
}

/// A mock latency: `d` of (possibly simulated) time, paced in real time
/// when the run has a time scale.
pub async fn sleep(d: Duration) {
    if d.is_zero() {
        return;
    }
    if let Some(scale) = pace() {
        let real = Duration::from_secs_f64(d.as_secs_f64() / scale);
        // A blocking task stops the paused clock from advancing while the
        // real wait runs (tokio inhibits auto-advance for it).
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(real)).await;
    }
    tokio::time::sleep(d).await;
}

/// The real-time CPU fence of a simulated step: `budget / time_scale`, at
/// least [`MIN_SIMULATED_CPU_FENCE`].
pub fn cpu_fence(budget: Duration, time_scale: Option<f64>) -> Duration {
    let scaled = match time_scale {
        Some(s) => Duration::from_secs_f64(budget.as_secs_f64() / s),
        None => Duration::ZERO,
    };
    scaled.max(MIN_SIMULATED_CPU_FENCE)
}

/// Guest CPU a simulated step may use whatever its scaled budget: enough for
/// any honest step (they use milliseconds), short enough that a busy loop
/// in a drill is stopped quickly.
pub const MIN_SIMULATED_CPU_FENCE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_scale_parses() {
        assert_eq!(parse_time_scale("60"), Ok(Some(60.0)));
        assert_eq!(parse_time_scale("MAX"), Ok(None));
        for bad in ["0", "-1", "fast", "inf", "NaN"] {
            let e = parse_time_scale(bad).unwrap_err();
            assert!(e.contains("--time-scale"), "{e}");
        }
    }

    #[test]
    fn cpu_fence_has_a_floor() {
        assert_eq!(
            cpu_fence(Duration::from_secs(600), None),
            MIN_SIMULATED_CPU_FENCE
        );
        assert_eq!(
            cpu_fence(Duration::from_secs(600), Some(60.0)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn paused_clock_makes_latency_exact() {
        // (That it takes no real time is a benchmark figure: drill-bench.)
        let rt = simulated_runtime(None).unwrap();
        let simulated = rt.block_on(async {
            let t = tokio::time::Instant::now();
            sleep(Duration::from_secs(3600)).await;
            sleep(Duration::from_millis(1500)).await;
            t.elapsed()
        });
        assert_eq!(simulated, Duration::from_millis(3_601_500));
    }
}
