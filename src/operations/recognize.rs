//! Recognition on the write path: a committing transaction's statements and row changes become the
//! operations they are, with validated parameters, or the transaction is refused (an invalid parameter,
//! or a write that strict mode forbids).
//!
//! Runs inside the commit protocol, after the row changes are captured and before PREPARE: a refusal
//! rolls the transaction back and nothing is logged. This module never touches the network.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;
use serde_json::value::RawValue;

use super::catalog::{Catalog, Operation, Policy, RowKind, Shape, TableName};
use super::literals::LITERAL_BASE;
use super::params::{Param, Problem, SqlValue};
use super::statement::{Bound, Invocation};
use super::template::Source;
use crate::record::{Change, OperationCall, Statement};
use crate::wire::{PgError, SqlState};

/// Why a transaction is refused; sent to the client in place of COMMIT's reply (or the statement's,
/// in autocommit).
pub fn rejection_detail() -> &'static str {
    "The transaction was rolled back; nothing was logged or applied."
}

/// An invalid parameter value.
pub fn invalid(op: &Operation, param: &str, problem: &Problem) -> PgError {
    PgError::error(
        SqlState(problem.sqlstate()),
        format!(
            "operation {} (v{}): parameter \"{param}\" {}",
            op.name,
            op.version,
            problem.describe()
        ),
    )
    .with_detail(rejection_detail())
    .with_hint(param_hint(op, param))
}

fn param_hint(op: &Operation, param: &str) -> String {
    let Some((_, p)) = op.param(param) else {
        let names: Vec<&str> = op.params.iter().map(|p| p.name.as_str()).collect();
        return format!("{} takes: {}.", op.name, names.join(", "));
    };
    let mut rules = vec![p.kind.name()];
    if p.required {
        rules.push("required".into());
    }
    if let Some(t) = &p.min_text {
        rules.push(format!("min {t}"));
    }
    if let Some(t) = &p.max_text {
        rules.push(format!("max {t}"));
    }
    if let Some(n) = p.min_length {
        rules.push(format!("min length {n}"));
    }
    if let Some(n) = p.max_length {
        rules.push(format!("max length {n}"));
    }
    if let Some(re) = &p.pattern {
        rules.push(format!("pattern {}", re.as_str()));
    }
    let mut hint = format!("{}.{param}: {}", op.name, rules.join(", "));
    if let Some(d) = &p.description {
        hint.push_str(&format!(" ({d})"));
    }
    hint
}

/// A statement or change made outside any declared operation on a table whose policy is `reject`.
fn strict(catalog: &Catalog, table: &TableName, what: String) -> PgError {
    let allowed: Vec<&str> = catalog
        .operations
        .iter()
        .filter(|o| o.writes.contains(table))
        .map(|o| o.name.as_str())
        .collect();
    let hint = if allowed.is_empty() {
        format!(
            "No declared operation writes {}.{}; declare one in {}, or set the table's policy to record.",
            table.0, table.1, catalog.source
        )
    } else {
        format!(
            "Operations that may change {}.{}: {}. Send one of their statements, or call one directly: CALL waly.{}(name => value, ...).",
            table.0,
            table.1,
            allowed.join(", "),
            allowed[0].to_ascii_lowercase()
        )
    };
    PgError::error(
        SqlState("42501"),
        format!(
            "table {}.{} accepts only declared operations (strict mode): {what} matches none",
            table.0, table.1
        ),
    )
    .with_detail(rejection_detail())
    .with_hint(hint)
}

/// One statement of the transaction, as the matcher sees it.
struct Step<'a> {
    statement: usize,
    analysis: &'a super::statement::Part,
    params: &'a [Option<String>],
    literals: &'a [SqlValue],
    sql: &'a str,
}

