//! The writer: one thread owns the active segment file, assigns positions and makes batches durable.
//!
//! Group commit: the writer takes every append waiting in its queue (up to `max_batch_bytes`), frames them
//! into one buffer, writes it with one `write_all`, calls `sync_data` once, and only then publishes the new
//! durable end and answers every waiter. While it waits for the disk, new appends queue up and form the
//! next batch. A batch is written to one segment; the writer rolls to a new segment first when the batch
//! would push the active one past `segment_bytes`.
//!
//! Failure never leaves a half-acknowledged state: when a write or fsync fails, every record of the batch
//! fails and the segment is truncated back to its durable length (and fsynced), so the failed records are
//! not in the log and their positions are given to the next batch. If that undo fails, the batch is in
//! doubt and the log is poisoned: it refuses every append until it is reopened, when recovery decides
//! from what is on disk. This module must never answer an append before its fsync returned.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::format::{SEGMENT_HEADER_LEN, encode_record, frame_len};
use super::index::{IndexEntry, IndexFile, Sampler, SparseIndex, write_index_file};
use super::segment::{CreateError, Segment, create_segment, segment_name};
use crate::log::{Entry, LogError, Position};

/// Most records in one batch (the batch index is a u32 in the frame; this keeps batches reasonable).
const MAX_BATCH_RECORDS: usize = 1 << 16;

pub struct Request {
    pub payload: Bytes,
    pub reply: oneshot::Sender<Result<Entry, LogError>>,
}

pub struct Writer {
    pub shared: Arc<Shared>,
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub max_batch_bytes: u64,
    pub index_every_bytes: u64,
    /// The active segment, opened for appending.
    pub file: File,
    pub active_first: u64,
    pub durable_len: u64,
    pub next_position: u64,
    pub last_timestamp: i64,
    pub sampler: Sampler,
    pub poisoned: Option<String>,
    pub buf: Vec<u8>,
}

