//! The checked catalog: operations, their parameters, shapes, SQL and upcasters, and the table policy.
//!
//! [`Catalog::load`] reads `operations.yaml` and refuses it whole, with `file:line` errors, when anything
//! in it is wrong: a catalog is either entirely valid or not used. This module never touches the network.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use regex::Regex;
use serde_json::Value;

use super::params::{Param, ParamType};
use super::spec::{FileSpec, OperationSpec, ParamSpec, ShapeSpec, UpcasterSpec};
use super::template::{self, Piece, Template};
use crate::config::{ConfigError, parse_yaml, position_of};

/// A table: (schema, name).
pub type TableName = (String, String);

/// What an unmatched write to a table gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Recorded as raw SQL beside its row images.
    Record,
    /// Refused (strict mode): only declared operations may change the table.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    Insert,
    Update,
    Delete,
}

impl RowKind {
    pub fn label(self) -> &'static str {
        match self {
            RowKind::Insert => "insert",
            RowKind::Update => "update",
            RowKind::Delete => "delete",
        }
    }
}

/// A SQL shape an operation is recognised by.
#[derive(Debug, Clone)]
pub enum Shape {
    /// Every row change of this kind to this table (whatever SQL made it), parameters read from the
    /// row image: the new row for insert and update, the old one for delete. An update matches only
    /// when every column it changed is mapped.
    Table {
        table: TableName,
        kind: RowKind,
        /// column → index into the operation's params.
        columns: Vec<(String, usize)>,
    },
    /// Statements run in this order by one transaction (one statement for most operations).
    Statements(Vec<Template>),
}

/// How a record of version `from` becomes `from + 1`.
#[derive(Debug, Clone)]
pub struct Upcaster {
    pub from: u32,
    pub rename: Vec<(String, String)>,
    pub default: Vec<(String, Value)>,
    /// name → SQL expression with `:name` placeholders.
    pub compute: Vec<(String, Vec<Piece>)>,
    pub drop: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub name: String,
    pub version: u32,
    pub description: Option<String>,
    pub params: Vec<Param>,
    pub shapes: Vec<Shape>,
    /// The statement run on direct invocation and by operations replay.
    pub sql: Option<(String, Vec<Piece>)>,
    pub upcasters: Vec<Upcaster>,
    /// Tables the operation's statements, shapes and SQL write.
    pub writes: BTreeSet<TableName>,
    /// Line of the operation in its file.
    pub line: usize,
}

impl Operation {
    pub fn param(&self, name: &str) -> Option<(usize, &Param)> {
        self.params.iter().enumerate().find(|(_, p)| p.name == name)
    }

    /// The oldest version this catalog can read (upcasters chain from it to [`Self::version`]).
    pub fn oldest_version(&self) -> u32 {
        self.upcasters
            .iter()
            .map(|u| u.from)
            .min()
            .unwrap_or(self.version)
    }
}

/// A loaded, checked catalog.
#[derive(Debug, Default)]
pub struct Catalog {
    pub operations: Vec<Operation>,
    pub default_policy: Option<Policy>,
    pub table_policy: BTreeMap<TableName, Policy>,
    /// The file it came from.
    pub source: String,
}

/// Everything wrong with a file, each `file:line: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct CatalogErrors(pub Vec<String>);

impl Catalog {
    /// An empty catalog: every write recorded as raw SQL.
    pub fn empty() -> Catalog {
        Catalog::default()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty() && self.table_policy.is_empty() && self.default_policy.is_none()
    }

