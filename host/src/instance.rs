//! Per-instance state: what one `Store` holds while a plugin runs one step
//! (or `describe`).
//!
//! A fresh [`PluginCtx`] is built for every step: the WASI context is empty
//! (no preopened directories, no environment, no arguments, no network), the
//! memory limit comes from the runbook, and stdout/stderr go to bounded
//! in-memory captures whose contents reach the log and the audit trail after
//! the step, even when it trapped (that is how a guest panic message reaches
//! the operator).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::CapError;
use crate::bindings::log::Level;
use crate::capability::Capabilities;
use crate::fixture::lock;
use crate::gate::{Gate, SimFuture, StepScope};
use crate::policy::Op;

/// Bytes of stdout and of stderr kept per step.
pub const OUTPUT_CAPTURE_BYTES: usize = 64 * 1024;

/// The error a plugin gets for a capability call made outside a run
/// (from `describe`).
pub fn no_capabilities() -> CapError {
    CapError::Denied("no capabilities are available during describe()".into())
}

/// The data of one `Store`.
pub struct PluginCtx {
    gate: Option<Arc<Gate>>,
    caps: Capabilities,
    scope: Arc<StepScope>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
}

impl PluginCtx {
    /// Context for running a step through `gate`.
    pub fn for_step(
        gate: Arc<Gate>,
        scope: StepScope,
        memory_limit: usize,
        output: &StepOutput,
    ) -> PluginCtx {
        let caps = gate.caps().clone();
        Self::build(Some(gate), caps, scope, memory_limit, output)
    }

    /// Context for `describe`: every capability call is denied.
    pub fn for_describe(
        caps: Capabilities,
        memory_limit: usize,
        output: &StepOutput,
        deadline: tokio::time::Instant,
    ) -> PluginCtx {
        let scope = StepScope::new("describe", deadline);
        Self::build(None, caps, scope, memory_limit, output)
    }

    fn build(
        gate: Option<Arc<Gate>>,
        caps: Capabilities,
        scope: StepScope,
        memory_limit: usize,
        output: &StepOutput,
    ) -> PluginCtx {
        let wasi = WasiCtx::builder()
            .stdout(output.stdout.clone())
            .stderr(output.stderr.clone())
            .build();
        let limits = wasmtime::StoreLimitsBuilder::new()
            .memory_size(memory_limit)
            .trap_on_grow_failure(true)
            // A component is a fixed set of core instances (a wit-bindgen
            // plugin has a handful); these bounds leave room for larger
            // plugins while still capping what a store can hold.
            .instances(64)
            .tables(64)
            .memories(16)
            .build();
        PluginCtx {
            gate,
            caps,
            scope: Arc::new(scope),
            wasi,
            table: ResourceTable::new(),
            limits,
        }
    }

    /// The run's backends.
    pub fn caps(&self) -> &Capabilities {
        &self.caps
    }

    /// The gate, if this instance runs a step.
    pub fn gate_handle(&self) -> Option<Arc<Gate>> {
        self.gate.clone()
    }

    /// The step being run.
    pub fn step_id(&self) -> &str {
        &self.scope.step
    }

    /// `wanted`, clipped to what is left of the step's budget.
    pub fn clip(&self, wanted: Duration) -> Duration {
        wanted.min(self.scope.remaining())
    }

    /// Sends a call through the gate (see [`Gate::call`]). The returned
    /// future does not borrow `self` (the store data is not `Sync`).
    ///
    /// # Errors
    /// A trap when the gate traps.
    pub fn call<'a, T: serde::Serialize + serde::de::DeserializeOwned + Send + 'a>(
        &self,
        op: Op<'a>,
        real: impl Future<Output = Result<T, CapError>> + Send + 'a,
        dry: Option<SimFuture<'a, T>>,
    ) -> impl Future<Output = wasmtime::Result<Result<T, CapError>>> + Send + 'a {
        let gate = self.gate.clone();
        let scope = self.scope.clone();
        async move {
            match gate {
                Some(g) => g.call(&scope, op, real, dry).await,
                None => Ok(Err(no_capabilities())),
            }
        }
    }

    /// Sends a call that may be retried through the gate (see
    /// [`Gate::call_retrying`]): `make` builds the real call, once per
    /// attempt.
    ///
    /// # Errors
    /// A trap when the gate traps.
    pub fn call_retrying<'a, T, F, Fut>(
        &self,
        op: Op<'a>,
        make: F,
        dry: Option<SimFuture<'a, T>>,
    ) -> impl Future<Output = wasmtime::Result<Result<T, CapError>>> + Send + 'a
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + 'a,
        F: FnMut() -> Fut + Send + 'a,
        Fut: Future<Output = Result<T, CapError>> + Send + 'a,
    {
        let gate = self.gate.clone();
        let scope = self.scope.clone();
        async move {
            match gate {
                Some(g) => g.call_retrying(&scope, op, make, dry).await,
                None => Ok(Err(no_capabilities())),
            }
        }
    }

    /// A plugin log line.
    ///
    /// # Errors
    /// A trap when the audit log cannot be written.
    pub fn plugin_log(&self, level: Level, message: &str) -> wasmtime::Result<()> {
        match &self.gate {
            Some(g) => g.plugin_log(&self.scope.step, level, message),
            None => {
                let message = crate::redact::text(message);
                tracing::info!(target: "plugin", "describe: {}: {message}", level.as_str());
                Ok(())
            }
        }
    }
}

impl WasiView for PluginCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The stdout and stderr captures of one step.
#[derive(Clone, Default)]
pub struct StepOutput {
    /// Guest stdout.
    pub stdout: Capture,
    /// Guest stderr (panic messages land here).
    pub stderr: Capture,
}

/// A bounded in-memory sink for a guest stream: keeps the first
/// [`OUTPUT_CAPTURE_BYTES`] and counts the rest. Writes never fail, so a
/// chatty plugin is truncated rather than made to panic.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<CaptureBuf>>);

#[derive(Default)]
struct CaptureBuf {
    kept: Vec<u8>,
    dropped: u64,
}

impl Capture {
    fn push(&self, bytes: &[u8]) {
        let mut b = lock(&self.0);
        let room = OUTPUT_CAPTURE_BYTES.saturating_sub(b.kept.len());
        let n = room.min(bytes.len());
        b.kept.extend_from_slice(&bytes[..n]);
        b.dropped += (bytes.len() - n) as u64;
    }

    /// What was captured (lossy UTF-8), with a note when output was dropped.
    pub fn text(&self) -> String {
        let b = lock(&self.0);
        let mut s = String::from_utf8_lossy(&b.kept).into_owned();
        if b.dropped > 0 {
            s.push_str(&format!("\n[... {} more bytes dropped]", b.dropped));
        }
        s
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
