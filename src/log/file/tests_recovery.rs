//! Recovery at open: torn and corrupt tails are cut exactly; damage that cannot be a torn write refuses
//! the open.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, encode_record, encode_segment_header};
use super::tests::{append_n, files, payload, small_config};
use super::{FileLog, FileLogConfig};
use crate::log::{Log, LogError, Position};

const PAYLOAD: usize = 100;
const FRAME: u64 = (RECORD_HEADER_LEN + PAYLOAD) as u64;

fn fixed(i: u64) -> Bytes {
    Bytes::from(format!("{i:0>width$}", width = PAYLOAD))
}

/// Offset of record `i` in a segment starting at `first` whose records all carry `PAYLOAD` bytes.
fn offset_of(first: u64, i: u64) -> u64 {
    SEGMENT_HEADER_LEN + (i - first) * FRAME
}

/// A one-segment log of `n` fixed-size records, each its own batch, closed again.
async fn log_of(dir: &Path, n: u64) -> PathBuf {
    let log = FileLog::open(dir, FileLogConfig::default()).unwrap();
    for i in 1..=n {
        log.append(fixed(i)).await.unwrap();
    }
    drop(log);
    let segments = files(dir, "seg");
    assert_eq!(segments.len(), 1);
    segments[0].clone()
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

fn corrupt_err(result: Result<FileLog, LogError>) -> (String, u64, String) {
    match result {
        Err(LogError::Corrupt {
            location,
            offset,
            reason,
        }) => (location, offset, reason),
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("expected the open to be refused"),
    }
}

async fn assert_fixed_records(log: &FileLog, n: u64) {
    let all = log.read(Position(1), usize::MAX).await.unwrap();
    assert_eq!(all.len() as u64, n);
    assert!(
        all.iter()
            .enumerate()
            .all(|(k, e)| e.position.0 == k as u64 + 1 && e.payload == fixed(k as u64 + 1))
    );
}

#[tokio::test]
async fn log_recovery_cuts_trailing_garbage_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let segment = log_of(dir.path(), 10).await;
    let clean_len = fs::metadata(&segment).unwrap().len();
    assert_eq!(clean_len, offset_of(1, 11));
    let garbage: Vec<u8> = (0..37u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&garbage)
        .unwrap();

    let log = FileLog::open(dir.path(), FileLogConfig::default()).unwrap();
    let cut = log.recovery_report().cut.clone().expect("a cut");
    assert_eq!(
        (cut.segment.clone(), cut.offset, cut.bytes),
        (segment.clone(), clean_len, 37)
    );
    assert_eq!(fs::metadata(&segment).unwrap().len(), clean_len);
    assert_eq!(log.end(), Position(10));
    assert_fixed_records(&log, 10).await;
    assert_eq!(log.append(fixed(11)).await.unwrap().position, Position(11));
    drop(log);
    let log = FileLog::open(dir.path(), FileLogConfig::default()).unwrap();
    assert_eq!(log.recovery_report().cut, None, "nothing left to cut");
    assert_fixed_records(&log, 11).await;
}

#[tokio::test]
async fn log_recovery_cuts_a_record_torn_mid_way() {
    let dir = tempfile::tempdir().unwrap();
    let segment = log_of(dir.path(), 10).await;
    let len = fs::metadata(&segment).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 5)
        .unwrap();

    let log = FileLog::open(dir.path(), FileLogConfig::default()).unwrap();
    let cut = log.recovery_report().cut.clone().expect("a cut");
    assert_eq!((cut.offset, cut.bytes), (offset_of(1, 10), FRAME - 5));
    assert!(cut.reason.contains("runs past the end"), "{}", cut.reason);
    assert_eq!(log.end(), Position(9));
    assert_fixed_records(&log, 9).await;
    assert_eq!(
        log.append(fixed(10)).await.unwrap().position,
        Position(10),
        "the cut position is given again"
    );
}

