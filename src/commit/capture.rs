//! The commit protocol's first round trip: reading what the transaction captured, and preparing it in the
//! same query when that is safe.
//!
//! The capture lives in the transaction's own settings (`migrations/0006_capture_buffer.sql`): the buffer
//! of row-change lines, whether part of it spilled into the `waly.capture` table, and the tables whose
//! sequences' positions belong in the record. One query reads them all, fires deferred constraints first,
//! and, unless `waly.assert_preparable()` objects, ends with `PREPARE TRANSACTION`, so a transaction that
//! wrote a few rows costs one round trip before its append instead of two.
//!
//! This module owns those queries and the reading of their answer; it never decides what to do with the
//! transaction (that is [`super::protocol`]).

use super::backend::{Reply, ServerError};
use crate::record::CAPTURE_COLUMNS;
use crate::wire::{PgError, SqlState};

/// The SQLSTATE `waly.assert_preparable()` raises when the transaction must take the long way.
pub const NOT_PREPARABLE: &str = "WA001";

/// Fires deferred constraints, then reads the transaction id, the commit time, the buffer, the spill flag
/// and the sequence positions (`waly.sequence_positions()` is called only when the transaction inserted),
/// whether PREPARE TRANSACTION is impossible here (the session used temporary objects or has a WITH HOLD
/// cursor open, or Postgres has prepared transactions disabled), and makes the commit wait for Postgres'
/// WAL flush even where the
/// session turned `synchronous_commit` off: once waly tells the log a transaction committed, a crash of
/// Postgres must not take it back. Last, the role in effect (`current_user`), for the record, and the
/// search_path where the capture spilled, for its DDL. It also sets `waly.captured`, after which the
/// capture trigger refuses row changes (migration 0012: a WITH HOLD cursor's query run again at COMMIT).
/// `bench/layers.sh` runs a copy of this query and of [`first_round_trip`]: change them together.
pub const CAPTURE_QUERY: &str = "SET CONSTRAINTS ALL IMMEDIATE; \
     SELECT pg_current_xact_id_if_assigned()::text, \
            to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
            current_setting('waly.capture', true), \
            current_setting('waly.capture_spilled', true), \
            CASE WHEN current_setting('waly.capture_tables', true) <> '' \
                 THEN waly.sequence_positions(current_setting('waly.capture_tables', true)) END, \
            pg_my_temp_schema() <> 0 OR current_setting('max_prepared_transactions') = '0' \
                OR EXISTS (SELECT FROM pg_cursors WHERE is_holdable), \
            concat(set_config('waly.captured', 'on', true), \
                   CASE WHEN current_setting('synchronous_commit') = 'off' \
                        THEN set_config('synchronous_commit', 'local', true) END), \
            current_user::text, \
            CASE WHEN current_setting('waly.capture_spilled', true) = 'on' \
                 THEN current_setting('search_path') END";

/// [`CAPTURE_QUERY`] for a transaction whose statements name the sequences `named` in nextval() or
/// setval() calls: one more column, their positions (`waly.named_sequence_positions()`), and a
/// transaction id assigned if it has none yet (nextval() does not always assign one), so the record
/// has its id.
pub fn capture_query(named: &[String]) -> String {
    if named.is_empty() {
        return CAPTURE_QUERY.to_owned();
    }
    format!(
        "{}, {}",
        CAPTURE_QUERY.replacen(
            "pg_current_xact_id_if_assigned()",
            "pg_current_xact_id()",
            1
        ),
        named_positions_call(named)
    )
}

/// `waly.named_sequence_positions(ARRAY[...])` for `named`, each an escape string literal (read the same
/// whatever the session's standard_conforming_strings).
fn named_positions_call(named: &[String]) -> String {
    let literals: Vec<String> = named
        .iter()
        .map(|n| format!("E'{}'", n.replace('\\', "\\\\").replace('\'', "''")))
        .collect();
    format!(
        "waly.named_sequence_positions(ARRAY[{}]::text[])",
        literals.join(", ")
    )
}

/// The first round trip: [`capture_query`], then `PREPARE TRANSACTION gid` unless the check under the
/// savepoint raises [`NOT_PREPARABLE`] (then the query stops there, and [`UNDO_CHECK`] puts the
/// transaction back as it was before the check).
pub fn first_round_trip(gid: &str, named: &[String]) -> String {
    format!(
        "{}; SAVEPOINT waly_prepare; SELECT waly.assert_preparable(); \
         RELEASE SAVEPOINT waly_prepare; PREPARE TRANSACTION '{gid}'",
        capture_query(named)
    )
}

