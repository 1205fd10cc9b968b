//! The one wasmtime `Engine` of the process: component model, async,
//! Cranelift, epoch interruption driven by one ticker thread, and the
//! compiled-plugin cache.
//!
//! Cache: a component is compiled once and serialized to
//! `<cache-dir>/<sha256 of the .wasm>-<engine compatibility hash>.cwasm`,
//! with a sidecar `.sha256` of the serialized bytes. Only files the host
//! wrote are loaded: the cache directory is created private (0700) and
//! refused if others can write to it, and a serialized file whose digest
//! does not match its sidecar is discarded and recompiled. Deserializing is
//! the one `unsafe` call in drhost (see [`DrEngine::load_component`]).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// How often the epoch advances; the granularity of guest CPU time boxes.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Errors setting up the engine or its cache.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime rejected the configuration.
    #[error("cannot configure the WebAssembly engine: {0}")]
    Config(String),
    /// The cache directory is unusable.
    #[error("compiled-plugin cache {path}: {problem}")]
    Cache {
        /// The cache directory.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// Where a loaded component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Compiled now (and written to the cache if there is one).
    Compiled,
    /// Deserialized from the cache.
    Cache,
}

/// The engine, its epoch ticker and its cache.
pub struct DrEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    compilations: AtomicU64,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for DrEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl DrEngine {
    /// Builds the engine and starts the epoch ticker. `cache_dir` `None`
    /// disables the compiled-plugin cache.
    ///
    /// # Errors
    /// The engine cannot be configured, or the cache directory cannot be
    /// created or is writable by others.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<DrEngine, EngineError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| EngineError::Config(e.to_string()))?;
        if let Some(dir) = &cache_dir {
            prepare_cache_dir(dir)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (ticker_engine, ticker_stop) = (engine.weak(), stop.clone());
        std::thread::Builder::new()
            .name("drhost-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| EngineError::Config(format!("cannot start the epoch ticker: {e}")))?;
        Ok(DrEngine {
            engine,
            cache_dir,
            compilations: AtomicU64::new(0),
            stop_ticker: stop,
        })
    }

    /// The default cache directory: `$DRHOST_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/drhost`, else `~/.cache/drhost`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        if let Some(d) = std::env::var_os("DRHOST_CACHE_DIR") {
            return Some(PathBuf::from(d));
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return Some(PathBuf::from(d).join("drhost"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("drhost"))
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// How many components this engine compiled (cache misses).
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// Compiles `bytes` (whose sha256 is `sha256`), or loads the compiled
    /// form from the cache.
    ///
    /// # Errors
    /// The bytes are not a valid component (wasmtime's message).
    pub fn load_component(
        &self,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<(Component, LoadSource), String> {
        let entry = self.cache_entry(sha256);
        if let Some(path) = &entry
            && let Some(component) = self.read_cache(path)
        {
            return Ok((component, LoadSource::Cache));
        }
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let component = Component::new(&self.engine, bytes).map_err(|e| format!("{e:#}"))?;
        if let Some(path) = &entry
            && let Err(e) = self.write_cache(path, &component)
        {
            tracing::warn!(
                "could not write compiled plugin to cache {}: {e}",
                path.display()
            );
        }
        Ok((component, LoadSource::Compiled))
    }

    fn cache_entry(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        Some(dir.join(format!("{sha256}-{:016x}.cwasm", h.finish())))
    }

    fn read_cache(&self, path: &Path) -> Option<Component> {
        let bytes = std::fs::read(path).ok()?;
        let expected = std::fs::read_to_string(sidecar(path)).ok()?;
        if hex::encode(Sha256::digest(&bytes)) != expected.trim() {
            tracing::warn!(
                "compiled plugin {} does not match its recorded digest; recompiling",
                path.display()
            );
            return None;
        }
        // SAFETY: wasmtime requires that deserialized bytes were produced by
        // `Engine::precompile_*`/`Component::serialize` of a compatible engine
        // and not tampered with. The file name carries the engine's
        // compatibility hash, the directory is private to this user (checked
        // at startup), and the bytes match the digest this host recorded when
        // it wrote them.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.engine, &bytes) };
        match component {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(
                    "cannot load cached plugin {}: {e}; recompiling",
                    path.display()
                );
                None
            }
        }
    }

    fn write_cache(&self, path: &Path, component: &Component) -> Result<(), String> {
        let bytes = component.serialize().map_err(|e| e.to_string())?;
        let digest = hex::encode(Sha256::digest(&bytes));
        write_atomic(path, &bytes).map_err(|e| e.to_string())?;
        write_atomic(&sidecar(path), digest.as_bytes()).map_err(|e| e.to_string())?;
        Ok(())
    }
}

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

fn prepare_cache_dir(dir: &Path) -> Result<(), EngineError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let err = |problem: String| EngineError::Cache {
        path: dir.to_owned(),
        problem,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err(format!("cannot create it: {e}")))?;
    let meta = std::fs::metadata(dir).map_err(|e| err(format!("cannot inspect it: {e}")))?;
    if meta.mode() & 0o022 != 0 {
        return Err(err(format!(
            "is writable by group or others (mode {:o}); compiled code loaded from it must come from this host only: chmod 700 it or pick another --cache-dir",
            meta.mode() & 0o777
        )));
    }
    if let Ok(me) = std::fs::metadata("/proc/self")
        && me.uid() != meta.uid()
    {
        return Err(err(format!(
            "belongs to uid {}, not to this user (uid {})",
            meta.uid(),
            me.uid()
        )));
    }
    Ok(())
}
