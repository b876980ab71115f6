//! The write path inside a session: which client requests pass straight through, which must run inside a
//! transaction waly opens (an autocommit write), and where a transaction ends (COMMIT, or the end of a
//! wrapped request), so that the commit protocol ([`crate::commit`]) runs there.
//!
//! Requests are Query messages, FunctionCall messages and extended-protocol batches (everything up to a
//! Sync). Reads pass through at once, pipelined. A request that may write is decided only when the
//! backend's transaction status is known (nothing else in flight): in a transaction block it passes
//! through; outside one, waly sends `BEGIN` ahead of it and, at its ReadyForQuery, commits it through the
//! log. A COMMIT is never sent to Postgres while a transaction is open: waly runs the commit protocol and
//! answers it. Query strings and batches that contain a COMMIT among other statements are split at it.
//!
//! Every request produces exactly one ReadyForQuery for the client, as it would from Postgres. Replies to
//! waly's own messages (its BEGIN, the Syncs that end split pieces) never reach the client. This module
//! must never change what a statement does; it only decides where transactions begin and end.

use std::collections::VecDeque;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::own::OwnQueries;
use super::relay::{Buffers, Ending, Relay, forward, write_now};
use super::tracker::{Seen, inspect_frontend};
use crate::classify::{Classification, Refusal, StatementKind, TransactionControl};
use crate::commit::{self, Failure, Outcome};
use crate::operations::{Matcher, Rewrite};
use crate::record::Statement;
use crate::wire::frame::Scan;
use crate::wire::messages::{self, encode};
use crate::wire::{PgError, SqlState};

/// The write path's state for one session.
pub struct Flow {
    /// One entry per request sent to the backend whose ReadyForQuery has not arrived, in order.
    steps: VecDeque<Step>,
    /// Pieces of a split request still to run, in order.
    pieces: VecDeque<Piece>,
    /// The backend's transaction status after the last ReadyForQuery (shown to the client or not).
    status: u8,
    /// An extended-protocol batch being collected up to its Sync.
    batch: Batch,
    /// Part of the batch was sent at a Flush; the rest goes straight through until the Sync.
    streaming: bool,
    /// The backend is in COPY FROM STDIN: the client's CopyData flows regardless of what is held.
    copy_in: bool,
    /// The client ended a COPY whose request still awaits ReadyForQuery. Some clients (tokio-postgres)
    /// send Sync after Execute and again after CopyDone; Postgres ignores the first (it arrives in
    /// copy mode) and answers the second, so that one belongs to the same request.
    copy_ended: bool,
    /// A failure ended the batch early: drop the client's messages up to its Sync, then answer the Sync.
    skip_to_sync: bool,
    /// The write statements of the open transaction, for its record.
    statements: Vec<Statement>,
}

impl Default for Flow {
    fn default() -> Self {
        Self {
            steps: VecDeque::new(),
            pieces: VecDeque::new(),
            status: b'I',
            batch: Batch::default(),
            streaming: false,
            copy_in: false,
            copy_ended: false,
            skip_to_sync: false,
            statements: Vec::new(),
        }
    }
}

impl Flow {
    /// True when nothing is queued, held or in flight on the write path.
    pub fn settled(&self) -> bool {
        self.steps.is_empty() && self.pieces.is_empty() && self.batch.bytes.is_empty()
    }

    /// True when pieces of a split request wait for their turn.
    pub fn has_pieces(&self) -> bool {
        !self.pieces.is_empty()
    }

    /// True while waly waits for a wrapped request to end before it commits: nothing else may be sent.
    fn commit_pending(&self) -> bool {
        self.steps.iter().any(|s| s.then != Then::Forward)
    }
}

/// A request sent to the backend, awaiting its ReadyForQuery.
struct Step {
    /// waly's own pipelined BEGIN: everything up to its ReadyForQuery is dropped.
    own: bool,
    then: Then,
    /// An intermediate piece of a split request: its ReadyForQuery is dropped unless an error came.
    intermediate: bool,
    saw_error: bool,
    /// For a request waly commits ([`Then::Commit`]): its last CommandComplete, held back until the
    /// commit is decided, as Postgres commits an implicit transaction before it completes the last
    /// statement. Sent when the commit succeeds (or anything else follows it), dropped when it fails.
    held: Option<BytesMut>,
    /// Whether to hold it: only when the client has sent the whole request (a streamed batch's client
    /// may wait for the completion before it sends its Sync).
    holds: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Pass the ReadyForQuery on.
    Forward,
    /// The request ran inside waly's BEGIN: commit it through the log, then answer.
    Commit,
    /// A piece of a split request inside waly's BEGIN, not the last: go on, or roll back on error.
    Continue,
    /// A statement that ran outside any transaction block: log what it changed after the fact.
    LogAfter,
}

/// How a piece relates to a transaction waly opens around a whole split request.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum Wrapping {
    /// Decided by the piece alone (wrapped if it may write outside a transaction).
    #[default]
    Own,
    /// The first piece: open waly's transaction before it.
    Open,
    /// Inside waly's transaction.
    Inside,
}

/// What a request does, as far as the write path cares.
#[derive(Clone, Copy, Default)]
struct Effects {
    may_write: bool,
    begins: bool,
    autocommit_only: bool,
}

impl Effects {
    fn of(class: &Classification) -> Effects {
        Effects {
            may_write: class.may_write(),
            begins: class.begins(),
            autocommit_only: class.autocommit_only,
        }
    }

    fn add(&mut self, other: Effects) {
        self.may_write |= other.may_write;
        self.begins |= other.begins;
        self.autocommit_only |= other.autocommit_only;
    }
}

