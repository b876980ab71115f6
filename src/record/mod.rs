//! The log record: one per committed write transaction, a JSON envelope documented in `docs/record.md`.
//!
//! Owns the record's shape, its (de)serialisation and its format version. A record carries what the
//! transaction *meant* (its statements, later its domain operations) and what it *did* (row images and DDL
//! in execution order), plus who did it. It must never depend on a log backend: the log stores opaque
//! bytes, and the position and append time of a record come from the log entry that holds it.

mod capture;
pub mod outcome;
pub mod settle;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use capture::{
    CAPTURE_COLUMNS, changes_from_buffer, changes_from_capture, changes_from_capture_text,
};
pub use outcome::{Aborted, CommitKind, LogRecord, OutcomeRecord};
pub use settle::{Settled, Settler};

/// A row image or key as JSON text, exactly as Postgres rendered it: never parsed into numbers, so a
/// `1e-30` or a 30-digit numeric is carried digit for digit.
pub type Json = Box<RawValue>;

/// The envelope version this build writes. Readers accept every version up to this one. Format 2 added
/// direct commits and outcome records ([`outcome`]): a reader of format 1 would take an aborted direct
/// commit for a committed one.
pub const FORMAT_VERSION: u32 = 2;

/// One committed write transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Envelope version ([`FORMAT_VERSION`] when written by this build).
    pub format: u32,
    /// Postgres' transaction id (`xid8`), as a decimal string: it exceeds what JSON numbers hold exactly.
    pub txid: String,
    /// The name waly committed the transaction under (`waly_<writer>_<n>`): for a prepared commit, its
    /// global transaction identifier, by which recovery matches prepared transactions to records.
    pub gid: String,
    /// How the transaction was committed, which says when this record is final.
    #[serde(default)]
    pub commit: CommitKind,
    /// The waly process that appended the record (its log id and start); it decides its direct commits.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub writer: String,
    /// Every direct commit of `writer` at or below this position is decided (see [`outcome`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_through: Option<u64>,
    /// Commit time as Postgres saw it (RFC 3339, microseconds, UTC).
    pub committed_at: String,
    pub session: SessionInfo,
    /// The statements the client sent, in order, with their bind parameters.
    pub statements: Vec<Statement>,
    /// The domain operations the transaction was recognised as (empty when no catalog is loaded or
    /// nothing matched); the statements and changes no operation explains are the raw part.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<OperationCall>,
    /// Row images and DDL, in the order Postgres executed them.
    pub changes: Vec<Change>,
}

/// Who made the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub user: String,
    /// The role in effect when the transaction committed (`current_user`), when it is not `user`:
    /// after `SET ROLE` or `SET SESSION AUTHORIZATION`, as applications with row-level security do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub database: String,
    /// The database's OID: a database dropped and created again under its name has another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_oid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    /// The client's address as waly saw it (`ip:port`).
    pub client_addr: String,
}

/// A statement as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub sql: String,
    /// Bind parameters in text form (`null` for SQL NULL); binary parameters are base64 with a `b64:` prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Option<String>>,
}

/// One domain operation the transaction performed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationCall {
    pub name: String,
    pub version: u32,
    /// Validated parameters in canonical JSON (numerics as strings, every digit kept).
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Indexes into `statements` of the statements that performed it (template and direct invocation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statements: Vec<usize>,
    /// Indexes into `changes` of the row changes it was recognised from (table shapes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<usize>,
}

