//! The read-only reader: it follows a live writer, opens while the writer holds the lock, stops before a
//! torn tail, notices a batch the writer cut off again, and never changes a byte in the directory.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::format::encode_record;
use super::tests::{append_n, files, payload, small_config};
use super::{FileLog, FileLogConfig, FileLogReader};
use crate::log::{Entry, Log, LogError, Position};

/// Every file in `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
}

fn frame(position: u64, timestamp: i64, batch_index: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_record(&mut buf, position, timestamp, batch_index, payload);
    buf
}

fn positions(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.position.0).collect()
}

#[tokio::test]
async fn log_reader_sees_records_a_live_writer_appends_after_it_opened() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), small_config(1024)).unwrap();
    append_n(&log, 1..=20).await;

    let reader = FileLog::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.dir(), dir.path());
    assert_eq!(reader.end().await.unwrap(), Position(20));
    assert_eq!(
        reader.read(Position(0), usize::MAX).await.unwrap(),
        log.read(Position(1), usize::MAX).await.unwrap()
    );

    // The writer rolls to new segments several times while the reader is open.
    let segments_before = files(dir.path(), "seg").len();
    append_n(&log, 21..=200).await;
    assert!(files(dir.path(), "seg").len() > segments_before + 3);
    assert_eq!(reader.end().await.unwrap(), Position(200));
    let all = reader.read(Position(1), usize::MAX).await.unwrap();
    assert_eq!(all, log.read(Position(1), usize::MAX).await.unwrap());
    assert_eq!(
        positions(&reader.read(Position(195), 10).await.unwrap()),
        vec![195, 196, 197, 198, 199, 200]
    );
    assert!(reader.read(Position(201), 10).await.unwrap().is_empty());
    for e in all.iter().step_by(7) {
        assert_eq!(
            reader.position_at(e.timestamp_micros).await.unwrap(),
            log.position_at(e.timestamp_micros).await.unwrap(),
            "position_at({})",
            e.timestamp_micros
        );
    }
    assert_eq!(reader.position_at(i64::MAX).await.unwrap(), None);

    // A second reader starting now, and the first one after more appends, agree with the writer.
    append_n(&log, 201..=230).await;
    let late = FileLog::open_read_only(dir.path()).unwrap();
    assert_eq!(late.end().await.unwrap(), Position(230));
    assert_eq!(
        late.read(Position(1), usize::MAX).await.unwrap(),
        reader.read(Position(1), usize::MAX).await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_reader_follows_concurrent_appends_without_ever_seeing_a_partial_record() {
    const N: u64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(FileLog::open(dir.path(), small_config(8 * 1024)).unwrap());
    let reader = FileLog::open_read_only(dir.path()).unwrap();
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in (t..N).step_by(4) {
                    log.append(Bytes::from(format!("item {i}"))).await.unwrap();
                }
            })
        })
        .collect();
    let follow = async {
        let mut seen = Vec::new();
        while (seen.len() as u64) < N {
            let got = reader
                .read(Position(seen.len() as u64 + 1), 64)
                .await
                .unwrap();
            seen.extend(got);
            tokio::task::yield_now().await;
        }
        seen
    };
    let seen = tokio::time::timeout(Duration::from_secs(30), follow)
        .await
        .expect("the reader keeps up");
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(seen, log.read(Position(1), usize::MAX).await.unwrap());
    assert_eq!(reader.end().await.unwrap(), Position(N));
    assert!(reader.proven_end().await.unwrap() < Position(N));
}

#[tokio::test]
async fn log_reader_opens_while_the_writer_holds_the_lock_and_takes_none() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(4096);
    let log = FileLog::open(dir.path(), config.clone()).unwrap();
    append_n(&log, 1..=3).await;
    let reader = FileLog::open_read_only(dir.path()).unwrap();
    let second = FileLog::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.end().await.unwrap(), Position(3));
    assert_eq!(second.end().await.unwrap(), Position(3));
    assert!(
        matches!(
            FileLog::open(dir.path(), config.clone()),
            Err(LogError::Unavailable { .. })
        ),
        "the writer still holds the lock"
    );
    drop(log);
    // Readers hold nothing: a writer starts while they are open, and they see what it appends.
    let log = FileLog::open(dir.path(), config).unwrap();
    append_n(&log, 4..=5).await;
    assert_eq!(
        positions(&reader.read(Position(4), 10).await.unwrap()),
        vec![4, 5]
    );
}

#[tokio::test]
async fn log_reader_stops_before_a_torn_tail_and_never_modifies_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), small_config(1024)).unwrap();
    let written = append_n(&log, 1..=60).await;
    drop(log);
    let segments = files(dir.path(), "seg");
    assert!(segments.len() >= 3);
    let last = segments.last().unwrap();
    // A torn record at the tail (the recovery of a writer would cut it), a sealed segment without its
    // index (the writer would rebuild and save it), and a leftover temporary index (it would remove it).
    let torn = frame(61, written[59].timestamp_micros, 0, b"never finished");
    append_bytes(last, &torn[..torn.len() - 5]);
    fs::remove_file(segments[0].with_extension("idx")).unwrap();
    fs::write(dir.path().join("00000000000000000001.idx.tmp"), b"half").unwrap();
    let before = snapshot(dir.path());

    let reader = FileLog::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.end().await.unwrap(), Position(60));
    assert_eq!(reader.read(Position(1), usize::MAX).await.unwrap(), written);
    assert_eq!(
        reader
            .position_at(written[0].timestamp_micros)
            .await
            .unwrap(),
        Some(Position(1))
    );
    assert_eq!(reader.read(Position(61), 1).await.unwrap(), vec![]);
    assert_eq!(
        snapshot(dir.path()),
        before,
        "the reader changed the directory"
    );

    // Once the rest of the record arrives (it was a write in progress after all), the reader sees it.
    append_bytes(last, &torn[torn.len() - 5..]);
    assert_eq!(reader.end().await.unwrap(), Position(61));
    assert_eq!(
        reader.read(Position(61), 1).await.unwrap()[0].payload,
        Bytes::from_static(b"never finished")
    );
}

