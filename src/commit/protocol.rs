//! The sequence itself: capture, record, durable append, then the commit, in one of two ways.
//!
//! - **Direct** (the default): the record is appended while the transaction is still open, then a
//!   plain `COMMIT` makes it visible ([`direct`]). When that COMMIT fails, an outcome record says so.
//! - **Two-phase**: `PREPARE TRANSACTION` before the append, `COMMIT PREPARED` after it
//!   ([`two_phase`]); used with `commit_protocol: two-phase`, except for transactions Postgres cannot
//!   prepare, which commit directly.
//!
//! Both share the first round trip (deferred constraints, the capture read, and for two-phase the
//! PREPARE) and the record; this file owns those, the other two their own tail.

use super::backend::{Backend, BackendLost, ServerError};
use super::capture::{self, Captured};
use super::decisions::{Decisions, Ticket};
use super::in_flight::InFlight;
use super::{direct, two_phase};
use crate::config::CommitProtocol;
use crate::log::Position;
use crate::operations::Matcher;
use crate::record::{
    Change, CommitKind, FORMAT_VERSION, Record, RecordError, SessionInfo, Statement,
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
    /// Postgres refused (a deferred constraint, a serialization failure at COMMIT, ...), possibly with
    /// waly's hint.
    Postgres {
        error: ServerError,
        hint: Option<&'static str>,
    },
    /// The log refused, or the outcome is in doubt.
    Waly(PgError),
    /// The operations catalog refused the transaction: an invalid parameter, or a write strict mode
    /// forbids. Rolled back; nothing logged.
    Refused(PgError),
    /// waly's schema is not in the database (it was dropped, or the database created anew under its
    /// name since waly installed it): nothing of the transaction was captured. Rolled back; nothing
    /// logged. The caller installs the schema again.
    SchemaMissing(PgError),
    /// A prepared transaction's append is in doubt, and reading the log will tell after
    /// `settles_after`: the caller hands `gid` to the [`super::Resolver`], which commits or rolls it back
    /// then.
    InDoubt {
        error: PgError,
        gid: InFlight,
        settles_after: std::time::Duration,
        /// The record, if it is in the log at all, is after this position (the end the log had
        /// acknowledged before the append).
        after: Position,
    },
}

/// Everything the protocol needs besides the backend connection.
pub struct Commit<'a> {
    /// The log the record goes to, and this process's direct commits in it.
    pub decisions: &'a std::sync::Arc<Decisions>,
    pub session: &'a SessionInfo,
    /// This process's gid token (see [`super::gid`]).
    pub boot: &'a str,
    pub protocol: CommitProtocol,
    /// Whether the session's client_encoding hands text over as UTF-8. If not, the first round trip
    /// sets it to UTF8 for the rest of the transaction, so the capture arrives as Postgres stored it.
    pub client_utf8: bool,
}

