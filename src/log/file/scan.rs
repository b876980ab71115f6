//! Sequential reading of the records of one segment file, checking each frame's length and checksum.
//! Used by recovery, index rebuilds and reads alike; it never writes. Positions are checked by callers,
//! which know what they expect.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use bytes::Bytes;

use super::format::{MAX_PAYLOAD, RECORD_HEADER_LEN, RecordHeader};

const READ_BUFFER: usize = 256 * 1024;

/// One record read from a segment.
#[derive(Debug)]
pub struct ScannedRecord {
    pub header: RecordHeader,
    /// Byte offset of the record's frame in the segment.
    pub offset: u64,
    pub payload: Bytes,
}

#[derive(Debug)]
pub enum Step {
    Record(ScannedRecord),
    /// The scan reached its limit exactly at a frame boundary.
    End,
    /// The bytes at `offset` are not a valid record.
    Bad {
        offset: u64,
        reason: String,
    },
}

/// Reads frames from `start` up to (excluding) `limit`.
pub struct Scanner {
    reader: BufReader<File>,
    offset: u64,
    limit: u64,
}

impl Scanner {
    pub fn open(path: &Path, start: u64, limit: u64) -> io::Result<Scanner> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(start))?;
        Ok(Scanner {
            reader: BufReader::with_capacity(READ_BUFFER, file),
            offset: start,
            limit,
        })
    }

    /// The offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn next_record(&mut self) -> io::Result<Step> {
        let offset = self.offset;
        let left = self.limit.saturating_sub(offset);
        if left == 0 {
            return Ok(Step::End);
        }
        if left < RECORD_HEADER_LEN as u64 {
            return Ok(Step::Bad {
                offset,
                reason: format!("short record header ({left} bytes)"),
            });
        }
        let mut raw = [0u8; RECORD_HEADER_LEN];
        self.reader.read_exact(&mut raw)?;
        let header = RecordHeader::decode(&raw);
        if header.len > MAX_PAYLOAD {
            return Ok(Step::Bad {
                offset,
                reason: format!("record length {} is beyond the format's limit", header.len),
            });
        }
        if header.frame_len() > left {
            return Ok(Step::Bad {
                offset,
                reason: format!(
                    "record of {} bytes runs past the end ({left} bytes left)",
                    header.frame_len()
                ),
            });
        }
        let mut payload = vec![0u8; header.len as usize];
        self.reader.read_exact(&mut payload)?;
        if !header.checksum_ok(&payload) {
            return Ok(Step::Bad {
                offset,
                reason: "record checksum mismatch".to_string(),
            });
        }
        self.offset += header.frame_len();
        Ok(Step::Record(ScannedRecord {
            header,
            offset,
            payload: Bytes::from(payload),
        }))
    }
}

/// The record header at `offset` of the file at `path`; `None` when the file ends before it does.
pub fn header_at(path: &Path, offset: u64) -> io::Result<Option<RecordHeader>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut raw = [0u8; RECORD_HEADER_LEN];
    match file.read_exact(&mut raw) {
        Ok(()) => Ok(Some(RecordHeader::decode(&raw))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}
