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