    pub fn load(path: &Path) -> Result<Catalog, CatalogErrors> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            CatalogErrors(vec![format!(
                "{label}: cannot read the operations file: {e}"
            )])
        })?;
        Catalog::parse(&label, &text)
    }

    pub fn parse(label: &str, text: &str) -> Result<Catalog, CatalogErrors> {
        if text.trim().is_empty() {
            // Most likely a file caught while it was being written; an intentionally empty catalog is
            // `operations: []`.
            return Err(CatalogErrors(vec![format!(
                "{label}:1: the operations file is empty (write `operations: []` for a catalog without operations)"
            )]));
        }
        let spec: FileSpec = parse_yaml(label, text).map_err(|e| match e {
            ConfigError::Invalid {
                path,
                line,
                column,
                message,
            } => CatalogErrors(vec![format!("{path}:{line}:{column}: {message}")]),
            other => CatalogErrors(vec![other.to_string()]),
        })?;
        let mut errors = Errors {
            label,
            text,
            list: Vec::new(),
        };
        let catalog = compile(spec, &mut errors, label);
        if errors.list.is_empty() {
            Ok(catalog)
        } else {
            Err(CatalogErrors(errors.list))
        }
    }

    pub fn operation(&self, name: &str) -> Option<&Operation> {
        self.operations
            .iter()
            .find(|o| o.name.eq_ignore_ascii_case(name))
    }

    /// The policy for unmatched writes to `table`.
    pub fn policy(&self, table: &TableName) -> Policy {
        self.table_policy
            .get(table)
            .copied()
            .or(self.default_policy)
            .unwrap_or(Policy::Record)
    }
}

struct Errors<'a> {
    label: &'a str,
    text: &'a str,
    list: Vec<String>,
}

impl Errors<'_> {
    /// Records an error at the first line containing `needle` at or after line `from`.
    fn at(&mut self, from: usize, needle: &str, message: String) {
        let line = self
            .text
            .lines()
            .enumerate()
            .skip(from.saturating_sub(1))
            .find(|(_, l)| l.contains(needle))
            .map_or(from.max(1), |(i, _)| i + 1);
        self.list.push(format!("{}:{line}: {message}", self.label));
    }
}

fn compile(spec: FileSpec, errors: &mut Errors, label: &str) -> Catalog {
    let mut catalog = Catalog {
        source: label.to_owned(),
        ..Catalog::default()
    };
    if spec.format != 1 {
        errors.at(
            1,
            "format",
            format!(
                "unknown file format {}; this waly reads format 1",
                spec.format
            ),
        );
    }
    let policy = |value: &str| match value {
        "record" => Some(Policy::Record),
        "reject" | "strict" => Some(Policy::Reject),
        _ => None,
    };
    if let Some(d) = &spec.policy.default {
        match policy(d) {
            Some(p) => catalog.default_policy = Some(p),
            None => errors.at(
                1,
                "default:",
                format!("unknown policy {d:?}: expected record or reject"),
            ),
        }
    }
    for (table, value) in &spec.policy.tables {
        match (policy(value), parse_table(table)) {
            (Some(p), Some(t)) => {
                catalog.table_policy.insert(t, p);
            }
            (None, _) => errors.at(
                1,
                table,
                format!("table {table}: unknown policy {value:?}: expected record or reject"),
            ),
            (_, None) => errors.at(
                1,
                table,
                format!("{table:?} is not a table name (table or schema.table)"),
            ),
        }
    }
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut after = 0;
    for op in spec.operations {
        // Each operation's line: the next `name:` line that names it.
        let line = errors
            .text
            .lines()
            .enumerate()
            .skip(after)
            .find(|(_, l)| l.contains("name:") && l.contains(op.name.as_str()))
            .map_or_else(|| position_of(errors.text, &op.name).0, |(i, _)| i + 1);
        after = line;
        if !seen.insert(op.name.to_ascii_uppercase()) {
            errors.at(
                line,
                &op.name,
                format!("operation {} is declared twice", op.name),
            );
            continue;
        }
        if let Some(op) = compile_operation(op, line, errors) {
            catalog.operations.push(op);
        }
    }
    catalog
}

fn parse_table(name: &str) -> Option<TableName> {
    let parts: Vec<&str> = name.split('.').collect();
    let ok = |s: &&str| !s.is_empty();
    match parts.as_slice() {
        [t] if ok(t) => Some(("public".into(), (*t).into())),
        [s, t] if ok(s) && ok(t) => Some(((*s).into(), (*t).into())),
        _ => None,
    }
}

