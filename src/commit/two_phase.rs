//! The two-phase commit's tail: `PREPARE TRANSACTION` (unless the first round trip did), the durable
//! append, `COMMIT PREPARED`.
//!
//! A record of a prepared transaction is final once it is in the log: whatever happens after the
//! append, recovery commits the prepared transaction because its record is there (roll forward), and
//! rolls back every prepared one whose record is not.

use std::sync::Arc;

use bytes::Bytes;

use super::backend::{Backend, BackendLost};
use super::decisions::Decisions;
use super::in_flight::InFlight;
use super::protocol::{Failure, Lost, Outcome, abandon, not_logged, rollback};
use crate::record::Record;
use crate::wire::PgError;

/// Prepares `record`'s transaction unless `prepared`, appends the record, commits the prepared
/// transaction.
pub(super) async fn finish(
    backend: &mut impl Backend,
    decisions: &Arc<Decisions>,
    mut record: Record,
    claim: InFlight,
    prepared: bool,
) -> Result<Outcome, Lost> {
    let log = decisions.log();
    let gid = claim.gid().to_owned();
    if !prepared {
        let reply = backend
            .query(&format!("PREPARE TRANSACTION '{gid}'"))
            .await
            .map_err(|e| Lost::prepared(e, &claim, false))?;
        if let Some(error) = reply.error {
            // A failed PREPARE rolls the transaction back.
            if reply.status != b'I' {
                rollback(backend).await?;
            }
            let hint = prepare_hint(error.code());
            return Ok(Outcome::Failed(Failure::Postgres { error, hint }));
        }
    }
    let decided_through = decisions.through();
    record.decided_through = Some(decided_through);
    let payload = Bytes::from(record.to_json());

    // Records the log acknowledged before this append was sent come before its record, if any.
    let end_before = log.end();
    let appending = std::time::Instant::now();
    let appended = log.append(payload).await;
    crate::log::latency::record(appending.elapsed());
    let entry = match appended {
        Ok(entry) => {
            decisions.carried(decided_through);
            entry
        }
        Err(e) if e.is_in_doubt() => {
            let error = PgError::error(
                e.sqlstate(),
                format!("waly cannot tell whether this transaction was logged: {e}"),
            );
            return Ok(Outcome::Failed(match log.in_doubt_settles_after() {
                Some(settles_after) => {
                    tracing::error!(%gid, error = %e, settle_secs = settles_after.as_secs(), "append in doubt; the log decides the prepared transaction once the append has settled");
                    Failure::InDoubt {
                        error: error
                            .with_detail(format!("The transaction is prepared as {gid}; within about {} s waly reads the log and commits it if its record is there, or rolls it back if not.", settles_after.as_secs() + 1))
                            .with_hint("Check whether the transaction took effect before retrying it."),
                        gid: claim,
                        settles_after,
                        after: end_before,
                    }
                }
                None => {
                    tracing::error!(%gid, error = %e, "append in doubt; the prepared transaction is left for recovery at the next start");
                    // Only a restart, which reads the log as it is on disk, may decide it: the claim is
                    // held for as long as this process runs.
                    std::mem::forget(claim);
                    Failure::Waly(
                        error
                            .with_detail(format!("The transaction is prepared as {gid}; it is committed or rolled back, by what the log holds, when waly restarts."))
                            .with_hint("Restart waly."),
                    )
                }
            }));
        }
        Err(e) => {
            abandon(backend, Some(&claim)).await?;
            return Ok(Outcome::Failed(Failure::Waly(not_logged(&e))));
        }
    };

    let done = backend
        .query(&format!("COMMIT PREPARED '{gid}'"))
        .await
        .map_err(|e| Lost::prepared(e, &claim, true))?;
    if let Some(error) = done.error {
        tracing::error!(%gid, position = %entry.position, code = error.code(), message = error.message(), "COMMIT PREPARED failed after the record was logged");
        return Err(Lost {
            reason: BackendLost(format!("COMMIT PREPARED failed: {}", error.message())),
            resolve: Some((claim, true)),
            undecided: None,
        });
    }
    Ok(Outcome::Committed {
        logged: Some(entry.position),
    })
}

/// waly's hint for a failed PREPARE TRANSACTION.
pub(super) fn prepare_hint(code: &str) -> Option<&'static str> {
    match code {
        "0A000" => Some(
            "waly prepares logged transactions with PREPARE TRANSACTION (commit_protocol: two-phase), which Postgres refuses after temporary objects were used; keep temporary tables out of transactions that write logged tables, or use commit_protocol: direct.",
        ),
        "55000" => Some(
            "commit_protocol: two-phase needs prepared transactions: set max_prepared_transactions above 0 in postgresql.conf and restart Postgres, or use commit_protocol: direct.",
        ),
        _ => None,
    }
}
