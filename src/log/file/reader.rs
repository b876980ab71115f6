//! The read-only reader: reads a log directory that a live writer (another process, or a
//! [`FileLog`](super::FileLog) in this one) may be appending to, for tools that only look (`waly log tail`, `waly log show`, replay).
//!
//! It takes no lock (not even a shared one, which would keep a writer from starting) and never writes: no
//! tail cut, no index saved, no header repaired, no leftover file removed. Every call re-discovers the log
//! from its files ([`discover`](super::discover)): segments that appeared are loaded (sealed ones through
//! their index side file when it is usable, else by a scan that is kept in memory only), and the last
//! segment is scanned on from where the previous call stopped, up to the first bytes that are not a
//! complete record with a matching checksum. Those bytes are a write in progress or a torn tail a crash
//! left; either way the reader stops before them and looks again next time. Damage the writer would refuse
//! to open with (a bad sealed segment, an out-of-sequence record, a gap between segments) is
//! [`LogError::Corrupt`]. Reads then go through the same code as the writer's ([`read`](super::read)).
//!
//! The files show a record as soon as it is written, while the writer acknowledges it only after its
//! fsync, so a reader may see a complete record whose fsync has not returned yet. Such a record is not
//! acknowledged: if the fsync fails the writer cuts its batch off again and gives the positions to the next
//! batch, and if the machine crashes it may be lost. A reader notices a cut (the file got shorter, or the
//! last record it saw is no longer there), reads the segment again, and its end moves back.
//! [`FileLogReader::end`] includes such records; that is right for an inspector, which shows what the log
//! holds now and is at most one group commit ahead of the acknowledged end. A consumer that acts on
//! records (replay into another database) must stop at [`FileLogReader::proven_end`]: a record is proven
//! durable once its segment is sealed or a later batch follows it (the writer writes a batch only after
//! the previous one's fsync returned), so the proven end lags by the last batch until another arrives.
//!
//! This module must never write, create, remove or lock anything in the log directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::blocking;
use super::discover::{
    check_continuity, check_header_names, corrupt, io_error, list_segments, load_sealed,
    read_header, scan_records,
};
use super::format::{HeaderProblem, RecordHeader, SEGMENT_HEADER_LEN};
use super::index::{Sampler, SparseIndex};
use super::read;
use super::scan::header_at;
use super::segment::{Segment, SegmentTable, segment_name};
use crate::log::{Entry, LogError, Position};

/// Index density for segments the reader scans itself (sealed ones come with their side file's index).
const INDEX_EVERY_BYTES: u64 = 64 << 10;

/// A read-only view of a file log, opened with [`FileLog::open_read_only`](super::FileLog::open_read_only). Cheap to clone; clones share
/// what they discovered.
#[derive(Clone)]
pub struct FileLogReader {
    inner: Arc<Inner>,
}

struct Inner {
    table: SegmentTable,
    /// What the last discovery learned about the last segment. Held for the length of a discovery, so
    /// discoveries run one at a time; reads only take the table's lock.
    follow: Mutex<Follow>,
}

/// Where the reader is in the last segment.
#[derive(Clone)]
struct Follow {
    /// Offset and header of the last record found there, read again before scanning on, to notice that
    /// the writer cut records off. `None` when the segment holds none or was loaded sealed.
    last_record: Option<(u64, RecordHeader)>,
    sampler: Sampler,
}

impl Follow {
    fn new() -> Follow {
        Follow {
            last_record: None,
            sampler: Sampler::after(INDEX_EVERY_BYTES, None),
        }
    }
}

/// The ends a discovery found.
#[derive(Debug, Clone, Copy)]
struct Ends {
    end: u64,
    proven: u64,
}

impl FileLogReader {
    pub(super) fn open(dir: &Path) -> Result<FileLogReader, LogError> {
        let metadata = fs::metadata(dir)
            .map_err(|e| LogError::from_io(format!("opening the log in {}", dir.display()), &e))?;
        if !metadata.is_dir() {
            return Err(LogError::Unavailable {
                detail: format!("{} is not a log directory", dir.display()),
            });
        }
        let reader = FileLogReader {
            inner: Arc::new(Inner {
                table: SegmentTable::new(dir.to_path_buf(), Vec::new()),
                follow: Mutex::new(Follow::new()),
            }),
        };
        discover(&reader.inner)?;
        let empty = reader.inner.table.read().is_empty();
        // A writer creates `LOCK` before its first segment; a directory with neither is no log at all
        // (most likely the wrong directory), which is better said than shown as an empty log.
        if empty && !dir.join("LOCK").exists() {
            return Err(LogError::Unavailable {
                detail: format!("{} holds no waly log", dir.display()),
            });
        }
        Ok(reader)
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.inner.table.dir
    }

