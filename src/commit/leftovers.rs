//! What statements that Postgres runs only outside a transaction block (CREATE INDEX CONCURRENTLY,
//! VACUUM, ...) left in the capture, logged after their commit: nothing can precede a commit that
//! Postgres makes on its own, so their record follows it and is final once it is in the log.

use std::sync::Arc;

use bytes::Bytes;

use super::backend::Backend;
use super::decisions::Decisions;
use super::protocol::{Lost, rollback};
use crate::log::Position;
use crate::operations::Matcher;
use crate::record::{
    CAPTURE_COLUMNS, CommitKind, FORMAT_VERSION, Record, SessionInfo, Statement,
    changes_from_capture_text,
};
use crate::wire::{PgError, SqlState};

/// Logs, after the fact, what statements that Postgres runs only outside a transaction block (CREATE
/// INDEX CONCURRENTLY, ...) left in the capture: they cannot be prepared, so their record follows their
/// commit instead of preceding it. The capture rows are taken in a transaction of waly's that commits only
/// once the record is durable; if the append fails they stay for the next such statement to log. Returns
/// the record's position, or `None` when there was nothing to log.
pub async fn log_committed_leftovers(
    backend: &mut impl Backend,
    decisions: &Arc<Decisions>,
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
        rollback(backend).await?;
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
        rollback(backend).await?;
        return Ok(Ok(None));
    }
    let txid = rows[0][0].clone().unwrap_or_default();
    let capture: Vec<Vec<Option<String>>> = rows.into_iter().map(|mut r| r.split_off(1)).collect();
    let changes = match changes_from_capture_text(&capture) {
        Ok(changes) => changes,
        Err(e) => {
            rollback(backend).await?;
            return Ok(Err(PgError::error(SqlState::INTERNAL_ERROR, e.to_string())));
        }
    };
    // Already committed by Postgres: the operations are recorded when they are valid, and a refusal
    // cannot apply any more (the statement ran outside a transaction block).
    let operations = matcher.recognize(&statements, &changes).unwrap_or_else(|e| {
        tracing::warn!(error = %e.message, "statement outside a transaction block recorded without its operations");
        Vec::new()
    });
    let decided_through = decisions.through();
    let record = Record {
        format: FORMAT_VERSION,
        txid,
        gid: String::new(),
        commit: CommitKind::After,
        writer: decisions.writer().to_owned(),
        decided_through: Some(decided_through),
        committed_at: at,
        session: session.clone(),
        statements,
        operations,
        changes,
    };
    match decisions.log().append(Bytes::from(record.to_json())).await {
        Ok(entry) => {
            decisions.carried(decided_through);
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
            rollback(backend).await?;
            Ok(Err(PgError::error(
                e.sqlstate(),
                format!("waly could not log the statement's effects: {e}"),
            )))
        }
    }
}
