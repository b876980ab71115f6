//! A really full disk: the log lives on a 1 MiB tmpfs that a filler file fills up. Needs root (or
//! CAP_SYS_ADMIN) to mount; where mounting is impossible the test says so and passes without checking,
//! and `error.rs` still tests the ENOSPC/EDQUOT mapping on its own.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::Bytes;

use super::tests::files;
use super::{FileLog, FileLogConfig};
use crate::log::{Log, LogError, Position};

/// A tmpfs mounted on a temporary directory, unmounted (and the directory removed) on drop.
struct Tmpfs {
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "waly-test"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Tmpfs { dir: Some(dir) })
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("mounted").path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let unmount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(dir.path())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !unmount(false) && !unmount(true) {
            eprintln!(
                "could not unmount the test tmpfs at {}",
                dir.path().display()
            );
        }
    }
}

/// Writes a file until the file system is full.
fn fill(path: &Path) -> PathBuf {
    let mut file = File::create(path).unwrap();
    let chunk = vec![0xAAu8; 64 * 1024];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => continue,
            Err(e) if e.kind() == ErrorKind::StorageFull => return path.to_path_buf(),
            Err(e) => panic!("filling the disk failed otherwise: {e}"),
        }
    }
}

fn record(i: u64) -> Bytes {
    Bytes::from(format!("{i:0>1000}"))
}

async fn assert_log_of(log: &FileLog, n: u64) {
    let all = log.read(Position(1), usize::MAX).await.unwrap();
    assert_eq!(all.len() as u64, n);
    assert!(
        all.iter()
            .enumerate()
            .all(|(k, e)| e.payload == record(k as u64 + 1))
    );
}

#[tokio::test]
async fn log_full_disk_fails_appends_cleanly_and_recovers_when_space_returns() {
    let Some(tmpfs) = Tmpfs::mount("1m") else {
        eprintln!(
            "SKIPPED log_full_disk test: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)"
        );
        return;
    };
    let dir = tmpfs.path().join("log");
    // 1000-byte payloads make 1028-byte frames: 15 records per 16 KiB segment.
    let config = FileLogConfig {
        segment_bytes: 16 * 1024,
        index_every_bytes: 4096,
        ..FileLogConfig::default()
    };
    let log = FileLog::open(&dir, config.clone()).unwrap();
    for i in 1..=20 {
        assert_eq!(log.append(record(i)).await.unwrap().position, Position(i));
    }
    let active = files(&dir, "seg").pop().unwrap();
    let durable_len = fs::metadata(&active).unwrap().len();

    // Full while writing records: the batch fails with Full and is cut back; nothing is in doubt.
    let filler = fill(&tmpfs.path().join("filler"));
    let err = log
        .append(Bytes::from(vec![7u8; 32 * 1024]))
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::Full { .. }), "{err:?}");
    assert_eq!(err.sqlstate().0, "53100");
    assert!(!err.is_in_doubt());
    let concurrent: Vec<_> = (0..8)
        .map(|_| log.append(Bytes::from(vec![8u8; 32 * 1024])))
        .collect();
    for result in futures_util::future::join_all(concurrent).await {
        assert!(matches!(result, Err(LogError::Full { .. })), "{result:?}");
    }
    assert_eq!(
        fs::metadata(&active).unwrap().len(),
        durable_len,
        "the failed batches were cut back"
    );
    assert_eq!(log.end(), Position(20));
    assert_eq!(log.stats().failed_appends, 9);
    // Reads keep working on a full disk.
    assert_log_of(&log, 20).await;
    assert_eq!(log.position_at(0).await.unwrap(), Some(Position(1)));

    // Space returns: appends work again and positions stay dense.
    fs::remove_file(&filler).unwrap();
    for i in 21..=30 {
        assert_eq!(log.append(record(i)).await.unwrap().position, Position(i));
    }

    // Full while rolling to a new segment: the half-made segment is removed, the batch fails with Full.
    let segments = files(&dir, "seg");
    let filler = fill(&filler);
    let err = log.append(record(31)).await.unwrap_err();
    assert!(matches!(err, LogError::Full { .. }), "{err:?}");
    assert_eq!(
        files(&dir, "seg"),
        segments,
        "no half-made segment is left behind"
    );
    fs::remove_file(&filler).unwrap();
    assert_eq!(log.append(record(31)).await.unwrap().position, Position(31));
    assert_eq!(files(&dir, "seg").len(), segments.len() + 1);
    assert_log_of(&log, 31).await;
    drop(log);

    let log = FileLog::open(&dir, config).unwrap();
    assert_eq!(log.recovery_report().cut, None);
    assert_eq!(log.verify().await.unwrap(), 31);
    assert_log_of(&log, 31).await;
}
