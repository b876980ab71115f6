//! The write-ahead log: where a transaction's record becomes durable before its commit becomes visible.
//!
//! Owns the backend-neutral [`Log`] trait (append durably, read from a position, find a position by time),
//! the types it speaks ([`Position`], [`Entry`], [`LogStats`], [`LogError`]) and the embedded file backend
//! ([`file`]). A Kafka backend implements the same trait, so nothing here may mention files, segments or
//! fsync in its contract beyond "durable". This module must never know about Postgres, sessions or what a
//! record contains: a payload is opaque bytes here. The one exception is [`inspect`], the presentation
//! behind `waly log tail` and `waly log show`, which renders payloads as [`crate::record::Record`]s; it sits
//! on top of the log, and nothing else in this module may depend on it or on the record.

mod error;
pub mod file;
pub mod inspect;
pub mod kafka;
pub mod latency;
mod reader;

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

pub use error::LogError;
pub use file::{FileLog, FileLogConfig, FileLogReader, RecoveryReport, TailCut};
pub use kafka::{KafkaLog, KafkaLogs};
pub use reader::{LogReader, OwnLog, open_reader};

/// A record's place in the log: dense, starting at 1, strictly increasing; the total order of records.
/// `Position(0)` means "before the first record" (the end of an empty log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

impl Position {
    /// The position of the first record a log ever holds.
    pub const FIRST: Position = Position(1);

    /// The position right after this one.
    pub fn next(self) -> Position {
        Position(self.0 + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One durable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub position: Position,
    /// When the log made the record durable, in microseconds since the Unix epoch. Assigned by the log at
    /// append, never decreasing along positions (records of one group commit share a timestamp).
    pub timestamp_micros: i64,
    pub payload: Bytes,
}

/// Group-commit statistics since the log was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogStats {
    /// Records made durable and acknowledged.
    pub appends: u64,
    /// Durable writes that acknowledged them (for the file log: fsyncs).
    pub batches: u64,
    /// Bytes written for them, framing included.
    pub bytes: u64,
    /// Records whose append failed.
    pub failed_appends: u64,
}

impl LogStats {
    /// Records per durable write: how well group commit batches (1.0 means no batching).
    pub fn appends_per_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.appends as f64 / self.batches as f64
        }
    }
}

/// A durable, totally ordered, append-only sequence of records.
///
/// Implementations batch concurrent appends (group commit) and may be shared freely between tasks and
/// runtimes (`Arc<dyn Log>`).
#[async_trait]
pub trait Log: Send + Sync {
    /// Appends one record and returns once it is durable. Concurrent callers are batched into one durable
    /// write; positions are assigned by the log, and their order is the order of durability.
    ///
    /// On `Err`, the record is not in the log, unless the error is [`LogError::InDoubt`]: then it may or
    /// may not be, and only reading the log after a restart tells. A cancelled (dropped) call is in doubt
    /// too.
    async fn append(&self, payload: Bytes) -> Result<Entry, LogError>;

    /// At most `max` records from `from` (inclusive) on, in order, up to the durable end at the time of the
    /// call. Empty when `from` is past that end. `Position(0)` reads from the first record.
    async fn read(&self, from: Position, max: usize) -> Result<Vec<Entry>, LogError>;

    /// The first position whose timestamp is at or after `timestamp_micros`; `None` if no durable record is
    /// that recent.
    async fn position_at(&self, timestamp_micros: i64) -> Result<Option<Position>, LogError>;

    /// The last durable position; `Position(0)` when the log is empty.
    fn end(&self) -> Position;

    /// Group-commit statistics.
    fn stats(&self) -> LogStats;

    /// After an append failed [`LogError::InDoubt`], how long until reading the log tells whether the
    /// record is in it; `None` when only a restart tells (the file log: its writer stops on such a
    /// failure).
    fn in_doubt_settles_after(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Which log a database's records go to.
pub trait LogRouter: Send + Sync {
    fn log_for(&self, database: &str) -> std::sync::Arc<dyn Log>;

    /// A name for the log `database`'s records go to, the same for databases that share a log:
    /// `log_for(log_key(db))` is `log_for(db)`.
    fn log_key(&self, database: &str) -> String;

    /// Statistics summed over every log used.
    fn stats(&self) -> LogStats;

    /// Whether an append that a process before `started` sent can no longer reach any of these logs
    /// ([`Log::in_doubt_settles_after`] has passed since).
    fn settled_since(&self, started: std::time::Instant) -> bool;
}

/// One log for every database (the file log).
pub struct SharedLog(pub std::sync::Arc<dyn Log>);

impl LogRouter for SharedLog {
    fn log_for(&self, _database: &str) -> std::sync::Arc<dyn Log> {
        std::sync::Arc::clone(&self.0)
    }

    fn log_key(&self, _database: &str) -> String {
        "file".to_owned()
    }

    fn stats(&self) -> LogStats {
        self.0.stats()
    }

    fn settled_since(&self, started: std::time::Instant) -> bool {
        self.0
            .in_doubt_settles_after()
            .is_none_or(|d| started.elapsed() >= d)
    }
}
