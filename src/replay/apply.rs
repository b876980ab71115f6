//! One batch: a target transaction that applies the changes of some records in order and moves the
//! checkpoint to the last of them, or, on any error, is rolled back whole.
//!
//! Consecutive inserts into one table (across records too) become one statement over a JSON array of their
//! images; consecutive updates and deletes become a few set statements ([`rows`]); consecutive TRUNCATEs
//! become one TRUNCATE (so a table and those referencing it go together, as CASCADE truncated them);
//! sequence positions are set together before the next DDL and at the end ([`sequences`]). Every update
//! and delete must match exactly one row, or the batch stops. A batch whose set statements do not apply
//! cleanly is rolled back and applied again row by row, which either names the change at fault or
//! succeeds where only the source's order of changes could.

use std::collections::HashSet;

use tokio_postgres::Client;

use super::rows::{self, Mode};
use super::sequences::Positions;
use super::table::{Tables, ident};
use super::{ReplayError, ReplayStats, checkpoint};
use crate::log::Position;
use crate::record::{Change, Record};

/// At most this many images go into one INSERT (a record may hold millions: its batch is not split, its
/// statements are).
const INSERT_RUN: usize = 5000;

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
    let mut mode = Mode::Sets;
    let counts = loop {
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
        let mut applied = changes(target, tables, records, mode, &mut counts).await;
        if applied.is_ok() {
            applied = checkpoint::store(target, *last)
                .await
                .map_err(Failure::Stop);
        }
        let Err(failure) = applied else {
            break counts;
        };
        let _ = target.batch_execute("rollback").await;
        // Statements prepared in the rolled-back transaction may name tables it created.
        tables.clear();
        match failure {
            Failure::Retry if mode == Mode::Sets => mode = Mode::Rows,
            Failure::Retry => unreachable!("row by row asks for no retry"),
            Failure::Stop(e) => return Err(e),
        }
    };
    target
        .batch_execute("commit")
        .await
        .map_err(|e| ReplayError::target("commit a batch", &e))?;
    stats.checkpoint = *last;
    stats.records += records.len() as u64;
    stats.row_changes += counts.rows;
    stats.truncates += counts.truncates;
    stats.ddl += counts.ddl;
    stats.sequences += counts.sequences;
    stats.batches += 1;
    Ok(())
}

#[derive(Default)]
struct Counts {
    rows: u64,
    truncates: u64,
    ddl: u64,
    sequences: u64,
}

/// Why a batch's changes stopped.
pub enum Failure {
    /// A set statement failed, or changed another number of rows than it had changes: apply the batch
    /// again row by row.
    Retry,
    /// Replay stops here.
    Stop(ReplayError),
}

impl From<ReplayError> for Failure {
    fn from(e: ReplayError) -> Failure {
        Failure::Stop(e)
    }
}

/// A change and where it is: (record position, index in the record).
pub type At<'a> = (Position, usize, &'a Change);

/// The batch's changes grouped by table, each table's changes in log order, between barriers (DDL and
/// TRUNCATE stay where they are, and nothing moves across them). Row images of different tables commute
/// in exact replay: the target's triggers and foreign-key checks are off (`session_replication_role =
/// replica`) and every other constraint is per table. Grouping turns a log of small transactions that each
/// touch several tables (three updates and an insert, say) into long runs per table, which are applied
/// set-based, instead of one short run per table per transaction.
fn by_table<'a>(all: Vec<At<'a>>) -> Vec<At<'a>> {
    let mut out = Vec::with_capacity(all.len());
    let mut segment: Vec<At<'a>> = Vec::new();
    let flush = |segment: &mut Vec<At<'a>>, out: &mut Vec<At<'a>>| {
        let mut order: Vec<(&str, &str)> = Vec::new();
        let mut keyed: Vec<(usize, At<'a>)> = segment
            .drain(..)
            .map(|at| {
                let key = match at.2 {
                    Change::Insert { schema, table, .. }
                    | Change::Update { schema, table, .. }
                    | Change::Delete { schema, table, .. } => (schema.as_str(), table.as_str()),
                    Change::Sequence { schema, name, .. } => (schema.as_str(), name.as_str()),
                    Change::Truncate { .. }
                    | Change::Rewrite { .. }
                    | Change::Fill { .. }
                    | Change::Ddl { .. } => ("", ""),
                };
                let rank = order.iter().position(|k| *k == key).unwrap_or_else(|| {
                    order.push(key);
                    order.len() - 1
                });
                (rank, at)
            })
            .collect();
        keyed.sort_by_key(|(rank, _)| *rank);
        out.extend(keyed.into_iter().map(|(_, at)| at));
    };
    for at in all {
        if matches!(
            at.2,
            Change::Ddl { .. }
                | Change::Truncate { .. }
                | Change::Rewrite { .. }
                | Change::Fill { .. }
        ) {
            flush(&mut segment, &mut out);
            out.push(at);
        } else {
            segment.push(at);
        }
    }
    flush(&mut segment, &mut out);
    out
}