/// A part of a request that runs on its own once everything before it has answered.
struct Piece {
    bytes: BytesMut,
    kind: PieceKind,
    wrapping: Wrapping,
    /// The request's last piece: its ReadyForQuery is the one the client waits for.
    last: bool,
    /// Sent before its batch's Sync: the rest of the batch streams through after it.
    streams: bool,
    statements: Vec<Statement>,
}

/// How a collected batch ends (see [`Relay::finish_batch`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    Sync,
    Flush,
    Injected,
}

enum PieceKind {
    Request(Effects),
    /// A COMMIT: the commit protocol runs in its place if a transaction is open.
    Commit {
        extended: bool,
    },
}

/// An extended-protocol batch collected up to its Sync.
#[derive(Default)]
struct Batch {
    bytes: BytesMut,
    effects: Effects,
    /// Executes of COMMIT and ROLLBACK in `bytes`, where the batch is split.
    ends: Vec<End>,
    /// Per Execute: where it ends, what it does and its statement, to split the batch at COMMITs.
    executes: Vec<(usize, Effects, Option<Statement>)>,
}

/// An Execute that ends a transaction inside a batch: the batch is split there.
#[derive(Clone, Copy)]
struct End {
    start: usize,
    end: usize,
    /// COMMIT (the commit protocol runs in its place); otherwise ROLLBACK, which runs as the last
    /// statement of the part before it, so what follows it is decided (wrapped) on its own.
    commit: bool,
}

/// SQLSTATE 2D000: a COMMIT or ROLLBACK where none is allowed, such as in a procedure called inside a
/// transaction block.
const INVALID_TRANSACTION_TERMINATION: &str = "2D000";

/// Why a procedure cannot commit through waly, added to Postgres' 2D000 when waly opened the transaction.
const WRAPPED_TRANSACTION_CONTROL_HINT: &str = "waly runs a write sent outside a transaction block in a \
     transaction of its own, so that its record is in the log before it commits; a procedure called there \
     cannot COMMIT or ROLLBACK. Leave transaction control to the caller (one CALL per batch).";

/// Reads must not wait; everything else that depends on the transaction status must.
fn needs_status(effects: Effects, commits: bool) -> bool {
    commits || (effects.may_write && !effects.autocommit_only && !effects.begins)
}

/// Why the client side stopped.
pub enum Pumped {
    /// Everything available was handled or is waiting for the backend.
    Idle,
    /// The client sent Terminate.
    Terminated,
}

/// Client messages the write path must see whole (CopyDone and CopyFail too, to follow COPY).
fn inspect_client(tag: u8) -> bool {
    inspect_frontend(tag) || tag == b'c' || tag == b'f'
}

/// A statement waly refuses, turned into one that fails with waly's error, so that Postgres reports it at
/// the right point of the conversation (and aborts the transaction as any failed statement does).
fn refusal_sql(class: &Classification, status: u8) -> Option<String> {
    let r = class.refusal.or_else(|| reset_all_refusal(class, status))?;
    Some(raise_sql(
        &PgError::error(SqlState::FEATURE_NOT_SUPPORTED, r.message()).with_hint(r.hint()),
    ))
}

/// RESET ALL would also reset the transaction-local settings that hold waly's capture buffer: refused
/// inside a transaction block, and beside writes in one query string (which waly wraps in one).
fn reset_all_refusal(class: &Classification, status: u8) -> Option<Refusal> {
    let writes = || {
        class
            .statements
            .iter()
            .any(|k| matches!(k, StatementKind::Write | StatementKind::Ddl))
    };
    (class.resets_all && (status != b'I' || writes())).then_some(Refusal::ResetAllInTransaction)
}

/// A statement that fails with `error` (SQLSTATE, message, detail, hint) when Postgres runs it.
fn raise_sql(error: &PgError) -> String {
    let quote = |s: &str| s.replace('\'', "''");
    let mut using = format!(
        "ERRCODE = '{}', MESSAGE = '{}'",
        error.code.0,
        quote(&error.message)
    );
    if let Some(detail) = &error.detail {
        using.push_str(&format!(", DETAIL = '{}'", quote(detail)));
    }
    if let Some(hint) = &error.hint {
        using.push_str(&format!(", HINT = '{}'", quote(hint)));
    }
    format!("DO $waly$ BEGIN RAISE EXCEPTION USING {using}; END $waly$")
}

/// What Postgres runs in place of `sql` when it is a direct invocation of an operation.
fn invocation_sql(matcher: Option<&mut Matcher>, sql: &str) -> Option<String> {
    match matcher?.rewrite(sql)? {
        Rewrite::Sql(sql) => Some(sql),
        Rewrite::Fail(error) => Some(raise_sql(&error)),
    }
}