/// One effect of the transaction. Equality compares images by their JSON text.
///
/// Read through [`ChangeFields`]: serde buffers an internally tagged enum's fields, and a buffered value
/// can no longer become a [`RawValue`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", try_from = "ChangeFields")]
pub enum Change {
    Insert {
        schema: String,
        table: String,
        #[serde(default)]
        pk: Option<Json>,
        new: Json,
    },
    Update {
        schema: String,
        table: String,
        #[serde(default)]
        pk: Option<Json>,
        old: Json,
        new: Json,
    },
    Delete {
        schema: String,
        table: String,
        #[serde(default)]
        pk: Option<Json>,
        old: Json,
    },
    Truncate {
        schema: String,
        table: String,
    },
    /// The DDL change before it rewrote the table's rows with values of its own (a volatile default, a
    /// column's new type): the `rows` inserts that follow it are the table's whole content after the DDL,
    /// and replay empties the table before applying them.
    Rewrite {
        schema: String,
        table: String,
        rows: u64,
    },
    /// The DDL change before it added `column` with a default that Postgres evaluated once, for every row
    /// already in the table (`now()`, say): `new` is the image of one of those rows, and replay sets the
    /// column of every row of the table to its value there.
    Fill {
        schema: String,
        table: String,
        column: String,
        new: Json,
    },
    Ddl {
        tag: String,
        object: Option<String>,
        sql: String,
        /// The session's search_path when the transaction committed, where it is not Postgres' default:
        /// the names in `sql` were resolved with it, and replay runs `sql` with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        search_path: Option<String>,
    },
    /// Where a sequence owned by a table the transaction inserted into (or truncated) stood when the
    /// transaction ended: replay sets it with `setval(sequence, last_value, is_called)`.
    Sequence {
        schema: String,
        name: String,
        last_value: i64,
        is_called: bool,
    },
}

/// Every field a change may have, `kind` deciding which are required: how a stored record's changes are
/// read, and how capture rows become changes ([`capture`]).
#[derive(Deserialize)]
struct ChangeFields {
    kind: String,
    schema: Option<String>,
    table: Option<String>,
    #[serde(default)]
    pk: Option<Json>,
    old: Option<Json>,
    new: Option<Json>,
    tag: Option<String>,
    #[serde(default)]
    object: Option<String>,
    sql: Option<String>,
    #[serde(default)]
    search_path: Option<String>,
    #[serde(default)]
    column: Option<String>,
    #[serde(default)]
    rows: Option<u64>,
    name: Option<String>,
    last_value: Option<i64>,
    is_called: Option<bool>,
}

impl TryFrom<ChangeFields> for Change {
    type Error = String;

    fn try_from(f: ChangeFields) -> Result<Change, String> {
        fn need<T>(value: Option<T>, kind: &str, field: &str) -> Result<T, String> {
            value.ok_or_else(|| format!("a change of kind {kind:?} needs the field {field:?}"))
        }
        let k = f.kind.as_str();
        Ok(match k {
            "insert" => Change::Insert {
                schema: need(f.schema, k, "schema")?,
                table: need(f.table, k, "table")?,
                pk: f.pk,
                new: need(f.new, k, "new")?,
            },
            "update" => Change::Update {
                schema: need(f.schema, k, "schema")?,
                table: need(f.table, k, "table")?,
                pk: f.pk,
                old: need(f.old, k, "old")?,
                new: need(f.new, k, "new")?,
            },
            "delete" => Change::Delete {
                schema: need(f.schema, k, "schema")?,
                table: need(f.table, k, "table")?,
                pk: f.pk,
                old: need(f.old, k, "old")?,
            },
            "truncate" => Change::Truncate {
                schema: need(f.schema, k, "schema")?,
                table: need(f.table, k, "table")?,
            },
            "rewrite" => Change::Rewrite {
                schema: need(f.schema, k, "schema")?,
                table: need(f.table, k, "table")?,
                rows: need(f.rows, k, "rows")?,
            },
            "fill" => Change::Fill {
                schema: need(f.schema, k, "schema")?,
                table: need(f.table, k, "table")?,
                column: need(f.column, k, "column")?,
                new: need(f.new, k, "new")?,
            },
            "ddl" => Change::Ddl {
                tag: need(f.tag, k, "tag")?,
                object: f.object,
                sql: need(f.sql, k, "sql")?,
                search_path: f.search_path,
            },
            "sequence" => Change::Sequence {
                schema: need(f.schema, k, "schema")?,
                name: need(f.name, k, "name")?,
                last_value: need(f.last_value, k, "last_value")?,
                is_called: need(f.is_called, k, "is_called")?,
            },
            other => return Err(format!("unknown change kind {other:?}")),
        })
    }
}

/// Which of `changes` (a record's) are rows a DDL change put in the record rather than rows the
/// transaction's statements wrote: the inserts a [`Change::Rewrite`] announces.
pub fn written_by_ddl(changes: &[Change]) -> Vec<bool> {
    let mut marks = vec![false; changes.len()];
    let mut i = 0;
    while i < changes.len() {
        if let Change::Rewrite { rows, .. } = &changes[i] {
            let end = usize::try_from(*rows)
                .map_or(usize::MAX, |rows| rows.saturating_add(i + 1))
                .min(changes.len());
            for mark in &mut marks[i + 1..end] {
                *mark = true;
            }
            i = end;
        } else {
            i += 1;
        }
    }
    marks
}

