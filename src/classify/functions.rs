//! What waly knows of Postgres' built-in functions by name: those known not to change data, so that a
//! SELECT calling only these stays a read; the large-object writers, which waly refuses (their data is
//! outside the capture); and the sequence functions whose literal arguments name sequences the record
//! must position.
//!
//! Anything not listed as read-only (a user's function, `nextval`, `set_config`, `pg_advisory_lock`, ...)
//! makes the SELECT "may write": in autocommit waly then wraps it in a transaction and runs the commit
//! protocol, which costs a little and logs nothing when nothing was written. Missing a read here costs
//! speed; listing a writer here would lose a write, so the list is conservative and holds only Postgres
//! built-ins. This module never looks at a user's function bodies.

/// True when `name` (as pg_query reports it: `name` or `schema.name`) is a read-only built-in.
pub fn is_known_read_only(name: &str) -> bool {
    builtin_name(name).is_some_and(|bare| {
        READ_ONLY
            .binary_search(&bare.to_ascii_lowercase().as_str())
            .is_ok()
    })
}

/// True when `name` is a built-in that creates, writes or removes a large object.
pub fn writes_large_object(name: &str) -> bool {
    builtin_name(name).is_some_and(|bare| {
        LARGE_OBJECT_WRITERS
            .iter()
            .any(|(writer, _)| writer.eq_ignore_ascii_case(bare))
    })
}

/// The name of a function (as pg_query reports it, unquoted names folded) as a built-in's: bare, or
/// without a `pg_catalog.` qualifier; `None` when another schema qualifies it.
fn builtin_name(name: &str) -> Option<&str> {
    match name.split_once('.') {
        Some(("pg_catalog", bare)) => Some(bare),
        Some(_) => None,
        None => Some(name),
    }
}

/// `sql` as Postgres' scanner splits it, for finding calls where the parse tree's function list does not
/// reach (an INSERT's VALUES list, say). String literals and comments are tokens of their own, so text
/// that merely mentions a function is no call.
struct Scanned<'a> {
    sql: &'a str,
    tokens: Vec<pg_query::protobuf::ScanToken>,
}

impl<'a> Scanned<'a> {
    /// `None` when the scanner refuses `sql` (Postgres will report it).
    fn new(sql: &'a str) -> Option<Scanned<'a>> {
        Some(Scanned {
            sql,
            tokens: pg_query::scan(sql).ok()?.tokens,
        })
    }

    fn text(&self, i: usize) -> &'a str {
        let t = &self.tokens[i];
        self.sql.get(t.start as usize..t.end as usize).unwrap_or("")
    }

    fn is(&self, i: usize, token: pg_query::protobuf::Token) -> bool {
        self.tokens.get(i).is_some_and(|t| t.token == token as i32)
    }

    /// The calls of built-ins: for each, the index of the function's name token (followed by `(`; bare or
    /// qualified by `pg_catalog`).
    fn builtin_calls(&self) -> impl Iterator<Item = usize> + '_ {
        use pg_query::protobuf::Token;
        (0..self.tokens.len()).filter(move |&i| {
            self.is(i, Token::Ident)
                && self.is(i + 1, Token::Ascii40)
                && (i < 2
                    || !self.is(i - 1, Token::Ascii46)
                    || self.text(i - 2).eq_ignore_ascii_case("pg_catalog"))
        })
    }
}

/// Whether `sql` calls a large-object writer anywhere, the parse tree's function list's blind spots
/// included.
pub fn mentions_large_object_writer(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    if !LARGE_OBJECT_WRITERS
        .iter()
        .any(|(name, _)| lower.contains(name))
    {
        return false;
    }
    let Some(scanned) = Scanned::new(sql) else {
        return false;
    };
    scanned
        .builtin_calls()
        .any(|i| writes_large_object(scanned.text(i)))
}

/// Whether `sql` calls `setval` (bare or qualified by `pg_catalog`), whatever its arguments: such a
/// statement may move a sequence back, which replay must then follow.
pub fn calls_setval(sql: &str) -> bool {
    if !sql.to_ascii_lowercase().contains("setval") {
        return false;
    }
    Scanned::new(sql).is_some_and(|scanned| {
        scanned
            .builtin_calls()
            .any(|i| scanned.text(i).eq_ignore_ascii_case("setval"))
    })
}

