//! Behaviour of the file log through the `Log` trait: round trips, rolls, reopen, group commit, look-ups.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{FileLog, FileLogConfig};
use crate::log::{Entry, Log, LogError, Position};

pub(super) fn small_config(segment_bytes: u64) -> FileLogConfig {
    FileLogConfig {
        segment_bytes,
        index_every_bytes: 256,
        ..FileLogConfig::default()
    }
}

pub(super) fn payload(i: u64) -> Bytes {
    Bytes::from(format!("record {i} {}", "x".repeat((i % 37) as usize)))
}

pub(super) fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}

pub(super) async fn append_n(log: &FileLog, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    let mut out = Vec::new();
    for i in range {
        out.push(log.append(payload(i)).await.unwrap());
    }
    out
}

async fn assert_reads_all(log: &FileLog, n: u64) {
    let all = log.read(Position(1), usize::MAX).await.unwrap();
    assert_eq!(all.len() as u64, n);
    for (k, e) in all.iter().enumerate() {
        assert_eq!(e.position, Position(k as u64 + 1));
        assert_eq!(
            e.payload,
            payload(k as u64 + 1),
            "payload at {}",
            e.position
        );
    }
    assert!(
        all.windows(2)
            .all(|w| w[0].timestamp_micros <= w[1].timestamp_micros)
    );
}

#[tokio::test]
async fn log_file_round_trip_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), small_config(1024)).unwrap();
    assert_eq!(log.end(), Position(0));
    let appended = append_n(&log, 1..=200).await;
    let positions: Vec<u64> = appended.iter().map(|e| e.position.0).collect();
    assert_eq!(
        positions,
        (1..=200).collect::<Vec<_>>(),
        "dense and ordered"
    );
    assert_eq!(log.end(), Position(200));
    assert!(files(dir.path(), "seg").len() > 5, "rolled several times");
    assert_eq!(
        files(dir.path(), "idx").len(),
        files(dir.path(), "seg").len() - 1,
        "sealed segments have an index"
    );

    assert_reads_all(&log, 200).await;
    let read: Vec<Entry> = log.read(Position(1), usize::MAX).await.unwrap();
    assert_eq!(read, appended);
    // Small batches from every starting point cross segment and index boundaries.
    for from in 1..=200u64 {
        let batch = log.read(Position(from), 7).await.unwrap();
        let want: Vec<u64> = (from..=200.min(from + 6)).collect();
        assert_eq!(batch.iter().map(|e| e.position.0).collect::<Vec<_>>(), want);
        assert_eq!(batch[0].payload, payload(from));
    }
    assert!(log.read(Position(201), 10).await.unwrap().is_empty());
    assert!(log.read(Position(5), 0).await.unwrap().is_empty());
    assert_eq!(
        log.read(Position(0), 2).await.unwrap()[0].position,
        Position(1)
    );

    let stats = log.stats();
    assert_eq!(
        (stats.appends, stats.batches, stats.failed_appends),
        (200, 200, 0),
        "sequential appends: one fsync each"
    );
    assert_eq!(log.verify().await.unwrap(), 200);
}

#[tokio::test]
async fn log_file_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), small_config(2048)).unwrap();
    let before = append_n(&log, 1..=120).await;
    drop(log);

    let log = FileLog::open(dir.path(), small_config(2048)).unwrap();
    let report = log.recovery_report();
    assert_eq!(
        (report.end, report.cut.clone(), report.indexes_rebuilt.len()),
        (120, None, 0)
    );
    assert_eq!(log.end(), Position(120));
    assert_eq!(log.read(Position(1), usize::MAX).await.unwrap(), before);
    let next = log.append(payload(121)).await.unwrap();
    assert_eq!(next.position, Position(121));
    assert!(next.timestamp_micros >= before.last().unwrap().timestamp_micros);
    append_n(&log, 122..=150).await;
    drop(log);

    let log = FileLog::open(dir.path(), small_config(2048)).unwrap();
    assert_reads_all(&log, 150).await;
    assert_eq!(log.verify().await.unwrap(), 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_file_concurrent_appends_are_group_committed() {
    const TASKS: u64 = 64;
    const EACH: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(FileLog::open(dir.path(), small_config(64 * 1024)).unwrap());

    // A reader follows the durable end while the appends run.
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut next = 1;
            while next <= TASKS * EACH {
                for e in log.read(Position(next), 500).await.unwrap() {
                    assert_eq!(e.position, Position(next));
                    assert!(e.payload.starts_with(b"task "));
                    next += 1;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..EACH {
                let e = log
                    .append(Bytes::from(format!("task {t} item {i}")))
                    .await
                    .unwrap();
                assert!(e.position <= log.end(), "acknowledged only once durable");
                mine.push(e.position.0);
            }
            mine
        }));
    }
    let mut owner = HashMap::new();
    for (t, task) in tasks.into_iter().enumerate() {
        let mine = task.await.unwrap();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "a task's appends are ordered"
        );
        for (i, p) in mine.into_iter().enumerate() {
            assert!(
                owner.insert(p, format!("task {t} item {i}")).is_none(),
                "position {p} given twice"
            );
        }
    }
    tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.len() as u64, TASKS * EACH);
    assert_eq!(log.end(), Position(TASKS * EACH));

    let stats = log.stats();
    assert_eq!(stats.appends, TASKS * EACH);
    assert!(
        stats.batches < stats.appends,
        "group commit shares fsyncs: {stats:?}"
    );
    eprintln!(
        "{} appends in {} fsyncs ({:.1} per fsync)",
        stats.appends,
        stats.batches,
        stats.appends_per_batch()
    );

    drop(Arc::into_inner(log).expect("last handle"));
    let log = FileLog::open(dir.path(), small_config(64 * 1024)).unwrap();
    for e in log.read(Position(1), usize::MAX).await.unwrap() {
        assert_eq!(e.payload, owner[&e.position.0].as_bytes());
    }
    assert_eq!(log.verify().await.unwrap(), TASKS * EACH);
}