    /// Whether a [`FileLog`](super::FileLog) holds the log open for appending now. Probed by trying the
    /// writer's lock for an instant (released at once), so a writer starting in that same instant could
    /// find it taken and refuse to start; tools call this once, not in a loop. With no writer, every
    /// complete record is final and [`end`](Self::end) is as safe as [`proven_end`](Self::proven_end).
    pub fn writer_active(&self) -> bool {
        let Ok(lock) = fs::File::open(self.dir().join("LOCK")) else {
            return false;
        };
        match lock.try_lock_shared() {
            Ok(()) => false,
            Err(fs::TryLockError::WouldBlock) => true,
            Err(fs::TryLockError::Error(_)) => false,
        }
    }

    /// The last complete, checksummed record in the files now (`Position(0)` when there is none). It may
    /// be one group commit ahead of what the writer acknowledged: see the module documentation.
    pub async fn end(&self) -> Result<Position, LogError> {
        let inner = self.inner.clone();
        Ok(Position(blocking(move || discover(&inner)).await?.end))
    }

    /// The last record proven durable: in a sealed segment, or followed by a later group commit. At most
    /// [`end`](Self::end); behind it by the last batch while the log is quiet.
    pub async fn proven_end(&self) -> Result<Position, LogError> {
        let inner = self.inner.clone();
        Ok(Position(blocking(move || discover(&inner)).await?.proven))
    }

    /// At most `max` records from `from` (inclusive) on, in order, up to [`end`](Self::end) as found by
    /// this call. Empty when `from` is past it. `Position(0)` reads from the first record.
    pub async fn read(&self, from: Position, max: usize) -> Result<Vec<Entry>, LogError> {
        let inner = self.inner.clone();
        blocking(move || {
            let end = discover(&inner)?.end;
            let from = from.0.max(1);
            if from > end || max == 0 {
                return Ok(Vec::new());
            }
            read::read(&inner.table, from, end, max)
        })
        .await
    }

    /// The first position whose timestamp is at or after `timestamp_micros`; `None` if no record is that
    /// recent.
    pub async fn position_at(&self, timestamp_micros: i64) -> Result<Option<Position>, LogError> {
        let inner = self.inner.clone();
        blocking(move || {
            discover(&inner)?;
            Ok(read::position_at(&inner.table, timestamp_micros)?.map(Position))
        })
        .await
    }
}

fn changed_under_us(dir: &Path, first: u64) -> LogError {
    LogError::Unavailable {
        detail: format!(
            "the segments of the log in {} changed under the reader (at {}); open it again",
            dir.display(),
            segment_name(first)
        ),
    }
}

