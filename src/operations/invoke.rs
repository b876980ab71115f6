//! Direct invocation: `CALL waly.<operation>(name => value, ...)` becomes the operation's own SQL before
//! it reaches Postgres, with each argument in its placeholder's place (a literal, checked now, or the
//! client's bind parameter `$n`, checked at commit). The statement recorded is the client's CALL.
//!
//! This module only rewrites text; the session decides where the text goes.

use super::catalog::Catalog;
use super::params::{Problem, sql_literal};
use super::recognize::{invalid, unknown_operation};
use super::statement::Analysis;
use super::template::{self, Source};
use crate::wire::{PgError, SqlState};

/// What to send to Postgres in place of an invocation.
#[derive(Debug)]
pub enum Rewrite {
    Sql(String),
    /// The invocation is wrong; report this error in its place.
    Fail(PgError),
}

/// The rewrite of `analysis` when it is one direct invocation; `None` for anything else. With bind
/// parameters, a wrong invocation is left as it is (Postgres reports the unknown procedure, or the
/// commit reports the invalid value): replacing it would make the client's Bind fail instead.
pub fn rewrite(catalog: &Catalog, analysis: &Analysis) -> Option<Rewrite> {
    let [part] = analysis.parts.as_slice() else {
        return None;
    };
    let inv = part.invocation.as_ref()?;
    let binds = inv.args.iter().any(|(_, s)| has_bind(s));
    let fail = |e: PgError| (!binds).then_some(Rewrite::Fail(e));
    let op = match &inv.op {
        Ok(i) => &catalog.operations[*i],
        Err(name) => return fail(unknown_operation(catalog, name)),
    };
    if inv.positional > 0 {
        return fail(
            PgError::error(
                SqlState("42601"),
                format!("operation {} takes named arguments only", op.name),
            )
            .with_hint(format!(
                "CALL waly.{}(name => value, ...)",
                op.name.to_ascii_lowercase()
            )),
        );
    }
    let Some((_, pieces)) = &op.sql else {
        return fail(
            PgError::error(
                SqlState::FEATURE_NOT_SUPPORTED,
                format!(
                    "operation {} cannot be invoked directly: it declares no sql",
                    op.name
                ),
            )
            .with_hint(format!("Add `sql:` to {} in {}.", op.name, catalog.source)),
        );
    };
    for (name, _) in &inv.args {
        if op.param(name).is_none() {
            return fail(invalid(
                op,
                name,
                &Problem::Constraint("is not a parameter of this operation".into()),
            ));
        }
    }
    let mut rendered = std::collections::HashMap::new();
    for p in &op.params {
        let given = inv.args.iter().find(|(n, _)| *n == p.name).map(|(_, s)| s);
        let text = match given {
            Some(source) => match render_source(source, &p.kind, &|v| p.from_sql(v)) {
                Ok(text) => text,
                Err(problem) => return fail(invalid(op, &p.name, &problem)),
            },
            None if p.from_row.is_some() => sql_literal(&p.kind, &serde_json::Value::Null),
            None => match p.absent() {
                Ok(v) => sql_literal(&p.kind, &v),
                Err(problem) => return fail(invalid(op, &p.name, &problem)),
            },
        };
        rendered.insert(p.name.clone(), text);
    }
    Some(Rewrite::Sql(template::render(pieces, |name| {
        format!(
            "({})",
            rendered.get(name).cloned().unwrap_or_else(|| "NULL".into())
        )
    })))
}

fn has_bind(source: &Source) -> bool {
    match source {
        Source::Bind(_) => true,
        Source::Array(items) => items.iter().any(has_bind),
        _ => false,
    }
}

type Check<'a> = &'a dyn Fn(&super::params::SqlValue) -> Result<serde_json::Value, Problem>;

fn render_source(
    source: &Source,
    kind: &super::params::ParamType,
    check: Check,
) -> Result<String, Problem> {
    match source {
        Source::Bind(n) => Ok(format!("${n}::{}", kind.sql_type())),
        Source::Literal(v) => Ok(sql_literal(kind, &check(v)?)),
        Source::Array(items) if !items.iter().any(has_bind) => {
            let values = items
                .iter()
                .map(|s| match s {
                    Source::Literal(v) => Ok(v.clone()),
                    _ => Err(Problem::Constraint(
                        "must be a literal or a bind parameter".into(),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(sql_literal(
                kind,
                &check(&super::params::SqlValue::Array(values))?,
            ))
        }
        Source::Array(items) => {
            let super::params::ParamType::Array(item) = kind else {
                return Err(Problem::Type {
                    expected: kind.name(),
                    got: "an array".into(),
                });
            };
            let parts = items
                .iter()
                .map(|s| render_source(s, item, &|v| super::params::sql_to_json(item, v)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(format!("ARRAY[{}]::{}", parts.join(", "), kind.sql_type()))
        }
        Source::Unsupported => Err(Problem::Constraint(
            "must be a literal or a bind parameter".into(),
        )),
    }
}