impl PartialEq for Change {
    fn eq(&self, other: &Change) -> bool {
        fn text(j: &Json) -> &str {
            j.get()
        }
        fn key(k: &Option<Json>) -> Option<&str> {
            k.as_deref().map(RawValue::get)
        }
        use Change::*;
        match (self, other) {
            (
                Insert {
                    schema: s,
                    table: t,
                    pk: k,
                    new: n,
                },
                Insert {
                    schema: s2,
                    table: t2,
                    pk: k2,
                    new: n2,
                },
            ) => s == s2 && t == t2 && key(k) == key(k2) && text(n) == text(n2),
            (
                Update {
                    schema: s,
                    table: t,
                    pk: k,
                    old: o,
                    new: n,
                },
                Update {
                    schema: s2,
                    table: t2,
                    pk: k2,
                    old: o2,
                    new: n2,
                },
            ) => {
                s == s2
                    && t == t2
                    && key(k) == key(k2)
                    && text(o) == text(o2)
                    && text(n) == text(n2)
            }
            (
                Delete {
                    schema: s,
                    table: t,
                    pk: k,
                    old: o,
                },
                Delete {
                    schema: s2,
                    table: t2,
                    pk: k2,
                    old: o2,
                },
            ) => s == s2 && t == t2 && key(k) == key(k2) && text(o) == text(o2),
            (
                Truncate {
                    schema: s,
                    table: t,
                },
                Truncate {
                    schema: s2,
                    table: t2,
                },
            ) => s == s2 && t == t2,
            (
                Rewrite {
                    schema: s,
                    table: t,
                    rows: r,
                },
                Rewrite {
                    schema: s2,
                    table: t2,
                    rows: r2,
                },
            ) => s == s2 && t == t2 && r == r2,
            (
                Fill {
                    schema: s,
                    table: t,
                    column: c,
                    new: n,
                },
                Fill {
                    schema: s2,
                    table: t2,
                    column: c2,
                    new: n2,
                },
            ) => s == s2 && t == t2 && c == c2 && text(n) == text(n2),
            (
                Ddl {
                    tag: g,
                    object: o,
                    sql: q,
                    search_path: p,
                },
                Ddl {
                    tag: g2,
                    object: o2,
                    sql: q2,
                    search_path: p2,
                },
            ) => g == g2 && o == o2 && q == q2 && p == p2,
            (
                Sequence {
                    schema: s,
                    name: n,
                    last_value: v,
                    is_called: c,
                },
                Sequence {
                    schema: s2,
                    name: n2,
                    last_value: v2,
                    is_called: c2,
                },
            ) => s == s2 && n == n2 && v == v2 && c == c2,
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the record is not valid JSON for format {FORMAT_VERSION}: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "the record has format {0}, newer than this waly understands ({FORMAT_VERSION}); upgrade waly to read it"
    )]
    TooNew(u32),
    #[error("capture row {seq} cannot become a change: {reason}")]
    Capture { seq: String, reason: String },
}

impl Record {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record always serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Record, RecordError> {
        let record: Record = serde_json::from_slice(bytes)?;
        if record.format > FORMAT_VERSION {
            return Err(RecordError::TooNew(record.format));
        }
        Ok(record)
    }

    /// Row changes only (DDL, TRUNCATE and sequence positions excluded), for counting and rates.
    pub fn row_changes(&self) -> usize {
        self.changes
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Change::Insert { .. } | Change::Update { .. } | Change::Delete { .. }
                )
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn raw(text: &str) -> Json {
        RawValue::from_string(text.into()).unwrap()
    }

