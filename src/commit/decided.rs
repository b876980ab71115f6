//! `<data_dir>/decided.json`: per log, a position at or below which every direct commit of this data
//! directory's writers is decided, so recovery at the next start reads the log only after it.
//!
//! The file is rewritten whole (temporary file, fsync, rename) by recovery passes, and an entry is
//! added, durably, before a log's first direct commit. A missing entry means "read from the start": a
//! stale one only costs a longer read. This module owns the file and nothing else.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The persisted positions, by log key ([`crate::log::LogRouter::log_key`]).
pub struct DecidedFile {
    path: PathBuf,
    positions: Mutex<BTreeMap<String, u64>>,
}

impl DecidedFile {
    /// Reads the file in `data_dir` (an absent one is empty). An unreadable file is set aside with a
    /// warning: recovery then reads every log from its start, which is slow but exact.
    pub fn load(data_dir: &Path) -> DecidedFile {
        let path = data_dir.join("decided.json");
        let positions = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "unreadable; recovery reads the logs from their start");
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read; recovery reads the logs from their start");
                BTreeMap::new()
            }
        };
        DecidedFile {
            path,
            positions: Mutex::new(positions),
        }
    }

    fn positions(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.positions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every log key with its position.
    pub fn entries(&self) -> Vec<(String, u64)> {
        self.positions()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub fn get(&self, key: &str) -> Option<u64> {
        self.positions().get(key).copied()
    }

    /// Adds `key` at `position` unless it is there, durably.
    pub fn ensure(&self, key: &str, position: u64) -> std::io::Result<()> {
        let mut positions = self.positions();
        if positions.contains_key(key) {
            return Ok(());
        }
        positions.insert(key.to_owned(), position);
        self.write(&positions)
    }

    /// Moves `key` forward to `position` (never back), durably.
    pub fn advance(&self, key: &str, position: u64) -> std::io::Result<()> {
        let mut positions = self.positions();
        let current = positions.entry(key.to_owned()).or_default();
        if *current >= position {
            return Ok(());
        }
        *current = position;
        self.write(&positions)
    }

    fn write(&self, positions: &BTreeMap<String, u64>) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(positions).expect("positions serialise"))?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_survive_a_reload_and_never_move_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = DecidedFile::load(dir.path());
        assert_eq!(f.get("file"), None);
        f.ensure("file", 7).unwrap();
        f.ensure("file", 3).unwrap();
        f.advance("shop", 12).unwrap();
        f.advance("shop", 5).unwrap();
        let again = DecidedFile::load(dir.path());
        assert_eq!(again.entries(), [("file".into(), 7), ("shop".into(), 12)]);
    }

    #[test]
    fn an_unreadable_file_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("decided.json"), b"{not json").unwrap();
        assert!(DecidedFile::load(dir.path()).entries().is_empty());
    }
}
