//! Updates and deletes: a run of them (consecutive in the batch, any tables) applied to the target.
//!
//! Owns the two ways to apply them. [`Mode::Sets`], the normal way: the run is cut into groups in which no
//! row is changed twice (a row is known by its primary key, before and after), and each group becomes, per
//! table, one DELETE and one UPDATE over a JSON array of images, all sent together. Successive updates of
//! one row fold into one (the first's old key, the last's new image), so a hot row does not cut groups. Within a group the
//! order of changes does not matter: each row is changed once, to its final image. A set statement must
//! change exactly as many rows as it has changes; when one changes another number, or fails, the whole
//! batch is applied again in [`Mode::Rows`]: one statement per change in log order (pipelined), each
//! counting its own row. That names the change that diverged, and also gets right what only the source's
//! order allows (a unique value handed from one row to another within a group). Tables without a primary
//! key are always applied row by row, in order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::Client;

use super::apply::{At, Failure, describe, expect, refused, table_of};
use super::pipeline::{Answer, in_order};
use super::table::{Table, Tables};
use crate::record::Change;

/// How updates and deletes are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sets,
    Rows,
}

/// At most this many changes go into one group (a record may hold millions).
const GROUP: usize = 5000;

/// At most this many row-by-row statements are in flight at once.
const PIPELINE: usize = 256;

/// Applies `run` (updates and deletes only) in `mode`.
pub async fn apply(
    target: &Client,
    tables: &mut Tables,
    run: &[At<'_>],
    mode: Mode,
) -> Result<(), Failure> {
    match mode {
        Mode::Rows => {
            for chunk in run.chunks(PIPELINE) {
                let mut jobs = Vec::with_capacity(chunk.len());
                for &at in chunk {
                    jobs.push(Job::Row(table_of(target, tables, at).await?, at));
                }
                send(target, &jobs).await?;
            }
            Ok(())
        }
        Mode::Sets => {
            let mut group = Group::default();
            for &at in run {
                let table = table_of(target, tables, at).await?;
                if !group.add(&table, at)? {
                    group.flush(target).await?;
                    assert!(group.add(&table, at)?, "an empty group takes any change");
                }
            }
            group.flush(target).await
        }
    }
}

/// Changes that may be applied in any order: no row is in two of them.
#[derive(Default)]
struct Group<'a> {
    /// Deletes and updates per table, in the order the tables came.
    sets: Vec<Set<'a>>,
    /// Index in `sets` by (table, is it the deletes).
    index: HashMap<(String, bool), usize>,
    /// Changes of tables without a primary key, in log order.
    rows: Vec<(Arc<Table>, At<'a>)>,
    /// (table, row identity) of every row the group changes.
    touched: HashSet<(String, String)>,
    /// For each row an update of the group produced: (index in `sets`, index in that set).
    latest: HashMap<(String, String), (usize, usize)>,
    len: usize,
}

/// One set statement being built.
struct Set<'a> {
    table: Arc<Table>,
    delete: bool,
    /// The statement's `$1`: old keys.
    old_keys: Vec<String>,
    /// Its `$2`, for updates: new images.
    news: Vec<&'a str>,
    changes: Vec<At<'a>>,
}

