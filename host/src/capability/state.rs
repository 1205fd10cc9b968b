//! The `state` capability: the run's small key/value store. Each step runs
//! in a fresh instance, so this is how a step hands facts to later ones
//! (previous replica counts, the chosen backup). When the run has a state
//! file, every change is written to it atomically (temp file, fsync,
//! rename) before the call returns, so the values survive a crash.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::bindings::CapError;
use crate::bindings::state::Host;
use crate::fixture::lock;
use crate::instance::PluginCtx;
use crate::policy::Op;

/// Longest key.
pub const MAX_KEY_BYTES: usize = 256;
/// Longest value.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Total of keys and values.
pub const MAX_TOTAL_BYTES: usize = 1024 * 1024;

/// The run's state: in memory, optionally persisted to a JSON file.
#[derive(Debug, Default)]
pub struct StateStore {
    map: Mutex<BTreeMap<String, String>>,
    file: Option<PathBuf>,
}

impl StateStore {
    /// A store persisted at `file` (loaded if it exists).
    ///
    /// # Errors
    /// The file exists but cannot be read or is not a JSON object of strings.
    pub fn persistent(file: &Path) -> Result<StateStore, String> {
        let map = match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("state file {} is malformed: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("cannot read state file {}: {e}", file.display())),
        };
        Ok(StateStore {
            map: Mutex::new(map),
            file: Some(file.to_owned()),
        })
    }

    /// A copy of every entry.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        lock(&self.map).clone()
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        lock(&self.map).get(key).cloned()
    }

    /// Stores a value, enforcing the size limits.
    ///
    /// # Errors
    /// `invalid` past a limit; `failed` if the state file cannot be written
    /// (the in-memory value is then left unchanged).
    pub fn set(&self, key: &str, value: &str) -> Result<(), CapError> {
        check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(CapError::Invalid(format!(
                "state value for {key:?} is {} bytes; the limit is {MAX_VALUE_BYTES}",
                value.len()
            )));
        }
        let mut map = lock(&self.map);
        let total: usize = map
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + key.len()
            + value.len();
        if total > MAX_TOTAL_BYTES {
            return Err(CapError::Invalid(format!(
                "state would hold {total} bytes; the limit is {MAX_TOTAL_BYTES}"
            )));
        }
        let old = map.insert(key.to_owned(), value.to_owned());
        if let Err(e) = self.persist(&map) {
            match old {
                Some(v) => map.insert(key.to_owned(), v),
                None => map.remove(key),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Removes a key.
    ///
    /// # Errors
    /// `invalid` for a bad key; `failed` if the state file cannot be written.
    pub fn delete(&self, key: &str) -> Result<(), CapError> {
        check_key(key)?;
        let mut map = lock(&self.map);
        if let Some(old) = map.remove(key)
            && let Err(e) = self.persist(&map)
        {
            map.insert(key.to_owned(), old);
            return Err(e);
        }
        Ok(())
    }

    fn persist(&self, map: &BTreeMap<String, String>) -> Result<(), CapError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let fail = |e: std::io::Error| {
            CapError::Failed(format!("cannot write state file {}: {e}", file.display()))
        };
        let tmp = file.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(map).map_err(|e| CapError::Failed(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).map_err(fail)?;
        f.write_all(&bytes).map_err(fail)?;
        f.sync_data().map_err(fail)?;
        std::fs::rename(&tmp, file).map_err(fail)?;
        Ok(())
    }
}

fn check_key(key: &str) -> Result<(), CapError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(CapError::Invalid(format!(
            "state key must be 1 to {MAX_KEY_BYTES} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

impl Host for PluginCtx {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, CapError>> {
        let store = self.caps().state.clone();
        let op = Op::StateGet { key: &key };
        self.call(op, async { Ok(store.get(&key)) }, None).await
    }

    async fn set(&mut self, key: String, value: String) -> wasmtime::Result<Result<(), CapError>> {
        let store = self.caps().state.clone();
        let op = Op::StateSet {
            key: &key,
            bytes: value.len(),
        };
        self.call(op, async { store.set(&key, &value) }, None).await
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), CapError>> {
        let store = self.caps().state.clone();
        let op = Op::StateDelete { key: &key };
        self.call(op, async { store.delete(&key) }, None).await
    }
}
