//! Mock notification channels: known channels accept and record messages.

use std::collections::BTreeSet;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::Deserialize;

use super::NotifyBackend;
use crate::bindings::CapError;
use crate::fixture::{MockLog, lock};
use crate::mock_faults::Faults;

/// `[notify]` in a fixture.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyFixture {
    /// Channels that exist.
    #[serde(default)]
    pub channels: Vec<String>,
}

/// The simulated channels.
pub struct MockNotify {
    channels: BTreeSet<String>,
    sent: Mutex<Vec<(String, String)>>,
    faults: Faults,
    log: MockLog,
}

impl MockNotify {
    /// Builds the simulation from its fixture section.
    pub fn new(f: NotifyFixture, faults: Faults, log: MockLog) -> MockNotify {
        MockNotify {
            channels: f.channels.into_iter().collect(),
            sent: Mutex::new(Vec::new()),
            faults,
            log,
        }
    }

    /// Loads messages delivered before a resumed run's interruption.
    pub fn load_sent(&self, sent: Vec<(String, String)>) {
        *lock(&self.sent) = sent;
    }

    /// Messages delivered, as (channel, message).
    pub fn sent(&self) -> Vec<(String, String)> {
        lock(&self.sent).clone()
    }
}

#[async_trait]
impl NotifyBackend for MockNotify {
    async fn notify(&self, channel: &str, message: &str) -> Result<(), CapError> {
        self.log.record(format!("operator.notify {channel}"));
        self.faults.inject("operator.notify").await?;
        if !self.channels.contains(channel) {
            return Err(CapError::NotFound(format!(
                "notify channel {channel:?} is not configured"
            )));
        }
        lock(&self.sent).push((channel.to_owned(), message.to_owned()));
        Ok(())
    }
}
