//! The `postgres` capability: host implementation (through the gate), the
//! backend trait, and the mock.

pub mod archive;
pub mod checks;
pub mod live;
pub mod mock;
pub mod plain;
mod post_data;
pub mod restore;
pub mod source;

use async_trait::async_trait;

use crate::bindings::CapError;
use crate::bindings::postgres::{Host, IntegrityReport, RestoreReport};
use crate::instance::PluginCtx;
use crate::policy::Op;

/// PostgreSQL operations behind the `postgres` interface.
#[async_trait]
pub trait PostgresBackend: Send + Sync {
    /// Restores `database` from `bucket`/`key` (new database, verify, swap).
    async fn restore(
        &self,
        database: &str,
        bucket: &str,
        key: &str,
    ) -> Result<RestoreReport, CapError>;
    /// Connectivity, amcheck, validation queries.
    async fn integrity_check(&self, database: &str) -> Result<IntegrityReport, CapError>;
    /// One read-only statement; rows as text.
    async fn query(&self, database: &str, sql: &str) -> Result<Vec<Vec<String>>, CapError>;
    /// Terminates other sessions; returns how many.
    async fn terminate_connections(&self, database: &str) -> Result<u32, CapError>;
}

#[async_trait]
impl PostgresBackend for super::Unavailable {
    async fn restore(&self, _: &str, _: &str, _: &str) -> Result<RestoreReport, CapError> {
        Err(self.err("postgres"))
    }
    async fn integrity_check(&self, _: &str) -> Result<IntegrityReport, CapError> {
        Err(self.err("postgres"))
    }
    async fn query(&self, _: &str, _: &str) -> Result<Vec<Vec<String>>, CapError> {
        Err(self.err("postgres"))
    }
    async fn terminate_connections(&self, _: &str) -> Result<u32, CapError> {
        Err(self.err("postgres"))
    }
}

impl Host for PluginCtx {
    async fn restore(
        &mut self,
        database: String,
        bucket: String,
        key: String,
    ) -> wasmtime::Result<Result<RestoreReport, CapError>> {
        let b = self.caps().postgres.clone();
        let op = Op::PgRestore {
            database: &database,
            bucket: &bucket,
            key: &key,
        };
        let dry = async {
            Ok(RestoreReport {
                database: database.clone(),
                source: format!("{bucket}/{key}"),
                bytes: 0,
                tables: 0,
                kept_as: None,
                duration_ms: 0,
                phases: Vec::new(),
            })
        };
        self.call_retrying(
            op,
            || b.restore(&database, &bucket, &key),
            Some(Box::pin(dry)),
        )
        .await
    }

    async fn integrity_check(
        &mut self,
        database: String,
    ) -> wasmtime::Result<Result<IntegrityReport, CapError>> {
        let b = self.caps().postgres.clone();
        let op = Op::PgIntegrityCheck {
            database: &database,
        };
        self.call_retrying(op, || b.integrity_check(&database), None)
            .await
    }

    async fn query(
        &mut self,
        database: String,
        sql: String,
    ) -> wasmtime::Result<Result<Vec<Vec<String>>, CapError>> {
        let b = self.caps().postgres.clone();
        let op = Op::PgQuery {
            database: &database,
            sql: &sql,
        };
        self.call_retrying(op, || b.query(&database, &sql), None)
            .await
    }

    async fn terminate_connections(
        &mut self,
        database: String,
    ) -> wasmtime::Result<Result<u32, CapError>> {
        let b = self.caps().postgres.clone();
        let op = Op::PgTerminateConnections {
            database: &database,
        };
        let dry = async { Ok(0) };
        self.call_retrying(
            op,
            || b.terminate_connections(&database),
            Some(Box::pin(dry)),
        )
        .await
    }
}
