//! drhost runs disaster-recovery scenarios as sandboxed WebAssembly
//! components.
//!
//! A scenario plugin (world `scenario` of the `dr:recovery` WIT package)
//! describes its steps; the [`runner`] drives them one by one, each in a
//! fresh instance inside a time box, and every capability call the plugin
//! makes goes through the [`gate`]: [`policy`] check, [`audit`] intent,
//! dry-run interception, per-call timeout, backend, audit outcome. Backends
//! are real or mock ([`fixture`]); nothing else changes between a test, a
//! drill and an incident. See ARCHITECTURE.md for the map.

pub mod audit;
pub mod audit_mirror;
pub mod backends;
pub mod bindings;
pub mod capability;
pub mod doctor;
pub mod engine;
pub mod exec;
pub mod fixture;
pub mod gate;
pub mod instance;
pub mod lease;
pub mod mock_faults;
pub mod plugin;
pub mod policy;
pub mod recovery_report;
pub mod redact;
pub mod report;
pub mod resume;
pub mod retry;
pub mod runbook;
pub mod runner;
pub mod runs;
pub mod sim;