fn compile_operation(spec: OperationSpec, line: usize, errors: &mut Errors) -> Option<Operation> {
    let before = errors.list.len();
    let name = spec.name.clone();
    let valid_name = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.as_bytes()[0].is_ascii_alphabetic();
    if !valid_name {
        errors.at(line, &name, format!("operation name {name:?} must be letters, digits and underscores, starting with a letter"));
    }
    if spec.version == 0 {
        errors.at(
            line,
            "version",
            format!("operation {name}: versions start at 1"),
        );
    }
    let mut params = Vec::new();
    for (pname, p) in &spec.params.0 {
        match compile_param(pname, p) {
            Ok(p) => params.push(p),
            Err(m) => errors.at(
                line,
                &format!("{pname}:"),
                format!("operation {name}, parameter {pname}: {m}"),
            ),
        }
    }
    let index = |p: &str| params.iter().position(|x: &Param| x.name == p);
    let mut writes = BTreeSet::new();
    let mut shapes = Vec::new();
    for shape in &spec.matches {
        match compile_shape(shape, &index) {
            Ok((s, w)) => {
                writes.extend(w);
                shapes.push(s);
            }
            Err(m) => errors.at(line, "matches", format!("operation {name}: {m}")),
        }
    }
    for p in &params {
        if let Some((s, t, _)) = &p.from_row {
            writes.insert((s.clone(), t.clone()));
        }
    }
    let sql = match &spec.sql {
        Some(text) => match compile_sql(text, &index) {
            Ok((pieces, w)) => {
                writes.extend(w);
                Some((text.clone(), pieces))
            }
            Err(m) => {
                errors.at(line, "sql:", format!("operation {name}, sql: {m}"));
                None
            }
        },
        None => None,
    };
    if spec.matches.is_empty() && spec.sql.is_none() {
        errors.at(
            line,
            &name,
            format!(
                "operation {name} has neither `matches` nor `sql`: it could never appear in the log"
            ),
        );
    }
    let upcasters = compile_upcasters(&name, spec.version, &spec.upcasters, line, errors);
    (errors.list.len() == before).then(|| Operation {
        name,
        version: spec.version,
        description: spec.description,
        params,
        shapes,
        sql,
        upcasters,
        writes,
        line,
    })
}

fn compile_param(name: &str, p: &ParamSpec) -> Result<Param, String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("a parameter name is letters, digits and underscores".into());
    }
    let kind = param_type(p)?;
    let bound = |v: &Option<Value>, which: &str| -> Result<(Option<f64>, Option<String>), String> {
        match v {
            None => Ok((None, None)),
            Some(v) => {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let n = text
                    .parse::<f64>()
                    .map_err(|_| format!("{which} must be a number, got {text}"))?;
                if !matches!(kind, ParamType::Integer | ParamType::Numeric) {
                    return Err(format!(
                        "{which} applies to integer and numeric parameters only"
                    ));
                }
                Ok((Some(n), Some(text)))
            }
        }
    };
    let (min, min_text) = bound(&p.min, "min")?;
    let (max, max_text) = bound(&p.max, "max")?;
    let pattern = match &p.pattern {
        Some(re) => Some(Regex::new(re).map_err(|e| format!("pattern does not compile: {e}"))?),
        None => None,
    };
    let from_row = match &p.from_row {
        Some(spec) => {
            let parts: Vec<&str> = spec.split('.').collect();
            Some(match parts.as_slice() {
                [t, c] => ("public".to_owned(), (*t).to_owned(), (*c).to_owned()),
                [s, t, c] => ((*s).to_owned(), (*t).to_owned(), (*c).to_owned()),
                _ => {
                    return Err(format!(
                        "from_row {spec:?} must be table.column or schema.table.column"
                    ));
                }
            })
        }
        None => None,
    };
    let mut param = Param {
        name: name.to_owned(),
        kind,
        description: p.description.clone(),
        required: p.required,
        default: None,
        pattern,
        min,
        min_text,
        max,
        max_text,
        min_length: p.min_length,
        max_length: p.max_length,
        from_row,
    };
    if let Some(d) = &p.default {
        let value = param
            .from_json(d, None)
            .map_err(|e| format!("the default {d} {}", e.describe()))?;
        param.default = Some(value);
    }
    Ok(param)
}