impl<CR, CW> Relay<CR, CW>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
{
    /// Handles what the client sent, as far as the write path allows now. Runs pieces that became
    /// runnable, which may run the commit protocol.
    pub(super) async fn pump_client(&mut self, b: &mut Buffers) -> Result<Pumped, Ending> {
        loop {
            if !self.flow.pieces.is_empty() {
                if !self.flow.steps.is_empty() {
                    return Ok(Pumped::Idle);
                }
                let piece = self.flow.pieces.pop_front().expect("not empty");
                self.run_piece(piece, b).await?;
                continue;
            }
            let held = self.flow.commit_pending();
            if b.from_client.is_empty() {
                return self.caught_up(b, held).await;
            }
            // CopyData (the only frontend message streamed without being inspected).
            if self.client_frames.at_boundary() && b.from_client[0] == b'd'
                || !self.client_frames.at_boundary()
            {
                if held && !self.flow.copy_in {
                    return Ok(Pumped::Idle);
                }
                match self.client_frames.next(&b.from_client, inspect_client) {
                    Ok(Scan::Pass(n)) => {
                        forward(&mut b.from_client, n, &mut b.to_backend);
                        continue;
                    }
                    Ok(Scan::NeedMore) => return Ok(Pumped::Idle),
                    Ok(Scan::Message { .. }) => unreachable!("CopyData is passed, not inspected"),
                    Err(e) => return Err(self.protocol_violation(e, b).await),
                }
            }
            let (tag, len) = match self.client_frames.next(&b.from_client, inspect_client) {
                Ok(Scan::Message { tag, len, .. }) => (tag, len),
                Ok(Scan::Pass(n)) => {
                    // An unexpected message type that is not inspected: pass it on in order.
                    forward(&mut b.from_client, n, &mut b.to_backend);
                    continue;
                }
                Ok(Scan::NeedMore) => return self.caught_up(b, held).await,
                Err(e) => return Err(self.protocol_violation(e, b).await),
            };
            tracing::trace!(tag = %char::from(tag), held, steps = self.flow.steps.len(), streaming = self.flow.streaming, "client message");
            match tag {
                b'c' | b'f' => {
                    if held && !self.flow.copy_in {
                        return Ok(Pumped::Idle);
                    }
                    if self.flow.copy_in {
                        self.flow.copy_ended = !self.flow.steps.is_empty();
                    }
                    self.flow.copy_in = false;
                    forward(&mut b.from_client, len, &mut b.to_backend);
                }
                b'X' => {
                    self.tracker.on_frontend(tag, &[]);
                    forward(&mut b.from_client, len, &mut b.to_backend);
                    return Ok(Pumped::Terminated);
                }
                b'Q' | b'F' => {
                    if self.flow.streaming {
                        // A Query after a batch that streamed from a Flush, before its Sync (asyncpg
                        // prepares with Parse, Describe, Flush, then sends COPY as a Query): Postgres
                        // ends the batch there. So does waly, with a Sync of its own; the Query then
                        // runs as a request of its own.
                        self.end_streamed_part(b);
                        write_now(&mut self.backend_w, &mut b.to_backend)
                            .map_err(|_| Ending::BackendGone)?;
                        continue;
                    }
                    if self.flow.skip_to_sync || !self.flow.batch.bytes.is_empty() {
                        // A Query inside an unfinished batch: Postgres ends the batch's implicit
                        // transaction there; send what was collected first.
                        if !self.flow.batch.bytes.is_empty() {
                            if !self.flow.steps.is_empty() {
                                return Ok(Pumped::Idle);
                            }
                            self.finish_batch(b, Tail::Injected).await?;
                            continue;
                        }
                        self.flow.skip_to_sync = false;
                    }
                    if held || (!self.flow.steps.is_empty() && self.peek_needs_status(tag, b)) {
                        return Ok(Pumped::Idle);
                    }
                    let seen = self.tracker.on_frontend(tag, &b.from_client[5..len]);
                    self.note_replaced_databases(seen.as_ref()).await;
                    let message = b.from_client.split_to(len);
                    self.simple_request(message, seen, b).await?;
                }
                b'S' => {
                    if self.flow.skip_to_sync {
                        self.tracker.on_frontend(tag, &[]);
                        b.from_client.advance(len);
                        self.flow.skip_to_sync = false;
                        self.ready(b, self.flow.status);
                        continue;
                    }
                    if self.flow.streaming {
                        self.tracker.on_frontend(tag, &[]);
                        self.flow.streaming = false;
                        forward(&mut b.from_client, len, &mut b.to_backend);
                        continue;
                    }
                    if self.flow.copy_ended {
                        // The Sync after CopyDone of a request whose own Sync Postgres ignored.
                        self.flow.copy_ended = false;
                        forward(&mut b.from_client, len, &mut b.to_backend);
                        continue;
                    }
                    let batch = &self.flow.batch;
                    if held
                        || (!self.flow.steps.is_empty()
                            && needs_status(batch.effects, !batch.ends.is_empty()))
                    {
                        return Ok(Pumped::Idle);
                    }
                    self.tracker.on_frontend(tag, &[]);
                    let sync = b.from_client.split_to(len);
                    self.flow.batch.bytes.extend_from_slice(&sync);
                    self.finish_batch(b, Tail::Sync).await?;
                }
                b'H' if !self.flow.streaming && self.flow.batch.bytes.is_empty() => {
                    // A Flush on its own asks for nothing new: pass it on.
                    if held {
                        return Ok(Pumped::Idle);
                    }
                    self.tracker.on_frontend(tag, &[]);
                    forward(&mut b.from_client, len, &mut b.to_backend);
                }
                b'H' if !self.flow.streaming => {
                    if held || !self.flow.steps.is_empty() {
                        return Ok(Pumped::Idle);
                    }
                    self.tracker.on_frontend(tag, &[]);
                    let flush = b.from_client.split_to(len);
                    self.flow.batch.bytes.extend_from_slice(&flush);
                    self.finish_batch(b, Tail::Flush).await?;
                }
                _ => {
                    // Parse, Bind, Describe, Execute, Close (and Flush while streaming).
                    let seen = self.tracker.on_frontend(tag, &b.from_client[5..len]);
                    self.note_replaced_databases(seen.as_ref()).await;
                    let message = b.from_client.split_to(len);
                    if self.flow.skip_to_sync {
                        continue;
                    }
                    self.collect(tag, message, seen, b).await?;
                }
            }
            write_now(&mut self.backend_w, &mut b.to_backend).map_err(|_| Ending::BackendGone)?;
        }
    }