/// The operations of a committing transaction. `analyses[i]` is the analysis of `statements[i]`.
pub fn recognize(
    catalog: &Catalog,
    statements: &[Statement],
    analyses: &[Bound],
    changes: &[Change],
) -> Result<Vec<OperationCall>, PgError> {
    let steps: Vec<Step> = statements
        .iter()
        .zip(analyses)
        .enumerate()
        .flat_map(|(i, (s, a))| {
            a.analysis.parts.iter().map(move |part| Step {
                statement: i,
                analysis: part,
                params: &s.params,
                literals: &a.literals,
                sql: &s.sql,
            })
        })
        .filter(|s| {
            let p = s.analysis;
            p.target.is_some() || !p.hits.is_empty() || p.invocation.is_some() || p.opaque
        })
        .collect();

    let mut generated = Generated::new(changes);
    let mut calls = Vec::new();
    let mut covered: BTreeSet<TableName> = BTreeSet::new();
    let mut i = 0;
    while i < steps.len() {
        let step = &steps[i];
        if let Some(inv) = &step.analysis.invocation {
            let (op, call) = invoked(catalog, inv, step, &mut generated)?;
            covered.extend(op.writes.iter().cloned());
            calls.push(call);
            i += 1;
            continue;
        }
        if let Some((op, len, values)) = longest_match(catalog, &steps[i..]) {
            let statements_used: Vec<usize> =
                steps[i..i + len].iter().map(|s| s.statement).collect();
            let params = build(op, |p| values.get(&p.name).cloned(), &mut generated)?;
            covered.extend(op.writes.iter().cloned());
            calls.push(call_of(op, params, dedup(statements_used), Vec::new()));
            i += len;
            continue;
        }
        if let Some((table, verb)) = &step.analysis.target
            && catalog.policy(table) == Policy::Reject
            && !has_table_shape(catalog, table, verb)
        {
            return Err(strict(
                catalog,
                table,
                format!("the statement {:?}", short(step.sql)),
            ));
        }
        i += 1;
    }

    // Rows a DDL change rewrote are no application write: no operation, nothing for strict mode.
    let by_ddl = crate::record::written_by_ddl(changes);
    let mut shaped: BTreeSet<usize> = BTreeSet::new();
    for (index, change) in changes.iter().enumerate() {
        if by_ddl[index] {
            continue;
        }
        let Some((table, kind, old, new)) = row_change(change) else {
            continue;
        };
        if covered.contains(&table) {
            continue;
        }
        if let Some(call) =
            table_shape_call(catalog, &table, kind, old, new, index, &mut generated)?
        {
            shaped.insert(index);
            calls.push(call);
        }
    }

    for (index, change) in changes.iter().enumerate() {
        if by_ddl[index] {
            continue;
        }
        let table = match change {
            Change::Insert { schema, table, .. }
            | Change::Update { schema, table, .. }
            | Change::Delete { schema, table, .. }
            | Change::Truncate { schema, table } => (schema.clone(), table.clone()),
            _ => continue,
        };
        if catalog.policy(&table) == Policy::Reject
            && !covered.contains(&table)
            && !shaped.contains(&index)
        {
            return Err(strict(catalog, &table, describe_change(change)));
        }
    }
    Ok(calls)
}

/// A row change as a strict-mode error names it: its kind, its key, and for an update the columns it
/// changed.
fn describe_change(change: &Change) -> String {
    let key = |pk: &Option<crate::record::Json>| {
        pk.as_ref()
            .map_or_else(String::new, |k| format!(" with key {}", k.get()))
    };
    match change {
        Change::Insert { pk, .. } => format!("the insert of a row{}", key(pk)),
        Change::Delete { pk, .. } => format!("the delete of the row{}", key(pk)),
        Change::Update { pk, old, new, .. } => {
            let (Some(o), Some(n)) = (image(old), image(new)) else {
                return format!("the update of the row{}", key(pk));
            };
            let changed: Vec<&str> = n
                .iter()
                .filter(|(c, v)| o.get(*c).map(|ov| ov.get()) != Some(v.get()))
                .map(|(c, _)| *c)
                .collect();
            format!(
                "the update of the row{} changing {}",
                key(pk),
                changed.join(", ")
            )
        }
        _ => "a truncate".into(),
    }
}

fn has_table_shape(catalog: &Catalog, table: &TableName, verb: &str) -> bool {
    catalog.operations.iter().any(|o| {
        o.shapes.iter().any(|s| matches!(s, Shape::Table { table: t, kind, .. } if t == table && kind.label() == verb))
    })
}

fn short(sql: &str) -> String {
    let one_line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 120 {
        format!("{}...", one_line.chars().take(117).collect::<String>())
    } else {
        one_line
    }
}

fn dedup(mut v: Vec<usize>) -> Vec<usize> {
    v.dedup();
    v
}

fn call_of(
    op: &Operation,
    params: serde_json::Map<String, Value>,
    statements: Vec<usize>,
    changes: Vec<usize>,
) -> OperationCall {
    OperationCall {
        name: op.name.clone(),
        version: op.version,
        params,
        statements,
        changes,
    }
}

