//! The embedded file log: segmented append-only files in `<data_dir>/log/`, written by one thread with
//! group commit, a CRC32C per record, a sparse index per segment, and recovery that cuts a torn tail.
//!
//! A [`FileLog`] owns the log directory exclusively (an advisory lock on `LOCK` keeps a second writer out).
//! Appends go to the writer thread ([`writer`]); reads and time look-ups run on tokio's blocking pool
//! against the durable prefix ([`read`]); opening runs [`recovery`]. Read-only tools open a
//! [`FileLogReader`] instead ([`reader`]): no lock, no writes, the same reading code over a segment table
//! it re-discovers from the files. This module must never acknowledge a record before its fsync returned,
//! never drop a record that later intact data proves was acknowledged, and never rewrite bytes below a
//! segment's durable length.

mod discover;
mod format;
mod index;
mod read;
mod reader;
mod recovery;
mod scan;
mod segment;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_disk;
#[cfg(test)]
mod tests_reader;
#[cfg(test)]
mod tests_recovery;
mod writer;

use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

pub use reader::FileLogReader;
pub use recovery::{RecoveryReport, TailCut};

use super::{Entry, Log, LogError, LogStats, Position};
use format::{MAX_PAYLOAD, SEGMENT_HEADER_LEN};
use index::Sampler;
use segment::{SegmentTable, sync_dir};
use writer::{Request, Writer};

/// Tuning of the file log. Out-of-range values are clamped at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLogConfig {
    /// A segment is sealed and a new one started when the next batch would take it past this size.
    pub segment_bytes: u64,
    /// One index entry per this many bytes of records (plus one for each segment's first record).
    pub index_every_bytes: u64,
    /// The largest payload an append accepts (at most 1 GiB, the format's limit).
    pub max_record_bytes: usize,
    /// A group commit stops taking waiting appends once it holds this many bytes.
    pub max_batch_bytes: u64,
}

impl Default for FileLogConfig {
    fn default() -> Self {
        FileLogConfig {
            segment_bytes: 64 << 20,
            index_every_bytes: 64 << 10,
            max_record_bytes: 256 << 20,
            max_batch_bytes: 16 << 20,
        }
    }
}

/// State shared by the writer and readers.
struct Shared {
    /// Every segment in position order; the last one is active.
    table: SegmentTable,
    /// The last durable position, published after `table` is updated.
    end: AtomicU64,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    appends: AtomicU64,
    batches: AtomicU64,
    bytes: AtomicU64,
    failed_appends: AtomicU64,
}

/// The embedded file log. Dropping it stops the writer thread after it has answered every queued append.
pub struct FileLog {
    shared: Arc<Shared>,
    requests: Option<mpsc::UnboundedSender<Request>>,
    writer: Option<thread::JoinHandle<()>>,
    max_record_bytes: usize,
    report: RecoveryReport,
    _lock: File,
}

impl FileLog {
    /// The log directory inside waly's data directory.
    pub fn dir_in(data_dir: &Path) -> PathBuf {
        data_dir.join("log")
    }