    /// Everything the client sent so far is handled. A batch with an Execute but no Sync yet is sent now:
    /// the client may be waiting for an answer Postgres gives without a Sync (a COPY FROM STDIN's
    /// CopyInResponse, which tokio-postgres waits for before it sends data and the Sync).
    async fn caught_up(&mut self, b: &mut Buffers, held: bool) -> Result<Pumped, Ending> {
        // A COMMIT is never sent before its batch is complete: the client cannot be waiting for it.
        let waiting_batch = !self.flow.batch.executes.is_empty()
            && self.flow.batch.ends.is_empty()
            && !self.flow.streaming;
        if waiting_batch && !held && self.flow.steps.is_empty() && self.flow.pieces.is_empty() {
            self.finish_batch(b, Tail::Flush).await?;
            write_now(&mut self.backend_w, &mut b.to_backend).map_err(|_| Ending::BackendGone)?;
        }
        Ok(Pumped::Idle)
    }

    /// Ends the part of a batch that streamed from a Flush with a Sync of waly's own, whose
    /// ReadyForQuery the client does not see (it sent no Sync), unless an error came.
    fn end_streamed_part(&mut self, b: &mut Buffers) {
        encode::sync(&mut b.to_backend);
        if let Some(step) = self.flow.steps.back_mut() {
            step.intermediate = true;
        }
        self.flow.streaming = false;
    }

    /// Whether a pipelined Query or FunctionCall must wait for the transaction status.
    fn peek_needs_status(&mut self, tag: u8, b: &Buffers) -> bool {
        if tag == b'F' {
            return true;
        }
        let body = &b.from_client[5..];
        match messages::query_text(body) {
            Some(sql) => {
                let class = self.tracker.classify(sql);
                class.resets_all
                    || (class.refusal.is_none()
                        && needs_status(
                            Effects::of(&class),
                            class.commits() || class.rolls_back_among_writes(),
                        ))
            }
            None => false,
        }
    }

    /// A Query or FunctionCall: passes through, is wrapped, or is split at its COMMITs.
    async fn simple_request(
        &mut self,
        message: BytesMut,
        seen: Option<Seen>,
        b: &mut Buffers,
    ) -> Result<(), Ending> {
        let Some(seen) = seen else {
            if message[0] == b'F'
                && messages::function_call_oid(&message[5..])
                    .is_some_and(crate::classify::is_large_object_writer_oid)
            {
                // Answered as Postgres answers a failed call (ErrorResponse, ReadyForQuery), and aborting
                // the transaction as a failed call would.
                let r = Refusal::LargeObject;
                let sql = raise_sql(
                    &PgError::error(SqlState::FEATURE_NOT_SUPPORTED, r.message())
                        .with_hint(r.hint()),
                );
                let mut bytes = BytesMut::new();
                encode::query(&mut bytes, &sql);
                return self
                    .run_piece(request(bytes, Effects::default(), true, Vec::new()), b)
                    .await;
            }
            // A FunctionCall (or an undecodable Query): it may write.
            let effects = Effects {
                may_write: true,
                ..Effects::default()
            };
            return self
                .run_piece(
                    Piece {
                        bytes: message,
                        kind: PieceKind::Request(effects),
                        wrapping: Wrapping::Own,
                        last: true,
                        streams: false,
                        statements: Vec::new(),
                    },
                    b,
                )
                .await;
        };
        let class = &seen.class;
        if let Some(sql) = refusal_sql(class, self.flow.status) {
            let mut bytes = BytesMut::new();
            encode::query(&mut bytes, &sql);
            return self
                .run_piece(request(bytes, Effects::default(), true, Vec::new()), b)
                .await;
        }
        let mut message = message;
        if class.statements.len() == 1
            && let Some(sql) = messages::query_text(&message[5..])
            && let Some(rewritten) = invocation_sql(self.write.matcher.as_mut(), sql)
        {
            let mut bytes = BytesMut::new();
            encode::query(&mut bytes, &rewritten);
            message = bytes;
        }
        if class.statements.len() > 1
            && (class.commits()
                || class.rolls_back_among_writes()
                || class.statements.contains(&StatementKind::Ddl))
        {
            // Split at COMMIT (the commit protocol runs there), after ROLLBACK (what follows it runs in
            // a transaction of its own, which waly must wrap) and around DDL (each DDL change is
            // recorded with its own statement's text, which replay executes).
            let text = messages::query_text(&message[5..])
                .unwrap_or_default()
                .to_owned();
            let atomic = self.flow.status == b'I'
                && !class
                    .statements
                    .iter()
                    .any(|k| matches!(k, StatementKind::Transaction(_)));
            return self.split_query(&text, atomic);
        }
        let kind = if class.commits() {
            PieceKind::Commit { extended: false }
        } else {
            PieceKind::Request(Effects::of(class))
        };
        let piece = Piece {
            bytes: message,
            kind,
            wrapping: Wrapping::Own,
            last: true,
            streams: false,
            statements: seen.statement.into_iter().collect(),
        };
        self.run_piece(piece, b).await
    }

    /// Runs a query string one statement at a time (see [`Self::simple_request`] for when). `atomic`: the
    /// string runs outside a transaction and has no transaction control, so Postgres would run it as one
    /// implicit transaction; waly opens one around all the pieces and commits at the end.
    fn split_query(&mut self, text: &str, atomic: bool) -> Result<(), Ending> {
        let parts: Vec<String> = match pg_query::split_with_parser(text) {
            Ok(parts) => parts.into_iter().map(str::to_owned).collect(),
            Err(_) => vec![text.to_owned()],
        };
        let count = parts.len();
        for (i, sql) in parts.into_iter().enumerate() {
            let class = self.tracker.classify(&sql);
            let mut bytes = BytesMut::new();
            encode::query(&mut bytes, &sql);
            let kind = if class.commits() && class.refusal.is_none() {
                PieceKind::Commit { extended: false }
            } else {
                PieceKind::Request(Effects::of(&class))
            };
            let statements = if class.may_write() {
                vec![Statement {
                    sql: sql.clone(),
                    params: Vec::new(),
                }]
            } else {
                Vec::new()
            };
            let wrapping = match (atomic, i) {
                (false, _) => Wrapping::Own,
                (true, 0) => Wrapping::Open,
                (true, _) => Wrapping::Inside,
            };
            self.flow.pieces.push_back(Piece {
                bytes,
                kind,
                wrapping,
                last: i + 1 == count,
                streams: false,
                statements,
            });
        }
        Ok(())
    }