fn param_type(p: &ParamSpec) -> Result<ParamType, String> {
    Ok(match p.kind.as_str() {
        "text" | "string" => ParamType::Text,
        "integer" | "int" | "bigint" => ParamType::Integer,
        "numeric" | "decimal" => ParamType::Numeric,
        "boolean" | "bool" => ParamType::Boolean,
        "uuid" => ParamType::Uuid,
        "timestamptz" => ParamType::Timestamptz,
        "jsonb" | "json" => ParamType::Jsonb,
        "enum" => match &p.values {
            Some(v) if !v.is_empty() => ParamType::Enum(v.clone()),
            _ => return Err("an enum needs `values`".into()),
        },
        "array" => match &p.items {
            Some(item) => {
                let inner = param_type(item)?;
                if matches!(inner, ParamType::Array(_)) {
                    return Err("arrays of arrays are not supported".into());
                }
                ParamType::Array(Box::new(inner))
            }
            None => return Err("an array needs `items` (the element type)".into()),
        },
        other => {
            return Err(format!(
                "unknown type {other:?}: expected text, integer, numeric, boolean, uuid, timestamptz, jsonb, enum or array"
            ));
        }
    })
}

type Compiled<T> = Result<(T, Vec<TableName>), String>;

fn compile_shape(shape: &ShapeSpec, index: &dyn Fn(&str) -> Option<usize>) -> Compiled<Shape> {
    let templates: Vec<&String> = shape.statement.iter().chain(&shape.statements).collect();
    match (&shape.table, templates.is_empty()) {
        (Some(table), true) => {
            let t = parse_table(table).ok_or_else(|| format!("{table:?} is not a table name"))?;
            let kind = match shape.kind.as_deref() {
                Some("insert") => RowKind::Insert,
                Some("update") => RowKind::Update,
                Some("delete") => RowKind::Delete,
                other => {
                    return Err(format!(
                        "a table shape needs kind: insert, update or delete (got {other:?})"
                    ));
                }
            };
            if shape.columns.is_empty() {
                return Err(format!("the shape for table {table} maps no columns"));
            }
            let mut columns = Vec::new();
            for (column, param) in &shape.columns {
                let i = index(param).ok_or_else(|| {
                    format!("column {column} maps to {param}, which is not a parameter")
                })?;
                columns.push((column.clone(), i));
            }
            Ok((
                Shape::Table {
                    table: t.clone(),
                    kind,
                    columns,
                },
                vec![t],
            ))
        }
        (None, false) => {
            let mut compiled = Vec::new();
            let mut writes = Vec::new();
            for text in templates {
                let t = Template::compile(text).map_err(|m| format!("{m} (in {text:?})"))?;
                for p in &t.placeholders {
                    index(p).ok_or_else(|| {
                        format!("placeholder :{p} is not a parameter (in {text:?})")
                    })?;
                }
                writes.extend(tables_written(text));
                compiled.push(t);
            }
            Ok((Shape::Statements(compiled), writes))
        }
        (Some(_), false) => {
            Err("a shape is either a table (with kind and columns) or statements, not both".into())
        }
        (None, true) => Err("a shape needs `table` or `statement`/`statements`".into()),
    }
}

fn compile_sql(text: &str, index: &dyn Fn(&str) -> Option<usize>) -> Compiled<Vec<Piece>> {
    let pieces = template::split_placeholders(text);
    for piece in &pieces {
        if let Piece::Placeholder(p) = piece {
            index(p).ok_or_else(|| format!("placeholder :{p} is not a parameter"))?;
        }
    }
    let probe = template::render(&pieces, |_| "NULL".into());
    let parsed = pg_query::parse(&probe, 0).map_err(|e| format!("does not parse: {e}"))?;
    if parsed.protobuf.stmts.len() != 1 {
        return Err(format!(
            "must be exactly one statement (use a WITH query for several writes), found {}",
            parsed.protobuf.stmts.len()
        ));
    }
    Ok((pieces, tables_written(&probe)))
}

