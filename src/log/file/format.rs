//! The bytes of a segment file: its header and the frame around each record. Pure functions, no I/O.
//!
//! All integers are little-endian.
//!
//! Segment header, 24 bytes: magic `WALYLOG\0` (8) | format version (u32) | position of the segment's
//! first record (u64) | CRC32C of the 20 bytes before it (u32).
//!
//! Record frame, a 28-byte header then the payload: payload length (u32) | CRC32C (u32) | position (u64) |
//! timestamp in µs since the Unix epoch (i64) | index within its group-commit batch (u32) | payload.
//! The CRC covers the other four header fields and the payload. The batch index (0 for a batch's first
//! record) lets recovery tell a torn last batch, which may be cut, from damage to records that a later,
//! intact batch proves were acknowledged, which must not be.

/// Magic bytes that open every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WALYLOG\0";
/// The version of the segment and index formats this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the segment header; the first record starts here.
pub const SEGMENT_HEADER_LEN: u64 = 24;
/// Length of a record's header.
pub const RECORD_HEADER_LEN: usize = 28;
/// The largest payload the format allows (the record size limit in the configuration may be lower).
/// Recovery treats a larger length as damage.
pub const MAX_PAYLOAD: u32 = 1 << 30;

/// Why a segment header is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProblem {
    Short(usize),
    BadMagic,
    BadChecksum,
    UnsupportedVersion(u32),
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderProblem::Short(n) => {
                write!(f, "segment header is {n} of {SEGMENT_HEADER_LEN} bytes")
            }
            HeaderProblem::BadMagic => f.write_str("not a waly log segment (bad magic)"),
            HeaderProblem::BadChecksum => f.write_str("segment header checksum mismatch"),
            HeaderProblem::UnsupportedVersion(v) => {
                write!(
                    f,
                    "segment format version {v} is not supported (this waly reads {FORMAT_VERSION})"
                )
            }
        }
    }
}

pub fn encode_segment_header(first_position: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_position.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The first position a segment header names.
pub fn decode_segment_header(buf: &[u8]) -> Result<u64, HeaderProblem> {
    if buf.len() < SEGMENT_HEADER_LEN as usize {
        return Err(HeaderProblem::Short(buf.len()));
    }
    if buf[0..8] != SEGMENT_MAGIC {
        return Err(HeaderProblem::BadMagic);
    }
    if crc32c::crc32c(&buf[0..20]) != u32_at(buf, 20) {
        return Err(HeaderProblem::BadChecksum);
    }
    let version = u32_at(buf, 8);
    if version != FORMAT_VERSION {
        return Err(HeaderProblem::UnsupportedVersion(version));
    }
    Ok(u64_at(buf, 12))
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub len: u32,
    pub crc: u32,
    pub position: u64,
    pub timestamp: i64,
    pub batch_index: u32,
}

impl RecordHeader {
    pub fn decode(buf: &[u8; RECORD_HEADER_LEN]) -> RecordHeader {
        RecordHeader {
            len: u32_at(buf, 0),
            crc: u32_at(buf, 4),
            position: u64_at(buf, 8),
            timestamp: u64_at(buf, 16) as i64,
            batch_index: u32_at(buf, 24),
        }
    }

    /// Header plus payload.
    pub fn frame_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.len)
    }

    /// The position of the first record of this record's group-commit batch.
    pub fn batch_first(&self) -> u64 {
        self.position.saturating_sub(u64::from(self.batch_index))
    }

    pub fn checksum_ok(&self, payload: &[u8]) -> bool {
        record_crc(
            self.len,
            self.position,
            self.timestamp,
            self.batch_index,
            payload,
        ) == self.crc
    }
}

fn record_crc(len: u32, position: u64, timestamp: i64, batch_index: u32, payload: &[u8]) -> u32 {
    let mut fields = [0u8; 24];
    fields[0..4].copy_from_slice(&len.to_le_bytes());
    fields[4..12].copy_from_slice(&position.to_le_bytes());
    fields[12..20].copy_from_slice(&timestamp.to_le_bytes());
    fields[20..24].copy_from_slice(&batch_index.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&fields), payload)
}

/// Appends one framed record to `out`. The payload must not exceed [`MAX_PAYLOAD`].
pub fn encode_record(
    out: &mut Vec<u8>,
    position: u64,
    timestamp: i64,
    batch_index: u32,
    payload: &[u8],
) {
    let len = u32::try_from(payload.len()).expect("payload length checked against MAX_PAYLOAD");
    let crc = record_crc(len, position, timestamp, batch_index, payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&timestamp.to_le_bytes());
    out.extend_from_slice(&batch_index.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The length of a framed record with a payload of `payload_len` bytes.
pub fn frame_len(payload_len: usize) -> u64 {
    RECORD_HEADER_LEN as u64 + payload_len as u64
}

pub(super) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

pub(super) fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_record_round_trip_and_checksum() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 42, -7, 3, b"hello");
        assert_eq!(buf.len() as u64, frame_len(5));
        let h = RecordHeader::decode(buf[..RECORD_HEADER_LEN].try_into().unwrap());
        assert_eq!(
            (
                h.len,
                h.position,
                h.timestamp,
                h.batch_index,
                h.batch_first()
            ),
            (5, 42, -7, 3, 39)
        );
        assert!(h.checksum_ok(b"hello"));
        assert!(!h.checksum_ok(b"hellO"));
        // Every header field is covered by the checksum.
        for at in [0, 8, 16, 24] {
            let mut bad = buf.clone();
            bad[at] ^= 1;
            let h = RecordHeader::decode(bad[..RECORD_HEADER_LEN].try_into().unwrap());
            assert!(!h.checksum_ok(&bad[RECORD_HEADER_LEN..]), "field at {at}");
        }
    }

    #[test]
    fn log_format_segment_header_checks() {
        let h = encode_segment_header(1234);
        assert_eq!(decode_segment_header(&h), Ok(1234));
        assert_eq!(
            decode_segment_header(&h[..10]),
            Err(HeaderProblem::Short(10))
        );
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(decode_segment_header(&bad), Err(HeaderProblem::BadMagic));
        let mut bad = h;
        bad[13] ^= 1;
        assert_eq!(decode_segment_header(&bad), Err(HeaderProblem::BadChecksum));
    }
}