#[tokio::test]
async fn log_recovery_cuts_a_short_header_at_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let segment = log_of(dir.path(), 3).await;
    OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&[1, 2, 3])
        .unwrap();
    let log = FileLog::open(dir.path(), FileLogConfig::default()).unwrap();
    let cut = log.recovery_report().cut.clone().expect("a cut");
    assert_eq!((cut.offset, cut.bytes), (offset_of(1, 4), 3));
    assert_fixed_records(&log, 3).await;
}

#[tokio::test]
async fn log_recovery_cuts_a_tail_record_with_a_bad_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let segment = log_of(dir.path(), 10).await;
    flip_byte(&segment, offset_of(1, 10) + RECORD_HEADER_LEN as u64 + 50);

    let log = FileLog::open(dir.path(), FileLogConfig::default()).unwrap();
    let cut = log.recovery_report().cut.clone().expect("a cut");
    assert_eq!((cut.offset, cut.bytes), (offset_of(1, 10), FRAME));
    assert!(cut.reason.contains("checksum"), "{}", cut.reason);
    assert_fixed_records(&log, 9).await;
}

#[tokio::test]
async fn log_recovery_refuses_damage_that_a_later_batch_proves_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let segment = log_of(dir.path(), 10).await;
    let len = fs::metadata(&segment).unwrap().len();
    flip_byte(&segment, offset_of(1, 5) + RECORD_HEADER_LEN as u64 + 7);

    let (location, offset, reason) =
        corrupt_err(FileLog::open(dir.path(), FileLogConfig::default()));
    assert_eq!(
        (location, offset),
        (segment.display().to_string(), offset_of(1, 5))
    );
    assert!(reason.contains("later batch"), "{reason}");
    assert_eq!(
        fs::metadata(&segment).unwrap().len(),
        len,
        "nothing was cut"
    );
}

#[tokio::test]
async fn log_recovery_cuts_a_torn_batch_even_when_later_records_of_it_survived() {
    // Written by hand: batch A = [1], batch B = [2, 3, 4]; record 2 is damaged, 3 and 4 are intact, as when
    // the disk persisted some pages of the last batch and not others before a crash.
    let dir = tempfile::tempdir().unwrap();
    let segment = dir.path().join("00000000000000000001.seg");
    let mut bytes = encode_segment_header(1).to_vec();
    encode_record(&mut bytes, 1, 10, 0, &fixed(1));
    for (k, position) in (2..=4u64).enumerate() {
        encode_record(&mut bytes, position, 20, k as u32, &fixed(position));
    }
    bytes[(offset_of(1, 2) + RECORD_HEADER_LEN as u64) as usize] ^= 1;
    fs::write(&segment, &bytes).unwrap();

    let log = FileLog::open(dir.path(), FileLogConfig::default()).unwrap();
    let cut = log.recovery_report().cut.clone().expect("a cut");
    assert_eq!((cut.offset, cut.bytes), (offset_of(1, 2), 3 * FRAME));
    assert_eq!(log.end(), Position(1));
    assert_fixed_records(&log, 1).await;
}

#[tokio::test]
async fn log_recovery_refuses_an_intact_record_out_of_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let segment = dir.path().join("00000000000000000001.seg");
    let mut bytes = encode_segment_header(1).to_vec();
    encode_record(&mut bytes, 1, 10, 0, &fixed(1));
    encode_record(&mut bytes, 3, 10, 0, &fixed(3));
    fs::write(&segment, &bytes).unwrap();
    let (_, offset, reason) = corrupt_err(FileLog::open(dir.path(), FileLogConfig::default()));
    assert_eq!(offset, offset_of(1, 2));
    assert!(reason.contains("position 3 where 2 belongs"), "{reason}");
}