async fn changes(
    target: &Client,
    tables: &mut Tables,
    records: &[(Position, Record)],
    mode: Mode,
    counts: &mut Counts,
) -> Result<(), Failure> {
    let all = by_table(
        records
            .iter()
            .flat_map(|(p, r)| r.changes.iter().enumerate().map(move |(i, c)| (*p, i, c)))
            .collect(),
    );
    let covered = covered_ddl(records);
    let mut positions = Positions::default();
    for (position, record) in records {
        if record
            .statements
            .iter()
            .any(|s| crate::classify::calls_setval(&s.sql))
        {
            // A setval may have moved a sequence back: this record's positions stand.
            positions.allow_decrease(*position);
        }
    }
    let mut i = 0;
    while i < all.len() {
        let at = all[i];
        match at.2 {
            Change::Insert { schema, table, .. } => {
                let run = all[i..]
                    .iter()
                    .take(INSERT_RUN)
                    .take_while(|(_, _, c)| {
                        matches!(c, Change::Insert { schema: s, table: t, .. } if s == schema && t == table)
                    })
                    .count();
                let t = table_of(target, tables, at).await?;
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
                    .map_err(|e| refused(at, &e))?;
                expect(rows, run as u64, at)?;
                counts.rows += run as u64;
                i += run;
            }
            Change::Update { .. } | Change::Delete { .. } => {
                let run = all[i..]
                    .iter()
                    .take_while(|(_, _, c)| {
                        matches!(c, Change::Update { .. } | Change::Delete { .. })
                    })
                    .count();
                rows::apply(target, tables, &all[i..i + run], mode).await?;
                counts.rows += run as u64;
                i += run;
            }
            Change::Truncate { .. } => {
                let mut names: Vec<String> = Vec::new();
                while let Some(at @ (_, _, Change::Truncate { .. })) = all.get(i).copied() {
                    // TRUNCATE ... RESTART IDENTITY moves sequences back: this record's positions stand.
                    positions.allow_decrease(at.0);
                    let t = table_of(target, tables, at).await?;
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
                    .map_err(|e| refused(at, &e))?;
            }
            Change::Rewrite { .. } => {
                // The target's rows got values of its own from the DDL just run; the source's follow.
                let t = table_of(target, tables, at).await?;
                target
                    .batch_execute(&format!("delete from only {}", t.name))
                    .await
                    .map_err(|e| refused(at, &e))?;
                counts.ddl += 1;
                i += 1;
            }
            Change::Fill { column, new, .. } => {
                let t = table_of(target, tables, at).await?;
                let column = ident(column);
                target
                    .execute(
                        &format!(
                            "update only {table} set {column} = \
                             (pg_catalog.json_populate_record(null::{table}, $1::text::pg_catalog.json)).{column}",
                            table = t.name
                        ),
                        &[&new.get()],
                    )
                    .await
                    .map_err(|e| refused(at, &e))?;
                counts.ddl += 1;
                i += 1;
            }
            Change::Ddl {
                tag,
                object,
                sql,
                search_path,
            } => {
                positions.set(target).await?;
                if !covered.contains(&(at.0, at.1)) {
                    if let Some(path) = search_path {
                        target
                            .execute(
                                "select pg_catalog.set_config('search_path', $1, true)",
                                &[path],
                            )
                            .await
                            .map_err(|e| refused(at, &e))?;
                    }
                    let plain = crate::classify::without_concurrently(sql);
                    let mut detached_checks = Vec::new();
                    for partition in crate::classify::concurrently_detached(sql) {
                        let row = target
                            .query_one(
                                "select pg_catalog.pg_get_partition_constraintdef($1::text::pg_catalog.regclass)",
                                &[&partition],
                            )
                            .await
                            .map_err(|e| refused(at, &e))?;
                        if let Some(check) = row.get::<_, Option<String>>(0) {
                            detached_checks
                                .push(format!("alter table {partition} add check ({check})"));
                        }
                    }
                    target
                        .batch_execute(plain.as_deref().unwrap_or(sql))
                        .await
                        .map_err(|e| refused(at, &e))?;
                    // What DETACH ... CONCURRENTLY adds and the plain DETACH run here does not; unnamed,
                    // it gets the name Postgres chose for it.
                    for check in detached_checks {
                        target
                            .batch_execute(&check)
                            .await
                            .map_err(|e| refused(at, &e))?;
                    }
                    if search_path.is_some() {
                        target
                            .batch_execute("reset search_path")
                            .await
                            .map_err(|e| refused(at, &e))?;
                    }
                }
                tables.clear();
                if let (true, Some(object)) = (FILLING_DDL.contains(&tag.as_str()), object) {
                    // The target computed its own rows; the record's inserts that follow are the source's.
                    target
                        .batch_execute(&format!("truncate only {object}"))
                        .await
                        .map_err(|e| refused(at, &e))?;
                }
                counts.ddl += 1;
                i += 1;
            }
            Change::Sequence { .. } => {
                positions.keep(at);
                counts.sequences += 1;
                i += 1;
            }
        }
    }
    positions.set(target).await?;
    Ok(())
}

/// The DDL changes replay does not run, as (position, index): a DDL change names the client statement
/// it came from, and a statement that created several objects (a DO block, a function, an extension's
/// script) gives one DDL change per object, all naming it. Running it for the first runs it all; so a
/// later DDL change naming a statement the record holds at most once is covered by the first. Where the
/// client ran that statement several times in the transaction, which change came from which run is not
/// known, and each runs.
fn covered_ddl(records: &[(Position, Record)]) -> HashSet<(Position, usize)> {
    let mut covered = HashSet::new();
    for (position, record) in records {
        let mut ran: Vec<&str> = Vec::new();
        for (index, change) in record.changes.iter().enumerate() {
            let Change::Ddl { sql, .. } = change else {
                continue;
            };
            if !ran.contains(&sql.as_str()) {
                ran.push(sql);
            } else if record.statements.iter().filter(|s| s.sql == *sql).count() <= 1 {
                covered.insert((*position, index));
            }
        }
    }
    covered
}

/// The target refused the change at `at`.
pub fn refused((position, index, change): At<'_>, e: &tokio_postgres::Error) -> ReplayError {
    ReplayError::Change {
        position,
        index,
        change: describe(change),
        failure: Box::new(e.into()),
    }
}

/// The table a row change or TRUNCATE at `at` is about.
pub async fn table_of(
    target: &Client,
    tables: &mut Tables,
    (position, index, change): At<'_>,
) -> Result<std::sync::Arc<super::table::Table>, ReplayError> {
    let (Change::Insert { schema, table, .. }
    | Change::Update { schema, table, .. }
    | Change::Delete { schema, table, .. }
    | Change::Truncate { schema, table }
    | Change::Rewrite { schema, table, .. }
    | Change::Fill { schema, table, .. }) = change
    else {
        unreachable!("only row changes, TRUNCATE, rewrites and fills name a table")
    };
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

pub fn expect(rows: u64, want: u64, (position, index, change): At<'_>) -> Result<(), ReplayError> {
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
pub fn describe(change: &Change) -> String {
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
        Change::Rewrite { schema, table, .. } => format!("rewrite of {schema}.{table}"),
        Change::Fill {
            schema,
            table,
            column,
            ..
        } => format!("fill of {schema}.{table}.{column}"),
        Change::Ddl { tag, object, .. } => match object {
            Some(object) => format!("{tag} {object}"),
            None => tag.clone(),
        },
        Change::Sequence {
            schema,
            name,
            last_value,
            is_called,
        } => format!("setval of {schema}.{name} to {last_value} (is_called {is_called})"),
    }
}