/// Commits the transaction open on `backend` through the log. `statements` are the client's write
/// statements in this transaction; `matcher` recognises the transaction's domain operations, or refuses
/// it.
///
/// `Err(Lost)` means the connection broke; what it leaves undecided is resolved through the
/// [`super::Resolver`] (a prepared gid the caller hands over, a direct commit's ticket by itself when the
/// `Lost` is dropped) or by recovery at the next start.
pub async fn commit(
    backend: &mut impl Backend,
    how: &Commit<'_>,
    statements: Vec<Statement>,
    matcher: &mut Matcher,
) -> Result<Outcome, Lost> {
    // Claimed before anything can prepare it, so no recovery pass decides it while this runs.
    let claim = InFlight::claim(super::gid(how.boot, &super::next_gid_number()));
    let two_phase = how.protocol == CommitProtocol::TwoPhase;
    // Sequences used on their own are not seen by the capture: their names come from the statements.
    let mut named: Vec<String> = Vec::new();
    for statement in &statements {
        for name in crate::classify::named_sequences(&statement.sql) {
            if !named.contains(&name) {
                named.push(name);
            }
        }
    }
    let mut first = if two_phase {
        capture::first_round_trip(claim.gid(), &named)
    } else {
        capture::capture_query(&named)
    };
    if !how.client_utf8 {
        first.insert_str(0, capture::UTF8_FOR_THE_CAPTURE);
    }
    let reply = backend
        .query(&first)
        .await
        .map_err(|e| Lost::prepared(e, &claim, false))?;
    let mut prepared = two_phase;
    if let Some(error) = &reply.error {
        if capture::schema_missing(error) {
            if reply.status != b'I' {
                rollback(backend).await?;
            }
            return Ok(Outcome::Failed(Failure::SchemaMissing(
                capture::schema_missing_error(&how.session.database),
            )));
        }
        if error.code() != capture::NOT_PREPARABLE {
            // A deferred constraint failed (that is the COMMIT's error), or PREPARE did; either ends the
            // transaction.
            let error = error.clone();
            if reply.status != b'I' {
                rollback(backend).await?;
            }
            let hint = two_phase::prepare_hint(error.code());
            return Ok(Outcome::Failed(Failure::Postgres { error, hint }));
        }
        let undone = backend
            .query(capture::UNDO_CHECK)
            .await
            .map_err(Lost::nothing)?;
        if let Some(error) = undone.error {
            rollback(backend).await?;
            return Ok(Outcome::Failed(Failure::Postgres { error, hint: None }));
        }
        prepared = false;
    }
    let captured = Captured::from_reply(reply, !how.client_utf8);
    let kind = if !two_phase || (!prepared && captured.prepare_impossible) {
        CommitKind::Direct
    } else {
        CommitKind::Prepared
    };
    let open = prepared.then_some(&claim);
    let mut changes = match read_changes(backend, &captured, &named, open).await? {
        Read::Changes(changes) => changes,
        Read::Nothing => return plain_commit(backend).await,
        Read::Failed(failure) => return Ok(Outcome::Failed(failure)),
    };
    note_search_path(&mut changes, captured.search_path.as_deref());
    let operations = match matcher.recognize(&statements, &changes) {
        Ok(operations) => operations,
        Err(error) => {
            abandon(backend, open).await?;
            return Ok(Outcome::Failed(Failure::Refused(error)));
        }
    };
    let txid = captured.txid.unwrap_or_default();
    let record = Record {
        format: FORMAT_VERSION,
        txid,
        gid: claim.gid().to_owned(),
        commit: kind,
        writer: how.decisions.writer().to_owned(),
        decided_through: None,
        committed_at: captured.committed_at,
        session: SessionInfo {
            role: captured.role.filter(|role| *role != how.session.user),
            ..how.session.clone()
        },
        statements,
        operations,
        changes,
    };
    if kind == CommitKind::Direct {
        // Never prepared: the gid only names the commit.
        drop(claim);
        direct::finish(backend, how.decisions, record).await
    } else {
        two_phase::finish(backend, how.decisions, record, claim, prepared).await
    }
}

/// Postgres' own default search_path, which a DDL change does not repeat.
const DEFAULT_SEARCH_PATH: &str = "\"$user\", public";

/// Gives the DDL changes the search_path their names were resolved with, unless it is the default.
fn note_search_path(changes: &mut [Change], search_path: Option<&str>) {
    let Some(path) = search_path.filter(|p| *p != DEFAULT_SEARCH_PATH) else {
        return;
    };
    for change in changes {
        if let Change::Ddl { search_path, .. } = change {
            *search_path = Some(path.to_owned());
        }
    }
}

/// What the capture holds.
enum Read {
    Changes(Vec<Change>),
    /// The transaction wrote nothing waly captures (row locks, temporary tables only).
    Nothing,
    /// The transaction was rolled back.
    Failed(Failure),
}

