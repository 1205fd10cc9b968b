//! Mock PostgreSQL: databases that are healthy or corrupt, with row counts
//! and session counts. A restore reads the backup from the mock object store
//! (it must exist and not be corrupt), takes time proportional to its size,
//! and leaves the database healthy with the original kept for forensics.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use serde::Deserialize;

use super::PostgresBackend;
use crate::bindings::CapError;
use crate::bindings::postgres::{Check, IntegrityReport, RestoreReport};
use crate::capability::object_store::mock::MockObjectStore;
use crate::fixture::{MockLog, lock};
use crate::mock_faults::Faults;

/// `[postgres]` in a fixture.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresFixture {
    /// Restore speed in MB/s (default: instant).
    pub restore_mb_per_s: Option<f64>,
    /// Databases on the simulated server.
    #[serde(default)]
    pub databases: Vec<DatabaseFixture>,
    /// Answers to read-only queries: SQL text -> rows.
    #[serde(default)]
    pub queries: BTreeMap<String, Vec<Vec<String>>>,
}

/// One `[[postgres.databases]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseFixture {
    /// Database name.
    pub name: String,
    /// Whether amcheck finds it intact (default true).
    pub healthy: Option<bool>,
    /// What amcheck reports when it is not.
    pub corruption: Option<String>,
    /// Row counts per table.
    #[serde(default)]
    pub tables: BTreeMap<String, u64>,
    /// Open sessions.
    #[serde(default)]
    pub connections: u32,
    /// After a restore, the database is still unhealthy (a bad backup).
    #[serde(default)]
    pub stays_corrupt: bool,
}

#[derive(Debug, Clone, serde::Serialize, Deserialize)]
struct Database {
    healthy: bool,
    corruption: String,
    tables: BTreeMap<String, u64>,
    connections: u32,
    stays_corrupt: bool,
    restored_from: Option<String>,
}

/// The simulated server.
pub struct MockPostgres {
    databases: Mutex<BTreeMap<String, Database>>,
    queries: BTreeMap<String, Vec<Vec<String>>>,
    restore_rate: Option<f64>,
    objects: Arc<MockObjectStore>,
    faults: Faults,
    log: MockLog,
}

/// What a test can read back about a simulated database.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseState {
    /// amcheck would pass.
    pub healthy: bool,
    /// `bucket/key` of the last restore, if any.
    pub restored_from: Option<String>,
    /// Open sessions.
    pub connections: u32,
}

impl MockPostgres {
    /// Builds the simulation from its fixture section.
    ///
    /// # Errors
    /// A message naming the bad field.
    pub fn new(
        f: PostgresFixture,
        objects: Arc<MockObjectStore>,
        faults: Faults,
        log: MockLog,
    ) -> Result<MockPostgres, String> {
        if let Some(r) = f.restore_mb_per_s
            && !(r > 0.0 && r.is_finite())
        {
            return Err(format!(
                "postgres.restore_mb_per_s must be positive, got {r}"
            ));
        }
        let databases = f
            .databases
            .into_iter()
            .map(|d| {
                let healthy = d.healthy.unwrap_or(true);
                (
                    d.name,
                    Database {
                        healthy,
                        corruption: d
                            .corruption
                            .unwrap_or_else(|| "index corruption found by bt_index_check".into()),
                        tables: d.tables,
                        connections: d.connections,
                        stays_corrupt: d.stays_corrupt,
                        restored_from: None,
                    },
                )
            })
            .collect();
        Ok(MockPostgres {
            databases: Mutex::new(databases),
            queries: f.queries,
            restore_rate: f.restore_mb_per_s,
            objects,
            faults,
            log,
        })
    }

    /// The simulated server's databases, for a resumed run (see
    /// [`crate::fixture::MockEnv::world`]).
    pub fn world(&self) -> serde_json::Value {
        serde_json::to_value(&*lock(&self.databases)).unwrap_or_default()
    }

    /// Loads what [`MockPostgres::world`] saved.
    ///
    /// # Errors
    /// A message naming the malformed part.
    pub fn load_world(&self, world: &serde_json::Value) -> Result<(), String> {
        let databases: BTreeMap<String, Database> =
            serde_json::from_value(world.clone()).map_err(|e| format!("postgres: {e}"))?;
        *lock(&self.databases) = databases;
        Ok(())
    }

