//! The sequence itself: capture, record, PREPARE, durable append, COMMIT PREPARED.

use bytes::Bytes;

use super::backend::{Backend, BackendLost, ServerError};
use super::capture::{self, Captured};
use super::in_flight::InFlight;
use crate::log::{Log, Position};
use crate::operations::Matcher;
use crate::record::{
    CAPTURE_COLUMNS, FORMAT_VERSION, Record, RecordError, SessionInfo, Statement,
    changes_from_buffer, changes_from_capture_text,
};
use crate::wire::{PgError, SqlState};

/// How the transaction ended. In every case the backend is outside a transaction block afterwards.
#[derive(Debug)]
pub enum Outcome {
    /// Committed; `logged` is its record's position when it wrote anything.
    Committed { logged: Option<Position> },
    /// Not committed; the client gets this error in place of COMMIT's reply.
    Failed(Failure),
}

#[derive(Debug)]
pub enum Failure {
    /// Postgres refused (a deferred constraint, PREPARE impossible, ...), possibly with waly's hint.
    Postgres {
        error: ServerError,
        hint: Option<&'static str>,
    },
    /// The log refused, or the outcome is in doubt.
    Waly(PgError),
    /// The operations catalog refused the transaction: an invalid parameter, or a write strict mode
    /// forbids. Rolled back; nothing logged.
    Refused(PgError),
    /// The append's outcome is in doubt, and reading the log will tell after `settles_after`: the
    /// caller hands `gid` to the [`super::Resolver`], which commits or rolls it back then.
    InDoubt {
        error: PgError,
        gid: InFlight,
        settles_after: std::time::Duration,
        /// The record, if it is in the log at all, is after this position (the end the log had
        /// acknowledged before the append).
        after: Position,
    },
}