impl<'a> Group<'a> {
    /// Takes `at` into the group; `false` when it touches a row the group already changes, or the group
    /// is full.
    fn add(&mut self, table: &Arc<Table>, at: At<'a>) -> Result<bool, Failure> {
        if self.len >= GROUP {
            return Ok(false);
        }
        let Some(sets) = &table.sets else {
            self.rows.push((table.clone(), at));
            self.len += 1;
            return Ok(true);
        };
        // An image replay cannot read as a row: the row-by-row statements will say what is wrong.
        let (old, new) = match at.2 {
            Change::Update { old, new, .. } => (old, Some(new)),
            Change::Delete { old, .. } => (old, None),
            _ => unreachable!("a run holds updates and deletes only"),
        };
        let (row, old_key) = sets.old_key(old.get()).ok_or(Failure::Retry)?;
        let new_row = match new {
            Some(new) => Some(sets.row(new.get()).ok_or(Failure::Retry)?),
            None => None,
        };
        // An update of a row an earlier update of the group produced folds into it: the row goes from
        // that update's old image straight to this one's new image (intermediate states are never seen).
        if let (Some(new), Some(new_row)) = (new, &new_row) {
            let at_old = (table.name.clone(), row.clone());
            if let Some(&(si, pi)) = self.latest.get(&at_old) {
                let at_new = (table.name.clone(), new_row.clone());
                if at_new == at_old || !self.touched.contains(&at_new) {
                    self.sets[si].news[pi] = new.get();
                    self.latest.remove(&at_old);
                    self.touched.insert(at_new.clone());
                    self.latest.insert(at_new, (si, pi));
                    self.len += 1;
                    return Ok(true);
                }
            }
        }
        let rows: Vec<(String, String)> = std::iter::once(row)
            .chain(new_row.clone())
            .map(|r| (table.name.clone(), r))
            .collect();
        if rows.iter().any(|r| self.touched.contains(r)) {
            return Ok(false);
        }
        self.touched.extend(rows);
        let delete = new.is_none();
        let i = *self
            .index
            .entry((table.name.clone(), delete))
            .or_insert_with(|| {
                self.sets.push(Set {
                    table: table.clone(),
                    delete,
                    old_keys: Vec::new(),
                    news: Vec::new(),
                    changes: Vec::new(),
                });
                self.sets.len() - 1
            });
        let set = &mut self.sets[i];
        set.old_keys.push(old_key);
        set.news.extend(new.map(|n| n.get()));
        set.changes.push(at);
        if let Some(new_row) = new_row {
            self.latest
                .insert((table.name.clone(), new_row), (i, set.news.len() - 1));
        }
        self.len += 1;
        Ok(true)
    }

    /// Applies the group and empties it: deletes first (they free unique values updates may take), then
    /// updates, then the row-by-row changes, all sent together.
    async fn flush(&mut self, target: &Client) -> Result<(), Failure> {
        let mut jobs: Vec<Job<'_, 'a>> = Vec::with_capacity(self.sets.len() + self.rows.len());
        for delete in [true, false] {
            jobs.extend(
                self.sets
                    .iter()
                    .filter(|s| s.delete == delete)
                    .map(Job::Set),
            );
        }
        jobs.extend(self.rows.iter().map(|(t, at)| Job::Row(t.clone(), *at)));
        let sent = send(target, &jobs).await;
        drop(jobs);
        *self = Group::default();
        sent
    }
}

/// One statement of a flush.
enum Job<'g, 'a> {
    Set(&'g Set<'a>),
    Row(Arc<Table>, At<'a>),
}

/// Sends `jobs` together and checks every answer in order. A set statement that fails or changes another
/// number of rows than it has changes asks for the batch to be applied row by row.
async fn send(target: &Client, jobs: &[Job<'_, '_>]) -> Result<(), Failure> {
    let sent = jobs.iter().map(|job| {
        Box::pin(async move {
            match job {
                Job::Set(set) => {
                    let sets = set
                        .table
                        .sets
                        .as_ref()
                        .expect("a set job's table has a key");
                    if set.delete {
                        target.execute(&sets.delete, &[&set.old_keys]).await
                    } else {
                        target
                            .execute(&sets.update, &[&set.old_keys, &set.news])
                            .await
                    }
                }
                Job::Row(t, (_, _, c)) => match c {
                    Change::Update { old, new, .. } => {
                        target.execute(&t.update, &[&old.get(), &new.get()]).await
                    }
                    Change::Delete { old, .. } => target.execute(&t.delete, &[&old.get()]).await,
                    _ => unreachable!("a run holds updates and deletes only"),
                },
            }
        }) as Answer<'_>
    });
    let answers = in_order(sent.collect()).await;
    for (job, answer) in jobs.iter().zip(answers) {
        match job {
            Job::Set(set) => match answer {
                Ok(rows) if rows == set.changes.len() as u64 => {}
                Ok(rows) => {
                    tracing::debug!(
                        "{} ... matched {rows} rows for {} changes: applying the batch row by row",
                        describe(set.changes[0].2),
                        set.changes.len()
                    );
                    return Err(Failure::Retry);
                }
                Err(e) => {
                    tracing::debug!(
                        "{} ...: {e}: applying the batch row by row",
                        describe(set.changes[0].2)
                    );
                    return Err(Failure::Retry);
                }
            },
            Job::Row(_, at) => {
                let rows = answer.map_err(|e| refused(*at, &e))?;
                expect(rows, 1, *at)?;
            }
        }
    }
    Ok(())
}