    /// State of a simulated database (for tests).
    pub fn database(&self, name: &str) -> Option<DatabaseState> {
        lock(&self.databases).get(name).map(|d| DatabaseState {
            healthy: d.healthy,
            restored_from: d.restored_from.clone(),
            connections: d.connections,
        })
    }

    async fn enter(&self, op: &str, detail: String) -> Result<(), CapError> {
        self.log.record(format!("postgres.{op} {detail}"));
        self.faults.inject(&format!("postgres.{op}")).await
    }

    fn not_found(database: &str) -> CapError {
        CapError::NotFound(format!("database {database:?} does not exist"))
    }
}

#[async_trait]
impl PostgresBackend for MockPostgres {
    async fn restore(
        &self,
        database: &str,
        bucket: &str,
        key: &str,
    ) -> Result<RestoreReport, CapError> {
        self.enter("restore", format!("{database} {bucket}/{key}"))
            .await?;
        let started = Instant::now();
        let object = self
            .objects
            .find(bucket, key)
            .cloned()
            .ok_or_else(|| CapError::NotFound(format!("backup {bucket}/{key} not found")))?;
        if object.corrupt {
            return Err(CapError::Failed(format!(
                "backup {bucket}/{key} is corrupt: checksum mismatch; the original database is untouched"
            )));
        }
        if let Some(rate) = self.restore_rate {
            let secs = object.size as f64 / (rate * 1_000_000.0);
            crate::sim::sleep(Duration::from_secs_f64(secs)).await;
        }
        let mut dbs = lock(&self.databases);
        // Like the live restore, a database that does not exist (lost with
        // its server) is created from the backup; then nothing is kept.
        let existed = dbs.contains_key(database);
        let db = dbs.entry(database.to_owned()).or_insert_with(|| Database {
            healthy: true,
            corruption: String::new(),
            tables: BTreeMap::new(),
            connections: 0,
            stays_corrupt: false,
            restored_from: None,
        });
        db.healthy = !db.stays_corrupt;
        db.connections = 0;
        db.restored_from = Some(format!("{bucket}/{key}"));
        Ok(RestoreReport {
            database: database.to_owned(),
            source: format!("{bucket}/{key}"),
            bytes: object.size,
            tables: db.tables.len() as u32,
            kept_as: existed.then(|| format!("{database}_before_restore")),
            duration_ms: started.elapsed().as_millis() as u64,
            phases: Vec::new(),
        })
    }

    async fn integrity_check(&self, database: &str) -> Result<IntegrityReport, CapError> {
        self.enter("integrity-check", database.to_owned()).await?;
        let dbs = lock(&self.databases);
        let db = dbs.get(database).ok_or_else(|| Self::not_found(database))?;
        let mut checks = vec![
            Check {
                name: "connectivity".into(),
                ok: true,
                detail: "connected (simulated)".into(),
            },
            Check {
                name: "amcheck".into(),
                ok: db.healthy,
                detail: if db.healthy {
                    "all B-tree indexes intact".into()
                } else {
                    db.corruption.clone()
                },
            },
        ];
        for (table, rows) in &db.tables {
            checks.push(Check {
                name: format!("rows:{table}"),
                ok: *rows > 0,
                detail: format!("{rows} rows"),
            });
        }
        Ok(IntegrityReport {
            database: database.to_owned(),
            healthy: checks.iter().all(|c| c.ok),
            checks,
        })
    }

    async fn query(&self, database: &str, sql: &str) -> Result<Vec<Vec<String>>, CapError> {
        self.enter("query", format!("{database} {sql}")).await?;
        if !lock(&self.databases).contains_key(database) {
            return Err(Self::not_found(database));
        }
        self.queries.get(sql.trim()).cloned().ok_or_else(|| {
            CapError::Invalid(format!(
                "the mock has no answer for {sql:?}; add it to [postgres.queries] in the fixture"
            ))
        })
    }

    async fn terminate_connections(&self, database: &str) -> Result<u32, CapError> {
        self.enter("terminate-connections", database.to_owned())
            .await?;
        let mut dbs = lock(&self.databases);
        let db = dbs
            .get_mut(database)
            .ok_or_else(|| Self::not_found(database))?;
        Ok(std::mem::take(&mut db.connections))
    }
}
