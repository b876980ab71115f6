//! Statement templates: SQL with `:name` placeholders, matched against client statements on the parse
//! tree, so that spacing, case, comments, literals and bind parameters all match alike.
//!
//! A template is parsed once with its placeholders as `$n`; a client statement is parsed once per
//! distinct text (the caller caches). Matching walks both trees: they must be equal everywhere except
//! where the template has a placeholder, and there the client may have a literal, a bind parameter, an
//! array of those, or a cast of any of them. Locations are ignored. This module never touches the
//! network.

use pg_query::NodeEnum;
use serde_json::Value;

use super::params::SqlValue;

/// Where a value in a client statement comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Literal(SqlValue),
    /// Bind parameter `$n` (1-based).
    Bind(usize),
    /// An array whose elements are literals or bind parameters.
    Array(Vec<Source>),
    /// An expression that is not a value (a direct invocation argument such as `now()`).
    Unsupported,
}

/// A piece of SQL text with `:name` placeholders, split for substitution.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    /// The placeholder's name.
    Placeholder(String),
}

/// Splits `sql` at its `:name` placeholders. `::` casts, string literals, quoted identifiers, comments
/// and dollar-quoted bodies are left alone.
pub fn split_placeholders(sql: &str) -> Vec<Piece> {
    let bytes = sql.as_bytes();
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut i = 0;
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    while i < bytes.len() {
        let b = bytes[i];
        let skip_to = |from: usize, end: &str| {
            sql[from..]
                .find(end)
                .map_or(bytes.len(), |p| from + p + end.len())
        };
        let next = match b {
            b'\'' | b'"' => skip_quoted(bytes, i),
            b'-' if bytes.get(i + 1) == Some(&b'-') => skip_to(i, "\n"),
            b'/' if bytes.get(i + 1) == Some(&b'*') => skip_to(i + 2, "*/"),
            b'$' => match dollar_tag(sql, i) {
                Some(tag) => skip_to(i + tag.len(), tag),
                None => i + 1,
            },
            b':' if bytes.get(i + 1) == Some(&b':') => i + 2,
            b':' if i > 0 && bytes[i - 1] == b':' => i + 1,
            b':' if bytes
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_') =>
            {
                let mut end = i + 1;
                while end < bytes.len() && ident(bytes[end]) {
                    end += 1;
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Placeholder(sql[i + 1..end].to_owned()));
                i = end;
                continue;
            }
            _ => sql[i..].chars().next().map_or(i + 1, |c| i + c.len_utf8()),
        };
        text.push_str(&sql[i..next]);
        i = next;
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

fn skip_quoted(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

fn dollar_tag(sql: &str, start: usize) -> Option<&str> {
    let rest = &sql[start + 1..];
    let end = rest.find('$')?;
    let tag = &rest[..end];
    tag.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        .then(|| &sql[start..start + end + 2])
        .filter(|t| !t[1..].starts_with(|c: char| c.is_ascii_digit()))
}

/// Substitutes each placeholder with `render(name)`.
pub fn render(pieces: &[Piece], mut value: impl FnMut(&str) -> String) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Placeholder(name) => out.push_str(&value(name)),
        }
    }
    out
}

/// A compiled template.
#[derive(Debug, Clone)]
pub struct Template {
    pub text: String,
    /// The parse tree of the one statement, without locations.
    tree: Value,
    /// Placeholder names, by `$n - 1`.
    pub placeholders: Vec<String>,
}

impl Template {
    /// Parses a template; it must be exactly one statement.
    pub fn compile(text: &str) -> Result<Template, String> {
        let mut placeholders: Vec<String> = Vec::new();
        let positional = render(&split_placeholders(text), |name| {
            let n = match placeholders.iter().position(|p| p == name) {
                Some(i) => i + 1,
                None => {
                    placeholders.push(name.to_owned());
                    placeholders.len()
                }
            };
            format!("${n}")
        });
        let parsed = pg_query::parse(&positional, 0)
            .map_err(|e| format!("the template does not parse: {e}"))?;
        let stmts = &parsed.protobuf.stmts;
        if stmts.len() != 1 {
            return Err(format!(
                "a template must be one statement, this one has {}",
                stmts.len()
            ));
        }
        let tree = statement_tree(stmts[0].stmt.as_deref())
            .ok_or_else(|| "the template is empty".to_owned())?;
        Ok(Template {
            text: text.to_owned(),
            tree,
            placeholders,
        })
    }

