//! One batch: a target transaction that applies the changes of some records in order and moves the
//! checkpoint to the last of them, or, on any error, is rolled back whole.
//!
//! Consecutive inserts into one table (across records too) become one statement over a JSON array of their
//! images; consecutive TRUNCATEs become one TRUNCATE (so a table and those referencing it go together, as
//! CASCADE truncated them). Every update and delete must match exactly one row, or the batch stops.

use std::pin::Pin;
use std::task::Poll;

use tokio_postgres::Client;

use super::table::{Tables, ident};
use super::{ReplayError, ReplayStats, checkpoint};
use crate::log::Position;
use crate::record::{Change, Record};

/// At most this many images go into one INSERT (a record may hold millions: its batch is not split, its
/// statements are).
const INSERT_RUN: usize = 5000;

/// At most this many updates and deletes are in flight at once.
const PIPELINE: usize = 256;

/// DDL that fills the table it creates: its rows follow it in the record as inserts.
const FILLING_DDL: [&str; 2] = ["CREATE TABLE AS", "SELECT INTO"];

pub async fn batch(
    target: &Client,
    tables: &mut Tables,
    records: &[(Position, Record)],
    stats: &mut ReplayStats,
) -> Result<(), ReplayError> {
    let Some((last, _)) = records.last() else {
        return Ok(());
    };
    target
        .batch_execute(
            "begin;
             set local session_replication_role = replica;
             set local extra_float_digits = 3;
             set local intervalstyle = 'postgres';",
        )
        .await
        .map_err(|e| ReplayError::target("start a batch", &e))?;
    let mut counts = Counts::default();
    let mut applied = changes(target, tables, records, &mut counts).await;
    if applied.is_ok() {
        applied = checkpoint::store(target, *last).await;
    }
    if let Err(e) = applied {
        let _ = target.batch_execute("rollback").await;
        // Statements prepared in the rolled-back transaction may name tables it created.
        tables.clear();
        return Err(e);
    }
    target
        .batch_execute("commit")
        .await
        .map_err(|e| ReplayError::target("commit a batch", &e))?;
    stats.checkpoint = *last;
    stats.records += records.len() as u64;
    stats.row_changes += counts.rows;
    stats.truncates += counts.truncates;
    stats.ddl += counts.ddl;
    stats.batches += 1;
    Ok(())
}

#[derive(Default)]
struct Counts {
    rows: u64,
    truncates: u64,
    ddl: u64,
}

/// A statement in flight: rows affected, or the target's refusal.
type Answer<'a> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + 'a>>;

/// A change and where it is: (record position, index in the record).
type At<'a> = (Position, usize, &'a Change);