    /// Adds one extended-protocol message to the batch (or sends it on while streaming).
    async fn collect(
        &mut self,
        tag: u8,
        message: BytesMut,
        seen: Option<Seen>,
        b: &mut Buffers,
    ) -> Result<(), Ending> {
        let mut message = message;
        if tag == b'P'
            && let Some((name, _)) = messages::parse_message(&message[5..])
            && let Some(refused) = self
                .tracker
                .prepared(name)
                .and_then(|c| refusal_sql(c, self.flow.status))
        {
            let mut rewritten = BytesMut::new();
            if encode::parse_replacing_sql(&mut rewritten, &message[5..], &refused).is_some() {
                message = rewritten;
            }
        } else if tag == b'P'
            && let Some((_, sql)) = messages::parse_message(&message[5..])
            && let Some(invoked) = invocation_sql(self.write.matcher.as_mut(), sql)
        {
            let mut rewritten = BytesMut::new();
            if encode::parse_replacing_sql(&mut rewritten, &message[5..], &invoked).is_some() {
                message = rewritten;
            }
        }
        let commit = seen
            .as_ref()
            .is_some_and(|s| s.class.commits() && s.class.refusal.is_none());
        let rollback = seen.as_ref().is_some_and(|s| {
            s.class.has(TransactionControl::Rollback) && s.class.refusal.is_none()
        });
        if self.flow.streaming {
            if commit {
                // End the part already sent with a Sync of waly's own, then commit, then go on with the
                // rest of the batch as a new one.
                self.end_streamed_part(b);
                self.flow.pieces.push_back(Piece {
                    bytes: message,
                    kind: PieceKind::Commit { extended: true },
                    wrapping: Wrapping::Own,
                    last: false,
                    streams: false,
                    statements: Vec::new(),
                });
                return Ok(());
            }
            if let Some(statement) = seen.and_then(|s| s.statement) {
                self.flow.statements.push(statement);
            }
            b.to_backend.extend_from_slice(&message);
            return Ok(());
        }
        let batch = &mut self.flow.batch;
        let start = batch.bytes.len();
        batch.bytes.extend_from_slice(&message);
        if let Some(seen) = seen {
            let effects = Effects::of(&seen.class);
            if commit {
                batch.ends.push(End {
                    start,
                    end: batch.bytes.len(),
                    commit: true,
                });
            } else {
                batch.effects.add(effects);
                if rollback {
                    batch.ends.push(End {
                        start,
                        end: batch.bytes.len(),
                        commit: false,
                    });
                }
            }
            batch
                .executes
                .push((batch.bytes.len(), effects, seen.statement));
        }
        Ok(())
    }

    /// Runs the batch collected so far, split at its COMMITs (each runs the commit protocol). `tail` says
    /// how the batch ends: with the client's Sync; with a Flush (or nothing more yet) while the client
    /// waits for replies, so the rest of the batch streams through until its Sync and, outside a
    /// transaction, the batch is wrapped since what follows is not known; or with a Sync of waly's own
    /// (a Query arrived before the batch's Sync).
    async fn finish_batch(&mut self, b: &mut Buffers, tail: Tail) -> Result<(), Ending> {
        let batch = std::mem::take(&mut self.flow.batch);
        let mut executes = batch.executes.into_iter().peekable();
        let mut rest = batch.bytes;
        let mut base = 0;
        for End { start, end, commit } in batch.ends.iter().copied() {
            let mut effects = Effects::default();
            let mut statements = Vec::new();
            if !commit {
                if !executes.clone().any(|(at, e, _)| at > end && e.may_write) {
                    continue;
                }
                // The part up to and including the ROLLBACK, ended with a Sync of waly's own.
                while let Some((_, e, s)) = executes.next_if(|(at, _, _)| *at <= end) {
                    effects.add(e);
                    statements.extend(s);
                }
                let mut part = rest.split_to(end - base);
                encode::sync(&mut part);
                self.flow
                    .pieces
                    .push_back(request(part, effects, false, statements));
                base = end;
                continue;
            }
            while let Some((_, e, s)) = executes.next_if(|(at, _, _)| *at <= start) {
                effects.add(e);
                statements.extend(s);
            }
            // The COMMIT's own Execute.
            executes.next_if(|(at, _, _)| *at == end);
            let mut part = rest.split_to(start - base);
            encode::sync(&mut part);
            self.flow
                .pieces
                .push_back(request(part, effects, false, statements));
            self.flow.pieces.push_back(Piece {
                bytes: rest.split_to(end - start),
                kind: PieceKind::Commit { extended: true },
                wrapping: Wrapping::Own,
                last: false,
                streams: false,
                statements: Vec::new(),
            });
            base = end;
        }
        let mut effects = Effects::default();
        let mut statements = Vec::new();
        for (_, e, s) in executes {
            effects.add(e);
            statements.extend(s);
        }
        let mut last = request(rest, effects, tail != Tail::Injected, statements);
        match tail {
            Tail::Sync => {}
            Tail::Flush => {
                // Unknown future: treat it as a write unless the client opened its own transaction.
                last.kind = PieceKind::Request(Effects {
                    may_write: true,
                    ..effects
                });
                last.streams = true;
            }
            Tail::Injected => encode::sync(&mut last.bytes),
        }
        if self.flow.pieces.is_empty() {
            self.run_piece(last, b).await
        } else {
            self.flow.pieces.push_back(last);
            Ok(())
        }
    }