#[tokio::test]
async fn log_recovery_refuses_corruption_in_an_older_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), small_config(1024)).unwrap();
    append_n(&log, 1..=60).await;
    drop(log);
    let segments = files(dir.path(), "seg");
    assert!(segments.len() >= 3);
    // Damage the third record of the first segment.
    let third = SEGMENT_HEADER_LEN
        + (RECORD_HEADER_LEN + payload(1).len()) as u64
        + (RECORD_HEADER_LEN + payload(2).len()) as u64;
    flip_byte(&segments[0], third + RECORD_HEADER_LEN as u64 + 2);

    // Its index is intact, so opening trusts it; reading the damaged record and verify() report it.
    let log = FileLog::open(dir.path(), small_config(1024)).unwrap();
    match log.read(Position(1), 10).await {
        Err(LogError::Corrupt {
            location, offset, ..
        }) => {
            assert_eq!(
                (location, offset),
                (segments[0].display().to_string(), third)
            )
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(log.verify().await, Err(LogError::Corrupt { offset, .. }) if offset == third));
    let second: u64 = segments[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let rest = log.read(Position(second), usize::MAX).await.unwrap();
    assert_eq!(
        (rest.len() as u64, rest[0].payload.clone()),
        (61 - second, payload(second)),
        "later segments stay readable"
    );
    drop(log);

    // Without its index, opening scans the segment and refuses, naming the file and offset.
    fs::remove_file(segments[0].with_extension("idx")).unwrap();
    let (location, offset, reason) = corrupt_err(FileLog::open(dir.path(), small_config(1024)));
    assert_eq!(
        (location, offset),
        (segments[0].display().to_string(), third)
    );
    assert!(reason.contains("sealed segment"), "{reason}");
}

#[tokio::test]
async fn log_recovery_refuses_a_missing_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), small_config(1024)).unwrap();
    append_n(&log, 1..=60).await;
    drop(log);
    let segments = files(dir.path(), "seg");
    fs::remove_file(&segments[1]).unwrap();
    let (location, _, reason) = corrupt_err(FileLog::open(dir.path(), small_config(1024)));
    assert_eq!(location, segments[2].display().to_string());
    assert!(reason.contains("ends at"), "{reason}");
}

#[tokio::test]
async fn log_recovery_rewrites_a_torn_segment_header() {
    let dir = tempfile::tempdir().unwrap();
    let segment = log_of(dir.path(), 4).await;
    drop(segment);
    // A roll that crashed while writing the new segment's header.
    let torn = dir.path().join("00000000000000000005.seg");
    fs::write(&torn, &encode_segment_header(5)[..10]).unwrap();

    let log = FileLog::open(dir.path(), FileLogConfig::default()).unwrap();
    let cut = log.recovery_report().cut.clone().expect("a cut");
    assert_eq!(
        (cut.segment.clone(), cut.offset, cut.bytes),
        (torn.clone(), 0, 10)
    );
    assert_eq!(log.end(), Position(4));
    assert_eq!(log.append(fixed(5)).await.unwrap().position, Position(5));
    assert_eq!(
        fs::metadata(&torn).unwrap().len(),
        offset_of(5, 6),
        "the record went into the repaired segment"
    );
    assert_fixed_records(&log, 5).await;
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn log_recovery_warns_with_segment_offset_and_bytes_cut() {
    let dir = tempfile::tempdir().unwrap();
    let segment = log_of(dir.path(), 2).await;
    OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&[0u8; 29])
        .unwrap();

    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let log = tracing::subscriber::with_default(subscriber, || {
        FileLog::open(dir.path(), FileLogConfig::default())
    })
    .unwrap();
    let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = out
        .lines()
        .find(|l| l.contains("cut a torn or corrupt tail"))
        .unwrap_or_else(|| panic!("no warning in {out}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&segment.display().to_string()), "{line}");
    assert!(
        line.contains(&format!("offset={}", offset_of(1, 3))),
        "{line}"
    );
    assert!(line.contains("cut_bytes=29"), "{line}");
    assert_eq!(log.end(), Position(2));
}
