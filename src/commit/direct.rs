//! The direct commit's tail: append the record while the transaction is still open, then a plain
//! `COMMIT`.
//!
//! Invariant 1 holds as with two-phase commit: nothing is visible before the record is durable, and
//! conflicting transactions wait on this one's row locks until its COMMIT, after its append (invariant
//! 3). What differs is the rare COMMIT that fails after the append (a serialization failure, Postgres
//! gone): then the record is in the log although its transaction did not commit, and an outcome record
//! says so ([`super::decisions`]); readers skip it (invariant 2, through the outcome). A direct commit
//! leaves nothing prepared behind in Postgres when waly dies, and costs one WAL flush less.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::backend::Backend;
use super::decisions::Decisions;
use super::protocol::{Failure, Lost, Outcome, not_logged, rollback};
use crate::record::Record;
use crate::wire::{PgError, SqlState};

/// Appends `record` (its transaction open on `backend`, capture read), then commits.
pub(super) async fn finish(
    backend: &mut impl Backend,
    decisions: &Arc<Decisions>,
    mut record: Record,
) -> Result<Outcome, Lost> {
    let log = decisions.log();
    let mut ticket = decisions.open(&record.session.database, &record.txid);
    let decided_through = decisions.through();
    record.decided_through = Some(decided_through);
    let payload = Bytes::from(record.to_json());

    // Records the log acknowledged before this append was sent come before its record, if any.
    let end_before = log.end();
    let appending = Instant::now();
    let appended = log.append(payload).await;
    crate::log::latency::record(appending.elapsed());
    let position = match appended {
        Ok(entry) => {
            ticket.appended(entry.position);
            decisions.carried(decided_through);
            entry.position
        }
        Err(e) => {
            let in_doubt = e.is_in_doubt();
            if in_doubt {
                match log.in_doubt_settles_after() {
                    Some(settles_after) => ticket.in_doubt(end_before, settles_after),
                    None => {
                        // Only a restart, which reads the log as it is on disk, can tell whether the
                        // record is there; until then the writer's watermark waits before it.
                        tracing::error!(txid = %record.txid, error = %e, "append in doubt; the commit is decided when waly restarts");
                        ticket.leave_open();
                        rollback(backend).await?;
                        return Ok(Outcome::Failed(Failure::Waly(in_doubt_error(&e))));
                    }
                }
            }
            if let Err(lost) = rollback(backend).await {
                return Err(Lost::undecided(lost.reason, ticket));
            }
            ticket.aborted().await;
            return Ok(Outcome::Failed(Failure::Waly(if in_doubt {
                in_doubt_error(&e)
            } else {
                not_logged(&e)
            })));
        }
    };

    let done = match backend.query("COMMIT").await {
        Ok(done) => done,
        Err(reason) => {
            tracing::warn!(%position, txid = %record.txid, error = %reason, "connection lost at COMMIT after the append; asking Postgres how it ended");
            return Err(Lost::undecided(reason, ticket));
        }
    };
    let rolled_back = done.results.last().is_some_and(|r| r.tag == "ROLLBACK");
    match done.error {
        None if !rolled_back => {
            ticket.committed();
            Ok(Outcome::Committed {
                logged: Some(position),
            })
        }
        error => {
            tracing::info!(%position, txid = %record.txid, code = error.as_ref().map(|e| e.code()), "COMMIT failed after the append; logging that it did not commit");
            ticket.aborted().await;
            Ok(Outcome::Failed(match error {
                Some(error) => Failure::Postgres { error, hint: None },
                None => Failure::Waly(
                    PgError::error(
                        SqlState("40001"),
                        "Postgres rolled the transaction back at COMMIT",
                    )
                    .with_detail(
                        "Nothing was committed; waly logged that the transaction did not commit.",
                    ),
                ),
            }))
        }
    }
}

/// The client's error when the log could not say whether it took the record: the transaction was
/// rolled back all the same, and if the record appears in the log, an outcome record voids it.
fn in_doubt_error(e: &crate::log::LogError) -> PgError {
    PgError::error(
        SqlState("58030"),
        format!("waly could not log this transaction: {e}"),
    )
    .with_detail(
        "The transaction was rolled back; nothing was committed. If its record reaches the log late, waly marks it as not committed.",
    )
    .with_hint("Reads keep working; writes resume once the log accepts appends again.")
}
