//! Resolving prepared transactions that no session will finish: at start, those a crashed waly left
//! behind; while running, those whose session lost its backend between PREPARE and COMMIT PREPARED.
//!
//! The rule is invariant 2: a prepared `waly_` transaction whose record is in the log is committed, any
//! other is rolled back. A running process resolves only gids of earlier processes (see
//! [`super::gid`]) plus the ones its own sessions hand over, so it never races a session mid-commit.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::NoTls;

use super::{GID_PREFIX, gid_owner, owner_log};
use crate::config::Config;
use crate::log::{Log, LogError};
use crate::record::Record;

/// What start-up recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub committed: Vec<String>,
    pub rolled_back: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("cannot connect to Postgres as {user} to resolve prepared transactions: {}", describe(.source))]
    Connect {
        user: String,
        source: tokio_postgres::Error,
    },
    #[error("cannot resolve prepared transactions: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("cannot read the log to resolve prepared transactions: {0}")]
    Log(#[from] LogError),
}

/// Postgres' own words for an error (tokio-postgres shows only "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// How far before a prepared transaction's PREPARE its record may sit in the log: the log stamps records
/// after PREPARE, so this only absorbs clock differences between Postgres' machine and waly's.
const CLOCK_MARGIN: Duration = Duration::from_secs(3600);

/// Resolves every prepared `waly_` transaction recorded for this log (`owner`'s log id) and not made by
/// the process `owner` itself.
pub async fn recover_at_start(
    config: &Config,
    log: &dyn Log,
    owner: &str,
) -> Result<RecoveryReport, RecoveryError> {
    let client = connect(config, "postgres").await?;
    let rows = client
        .query(
            "SELECT gid, database::text, (extract(epoch FROM prepared) * 1000000)::int8
               FROM pg_prepared_xacts WHERE starts_with(gid, $1)",
            &[&GID_PREFIX],
        )
        .await?;
    let mut by_database: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut earliest = i64::MAX;
    for row in rows {
        let gid: String = row.get(0);
        match gid_owner(&gid) {
            Some(o) if o != owner && owner_log(o) == owner_log(owner) => {}
            _ => continue,
        }
        earliest = earliest.min(row.get::<_, i64>(2));
        by_database.entry(row.get(1)).or_default().push(gid);
    }
    let mut report = RecoveryReport::default();
    if by_database.is_empty() {
        return Ok(report);
    }
    let wanted: HashSet<&str> = by_database.values().flatten().map(String::as_str).collect();
    let logged = logged_gids(log, &wanted, earliest - CLOCK_MARGIN.as_micros() as i64).await?;

    for (database, gids) in &by_database {
        let client = connect(config, database).await?;
        for gid in gids {
            let commit = logged.contains(gid.as_str());
            let sql = if commit {
                format!("COMMIT PREPARED '{gid}'")
            } else {
                format!("ROLLBACK PREPARED '{gid}'")
            };
            client.batch_execute(&sql).await?;
            if commit {
                tracing::info!(%database, %gid, "recovery: committed a prepared transaction whose record is in the log");
                report.committed.push(gid.clone());
            } else {
                tracing::info!(%database, %gid, "recovery: rolled back a prepared transaction that never reached the log");
                report.rolled_back.push(gid.clone());
            }
        }
    }
    Ok(report)
}

/// Which of `wanted` have a record in the log at or after `since_micros`.
async fn logged_gids(
    log: &dyn Log,
    wanted: &HashSet<&str>,
    since_micros: i64,
) -> Result<HashSet<String>, LogError> {
    let mut found = HashSet::new();
    let Some(mut from) = log.position_at(since_micros).await? else {
        return Ok(found);
    };
    loop {
        let entries = log.read(from, 1024).await?;
        let Some(last) = entries.last() else { break };
        from = last.position.next();
        for entry in &entries {
            match Record::from_json(&entry.payload) {
                Ok(record) if wanted.contains(record.gid.as_str()) => {
                    found.insert(record.gid);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(position = %entry.position, error = %e, "recovery: unreadable record skipped")
                }
            }
        }
        if from > log.end() || found.len() == wanted.len() {
            break;
        }
    }
    Ok(found)
}

async fn connect(config: &Config, database: &str) -> Result<tokio_postgres::Client, RecoveryError> {
    let (client, connection) = config
        .admin_connection(database)
        .connect(NoTls)
        .await
        .map_err(|source| RecoveryError::Connect {
            user: config.admin_user.clone(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "recovery connection ended");
        }
    });
    Ok(client)
}

/// Finishes prepared transactions handed over by sessions that lost their backend mid-commit, retrying
/// until Postgres answers (it may be restarting).
#[derive(Clone)]
pub struct Resolver {
    jobs: mpsc::UnboundedSender<Job>,
}

struct Job {
    database: String,
    gid: String,
    commit: bool,
}

impl Resolver {
    /// Starts the resolving task on the current runtime.
    pub fn start(config: Config) -> Resolver {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(job) = queue.recv().await {
                resolve_until_done(&config, &job).await;
            }
        });
        Resolver { jobs }
    }

    /// Commits (`commit`) or rolls back the prepared transaction `gid` in `database`, eventually.
    pub fn resolve(&self, database: &str, gid: &str, commit: bool) {
        tracing::warn!(%database, %gid, commit, "a session lost its backend mid-commit; resolving its prepared transaction");
        let _ = self.jobs.send(Job {
            database: database.to_owned(),
            gid: gid.to_owned(),
            commit,
        });
    }
}

async fn resolve_until_done(config: &Config, job: &Job) {
    let sql = if job.commit {
        format!("COMMIT PREPARED '{}'", job.gid)
    } else {
        format!("ROLLBACK PREPARED '{}'", job.gid)
    };
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            let client = connect(config, &job.database).await?;
            client.batch_execute(&sql).await?;
            Ok::<_, RecoveryError>(())
        };
        match attempt.await {
            Ok(()) => {
                tracing::info!(database = %job.database, gid = %job.gid, commit = job.commit, "prepared transaction resolved");
                return;
            }
            // 42704: no such prepared transaction (it was resolved already, or never prepared).
            Err(RecoveryError::Postgres(e)) if e.code().is_some_and(|c| c.code() == "42704") => {
                tracing::info!(database = %job.database, gid = %job.gid, "prepared transaction already resolved or never prepared");
                return;
            }
            Err(e) => {
                tracing::warn!(database = %job.database, gid = %job.gid, error = %e, "cannot resolve the prepared transaction yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
