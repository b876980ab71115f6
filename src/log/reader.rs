//! Reading a log from outside the process that appends to it, whatever its backend: `waly log`, `waly
//! replay` and recovery read through [`LogReader`].
//!
//! Owns the read-side trait and the choice of backend from the configuration ([`open_reader`]). It must
//! never append.

use async_trait::async_trait;

use super::kafka::KafkaLogs;
use super::{Entry, FileLog, FileLogReader, Log, LogError, Position};
use crate::config::{Config, LogBackend};

/// The read side of a log.
#[async_trait]
pub trait LogReader: Send + Sync {
    /// At most `max` records from `from` (inclusive) on, in order. Empty past the end.
    async fn read(&self, from: Position, max: usize) -> Result<Vec<Entry>, LogError>;

    /// The first position whose timestamp is at or after `timestamp_micros`; `None` if no record is that
    /// recent.
    async fn position_at(&self, timestamp_micros: i64) -> Result<Option<Position>, LogError>;

    /// The last record the log holds now.
    async fn end(&self) -> Result<Position, LogError>;

    /// The last record a consumer that acts on records (replay) may rely on: no record up to it can still
    /// be taken back.
    async fn settled_end(&self) -> Result<Position, LogError>;

    /// What this log is, for messages: a directory, a topic.
    fn describe(&self) -> String;
}

#[async_trait]
impl LogReader for FileLogReader {
    async fn read(&self, from: Position, max: usize) -> Result<Vec<Entry>, LogError> {
        FileLogReader::read(self, from, max).await
    }

    async fn position_at(&self, timestamp_micros: i64) -> Result<Option<Position>, LogError> {
        FileLogReader::position_at(self, timestamp_micros).await
    }

    async fn end(&self) -> Result<Position, LogError> {
        FileLogReader::end(self).await
    }

    /// While `waly serve` appends, the last record proven durable; otherwise every complete record.
    async fn settled_end(&self) -> Result<Position, LogError> {
        if self.writer_active() {
            self.proven_end().await
        } else {
            FileLogReader::end(self).await
        }
    }

    fn describe(&self) -> String {
        format!("the file log in {}", self.dir().display())
    }
}

/// A log this process appends to, read through [`LogReader`]: what it holds up to its end is durable.
pub struct OwnLog<'a>(pub &'a dyn Log);

#[async_trait]
impl LogReader for OwnLog<'_> {
    async fn read(&self, from: Position, max: usize) -> Result<Vec<Entry>, LogError> {
        self.0.read(from, max).await
    }

    async fn position_at(&self, timestamp_micros: i64) -> Result<Option<Position>, LogError> {
        self.0.position_at(timestamp_micros).await
    }

    async fn end(&self) -> Result<Position, LogError> {
        Ok(self.0.end())
    }

    async fn settled_end(&self) -> Result<Position, LogError> {
        Ok(self.0.end())
    }

    fn describe(&self) -> String {
        "the log being appended to".to_owned()
    }
}

/// The log `config` names, for reading. The file log holds every database's records, so `database` only
/// matters for Kafka, where each database has its own topic; there it is required.
pub fn open_reader(
    config: &Config,
    database: Option<&str>,
) -> Result<Box<dyn LogReader>, LogError> {
    match &config.log {
        LogBackend::File(_) => Ok(Box::new(FileLog::open_read_only(FileLog::dir_in(
            &config.data_dir,
        ))?)),
        LogBackend::Kafka(settings) => {
            let database = database.ok_or_else(|| LogError::Unavailable {
                detail:
                    "the log is in Kafka, one topic per database: name the database with --database"
                        .into(),
            })?;
            let logs = KafkaLogs::new(settings.clone())?;
            Ok(Box::new(logs.reader(database)))
        }
    }
}