/// The transaction's row changes: from the buffer the first round trip read, or, when it spilled, from
/// `waly.capture`. `prepared` is the gid when the first round trip prepared the transaction.
async fn read_changes(
    backend: &mut impl Backend,
    captured: &Captured,
    named: &[String],
    prepared: Option<&InFlight>,
) -> Result<Read, Lost> {
    let read = match (&captured.txid, captured.spilled, prepared) {
        // Read-only, or wrote nothing at all (never prepared: the check wants a non-empty buffer).
        (None, _, None) => return Ok(Read::Nothing),
        (Some(_), true, None) => {
            let reply = backend
                .query(&capture::spilled_query(named))
                .await
                .map_err(Lost::nothing)?;
            if let Some(error) = reply.error {
                rollback(backend).await?;
                return Ok(Read::Failed(Failure::Postgres { error, hint: None }));
            }
            let mut results = reply.results.into_iter();
            let rows = results.next().map(|r| r.rows).unwrap_or_default();
            let positions = results
                .next()
                .and_then(|r| r.rows.into_iter().next())
                .and_then(|row| row.into_iter().next().flatten());
            changes_from_capture_text(&rows).and_then(|mut changes| {
                changes.extend(changes_from_buffer("", positions.as_deref())?);
                Ok(changes)
            })
        }
        (Some(_), false, _) => changes_from_buffer(&captured.buffer, captured.sequences.as_deref())
            .and_then(|mut changes| {
                changes.extend(changes_from_buffer(
                    "",
                    captured.named_sequences.as_deref(),
                )?);
                Ok(changes)
            }),
        // The check passed although the transaction has no id or spilled: never taken as written.
        (None, _, Some(_)) | (Some(_), true, Some(_)) => Ok(Vec::new()),
    };
    match read {
        Ok(changes) if !changes.is_empty() => Ok(Read::Changes(changes)),
        Ok(_) if prepared.is_none() => Ok(Read::Nothing),
        Ok(_) => {
            abandon(backend, prepared).await?;
            Ok(Read::Failed(Failure::Waly(
                PgError::error(
                    SqlState::INTERNAL_ERROR,
                    "waly prepared a transaction whose row changes it could not read",
                )
                .with_detail("The transaction was rolled back; nothing was logged."),
            )))
        }
        Err(e) => {
            abandon(backend, prepared).await?;
            Ok(Read::Failed(Failure::Waly(unreadable(&e))))
        }
    }
}

/// The protocol could not finish on this connection.
#[derive(Debug)]
pub struct Lost {
    pub reason: BackendLost,
    /// A transaction that may be prepared, to resolve on another connection: `(gid, commit?)`.
    pub resolve: Option<(InFlight, bool)>,
    /// A direct commit whose COMMIT's outcome is unknown: dropping it hands it to the resolver, which
    /// asks Postgres.
    pub undecided: Option<Ticket>,
}

impl Lost {
    pub(super) fn nothing(reason: BackendLost) -> Lost {
        Lost {
            reason,
            resolve: None,
            undecided: None,
        }
    }

    pub(super) fn prepared(reason: BackendLost, gid: &InFlight, commit: bool) -> Lost {
        Lost {
            reason,
            resolve: Some((gid.clone(), commit)),
            undecided: None,
        }
    }

    pub(super) fn undecided(reason: BackendLost, ticket: Ticket) -> Lost {
        Lost {
            reason,
            resolve: None,
            undecided: Some(ticket),
        }
    }
}

/// The client's error when the log refuses an append: the transaction was rolled back.
pub(super) fn not_logged(e: &crate::log::LogError) -> PgError {
    let hint = match e.sqlstate().0 {
        "53100" => "Free space where waly keeps its log (data_dir); reads keep working meanwhile.",
        "54000" => {
            "A record holds its transaction's statements and every row image: split the transaction into \
             smaller ones, or raise the limit (log.file.max_record_bytes for the file log)."
        }
        _ => "Reads keep working; writes resume once the log accepts appends again.",
    };
    PgError::error(
        e.sqlstate(),
        format!("waly could not log this transaction: {e}"),
    )
    .with_detail("The transaction was rolled back; nothing was logged or committed.")
    .with_hint(hint)
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
pub(super) async fn abandon(
    backend: &mut impl Backend,
    prepared: Option<&InFlight>,
) -> Result<(), Lost> {
    let Some(claim) = prepared else {
        return rollback(backend).await;
    };
    let gid = claim.gid();
    let sql = format!("ROLLBACK PREPARED '{gid}'");
    let reply = backend
        .query(&sql)
        .await
        .map_err(|e| Lost::prepared(e, claim, false))?;
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

/// Rolls back the transaction open on the connection.
pub(super) async fn rollback(backend: &mut impl Backend) -> Result<(), Lost> {
    let reply = backend.query("ROLLBACK").await.map_err(Lost::nothing)?;
    if let Some(e) = reply.error {
        tracing::warn!(code = e.code(), message = e.message(), "rollback failed");
    }
    Ok(())
}