/// The value a source holds, given the statement's bind parameters and lifted constants.
fn resolve(source: &Source, step: &Step) -> Option<SqlValue> {
    Some(match source {
        Source::Literal(v) => v.clone(),
        Source::Bind(n) if *n >= LITERAL_BASE => step.literals.get(n - LITERAL_BASE)?.clone(),
        Source::Bind(n) => match step.params.get(n - 1)? {
            Some(text) => SqlValue::Text(text.clone()),
            None => SqlValue::Null,
        },
        Source::Array(items) => SqlValue::Array(
            items
                .iter()
                .map(|s| resolve(s, step))
                .collect::<Option<_>>()?,
        ),
        Source::Unsupported => return None,
    })
}

/// The operation with the most steps that matches at the start of `steps`, with its placeholder values.
fn longest_match<'c>(
    catalog: &'c Catalog,
    steps: &[Step],
) -> Option<(&'c Operation, usize, HashMap<String, SqlValue>)> {
    let first = steps.first()?;
    let mut best: Option<(&Operation, usize, HashMap<String, SqlValue>)> = None;
    for hit in first.analysis.hits.iter().filter(|h| h.step == 0) {
        let op = &catalog.operations[hit.op];
        for shape in &op.shapes {
            let Shape::Statements(templates) = shape else {
                continue;
            };
            let len = templates.len();
            if len > steps.len() || best.as_ref().is_some_and(|b| b.1 >= len) {
                continue;
            }
            let mut values: HashMap<String, SqlValue> = HashMap::new();
            let ok = templates.iter().enumerate().all(|(j, t)| {
                let s = &steps[j];
                s.analysis
                    .hits
                    .iter()
                    .filter(|h| h.op == hit.op && h.step == j)
                    .any(|h| {
                        let mut trial = values.clone();
                        let consistent =
                            t.placeholders.iter().zip(&h.sources).all(|(name, source)| {
                                let Some(v) = resolve(source, s) else {
                                    return false;
                                };
                                match trial.get(name) {
                                    Some(existing) => *existing == v,
                                    None => {
                                        trial.insert(name.clone(), v);
                                        true
                                    }
                                }
                            });
                        if consistent {
                            values = trial;
                        }
                        consistent
                    })
            });
            if ok {
                best = Some((op, len, values));
            }
        }
    }
    best
}

fn invoked<'c>(
    catalog: &'c Catalog,
    inv: &Invocation,
    step: &Step,
    generated: &mut Generated,
) -> Result<(&'c Operation, OperationCall), PgError> {
    let op = match &inv.op {
        Ok(i) => &catalog.operations[*i],
        Err(name) => return Err(unknown_operation(catalog, name)),
    };
    let mut values = HashMap::new();
    for (name, source) in &inv.args {
        if op.param(name).is_none() {
            return Err(invalid(
                op,
                name,
                &Problem::Constraint("is not a parameter of this operation".into()),
            ));
        }
        let value = resolve(source, step).ok_or_else(|| {
            invalid(
                op,
                name,
                &Problem::Constraint("must be a literal or a bind parameter".into()),
            )
        })?;
        values.insert(name.clone(), value);
    }
    let params = build(op, |p| values.get(&p.name).cloned(), generated)?;
    Ok((op, call_of(op, params, vec![step.statement], Vec::new())))
}

/// The error for `CALL waly.<name>(...)` naming an operation the catalog does not have.
pub fn unknown_operation(catalog: &Catalog, name: &str) -> PgError {
    let names: Vec<&str> = catalog.operations.iter().map(|o| o.name.as_str()).collect();
    PgError::error(
        SqlState("42883"),
        format!("operation {name} does not exist"),
    )
    .with_detail(rejection_detail())
    .with_hint(if names.is_empty() {
        "The operations catalog is empty.".to_owned()
    } else {
        format!("Declared operations: {}.", names.join(", "))
    })
}

/// Validated parameters from statement values, the row images (`from_row`) and defaults.
fn build(
    op: &Operation,
    mut given: impl FnMut(&Param) -> Option<SqlValue>,
    generated: &mut Generated,
) -> Result<serde_json::Map<String, Value>, PgError> {
    let mut out = serde_json::Map::new();
    for p in &op.params {
        let value = match given(p) {
            Some(v) => p.from_sql(&v),
            None => match &p.from_row {
                Some(spec) => match generated.take(spec) {
                    Some((v, raw)) => p.from_json(&v, Some(&raw)),
                    None => p.absent(),
                },
                None => p.absent(),
            },
        };
        out.insert(
            p.name.clone(),
            value.map_err(|problem| invalid(op, &p.name, &problem))?,
        );
    }
    Ok(out)
}

