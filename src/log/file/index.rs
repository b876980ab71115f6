//! The sparse index of a segment: (position, timestamp, byte offset) of its first record and then of one
//! record every `index_every_bytes` bytes. Kept in memory for every segment; persisted, for sealed
//! segments only, in a side file `<first>.idx` so opening the log does not rescan them. A side file is a
//! cache: when it is missing or fails any check, recovery rebuilds it from the segment.
//!
//! Side file, little-endian: magic `WALYIDX\0` (8) | format version (u32) | segment's first position (u64)
//! | segment length in bytes (u64) | last position (u64) | last timestamp (i64) | entry count (u32) |
//! entries, each position (u64), timestamp (i64), offset (u64) | CRC32C of everything before it (u32).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::format::{FORMAT_VERSION, SEGMENT_HEADER_LEN, u32_at, u64_at};
use super::segment::{index_name, sync_dir};

const INDEX_MAGIC: [u8; 8] = *b"WALYIDX\0";
const FIXED_LEN: usize = 8 + 4 + 8 + 8 + 8 + 8 + 4;
const ENTRY_LEN: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub position: u64,
    pub timestamp: i64,
    pub offset: u64,
}

/// The in-memory index of one segment, sorted by position (and so by timestamp and offset).
#[derive(Debug, Clone, Default)]
pub struct SparseIndex {
    entries: Vec<IndexEntry>,
}

impl SparseIndex {
    pub fn from_entries(entries: Vec<IndexEntry>) -> SparseIndex {
        SparseIndex { entries }
    }

    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    pub fn extend(&mut self, more: impl IntoIterator<Item = IndexEntry>) {
        self.entries.extend(more);
    }

    /// Where to start scanning for `position`: the last entry at or before it.
    pub fn seek_position(&self, position: u64) -> Option<IndexEntry> {
        let k = self.entries.partition_point(|e| e.position <= position);
        k.checked_sub(1).map(|i| self.entries[i])
    }

    /// Where to start scanning for the first record stamped at or after `t`: the last entry stamped before
    /// `t` (records between it and the next entry may already qualify), or the first entry.
    pub fn seek_time(&self, t: i64) -> Option<IndexEntry> {
        let k = self.entries.partition_point(|e| e.timestamp < t);
        self.entries.get(k.saturating_sub(1)).copied()
    }
}

/// Decides which records get an index entry: a segment's first, then the first at least `every_bytes`
/// past the previous entry.
#[derive(Debug, Clone)]
pub struct Sampler {
    every_bytes: u64,
    next_at: Option<u64>,
}

impl Sampler {
    /// A sampler that continues after `last`, the segment's last entry so far (`None`: no entry yet).
    pub fn after(every_bytes: u64, last: Option<&IndexEntry>) -> Sampler {
        Sampler {
            every_bytes: every_bytes.max(1),
            next_at: last.map(|e| e.offset + every_bytes.max(1)),
        }
    }

    /// Whether the record at `offset` gets an entry.
    pub fn sample(&mut self, offset: u64) -> bool {
        if self.next_at.is_some_and(|at| offset < at) {
            return false;
        }
        self.next_at = Some(offset + self.every_bytes);
        true
    }
}

/// What a side file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    pub segment_len: u64,
    pub last_position: u64,
    pub last_timestamp: i64,
    pub entries: Vec<IndexEntry>,
}