    fn sample() -> Record {
        Record {
            format: FORMAT_VERSION,
            txid: "18446744073709551000".into(),
            gid: "waly_1_42".into(),
            commit: CommitKind::Direct,
            writer: "1".into(),
            decided_through: Some(41),
            committed_at: "2026-11-23T10:00:00.123456Z".into(),
            session: SessionInfo {
                role: None,
                database_oid: None,
                user: "app".into(),
                database: "shop".into(),
                application_name: Some("checkout".into()),
                client_addr: "10.0.0.7:51234".into(),
            },
            statements: vec![Statement {
                sql: "insert into t values ($1)".into(),
                params: vec![Some("1".into()), None],
            }],
            operations: Vec::new(),
            changes: vec![
                Change::Ddl {
                    tag: "CREATE TABLE".into(),
                    object: Some("public.t".into()),
                    sql: "create table t (id int primary key)".into(),
                    search_path: Some("app, public".into()),
                },
                Change::Insert {
                    schema: "public".into(),
                    table: "t".into(),
                    pk: Some(raw(r#"{"id": 1}"#)),
                    new: raw(r#"{"id": 1}"#),
                },
                Change::Update {
                    schema: "public".into(),
                    table: "t".into(),
                    pk: Some(raw(r#"{"id": 1}"#)),
                    old: raw(r#"{"id": 1}"#),
                    new: raw(r#"{"id": 2}"#),
                },
                Change::Delete {
                    schema: "public".into(),
                    table: "t".into(),
                    pk: None,
                    old: raw(r#"{"id": 2}"#),
                },
                Change::Truncate {
                    schema: "public".into(),
                    table: "t".into(),
                },
                Change::Sequence {
                    schema: "public".into(),
                    name: "t_id_seq".into(),
                    last_value: i64::MAX,
                    is_called: true,
                },
            ],
        }
    }

    #[test]
    fn round_trips_through_json() {
        let r = sample();
        assert_eq!(Record::from_json(&r.to_json()).unwrap(), r);
        assert_eq!(r.row_changes(), 3);
    }

    #[test]
    fn envelope_matches_the_documented_shape() {
        let v: Value = serde_json::from_slice(&sample().to_json()).unwrap();
        assert_eq!(v["format"], 2);
        assert_eq!(v["txid"], "18446744073709551000");
        assert_eq!(v["commit"], "direct");
        assert_eq!(v["writer"], "1");
        assert_eq!(v["decided_through"], 41);
        assert_eq!(v["changes"][1]["kind"], "insert");
        assert_eq!(v["changes"][1]["pk"]["id"], 1);
        assert_eq!(v["changes"][0]["kind"], "ddl");
        assert_eq!(v["statements"][0]["params"][1], Value::Null);
        assert_eq!(
            v["changes"][5],
            serde_json::json!({"kind": "sequence", "schema": "public", "name": "t_id_seq",
                               "last_value": i64::MAX, "is_called": true})
        );
    }

    #[test]
    fn images_keep_every_digit() {
        let mut r = sample();
        let image = r#"{"id": 1, "tiny": 1e-30, "wide": 123456789012345678901234567890.000000000000000000001, "f": "NaN"}"#;
        r.changes = vec![Change::Insert {
            schema: "public".into(),
            table: "t".into(),
            pk: Some(raw(r#"{"id": 1}"#)),
            new: raw(image),
        }];
        let bytes = r.to_json();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(image), "{text}");
        match &Record::from_json(&bytes).unwrap().changes[0] {
            Change::Insert { new, .. } => assert_eq!(new.get(), image),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_or_null_pk_reads_as_none() {
        let json = br#"{"format":1,"txid":"1","gid":"g","committed_at":"t",
            "session":{"user":"u","database":"d","client_addr":"a"},"statements":[],
            "changes":[{"kind":"delete","schema":"s","table":"t","old":{"a":1}},
                       {"kind":"delete","schema":"s","table":"t","pk":null,"old":{"a":1}}]}"#;
        let r = Record::from_json(json).unwrap();
        assert_eq!(
            r.commit,
            CommitKind::Prepared,
            "format 1 records were all prepared"
        );
        for change in &r.changes {
            assert!(
                matches!(change, Change::Delete { pk: None, .. }),
                "{change:?}"
            );
        }
    }

    #[test]
    fn newer_formats_and_garbage_are_refused_clearly() {
        let mut r = sample();
        r.format = FORMAT_VERSION + 1;
        assert!(matches!(
            Record::from_json(&r.to_json()),
            Err(RecordError::TooNew(3))
        ));
        assert!(matches!(
            Record::from_json(b"{\"format\": 1"),
            Err(RecordError::Malformed(_))
        ));
    }
}
