//! Resolving prepared transactions that no session will finish: at start, those a crashed waly left
//! behind; while running, those whose session lost its backend between PREPARE and COMMIT PREPARED.
//!
//! The rule is invariant 2: a prepared `waly_` transaction whose record is in the log is committed, any
//! other is rolled back. A running process resolves gids of earlier processes (see [`super::gid`]), the
//! ones its own sessions hand over, and its own that nothing holds any more ([`super::in_flight`]: a
//! backend that prepared after its session lost the connection), so it never races a session mid-commit.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::NoTls;

use super::decisions::Ticket;
use super::in_flight::{InFlight, is_claimed};
use super::{GID_PREFIX, gid_owner, owner_log};
use crate::config::Config;
use crate::log::{Log, LogError, LogRouter, Position};
use crate::record::LogRecord;

/// What start-up recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub committed: Vec<String>,
    pub rolled_back: Vec<String>,
    /// Not in the log yet, but a dead process's append may still land (Kafka): decided by a later pass.
    pub deferred: Vec<String>,
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

/// Resolves every prepared `waly_` transaction recorded for this log (`owner`'s log id), except those the
/// process `owner` itself still holds ([`is_claimed`]).
///
/// A transaction whose record is in the log is committed at once. One whose record is not is rolled back
/// only once its log has settled since this process started (`started`): with Kafka, an append the dead
/// process had sent may still reach the topic for a while ([`Log::in_doubt_settles_after`]), and rolling
/// back before it lands would leave a logged transaction uncommitted. Until then it stays prepared and is
/// reported as deferred, for a later pass.
pub async fn recover_at_start(
    config: &Config,
    logs: &dyn LogRouter,
    owner: &str,
    started: std::time::Instant,
) -> Result<RecoveryReport, RecoveryError> {
    let client = connect(config, "postgres").await?;
    let rows = client
        .query(
            "SELECT gid, database::text, (extract(epoch FROM prepared) * 1000000)::int8
               FROM pg_prepared_xacts WHERE starts_with(gid, $1)",
            &[&GID_PREFIX],
        )
        .await?;
    // Per database: its gids and the earliest PREPARE among them.
    let mut by_database: BTreeMap<String, (Vec<String>, i64)> = BTreeMap::new();
    for row in rows {
        let gid: String = row.get(0);
        match gid_owner(&gid) {
            Some(o) if owner_log(o) == owner_log(owner) && (o != owner || !is_claimed(&gid)) => {}
            _ => continue,
        }
        let entry = by_database
            .entry(row.get(1))
            .or_insert((Vec::new(), i64::MAX));
        entry.0.push(gid);
        entry.1 = entry.1.min(row.get::<_, i64>(2));
    }
    let mut report = RecoveryReport::default();
    for (database, (gids, earliest)) in &by_database {
        let wanted: HashSet<&str> = gids.iter().map(String::as_str).collect();
        let log = logs.log_for(database);
        let logged = logged_gids(
            log.as_ref(),
            &wanted,
            earliest - CLOCK_MARGIN.as_micros() as i64,
        )
        .await?;
        let client = connect(config, database).await?;
        let settled = log
            .in_doubt_settles_after()
            .is_none_or(|d| started.elapsed() >= d);
        for gid in gids {
            let commit = logged.contains(gid.as_str());
            if !commit && !settled {
                tracing::debug!(%database, %gid, "recovery: a prepared transaction not in the log yet; deciding once the log has settled");
                report.deferred.push(gid.clone());
                continue;
            }
            let sql = if commit {
                format!("COMMIT PREPARED '{gid}'")
            } else {
                format!("ROLLBACK PREPARED '{gid}'")
            };
            match client.batch_execute(&sql).await {
                Ok(()) => {}
                // A gid of this process that its session finished after the listing above.
                Err(e) if is_undefined_gid(&e) => continue,
                Err(e) => return Err(e.into()),
            }
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

/// 42704: no such prepared transaction (resolved already, or never prepared).
fn is_undefined_gid(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == "42704")
}

/// Which of `wanted` have a record in the log at or after `since_micros`.
async fn logged_gids(
    log: &dyn Log,
    wanted: &HashSet<&str>,
    since_micros: i64,
) -> Result<HashSet<String>, LogError> {
    match log.position_at(since_micros).await? {
        Some(from) => logged_gids_from(log, wanted, from).await,
        None => Ok(HashSet::new()),
    }
}

/// Which of `wanted` have a record in the log at or after position `from`.
async fn logged_gids_from(
    log: &dyn Log,
    wanted: &HashSet<&str>,
    mut from: Position,
) -> Result<HashSet<String>, LogError> {
    let mut found = HashSet::new();
    let first = from;
    loop {
        let entries = log.read(from, 1024).await?;
        let Some(last) = entries.last() else {
            tracing::debug!(from = %first, to = %from, "read the log for prepared transactions");
            break;
        };
        from = last.position.next();
        for entry in &entries {
            match LogRecord::from_json(&entry.payload) {
                Ok(LogRecord::Transaction(record)) if wanted.contains(record.gid.as_str()) => {
                    found.insert(record.gid);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(position = %entry.position, error = %e, "recovery: unreadable record skipped")
                }
            }
        }
        if found.len() == wanted.len() {
            break;
        }
    }
    Ok(found)
}

pub(super) async fn connect(
    config: &Config,
    database: &str,
) -> Result<tokio_postgres::Client, RecoveryError> {
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
    config: Option<Config>,
}

struct Job {
    database: String,
    /// Held until the job is done, so recovery passes leave the gid to it.
    gid: InFlight,
    commit: bool,
}

impl Resolver {
    /// A resolver that resolves nothing (tests of the bookkeeping alone): tickets handed to it stay
    /// open, holding their writer's watermark back.
    pub fn detached() -> Resolver {
        let (jobs, _) = mpsc::unbounded_channel::<Job>();
        Resolver { jobs, config: None }
    }

    /// Decides a direct commit whose session could not learn how its COMMIT ended (the connection
    /// broke after the append, or the session ended mid-commit): Postgres' `pg_xact_status` tells.
    pub fn decide_direct(&self, ticket: Ticket) {
        let Some(config) = self.config.clone() else {
            tracing::error!(
                txid = ticket.txid(),
                "no resolver for an undecided direct commit; it is decided at the next start"
            );
            ticket.leave_open();
            return;
        };
        tracing::warn!(database = ticket.database(), txid = ticket.txid(), position = ?ticket.position().map(|p| p.0), "a direct commit's outcome is unknown; asking Postgres");
        tokio::spawn(decide_direct_until_done(config, ticket));
    }

    /// Starts the resolving task on the current runtime.
    pub fn start(config: Config) -> Resolver {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let for_jobs = config.clone();
        tokio::spawn(async move {
            while let Some(job) = queue.recv().await {
                resolve_until_done(&for_jobs, &job).await;
            }
        });
        Resolver {
            jobs,
            config: Some(config),
        }
    }

    /// Decides the prepared transaction `gid` in `database` by what `log` holds, once an in-doubt append
    /// has settled (`settles_after`): committed if its record is there (after position `after`), rolled
    /// back if not. Retries the read until the log answers.
    pub fn settle_in_doubt(
        &self,
        database: &str,
        gid: InFlight,
        log: std::sync::Arc<dyn Log>,
        settles_after: Duration,
        after: Position,
    ) {
        let (jobs, database) = (self.jobs.clone(), database.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(settles_after).await;
            let wanted: HashSet<&str> = [gid.gid()].into();
            loop {
                match logged_gids_from(log.as_ref(), &wanted, after.next()).await {
                    Ok(found) => {
                        let commit = found.contains(gid.gid());
                        tracing::warn!(%database, gid = gid.gid(), commit, "an in-doubt append has settled; resolving its prepared transaction by the log");
                        let _ = jobs.send(Job {
                            database,
                            gid,
                            commit,
                        });
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%database, gid = gid.gid(), error = %e, "cannot read the log to settle an in-doubt append yet; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        });
    }

    /// Commits (`commit`) or rolls back the prepared transaction `gid` in `database`, eventually.
    pub fn resolve(&self, database: &str, gid: InFlight, commit: bool) {
        tracing::warn!(%database, gid = gid.gid(), commit, "a session lost its backend mid-commit; resolving its prepared transaction");
        let _ = self.jobs.send(Job {
            database: database.to_owned(),
            gid,
            commit,
        });
    }
}

/// How long a direct commit may stay in progress in Postgres, its session gone, before waly terminates
/// the backend that holds it (its connection is dead, but Postgres has not noticed).
const IN_PROGRESS_GRACE: Duration = Duration::from_secs(10);

/// What Postgres says of a transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XactStatus {
    Committed,
    Aborted,
    InProgress,
    /// Too old for Postgres to remember (its commit log was truncated).
    Unknown,
}

/// `pg_xact_status` of `txid` (an `xid8` as text). An id Postgres never assigned ("in the future": a
/// restored or different cluster) did not commit there.
pub async fn xact_status(
    client: &tokio_postgres::Client,
    txid: &str,
) -> Result<XactStatus, tokio_postgres::Error> {
    match client
        .query_one("SELECT pg_xact_status($1::text::xid8)", &[&txid])
        .await
    {
        Ok(row) => Ok(match row.get::<_, Option<&str>>(0) {
            Some("committed") => XactStatus::Committed,
            Some("aborted") => XactStatus::Aborted,
            Some("in progress") => XactStatus::InProgress,
            _ => XactStatus::Unknown,
        }),
        Err(e) if e.code().is_some_and(|c| c.code() == "22023") => {
            tracing::warn!(txid, error = %describe(&e), "Postgres never assigned this transaction id: taken as not committed");
            Ok(XactStatus::Aborted)
        }
        Err(e) => Err(e),
    }
}

/// Terminates the backend that holds transaction `txid` open.
pub async fn terminate_holder(
    client: &tokio_postgres::Client,
    txid: &str,
) -> Result<u64, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_xid = xid($1::text::xid8)",
            &[&txid],
        )
        .await?;
    Ok(rows.len() as u64)
}

async fn decide_direct_until_done(config: Config, ticket: Ticket) {
    let (database, txid) = (ticket.database().to_owned(), ticket.txid().to_owned());
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = async {
            let client = connect(&config, &database).await?;
            let status = xact_status(&client, &txid).await?;
            if status == XactStatus::InProgress && started.elapsed() >= IN_PROGRESS_GRACE {
                let n = terminate_holder(&client, &txid).await?;
                tracing::warn!(%database, %txid, terminated = n, "terminated the backend still holding a direct commit whose session is gone");
            }
            Ok::<_, RecoveryError>(status)
        };
        match attempt.await {
            Ok(XactStatus::Committed) => {
                tracing::info!(%database, %txid, "direct commit resolved: committed");
                ticket.committed();
                return;
            }
            Ok(XactStatus::Aborted) => {
                tracing::info!(%database, %txid, "direct commit resolved: not committed");
                ticket.aborted().await;
                return;
            }
            Ok(XactStatus::InProgress) => delay = Duration::from_millis(200),
            Ok(XactStatus::Unknown) => {
                tracing::error!(%database, %txid, "Postgres no longer knows how this direct commit ended; it stays undecided");
                ticket.leave_open();
                return;
            }
            Err(e) => {
                tracing::warn!(%database, %txid, error = %e, "cannot ask Postgres how a direct commit ended yet; retrying");
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
        tokio::time::sleep(delay).await;
    }
}

async fn resolve_until_done(config: &Config, job: &Job) {
    let gid = job.gid.gid();
    let sql = if job.commit {
        format!("COMMIT PREPARED '{gid}'")
    } else {
        format!("ROLLBACK PREPARED '{gid}'")
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
                tracing::info!(database = %job.database, %gid, commit = job.commit, "prepared transaction resolved");
                return;
            }
            // Not prepared (yet): if the lost backend prepares it later, the gid is unclaimed once this
            // job ends, and the next recovery pass decides it by the log.
            Err(RecoveryError::Postgres(e)) if is_undefined_gid(&e) => {
                tracing::info!(database = %job.database, %gid, "prepared transaction already resolved or never prepared");
                return;
            }
            Err(e) => {
                tracing::warn!(database = %job.database, %gid, error = %e, "cannot resolve the prepared transaction yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