#[tokio::test]
async fn log_reader_rereads_a_batch_the_writer_cut_off_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), FileLogConfig::default()).unwrap();
    let written = append_n(&log, 1..=5).await;
    drop(log);
    let segment = files(dir.path(), "seg").pop().unwrap();
    let reader = FileLog::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.end().await.unwrap(), Position(5));
    let len = fs::metadata(&segment).unwrap().len();
    let fifth_at = len - frame(5, 0, 0, &payload(5)).len() as u64;

    // A failed fsync: the writer truncates record 5 away, and the reader's end moves back.
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(fifth_at)
        .unwrap();
    assert_eq!(reader.end().await.unwrap(), Position(4));
    // The next batch takes position 5 again, with another record of another size.
    let t = written[4].timestamp_micros + 1;
    append_bytes(&segment, &frame(5, t, 0, b"the replacement"));
    assert_eq!(reader.end().await.unwrap(), Position(5));
    let fifth = reader.read(Position(5), 1).await.unwrap();
    assert_eq!(fifth[0].payload, Bytes::from_static(b"the replacement"));

    // Same again, but the replacement is written before the reader looks: it notices by the header.
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(fifth_at)
        .unwrap();
    append_bytes(
        &segment,
        &frame(5, t + 1, 0, b"a longer replacement record"),
    );
    append_bytes(&segment, &frame(6, t + 1, 1, b"and one more"));
    assert_eq!(
        positions(&reader.read(Position(1), usize::MAX).await.unwrap()),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(
        reader.read(Position(5), 1).await.unwrap()[0].payload,
        Bytes::from_static(b"a longer replacement record")
    );
}

#[tokio::test]
async fn log_reader_proven_end_lags_the_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), FileLogConfig::default()).unwrap();
    let written = append_n(&log, 1..=3).await;
    let reader = FileLog::open_read_only(dir.path()).unwrap();
    // One append at a time: each record is its own batch, and only the last is unproven.
    assert_eq!(reader.end().await.unwrap(), Position(3));
    assert_eq!(reader.proven_end().await.unwrap(), Position(2));
    drop(log);
    // A batch of three written after them: 3 is proven now, 4..=6 are not yet.
    let segment = files(dir.path(), "seg").pop().unwrap();
    let t = written[2].timestamp_micros;
    for (k, position) in (4..=6u64).enumerate() {
        append_bytes(&segment, &frame(position, t, k as u32, b"batched"));
    }
    assert_eq!(reader.end().await.unwrap(), Position(6));
    assert_eq!(reader.proven_end().await.unwrap(), Position(3));
}

#[tokio::test]
async fn log_reader_on_a_new_or_missing_log() {
    let dir = tempfile::tempdir().unwrap();
    let err = FileLog::open_read_only(dir.path())
        .err()
        .expect("no log here");
    assert!(err.to_string().contains("holds no waly log"), "{err}");
    let err = FileLog::open_read_only(dir.path().join("nope"))
        .err()
        .expect("no directory");
    assert!(matches!(err, LogError::Unavailable { .. }), "{err:?}");

    // A writer that took its lock but has not created a segment yet: an empty log, followed from there.
    fs::write(dir.path().join("LOCK"), b"").unwrap();
    let reader = FileLog::open_read_only(dir.path()).unwrap();
    assert_eq!(reader.end().await.unwrap(), Position(0));
    assert_eq!(reader.proven_end().await.unwrap(), Position(0));
    assert_eq!(reader.position_at(0).await.unwrap(), None);
    let log = FileLog::open(dir.path(), FileLogConfig::default()).unwrap();
    append_n(&log, 1..=2).await;
    assert_eq!(
        positions(&reader.read(Position(1), 10).await.unwrap()),
        vec![1, 2]
    );
}

#[tokio::test]
async fn log_reader_reports_damage_the_writer_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), small_config(1024)).unwrap();
    append_n(&log, 1..=60).await;
    drop(log);
    let segments = files(dir.path(), "seg");
    fs::remove_file(segments[0].with_extension("idx")).unwrap();
    let mut bytes = fs::read(&segments[0]).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    fs::write(&segments[0], bytes).unwrap();
    match FileLog::open_read_only(dir.path()).err() {
        Some(LogError::Corrupt {
            location, reason, ..
        }) => {
            assert_eq!(location, segments[0].display().to_string());
            assert!(reason.contains("sealed segment"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // A reader that opened before a segment went missing says the log changed under it.
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), small_config(1024)).unwrap();
    append_n(&log, 1..=60).await;
    drop(log);
    let reader: FileLogReader = FileLog::open_read_only(dir.path()).unwrap();
    fs::remove_file(&files(dir.path(), "seg")[1]).unwrap();
    let err = reader.end().await.unwrap_err();
    assert!(
        err.to_string().contains("changed under the reader"),
        "{err}"
    );
}
