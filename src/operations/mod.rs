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
mod literals;
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
pub use statement::{Analysis, Bound, INVOKE_SCHEMA};
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
    /// By exact text.
    cache: HashMap<String, Arc<Analysis>>,
    /// By text with its constants lifted ([`literals`]); `None`: texts of this key need their own.
    lifted: HashMap<String, Option<Arc<Analysis>>>,
}

impl Matcher {
    pub fn new(operations: Arc<Operations>) -> Matcher {
        let catalog = operations.current();
        Matcher {
            operations,
            catalog,
            cache: HashMap::new(),
            lifted: HashMap::new(),
        }
    }

    /// Takes the current catalog; a new one empties the cache.
    fn refresh(&mut self) {
        let current = self.operations.current();
        if !Arc::ptr_eq(&current, &self.catalog) {
            self.catalog = current;
            self.cache.clear();
            self.lifted.clear();
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

    /// The analysis of a statement text with the values of its lifted constants: texts that differ only
    /// in their constants share one analysis (cached); otherwise the text's own.
    fn bound(&mut self, sql: &str) -> Bound {
        if let Some(a) = self.cache.get(sql) {
            return Bound {
                analysis: Arc::clone(a),
                literals: Vec::new(),
            };
        }
        if let Some(l) = literals::lift(sql) {
            let shared = match self.lifted.get(&l.key) {
                Some(known) => known.clone(),
                None => {
                    if self.lifted.len() >= CACHE_LIMIT {
                        self.lifted.clear();
                    }
                    let a = statement::analyse_lifted(&self.catalog, &l.key).map(Arc::new);
                    self.lifted.insert(l.key, a.clone());
                    a
                }
            };
            if let Some(analysis) = shared {
                return Bound {
                    analysis,
                    literals: l.values,
                };
            }
        }
        Bound {
            analysis: self.analysis(sql),
            literals: Vec::new(),
        }
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
        let analyses: Vec<Bound> = statements.iter().map(|s| self.bound(&s.sql)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = r#"
policy: {tables: {counters: reject}}
operations:
  - name: BUMP
    params: {id: {type: integer, required: true}}
    matches: [{statement: "UPDATE counters SET n = n + 1 WHERE id = :id"}]
  - name: SET_LIMIT
    params: {id: {type: integer, required: true}, limit: {type: integer, min: 0}}
    matches: [{statement: "UPDATE limits SET max = :limit WHERE id = :id"}]
"#;

    fn matcher(text: &str) -> Matcher {
        let catalog = Catalog::parse("test.yaml", text).unwrap();
        let ops = Arc::new(Operations {
            path: None,
            current: RwLock::new(Arc::new(catalog)),
        });
        Matcher::new(ops)
    }

    fn row(table: &str) -> Vec<Change> {
        let json = format!(
            r#"[{{"kind":"update","schema":"public","table":"{table}","pk":{{"id":5}},"old":{{"id":5,"n":1}},"new":{{"id":5,"n":2}}}}]"#
        );
        serde_json::from_str(&json).unwrap()
    }

    fn outcome(m: &mut Matcher, sql: &str, table: &str) -> String {
        let st = [Statement {
            sql: sql.into(),
            params: Vec::new(),
        }];
        match m.recognize(&st, &row(table)) {
            Ok(calls) => serde_json::to_string(&calls).unwrap(),
            Err(e) => format!("{} {}", e.code.0, e.message),
        }
    }

    /// Texts that share a lifted key must be recognised exactly as each would be on its own.
    #[test]
    fn lifted_constants_give_the_same_answers_as_each_text_alone() {
        let cases = [
            ("UPDATE counters SET n = n + 1 WHERE id = 5", "counters"),
            ("UPDATE counters SET n = n + 2 WHERE id = 5", "counters"),
            ("UPDATE counters SET n = n + 1 WHERE id = 6", "counters"),
            ("UPDATE limits SET max = 10 WHERE id = 5", "limits"),
            ("UPDATE limits SET max = -1 WHERE id = 5", "limits"),
            ("UPDATE limits SET max = - 3 WHERE id = 5", "limits"),
            ("UPDATE limits SET max = '7' WHERE id = 5", "limits"),
            ("UPDATE limits SET max = 'x''y' WHERE id = 5", "limits"),
            ("UPDATE limits SET max = 12 WHERE id = 5", "limits"),
        ];
        let mut shared = matcher(CATALOG);
        let mut answers = Vec::new();
        for (sql, table) in cases {
            let mut alone = matcher(CATALOG);
            let exact = {
                let st = [Statement {
                    sql: sql.into(),
                    params: Vec::new(),
                }];
                let bound = [Bound {
                    analysis: alone.analysis(sql),
                    literals: Vec::new(),
                }];
                match recognize::recognize(&alone.catalog, &st, &bound, &row(table)) {
                    Ok(calls) => serde_json::to_string(&calls).unwrap(),
                    Err(e) => format!("{} {}", e.code.0, e.message),
                }
            };
            let through_cache = outcome(&mut shared, sql, table);
            assert_eq!(through_cache, exact, "{sql}");
            answers.push(through_cache);
        }
        assert!(
            answers[0].contains("BUMP") && answers[2].contains("BUMP"),
            "{answers:?}"
        );
        assert!(answers[1].starts_with("42501"), "{answers:?}");
        assert!(
            answers[4].contains("must be at least 0, got -1"),
            "{answers:?}"
        );
        assert!(answers[7].starts_with("22P02"), "{answers:?}");
        let key = |k: &str| shared.lifted.get(k).map(Option::is_some);
        // BUMP's template has a constant where the texts have theirs: each text answers on its own.
        assert_eq!(
            key("UPDATE counters SET n = n + $100000 WHERE id = $100001"),
            Some(false)
        );
        // SET_LIMIT's texts share one analysis; a negative constant is not liftable and uses its own.
        assert_eq!(
            key("UPDATE limits SET max = $100000 WHERE id = $100001"),
            Some(true)
        );
        assert_eq!(
            key("UPDATE limits SET max = -$100000 WHERE id = $100001"),
            Some(false)
        );
    }
}
