//! Loading a plugin: read, digest, compile (or load from cache), check its
//! imports against the contract and the grants, ask it to `describe` itself,
//! and check its identity against the runbook's pin.
//!
//! Architecture invariant: everything that can be refused is refused here,
//! before any step runs: a file that is not a component, an import outside
//! `dr:recovery` and the inert WASI plumbing a `wasm32-wasip2` binary always
//! carries, a `dr:recovery` version this host does not implement, an
//! interface the runbook does not grant, a name/version/sha256 that does not
//! match the pin.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker};

use crate::audit::PluginIdentity;
use crate::bindings::{Scenario, ScenarioInfo, ScenarioPre, WIT_PACKAGE, WIT_VERSION};
use crate::capability::Capabilities;
use crate::capability::operator::RefuseApprover;
use crate::engine::{DrEngine, LoadSource};
use crate::instance::{PluginCtx, StepOutput};
use crate::policy::Grants;
use crate::runbook::PluginPin;

/// Time box for `describe()`.
pub const DESCRIBE_BUDGET: Duration = Duration::from_secs(2);

/// WASI interfaces a `wasm32-wasip2` Rust binary imports even when unused.
/// They are linked to an empty context: no files, environment, arguments,
/// sockets or network; stdout/stderr go to bounded captures.
const INERT_WASI: &[&str] = &[
    "wasi:io/poll",
    "wasi:io/error",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];

/// Why a plugin was refused. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file cannot be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a WebAssembly component.
    #[error("plugin {path} is not a WebAssembly component: {problem}")]
    NotAComponent {
        /// The plugin file.
        path: PathBuf,
        /// What it is instead.
        problem: String,
    },
    /// wasmtime could not compile or link it.
    #[error("plugin {path} cannot be loaded: {message}")]
    Invalid {
        /// The plugin file.
        path: PathBuf,
        /// wasmtime's message.
        message: String,
    },
    /// It imports something outside the contract.
    #[error(
        "plugin {path} imports `{import}`, which drhost never provides ({why}); refused before running anything"
    )]
    ForbiddenImport {
        /// The plugin file.
        path: PathBuf,
        /// The import name.
        import: String,
        /// Why it is refused.
        why: String,
    },
    /// It was built against an incompatible contract version.
    #[error(
        "plugin {path} was built against {import} but this drhost implements {WIT_PACKAGE}@{WIT_VERSION}; rebuild the plugin against wit/ of this drhost (or use a drhost that implements that version)"
    )]
    WitVersion {
        /// The plugin file.
        path: PathBuf,
        /// The offending import.
        import: String,
    },
    /// It imports a contract interface the runbook does not grant.
    #[error(
        "plugin {path} imports `{import}` but the runbook {runbook} does not grant it: add [grants.{section}] (refused before running anything)"
    )]
    NotGranted {
        /// The plugin file.
        path: PathBuf,
        /// The import.
        import: String,
        /// The runbook config.
        runbook: PathBuf,
        /// Grant section to add.
        section: String,
    },
    /// `describe()` failed, trapped or timed out.
    #[error("plugin {path}: describe() failed: {message}")]
    Describe {
        /// The plugin file.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// Its identity does not match the runbook's pin.
    #[error(
        "plugin {path} is {found}, but the runbook {runbook} requires {required}; refusing to run it"
    )]
    Identity {
        /// The plugin file.
        path: PathBuf,
        /// What the plugin is.
        found: String,
        /// What the runbook pins.
        required: String,
        /// The runbook config.
        runbook: PathBuf,
    },
}

/// A compiled, inspected, described plugin.
pub struct Plugin {
    /// The component file.
    pub path: PathBuf,
    /// sha256 of the file (hex).
    pub sha256: String,
    /// Size of the file.
    pub size: u64,
    /// Its imports, as named in the component.
    pub imports: Vec<String>,
    /// The `dr:recovery` interfaces it imports (`k8s`, `log`, ...).
    pub contract_imports: Vec<String>,
    /// What `describe()` returned.
    pub info: ScenarioInfo,
    /// Compiled now or from cache.
    pub source: LoadSource,
    /// Pre-linked for fast per-step instantiation.
    pub pre: ScenarioPre<PluginCtx>,
}

