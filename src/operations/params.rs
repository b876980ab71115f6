//! Typed parameters: what values an operation accepts, and the one canonical JSON form of each value.
//!
//! A value arrives as SQL text (a literal in the statement, a text bind parameter), or as JSON (a row
//! image, a direct invocation, a default in the file); either way it leaves as canonical JSON: integers
//! as numbers, numerics as strings with every digit, booleans, text/uuid/timestamptz/enum as strings,
//! jsonb as JSON, arrays as arrays. This module never touches the network.

use regex::Regex;
use serde_json::Value;

/// A parameter's type.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamType {
    Text,
    Integer,
    Numeric,
    Boolean,
    Uuid,
    Timestamptz,
    Jsonb,
    Enum(Vec<String>),
    Array(Box<ParamType>),
}

impl ParamType {
    /// The name used in the file and in documentation.
    pub fn name(&self) -> String {
        match self {
            ParamType::Text => "text".into(),
            ParamType::Integer => "integer".into(),
            ParamType::Numeric => "numeric".into(),
            ParamType::Boolean => "boolean".into(),
            ParamType::Uuid => "uuid".into(),
            ParamType::Timestamptz => "timestamptz".into(),
            ParamType::Jsonb => "jsonb".into(),
            ParamType::Enum(_) => "enum".into(),
            ParamType::Array(item) => format!("array of {}", item.name()),
        }
    }

    /// The Postgres type a value of this type is cast to in SQL waly writes.
    pub fn sql_type(&self) -> String {
        match self {
            ParamType::Text | ParamType::Enum(_) => "text".into(),
            ParamType::Integer => "bigint".into(),
            ParamType::Numeric => "numeric".into(),
            ParamType::Boolean => "boolean".into(),
            ParamType::Uuid => "uuid".into(),
            ParamType::Timestamptz => "timestamptz".into(),
            ParamType::Jsonb => "jsonb".into(),
            ParamType::Array(item) => format!("{}[]", item.sql_type()),
        }
    }
}

/// A checked parameter definition.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub kind: ParamType,
    pub description: Option<String>,
    pub required: bool,
    pub default: Option<Value>,
    pub pattern: Option<Regex>,
    pub min: Option<f64>,
    pub min_text: Option<String>,
    pub max: Option<f64>,
    pub max_text: Option<String>,
    pub min_length: Option<usize>,
    pub max_length: Option<usize>,
    /// Taken from the row image: (schema, table, column).
    pub from_row: Option<(String, String, String)>,
}

/// What is wrong with one value; becomes an error naming the operation and the parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    Missing,
    /// Not a value of the type (`22P02`).
    Type {
        expected: String,
        got: String,
    },
    /// Outside min/max (`22003`).
    Range(String),
    /// Pattern, length or enum (`22023`).
    Constraint(String),
}

impl Problem {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Problem::Missing => "23502",
            Problem::Type { .. } => "22P02",
            Problem::Range(_) => "22003",
            Problem::Constraint(_) => "22023",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Problem::Missing => "is required and was not given (or is NULL)".into(),
            Problem::Type { expected, got } => format!("must be {expected}, got {got}"),
            Problem::Range(m) | Problem::Constraint(m) => m.clone(),
        }
    }
}

/// A value as found in SQL: literal text, SQL NULL, or an array literal's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Text(String),
    Array(Vec<SqlValue>),
}

impl Param {
    /// Converts SQL text to this parameter's canonical JSON and checks it.
    pub fn from_sql(&self, value: &SqlValue) -> Result<Value, Problem> {
        let json = sql_to_json(&self.kind, value)?;
        self.check(json)
    }

    /// Checks a JSON value (from a row image, an invocation, a file), converting it to canonical form.
    /// `raw` is the value's JSON text when there is one, to keep every digit of a numeric.
    pub fn from_json(&self, value: &Value, raw: Option<&str>) -> Result<Value, Problem> {
        let json = json_to_canonical(&self.kind, value, raw)?;
        self.check(json)
    }

