//! Lifting a statement's constants out of its text, so that statements sent with literal values (the
//! simple protocol: psql, client-side binding) share one analysis, as prepared statements do:
//! `UPDATE accounts SET balance = balance - 25.00 WHERE id = 1` becomes the key
//! `UPDATE accounts SET balance = balance - $100000 WHERE id = $100001` and the values `25.00`, `1`.
//!
//! Uses the classification cache's scanner ([`crate::classify::constants`]) and is as careful: it gives
//! up on whatever it cannot lift without changing the parse tree's shape: a constant with a prefix such
//! as `E'...'`, hexadecimal or underscored numbers. A number after a unary minus, which Postgres folds
//! into one negative constant, is lifted here and caught on the tree ([`unary_minus_on_lifted`]).
//! No I/O.

use super::params::SqlValue;
use crate::classify::{ConstantKind, constants};

/// The number of the first lifted constant's parameter; above Postgres' 65535 bind parameters.
pub const LITERAL_BASE: usize = 100_000;

/// A text with its constants lifted.
#[derive(Debug, PartialEq)]
pub struct Lifted {
    pub key: String,
    pub values: Vec<SqlValue>,
}

/// `None` when there is nothing to lift, or the scanner cannot be sure of the text.
pub fn lift(sql: &str) -> Option<Lifted> {
    let bytes = sql.as_bytes();
    let mut key = String::with_capacity(sql.len() + 16);
    let mut values = Vec::new();
    let mut at = 0;
    for c in constants(sql)? {
        let text = &sql[c.start..c.end];
        match c.kind {
            ConstantKind::String => {
                let prefixed = c.start > 0
                    && matches!(bytes[c.start - 1], b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'$' | b'&');
                if prefixed {
                    return None;
                }
                values.push(SqlValue::Text(text[1..text.len() - 1].replace("''", "'")));
            }
            ConstantKind::Number => {
                let plain = text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
                if !plain {
                    return None;
                }
                values.push(SqlValue::Text(text.to_owned()));
            }
        }
        key.push_str(&sql[at..c.start]);
        key.push_str(&format!("${}", LITERAL_BASE + values.len() - 1));
        at = c.end;
    }
    if values.is_empty() {
        return None;
    }
    key.push_str(&sql[at..]);
    Some(Lifted { key, values })
}

/// True when a lifted tree applies a unary minus to a lifted constant: Postgres would have folded
/// `-5` into one constant, so this tree is not the text's own.
pub fn unary_minus_on_lifted(tree: &serde_json::Value) -> bool {
    use serde_json::Value;
    let lifted = |v: &Value| {
        v.pointer("/node/ParamRef/number")
            .and_then(Value::as_u64)
            .is_some_and(|n| n as usize >= LITERAL_BASE)
    };
    match tree {
        Value::Object(map) => {
            let unary_minus = map.get("AExpr").is_some_and(|e| {
                e.get("lexpr").is_none_or(Value::is_null)
                    && e.get("rexpr").is_some_and(lifted)
                    && e.pointer("/name/0/node/String/sval")
                        .and_then(Value::as_str)
                        == Some("-")
            });
            unary_minus || map.values().any(unary_minus_on_lifted)
        }
        Value::Array(items) => items.iter().any(unary_minus_on_lifted),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> SqlValue {
        SqlValue::Text(s.into())
    }

    #[test]
    fn constants_become_high_numbered_parameters() {
        let l = lift("UPDATE t SET a = a - 25.00, b = 'it''s' WHERE id = 1 AND c = $1").unwrap();
        assert_eq!(
            l.key,
            "UPDATE t SET a = a - $100000, b = $100001 WHERE id = $100002 AND c = $1"
        );
        assert_eq!(l.values, [text("25.00"), text("it's"), text("1")]);
    }

    #[test]
    fn what_would_change_the_tree_is_not_lifted() {
        let tree = |sql: &str| {
            let parsed = pg_query::parse(&lift(sql).unwrap().key, 0).unwrap();
            super::super::template::statement_tree(parsed.protobuf.stmts[0].stmt.as_deref())
                .unwrap()
        };
        assert!(unary_minus_on_lifted(&tree(
            "UPDATE t SET a = -5 WHERE id = 2"
        )));
        assert!(unary_minus_on_lifted(&tree(
            "UPDATE t SET a = (- 5) WHERE id = 2"
        )));
        assert!(!unary_minus_on_lifted(&tree(
            "UPDATE t SET a = a - 5 WHERE id = 2"
        )));
        assert_eq!(lift("SELECT E'x'"), None);
        assert_eq!(lift("SELECT x'1f'"), None);
        assert_eq!(lift("SELECT 0x1f"), None);
        assert_eq!(lift("SELECT 1_000"), None);
        assert_eq!(lift("SELECT a FROM t"), None);
        assert_eq!(lift("DO $$ BEGIN END $$"), None);
    }
}
