//! Opening a log directory: find the segments, check them, load or rebuild their indexes, and cut a torn
//! or corrupt tail off the last segment.
//!
//! Only the last segment can end in a torn write: records are appended to it alone, and a segment is
//! sealed only after everything in it was made durable. So the last segment is scanned in full and
//! anything after its last valid record is cut (truncate, fsync) with a warning, unless an intact record
//! of a *later* group-commit batch follows the damage: that batch was written only after the damaged one
//! was durable and acknowledged, so the damage is corruption, and the log refuses to open. Sealed
//! segments are trusted through their index side file (checked against the segment's length) and scanned
//! only when it has to be rebuilt; any damage found in them refuses the open. Nothing here ever drops a
//! record that a later intact record proves was acknowledged.
//!
//! What is on disk is found by [`discover`](super::discover), which never writes; this module adds the
//! repairs, and only the writer (holding the lock) may run it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::discover::{
    Sealed, check_continuity, check_header_names, corrupt, io_error, list_segments, load_sealed,
    read_header, scan_segment,
};
use super::format::{
    HeaderProblem, MAX_PAYLOAD, RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN,
    encode_segment_header,
};
use super::index::{SparseIndex, write_index_file};
use super::segment::{Segment, create_segment, segment_name};
use crate::log::LogError;

/// What opening the log found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// The last durable position after recovery.
    pub end: u64,
    /// The tail cut off the last segment, if any.
    pub cut: Option<TailCut>,
    /// Segments whose index side file was missing or unusable and was rebuilt.
    pub indexes_rebuilt: Vec<PathBuf>,
}

/// A torn or corrupt tail removed at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    pub segment: PathBuf,
    /// Where the segment now ends.
    pub offset: u64,
    /// How many bytes were cut.
    pub bytes: u64,
    pub reason: String,
}

pub struct Recovered {
    pub segments: Vec<Segment>,
    /// The last segment, opened for appending.
    pub active: File,
    pub report: RecoveryReport,
}

pub fn recover(dir: &Path, index_every_bytes: u64) -> Result<Recovered, LogError> {
    remove_temporary_files(dir)?;
    let mut firsts = list_segments(dir)?;
    if firsts.is_empty() {
        create_segment(dir, 1)
            .map_err(|e| LogError::from_io("creating the first log segment", &e.error))?;
        firsts.push(1);
    }
    let mut report = RecoveryReport {
        segments: firsts.len(),
        ..RecoveryReport::default()
    };
    let (&last_first, sealed) = firsts.split_last().expect("at least one segment");
    let mut segments: Vec<Segment> = Vec::with_capacity(firsts.len());
    for &first in sealed {
        let segment = open_sealed(dir, first, index_every_bytes, &mut report)?;
        check_continuity(segments.last().map(|s| s.last), &segment)?;
        segments.push(segment);
    }
    let (segment, active) = open_last(dir, last_first, index_every_bytes, &mut report)?;
    check_continuity(segments.last().map(|s| s.last), &segment)?;
    report.end = segment.last;
    segments.push(segment);
    Ok(Recovered {
        segments,
        active,
        report,
    })
}

/// Removes index files a crash left half-written (the index they were replacing is still in place).
fn remove_temporary_files(dir: &Path) -> Result<(), LogError> {
    let cannot = |e: &io::Error| LogError::from_io(format!("listing {}", dir.display()), e);
    for entry in fs::read_dir(dir).map_err(|e| cannot(&e))? {
        let name = entry.map_err(|e| cannot(&e))?.file_name();
        if name.to_string_lossy().ends_with(".idx.tmp") {
            let _ = fs::remove_file(dir.join(&name));
        }
    }
    Ok(())
}

fn open_sealed(
    dir: &Path,
    first: u64,
    every: u64,
    report: &mut RecoveryReport,
) -> Result<Segment, LogError> {
    let Sealed { segment, rebuilt } = load_sealed(dir, first, every)?;
    if let Some((why, index)) = rebuilt {
        tracing::warn!(segment = %segment.path.display(), reason = %why, "rebuilt the segment's index");
        if let Err(e) = write_index_file(dir, first, &index) {
            tracing::warn!(segment = %segment.path.display(), error = %e, "cannot save the rebuilt index; it is kept in memory");
        }
        report.indexes_rebuilt.push(segment.path.clone());
    }
    Ok(segment)
}