#[tokio::test]
async fn log_file_position_at_finds_the_first_record_at_or_after_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), small_config(2048)).unwrap();
    assert_eq!(log.position_at(0).await.unwrap(), None, "empty log");
    let mut entries = Vec::new();
    for i in 1..=90 {
        entries.push(log.append(payload(i)).await.unwrap());
        if i % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let expected = |t: i64| {
        entries
            .iter()
            .find(|e| e.timestamp_micros >= t)
            .map(|e| e.position)
    };
    let mut probes = vec![0, i64::MAX];
    for e in &entries {
        probes.extend([
            e.timestamp_micros - 1,
            e.timestamp_micros,
            e.timestamp_micros + 1,
        ]);
    }
    for t in probes {
        assert_eq!(log.position_at(t).await.unwrap(), expected(t), "t = {t}");
    }
    assert_eq!(log.position_at(0).await.unwrap(), Some(Position(1)));
    assert_eq!(log.position_at(i64::MAX).await.unwrap(), None);

    // After a reopen the indexes come from their side files and give the same answers.
    drop(log);
    let log = FileLog::open(dir.path(), small_config(2048)).unwrap();
    for e in &entries {
        assert_eq!(
            log.position_at(e.timestamp_micros).await.unwrap(),
            expected(e.timestamp_micros)
        );
    }
}

#[tokio::test]
async fn log_file_index_is_rebuilt_when_missing_or_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), small_config(1024)).unwrap();
    let entries = append_n(&log, 1..=100).await;
    drop(log);
    let indexes = files(dir.path(), "idx");
    assert!(indexes.len() >= 3);
    std::fs::remove_file(&indexes[0]).unwrap();
    let mut damaged = std::fs::read(&indexes[1]).unwrap();
    let n = damaged.len();
    damaged[n - 10] ^= 0x55;
    std::fs::write(&indexes[1], damaged).unwrap();

    let log = FileLog::open(dir.path(), small_config(1024)).unwrap();
    let rebuilt: Vec<PathBuf> = log.recovery_report().indexes_rebuilt.clone();
    assert_eq!(
        rebuilt,
        vec![
            indexes[0].with_extension("seg"),
            indexes[1].with_extension("seg")
        ]
    );
    assert!(indexes[0].exists(), "the rebuilt index was saved again");
    assert_reads_all(&log, 100).await;
    for e in &entries {
        let first_at = entries
            .iter()
            .find(|x| x.timestamp_micros >= e.timestamp_micros)
            .map(|x| x.position);
        assert_eq!(log.position_at(e.timestamp_micros).await.unwrap(), first_at);
    }
    drop(log);
    let log = FileLog::open(dir.path(), small_config(1024)).unwrap();
    assert!(
        log.recovery_report().indexes_rebuilt.is_empty(),
        "saved indexes are used at the next open"
    );
}

#[tokio::test]
async fn log_file_refuses_oversized_records_and_second_opener() {
    let dir = tempfile::tempdir().unwrap();
    let config = FileLogConfig {
        max_record_bytes: 100,
        ..small_config(4096)
    };
    let log = FileLog::open(dir.path(), config.clone()).unwrap();
    let err = log.append(Bytes::from(vec![0u8; 101])).await.unwrap_err();
    assert_eq!(
        err,
        LogError::TooLarge {
            size: 101,
            max: 100
        }
    );
    assert_eq!(err.sqlstate().0, "54000");
    assert_eq!(
        log.append(Bytes::from(vec![1u8; 100]))
            .await
            .unwrap()
            .position,
        Position(1)
    );

    match FileLog::open(dir.path(), config.clone()) {
        Err(LogError::Unavailable { detail }) => {
            assert!(detail.contains("another process"), "{detail}")
        }
        other => panic!("a second open must be refused, got {:?}", other.map(|_| ())),
    }
    drop(log);
    assert_eq!(
        FileLog::open(dir.path(), config).unwrap().end(),
        Position(1)
    );
}

#[tokio::test]
async fn log_file_dir_in_data_dir() {
    let data = tempfile::tempdir().unwrap();
    let dir = FileLog::dir_in(data.path());
    let log = FileLog::open(&dir, FileLogConfig::default()).unwrap();
    assert_eq!(log.dir(), data.path().join("log"));
    assert_eq!(
        files(&dir, "seg"),
        vec![dir.join("00000000000000000001.seg")]
    );
}