    /// The value for a parameter that was not given: its default, or NULL; a required one fails.
    pub fn absent(&self) -> Result<Value, Problem> {
        match &self.default {
            Some(v) => Ok(v.clone()),
            None if self.required => Err(Problem::Missing),
            None => Ok(Value::Null),
        }
    }

    fn check(&self, value: Value) -> Result<Value, Problem> {
        if value.is_null() {
            return self.absent();
        }
        check_constraints(self, &value)?;
        Ok(value)
    }
}

fn check_constraints(p: &Param, value: &Value) -> Result<(), Problem> {
    if let ParamType::Enum(values) = &p.kind {
        let s = value.as_str().unwrap_or_default();
        if !values.iter().any(|v| v == s) {
            return Err(Problem::Constraint(format!(
                "must be one of {}, got {s:?}",
                values.join(", ")
            )));
        }
    }
    if let Some(n) = number_of(value) {
        if let (Some(min), Some(text)) = (p.min, &p.min_text)
            && n < min
        {
            return Err(Problem::Range(format!(
                "must be at least {text}, got {}",
                show(value)
            )));
        }
        if let (Some(max), Some(text)) = (p.max, &p.max_text)
            && n > max
        {
            return Err(Problem::Range(format!(
                "must be at most {text}, got {}",
                show(value)
            )));
        }
    }
    let length = match value {
        Value::String(s) if !matches!(p.kind, ParamType::Numeric) => Some(s.chars().count()),
        Value::Array(a) => Some(a.len()),
        _ => None,
    };
    if let Some(len) = length {
        if let Some(min) = p.min_length
            && len < min
        {
            return Err(Problem::Constraint(format!(
                "must have a length of at least {min}, got {len}"
            )));
        }
        if let Some(max) = p.max_length
            && len > max
        {
            return Err(Problem::Constraint(format!(
                "must have a length of at most {max}, got {len}"
            )));
        }
    }
    if let (Some(re), Value::String(s)) = (&p.pattern, value)
        && !re.is_match(s)
    {
        return Err(Problem::Constraint(format!(
            "must match the pattern {}, got {s:?}",
            re.as_str()
        )));
    }
    Ok(())
}

fn number_of(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse::<f64>().ok(),
        _ => None,
    }
}

fn show(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn type_error(kind: &ParamType, got: impl std::fmt::Display) -> Problem {
    Problem::Type {
        expected: article(&kind.name()),
        got: got.to_string(),
    }
}

fn article(name: &str) -> String {
    match name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {name}"),
        _ => format!("a {name}"),
    }
}

/// SQL text to canonical JSON.
pub fn sql_to_json(kind: &ParamType, value: &SqlValue) -> Result<Value, Problem> {
    let text = match value {
        SqlValue::Null => return Ok(Value::Null),
        SqlValue::Array(items) => {
            let ParamType::Array(item) = kind else {
                return Err(type_error(kind, "an array"));
            };
            return items
                .iter()
                .map(|v| sql_to_json(item, v))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array);
        }
        SqlValue::Text(t) => t,
    };
    if let Some(b64) = text.strip_prefix("b64:") {
        return Err(type_error(
            kind,
            format_args!(
                "a binary value waly cannot decode ({} base64 characters)",
                b64.len()
            ),
        ));
    }
    let quoted = || format!("{text:?}");
    Ok(match kind {
        ParamType::Text | ParamType::Enum(_) | ParamType::Timestamptz => {
            if matches!(kind, ParamType::Timestamptz) && !looks_like_time(text) {
                return Err(type_error(kind, quoted()));
            }
            Value::String(text.clone())
        }
        ParamType::Integer => {
            let n: i64 = text
                .trim()
                .parse()
                .map_err(|_| type_error(kind, quoted()))?;
            Value::from(n)
        }
        ParamType::Numeric => {
            Value::String(numeric_text(text.trim()).ok_or_else(|| type_error(kind, quoted()))?)
        }
        ParamType::Boolean => Value::Bool(match text.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "y" | "yes" | "on" | "1" => true,
            "f" | "false" | "n" | "no" | "off" | "0" => false,
            _ => return Err(type_error(kind, quoted())),
        }),
        ParamType::Uuid => {
            Value::String(uuid_text(text).ok_or_else(|| type_error(kind, quoted()))?)
        }
        ParamType::Jsonb => serde_json::from_str(text).map_err(|_| type_error(kind, quoted()))?,
        ParamType::Array(item) => {
            let items = parse_array_literal(text).ok_or_else(|| type_error(kind, quoted()))?;
            return sql_to_json(
                kind,
                &SqlValue::Array(
                    items
                        .into_iter()
                        .map(|i| i.map_or(SqlValue::Null, SqlValue::Text))
                        .collect(),
                ),
            )
            .map_err(|_| type_error(&ParamType::Array(item.clone()), quoted()));
        }
    })
}