/// Brings the reader's segment table up to what the files hold now. Blocking.
fn discover(inner: &Inner) -> Result<Ends, LogError> {
    let mut kept = inner.follow.lock().unwrap_or_else(|e| e.into_inner());
    // Worked on as a copy, and kept only when the whole discovery succeeds, along with the table.
    let mut follow = kept.clone();
    let dir = &inner.table.dir;
    let listed = list_segments(dir)?;
    let (known, previous_last, last_known) = {
        let segments = inner.table.read();
        let known: Vec<u64> = segments.iter().map(|s| s.first).collect();
        let sealed = segments.len().saturating_sub(1);
        let previous_last = sealed.checked_sub(1).map(|i| segments[i].last);
        (known, previous_last, segments.last().cloned())
    };
    // Segments the reader knows to be sealed never change; they must all still be there, and nothing
    // may have appeared among them.
    let sealed = known.len().saturating_sub(1);
    if let Some(k) = (0..sealed).find(|&k| listed.get(k) != Some(&known[k])) {
        return Err(changed_under_us(dir, known[k]));
    }
    let mut rest = &listed[sealed..];

    let mut tail: Vec<Segment> = Vec::new();
    let mut tail_follow = None;
    match last_known {
        Some(mut segment) if rest.first() == Some(&segment.first) => {
            let sealed_now = rest.len() > 1;
            catch_up(&mut segment, &mut follow, sealed_now)?;
            check_continuity(previous_last, &segment)?;
            if sealed_now {
                follow = Follow::new();
            }
            tail.push(segment);
            rest = &rest[1..];
        }
        // A segment a failed roll created and removed again: it never held a record.
        Some(segment) if segment.is_empty() => {}
        Some(segment) => return Err(changed_under_us(dir, segment.first)),
        None => {}
    }
    for (k, &first) in rest.iter().enumerate() {
        let before = tail.last().map(|s| s.last).or(previous_last);
        let segment = if k + 1 < rest.len() {
            tail_follow = Some(Follow::new());
            load_sealed(dir, first, INDEX_EVERY_BYTES)?.segment
        } else {
            let mut fresh = Follow::new();
            let Some(segment) = open_last(dir, first, &mut fresh)? else {
                break;
            };
            tail_follow = Some(fresh);
            segment
        };
        check_continuity(before, &segment)?;
        tail.push(segment);
    }

    if let Some(fresh) = tail_follow {
        follow = fresh;
    }
    let mut segments = inner.table.write();
    segments.truncate(sealed);
    segments.extend(tail);
    let end = segments.last().map_or(0, |s| s.last);
    let proven = match (segments.last(), follow.last_record) {
        (Some(s), Some((_, header))) if !s.is_empty() => header.batch_first() - 1,
        _ => end,
    };
    *kept = follow;
    Ok(Ends { end, proven })
}

/// The last listed segment, scanned from its start; `None` while its header is still being written.
fn open_last(dir: &Path, first: u64, follow: &mut Follow) -> Result<Option<Segment>, LogError> {
    let path = dir.join(segment_name(first));
    let (len, header) = read_header(&path)?;
    match header {
        Ok(named) => check_header_names(&path, first, named)?,
        Err(problem)
            if len <= SEGMENT_HEADER_LEN
                && !matches!(problem, HeaderProblem::UnsupportedVersion(_)) =>
        {
            return Ok(None);
        }
        Err(problem) => return Err(corrupt(&path, 0, problem.to_string())),
    }
    let mut segment = empty_segment(path, first);
    catch_up(&mut segment, follow, false)?;
    Ok(Some(segment))
}

fn empty_segment(path: PathBuf, first: u64) -> Segment {
    Segment {
        first,
        path,
        last: first - 1,
        first_timestamp: 0,
        last_timestamp: 0,
        durable_len: SEGMENT_HEADER_LEN,
        index: SparseIndex::default(),
    }
}

/// Scans `segment` on from where the reader stopped, up to the file's current length. In a `sealed`
/// segment every byte must be a valid record; in the last one, the scan stops before the first bytes that
/// are not (yet).
fn catch_up(segment: &mut Segment, follow: &mut Follow, sealed: bool) -> Result<(), LogError> {
    let path = segment.path.clone();
    let len = fs::metadata(&path)
        .map_err(io_error(&path, "reading the size of"))?
        .len();
    let cut = match follow.last_record {
        Some((offset, header)) => {
            len < segment.durable_len
                || header_at(&path, offset).map_err(io_error(&path, "reading"))? != Some(header)
        }
        None => len < segment.durable_len,
    };
    if cut {
        tracing::warn!(segment = %path.display(), seen_up_to = segment.last,
            "the log writer cut off records this reader had seen (a failed fsync); reading the segment again");
        *segment = empty_segment(path.clone(), segment.first);
        *follow = Follow::new();
    }
    let scan = scan_records(
        &path,
        segment.durable_len,
        segment.last + 1,
        len,
        &mut follow.sampler,
    )?;
    if let Some(bad) = &scan.bad
        && (sealed || !bad.in_sequence)
    {
        let reason = if sealed {
            format!("{} (in a sealed segment)", bad.reason)
        } else {
            bad.reason.clone()
        };
        return Err(corrupt(&path, bad.offset, reason));
    }
    if segment.is_empty()
        && let Some(t) = scan.first_timestamp
    {
        segment.first_timestamp = t;
    }
    segment.last = scan.last;
    if let Some(t) = scan.last_timestamp {
        segment.last_timestamp = t;
    }
    segment.durable_len = scan.end;
    segment.index.extend(scan.entries);
    if scan.last_record.is_some() {
        follow.last_record = scan.last_record;
    }
    Ok(())
}
