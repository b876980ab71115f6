//! Finding out what a log directory holds: its segment files, their headers, the valid records of a
//! segment and the index of a sealed one. Shared by recovery, which then repairs what it found, and by the
//! read-only reader, which must not.
//!
//! This module must never write, create, truncate or remove a file: a reader runs it against a directory
//! a live writer owns.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use super::format::{HeaderProblem, RecordHeader, SEGMENT_HEADER_LEN, decode_segment_header};
use super::index::{IndexEntry, IndexFile, Sampler, SparseIndex, read_index_file};
use super::scan::{Scanner, Step};
use super::segment::{Segment, parse_segment_name, segment_name};
use crate::log::LogError;

/// The first positions of the segment files in `dir`, sorted. Other files are ignored.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let cannot = |e: &io::Error| LogError::from_io(format!("listing {}", dir.display()), e);
    let mut firsts = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| cannot(&e))? {
        let name = entry.map_err(|e| cannot(&e))?.file_name();
        if let Some(first) = parse_segment_name(&name.to_string_lossy()) {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

pub fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> LogError {
    LogError::Corrupt {
        location: path.display().to_string(),
        offset,
        reason: reason.into(),
    }
}

pub fn io_error(path: &Path, what: &str) -> impl Fn(io::Error) -> LogError {
    let context = format!("{what} {}", path.display());
    move |e| LogError::from_io(&context, &e)
}

/// Checks that `segment` starts right after the segment before it, which ends at `previous_last`.
pub fn check_continuity(previous_last: Option<u64>, segment: &Segment) -> Result<(), LogError> {
    match previous_last {
        Some(last) if segment.first != last + 1 => Err(corrupt(
            &segment.path,
            0,
            format!(
                "segment starts at position {} but the one before it ends at {last}",
                segment.first
            ),
        )),
        _ => Ok(()),
    }
}

/// A segment's length and header; the header is `Err(problem)` when it is not valid.
pub fn read_header(path: &Path) -> Result<(u64, Result<u64, HeaderProblem>), LogError> {
    let mut file = File::open(path).map_err(io_error(path, "opening"))?;
    let len = file
        .metadata()
        .map_err(io_error(path, "reading the size of"))?
        .len();
    let mut buf = Vec::with_capacity(SEGMENT_HEADER_LEN as usize);
    (&mut file)
        .take(SEGMENT_HEADER_LEN)
        .read_to_end(&mut buf)
        .map_err(io_error(path, "reading"))?;
    Ok((len, decode_segment_header(&buf)))
}

pub fn check_header_names(path: &Path, first: u64, named: u64) -> Result<(), LogError> {
    if named != first {
        return Err(corrupt(
            path,
            0,
            format!("segment header says it starts at position {named}"),
        ));
    }
    Ok(())
}

/// Where a scan stopped short of its limit.
pub struct Bad {
    pub offset: u64,
    pub reason: String,
    /// False when the record is intact but out of sequence: never a torn write.
    pub in_sequence: bool,
}

/// What scanning part of a segment found.
pub struct SegmentScan {
    /// Last valid position (the position before the scan's start if it found none).
    pub last: u64,
    pub first_timestamp: Option<i64>,
    pub last_timestamp: Option<i64>,
    /// Offset after the last valid record.
    pub end: u64,
    /// Offset and header of the last valid record.
    pub last_record: Option<(u64, RecordHeader)>,
    /// Index entries for the records found, as `sampler` chose them.
    pub entries: Vec<IndexEntry>,
    pub bad: Option<Bad>,
}

/// Scans a whole segment, building its index, up to the first invalid record.
pub fn scan_segment(
    path: &Path,
    first: u64,
    len: u64,
    every: u64,
) -> Result<SegmentScan, LogError> {
    scan_records(
        path,
        SEGMENT_HEADER_LEN,
        first,
        len,
        &mut Sampler::after(every, None),
    )
}

/// Scans the records from `offset`, where position `next` belongs, up to `limit` or the first invalid
/// record, sampling index entries with `sampler` (which is left after the last valid record).
pub fn scan_records(
    path: &Path,
    offset: u64,
    next: u64,
    limit: u64,
    sampler: &mut Sampler,
) -> Result<SegmentScan, LogError> {
    let mut scanner = Scanner::open(path, offset, limit).map_err(io_error(path, "reading"))?;
    let mut scan = SegmentScan {
        last: next - 1,
        first_timestamp: None,
        last_timestamp: None,
        end: offset,
        last_record: None,
        entries: Vec::new(),
        bad: None,
    };
    loop {
        match scanner.next_record().map_err(io_error(path, "reading"))? {
            Step::End => return Ok(scan),
            Step::Bad { offset, reason } => {
                scan.bad = Some(Bad {
                    offset,
                    reason,
                    in_sequence: true,
                });
                return Ok(scan);
            }
            Step::Record(r) => {
                let expected = scan.last + 1;
                if r.header.position != expected {
                    let reason = format!(
                        "record has position {} where {expected} belongs",
                        r.header.position
                    );
                    scan.bad = Some(Bad {
                        offset: r.offset,
                        reason,
                        in_sequence: false,
                    });
                    return Ok(scan);
                }
                if sampler.sample(r.offset) {
                    scan.entries.push(IndexEntry {
                        position: expected,
                        timestamp: r.header.timestamp,
                        offset: r.offset,
                    });
                }
                scan.last = expected;
                scan.first_timestamp.get_or_insert(r.header.timestamp);
                scan.last_timestamp = Some(r.header.timestamp);
                scan.last_record = Some((r.offset, r.header));
                scan.end = scanner.offset();
            }
        }
    }
}

/// A sealed segment as found on disk.
pub struct Sealed {
    pub segment: Segment,
    /// Set when the index side file was missing or unusable and the index was rebuilt by a scan: why, and
    /// the index to save (by whoever may write).
    pub rebuilt: Option<(String, IndexFile)>,
}

/// Loads a sealed segment through its index side file, or scans it when the side file cannot be used.
/// Any damage is corruption: a segment is sealed only once everything in it is durable.
pub fn load_sealed(dir: &Path, first: u64, every: u64) -> Result<Sealed, LogError> {
    let path = dir.join(segment_name(first));
    let (len, header) = read_header(&path)?;
    check_header_names(
        &path,
        first,
        header.map_err(|p| corrupt(&path, 0, p.to_string()))?,
    )?;
    let (index, rebuilt) = match read_index_file(dir, first, len) {
        Ok(index) => (index, None),
        Err(why) => {
            let scan = scan_segment(&path, first, len, every)?;
            if let Some(bad) = scan.bad {
                return Err(corrupt(
                    &path,
                    bad.offset,
                    format!("{} (in a sealed segment)", bad.reason),
                ));
            }
            if scan.entries.is_empty() {
                return Err(corrupt(
                    &path,
                    SEGMENT_HEADER_LEN,
                    "sealed segment holds no record",
                ));
            }
            let index = IndexFile {
                segment_len: len,
                last_position: scan.last,
                last_timestamp: scan.last_timestamp.unwrap_or(0),
                entries: scan.entries,
            };
            (index.clone(), Some((why, index)))
        }
    };
    let segment = Segment {
        first,
        path,
        last: index.last_position,
        first_timestamp: index.entries[0].timestamp,
        last_timestamp: index.last_timestamp,
        durable_len: len,
        index: SparseIndex::from_entries(index.entries),
    };
    Ok(Sealed { segment, rebuilt })
}