    /// Runs one piece; the backend has answered everything before it.
    async fn run_piece(&mut self, piece: Piece, b: &mut Buffers) -> Result<(), Ending> {
        match piece.kind {
            PieceKind::Request(effects) => {
                let wrap = match piece.wrapping {
                    Wrapping::Own => {
                        self.flow.status == b'I'
                            && effects.may_write
                            && !effects.begins
                            && !effects.autocommit_only
                    }
                    Wrapping::Open => true,
                    Wrapping::Inside => false,
                };
                let then = match piece.wrapping {
                    Wrapping::Own if wrap => Then::Commit,
                    Wrapping::Own if effects.autocommit_only && self.flow.status == b'I' => {
                        Then::LogAfter
                    }
                    Wrapping::Own => Then::Forward,
                    _ if piece.last => Then::Commit,
                    _ => Then::Continue,
                };
                if wrap {
                    encode::query(&mut b.to_backend, "BEGIN");
                    self.flow.steps.push_back(Step {
                        own: true,
                        then: Then::Forward,
                        intermediate: true,
                        saw_error: false,
                        held: None,
                        holds: false,
                    });
                }
                self.flow.statements.extend(piece.statements);
                b.to_backend.extend_from_slice(&piece.bytes);
                self.flow.steps.push_back(Step {
                    own: false,
                    then,
                    intermediate: !piece.last,
                    saw_error: false,
                    held: None,
                    holds: then == Then::Commit && !piece.streams,
                });
                self.flow.streaming = piece.streams;
                write_now(&mut self.backend_w, &mut b.to_backend)
                    .map_err(|_| Ending::BackendGone)?;
                Ok(())
            }
            PieceKind::Commit { extended } => {
                if self.flow.status == b'T' {
                    return self.commit_now(b, true, piece.last, None).await;
                }
                // No transaction to commit (or a failed one): Postgres answers COMMIT itself.
                if extended {
                    match self.flow.pieces.front_mut() {
                        Some(next) => {
                            let mut bytes = piece.bytes;
                            bytes.extend_from_slice(&next.bytes);
                            next.bytes = bytes;
                        }
                        None => b.to_backend.extend_from_slice(&piece.bytes),
                    }
                    return Ok(());
                }
                let piece = request(piece.bytes, Effects::default(), piece.last, Vec::new());
                Box::pin(self.run_piece(piece, b)).await
            }
        }
    }

    /// Routes what the backend sent: to the client, or dropped (replies to waly's own messages). Runs the
    /// commit protocol when a wrapped request ends.
    pub(super) async fn route_backend(&mut self, b: &mut Buffers) -> Result<(), Ending> {
        let mut consumed = 0;
        loop {
            let scan = self
                .backend_frames
                .next(&b.from_backend[consumed..], inspect_server);
            let (tag, len, status) = match scan {
                Ok(Scan::Pass(n)) => {
                    if self.flow.steps.front().is_some_and(|s| s.own) {
                        drop_bytes(b, &mut consumed, n);
                    } else {
                        release_held(self.flow.steps.front_mut(), b, &mut consumed);
                        consumed += n;
                    }
                    continue;
                }
                Ok(Scan::NeedMore) => break,
                Ok(Scan::Message { tag, body, len }) => {
                    let status = if tag == b'Z' {
                        messages::ready_status(body)
                    } else {
                        None
                    };
                    if matches!(tag, b'E' | b't') && !self.flow.steps.front().is_some_and(|s| s.own)
                    {
                        self.tracker.on_backend(tag, body);
                    }
                    if tag == b'S' {
                        super::follow_parameter(
                            body,
                            &mut self.write.session.application_name,
                            Some(&mut self.write.client_utf8),
                        );
                    }
                    (tag, len, status)
                }
                Err(e) => {
                    self.span.in_scope(|| tracing::error!(error = %e, "Postgres sent an invalid message; closing the session"));
                    forward(&mut b.from_backend, consumed, &mut b.to_client);
                    return Err(Ending::BackendGone);
                }
            };
            let Some(step) = self.flow.steps.front_mut() else {
                consumed += len;
                continue;
            };
            if step.own {
                drop_bytes(b, &mut consumed, len);
                if let Some(status) = status {
                    self.flow.status = status;
                    self.flow.steps.pop_front();
                }
                continue;
            }
            if step.holds && tag == b'C' {
                release_held(Some(&mut *step), b, &mut consumed);
                forward(&mut b.from_backend, consumed, &mut b.to_client);
                consumed = 0;
                step.held = Some(b.from_backend.split_to(len));
                continue;
            }
            if status.is_none() {
                release_held(Some(&mut *step), b, &mut consumed);
            }
            match tag {
                b'E' => {
                    step.saw_error = true;
                    if step.then != Then::Forward
                        && messages::error_field(
                            &b.from_backend[consumed + 5..consumed + len],
                            b'C',
                        ) == Some(INVALID_TRANSACTION_TERMINATION)
                    {
                        // A procedure's COMMIT or ROLLBACK inside the transaction waly opened around
                        // the CALL: Postgres' error, with why.
                        forward(&mut b.from_backend, consumed, &mut b.to_client);
                        consumed = 0;
                        let error = commit::ServerError {
                            body: b.from_backend.split_to(len).split_off(5).freeze(),
                        };
                        error.encode(&mut b.to_client, Some(WRAPPED_TRANSACTION_CONTROL_HINT));
                        continue;
                    }
                }
                b'G' | b'W' => self.flow.copy_in = true,
                _ => {}
            }
            let Some(status) = status else {
                consumed += len;
                continue;
            };
            let step = self.flow.steps.pop_front().expect("front exists");
            tracing::trace!(status = %char::from(status), saw_error = step.saw_error, intermediate = step.intermediate, wrapped = (step.then != Then::Forward), "request answered");
            self.flow.status = status;
            self.flow.copy_in = false;
            self.flow.copy_ended = false;
            if status == b'I' && step.then == Then::Forward {
                self.flow.statements.clear();
            }
            match step.then {
                Then::Forward if step.intermediate && !step.saw_error => {
                    drop_bytes(b, &mut consumed, len);
                }
                Then::Forward => {
                    if step.saw_error {
                        self.abandon_request();
                    }
                    self.tracker.on_backend(b'Z', &[status]);
                    consumed += len;
                }
                Then::Continue if status == b'T' && !step.saw_error => {
                    drop_bytes(b, &mut consumed, len);
                }
                Then::LogAfter => {
                    drop_bytes(b, &mut consumed, len);
                    forward(&mut b.from_backend, consumed, &mut b.to_client);
                    consumed = 0;
                    self.log_after(b, status, step).await?;
                }
                Then::Commit | Then::Continue => {
                    drop_bytes(b, &mut consumed, len);
                    forward(&mut b.from_backend, consumed, &mut b.to_client);
                    consumed = 0;
                    self.finish_wrapped(b, status, step).await?;
                }
            }
        }
        forward(&mut b.from_backend, consumed, &mut b.to_client);
        Ok(())
    }

