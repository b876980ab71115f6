//! Segment files: their names, their creation, and what is kept in memory about each.
//!
//! A segment is named by the position of its first record, zero-padded to 20 digits so names sort in
//! position order: `00000000000000000001.seg`, with its index side file `00000000000000000001.idx`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::format::encode_segment_header;
use super::index::SparseIndex;

pub fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

pub fn index_name(first: u64) -> String {
    format!("{first:020}.idx")
}

/// The first position a segment file name stands for.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&first| first > 0)
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Why a new segment could not be created. `leftover` is set when the half-made file could not be removed
/// either, which leaves the directory in a state the log must not build on.
#[derive(Debug)]
pub struct CreateError {
    pub error: io::Error,
    pub leftover: Option<io::Error>,
}

/// Creates the segment starting at `first`, writes its header and makes file and directory entry durable.
/// Returns it opened for appending. On failure the half-made file is removed again.
pub fn create_segment(dir: &Path, first: u64) -> Result<File, CreateError> {
    let path = dir.join(segment_name(first));
    let mut created = false;
    let result = (|| {
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)?;
        created = true;
        file.write_all(&encode_segment_header(first))?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(file)
    })();
    result.map_err(|error| {
        let leftover = if created {
            fs::remove_file(&path).and_then(|()| sync_dir(dir)).err()
        } else {
            None
        };
        CreateError { error, leftover }
    })
}

/// What the log knows about one segment. Records `first..=last` live in bytes `..durable_len` of `path`.
#[derive(Debug, Clone)]
pub struct Segment {
    pub first: u64,
    pub path: PathBuf,
    /// The last durable position in the segment; `first - 1` while it holds no record.
    pub last: u64,
    pub first_timestamp: i64,
    pub last_timestamp: i64,
    /// Bytes from the start of the file to the end of the last durable record.
    pub durable_len: u64,
    pub index: SparseIndex,
}

impl Segment {
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }
}

/// The segments of one log directory in position order, as far as their owner knows them: the writer's
/// table (published after each fsync) or a read-only reader's (re-discovered from the files). Reads go
/// through it alone, so both share one reading code. The lock is held only to look up or update entries,
/// never across I/O.
pub struct SegmentTable {
    pub dir: PathBuf,
    segments: RwLock<Vec<Segment>>,
}

impl SegmentTable {
    pub fn new(dir: PathBuf, segments: Vec<Segment>) -> SegmentTable {
        SegmentTable {
            dir,
            segments: RwLock::new(segments),
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Vec<Segment>> {
        self.segments.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Vec<Segment>> {
        self.segments.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_segment_names_sort_by_position() {
        assert_eq!(segment_name(1), "00000000000000000001.seg");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("00000000000000000001.idx"), None);
        assert_eq!(parse_segment_name("1.seg"), None);
        assert_eq!(parse_segment_name(&segment_name(0)), None);
        assert!(segment_name(9) < segment_name(10));
    }
}