/// Whether the first round trip failed because waly's schema is not in the database: the query names
/// `waly.sequence_positions()`, which Postgres resolves even where it is not called.
pub fn schema_missing(error: &ServerError) -> bool {
    error.code() == "3F000" && error.message().contains("\"waly\"")
}

/// What the client is told when [`schema_missing`].
pub fn schema_missing_error(database: &str) -> PgError {
    PgError::error(
        SqlState("55000"),
        format!("waly's schema is missing from database \"{database}\""),
    )
    .with_detail(
        "The database was created anew under its name, or the schema \"waly\" was dropped, since waly \
         installed it: this transaction's changes were not captured, so it was rolled back.",
    )
    .with_hint("waly has installed its schema again: retry the transaction.")
}

/// Put before the first round trip where the client's encoding is not UTF-8: Postgres would convert the
/// captured images to it (and an image is JSON, UTF-8 by definition). The setting ends with the
/// transaction; the client is not told of either change (see `session::own`).
pub const UTF8_FOR_THE_CAPTURE: &str = "SET LOCAL client_encoding = 'UTF8'; ";

/// After [`NOT_PREPARABLE`]: the transaction as it was before the check, captured rows included.
pub const UNDO_CHECK: &str = "ROLLBACK TO SAVEPOINT waly_prepare; RELEASE SAVEPOINT waly_prepare";

/// When the buffer spilled into `waly.capture` (a large transaction, DDL, TRUNCATE): everything, in order,
/// taken from the table and the buffer; then, for sequences `named` in the transaction's statements,
/// their positions as a second result.
pub fn spilled_query(named: &[String]) -> String {
    let mut query = format!("SELECT {CAPTURE_COLUMNS} FROM waly.read_changes(true)");
    if !named.is_empty() {
        query.push_str("; SELECT ");
        query.push_str(&named_positions_call(named));
    }
    query
}

/// What the first round trip read.
pub struct Captured {
    /// `None` when the transaction has no id: it wrote nothing.
    pub txid: Option<String>,
    pub committed_at: String,
    /// The buffer's lines (empty when it holds none).
    pub buffer: String,
    /// True when part of the capture is in the `waly.capture` table.
    pub spilled: bool,
    /// `waly.sequence_positions()`'s JSON array, when the transaction inserted into tables owning some.
    pub sequences: Option<String>,
    /// PREPARE TRANSACTION would fail here: the transaction must commit directly.
    pub prepare_impossible: bool,
    /// `current_user` at commit.
    pub role: Option<String>,
    /// The search_path at commit, read when the capture spilled (always so after DDL).
    pub search_path: Option<String>,
    /// `waly.named_sequence_positions()`'s JSON array, when [`capture_query`] asked for it.
    pub named_sequences: Option<String>,
}

impl Captured {
    /// Reads the answer of [`first_round_trip`] (its second statement, the third after
    /// [`UTF8_FOR_THE_CAPTURE`] when `utf8_set`).
    pub fn from_reply(reply: Reply, utf8_set: bool) -> Captured {
        let mut row = reply
            .results
            .into_iter()
            .nth(1 + usize::from(utf8_set))
            .and_then(|r| r.rows.into_iter().next())
            .unwrap_or_default()
            .into_iter();
        let mut next = || row.next().flatten();
        let (txid, committed_at, buffer, spilled, sequences, prepare_impossible) =
            (next(), next(), next(), next(), next(), next());
        let _synchronous_commit_raised = next();
        let (role, search_path, named_sequences) = (next(), next(), next());
        Captured {
            txid,
            committed_at: committed_at.unwrap_or_default(),
            buffer: buffer.unwrap_or_default(),
            spilled: spilled.as_deref() == Some("on"),
            sequences,
            prepare_impossible: prepare_impossible.as_deref() == Some("t"),
            role,
            search_path,
            named_sequences,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_sequences_join_the_capture_query_as_escape_literals() {
        assert_eq!(capture_query(&[]), CAPTURE_QUERY);
        let q = capture_query(&["public.s".into(), r"it's\odd".into()]);
        assert!(q.contains("SELECT pg_current_xact_id()::text"), "{q}");
        assert!(
            q.ends_with(
                r"waly.named_sequence_positions(ARRAY[E'public.s', E'it''s\\odd']::text[])"
            ),
            "{q}"
        );
        assert!(
            spilled_query(&["s".into()])
                .ends_with("; SELECT waly.named_sequence_positions(ARRAY[E's']::text[])")
        );
    }
}