/// Tables a statement writes (after placeholders are made parseable).
fn tables_written(sql: &str) -> Vec<TableName> {
    let probe = template::render(&template::split_placeholders(sql), |_| "NULL".into());
    pg_query::parse(&probe, 0)
        .map(|p| {
            p.dml_tables()
                .iter()
                .filter_map(|t| parse_table(t))
                .collect()
        })
        .unwrap_or_default()
}

fn compile_upcasters(
    name: &str,
    version: u32,
    specs: &[UpcasterSpec],
    line: usize,
    errors: &mut Errors,
) -> Vec<Upcaster> {
    let mut out: Vec<Upcaster> = Vec::new();
    for u in specs {
        if u.from == 0 || u.from >= version {
            errors.at(line, "from:", format!("operation {name}: an upcaster from version {} cannot lead to version {version}", u.from));
            continue;
        }
        if out.iter().any(|o| o.from == u.from) {
            errors.at(
                line,
                "from:",
                format!("operation {name}: two upcasters from version {}", u.from),
            );
            continue;
        }
        out.push(Upcaster {
            from: u.from,
            rename: u
                .rename
                .iter()
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect(),
            default: u
                .default
                .iter()
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect(),
            compute: u
                .compute
                .iter()
                .map(|(a, e)| (a.clone(), template::split_placeholders(e)))
                .collect(),
            drop: u.drop.clone(),
        });
    }
    out.sort_by_key(|u| u.from);
    if let Some(oldest) = out.first().map(|u| u.from) {
        for v in oldest..version {
            if !out.iter().any(|u| u.from == v) {
                errors.at(line, "upcasters", format!("operation {name}: no upcaster from version {v}; versions {oldest} to {version} must chain"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_catalog_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/operations.yaml");
        let c = Catalog::load(&path).unwrap();
        let names: Vec<&str> = c.operations.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "CREATE_ACCOUNT",
                "DEPOSIT",
                "TRANSFER_FUNDS",
                "CLOSE_ACCOUNT"
            ]
        );
        let accounts = ("public".to_owned(), "accounts".to_owned());
        assert_eq!(c.policy(&accounts), Policy::Reject);
        assert_eq!(c.policy(&("public".into(), "other".into())), Policy::Record);
        let transfer = c.operation("transfer_funds").unwrap();
        assert!(transfer.writes.contains(&accounts));
        assert!(
            transfer
                .writes
                .contains(&("public".to_owned(), "transfers".to_owned()))
        );
    }

    #[test]
    fn errors_point_at_file_and_line() {
        let text = "operations:\n  - name: A\n    params:\n      x: {type: money}\n    sql: select :y\n  - name: A\n    sql: select 1\n";
        let errors = Catalog::parse("ops.yaml", text).unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e
                    .starts_with("ops.yaml:4: operation A, parameter x: unknown type \"money\"")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("ops.yaml:5: operation A, sql: placeholder :y")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("ops.yaml:6: operation A is declared twice")),
            "{errors:?}"
        );
        let syntax = Catalog::parse("ops.yaml", "operations:\n  - name: [\n")
            .unwrap_err()
            .0;
        assert!(syntax[0].starts_with("ops.yaml:"), "{syntax:?}");
        let unknown = Catalog::parse("ops.yaml", "operations:\n  - name: A\n    sq1: select 1\n")
            .unwrap_err()
            .0;
        assert!(unknown[0].contains("unknown field `sq1`"), "{unknown:?}");
    }

    #[test]
    fn upcasters_must_chain_to_the_current_version() {
        let text = "operations:\n  - name: CAR\n    version: 3\n    params: {years: {type: array, items: {type: integer}}}\n    sql: select :years\n    upcasters:\n      - from: 1\n        rename: {year: y}\n";
        let errors = Catalog::parse("ops.yaml", text).unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e.contains("no upcaster from version 2")),
            "{errors:?}"
        );
    }
}