impl Plugin {
    /// Name, version and digest for the audit log.
    pub fn identity(&self) -> PluginIdentity {
        PluginIdentity {
            name: self.info.name.clone(),
            version: self.info.version.clone(),
            sha256: self.sha256.clone(),
        }
    }
}

/// The linker every plugin instance is built from: WASI (empty context) and
/// the `dr:recovery` imports.
///
/// # Errors
/// Linking fails (a host bug).
pub fn linker(engine: &DrEngine) -> wasmtime::Result<Linker<PluginCtx>> {
    let mut linker = Linker::new(engine.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Scenario::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(&mut linker, |c| c)?;
    Ok(linker)
}

/// Loads, checks and describes the plugin at `path`.
///
/// # Errors
/// [`PluginError`] naming the file and the problem.
pub async fn load(
    engine: &DrEngine,
    linker: &Linker<PluginCtx>,
    path: &Path,
    memory_limit: usize,
) -> Result<Plugin, PluginError> {
    let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
        path: path.to_owned(),
        source,
    })?;
    check_magic(path, &bytes)?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let (component, source) =
        engine
            .load_component(&bytes, &sha256)
            .map_err(|message| PluginError::Invalid {
                path: path.to_owned(),
                message,
            })?;
    let (imports, contract_imports) = check_imports(engine, &component, path)?;
    let pre = linker
        .instantiate_pre(&component)
        .and_then(ScenarioPre::new)
        .map_err(|e| PluginError::Invalid {
            path: path.to_owned(),
            message: format!("{e:#}"),
        })?;
    let info = describe(engine, &pre, path, memory_limit).await?;
    Ok(Plugin {
        path: path.to_owned(),
        sha256,
        size: bytes.len() as u64,
        imports,
        contract_imports,
        info,
        source,
        pre,
    })
}

fn check_magic(path: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    let problem = if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        "it does not start with the WebAssembly magic bytes (truncated, or not wasm at all)"
    } else if bytes[4..8] == [1, 0, 0, 0] {
        "it is a core WebAssembly module; build plugins for wasm32-wasip2 (or wrap the module with `wasm-tools component new`)"
    } else if bytes[4..8] == [0x0d, 0, 1, 0] {
        return Ok(());
    } else {
        "it has an unknown WebAssembly version/layer"
    };
    Err(PluginError::NotAComponent {
        path: path.to_owned(),
        problem: problem.into(),
    })
}

/// Splits `ns:pkg/iface@ver` into (`ns:pkg`, `iface`, `ver`).
fn split_import(name: &str) -> (&str, &str, Option<&str>) {
    let (base, ver) = match name.split_once('@') {
        Some((b, v)) => (b, Some(v)),
        None => (name, None),
    };
    match base.split_once('/') {
        Some((pkg, iface)) => (pkg, iface, ver),
        None => (base, "", ver),
    }
}

fn check_imports(
    engine: &DrEngine,
    component: &Component,
    path: &Path,
) -> Result<(Vec<String>, Vec<String>), PluginError> {
    let host =
        semver::Version::parse(WIT_VERSION).unwrap_or_else(|_| semver::Version::new(0, 2, 0));
    let mut imports = Vec::new();
    let mut contract = Vec::new();
    for (name, _) in component.component_type().imports(engine.engine()) {
        let (pkg, iface, ver) = split_import(name);
        if pkg == WIT_PACKAGE {
            let compatible = ver
                .and_then(|v| semver::Version::parse(v).ok())
                .is_some_and(|v| {
                    v.major == host.major && (host.major > 0 || v.minor == host.minor) && v <= host
                });
            if !compatible {
                return Err(PluginError::WitVersion {
                    path: path.to_owned(),
                    import: name.to_owned(),
                });
            }
            contract.push(iface.to_owned());
        } else if !INERT_WASI.contains(&format!("{pkg}/{iface}").as_str()) {
            let why = match pkg {
                "wasi:filesystem" => "no file access: plugins reach data only through capabilities",
                "wasi:sockets" | "wasi:http" => {
                    "no network access: plugins reach services only through capabilities"
                }
                _ => "only dr:recovery interfaces and inert WASI plumbing are linked",
            };
            return Err(PluginError::ForbiddenImport {
                path: path.to_owned(),
                import: name.to_owned(),
                why: why.into(),
            });
        }
        imports.push(name.to_owned());
    }
    Ok((imports, contract))
}