type Image<'a> = BTreeMap<&'a str, &'a RawValue>;

fn image(json: &RawValue) -> Option<Image<'_>> {
    serde_json::from_str(json.get()).ok()
}

fn row_change(
    change: &Change,
) -> Option<(TableName, RowKind, Option<&RawValue>, Option<&RawValue>)> {
    Some(match change {
        Change::Insert {
            schema, table, new, ..
        } => (
            (schema.clone(), table.clone()),
            RowKind::Insert,
            None,
            Some(&**new),
        ),
        Change::Update {
            schema,
            table,
            old,
            new,
            ..
        } => (
            (schema.clone(), table.clone()),
            RowKind::Update,
            Some(&**old),
            Some(&**new),
        ),
        Change::Delete {
            schema, table, old, ..
        } => (
            (schema.clone(), table.clone()),
            RowKind::Delete,
            Some(&**old),
            None,
        ),
        _ => return None,
    })
}

fn table_shape_call(
    catalog: &Catalog,
    table: &TableName,
    kind: RowKind,
    old: Option<&RawValue>,
    new: Option<&RawValue>,
    index: usize,
    generated: &mut Generated,
) -> Result<Option<OperationCall>, PgError> {
    let old = old.and_then(image);
    let new = new.and_then(image);
    let Some(row) = new.as_ref().or(old.as_ref()) else {
        return Ok(None);
    };
    for op in &catalog.operations {
        for shape in &op.shapes {
            let Shape::Table {
                table: t,
                kind: k,
                columns,
            } = shape
            else {
                continue;
            };
            if t != table || *k != kind {
                continue;
            }
            if let (Some(o), Some(n)) = (&old, &new) {
                let changed_unmapped = n.iter().any(|(col, v)| {
                    o.get(col).map(|ov| ov.get()) != Some(v.get())
                        && !columns.iter().any(|(c, _)| c == col)
                });
                if changed_unmapped {
                    continue;
                }
            }
            let mut out = serde_json::Map::new();
            for (pi, p) in op.params.iter().enumerate() {
                let column = columns
                    .iter()
                    .find(|(_, i)| *i == pi)
                    .map(|(c, _)| c.as_str());
                let value = match column.and_then(|c| row.get(c)) {
                    Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
                        Ok(v) => p.from_json(&v, Some(raw.get())),
                        Err(_) => p.absent(),
                    },
                    None => match &p.from_row {
                        Some(spec) => match generated.take(spec) {
                            Some((v, raw)) => p.from_json(&v, Some(&raw)),
                            None => p.absent(),
                        },
                        None => p.absent(),
                    },
                };
                out.insert(
                    p.name.clone(),
                    value.map_err(|problem| invalid(op, &p.name, &problem))?,
                );
            }
            return Ok(Some(call_of(op, out, Vec::new(), vec![index])));
        }
    }
    Ok(None)
}

/// Values Postgres generated, read from the row images in order: each `from_row` takes the next insert
/// (or, failing that, update) of its table.
struct Generated<'a> {
    changes: &'a [Change],
    cursors: HashMap<(String, String), usize>,
}

impl<'a> Generated<'a> {
    fn new(changes: &'a [Change]) -> Self {
        Self {
            changes,
            cursors: HashMap::new(),
        }
    }

