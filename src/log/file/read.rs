//! Reading the durable prefix: records from a position, the first position at a time, and a full check.
//!
//! Works on a [`SegmentTable`], whoever keeps it: the writer's [`FileLog`](super::FileLog) or a read-only
//! [`FileLogReader`](super::FileLogReader). Readers open their own file handles and read only bytes below
//! a segment's durable length as the table knows it; they hold the table's lock only to look up where to
//! start (a binary search over segments, then over the segment's index), never while doing I/O. Every
//! record read is checked (length, checksum, position); damage is reported as [`LogError::Corrupt`], never
//! skipped. Nothing here writes.

use std::path::{Path, PathBuf};

use super::format::SEGMENT_HEADER_LEN;
use super::scan::{Scanner, Step};
use super::segment::SegmentTable;
use crate::log::{Entry, LogError, Position};

/// Where a scan starts, copied out of the segment list.
struct Start {
    path: PathBuf,
    offset: u64,
    position: u64,
    limit: u64,
    last: u64,
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        location: path.display().to_string(),
        offset,
        reason: reason.into(),
    }
}

fn unreadable(path: &Path) -> impl Fn(std::io::Error) -> LogError {
    let context = format!("reading {}", path.display());
    move |e| LogError::from_io(&context, &e)
}

/// The segment holding `position` and the index entry to scan from.
fn locate(table: &SegmentTable, position: u64) -> Option<Start> {
    let segments = table.read();
    let i = segments
        .partition_point(|s| s.first <= position)
        .checked_sub(1)?;
    let s = &segments[i];
    let entry = s
        .index
        .seek_position(position)
        .filter(|_| position <= s.last)?;
    Some(Start {
        path: s.path.clone(),
        offset: entry.offset,
        position: entry.position,
        limit: s.durable_len,
        last: s.last,
    })
}

/// At most `max` records from `from` to `end` (both inclusive).
pub fn read(table: &SegmentTable, from: u64, end: u64, max: usize) -> Result<Vec<Entry>, LogError> {
    let mut out = Vec::new();
    let mut next = from;
    while out.len() < max && next <= end {
        let start = locate(table, next)
            .ok_or_else(|| corrupt(&table.dir, 0, format!("no segment holds position {next}")))?;
        let mut scanner = Scanner::open(&start.path, start.offset, start.limit)
            .map_err(unreadable(&start.path))?;
        let stop = end.min(start.last);
        let mut expected = start.position;
        while expected <= stop && out.len() < max {
            let record = match scanner.next_record().map_err(unreadable(&start.path))? {
                Step::Record(r) => r,
                Step::End => {
                    return Err(corrupt(
                        &start.path,
                        scanner.offset(),
                        format!("segment ends before position {expected}"),
                    ));
                }
                Step::Bad { offset, reason } => return Err(corrupt(&start.path, offset, reason)),
            };
            if record.header.position != expected {
                let reason = format!(
                    "record has position {} where {expected} belongs",
                    record.header.position
                );
                return Err(corrupt(&start.path, record.offset, reason));
            }
            if expected >= next {
                out.push(Entry {
                    position: Position(expected),
                    timestamp_micros: record.header.timestamp,
                    payload: record.payload,
                });
                next = expected + 1;
            }
            expected += 1;
        }
    }
    Ok(out)
}

/// The first durable position stamped at or after `t`.
pub fn position_at(table: &SegmentTable, t: i64) -> Result<Option<u64>, LogError> {
    let start = {
        let segments = table.read();
        // Only the active (last) segment can be empty; leave it out so the search sees sorted timestamps.
        let with_records =
            segments.len() - usize::from(segments.last().is_some_and(|s| s.is_empty()));
        let i = segments[..with_records].partition_point(|s| s.last_timestamp < t);
        let Some(s) = segments[..with_records].get(i) else {
            return Ok(None);
        };
        let entry = s
            .index
            .seek_time(t)
            .ok_or_else(|| corrupt(&s.path, 0, "segment has records but no index"))?;
        Start {
            path: s.path.clone(),
            offset: entry.offset,
            position: entry.position,
            limit: s.durable_len,
            last: s.last,
        }
    };
    let mut scanner =
        Scanner::open(&start.path, start.offset, start.limit).map_err(unreadable(&start.path))?;
    let mut expected = start.position;
    while expected <= start.last {
        match scanner.next_record().map_err(unreadable(&start.path))? {
            Step::Record(r) if r.header.position != expected => {
                let reason = format!(
                    "record has position {} where {expected} belongs",
                    r.header.position
                );
                return Err(corrupt(&start.path, r.offset, reason));
            }
            Step::Record(r) if r.header.timestamp >= t => return Ok(Some(expected)),
            Step::Record(_) => expected += 1,
            Step::End => break,
            Step::Bad { offset, reason } => return Err(corrupt(&start.path, offset, reason)),
        }
    }
    Err(corrupt(
        &start.path,
        scanner.offset(),
        format!("no record at or after {t} though the segment's last one is"),
    ))
}

/// Reads every durable record of every segment and checks it. Returns how many records there are.
pub fn verify(table: &SegmentTable) -> Result<u64, LogError> {
    let snapshot: Vec<(PathBuf, u64, u64, u64)> = {
        let segments = table.read();
        segments
            .iter()
            .map(|s| (s.path.clone(), s.first, s.last, s.durable_len))
            .collect()
    };
    let mut records = 0;
    for (path, first, last, limit) in snapshot {
        let mut scanner =
            Scanner::open(&path, SEGMENT_HEADER_LEN, limit).map_err(unreadable(&path))?;
        let mut expected = first;
        loop {
            match scanner.next_record().map_err(unreadable(&path))? {
                Step::Record(r) if r.header.position != expected || expected > last => {
                    let reason = format!(
                        "record has position {} where {expected} belongs",
                        r.header.position
                    );
                    return Err(corrupt(&path, r.offset, reason));
                }
                Step::Record(_) => expected += 1,
                Step::End if expected == last + 1 => break,
                Step::End => {
                    return Err(corrupt(
                        &path,
                        scanner.offset(),
                        format!("segment ends before position {expected}"),
                    ));
                }
                Step::Bad { offset, reason } => return Err(corrupt(&path, offset, reason)),
            }
        }
        records += last + 1 - first;
    }
    Ok(records)
}