/// JSON to canonical JSON.
fn json_to_canonical(kind: &ParamType, value: &Value, raw: Option<&str>) -> Result<Value, Problem> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    match (kind, value) {
        (ParamType::Jsonb, v) => Ok(v.clone()),
        (ParamType::Array(item), Value::Array(items)) => items
            .iter()
            .map(|v| json_to_canonical(item, v, None))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        (ParamType::Numeric, Value::Number(n)) => {
            let text = raw
                .map(str::trim)
                .map(str::to_owned)
                .unwrap_or_else(|| n.to_string());
            numeric_text(&text)
                .map(Value::String)
                .ok_or_else(|| type_error(kind, text))
        }
        (ParamType::Integer, Value::Number(n)) => n
            .as_i64()
            .map(Value::from)
            .ok_or_else(|| type_error(kind, n)),
        (ParamType::Boolean, Value::Bool(b)) => Ok(Value::Bool(*b)),
        (_, Value::String(s)) => sql_to_json(kind, &SqlValue::Text(s.clone())),
        (_, Value::Number(n)) => sql_to_json(kind, &SqlValue::Text(n.to_string())),
        (_, Value::Bool(b)) => sql_to_json(kind, &SqlValue::Text(b.to_string())),
        (_, other) => Err(type_error(kind, other)),
    }
}

/// A decimal number's text as given, if it is one (or NaN/Infinity, which numeric allows).
fn numeric_text(text: &str) -> Option<String> {
    let t = text.strip_prefix(['+', '-']).unwrap_or(text);
    if matches!(t.to_ascii_lowercase().as_str(), "nan" | "infinity" | "inf") {
        return Some(text.to_owned());
    }
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mut parts = mantissa.splitn(2, '.');
    let whole = parts.next().unwrap_or_default();
    let frac = parts.next().unwrap_or_default();
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    (!(whole.is_empty() && frac.is_empty()) && digits(whole) && digits(frac) && exponent_ok)
        .then(|| text.to_owned())
}

/// A uuid in Postgres' canonical form (lowercase, hyphenated), from any form Postgres accepts.
fn uuid_text(text: &str) -> Option<String> {
    let hex: String = text
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .chars()
        .filter(|c| *c != '-')
        .collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(crate::wire::binary::hyphenated_uuid(
        &hex.to_ascii_lowercase(),
    ))
}

/// A light check: a date (or a special value) in front; Postgres itself checks the rest.
fn looks_like_time(text: &str) -> bool {
    let t = text.trim().to_ascii_lowercase();
    matches!(
        t.as_str(),
        "now" | "today" | "tomorrow" | "yesterday" | "infinity" | "-infinity" | "epoch"
    ) || t.as_bytes().first().is_some_and(u8::is_ascii_digit)
}

/// A one-dimensional array literal (`{1,2,"a b",NULL}`) split into its elements.
pub fn parse_array_literal(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    if inner.trim().is_empty() {
        return Some(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' || c == '"' {
                    return None; // nested or malformed
                }
                item.push(c);
                chars.next();
            }
        }
        let item = if quoted { item } else { item.trim().to_owned() };
        out.push((quoted || !item.eq_ignore_ascii_case("null")).then_some(item));
        match chars.next() {
            Some(',') => continue,
            None => return Some(out),
            Some(_) => return None,
        }
    }
}