    /// (value, its JSON text).
    fn take(
        &mut self,
        (schema, table, column): &(String, String, String),
    ) -> Option<(Value, String)> {
        let cursor = self
            .cursors
            .entry((schema.clone(), table.clone()))
            .or_insert(0);
        for (i, change) in self.changes.iter().enumerate().skip(*cursor) {
            let new = match change {
                Change::Insert {
                    schema: s,
                    table: t,
                    new,
                    ..
                }
                | Change::Update {
                    schema: s,
                    table: t,
                    new,
                    ..
                } if s == schema && t == table => new,
                _ => continue,
            };
            *cursor = i + 1;
            let row = image(new)?;
            let raw = row.get(column.as_str())?;
            return Some((serde_json::from_str(raw.get()).ok()?, raw.get().to_owned()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::operations::statement::analyse;

    fn catalog() -> Catalog {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/operations.yaml");
        Catalog::load(std::path::Path::new(path)).unwrap()
    }

    fn statement(sql: &str, params: &[&str]) -> Statement {
        Statement {
            sql: sql.into(),
            params: params.iter().map(|p| Some((*p).to_owned())).collect(),
        }
    }

    fn changes(json: &str) -> Vec<Change> {
        serde_json::from_str(json).unwrap()
    }

    fn run(
        c: &Catalog,
        statements: &[Statement],
        changes: &[Change],
    ) -> Result<Vec<OperationCall>, PgError> {
        let analyses: Vec<Bound> = statements
            .iter()
            .map(|s| Bound {
                analysis: Arc::new(analyse(c, &s.sql)),
                literals: Vec::new(),
            })
            .collect();
        recognize(c, statements, &analyses, changes)
    }

    const TRANSFER_CHANGES: &str = r#"[
        {"kind":"update","schema":"public","table":"accounts","pk":{"id":1},"old":{"id":1,"balance":10.00},"new":{"id":1,"balance":7.50}},
        {"kind":"update","schema":"public","table":"accounts","pk":{"id":2},"old":{"id":2,"balance":0.00},"new":{"id":2,"balance":2.50}},
        {"kind":"insert","schema":"public","table":"transfers","pk":{"id":9},"new":{"id":9,"from_account":1,"to_account":2,"amount":2.50,"memo":null}}
    ]"#;

    #[test]
    fn three_statements_with_a_read_between_are_one_transfer() {
        let c = catalog();
        let statements = [
            statement(
                "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
                &["2.50", "1"],
            ),
            statement("SELECT balance FROM accounts WHERE id = 1", &[]),
            statement(
                "update accounts set balance = balance + 2.50 where id = 2",
                &[],
            ),
            statement(
                "INSERT INTO transfers (from_account, to_account, amount, memo) VALUES ($1, $2, $3, NULL)",
                &["1", "2", "2.50"],
            ),
        ];
        let calls = run(&c, &statements, &changes(TRANSFER_CHANGES)).unwrap();
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0].name, "TRANSFER_FUNDS");
        assert_eq!(calls[0].statements, [0, 2, 3]);
        assert_eq!(
            serde_json::Value::Object(calls[0].params.clone()),
            serde_json::json!({"from_account": 1, "to_account": 2, "amount": "2.50", "memo": null, "transfer_id": 9})
        );
    }

    #[test]
    fn different_amounts_in_the_steps_are_not_a_transfer() {
        let c = catalog();
        let statements = [
            statement(
                "UPDATE accounts SET balance = balance - 2.50 WHERE id = 1",
                &[],
            ),
            statement(
                "UPDATE accounts SET balance = balance + 3 WHERE id = 2",
                &[],
            ),
            statement(
                "INSERT INTO transfers (from_account, to_account, amount, memo) VALUES (1, 2, 2.50, NULL)",
                &[],
            ),
        ];
        let e = run(&c, &statements, &changes(TRANSFER_CHANGES)).unwrap_err();
        assert_eq!(e.code.0, "42501", "{e:?}");
    }

    #[test]
    fn a_table_shape_update_must_change_only_mapped_columns() {
        let c = catalog();
        let close = changes(
            r#"[{"kind":"update","schema":"public","table":"accounts","pk":{"id":3},
                 "old":{"id":3,"balance":0.00,"closed_at":null},"new":{"id":3,"balance":0.00,"closed_at":"2026-11-23T10:00:00+00:00"}}]"#,
        );
        let sql = [statement(
            "UPDATE accounts SET closed_at = now() WHERE id = 3",
            &[],
        )];
        let calls = run(&c, &sql, &close).unwrap();
        assert_eq!(calls[0].name, "CLOSE_ACCOUNT");
        assert_eq!(calls[0].changes, [0]);
        let both = changes(
            r#"[{"kind":"update","schema":"public","table":"accounts","pk":{"id":3},
                 "old":{"id":3,"balance":5.00,"closed_at":null},"new":{"id":3,"balance":0.00,"closed_at":"2026-11-23T10:00:00+00:00"}}]"#,
        );
        let e = run(&c, &sql, &both).unwrap_err();
        assert!(
            e.message.contains("changing balance, closed_at"),
            "{}",
            e.message
        );
    }

    #[test]
    fn unmatched_writes_to_tables_without_a_policy_are_raw() {
        let c = catalog();
        let notes = changes(
            r#"[{"kind":"insert","schema":"public","table":"notes","pk":null,"new":{"body":"x"}}]"#,
        );
        let calls = run(
            &c,
            &[statement("INSERT INTO notes VALUES ('x')", &[])],
            &notes,
        )
        .unwrap();
        assert!(calls.is_empty());
    }
}
