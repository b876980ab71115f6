//! Upcasting: a logged call of an older version read as the current version, one step at a time
//! (rename, default, computed value, drop), then checked against the current parameters.
//!
//! A computed value is a SQL expression the caller evaluates (replay sends it to the target Postgres);
//! this module only builds the `SELECT` and applies the answer. It never touches the network.

use serde_json::{Map, Value};

use super::catalog::{Operation, Upcaster};
use super::recognize::invalid;
use super::template;
use crate::wire::PgError;

#[derive(Debug, thiserror::Error)]
pub enum UpcastError {
    #[error(
        "operation {name} v{version} is newer than the catalog's v{current}; upgrade the catalog before replaying"
    )]
    Newer {
        name: String,
        version: u32,
        current: u32,
    },
    #[error("operation {name} v{version} has no upcaster to v{next}; add one to the catalog")]
    NoUpcaster {
        name: String,
        version: u32,
        next: u32,
    },
    #[error("operation {name}: computing {param} from v{version}: {reason}")]
    Compute {
        name: String,
        version: u32,
        param: String,
        reason: String,
    },
    #[error("{}", .0.message)]
    Invalid(PgError),
}

/// The upcasters that lead from `version` to the operation's current version, in order.
pub fn chain(op: &Operation, version: u32) -> Result<Vec<&Upcaster>, UpcastError> {
    if version > op.version {
        return Err(UpcastError::Newer {
            name: op.name.clone(),
            version,
            current: op.version,
        });
    }
    (version..op.version)
        .map(|v| {
            op.upcasters
                .iter()
                .find(|u| u.from == v)
                .ok_or(UpcastError::NoUpcaster {
                    name: op.name.clone(),
                    version: v,
                    next: v + 1,
                })
        })
        .collect()
}

/// Applies renames, defaults and drops of one step; returns the `SELECT`s of its computed values, each
/// to be evaluated to one JSON value and stored with [`Map::insert`] under its name.
pub fn step(up: &Upcaster, params: &mut Map<String, Value>) -> Vec<(String, String)> {
    for (old, new) in &up.rename {
        if let Some(v) = params.remove(old) {
            params.insert(new.clone(), v);
        }
    }
    for (name, value) in &up.default {
        params.entry(name.clone()).or_insert_with(|| value.clone());
    }
    let computed = up
        .compute
        .iter()
        .map(|(name, pieces)| {
            let expr = template::render(pieces, |p| {
                json_literal(params.get(p).unwrap_or(&Value::Null))
            });
            (name.clone(), format!("SELECT to_jsonb(({expr}))::text"))
        })
        .collect();
    for name in &up.drop {
        params.remove(name);
    }
    computed
}

/// Checks upcast values against the current definition, giving canonical values.
pub fn finish(
    op: &Operation,
    params: &Map<String, Value>,
) -> Result<Map<String, Value>, UpcastError> {
    let mut out = Map::new();
    for p in &op.params {
        let value = match params.get(&p.name) {
            Some(v) if !v.is_null() => p.from_json(v, None),
            _ => p.absent(),
        };
        out.insert(
            p.name.clone(),
            value.map_err(|problem| UpcastError::Invalid(invalid(op, &p.name, &problem)))?,
        );
    }
    Ok(out)
}

/// A JSON value as a SQL literal of its natural type, for computed values' expressions.
pub fn json_literal(value: &Value) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    match value {
        Value::Null => "NULL".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        Value::Array(items)
            if !items.is_empty() && items.iter().all(|v| !v.is_object() && !v.is_array()) =>
        {
            format!(
                "ARRAY[{}]",
                items
                    .iter()
                    .map(json_literal)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        other => format!("{}::jsonb", quote(&other.to_string())),
    }
}
