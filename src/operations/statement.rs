//! What one client statement text means to the catalog: for each statement in it, the table it writes,
//! the template steps it matches (with where each placeholder's value comes from), or the direct
//! invocation it is. Computed once per distinct text and catalog, then cached by the session's
//! [`super::Matcher`]. This module never touches the network.

use pg_query::NodeEnum;

use super::catalog::{Catalog, Shape, TableName};
use super::template::{self, Source};

/// The analysis of one query text.
#[derive(Debug, Default)]
pub struct Analysis {
    pub parts: Vec<Part>,
}

/// An analysis with the values of the constants lifted out of the text it was made for (see
/// [`super::literals`]); empty when it is the text's own.
#[derive(Debug, Clone)]
pub struct Bound {
    pub analysis: std::sync::Arc<Analysis>,
    pub literals: Vec<super::params::SqlValue>,
}

/// One statement of the text.
#[derive(Debug, Default)]
pub struct Part {
    /// The table it writes directly (INSERT/UPDATE/DELETE/MERGE/COPY FROM/TRUNCATE), and the verb.
    pub target: Option<(TableName, &'static str)>,
    /// (operation index, step index, sources by placeholder) for every template step it matches.
    pub hits: Vec<Hit>,
    pub invocation: Option<Invocation>,
    /// The statement can run anything (DO, CALL of a user procedure, a function call): its writes
    /// cannot be attributed from its text.
    pub opaque: bool,
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub op: usize,
    pub step: usize,
    pub sources: Vec<Source>,
}

/// `CALL waly.<operation>(name => value, ...)`.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The operation's index, or the name given when the catalog has no such operation.
    pub op: Result<usize, String>,
    pub args: Vec<(String, Source)>,
    /// Arguments given by position, which the form does not allow.
    pub positional: usize,
}

/// The schema of the direct-invocation form: `CALL waly.transfer_funds(...)`.
pub const INVOKE_SCHEMA: &str = "waly";

/// The analysis of `sql` as the client sent it.
pub fn analyse(catalog: &Catalog, sql: &str) -> Analysis {
    analyse_text(catalog, sql, false).expect("an exact analysis always exists")
}

/// The analysis of a text whose constants were lifted into parameters ([`super::literals`]), shared by
/// every text that differs from it only in those constants; `None` when it would not be the same as
/// each such text's own analysis (the text does not parse, or a template has a constant where the
/// text has a lifted one).
pub fn analyse_lifted(catalog: &Catalog, key: &str) -> Option<Analysis> {
    analyse_text(catalog, key, true)
}

fn analyse_text(catalog: &Catalog, sql: &str, lifted: bool) -> Option<Analysis> {
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        if lifted {
            return None;
        }
        return Some(Analysis {
            parts: vec![Part {
                opaque: true,
                ..Part::default()
            }],
        });
    };
    let mut parts = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let Some(stmt) = raw.stmt.as_deref() else {
            continue;
        };
        let Some(node) = stmt.node.as_ref() else {
            continue;
        };
        if lifted
            && template::statement_tree(Some(stmt))
                .is_none_or(|tree| super::literals::unary_minus_on_lifted(&tree))
        {
            return None;
        }
        let mut part = Part {
            target: template::write_target(node).map(|(s, t, k)| ((s, t), k)),
            ..Part::default()
        };
        if let NodeEnum::CallStmt(call) = node {
            match invocation(catalog, call) {
                Some(inv) => part.invocation = Some(inv),
                None => part.opaque = true,
            }
        } else if matches!(node, NodeEnum::DoStmt(_) | NodeEnum::ExecuteStmt(_)) {
            part.opaque = true;
        } else if part.target.is_some() || matches!(node, NodeEnum::SelectStmt(_)) {
            let tree = template::statement_tree(Some(stmt));
            if let Some(tree) = tree {
                for (op_index, op) in catalog.operations.iter().enumerate() {
                    for shape in &op.shapes {
                        let Shape::Statements(steps) = shape else {
                            continue;
                        };
                        for (step, t) in steps.iter().enumerate() {
                            let mut dependent = false;
                            let hit = t.matches_checking(&tree, &mut dependent);
                            if dependent && lifted {
                                return None;
                            }
                            if let Some(sources) = hit {
                                part.hits.push(Hit {
                                    op: op_index,
                                    step,
                                    sources,
                                });
                            }
                        }
                    }
                }
            }
        }
        parts.push(part);
    }
    Some(Analysis { parts })
}

fn invocation(catalog: &Catalog, call: &pg_query::protobuf::CallStmt) -> Option<Invocation> {
    let func = call.funccall.as_ref()?;
    let names: Vec<&str> = func
        .funcname
        .iter()
        .filter_map(|n| match n.node.as_ref()? {
            NodeEnum::String(s) => Some(s.sval.as_str()),
            _ => None,
        })
        .collect();
    let [schema, name] = names.as_slice() else {
        return None;
    };
    if !schema.eq_ignore_ascii_case(INVOKE_SCHEMA) {
        return None;
    }
    let op = catalog
        .operations
        .iter()
        .position(|o| o.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| (*name).to_owned());
    let mut args = Vec::new();
    let mut positional = 0;
    for arg in &func.args {
        match arg.node.as_ref() {
            Some(NodeEnum::NamedArgExpr(named)) => {
                let value = named.arg.as_deref().and_then(template::source_of_node);
                match value {
                    Some(source) => args.push((named.name.clone(), source)),
                    None => args.push((named.name.clone(), Source::Unsupported)),
                }
            }
            _ => positional += 1,
        }
    }
    Some(Invocation {
        op,
        args,
        positional,
    })
}