impl Writer {
    /// Serves appends until every sender is gone.
    pub fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>) {
        let mut batch = Vec::new();
        while let Some(request) = requests.blocking_recv() {
            let mut bytes = frame_len(request.payload.len());
            batch.push(request);
            while bytes < self.max_batch_bytes && batch.len() < MAX_BATCH_RECORDS {
                match requests.try_recv() {
                    Ok(request) => {
                        bytes += frame_len(request.payload.len());
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit(&mut batch, bytes);
        }
        tracing::debug!(dir = %self.dir.display(), "log writer stopped");
    }

    /// Makes `batch` durable and answers it, or fails all of it.
    fn commit(&mut self, batch: &mut Vec<Request>, bytes: u64) {
        if let Some(why) = &self.poisoned {
            let error = LogError::Poisoned {
                detail: why.clone(),
            };
            return self.fail(batch, error);
        }
        let active_has_records = self.next_position > self.active_first;
        if active_has_records
            && self.durable_len + bytes > self.segment_bytes
            && let Err(error) = self.roll()
        {
            return self.fail(batch, error);
        }

        let first_position = self.next_position;
        let timestamp = now_micros().max(self.last_timestamp);
        let mut sampler = self.sampler.clone();
        let mut new_entries = Vec::new();
        self.buf.clear();
        for (i, request) in batch.iter().enumerate() {
            let offset = self.durable_len + self.buf.len() as u64;
            let position = first_position + i as u64;
            if sampler.sample(offset) {
                new_entries.push(IndexEntry {
                    position,
                    timestamp,
                    offset,
                });
            }
            let batch_index = u32::try_from(i).expect("batch size is capped");
            encode_record(
                &mut self.buf,
                position,
                timestamp,
                batch_index,
                &request.payload,
            );
        }

        if let Err(error) = self
            .file
            .write_all(&self.buf)
            .and_then(|()| self.file.sync_data())
        {
            let error = self.undo_failed_write(&error, batch.len());
            return self.fail(batch, error);
        }

        let last = first_position + batch.len() as u64 - 1;
        self.durable_len += self.buf.len() as u64;
        self.next_position = last + 1;
        self.last_timestamp = timestamp;
        self.sampler = sampler;
        {
            let mut segments = self.shared.table.write();
            let segment = segments.last_mut().expect("an active segment");
            if segment.is_empty() {
                segment.first_timestamp = timestamp;
            }
            segment.last = last;
            segment.last_timestamp = timestamp;
            segment.durable_len = self.durable_len;
            segment.index.extend(new_entries);
        }
        self.shared.end.store(last, Ordering::Release);
        self.shared
            .stats
            .appends
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.shared.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.shared
            .stats
            .bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        if self.buf.capacity() as u64 > 2 * self.max_batch_bytes {
            // A record larger than a batch (one big transaction) must not keep its size in memory for
            // the writer's life.
            self.buf = Vec::new();
        }
        for (i, request) in batch.drain(..).enumerate() {
            let entry = Entry {
                position: Position(first_position + i as u64),
                timestamp_micros: timestamp,
                payload: request.payload,
            };
            let _ = request.reply.send(Ok(entry));
        }
    }

    fn fail(&self, batch: &mut Vec<Request>, error: LogError) {
        self.shared
            .stats
            .failed_appends
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for request in batch.drain(..) {
            let _ = request.reply.send(Err(error.clone()));
        }
    }

    fn active_path(&self) -> PathBuf {
        self.dir.join(segment_name(self.active_first))
    }

    /// Truncates the active segment back to its durable length after a failed write or fsync. Returns the
    /// error the batch fails with.
    fn undo_failed_write(&mut self, error: &io::Error, records: usize) -> LogError {
        let path = self.active_path();
        let failed = LogError::from_io(
            format!("writing {records} records to {}", path.display()),
            error,
        );
        match self
            .file
            .set_len(self.durable_len)
            .and_then(|()| self.file.sync_all())
        {
            Ok(()) => {
                tracing::warn!(segment = %path.display(), error = %error, records, durable_len = self.durable_len,
                    "log write failed; the batch was cut back and its appends fail");
                failed
            }
            Err(undo) => {
                let why = format!(
                    "a failed write to {} ({error}) could not be cut back to {} bytes ({undo})",
                    path.display(),
                    self.durable_len
                );
                tracing::error!(segment = %path.display(), error = %error, undo_error = %undo,
                    "log write failed and could not be undone; refusing appends until restart");
                self.poisoned = Some(why.clone());
                LogError::InDoubt { detail: why }
            }
        }
    }

    /// Seals the active segment (saving its index) and starts a new one at the next position.
    fn roll(&mut self) -> Result<(), LogError> {
        let first = self.next_position;
        let file = match create_segment(&self.dir, first) {
            Ok(file) => file,
            Err(CreateError { error, leftover }) => {
                let failed = LogError::from_io(
                    format!("creating log segment {}", segment_name(first)),
                    &error,
                );
                if let Some(cleanup) = leftover {
                    tracing::error!(segment = segment_name(first), error = %error, cleanup_error = %cleanup,
                        "a half-created log segment could not be removed; refusing appends until restart");
                    self.poisoned = Some(format!(
                        "half-created segment {} could not be removed: {cleanup}",
                        segment_name(first)
                    ));
                }
                return Err(failed);
            }
        };
        let sealed = {
            let segments = self.shared.table.read();
            let s = segments.last().expect("an active segment");
            IndexFile {
                segment_len: s.durable_len,
                last_position: s.last,
                last_timestamp: s.last_timestamp,
                entries: s.index.entries().to_vec(),
            }
        };
        if let Err(e) = write_index_file(&self.dir, self.active_first, &sealed) {
            tracing::warn!(segment = %self.active_path().display(), error = %e,
                "cannot save the sealed segment's index; it will be rebuilt at the next open");
        }
        self.shared.table.write().push(Segment {
            first,
            path: self.dir.join(segment_name(first)),
            last: first - 1,
            first_timestamp: 0,
            last_timestamp: 0,
            durable_len: SEGMENT_HEADER_LEN,
            index: SparseIndex::default(),
        });
        tracing::debug!(segment = segment_name(first), sealed = %self.active_path().display(), "rolled to a new log segment");
        self.file = file;
        self.active_first = first;
        self.durable_len = SEGMENT_HEADER_LEN;
        self.sampler = Sampler::after(self.index_every_bytes, None);
        Ok(())
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