/// The sequences `sql` names in a `nextval('...')` or `setval('...', ...)` call (bare or qualified by
/// `pg_catalog`), as written in the string literal (`'public.orders_seq'`, `'"MySeq"'`). A name passed
/// as a parameter (`nextval($1)`) is not known here.
pub fn named_sequences(sql: &str) -> Vec<String> {
    use pg_query::protobuf::Token;
    let lower = sql.to_ascii_lowercase();
    if !lower.contains("nextval") && !lower.contains("setval") {
        return Vec::new();
    }
    let Some(scanned) = Scanned::new(sql) else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    for i in scanned.builtin_calls() {
        let function = scanned.text(i);
        if (function.eq_ignore_ascii_case("nextval") || function.eq_ignore_ascii_case("setval"))
            && scanned.is(i + 2, Token::Sconst)
            && let Some(name) = plain_string(scanned.text(i + 2))
            && !names.contains(&name)
        {
            names.push(name);
        }
    }
    names
}

/// The value of a plain string literal (`'it''s'`); `None` for the other kinds (E'', U&'', $$).
fn plain_string(literal: &str) -> Option<String> {
    let inner = literal.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

/// True when `oid` is one of those built-ins, as a FunctionCall message names it (built-in function OIDs
/// are fixed in Postgres' catalog, the same in every version that has the function).
pub fn is_large_object_writer_oid(oid: u32) -> bool {
    LARGE_OBJECT_WRITERS
        .iter()
        .any(|(_, oids)| oids.contains(&oid))
}

/// The large-object functions that change data, with their OIDs in pg_proc.
const LARGE_OBJECT_WRITERS: &[(&str, &[u32])] = &[
    ("lo_create", &[715]),
    ("lo_creat", &[957]),
    ("lo_import", &[764, 767]),
    ("lowrite", &[955]),
    ("lo_unlink", &[964]),
    ("lo_truncate", &[1004]),
    ("lo_truncate64", &[3172]),
    ("lo_from_bytea", &[3457]),
    ("lo_put", &[3460]),
];

/// Sorted (checked by a test): binary search.
const READ_ONLY: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "array_lower",
    "array_position",
    "array_to_json",
    "array_to_string",
    "array_upper",
    "avg",
    "bit_length",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "coalesce",
    "col_description",
    "concat",
    "concat_ws",
    "count",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_setting",
    "current_user",
    "date_part",
    "date_trunc",
    "decode",
    "dense_rank",
    "encode",
    "every",
    "exp",
    "extract",
    "first_value",
    "floor",
    "format",
    "format_type",
    "generate_series",
    "generate_subscripts",
    "greatest",
    "has_database_privilege",
    "has_schema_privilege",
    "has_table_privilege",
    "inet_client_addr",
    "inet_server_addr",
    "initcap",
    "json_agg",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_extract_path",
    "json_extract_path_text",
    "json_object_agg",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_each_text",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_object_agg",
    "jsonb_object_keys",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_typeof",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "localtimestamp",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "make_timestamp",
    "make_timestamptz",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nullif",
    "obj_description",
    "octet_length",
    "overlay",
    "pg_backend_pid",
    "pg_column_size",
    "pg_database_size",
    "pg_get_constraintdef",
    "pg_get_expr",
    "pg_get_indexdef",
    "pg_get_serial_sequence",
    "pg_get_userbyid",
    "pg_get_viewdef",
    "pg_is_in_recovery",
    "pg_relation_size",
    "pg_size_pretty",
    "pg_table_is_visible",
    "pg_table_size",
    "pg_total_relation_size",
    "pg_type_is_visible",
    "position",
    "power",
    "quote_ident",
    "quote_literal",
    "rank",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "sign",
    "split_part",
    "sqrt",
    "statement_timestamp",
    "string_agg",
    "strpos",
    "substr",
    "substring",
    "sum",
    "timezone",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "translate",
    "trim",
    "trunc",
    "unnest",
    "upper",
    "version",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_sorted_for_binary_search() {
        assert!(READ_ONLY.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn built_ins_read_user_functions_may_write() {
        assert!(is_known_read_only("count"));
        assert!(is_known_read_only("pg_catalog.now"));
        assert!(is_known_read_only("LOWER"));
        assert!(!is_known_read_only("nextval"));
        assert!(!is_known_read_only("public.count"));
        assert!(!is_known_read_only("transfer_funds"));
        assert!(!is_known_read_only("set_config"));
    }
}