/// Canonical JSON as a SQL literal of the parameter's type, for SQL waly writes itself.
pub fn sql_literal(kind: &ParamType, value: &Value) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let body = match (kind, value) {
        (_, Value::Null) => return format!("NULL::{}", kind.sql_type()),
        (ParamType::Jsonb, v) => quote(&v.to_string()),
        (ParamType::Array(item), Value::Array(items)) => {
            let parts: Vec<String> = items.iter().map(|v| sql_literal(item, v)).collect();
            return format!("ARRAY[{}]::{}", parts.join(", "), kind.sql_type());
        }
        (_, Value::String(s)) => quote(s),
        (_, other) => quote(&other.to_string()),
    };
    format!("{body}::{}", kind.sql_type())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(kind: ParamType) -> Param {
        Param {
            name: "p".into(),
            kind,
            description: None,
            required: true,
            default: None,
            pattern: None,
            min: None,
            min_text: None,
            max: None,
            max_text: None,
            min_length: None,
            max_length: None,
            from_row: None,
        }
    }

    #[test]
    fn sql_text_becomes_canonical_json() {
        let t = |k: ParamType, s: &str| param(k).from_sql(&SqlValue::Text(s.into()));
        assert_eq!(t(ParamType::Integer, "42"), Ok(Value::from(42)));
        assert_eq!(t(ParamType::Numeric, "10.50"), Ok(Value::from("10.50")));
        assert_eq!(t(ParamType::Boolean, "on"), Ok(Value::Bool(true)));
        assert_eq!(
            t(ParamType::Uuid, "{A0EEBC99-9C0B4EF8-BB6D6BB9BD380A11}"),
            Ok(Value::from("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"))
        );
        assert_eq!(
            t(
                ParamType::Array(Box::new(ParamType::Integer)),
                "{2019, 2020}"
            ),
            Ok(serde_json::json!([2019, 2020]))
        );
        assert_eq!(
            t(ParamType::Jsonb, r#"{"a":1}"#),
            Ok(serde_json::json!({"a": 1}))
        );
        assert!(matches!(
            t(ParamType::Integer, "4x"),
            Err(Problem::Type { .. })
        ));
        assert!(matches!(
            t(ParamType::Numeric, "1.2.3"),
            Err(Problem::Type { .. })
        ));
    }

    #[test]
    fn constraints_name_what_is_wrong() {
        let mut p = param(ParamType::Numeric);
        p.min = Some(0.01);
        p.min_text = Some("0.01".into());
        assert_eq!(
            p.from_sql(&SqlValue::Text("-5".into())),
            Err(Problem::Range("must be at least 0.01, got -5".into()))
        );
        let mut e = param(ParamType::Text);
        e.pattern = Some(Regex::new("^[^@]+@[^@]+$").unwrap());
        assert!(matches!(
            e.from_sql(&SqlValue::Text("nope".into())),
            Err(Problem::Constraint(_))
        ));
        assert_eq!(e.from_sql(&SqlValue::Null), Err(Problem::Missing));
        let en = param(ParamType::Enum(vec!["EUR".into(), "USD".into()]));
        assert!(en.from_sql(&SqlValue::Text("EUR".into())).is_ok());
        assert!(matches!(
            en.from_sql(&SqlValue::Text("XYZ".into())),
            Err(Problem::Constraint(_))
        ));
    }

    #[test]
    fn numerics_from_images_keep_their_digits() {
        let p = param(ParamType::Numeric);
        let raw = "123456789012345678901234567890.01";
        let v: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(p.from_json(&v, Some(raw)), Ok(Value::from(raw)));
    }

    #[test]
    fn literals_round_trip_as_sql() {
        assert_eq!(
            sql_literal(&ParamType::Text, &Value::from("O'Neil")),
            "'O''Neil'::text"
        );
        assert_eq!(
            sql_literal(
                &ParamType::Array(Box::new(ParamType::Integer)),
                &serde_json::json!([1, 2])
            ),
            "ARRAY['1'::bigint, '2'::bigint]::bigint[]"
        );
        assert_eq!(
            sql_literal(&ParamType::Integer, &Value::Null),
            "NULL::bigint"
        );
    }
}