async fn changes(
    target: &Client,
    tables: &mut Tables,
    records: &[(Position, Record)],
    counts: &mut Counts,
) -> Result<(), ReplayError> {
    let all: Vec<At<'_>> = records
        .iter()
        .flat_map(|(p, r)| r.changes.iter().enumerate().map(move |(i, c)| (*p, i, c)))
        .collect();
    let mut i = 0;
    while i < all.len() {
        let (position, index, change) = all[i];
        let refused = |e: tokio_postgres::Error| ReplayError::Change {
            position,
            index,
            change: describe(change),
            failure: Box::new((&e).into()),
        };
        match change {
            Change::Insert { schema, table, .. } => {
                let run = all[i..]
                    .iter()
                    .take(INSERT_RUN)
                    .take_while(|(_, _, c)| {
                        matches!(c, Change::Insert { schema: s, table: t, .. } if s == schema && t == table)
                    })
                    .count();
                let t = table_of(target, tables, (position, index), schema, table).await?;
                let mut images = String::from("[");
                for (n, (_, _, c)) in all[i..i + run].iter().enumerate() {
                    if let Change::Insert { new, .. } = c {
                        if n > 0 {
                            images.push(',');
                        }
                        images.push_str(new.get());
                    }
                }
                images.push(']');
                let rows = target
                    .execute(&t.insert, &[&images])
                    .await
                    .map_err(refused)?;
                expect(rows, run as u64, (position, index, change))?;
                counts.rows += run as u64;
                i += run;
            }
            Change::Update { .. } | Change::Delete { .. } => {
                // Updates and deletes in a row are pipelined: sent together, answered in order. Each
                // still finds and counts its own row, so a row changed twice is changed twice, in order.
                let run = all[i..]
                    .iter()
                    .take(PIPELINE)
                    .take_while(|(_, _, c)| {
                        matches!(c, Change::Update { .. } | Change::Delete { .. })
                    })
                    .count();
                let mut statements = Vec::with_capacity(run);
                for &(p, x, c) in &all[i..i + run] {
                    let (Change::Update { schema, table, .. }
                    | Change::Delete { schema, table, .. }) = c
                    else {
                        unreachable!("the run holds updates and deletes only")
                    };
                    statements.push(table_of(target, tables, (p, x), schema, table).await?);
                }
                let sent = all[i..i + run]
                    .iter()
                    .zip(&statements)
                    .map(|(&(_, _, c), t)| {
                        Box::pin(async move {
                            match c {
                                Change::Update { old, new, .. } => {
                                    target.execute(&t.update, &[&old.get(), &new.get()]).await
                                }
                                Change::Delete { old, .. } => {
                                    target.execute(&t.delete, &[&old.get()]).await
                                }
                                _ => unreachable!("the run holds updates and deletes only"),
                            }
                        }) as Answer<'_>
                    });
                let answers = in_order(sent.collect()).await;
                for (&at, answer) in all[i..i + run].iter().zip(answers) {
                    let rows = answer.map_err(|e| ReplayError::Change {
                        position: at.0,
                        index: at.1,
                        change: describe(at.2),
                        failure: Box::new((&e).into()),
                    })?;
                    expect(rows, 1, at)?;
                }
                counts.rows += run as u64;
                i += run;
            }
            Change::Truncate { .. } => {
                let mut names: Vec<String> = Vec::new();
                while let Some((p, x, Change::Truncate { schema, table })) = all.get(i).copied() {
                    let t = table_of(target, tables, (p, x), schema, table).await?;
                    // A partitioned table cannot be truncated ONLY; its partitions come with it, as they
                    // did in the source.
                    let name = if t.partitioned {
                        t.name.clone()
                    } else {
                        format!("only {}", t.name)
                    };
                    if !names.contains(&name) {
                        names.push(name);
                    }
                    counts.truncates += 1;
                    i += 1;
                }
                target
                    .batch_execute(&format!("truncate {}", names.join(", ")))
                    .await
                    .map_err(refused)?;
            }
            Change::Ddl { tag, object, sql } => {
                target.batch_execute(sql).await.map_err(refused)?;
                tables.clear();
                if let (true, Some(object)) = (FILLING_DDL.contains(&tag.as_str()), object) {
                    // The target computed its own rows; the record's inserts that follow are the source's.
                    target
                        .batch_execute(&format!("truncate only {object}"))
                        .await
                        .map_err(refused)?;
                }
                counts.ddl += 1;
                i += 1;
            }
        }
    }
    Ok(())
}

/// Runs `futures` together, polling each for the first time in order: a tokio-postgres request is sent at
/// its first poll, so the target receives, executes and answers them in this order.
async fn in_order<'a, T>(mut futures: Vec<Pin<Box<dyn Future<Output = T> + 'a>>>) -> Vec<T> {
    let mut answers: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, answer) in futures.iter_mut().zip(answers.iter_mut()) {
            if answer.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *answer = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    answers
        .into_iter()
        .map(|a| a.expect("every future finished"))
        .collect()
}

async fn table_of(
    target: &Client,
    tables: &mut Tables,
    (position, index): (Position, usize),
    schema: &str,
    table: &str,
) -> Result<std::sync::Arc<super::table::Table>, ReplayError> {
    tables
        .get(target, schema, table)
        .await
        .map_err(|e| ReplayError::NoTable {
            position,
            index,
            table: format!("{}.{}", ident(schema), ident(table)),
            failure: Box::new((&e).into()),
        })
}

fn expect(rows: u64, want: u64, (position, index, change): At<'_>) -> Result<(), ReplayError> {
    if rows == want {
        return Ok(());
    }
    Err(ReplayError::Diverged {
        position,
        index,
        change: describe(change),
        rows,
    })
}

/// A change in a few words, for errors: kind, table, key (images are left out, they can be huge).
fn describe(change: &Change) -> String {
    let key = |pk: &Option<crate::record::Json>| match pk {
        Some(pk) => format!(" {}", pk.get()),
        None => String::new(),
    };
    match change {
        Change::Insert {
            schema, table, pk, ..
        } => format!("insert into {schema}.{table}{}", key(pk)),
        Change::Update {
            schema, table, pk, ..
        } => format!("update of {schema}.{table}{}", key(pk)),
        Change::Delete {
            schema, table, pk, ..
        } => format!("delete from {schema}.{table}{}", key(pk)),
        Change::Truncate { schema, table } => format!("truncate {schema}.{table}"),
        Change::Ddl { tag, object, .. } => match object {
            Some(object) => format!("{tag} {object}"),
            None => tag.clone(),
        },
    }
}
