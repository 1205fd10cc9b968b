//! The `clock` capability: wall-clock time, and sleeping inside the step's
//! budget.

use std::time::{Duration, UNIX_EPOCH};

use crate::bindings::CapError;
use crate::bindings::clock::Host;
use crate::instance::PluginCtx;
use crate::policy::Op;

impl Host for PluginCtx {
    async fn now_ms(&mut self) -> wasmtime::Result<Result<u64, CapError>> {
        let now = async {
            Ok(crate::sim::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64)
        };
        self.call(Op::ClockNow {}, now, None).await
    }

    async fn sleep_ms(&mut self, ms: u64) -> wasmtime::Result<Result<(), CapError>> {
        let wanted = Duration::from_millis(ms);
        let left = self.clip(wanted);
        let sleep = async move {
            if left < wanted {
                return Err(CapError::TimedOut(format!(
                    "sleeping {} would outlive the step's budget ({} left)",
                    crate::runbook::fmt_duration(wanted),
                    crate::runbook::fmt_duration(left)
                )));
            }
            crate::sim::sleep(wanted).await;
            Ok(())
        };
        self.call(Op::ClockSleep { ms }, sleep, None).await
    }
}