/// Refuses a plugin importing a contract interface the runbook does not
/// grant.
///
/// # Errors
/// [`PluginError::NotGranted`] naming the first such import.
pub fn check_grants(plugin: &Plugin, grants: &Grants, runbook: &Path) -> Result<(), PluginError> {
    for iface in &plugin.contract_imports {
        if !grants.grants_interface(iface) {
            return Err(PluginError::NotGranted {
                path: plugin.path.clone(),
                import: format!("{WIT_PACKAGE}/{iface}@{WIT_VERSION}"),
                runbook: runbook.to_owned(),
                section: iface.replace('-', "_"),
            });
        }
    }
    Ok(())
}

/// Refuses a plugin whose name, version or digest does not match the pin.
///
/// # Errors
/// [`PluginError::Identity`].
pub fn check_pin(plugin: &Plugin, pin: &PluginPin, runbook: &Path) -> Result<(), PluginError> {
    let found = format!("{}@{}", plugin.info.name, plugin.info.version);
    let refuse = |required: String| PluginError::Identity {
        path: plugin.path.clone(),
        found: found.clone(),
        required,
        runbook: runbook.to_owned(),
    };
    let version_ok =
        semver::Version::parse(&plugin.info.version).is_ok_and(|v| pin.version.matches(&v));
    if plugin.info.name != pin.name || !version_ok {
        return Err(refuse(format!("{}@{}", pin.name, pin.version)));
    }
    if let Some(sha) = &pin.sha256
        && *sha != plugin.sha256
    {
        return Err(PluginError::Identity {
            path: plugin.path.clone(),
            found: format!("{found} with sha256 {}", plugin.sha256),
            required: format!("sha256 {sha}"),
            runbook: runbook.to_owned(),
        });
    }
    Ok(())
}

async fn describe(
    engine: &DrEngine,
    pre: &ScenarioPre<PluginCtx>,
    path: &Path,
    memory_limit: usize,
) -> Result<ScenarioInfo, PluginError> {
    let fail = |message: String| PluginError::Describe {
        path: path.to_owned(),
        message,
    };
    let output = StepOutput::default();
    let deadline = tokio::time::Instant::now() + DESCRIBE_BUDGET;
    let caps = Capabilities::unavailable(
        "no capabilities during describe()",
        std::sync::Arc::new(RefuseApprover),
    );
    let mut store = Store::new(
        engine.engine(),
        PluginCtx::for_describe(caps, memory_limit, &output, deadline),
    );
    crate::runner::arm_store(
        &mut store,
        crate::runner::real_time_fence(std::time::Instant::now() + DESCRIBE_BUDGET),
    );
    let call = async {
        let scenario = pre.instantiate_async(&mut store).await?;
        scenario.call_describe(&mut store).await
    };
    let info = match tokio::time::timeout_at(deadline, call).await {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => {
            return Err(fail(crate::runner::explain_trap(
                &e,
                &output,
                DESCRIBE_BUDGET,
            )));
        }
        Err(_) => return Err(fail(format!("did not return within {DESCRIBE_BUDGET:?}"))),
    };
    validate_info(&info).map_err(fail)?;
    Ok(info)
}

fn validate_info(info: &ScenarioInfo) -> Result<(), String> {
    if info.name.is_empty() {
        return Err("empty plugin name".into());
    }
    semver::Version::parse(&info.version)
        .map_err(|e| format!("version {:?} is not semver: {e}", info.version))?;
    if info.steps.is_empty() {
        return Err("no steps".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in &info.steps {
        if s.id.is_empty() || !seen.insert(s.id.as_str()) {
            return Err(format!("step id {:?} is empty or duplicated", s.id));
        }
        if s.budget_ms == 0 {
            return Err(format!("step {:?} has a zero budget", s.id));
        }
    }
    Ok(())
}
