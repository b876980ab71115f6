//! The records a replay applies: read from a log in order, only committed ones, none the log may still
//! take back.
//!
//! A [`Source`] reads entries after the target's checkpoint, hands them to a
//! [`Settler`](crate::record::Settler), and yields committed transaction records up to a last position,
//! skipping direct commits that did not commit. It reads past that position as far as it must to learn
//! how the records before it ended (outcome information is always true, even in a tail the log has not
//! proven durable yet), and stops at the first record whose commit is not decided: everything after it
//! waits, so records are applied in log order (invariant 3). It never applies anything itself.
//!
//! The file log holds the records of every database waly serves: a source yields one database's
//! records ([`Source::only`]), and without that it refuses a log that turns out to hold several, rather
//! than mix them into one target. Likewise it refuses to go on into the records of a database created
//! anew under the name of the one it replays (records carry the database's OID).

use crate::log::{LogReader, Position};
use crate::record::{LogRecord, Record, Settled, Settler};

use super::ReplayError;

/// Entries read per step.
const READ: usize = 2000;

/// How many records may wait behind an undecided one before the source stops reading for it.
const MAX_HELD: usize = 100_000;

pub struct Source<'a> {
    reader: &'a dyn LogReader,
    settler: Settler,
    /// The next position to read.
    next: Position,
    /// The last position to yield.
    last: Position,
    /// Nothing more to read (the log's end, or too much held back).
    exhausted: bool,
    /// Direct commits skipped because they did not commit.
    pub not_committed: u64,
    /// The database whose records to yield; `None`: all, as long as they are of one database.
    database: Option<String>,
    /// The database of the records yielded so far, when no database was named.
    seen_database: Option<String>,
    /// Committed records skipped because they are of another database.
    pub other_databases: u64,
    /// The OID of the database whose records were yielded (records of waly before it noted OIDs have
    /// none): a record with another is of a database created anew under the name.
    seen_oid: Option<u32>,
}

impl<'a> Source<'a> {
    /// Committed records after `after` up to `last`, from `reader`.
    pub fn new(reader: &'a dyn LogReader, after: Position, last: Position) -> Source<'a> {
        Source {
            reader,
            settler: Settler::new(),
            next: after.next(),
            last,
            exhausted: false,
            not_committed: 0,
            database: None,
            seen_database: None,
            other_databases: 0,
            seen_oid: None,
        }
    }

    /// Yields only the records of `database` (all records when `None`, which must then be of one).
    pub fn only(mut self, database: Option<&str>) -> Source<'a> {
        self.database = database.map(str::to_owned);
        self
    }

    /// Whether a committed record is one to yield.
    fn wanted(&mut self, position: u64, record: &Record) -> Result<bool, ReplayError> {
        let database = &record.session.database;
        if let Some(only) = &self.database {
            if database != only {
                self.other_databases += 1;
                return Ok(false);
            }
        } else {
            match &self.seen_database {
                None => self.seen_database = Some(database.clone()),
                Some(first) if first != database => {
                    return Err(ReplayError::SeveralDatabases {
                        position: Position(position),
                        database: database.clone(),
                        first: first.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        if let Some(oid) = record.session.database_oid {
            match self.seen_oid {
                None => self.seen_oid = Some(oid),
                Some(first) if first != oid => {
                    return Err(ReplayError::DatabaseCreatedAnew {
                        position: Position(position),
                        database: database.clone(),
                        earlier: Position(position - 1),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(true)
    }

    /// The next committed records in log order, at most `max`; empty when there are no more, or the
    /// next one is not decided yet ([`Source::waiting`] tells).
    pub async fn chunk(&mut self, max: usize) -> Result<Vec<(Position, Record)>, ReplayError> {
        let mut out = Vec::new();
        loop {
            while out.len() < max.max(1) {
                match self.settler.next_settled() {
                    Some(Settled::Committed(p, _) | Settled::Aborted(p, _)) if p > self.last.0 => {
                        self.exhausted = true;
                        return Ok(out);
                    }
                    Some(Settled::Committed(p, record)) => {
                        if self.wanted(p, &record)? {
                            out.push((Position(p), *record));
                        }
                    }
                    Some(Settled::Aborted(..)) => self.not_committed += 1,
                    None => break,
                }
            }
            if out.len() >= max.max(1) || self.exhausted {
                return Ok(out);
            }
            // More entries are needed to yield a record at or below the last position, or to decide one.
            let needed = match self.settler.waiting() {
                Some((p, _)) => p <= self.last.0,
                None => self.next <= self.last,
            };
            if !needed || self.settler.held() >= MAX_HELD {
                self.exhausted = true;
                return Ok(out);
            }
            let entries = self.reader.read(self.next, READ).await?;
            let Some(end) = entries.last().map(|e| e.position) else {
                self.exhausted = true;
                return Ok(out);
            };
            self.next = end.next();
            for entry in entries {
                let record =
                    LogRecord::from_json(&entry.payload).map_err(|source| ReplayError::Record {
                        position: entry.position,
                        source,
                    })?;
                self.settler.push(entry.position.0, record);
            }
        }
    }

    /// The first record at or below the last position whose commit is not decided: where the replay
    /// stopped short.
    pub fn waiting(&self) -> Option<(Position, &Record)> {
        self.settler
            .waiting()
            .filter(|(p, _)| *p <= self.last.0)
            .map(|(p, r)| (Position(p), r))
    }
}
