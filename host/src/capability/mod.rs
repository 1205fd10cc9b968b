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
pub mod net_guard;
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
    /// Called by the gate after each mutation reached its backend and
    /// before its outcome is recorded: a run on mocks saves the simulated
    /// world there (see [`crate::fixture::MockEnv::world`]). An error is a
    /// trap, as an audit failure is.
    pub after_mutation: Option<AfterMutation>,
}

/// See [`Capabilities::after_mutation`].
pub type AfterMutation = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

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
            after_mutation: None,
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
    /// A backend that cannot be set up (missing credentials).
    pub fn live(
        runbook: &crate::runbook::Runbook,
        run_id: &str,
        approver: Arc<dyn operator::Approver>,
        progress: postgres::restore::Progress,
    ) -> Result<Capabilities, LiveError> {
        let mut caps = Capabilities::unavailable(
            "this drhost has no real backend for it yet (use --mock, or a fixture with `live = [...]`)",
            approver,
        );
        let all: Vec<String> = LIVE_CAPABILITIES.iter().map(|s| (*s).to_owned()).collect();
        caps.use_live(&all, runbook, run_id, progress, false)?;
        Ok(caps)
    }

    /// Replaces the backends of `names` (see [`LIVE_CAPABILITIES`]) with the
    /// runbook's real ones. With `required`, a name the runbook does not
    /// configure is an error; otherwise it answers `unavailable`.
    ///
    /// # Errors
    /// See above.
    pub fn use_live(
        &mut self,
        names: &[String],
        runbook: &crate::runbook::Runbook,
        run_id: &str,
        progress: postgres::restore::Progress,
        required: bool,
    ) -> Result<(), LiveError> {
        install_crypto_provider();
        let backends = &runbook.backends;
        let store = match &backends.object_store {
            Some(cfg) => Some(Arc::new(
                object_store::live::LiveObjectStore::new(cfg.clone())
                    .map_err(|e| LiveError(format!("[backends.object_store]: {e}")))?,
            )),
            None => None,
        };
        let missing = |name: &str, section: &str| -> Result<Arc<Unavailable>, LiveError> {
            if required {
                Err(LiveError(format!(
                    "{name} is to be live but the runbook has no [backends.{section}]"
                )))
            } else {
                Ok(Arc::new(Unavailable(format!(
                    "not configured: add [backends.{section}] to the runbook"
                ))))
            }
        };
        for name in names {
            match name.as_str() {
                "object-store" => match &store {
                    Some(s) => self.object_store = s.clone(),
                    None => self.object_store = missing(name, "object_store")?,
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
                    None => self.postgres = missing(name, "postgres")?,
                },
                "k8s" => match &backends.k8s {
                    Some(settings) => {
                        let grant = runbook.grants.k8s.clone().unwrap_or_default();
                        let guard: k8s::live::ObjectGuard =
                            Arc::new(move |kind: &str, ns: &str, name: &str| {
                                grant.bundle_object(kind, ns, name)
                            });
                        self.k8s = Arc::new(k8s::live::ConnectOnUse::new(settings.clone(), guard));
                    }
                    None => self.k8s = missing(name, "k8s")?,
                },
                "health" => match &backends.health {
                    Some(targets) => {
                        self.health = Arc::new(
                            health::live::LiveHealth::new(targets.clone())
                                .map_err(|e| LiveError(format!("[backends.health]: {e}")))?,
                        );
                    }
                    None => self.health = missing(name, "health")?,
                },
                "notify" => match &backends.notify {
                    Some(n) => {
                        self.notify = Arc::new(operator::webhook::WebhookNotifier::new(
                            n.channels.clone(),
                            n.required.clone(),
                        ));
                    }
                    None => self.notify = missing(name, "notify")?,
                },
                other => {
                    return Err(LiveError(format!(
                        "{other:?} has no real backend (known: {})",
                        LIVE_CAPABILITIES.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Capabilities with a real backend (`notify` is `operator.notify`).
pub const LIVE_CAPABILITIES: &[&str] = &["postgres", "object-store", "k8s", "health", "notify"];

/// Makes rustls' ring provider the process default, once. The dependency
/// graph enables both ring (kube, reqwest) and aws-lc-rs (aws-sdk-s3), and
/// rustls refuses to guess between two: without a default, the first
/// client that does not name its provider panics.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another default is already installed: that one stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
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
