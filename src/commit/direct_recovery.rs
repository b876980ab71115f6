//! Deciding the direct commits an earlier waly process of this data directory left undecided: it died
//! between an append and learning how the COMMIT after it ended.
//!
//! Each pass reads every log this data directory wrote to ([`DecidedFile`]) after its recorded
//! position, finds the direct commits of earlier processes of this log id that no `decided_through`
//! and no outcome record decides, and asks Postgres (`pg_xact_status`) how each ended. It then appends,
//! per dead writer, one outcome record listing the ones that did not commit and moving that writer's
//! `decided_through` to what it read. A transaction still in progress (Postgres has not noticed its
//! client is gone) waits for a later pass; once its record is older than a grace period, its backend is
//! terminated. Passes run at start and every few seconds after, like the recovery of prepared
//! transactions, which also catches a record that reaches Kafka late.
//!
//! This module never touches the commits of the running process (its sessions and the resolver decide
//! those) nor those of other log ids (other waly instances sharing a topic).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;

use super::decided::DecidedFile;
use super::decisions::LogDecisions;
use super::owner_log;
use super::recovery::{RecoveryError, XactStatus, connect, terminate_holder, xact_status};
use crate::config::Config;
use crate::log::{LogRouter, Position};
use crate::record::{Aborted, CommitKind, LogRecord, OutcomeRecord};

/// How old an undecided record must be before the backend still holding its transaction is
/// terminated.
const HOLDER_GRACE: Duration = Duration::from_secs(10);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DirectReport {
    /// Direct commits found committed.
    pub committed: u64,
    /// Direct commits found not committed, now listed in an outcome record.
    pub aborted: u64,
    /// Still undecided: in progress in Postgres, or Postgres could not be asked.
    pub waiting: u64,
}

/// An undecided direct commit of a dead writer.
struct Candidate {
    position: u64,
    writer: String,
    txid: String,
    database: String,
    appended_micros: i64,
}

/// One pass over every log in `decided`. `owner` is this process's writer name; `settled` whether a
/// record a dead process sent can no longer reach the log (only then does the recorded position move).
pub async fn decide_dead_writers(
    config: &Config,
    logs: &dyn LogRouter,
    decided: &DecidedFile,
    own: &LogDecisions,
    owner: &str,
    settled: bool,
) -> Result<DirectReport, RecoveryError> {
    let mut report = DirectReport::default();
    for (key, from) in decided.entries() {
        let log = logs.log_for(&key);
        let scan = scan(log.as_ref(), Position(from), owner).await?;
        let mut clients: HashMap<String, tokio_postgres::Client> = HashMap::new();
        let mut aborted: BTreeMap<String, Vec<Aborted>> = BTreeMap::new();
        let mut first_waiting: BTreeMap<String, u64> = BTreeMap::new();
        for c in &scan.undecided {
            if !clients.contains_key(&c.database) {
                clients.insert(c.database.clone(), connect(config, &c.database).await?);
            }
            let client = &clients[&c.database];
            match xact_status(client, &c.txid).await? {
                XactStatus::Committed => report.committed += 1,
                XactStatus::Aborted => {
                    report.aborted += 1;
                    aborted.entry(c.writer.clone()).or_default().push(Aborted {
                        position: c.position,
                        txid: c.txid.clone(),
                    });
                }
                status => {
                    report.waiting += 1;
                    first_waiting.entry(c.writer.clone()).or_insert(c.position);
                    let age = now_micros() - c.appended_micros;
                    if status == XactStatus::InProgress && age >= HOLDER_GRACE.as_micros() as i64 {
                        let n = terminate_holder(client, &c.txid).await?;
                        tracing::warn!(database = %c.database, txid = %c.txid, terminated = n, "terminated the backend still holding a dead waly's direct commit");
                    } else if status == XactStatus::Unknown {
                        tracing::error!(database = %c.database, txid = %c.txid, position = c.position, "Postgres no longer knows how this direct commit ended; it stays undecided");
                    }
                }
            }
        }
        let writers: HashSet<&String> = scan.undecided.iter().map(|c| &c.writer).collect();
        for writer in writers {
            let through = first_waiting
                .get(writer)
                .map_or(scan.end, |first| first - 1);
            let listed = aborted.remove(writer).unwrap_or_default();
            let n = listed.len();
            let outcome = OutcomeRecord::new(writer, listed, through);
            let entry = log
                .append(Bytes::from(outcome.to_json()))
                .await
                .map_err(RecoveryError::Log)?;
            tracing::info!(log = %key, %writer, aborted = n, decided_through = through, outcome = %entry.position, "recovery: decided a dead waly's direct commits");
        }
        if settled {
            let mut safe = first_waiting
                .values()
                .map(|p| p - 1)
                .min()
                .unwrap_or(scan.end);
            if let Some(d) = own.get(&key) {
                safe = safe.min(d.through());
            }
            if let Err(e) = decided.advance(&key, safe) {
                tracing::warn!(log = %key, error = %e, "cannot record how far the log is decided");
            }
        }
    }
    Ok(report)
}

/// What a read of one log after `from` found.
struct Scan {
    undecided: Vec<Candidate>,
    /// The last position read (`from` when there was nothing after it).
    end: u64,
}

async fn scan(
    log: &dyn crate::log::Log,
    from: Position,
    owner: &str,
) -> Result<Scan, RecoveryError> {
    let mut candidates = Vec::new();
    let mut through: HashMap<String, u64> = HashMap::new();
    let mut aborted: HashSet<u64> = HashSet::new();
    let mut next = from.next();
    let mut end = from.0;
    loop {
        let entries = log.read(next, 1024).await?;
        let Some(last) = entries.last() else { break };
        next = last.position.next();
        end = last.position.0;
        for entry in entries {
            let record = match LogRecord::from_json(&entry.payload) {
                Ok(record) => record,
                Err(e) => {
                    tracing::warn!(position = %entry.position, error = %e, "recovery: unreadable record skipped");
                    continue;
                }
            };
            match record {
                LogRecord::Transaction(r) => {
                    if let Some(t) = r.decided_through {
                        let known = through.entry(r.writer.clone()).or_default();
                        *known = (*known).max(t);
                    }
                    if r.commit == CommitKind::Direct
                        && r.writer != owner
                        && owner_log(&r.writer) == owner_log(owner)
                    {
                        candidates.push(Candidate {
                            position: entry.position.0,
                            writer: r.writer,
                            txid: r.txid,
                            database: r.session.database,
                            appended_micros: entry.timestamp_micros,
                        });
                    }
                }
                LogRecord::Outcome(o) => {
                    aborted.extend(o.aborted.iter().map(|a| a.position));
                    let known = through.entry(o.writer).or_default();
                    *known = (*known).max(o.decided_through);
                }
            }
        }
    }
    candidates.retain(|c| {
        !aborted.contains(&c.position) && through.get(&c.writer).is_none_or(|&t| t < c.position)
    });
    Ok(Scan {
        undecided: candidates,
        end,
    })
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64
}