    /// A statement that cannot run in a transaction block answered: log what it left in the capture.
    async fn log_after(&mut self, b: &mut Buffers, status: u8, step: Step) -> Result<(), Ending> {
        let statements = std::mem::take(&mut self.flow.statements);
        if status == b'I' && !step.saw_error {
            let decisions = std::sync::Arc::clone(&self.write.decisions);
            let info = self.write.session.clone();
            let mut matcher = self.write.matcher.take().expect("the session's matcher");
            let mut own = self.own_queries(b);
            let logged = commit::log_committed_leftovers(
                &mut own,
                &decisions,
                &info,
                statements,
                &mut matcher,
            )
            .await;
            self.write.matcher = Some(matcher);
            match logged {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    // The statement itself succeeded and cannot be undone: warn, do not fail it.
                    self.span.in_scope(|| tracing::warn!(error = %e, "effects of a statement outside a transaction block not logged yet"));
                    e.encode_as_warning(&mut b.to_client);
                }
                Err(lost) => return Err(self.lost(lost.reason, lost.resolve)),
            }
            self.flow.status = b'I';
        }
        if !step.intermediate || step.saw_error {
            if step.saw_error {
                self.abandon_request();
            }
            self.ready(b, status);
        }
        Ok(())
    }

    /// A wrapped request answered: commit it through the log (or roll it back after an error).
    async fn finish_wrapped(
        &mut self,
        b: &mut Buffers,
        status: u8,
        step: Step,
    ) -> Result<(), Ending> {
        let last = !step.intermediate;
        let held = step.held;
        if status != b'T' || step.saw_error {
            // Nothing to commit: the held completion stands as Postgres sent it.
            if let Some(h) = &held {
                b.to_client.extend_from_slice(h);
            }
        }
        match status {
            b'T' if !step.saw_error => self.commit_now(b, false, last, held).await,
            b'I' => {
                self.flow.statements.clear();
                if last || step.saw_error {
                    if step.saw_error {
                        self.abandon_request();
                    }
                    self.ready(b, b'I');
                }
                Ok(())
            }
            _ => {
                let mut own = self.own_queries(b);
                if let Err(e) = crate::commit::Backend::query(&mut own, "ROLLBACK").await {
                    return Err(self.lost(e, None));
                }
                self.flow.status = b'I';
                self.flow.statements.clear();
                self.abandon_request();
                self.ready(b, b'I');
                Ok(())
            }
        }
    }

    /// waly's schema went missing from the session's database: install it again, and say so in `error`.
    async fn reinstall_schema(&mut self, error: PgError) -> PgError {
        let database = self.write.session.database.clone();
        let server = std::sync::Arc::clone(&self.write.server);
        server
            .databases
            .forget(std::slice::from_ref(&database))
            .await;
        match server
            .databases
            .ensure_migrated(&server.config, &database)
            .await
        {
            Ok(oid) => {
                // The session was let in on the word of a database of this name that is gone.
                self.write.session.database_oid = Some(oid);
                self.span.in_scope(|| tracing::warn!(%database, "waly's schema was missing from the database; installed it again, the transaction was rolled back"));
                error
            }
            Err(e) => {
                self.span.in_scope(|| tracing::error!(%database, error = %e.message, "waly's schema is missing from the database and cannot be installed"));
                let why = e.detail.as_deref().unwrap_or(&e.message).to_owned();
                error.with_hint(format!(
                    "waly could not install it again ({why}); writes fail until it can."
                ))
            }
        }
    }

    /// Names the databases a statement drops or renames, so that waly installs its schema in a database
    /// created anew under one of those names.
    async fn note_replaced_databases(&self, seen: Option<&Seen>) {
        if let Some(seen) = seen
            && !seen.class.databases_replaced.is_empty()
        {
            self.write
                .server
                .databases
                .forget(&seen.class.databases_replaced)
                .await;
        }
    }

    /// Runs the commit protocol for the open transaction and answers the client: `explicit` when the
    /// client sent COMMIT (it gets `CommandComplete COMMIT`), `last` when its ReadyForQuery is due now,
    /// `held` the completion of the request's last statement, sent only if the commit succeeds.
    async fn commit_now(
        &mut self,
        b: &mut Buffers,
        explicit: bool,
        last: bool,
        held: Option<BytesMut>,
    ) -> Result<(), Ending> {
        let statements = std::mem::take(&mut self.flow.statements);
        let decisions = std::sync::Arc::clone(&self.write.decisions);
        let info = self.write.session.clone();
        let boot = self.write.boot.clone();
        let protocol = self.write.protocol;
        let client_utf8 = self.write.client_utf8;
        let mut matcher = self.write.matcher.take().expect("the session's matcher");
        let outcome = {
            let mut own = self.own_queries(b);
            let how = commit::Commit {
                decisions: &decisions,
                session: &info,
                boot: &boot,
                protocol,
                client_utf8,
            };
            commit::commit(&mut own, &how, statements, &mut matcher).await
        };
        self.write.matcher = Some(matcher);
        self.flow.status = b'I';
        match outcome {
            Ok(Outcome::Committed { logged }) => {
                if let Some(position) = logged {
                    self.span.in_scope(
                        || tracing::debug!(%position, "transaction logged and committed"),
                    );
                }
                if let Some(h) = held {
                    b.to_client.extend_from_slice(&h);
                }
                if explicit {
                    encode::command_complete(&mut b.to_client, "COMMIT");
                }
                if last {
                    self.ready(b, b'I');
                } else if self.flow.pieces.front().is_some_and(Piece::is_bare_sync) {
                    // The client's Sync right after its COMMIT: Postgres, idle after waly's own simple
                    // queries, would answer it with ReadyForQuery alone. Answered here, it costs no round
                    // trip, and the client gets its COMMIT and ReadyForQuery in one write.
                    self.flow.pieces.pop_front();
                    self.ready(b, b'I');
                }
                Ok(())
            }
            Ok(Outcome::Failed(failure)) => {
                match failure {
                    Failure::Postgres { error, hint } => error.encode(&mut b.to_client, hint),
                    Failure::Waly(e) => {
                        self.span
                            .in_scope(|| tracing::warn!(error = %e, "transaction not committed"));
                        e.encode(&mut b.to_client)
                    }
                    Failure::SchemaMissing(e) => {
                        let e = self.reinstall_schema(e).await;
                        e.encode(&mut b.to_client)
                    }
                    Failure::Refused(e) => {
                        self.span.in_scope(|| {
                            tracing::info!(code = e.code.0, error = %e.message, "transaction refused by the operations catalog")
                        });
                        e.encode(&mut b.to_client)
                    }
                    Failure::InDoubt {
                        error,
                        gid,
                        settles_after,
                        after,
                    } => {
                        self.write.resolver.settle_in_doubt(
                            &self.write.session.database,
                            gid,
                            std::sync::Arc::clone(decisions.log()),
                            settles_after,
                            after,
                        );
                        error.encode(&mut b.to_client)
                    }
                }
                if !last && self.flow.pieces.is_empty() {
                    // The rest of the batch is still to come: Postgres would skip it to the Sync.
                    self.flow.skip_to_sync = true;
                    return Ok(());
                }
                self.abandon_request();
                self.ready(b, b'I');
                Ok(())
            }
            Err(lost) => Err(self.lost(lost.reason, lost.resolve)),
        }
    }

    /// The backend connection as the commit protocol uses it: waly's own queries, replies not shown to
    /// the client.
    fn own_queries<'s>(&'s mut self, b: &'s mut Buffers) -> OwnQueries<'s> {
        OwnQueries {
            read: &mut self.backend_r,
            write: &mut self.backend_w,
            inbox: &mut b.from_backend,
            scanner: &mut self.backend_frames,
            to_client: &mut b.to_client,
            application_name: &mut self.write.session.application_name,
        }
    }

    /// An error ended the request: the rest of its pieces does not run.
    fn abandon_request(&mut self) {
        while let Some(piece) = self.flow.pieces.pop_front() {
            if piece.last {
                break;
            }
        }
    }

    /// Sends ReadyForQuery to the client and records it as the client's view of the status.
    fn ready(&mut self, b: &mut Buffers, status: u8) {
        encode::ready_for_query(&mut b.to_client, status);
        self.tracker.on_backend(b'Z', &[status]);
    }

    /// The backend connection broke inside the commit protocol: hand over what it left prepared.
    fn lost(
        &mut self,
        reason: commit::BackendLost,
        resolve: Option<(commit::InFlight, bool)>,
    ) -> Ending {
        self.span.in_scope(
            || tracing::warn!(error = %reason, "lost the backend during the commit protocol"),
        );
        if let Some((gid, commit)) = resolve {
            self.write
                .resolver
                .resolve(&self.write.session.database, gid, commit);
        }
        Ending::BackendGone
    }
}