    /// Matches one client statement's tree; on success, the source of each placeholder (by index in
    /// [`Self::placeholders`]).
    pub fn matches(&self, statement: &Value) -> Option<Vec<Source>> {
        self.matches_checking(statement, &mut false)
    }

    /// [`Self::matches`] on a tree whose constants were lifted into parameters numbered from
    /// [`super::literals::LITERAL_BASE`]: sets `dependent` when the outcome depends on a lifted value
    /// (the template has a constant there), which only the statement's own text can decide.
    pub fn matches_checking(&self, statement: &Value, dependent: &mut bool) -> Option<Vec<Source>> {
        let mut found: Vec<Option<Source>> = vec![None; self.placeholders.len()];
        walk(&self.tree, statement, &mut found, dependent).then_some(())?;
        found.into_iter().collect()
    }
}

/// A statement's parse tree as JSON without locations, for [`Template::matches`].
pub fn statement_tree(node: Option<&pg_query::protobuf::Node>) -> Option<Value> {
    let mut tree = serde_json::to_value(node?).ok()?;
    strip_locations(&mut tree);
    Some(tree)
}

fn strip_locations(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|k, _| k != "location" && k != "stmt_location" && k != "stmt_len");
            map.values_mut().for_each(strip_locations);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_locations),
        _ => {}
    }
}