/// Commits the transaction open on `backend` through the log. `statements` are the client's write
/// statements in this transaction; `boot` is this process's gid token (see [`super::gid`]); `matcher`
/// recognises the transaction's domain operations, or refuses it.
///
/// `Err(BackendLost)` means the connection broke; what it leaves prepared is resolved by the caller's
/// [`super::Resolver`] (the error says how) or by recovery at the next start.
pub async fn commit(
    backend: &mut impl Backend,
    log: &dyn Log,
    session: &SessionInfo,
    statements: Vec<Statement>,
    boot: &str,
    matcher: &mut Matcher,
) -> Result<Outcome, Lost> {
    // Claimed before anything can prepare it, so no recovery pass decides it while this runs.
    let claim = InFlight::claim(super::gid(boot, &super::next_gid_number()));
    let gid = claim.gid().to_owned();
    let reply = backend
        .query(&capture::first_round_trip(&gid))
        .await
        .map_err(|e| Lost::resolve(e, &claim, false))?;
    let mut prepared = true;
    if let Some(error) = &reply.error {
        if error.code() != capture::NOT_PREPARABLE {
            // A deferred constraint failed (that is the COMMIT's error), or PREPARE did; either ends the
            // transaction.
            let error = error.clone();
            if reply.status != b'I' {
                rollback(backend, "ROLLBACK").await?;
            }
            let hint = prepare_hint(error.code());
            return Ok(Outcome::Failed(Failure::Postgres { error, hint }));
        }
        let undone = backend
            .query(capture::UNDO_CHECK)
            .await
            .map_err(Lost::nothing)?;
        if let Some(error) = undone.error {
            rollback(backend, "ROLLBACK").await?;
            return Ok(Outcome::Failed(Failure::Postgres { error, hint: None }));
        }
        prepared = false;
    }
    // The transaction to roll back from here on, when it must be abandoned.
    let open = prepared.then_some(&claim);
    let captured = Captured::from_reply(reply);
    let read = match (&captured.txid, captured.spilled, prepared) {
        // Read-only, or wrote nothing at all (never prepared: the check wants a non-empty buffer).
        (None, _, false) => return plain_commit(backend).await,
        (Some(_), true, false) => {
            let reply = backend
                .query(&capture::SPILLED_QUERY)
                .await
                .map_err(Lost::nothing)?;
            if let Some(error) = reply.error {
                rollback(backend, "ROLLBACK").await?;
                return Ok(Outcome::Failed(Failure::Postgres { error, hint: None }));
            }
            let rows = reply
                .results
                .into_iter()
                .next()
                .map(|r| r.rows)
                .unwrap_or_default();
            changes_from_capture_text(&rows)
        }
        (Some(_), false, _) => changes_from_buffer(&captured.buffer, captured.sequences.as_deref()),
        // The check passed although the transaction has no id or spilled: never taken as written.
        (None, _, true) | (Some(_), true, true) => Ok(Vec::new()),
    };
    let changes = match read {
        Ok(changes) => changes,
        Err(e) => {
            abandon(backend, open).await?;
            return Ok(Outcome::Failed(Failure::Waly(unreadable(&e))));
        }
    };
    if changes.is_empty() {
        if prepared {
            abandon(backend, open).await?;
            return Ok(Outcome::Failed(Failure::Waly(
                PgError::error(
                    SqlState::INTERNAL_ERROR,
                    "waly prepared a transaction whose row changes it could not read",
                )
                .with_detail("The transaction was rolled back; nothing was logged."),
            )));
        }
        // Wrote nothing waly captures (row locks, temporary tables): nothing to log.
        return plain_commit(backend).await;
    }
    let txid = captured.txid.unwrap_or_default();
    let operations = match matcher.recognize(&statements, &changes) {
        Ok(operations) => operations,
        Err(error) => {
            abandon(backend, open).await?;
            return Ok(Outcome::Failed(Failure::Refused(error)));
        }
    };
    let record = Record {
        format: FORMAT_VERSION,
        txid,
        gid: gid.clone(),
        committed_at: captured.committed_at,
        session: session.clone(),
        statements,
        operations,
        changes,
    };
    let payload = Bytes::from(record.to_json());

    if !prepared {
        let reply = backend
            .query(&format!("PREPARE TRANSACTION '{gid}'"))
            .await
            .map_err(|e| Lost::resolve(e, &claim, false))?;
        if let Some(error) = reply.error {
            // A failed PREPARE rolls the transaction back.
            if reply.status != b'I' {
                rollback(backend, "ROLLBACK").await?;
            }
            let hint = prepare_hint(error.code());
            return Ok(Outcome::Failed(Failure::Postgres { error, hint }));
        }
    }

    // Records the log acknowledged before this append was sent come before its record, if any.
    let end_before = log.end();
    let appending = std::time::Instant::now();
    let appended = log.append(payload).await;
    crate::log::latency::record(appending.elapsed());
    let entry = match appended {
        Ok(entry) => entry,
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
            let hint = match e.sqlstate().0 {
                "53100" => {
                    "Free space where waly keeps its log (data_dir); reads keep working meanwhile."
                }
                _ => "Reads keep working; writes resume once the log accepts appends again.",
            };
            return Ok(Outcome::Failed(Failure::Waly(
                PgError::error(
                    e.sqlstate(),
                    format!("waly could not log this transaction: {e}"),
                )
                .with_detail("The transaction was rolled back; nothing was logged or committed.")
                .with_hint(hint),
            )));
        }
    };

    let done = backend
        .query(&format!("COMMIT PREPARED '{gid}'"))
        .await
        .map_err(|e| Lost::resolve(e, &claim, true))?;
    if let Some(error) = done.error {
        tracing::error!(%gid, position = %entry.position, code = error.code(), message = error.message(), "COMMIT PREPARED failed after the record was logged");
        return Err(Lost {
            reason: BackendLost(format!("COMMIT PREPARED failed: {}", error.message())),
            resolve: Some((claim, true)),
        });
    }
    Ok(Outcome::Committed {
        logged: Some(entry.position),
    })
}

/// The protocol could not finish on this connection.
#[derive(Debug)]
pub struct Lost {
    pub reason: BackendLost,
    /// A transaction that may be prepared, to resolve on another connection: `(gid, commit?)`.
    pub resolve: Option<(InFlight, bool)>,
}

impl Lost {
    fn nothing(reason: BackendLost) -> Lost {
        Lost {
            reason,
            resolve: None,
        }
    }

    fn resolve(reason: BackendLost, gid: &InFlight, commit: bool) -> Lost {
        Lost {
            reason,
            resolve: Some((gid.clone(), commit)),
        }
    }
}

/// waly's hint for a failed PREPARE TRANSACTION.
fn prepare_hint(code: &str) -> Option<&'static str> {
    match code {
        "0A000" => Some(
            "waly commits logged transactions with PREPARE TRANSACTION, which Postgres refuses after temporary objects were used; keep temporary tables out of transactions that write logged tables.",
        ),
        "55000" => Some(
            "waly needs prepared transactions: set max_prepared_transactions above 0 in postgresql.conf and restart Postgres.",
        ),
        _ => None,
    }
}

fn unreadable(e: &RecordError) -> PgError {
    PgError::error(
        SqlState::INTERNAL_ERROR,
        format!("waly could not read this transaction's row changes: {e}"),
    )
    .with_detail("The transaction was rolled back; nothing was logged.")
}

