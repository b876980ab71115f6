//! The log record: one per committed write transaction, a JSON envelope documented in `docs/record.md`.
//!
//! Owns the record's shape, its (de)serialisation and its format version. A record carries what the
//! transaction *meant* (its statements, later its domain operations) and what it *did* (row images and DDL
//! in execution order), plus who did it. It must never depend on a log backend: the log stores opaque
//! bytes, and the position and append time of a record come from the log entry that holds it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The envelope version this build writes. Readers accept every version up to this one.
pub const FORMAT_VERSION: u32 = 1;

/// One committed write transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Envelope version ([`FORMAT_VERSION`] when written by this build).
    pub format: u32,
    /// Postgres' transaction id (`xid8`), as a decimal string: it exceeds what JSON numbers hold exactly.
    pub txid: String,
    /// The global transaction identifier waly prepared the transaction under (`waly_...`); recovery
    /// matches prepared transactions to records by it.
    pub gid: String,
    /// Commit time as Postgres saw it (RFC 3339, microseconds, UTC).
    pub committed_at: String,
    pub session: SessionInfo,
    /// The statements the client sent, in order, with their bind parameters.
    pub statements: Vec<Statement>,
    /// Row images and DDL, in the order Postgres executed them.
    pub changes: Vec<Change>,
}

/// Who made the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub user: String,
    pub database: String,
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

/// One effect of the transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Change {
    Insert {
        schema: String,
        table: String,
        pk: Option<Value>,
        new: Value,
    },
    Update {
        schema: String,
        table: String,
        pk: Option<Value>,
        old: Value,
        new: Value,
    },
    Delete {
        schema: String,
        table: String,
        pk: Option<Value>,
        old: Value,
    },
    Truncate {
        schema: String,
        table: String,
    },
    Ddl {
        tag: String,
        object: Option<String>,
        sql: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the record is not valid JSON for format {FORMAT_VERSION}: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "the record has format {0}, newer than this waly understands ({FORMAT_VERSION}); upgrade waly to read it"
    )]
    TooNew(u32),
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

    /// Row changes only (DDL and TRUNCATE excluded), for counting and rates.
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
    use serde_json::json;

    use super::*;

    fn sample() -> Record {
        Record {
            format: FORMAT_VERSION,
            txid: "18446744073709551000".into(),
            gid: "waly_1_42".into(),
            committed_at: "2026-11-23T10:00:00.123456Z".into(),
            session: SessionInfo {
                user: "app".into(),
                database: "shop".into(),
                application_name: Some("checkout".into()),
                client_addr: "10.0.0.7:51234".into(),
            },
            statements: vec![Statement {
                sql: "insert into t values ($1)".into(),
                params: vec![Some("1".into()), None],
            }],
            changes: vec![
                Change::Ddl {
                    tag: "CREATE TABLE".into(),
                    object: Some("public.t".into()),
                    sql: "create table t (id int primary key)".into(),
                },
                Change::Insert {
                    schema: "public".into(),
                    table: "t".into(),
                    pk: Some(json!({"id": 1})),
                    new: json!({"id": 1}),
                },
                Change::Update {
                    schema: "public".into(),
                    table: "t".into(),
                    pk: Some(json!({"id": 1})),
                    old: json!({"id": 1}),
                    new: json!({"id": 2}),
                },
                Change::Delete {
                    schema: "public".into(),
                    table: "t".into(),
                    pk: None,
                    old: json!({"id": 2}),
                },
                Change::Truncate {
                    schema: "public".into(),
                    table: "t".into(),
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
        assert_eq!(v["format"], 1);
        assert_eq!(v["txid"], "18446744073709551000");
        assert_eq!(v["changes"][1]["kind"], "insert");
        assert_eq!(v["changes"][1]["pk"]["id"], 1);
        assert_eq!(v["changes"][0]["kind"], "ddl");
        assert_eq!(v["statements"][0]["params"][1], Value::Null);
    }

    #[test]
    fn newer_formats_and_garbage_are_refused_clearly() {
        let mut r = sample();
        r.format = FORMAT_VERSION + 1;
        assert!(matches!(
            Record::from_json(&r.to_json()),
            Err(RecordError::TooNew(2))
        ));
        assert!(matches!(
            Record::from_json(b"{\"format\": 1"),
            Err(RecordError::Malformed(_))
        ));
    }
}
