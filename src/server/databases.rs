//! waly's schema in each database it serves: applied once per database, before the first session there
//! relays anything, so every write is captured from the first one on.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::NoTls;

use crate::config::Config;
use crate::migrate::{self, MigrateError};
use crate::wire::{PgError, SqlState};

/// Databases whose migrations are known to be applied by this process, with their OIDs.
#[derive(Default)]
pub struct Databases {
    ready: Mutex<HashMap<String, Arc<Mutex<Option<u32>>>>>,
}

impl Databases {
    /// Applies waly's migrations to `database` unless this process already did, and returns the
    /// database's OID, which tells apart two databases created one after the other under one name.
    /// Concurrent first sessions of one database wait for one run; a failed run is retried by the next
    /// session.
    pub async fn ensure_migrated(&self, config: &Config, database: &str) -> Result<u32, PgError> {
        let slot = {
            let mut ready = self.ready.lock().await;
            Arc::clone(ready.entry(database.to_owned()).or_default())
        };
        let mut done = slot.lock().await;
        if let Some(oid) = *done {
            return Ok(oid);
        }
        let oid = apply(config, database).await?;
        *done = Some(oid);
        Ok(oid)
    }

    /// Forgets that `databases` were migrated: the next session of each applies the migrations again
    /// (which does nothing where the schema is still there). For a database dropped or renamed, so that
    /// one created anew under its name gets waly's schema.
    pub async fn forget(&self, databases: &[String]) {
        let mut ready = self.ready.lock().await;
        for database in databases {
            ready.remove(database);
        }
    }
}

async fn apply(config: &Config, database: &str) -> Result<u32, PgError> {
    let unavailable = |detail: String| {
        PgError::fatal(
            SqlState::CANNOT_CONNECT_NOW,
            format!("waly cannot install its schema in database \"{database}\""),
        )
        .with_detail(detail)
    };
    let (client, connection) = config
        .admin_connection(database)
        .connect(NoTls)
        .await
        .map_err(|e| {
            let reason = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |db| db.message().to_owned());
            unavailable(format!("connecting as \"{}\": {reason}", config.admin_user)).with_hint(
                "waly applies its migrations as admin_user (a superuser listed under users:).",
            )
        })?;
    let driver = tokio::spawn(connection);
    let result = migrate::migrate(&client).await;
    let oid = client
        .query_one(
            "select oid from pg_catalog.pg_database where datname = current_database()",
            &[],
        )
        .await
        .map(|row| row.get::<_, u32>(0));
    drop(client);
    let _ = driver.await;
    match result {
        Ok(report) => {
            if !report.applied.is_empty() {
                tracing::info!(%database, applied = ?report.applied, "waly's schema installed");
            }
            oid.map_err(|e| unavailable(format!("reading the database's oid: {e}")))
        }
        Err(e @ MigrateError::NotSuperuser { .. }) => {
            Err(unavailable(e.to_string()).with_hint("Set admin_user to a superuser role."))
        }
        Err(e) => Err(unavailable(e.to_string())),
    }
}
