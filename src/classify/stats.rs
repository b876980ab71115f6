//! Counters of classified statements, shared by all sessions (relaxed atomics: counts, not synchronisation).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use super::{Classification, StatementKind};

#[derive(Debug, Default)]
pub struct ClassStats {
    read: AtomicU64,
    write: AtomicU64,
    ddl: AtomicU64,
    transaction: AtomicU64,
    session: AtomicU64,
    unknown: AtomicU64,
    parses: AtomicU64,
    cache_hits: AtomicU64,
}

/// A point-in-time copy of [`ClassStats`], for logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClassStatsSnapshot {
    pub read: u64,
    pub write: u64,
    pub ddl: u64,
    pub transaction: u64,
    pub session: u64,
    pub unknown: u64,
    pub parses: u64,
    pub cache_hits: u64,
}

impl ClassStats {
    /// Counts the statements of one executed query string or portal.
    pub fn record_execution(&self, class: &Classification) {
        for kind in &class.statements {
            let counter = match kind {
                StatementKind::Read => &self.read,
                StatementKind::Write => &self.write,
                StatementKind::Ddl => &self.ddl,
                StatementKind::Transaction(_) => &self.transaction,
                StatementKind::Session => &self.session,
                StatementKind::Unknown => &self.unknown,
            };
            counter.fetch_add(1, Relaxed);
        }
    }

    pub fn record_parse(&self) {
        self.parses.fetch_add(1, Relaxed);
    }

    pub fn record_cache_hit(&self) {
        self.cache_hits.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> ClassStatsSnapshot {
        ClassStatsSnapshot {
            read: self.read.load(Relaxed),
            write: self.write.load(Relaxed),
            ddl: self.ddl.load(Relaxed),
            transaction: self.transaction.load(Relaxed),
            session: self.session.load(Relaxed),
            unknown: self.unknown.load(Relaxed),
            parses: self.parses.load(Relaxed),
            cache_hits: self.cache_hits.load(Relaxed),
        }
    }
}
