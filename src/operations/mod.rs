//! Domain operations: the catalog declared in `operations.yaml` (the DSL), how a write transaction is
//! recognised as operations with validated parameters, strict mode, direct invocation, upcasting of
//! older versions, and the reference documentation generated from the catalog.
//!
//! Owns the meaning of writes. It never touches the network or the log: the commit protocol asks
//! [`Matcher::recognize`] what a transaction's operations are (or why it is refused), and the session
//! asks [`Matcher::rewrite`] what to send in place of a direct invocation.

mod catalog;
pub mod docs;
mod invoke;
mod params;
mod recognize;
mod spec;
mod statement;
mod template;
pub mod upcast;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub use catalog::{Catalog, CatalogErrors, Operation, Policy, RowKind, Shape, TableName};
pub use invoke::Rewrite;
pub use params::{Param, ParamType, Problem, SqlValue, sql_literal};
pub use statement::{Analysis, INVOKE_SCHEMA};
pub use template::{Piece, render};

use crate::record::{Change, OperationCall, Statement};
use crate::wire::PgError;

/// The catalog in use, shared by every session, replaced whole on reload.
pub struct Operations {
    path: Option<PathBuf>,
    current: RwLock<Arc<Catalog>>,
}

impl Operations {
    /// No catalog: every write is recorded as raw SQL.
    pub fn none() -> Arc<Operations> {
        Arc::new(Operations {
            path: None,
            current: RwLock::new(Arc::new(Catalog::empty())),
        })
    }

    /// Loads the catalog from `path`; refuses an invalid file.
    pub fn load(path: &Path) -> Result<Arc<Operations>, CatalogErrors> {
        let catalog = Catalog::load(path)?;
        Ok(Arc::new(Operations {
            path: Some(path.to_owned()),
            current: RwLock::new(Arc::new(catalog)),
        }))
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The catalog now in use.
    pub fn current(&self) -> Arc<Catalog> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads the file again: a valid catalog replaces the current one at once (sessions take it at their
    /// next commit); an invalid one is refused and the current one stays.
    pub fn reload(&self) -> Result<Arc<Catalog>, CatalogErrors> {
        let Some(path) = &self.path else {
            return Ok(self.current());
        };
        let catalog = Arc::new(Catalog::load(path)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&catalog);
        Ok(catalog)
    }
}

/// Texts analysed per session before the cache starts over.
const CACHE_LIMIT: usize = 4096;

/// One session's view of the catalog, with its cache of analysed statement texts.
pub struct Matcher {
    operations: Arc<Operations>,
    catalog: Arc<Catalog>,
    cache: HashMap<String, Arc<Analysis>>,
}

impl Matcher {
    pub fn new(operations: Arc<Operations>) -> Matcher {
        let catalog = operations.current();
        Matcher {
            operations,
            catalog,
            cache: HashMap::new(),
        }
    }

    /// Takes the current catalog; a new one empties the cache.
    fn refresh(&mut self) {
        let current = self.operations.current();
        if !Arc::ptr_eq(&current, &self.catalog) {
            self.catalog = current;
            self.cache.clear();
        }
    }

    /// The analysis of one query text (cached).
    pub fn analysis(&mut self, sql: &str) -> Arc<Analysis> {
        if let Some(a) = self.cache.get(sql) {
            return Arc::clone(a);
        }
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        let a = Arc::new(statement::analyse(&self.catalog, sql));
        self.cache.insert(sql.to_owned(), Arc::clone(&a));
        a
    }

    /// The operations of a committing transaction, or the error that refuses it.
    pub fn recognize(
        &mut self,
        statements: &[Statement],
        changes: &[Change],
    ) -> Result<Vec<OperationCall>, PgError> {
        self.refresh();
        if self.catalog.is_empty() {
            return Ok(Vec::new());
        }
        let analyses: Vec<Arc<Analysis>> =
            statements.iter().map(|s| self.analysis(&s.sql)).collect();
        recognize::recognize(&self.catalog, statements, &analyses, changes)
    }

    /// What to send in place of `sql` when it is a direct invocation (`CALL waly.<operation>(...)`).
    pub fn rewrite(&mut self, sql: &str) -> Option<Rewrite> {
        if !looks_like_invocation(sql) {
            return None;
        }
        self.refresh();
        let analysis = self.analysis(sql);
        invoke::rewrite(&self.catalog, &analysis)
    }
}

/// A cheap test before parsing: the text starts with CALL (after blanks and comments) and names `waly`.
fn looks_like_invocation(sql: &str) -> bool {
    let t = sql.trim_start();
    t.get(..4).is_some_and(|c| c.eq_ignore_ascii_case("call"))
        && t.to_ascii_lowercase().contains(INVOKE_SCHEMA)
}