/// A `{"node": {"ParamRef": {...}}}` wrapper's inner node, with its type name.
fn node_of(v: &Value) -> Option<(&str, &Value)> {
    let inner = v.as_object()?.get("node")?.as_object()?;
    if inner.len() != 1 {
        return None;
    }
    inner.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn walk(
    template: &Value,
    client: &Value,
    found: &mut [Option<Source>],
    dependent: &mut bool,
) -> bool {
    if let Some(("ParamRef", p)) = node_of(template) {
        let Some(n) = p.get("number").and_then(Value::as_u64) else {
            return false;
        };
        let Some(source) = source_of(client) else {
            return false;
        };
        let slot = &mut found[n as usize - 1];
        return match slot {
            Some(existing) => *existing == source,
            None => {
                *slot = Some(source);
                true
            }
        };
    }
    if let Some(("ParamRef", p)) = node_of(client)
        && p.get("number")
            .and_then(Value::as_u64)
            .is_some_and(|n| n as usize >= super::literals::LITERAL_BASE)
    {
        *dependent = true;
        return false;
    }
    match (template, client) {
        (Value::Object(t), Value::Object(c)) => {
            t.len() == c.len()
                && t.iter()
                    .all(|(k, tv)| c.get(k).is_some_and(|cv| walk(tv, cv, found, dependent)))
        }
        (Value::Array(t), Value::Array(c)) => {
            t.len() == c.len()
                && t.iter()
                    .zip(c)
                    .all(|(tv, cv)| walk(tv, cv, found, dependent))
        }
        (t, c) => t == c,
    }
}

/// What a parse-tree node holds, if it is a value (see [`Source`]).
pub fn source_of_node(node: &pg_query::protobuf::Node) -> Option<Source> {
    source_of(&serde_json::to_value(node).ok()?)
}

/// What a client expression at a placeholder's place holds, if it is a value.
fn source_of(client: &Value) -> Option<Source> {
    let (kind, node) = node_of(client)?;
    match kind {
        "ParamRef" => Some(Source::Bind(node.get("number")?.as_u64()? as usize)),
        "AConst" => Some(Source::Literal(const_value(node)?)),
        "TypeCast" => source_of(node.get("arg")?),
        "AArrayExpr" => node
            .get("elements")?
            .as_array()?
            .iter()
            .map(source_of)
            .collect::<Option<Vec<_>>>()
            .map(Source::Array),
        _ => None,
    }
}

fn const_value(a_const: &Value) -> Option<SqlValue> {
    if a_const.get("isnull").and_then(Value::as_bool) == Some(true) {
        return Some(SqlValue::Null);
    }
    let (kind, val) = a_const.get("val")?.as_object()?.iter().next()?;
    let text = match kind.as_str() {
        "Ival" => val
            .get("ival")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string(),
        "Fval" => val.get("fval")?.as_str()?.to_owned(),
        "Sval" => val.get("sval")?.as_str()?.to_owned(),
        "Boolval" => val
            .get("boolval")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string(),
        "Bsval" => val.get("bsval")?.as_str()?.to_owned(),
        _ => return None,
    };
    Some(SqlValue::Text(text))
}

/// The table a write statement changes, and how: `(schema, table, kind)`. Unqualified names are taken
/// as `public` (waly does not follow `search_path`).
pub fn write_target(node: &NodeEnum) -> Option<(String, String, &'static str)> {
    let of = |r: &Option<pg_query::protobuf::RangeVar>, kind| {
        r.as_ref()
            .map(|r| (schema_or_public(&r.schemaname), r.relname.clone(), kind))
    };
    match node {
        NodeEnum::InsertStmt(s) => of(&s.relation, "insert"),
        NodeEnum::UpdateStmt(s) => of(&s.relation, "update"),
        NodeEnum::DeleteStmt(s) => of(&s.relation, "delete"),
        NodeEnum::MergeStmt(s) => of(&s.relation, "merge"),
        NodeEnum::CopyStmt(s) if s.is_from => of(&s.relation, "copy"),
        NodeEnum::TruncateStmt(s) => s.relations.first().and_then(|n| match n.node.as_ref()? {
            NodeEnum::RangeVar(r) => Some((
                schema_or_public(&r.schemaname),
                r.relname.clone(),
                "truncate",
            )),
            _ => None,
        }),
        _ => None,
    }
}

fn schema_or_public(schema: &str) -> String {
    if schema.is_empty() {
        "public".into()
    } else {
        schema.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(sql: &str) -> Value {
        let parsed = pg_query::parse(sql, 0).unwrap();
        statement_tree(parsed.protobuf.stmts[0].stmt.as_deref()).unwrap()
    }

    #[test]
    fn placeholders_are_found_outside_casts_strings_and_comments() {
        let pieces = split_placeholders("SELECT :a::int, ':b', \"c:d\" -- :e\n, $$ :f $$, :g_1");
        let names: Vec<_> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Placeholder(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(names, ["a", "g_1"]);
        assert_eq!(
            render(&pieces, |n| format!("<{n}>")),
            "SELECT <a>::int, ':b', \"c:d\" -- :e\n, $$ :f $$, <g_1>"
        );
    }

    #[test]
    fn literals_and_bind_parameters_match_alike() {
        let t =
            Template::compile("UPDATE accounts SET balance = balance - :amount WHERE id = :from")
                .unwrap();
        assert_eq!(t.placeholders, ["amount", "from"]);
        let literal = t
            .matches(&tree(
                "update ACCOUNTS  set balance=balance-10.50 where id=7 /* x */",
            ))
            .unwrap();
        assert_eq!(
            literal,
            [
                Source::Literal(SqlValue::Text("10.50".into())),
                Source::Literal(SqlValue::Text("7".into()))
            ]
        );
        let bound = t
            .matches(&tree(
                "UPDATE accounts SET balance = balance - $2::numeric WHERE id = $1",
            ))
            .unwrap();
        assert_eq!(bound, [Source::Bind(2), Source::Bind(1)]);
        assert!(
            t.matches(&tree(
                "UPDATE accounts SET balance = balance + 1 WHERE id = 7"
            ))
            .is_none()
        );
        assert!(
            t.matches(&tree(
                "UPDATE accounts SET balance = balance - 1 WHERE id = 7 AND true"
            ))
            .is_none()
        );
        assert!(
            t.matches(&tree(
                "UPDATE accounts SET balance = balance - 1 WHERE id = other"
            ))
            .is_none()
        );
    }

    #[test]
    fn a_placeholder_used_twice_needs_one_value() {
        let t = Template::compile("INSERT INTO t (a, b) VALUES (:x, :x)").unwrap();
        assert!(
            t.matches(&tree("INSERT INTO t (a, b) VALUES (1, 1)"))
                .is_some()
        );
        assert!(
            t.matches(&tree("INSERT INTO t (a, b) VALUES (1, 2)"))
                .is_none()
        );
    }

    #[test]
    fn arrays_and_nulls_are_values() {
        let t = Template::compile("INSERT INTO cars (vin, years) VALUES (:vin, :years)").unwrap();
        let s = t
            .matches(&tree(
                "INSERT INTO cars (vin, years) VALUES (NULL, ARRAY[2019, $1])",
            ))
            .unwrap();
        assert_eq!(s[0], Source::Literal(SqlValue::Null));
        assert_eq!(
            s[1],
            Source::Array(vec![
                Source::Literal(SqlValue::Text("2019".into())),
                Source::Bind(1)
            ])
        );
    }
}
