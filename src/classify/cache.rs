//! Per-session cache of classifications, keyed by statement text with its constants replaced
//! (see [`super::normalize`]), so `... WHERE id = 1` and `... WHERE id = 2` are parsed once between them.
//!
//! Per session rather than global so the hot path takes no lock; bounded so a client that never repeats a
//! statement cannot grow it without limit.

use std::collections::HashMap;
use std::sync::Arc;

use super::normalize::cache_key;
use super::{ClassStats, Classification, classify};

/// How many distinct statement texts a session remembers before it starts over.
const MAX_ENTRIES: usize = 1024;

pub struct StatementCache {
    entries: HashMap<Box<str>, Arc<Classification>>,
    stats: Arc<ClassStats>,
}

impl StatementCache {
    pub fn new(stats: Arc<ClassStats>) -> Self {
        Self {
            entries: HashMap::new(),
            stats,
        }
    }

    /// The classification of `sql`, parsing it only the first time this session sees the text.
    pub fn classify(&mut self, sql: &str) -> Arc<Classification> {
        let normalized = cache_key(sql);
        let key = normalized.as_deref().unwrap_or(sql);
        if let Some(hit) = self.entries.get(key) {
            self.stats.record_cache_hit();
            return Arc::clone(hit);
        }
        self.stats.record_parse();
        let class = Arc::new(classify(sql));
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        self.entries.insert(key.into(), Arc::clone(&class));
        class
    }

    pub fn stats(&self) -> &ClassStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_text_once() {
        let stats = Arc::new(ClassStats::default());
        let mut cache = StatementCache::new(Arc::clone(&stats));
        for _ in 0..5 {
            assert!(!cache.classify("select 1").may_write());
        }
        assert!(cache.classify("delete from t").may_write());
        assert!(!cache.classify("select * from t where id = 1").may_write());
        assert!(!cache.classify("select * from t where id = 2").may_write());
        let snap = stats.snapshot();
        assert_eq!((snap.parses, snap.cache_hits), (3, 5));
    }
}