/// Writes the side file of the segment starting at `first` durably: temporary file, fsync, rename, fsync
/// of the directory.
pub fn write_index_file(dir: &Path, first: u64, index: &IndexFile) -> io::Result<()> {
    let mut buf = Vec::with_capacity(FIXED_LEN + index.entries.len() * ENTRY_LEN + 4);
    buf.extend_from_slice(&INDEX_MAGIC);
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&first.to_le_bytes());
    buf.extend_from_slice(&index.segment_len.to_le_bytes());
    buf.extend_from_slice(&index.last_position.to_le_bytes());
    buf.extend_from_slice(&index.last_timestamp.to_le_bytes());
    let count = u32::try_from(index.entries.len())
        .map_err(|_| io::Error::other("too many index entries"))?;
    buf.extend_from_slice(&count.to_le_bytes());
    for e in &index.entries {
        buf.extend_from_slice(&e.position.to_le_bytes());
        buf.extend_from_slice(&e.timestamp.to_le_bytes());
        buf.extend_from_slice(&e.offset.to_le_bytes());
    }
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());

    let path = dir.join(index_name(first));
    let tmp = path.with_extension("idx.tmp");
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(&buf)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads and checks the side file of the segment starting at `first`, whose file is `segment_len` bytes
/// long now. `Err` says why it cannot be used (missing, damaged, stale).
pub fn read_index_file(dir: &Path, first: u64, segment_len: u64) -> Result<IndexFile, String> {
    let path = dir.join(index_name(first));
    let buf = match fs::read(&path) {
        Ok(buf) => buf,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err("index file missing".to_string());
        }
        Err(e) => return Err(format!("cannot read index file: {e}")),
    };
    if buf.len() < FIXED_LEN + 4 || buf[0..8] != INDEX_MAGIC {
        return Err("not an index file".to_string());
    }
    let body = buf.len() - 4;
    if crc32c::crc32c(&buf[..body]) != u32_at(&buf, body) {
        return Err("index file checksum mismatch".to_string());
    }
    if u32_at(&buf, 8) != FORMAT_VERSION {
        return Err(format!(
            "index format version {} is not supported",
            u32_at(&buf, 8)
        ));
    }
    if u64_at(&buf, 12) != first {
        return Err(format!(
            "index file is for a segment starting at {}",
            u64_at(&buf, 12)
        ));
    }
    let index = IndexFile {
        segment_len: u64_at(&buf, 20),
        last_position: u64_at(&buf, 28),
        last_timestamp: u64_at(&buf, 36) as i64,
        entries: Vec::new(),
    };
    if index.segment_len != segment_len {
        return Err(format!(
            "index covers {} bytes but the segment has {segment_len}",
            index.segment_len
        ));
    }
    let count = u32_at(&buf, 44) as usize;
    if FIXED_LEN + count * ENTRY_LEN != body {
        return Err("index file length does not match its entry count".to_string());
    }
    let entries: Vec<IndexEntry> = (0..count)
        .map(|i| {
            let at = FIXED_LEN + i * ENTRY_LEN;
            IndexEntry {
                position: u64_at(&buf, at),
                timestamp: u64_at(&buf, at + 8) as i64,
                offset: u64_at(&buf, at + 16),
            }
        })
        .collect();
    let first_ok = entries
        .first()
        .is_some_and(|e| e.position == first && e.offset == SEGMENT_HEADER_LEN);
    let sorted = entries.windows(2).all(|w| {
        w[0].position < w[1].position
            && w[0].timestamp <= w[1].timestamp
            && w[0].offset < w[1].offset
    });
    let last_ok = entries.last().is_some_and(|e| {
        e.position <= index.last_position
            && e.timestamp <= index.last_timestamp
            && e.offset < segment_len
    });
    if !(first_ok && sorted && last_ok) {
        return Err("index entries are inconsistent".to_string());
    }
    Ok(IndexFile { entries, ..index })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(position: u64, timestamp: i64, offset: u64) -> IndexEntry {
        IndexEntry {
            position,
            timestamp,
            offset,
        }
    }

    #[test]
    fn log_index_seeks() {
        let idx = SparseIndex::from_entries(vec![
            entry(10, 100, 24),
            entry(20, 100, 1000),
            entry(30, 300, 2000),
        ]);
        assert_eq!(idx.seek_position(10).unwrap().position, 10);
        assert_eq!(idx.seek_position(25).unwrap().position, 20);
        assert_eq!(idx.seek_position(99).unwrap().position, 30);
        assert_eq!(idx.seek_position(9), None);
        // Equal timestamps: the first record at or after t may sit before the first entry stamped t.
        assert_eq!(idx.seek_time(100).unwrap().position, 10);
        assert_eq!(idx.seek_time(200).unwrap().position, 20);
        assert_eq!(idx.seek_time(300).unwrap().position, 20);
        assert_eq!(idx.seek_time(0).unwrap().position, 10);
    }

    #[test]
    fn log_index_sampler_every_n_bytes() {
        let mut s = Sampler::after(100, None);
        let sampled: Vec<u64> = [24, 60, 123, 124, 200, 260]
            .into_iter()
            .filter(|&o| s.sample(o))
            .collect();
        assert_eq!(sampled, vec![24, 124, 260]);
        let mut s = Sampler::after(100, Some(&entry(1, 0, 124)));
        assert!(!s.sample(200));
        assert!(s.sample(224));
    }

    #[test]
    fn log_index_file_round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let file = IndexFile {
            segment_len: 5000,
            last_position: 40,
            last_timestamp: 400,
            entries: vec![entry(7, 100, SEGMENT_HEADER_LEN), entry(20, 200, 2000)],
        };
        write_index_file(dir.path(), 7, &file).unwrap();
        assert_eq!(read_index_file(dir.path(), 7, 5000), Ok(file.clone()));
        assert!(
            read_index_file(dir.path(), 7, 5001)
                .unwrap_err()
                .contains("covers")
        );
        assert!(
            read_index_file(dir.path(), 8, 5000)
                .unwrap_err()
                .contains("missing")
        );
        let path = dir.path().join(index_name(7));
        let mut bytes = fs::read(&path).unwrap();
        bytes[50] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        assert!(
            read_index_file(dir.path(), 7, 5000)
                .unwrap_err()
                .contains("checksum")
        );
    }
}
