//! When a record is final: how its transaction was committed ([`CommitKind`]), and the outcome records
//! that decide direct commits ([`OutcomeRecord`]).
//!
//! A *direct* commit appends its record, then sends Postgres a plain `COMMIT`; the record is final only
//! once its writer (the waly process that appended it) says how that COMMIT ended. Writers say so in two
//! ways, both in the log itself: every record a writer appends carries `decided_through`, the position
//! up to which all of that writer's direct commits are decided; and an outcome record lists the ones
//! that did not commit (`aborted`), or, in a quiet moment, just moves `decided_through` on. A record is
//! never decided by anything that precedes it, so a reader that starts anywhere learns every decision it
//! needs by reading on.
//!
//! This module owns those shapes and the parsing of a log entry into one of them ([`LogRecord`]). It
//! never reads a log and never talks to Postgres.

use serde::{Deserialize, Serialize};

use super::{FORMAT_VERSION, Record, RecordError};

/// How a transaction was committed, which tells when its record is final.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommitKind {
    /// Prepared (`PREPARE TRANSACTION`) before the append and committed after it; recovery rolls it
    /// forward, so the record is final once it is in the log. Records of format 1 are all of this kind.
    #[default]
    Prepared,
    /// Appended, then committed with a plain `COMMIT`: final once its writer's `decided_through` reaches
    /// it, unless an outcome record lists it as aborted.
    Direct,
    /// Logged after Postgres had committed it (statements that run only outside a transaction block):
    /// final once it is in the log.
    After,
}

/// A writer's decisions on its direct commits: which did not commit, and how far everything is decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// Always `"outcome"`; first, so a reader can tell an outcome record from its opening bytes.
    pub kind: OutcomeTag,
    pub format: u32,
    /// The writer whose direct commits this decides (the `writer` of their records).
    pub writer: String,
    /// Direct commits of `writer` that did not commit: readers skip their records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aborted: Vec<Aborted>,
    /// Every direct commit of `writer` at or below this position that is not listed as aborted here or
    /// in an earlier outcome record committed.
    pub decided_through: u64,
}

/// The `kind` of an outcome record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeTag {
    Outcome,
}

/// A direct commit that did not commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aborted {
    /// The position of its record.
    pub position: u64,
    /// Its transaction id, as in the record (a check for readers).
    pub txid: String,
}

impl OutcomeRecord {
    pub fn new(writer: &str, aborted: Vec<Aborted>, decided_through: u64) -> OutcomeRecord {
        OutcomeRecord {
            kind: OutcomeTag::Outcome,
            format: FORMAT_VERSION,
            writer: writer.to_owned(),
            aborted,
            decided_through,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an outcome record always serialises")
    }
}

/// What one log entry holds.
#[derive(Debug, Clone, PartialEq)]
pub enum LogRecord {
    Transaction(Box<Record>),
    Outcome(OutcomeRecord),
}

/// How every outcome record this build writes begins.
const OUTCOME_PREFIX: &[u8] = br#"{"kind":"outcome""#;

impl LogRecord {
    /// Parses a log entry's payload.
    pub fn from_json(bytes: &[u8]) -> Result<LogRecord, RecordError> {
        if bytes.starts_with(OUTCOME_PREFIX) {
            return parse_outcome(bytes).map(LogRecord::Outcome);
        }
        match Record::from_json(bytes) {
            Ok(record) => Ok(LogRecord::Transaction(Box::new(record))),
            // An outcome record another writer serialised with its fields in another order.
            Err(e) => parse_outcome(bytes).map(LogRecord::Outcome).map_err(|_| e),
        }
    }
}

fn parse_outcome(bytes: &[u8]) -> Result<OutcomeRecord, RecordError> {
    let outcome: OutcomeRecord = serde_json::from_slice(bytes)?;
    if outcome.format > FORMAT_VERSION {
        return Err(RecordError::TooNew(outcome.format));
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_records_begin_with_their_kind_and_round_trip() {
        let o = OutcomeRecord::new(
            "9f3c-1a2b",
            vec![Aborted {
                position: 7,
                txid: "812".into(),
            }],
            9,
        );
        let bytes = o.to_json();
        assert!(
            bytes.starts_with(OUTCOME_PREFIX),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(LogRecord::from_json(&bytes).unwrap(), LogRecord::Outcome(o));
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "outcome", "format": FORMAT_VERSION, "writer": "9f3c-1a2b",
                               "aborted": [{"position": 7, "txid": "812"}], "decided_through": 9})
        );
    }

    #[test]
    fn outcome_records_in_another_field_order_are_read_too() {
        let bytes = br#"{"decided_through":3,"writer":"w","format":2,"kind":"outcome"}"#;
        match LogRecord::from_json(bytes).unwrap() {
            LogRecord::Outcome(o) => {
                assert_eq!((o.writer.as_str(), o.decided_through), ("w", 3));
                assert!(o.aborted.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_reports_the_transaction_record_error() {
        let e = LogRecord::from_json(br#"{"format":2,"txid":"1"}"#).unwrap_err();
        assert!(e.to_string().contains("missing field"), "{e}");
    }
}
