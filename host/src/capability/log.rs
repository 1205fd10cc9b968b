//! The `log` capability: plugin messages for the operator's console and the
//! audit trail (event `note`, capability `log`).

use crate::bindings::CapError;
use crate::bindings::log::{Host, Level};
use crate::instance::PluginCtx;

/// Longest message accepted.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

impl Level {
    /// Lowercase name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

impl Host for PluginCtx {
    async fn log(
        &mut self,
        level: Level,
        message: String,
    ) -> wasmtime::Result<Result<(), CapError>> {
        if message.len() > MAX_MESSAGE_BYTES {
            return Ok(Err(CapError::Invalid(format!(
                "log message of {} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit",
                message.len()
            ))));
        }
        self.plugin_log(level, &message)?;
        Ok(Ok(()))
    }
}
