// The `operator` capability module: the generated imports and records, plus
// helpers. Its documentation is on `pub mod operator;` in lib.rs.

pub use crate::bindings::dr::recovery::operator::*;

use crate::CapError;

/// Posts `message` to `channel`, best effort, and returns the note for
/// the step's summary: `"; notified {channel}"`, or `"; notifying
/// {channel} failed: {error}"` (also logged as a warning) when the call
/// fails. An empty `channel` means "no channel": nothing is sent and the
/// note is empty.
pub fn notify_best_effort(channel: &str, message: &str) -> String {
    if channel.is_empty() {
        return String::new();
    }
    let result = notify(channel, message);
    if let Err(e) = &result {
        crate::warn!("notifying channel {channel} failed: {e}");
    }
    notify_note(channel, &result)
}

/// The note [`notify_best_effort`] returns for the result of `notify`.
fn notify_note(channel: &str, result: &Result<(), CapError>) -> String {
    match result {
        Ok(()) => format!("; notified {channel}"),
        Err(e) => format!("; notifying {channel} failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes() {
        // No channel: no call (natively a call would panic), no note.
        assert_eq!(notify_best_effort("", "recovered"), "");
        assert_eq!(notify_note("ops", &Ok(())), "; notified ops");
        assert_eq!(
            notify_note("ops", &Err(CapError::Denied("channel not granted".into()))),
            "; notifying ops failed: denied: channel not granted"
        );
    }
}