fn open_last(
    dir: &Path,
    first: u64,
    every: u64,
    report: &mut RecoveryReport,
) -> Result<(Segment, File), LogError> {
    let path = dir.join(segment_name(first));
    let (len, header) = read_header(&path)?;
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io_error(&path, "opening"))?;
    match header {
        Ok(named) => check_header_names(&path, first, named)?,
        // A segment is created by writing its header and fsyncing it before any record goes in, so a
        // header cut short (or never written) with nothing after it is a torn creation: write it again.
        Err(problem)
            if len <= SEGMENT_HEADER_LEN
                && !matches!(problem, HeaderProblem::UnsupportedVersion(_)) =>
        {
            let reason = problem.to_string();
            file.set_len(0).map_err(io_error(&path, "truncating"))?;
            (&file)
                .write_all(&encode_segment_header(first))
                .map_err(io_error(&path, "writing"))?;
            file.sync_all().map_err(io_error(&path, "fsyncing"))?;
            tracing::warn!(segment = %path.display(), offset = 0, cut_bytes = len, reason = %reason,
                "rewrote the torn header of the last log segment");
            report.cut = Some(TailCut {
                segment: path.clone(),
                offset: 0,
                bytes: len,
                reason,
            });
        }
        Err(problem) => return Err(corrupt(&path, 0, problem.to_string())),
    }
    let len = len.max(SEGMENT_HEADER_LEN);
    let scan = scan_segment(&path, first, len, every)?;
    if let Some(bad) = &scan.bad {
        if bad.in_sequence {
            if let Some(at) = later_batch_after(&path, bad.offset, len, scan.last + 1)? {
                return Err(corrupt(
                    &path,
                    bad.offset,
                    format!(
                        "{}, but an intact later batch at offset {at} shows it was acknowledged",
                        bad.reason
                    ),
                ));
            }
        } else {
            return Err(corrupt(&path, bad.offset, bad.reason.clone()));
        }
        let cut_bytes = len - bad.offset;
        file.set_len(bad.offset)
            .map_err(io_error(&path, "truncating"))?;
        file.sync_all().map_err(io_error(&path, "fsyncing"))?;
        tracing::warn!(segment = %path.display(), offset = bad.offset, cut_bytes, reason = %bad.reason,
            "cut a torn or corrupt tail off the log");
        report.cut = Some(TailCut {
            segment: path.clone(),
            offset: bad.offset,
            bytes: cut_bytes,
            reason: bad.reason.clone(),
        });
    }
    let segment = Segment {
        first,
        path,
        last: scan.last,
        first_timestamp: scan.first_timestamp.unwrap_or(0),
        last_timestamp: scan.last_timestamp.unwrap_or(0),
        durable_len: scan.end,
        index: SparseIndex::from_entries(scan.entries),
    };
    Ok((segment, file))
}

/// Looks past damage at `offset` (where `position` belongs) for an intact record of a later batch, one
/// whose batch began after `position`. Returns its offset.
fn later_batch_after(
    path: &Path,
    offset: u64,
    len: u64,
    position: u64,
) -> Result<Option<u64>, LogError> {
    let mut file = File::open(path).map_err(io_error(path, "opening"))?;
    io::Seek::seek(&mut file, io::SeekFrom::Start(offset)).map_err(io_error(path, "reading"))?;
    let mut rest = Vec::new();
    file.take(len - offset)
        .read_to_end(&mut rest)
        .map_err(io_error(path, "reading"))?;
    let max_records = (rest.len() / RECORD_HEADER_LEN) as u64;
    for at in 1..rest.len().saturating_sub(RECORD_HEADER_LEN - 1) {
        let header = RecordHeader::decode(
            rest[at..at + RECORD_HEADER_LEN]
                .try_into()
                .expect("header length"),
        );
        let plausible = header.position > position
            && header.position <= position + max_records
            && header.batch_first() > position
            && header.len <= MAX_PAYLOAD
            && header.frame_len() <= (rest.len() - at) as u64;
        if plausible
            && header.checksum_ok(&rest[at + RECORD_HEADER_LEN..at + header.frame_len() as usize])
        {
            return Ok(Some(offset + at as u64));
        }
    }
    Ok(None)
}