impl Piece {
    /// A request that is nothing but the client's Sync, ending its batch.
    fn is_bare_sync(&self) -> bool {
        matches!(self.kind, PieceKind::Request(_))
            && self.last
            && !self.streams
            && self.bytes[..] == [b'S', 0, 0, 0, 4]
    }
}

fn request(bytes: BytesMut, effects: Effects, last: bool, statements: Vec<Statement>) -> Piece {
    Piece {
        bytes,
        kind: PieceKind::Request(effects),
        wrapping: Wrapping::Own,
        streams: false,
        last,
        statements,
    }
}

/// Backend messages the write path must see whole.
fn inspect_server(tag: u8) -> bool {
    matches!(tag, b'Z' | b'E' | b'G' | b'W' | b't' | b'C' | b'S')
}

/// Something other than ReadyForQuery follows a held CommandComplete: it was not the last, send it in
/// its place (after what was scanned before it).
fn release_held(step: Option<&mut Step>, b: &mut Buffers, consumed: &mut usize) {
    if let Some(held) = step.and_then(|s| s.held.take()) {
        forward(&mut b.from_backend, *consumed, &mut b.to_client);
        *consumed = 0;
        b.to_client.extend_from_slice(&held);
    }
}

/// Forwards what was scanned before a message to drop, then drops it.
fn drop_bytes(b: &mut Buffers, consumed: &mut usize, len: usize) {
    forward(&mut b.from_backend, *consumed, &mut b.to_client);
    b.from_backend.advance(len);
    *consumed = 0;
}
