//! Sequence positions: each sequence's last position in the batch so far, set on the target with
//! `setval(sequence, last_value, is_called)`.
//!
//! A position only moves a sequence, so positions are kept back and set together (one round trip) before
//! the next DDL, which may create, alter, rename or drop a sequence, and at the end of the batch. `setval`
//! is not transactional: a batch rolled back leaves its sequences set, and the replay run again sets them
//! anew.
//!
//! A sequence only moves forward here, except in a record that truncated its table (`RESTART IDENTITY`)
//! or called `setval` (a table emptied and its ids reset, a dump restored): two concurrent transactions
//! read their positions at commit and may reach the log in the other order, so a later record can carry
//! an older position. The larger one (of the batch's, and the target's current value) wins. A restart by
//! DDL is replayed as that DDL, which moves the target back itself.

use super::ReplayError;
use super::apply::{At, refused};
use super::pipeline::{Answer, in_order};
use super::table::ident;
use crate::record::Change;

#[derive(Default)]
pub struct Positions<'a> {
    /// (`"schema"."name"`, last_value, is_called, may move back, the change), one per sequence.
    pending: Vec<(String, i64, bool, bool, At<'a>)>,
    /// The records (positions) whose sequence positions may move a sequence back.
    decrease_allowed: Vec<crate::log::Position>,
}

impl<'a> Positions<'a> {
    /// Keeps a [`Change::Sequence`]'s position, replacing the sequence's earlier one.
    pub fn keep(&mut self, at: At<'a>) {
        let (
            _,
            _,
            Change::Sequence {
                schema,
                name,
                last_value,
                is_called,
            },
        ) = at
        else {
            unreachable!("only sequence changes are kept")
        };
        let sequence = format!("{}.{}", ident(schema), ident(name));
        let may_decrease = self.decrease_allowed.contains(&at.0);
        let (mut value, mut called) = (*last_value, *is_called);
        if let Some(i) = self.pending.iter().position(|(s, ..)| *s == sequence) {
            let (_, v, c, _, _) = self.pending.remove(i);
            if !may_decrease && (v, c) > (value, called) {
                (value, called) = (v, c);
            }
        }
        self.pending
            .push((sequence, value, called, may_decrease, at));
    }

    /// The sequence positions of the record at `position` may move sequences back (it truncated tables
    /// or called `setval`).
    pub fn allow_decrease(&mut self, position: crate::log::Position) {
        if !self.decrease_allowed.contains(&position) {
            self.decrease_allowed.push(position);
        }
    }

    /// Sets every position kept.
    pub async fn set(&mut self, target: &tokio_postgres::Client) -> Result<(), ReplayError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let sent = self.pending.iter().map(|(sequence, value, called, back, _)| {
            Box::pin(async move {
                target
                    .execute(
                        "select pg_catalog.setval(s, case when $4 or cur is null or cur <= $2 then $2 else cur end,
                                                     case when $4 or cur is null or cur <= $2 then $3 else true end)
                           from (select $1::text::pg_catalog.regclass as s,
                                        pg_catalog.pg_sequence_last_value($1::text::pg_catalog.regclass) as cur) as now",
                        &[sequence, value, called, back],
                    )
                    .await
            }) as Answer<'_>
        });
        let answers = in_order(sent.collect()).await;
        for ((.., at), answer) in self.pending.iter().zip(answers) {
            answer.map_err(|e| refused(*at, &e))?;
        }
        self.pending.clear();
        Ok(())
    }
}
