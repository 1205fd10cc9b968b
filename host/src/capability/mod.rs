//! The capabilities a plugin can be lent: one module per WIT interface.
//!
//! Each capability module holds exactly one bindgen `Host` implementation (on
//! [`crate::instance::PluginCtx`]) that sends every call through
//! [`crate::gate::Gate::call`], one object-safe backend trait
//! (`backend.rs`), and a mock backend (`mock.rs`: a stateful simulation
//! seeded from a fixture, recording every call, with injectable faults).
//! Swapping mock for real changes only the backend: policy, audit, time
//! boxes and dry-run behave the same in tests, drills and incidents.
//!
//! `log`, `state` and `clock` have no external backend: they are the run's
//! own bookkeeping, but they still go through the gate.

pub mod clock;
pub mod health;
pub mod k8s;
pub mod log;
pub mod object_store;
pub mod operator;
pub mod postgres;
pub mod state;

use std::sync::Arc;

/// Everything the gate can hand a call to: the backends of one run.
#[derive(Clone)]
pub struct Capabilities {
    /// Kubernetes backend.
    pub k8s: Arc<dyn k8s::K8sBackend>,
    /// PostgreSQL backend.
    pub postgres: Arc<dyn postgres::PostgresBackend>,
    /// Object-store backend.
    pub object_store: Arc<dyn object_store::ObjectStoreBackend>,
    /// HTTP health backend.
    pub health: Arc<dyn health::HealthBackend>,
    /// Notification channels.
    pub notify: Arc<dyn operator::NotifyBackend>,
    /// Who answers approvals and `operator.confirm`.
    pub approver: Arc<dyn operator::Approver>,
    /// The run's key/value state.
    pub state: Arc<state::StateStore>,
}

impl Capabilities {
    /// Capabilities where every external backend answers `unavailable`
    /// naming the backend: used by `describe` (which must not call out) and
    /// by real runs until a real backend exists for that capability.
    pub fn unavailable(reason: &str, approver: Arc<dyn operator::Approver>) -> Capabilities {
        let u = Arc::new(Unavailable(reason.to_owned()));
        Capabilities {
            k8s: u.clone(),
            postgres: u.clone(),
            object_store: u.clone(),
            health: u.clone(),
            notify: u,
            approver,
            state: Arc::new(state::StateStore::default()),
        }
    }
}

/// Why a real backend cannot be built from the runbook.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LiveError(pub String);

impl Capabilities {
    /// Real backends from the runbook's `[backends]` for `run_id`;
    /// interfaces without one answer `unavailable` naming what to configure.
    /// `progress` receives the restore's progress.
    ///
    /// # Errors
    /// An object store that cannot be set up (missing credentials).
    pub fn live(
        backends: &crate::backends::Backends,
        run_id: &str,
        approver: Arc<dyn operator::Approver>,
        progress: postgres::restore::Progress,
    ) -> Result<Capabilities, LiveError> {
        let mut caps = Capabilities::unavailable(
            "this drhost has no real backend for it yet (use --mock, or a fixture with `live = [...]`)",
            approver,
        );
        caps.use_live(
            &["postgres".to_owned(), "object-store".to_owned()],
            backends,
            run_id,
            progress,
            false,
        )?;
        Ok(caps)
    }

    /// Replaces the backends of `names` (`postgres`, `object-store`) with
    /// the runbook's real ones. With `required`, a name the runbook does not
    /// configure is an error; otherwise it answers `unavailable`.
    ///
    /// # Errors
    /// See above.
    pub fn use_live(
        &mut self,
        names: &[String],
        backends: &crate::backends::Backends,
        run_id: &str,
        progress: postgres::restore::Progress,
        required: bool,
    ) -> Result<(), LiveError> {
        let store = match &backends.object_store {
            Some(cfg) => Some(Arc::new(
                object_store::live::LiveObjectStore::new(cfg.clone())
                    .map_err(|e| LiveError(format!("[backends.object_store]: {e}")))?,
            )),
            None => None,
        };
        for name in names {
            match name.as_str() {
                "object-store" => match &store {
                    Some(s) => self.object_store = s.clone(),
                    None if required => {
                        return Err(LiveError(
                            "object-store is to be live but the runbook has no [backends.object_store]".into(),
                        ));
                    }
                    None => {
                        self.object_store = Arc::new(Unavailable(
                            "not configured: add [backends.object_store] to the runbook".into(),
                        ));
                    }
                },
                "postgres" => match &backends.postgres {
                    Some(settings) => {
                        self.postgres = Arc::new(postgres::live::LivePostgres::new(
                            settings.clone(),
                            store.clone(),
                            run_id,
                            progress.clone(),
                        ));
                    }
                    None if required => {
                        return Err(LiveError(
                            "postgres is to be live but the runbook has no [backends.postgres]"
                                .into(),
                        ));
                    }
                    None => {
                        self.postgres = Arc::new(Unavailable(
                            "not configured: add [backends.postgres] to the runbook".into(),
                        ));
                    }
                },
                other => return Err(LiveError(format!("{other:?} has no real backend"))),
            }
        }
        Ok(())
    }
}

/// A backend that is not configured: every call is `unavailable` with the
/// reason (never a silent success).
pub struct Unavailable(pub String);

impl Unavailable {
    fn err(&self, what: &str) -> crate::bindings::CapError {
        crate::bindings::CapError::Unavailable(format!("{what}: {}", self.0))
    }
}

/// `types` has no functions, but bindgen still wants its (empty) `Host`.
impl crate::bindings::types::Host for crate::instance::PluginCtx {}