async fn plain_commit(backend: &mut impl Backend) -> Result<Outcome, Lost> {
    let reply = backend.query("COMMIT").await.map_err(Lost::nothing)?;
    match reply.error {
        None => Ok(Outcome::Committed { logged: None }),
        Some(error) => Ok(Outcome::Failed(Failure::Postgres { error, hint: None })),
    }
}

/// Rolls back the transaction: the one prepared as `prepared` (if the connection breaks meanwhile, the
/// caller's resolver rolls it back), or the one open on the connection.
async fn abandon(backend: &mut impl Backend, prepared: Option<&InFlight>) -> Result<(), Lost> {
    let Some(claim) = prepared else {
        return rollback(backend, "ROLLBACK").await;
    };
    let gid = claim.gid();
    let sql = format!("ROLLBACK PREPARED '{gid}'");
    let reply = backend
        .query(&sql)
        .await
        .map_err(|e| Lost::resolve(e, claim, false))?;
    if let Some(e) = reply.error {
        tracing::warn!(
            %gid,
            code = e.code(),
            message = e.message(),
            "rollback of a prepared transaction failed"
        );
    }
    Ok(())
}

async fn rollback(backend: &mut impl Backend, sql: &str) -> Result<(), Lost> {
    let reply = backend.query(sql).await.map_err(Lost::nothing)?;
    if let Some(e) = reply.error {
        tracing::warn!(
            statement = sql,
            code = e.code(),
            message = e.message(),
            "rollback failed"
        );
    }
    Ok(())
}

/// Logs, after the fact, what statements that Postgres runs only outside a transaction block (CREATE
/// INDEX CONCURRENTLY, ...) left in the capture: they cannot be prepared, so their record follows their
/// commit instead of preceding it. The capture rows are taken in a transaction of waly's that commits only
/// once the record is durable; if the append fails they stay for the next such statement to log. Returns
/// the record's position, or `None` when there was nothing to log.
pub async fn log_committed_leftovers(
    backend: &mut impl Backend,
    log: &dyn Log,
    session: &SessionInfo,
    statements: Vec<Statement>,
    matcher: &mut Matcher,
) -> Result<Result<Option<Position>, PgError>, Lost> {
    let reply = backend
        .query(&format!(
            "BEGIN; \
             SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'); \
             WITH taken AS (DELETE FROM waly.capture WHERE pg_xact_status(txid) = 'committed' RETURNING *) \
             SELECT txid::text, {CAPTURE_COLUMNS} FROM taken ORDER BY txid, seq"
        ))
        .await
        .map_err(Lost::nothing)?;
    if let Some(error) = reply.error {
        rollback(backend, "ROLLBACK").await?;
        return Ok(Err(PgError::error(
            SqlState::INTERNAL_ERROR,
            format!(
                "waly could not read what the statement changed: {}",
                error.message()
            ),
        )));
    }
    let at = reply
        .results
        .get(1)
        .and_then(|r| r.rows.first())
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default();
    let rows = reply
        .results
        .into_iter()
        .nth(2)
        .map(|r| r.rows)
        .unwrap_or_default();
    if rows.is_empty() {
        rollback(backend, "ROLLBACK").await?;
        return Ok(Ok(None));
    }
    let txid = rows[0][0].clone().unwrap_or_default();
    let capture: Vec<Vec<Option<String>>> = rows.into_iter().map(|mut r| r.split_off(1)).collect();
    let changes = match changes_from_capture_text(&capture) {
        Ok(changes) => changes,
        Err(e) => {
            rollback(backend, "ROLLBACK").await?;
            return Ok(Err(PgError::error(SqlState::INTERNAL_ERROR, e.to_string())));
        }
    };
    // Already committed by Postgres: the operations are recorded when they are valid, and a refusal
    // cannot apply any more (the statement ran outside a transaction block).
    let operations = matcher.recognize(&statements, &changes).unwrap_or_else(|e| {
        tracing::warn!(error = %e.message, "statement outside a transaction block recorded without its operations");
        Vec::new()
    });
    let record = Record {
        format: FORMAT_VERSION,
        txid,
        gid: String::new(),
        committed_at: at,
        session: session.clone(),
        statements,
        operations,
        changes,
    };
    match log.append(Bytes::from(record.to_json())).await {
        Ok(entry) => {
            let done = backend.query("COMMIT").await.map_err(Lost::nothing)?;
            if let Some(e) = done.error {
                tracing::warn!(
                    code = e.code(),
                    message = e.message(),
                    "could not clear logged capture rows"
                );
            }
            Ok(Ok(Some(entry.position)))
        }
        Err(e) => {
            rollback(backend, "ROLLBACK").await?;
            Ok(Err(PgError::error(
                e.sqlstate(),
                format!("waly could not log the statement's effects: {e}"),
            )))
        }
    }
}