    /// Opens (creating if needed) the log in `dir`, recovering it: checks the segments, loads or rebuilds
    /// their indexes, cuts a torn tail. Blocking: call it before serving, or from `spawn_blocking`.
    pub fn open(dir: impl AsRef<Path>, config: FileLogConfig) -> Result<FileLog, LogError> {
        let dir = dir.as_ref().to_path_buf();
        let segment_bytes = config.segment_bytes.max(SEGMENT_HEADER_LEN + 1);
        let index_every_bytes = config.index_every_bytes.max(1);
        let max_record_bytes = config.max_record_bytes.min(MAX_PAYLOAD as usize);
        let max_batch_bytes = config.max_batch_bytes.max(1);

        let cannot = |what: &str, e: std::io::Error| {
            LogError::from_io(format!("{what} {}", dir.display()), &e)
        };
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(|e| cannot("creating", e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(|e| cannot("syncing the parent of", e))?;
            }
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"));
        let lock = lock.map_err(|e| cannot("creating the lock file in", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LogError::Unavailable {
                    detail: format!("another process has the log in {} open", dir.display()),
                });
            }
            Err(TryLockError::Error(e)) => return Err(cannot("locking", e)),
        }

        let recovered = recovery::recover(&dir, index_every_bytes)?;
        let active = recovered.segments.last().expect("an active segment");
        let previous_timestamp = recovered
            .segments
            .iter()
            .rev()
            .find(|s| !s.is_empty())
            .map_or(0, |s| s.last_timestamp);
        let writer_state = (
            active.first,
            active.durable_len,
            active.last + 1,
            active.index.entries().last().copied(),
        );
        tracing::info!(dir = %dir.display(), segments = recovered.segments.len(), end = active.last,
            indexes_rebuilt = recovered.report.indexes_rebuilt.len(), tail_cut = recovered.report.cut.is_some(),
            "opened the log");

        let shared = Arc::new(Shared {
            end: AtomicU64::new(active.last),
            table: SegmentTable::new(dir.clone(), recovered.segments),
            stats: Counters::default(),
        });
        let (active_first, durable_len, next_position, last_entry) = writer_state;
        let writer = Writer {
            shared: shared.clone(),
            dir: dir.clone(),
            segment_bytes,
            max_batch_bytes,
            index_every_bytes,
            file: recovered.active,
            active_first,
            durable_len,
            next_position,
            last_timestamp: previous_timestamp,
            sampler: Sampler::after(index_every_bytes, last_entry.as_ref()),
            poisoned: None,
            buf: Vec::new(),
        };
        let (requests, receiver) = mpsc::unbounded_channel();
        let handle = thread::Builder::new()
            .name("waly-log-writer".to_string())
            .spawn(move || writer.run(receiver))
            .map_err(|e| cannot("starting the writer of", e))?;
        Ok(FileLog {
            shared,
            requests: Some(requests),
            writer: Some(handle),
            max_record_bytes,
            report: recovered.report,
            _lock: lock,
        })
    }

    /// Opens the log in `dir` for reading only, alongside a writer that may be appending to it: takes no
    /// lock and never writes. See [`FileLogReader`]. Blocking: call it from `spawn_blocking` in a server.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<FileLogReader, LogError> {
        FileLogReader::open(dir.as_ref())
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.shared.table.dir
    }

    /// What opening the log found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Reads and checks every durable record (length, checksum, position sequence), including the sealed
    /// segments that opening trusts through their index. Returns the number of records.
    pub async fn verify(&self) -> Result<u64, LogError> {
        let shared = self.shared.clone();
        blocking(move || read::verify(&shared.table)).await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(LogError::Unavailable {
            detail: format!("a log reader failed: {e}"),
        })
    })
}

#[async_trait]
impl Log for FileLog {
    async fn append(&self, payload: Bytes) -> Result<Entry, LogError> {
        if payload.len() > self.max_record_bytes {
            return Err(LogError::TooLarge {
                size: payload.len(),
                max: self.max_record_bytes,
            });
        }
        let (reply, answer) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or(LogError::Closed)?;
        requests
            .send(Request { payload, reply })
            .map_err(|_| LogError::Closed)?;
        answer.await.unwrap_or_else(|_| {
            Err(LogError::InDoubt {
                detail: "the log writer stopped before answering".to_string(),
            })
        })
    }

    async fn read(&self, from: Position, max: usize) -> Result<Vec<Entry>, LogError> {
        let end = self.end().0;
        let from = from.0.max(1);
        if from > end || max == 0 {
            return Ok(Vec::new());
        }
        let shared = self.shared.clone();
        blocking(move || read::read(&shared.table, from, end, max)).await
    }

    async fn position_at(&self, timestamp_micros: i64) -> Result<Option<Position>, LogError> {
        let shared = self.shared.clone();
        Ok(
            blocking(move || read::position_at(&shared.table, timestamp_micros))
                .await?
                .map(Position),
        )
    }

    fn end(&self) -> Position {
        Position(self.shared.end.load(Ordering::Acquire))
    }

    fn stats(&self) -> LogStats {
        let c = &self.shared.stats;
        LogStats {
            appends: c.appends.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            failed_appends: c.failed_appends.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(dir = %self.shared.table.dir.display(), "the log writer panicked");
        }
    }
}
