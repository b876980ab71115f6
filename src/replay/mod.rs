//! Exact replay: log records applied to a target Postgres as row images and DDL, in log order.
//!
//! Owns turning records into statements on the target, batching them (one transaction per batch of about
//! [`ReplayOptions::batch_changes`] changes, a record never split), and the checkpoint that makes a replay
//! resumable ([`checkpoint`]: written in each batch's transaction; records at or below it are skipped, so a
//! killed replay run again applies nothing twice). Batches run with `session_replication_role = replica`:
//! the target's triggers and foreign-key checks must not fire, since the log already holds their effects.
//! Replay must never re-execute the application's DML (only images) and never leave a batch half applied.
//! [`apply`] takes `(Position, Record)`s from anywhere; [`apply_log`] reads them from a [`Log`].
//! [`ops`] is the other mode: the records' domain operations re-executed through the current catalog.

mod apply;
mod checkpoint;
mod error;
mod keys;
pub mod ops;
mod pipeline;
mod rows;
mod sequences;
pub mod source;
mod table;

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::log::{Log, OwnLog, Position};
use crate::record::Record;
use source::Source;

pub use checkpoint::load as load_checkpoint;
pub use error::ReplayError;
pub use ops::{OpsOptions, OpsStats};

/// How to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOptions {
    /// A batch (one target transaction, one checkpoint) closes once its records hold this many changes.
    pub batch_changes: usize,
    /// Stop after this position (inclusive); `None`: every record given.
    pub until: Option<Position>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            batch_changes: 1000,
            until: None,
        }
    }
}

/// What one [`apply`] call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayStats {
    /// The checkpoint found in the target when the call started.
    pub resumed_from: Position,
    /// The checkpoint when it ended: the last record applied.
    pub checkpoint: Position,
    /// Records applied.
    pub records: u64,
    /// Records skipped because the checkpoint already covered them.
    pub skipped: u64,
    /// Inserts, updates and deletes applied.
    pub row_changes: u64,
    pub truncates: u64,
    pub ddl: u64,
    /// Sequence positions applied.
    pub sequences: u64,
    /// Target transactions committed.
    pub batches: u64,
    /// Direct commits skipped because an outcome record says they did not commit.
    pub not_committed: u64,
    /// Where the replay stopped short: a record whose commit no record decides yet.
    pub waiting: Option<Position>,
    pub elapsed: Duration,
}

impl ReplayStats {
    /// Adds what a later [`apply`] call did.
    pub fn merge(&mut self, later: ReplayStats) {
        self.checkpoint = later.checkpoint;
        self.records += later.records;
        self.skipped += later.skipped;
        self.row_changes += later.row_changes;
        self.truncates += later.truncates;
        self.ddl += later.ddl;
        self.sequences += later.sequences;
        self.batches += later.batches;
    }

    /// Row changes per second of wall time.
    pub fn rows_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs == 0.0 {
            0.0
        } else {
            self.row_changes as f64 / secs
        }
    }
}

/// Applies `records` (in log order) to `target`, resuming after the target's checkpoint.
pub async fn apply(
    target: &Client,
    records: impl IntoIterator<Item = (Position, Record)>,
    options: &ReplayOptions,
) -> Result<ReplayStats, ReplayError> {
    let started = Instant::now();
    let resumed_from = checkpoint::load(target).await?;
    let mut stats = ReplayStats {
        resumed_from,
        checkpoint: resumed_from,
        ..ReplayStats::default()
    };
    let mut tables = table::Tables::default();
    let mut batch: Vec<(Position, Record)> = Vec::new();
    let mut batch_changes = 0;
    let mut previous = Position(0);
    for (position, record) in records {
        if options.until.is_some_and(|until| position > until) {
            break;
        }
        if position <= previous {
            return Err(ReplayError::OutOfOrder { position, previous });
        }
        previous = position;
        if position <= resumed_from {
            stats.skipped += 1;
            continue;
        }
        batch_changes += record.changes.len().max(1);
        batch.push((position, record));
        if batch_changes >= options.batch_changes.max(1) {
            apply::batch(target, &mut tables, &batch, &mut stats).await?;
            batch.clear();
            batch_changes = 0;
        }
    }
    if !batch.is_empty() {
        apply::batch(target, &mut tables, &batch, &mut stats).await?;
    }
    stats.elapsed = started.elapsed();
    Ok(stats)
}

/// Records per [`apply`] call in [`apply_log`].
const LOG_CHUNK: usize = 1000;

/// Applies `log`'s committed records after the target's checkpoint, up to [`ReplayOptions::until`] or
/// the log's durable end at the time of the call. Stops before a record whose commit is not decided yet
/// ([`ReplayStats::waiting`]).
pub async fn apply_log(
    target: &Client,
    log: &dyn Log,
    options: &ReplayOptions,
) -> Result<ReplayStats, ReplayError> {
    let started = Instant::now();
    let end = match options.until {
        Some(until) => until.min(log.end()),
        None => log.end(),
    };
    let reader = OwnLog(log);
    let resumed_from = checkpoint::load(target).await?;
    let mut source = Source::new(&reader, resumed_from, end);
    let mut total = ReplayStats {
        resumed_from,
        checkpoint: resumed_from,
        ..ReplayStats::default()
    };
    loop {
        let records = source.chunk(LOG_CHUNK).await?;
        if records.is_empty() {
            break;
        }
        total.merge(apply(target, records, options).await?);
    }
    total.not_committed = source.not_committed;
    total.waiting = source.waiting().map(|(p, _)| p);
    total.elapsed = started.elapsed();
    Ok(total)
}
