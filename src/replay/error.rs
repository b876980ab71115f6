//! Why a replay stopped. Every error names the log position it stopped at; the batch it was in was rolled
//! back, so the target holds exactly the records up to its checkpoint.

use thiserror::Error;

use crate::log::{LogError, Position};
use crate::migrate::PgFailure;
use crate::operations::upcast::UpcastError;
use crate::record::RecordError;

#[derive(Debug, Error)]
pub enum ReplayError {
    /// Reading or writing the checkpoint, or starting or committing a batch, failed.
    #[error("replay could not {what} in the target: {failure}")]
    Target {
        what: String,
        failure: Box<PgFailure>,
    },

    /// The target refused one change of a record.
    #[error("record {position}, change {index} ({change}): the target refused it: {failure}")]
    Change {
        position: Position,
        index: usize,
        change: String,
        failure: Box<PgFailure>,
    },

    /// An update or delete did not find exactly its row: the target is not the database the log was
    /// written against (it was changed outside the log, or started from another state), or the update
    /// changed a GENERATED ALWAYS identity value, which replay cannot write yet.
    #[error(
        "record {position}, change {index} ({change}): matched {rows} rows in the target instead of 1; \
         hint: either the target has diverged from the log (replay into an empty database holding the \
         initial schema), or the change is one replay cannot apply yet (an UPDATE that set a GENERATED \
         ALWAYS identity column to DEFAULT)"
    )]
    Diverged {
        position: Position,
        index: usize,
        change: String,
        rows: u64,
    },

    /// A changed table does not exist in the target.
    #[error(
        "record {position}, change {index}: table {table} does not exist in the target: {failure}"
    )]
    NoTable {
        position: Position,
        index: usize,
        table: String,
        failure: Box<PgFailure>,
    },

    /// Operations replay: a record calls an operation the catalog does not declare.
    #[error(
        "record {position}, operation {index}: {operation} is not in the catalog {catalog}; \
         hint: add it, or pass --skip-unknown to skip its calls"
    )]
    UnknownOperation {
        position: Position,
        index: usize,
        operation: String,
        catalog: String,
    },

    /// Operations replay: the catalog declares the operation without the `sql` that would run it.
    #[error(
        "record {position}, operation {index}: {operation} cannot be replayed: it declares no sql; \
         hint: add `sql:` to {operation} in {catalog}"
    )]
    NoSql {
        position: Position,
        index: usize,
        operation: String,
        catalog: String,
    },

    /// Operations replay: a logged call cannot be read as the operation's current version.
    #[error("record {position}, operation {index} ({operation} v{version}): {problem}")]
    Upcast {
        position: Position,
        index: usize,
        operation: String,
        /// The version the call was logged with.
        version: u32,
        /// Not a `source`: the message already holds it, and `{:#}` would print it twice.
        problem: Box<UpcastError>,
    },

    /// Operations replay: the target refused an operation's SQL.
    #[error(
        "record {position}, operation {index} ({operation} v{version}{}): the target refused it: {failure}",
        logged_as(*logged, *version)
    )]
    Operation {
        position: Position,
        index: usize,
        operation: String,
        /// The version the call was logged with.
        logged: u32,
        /// The catalog's version, which ran.
        version: u32,
        failure: Box<PgFailure>,
    },

    /// Reading the log failed.
    #[error("replay could not read the log: {0}")]
    Log(#[from] LogError),

    /// A log entry is not a record this waly can apply.
    #[error("log entry {position} is not a record replay can apply: {source}")]
    Record {
        position: Position,
        source: RecordError,
    },

    /// No database was named, and the log holds the records of more than one (the file log holds every
    /// database waly serves).
    #[error(
        "record {position} is of database \"{database}\", the records before it of \"{first}\": the log \
         holds the records of several databases; hint: name the one to replay with --database"
    )]
    SeveralDatabases {
        position: Position,
        database: String,
        first: String,
    },

    /// The database was dropped and created again under its name: the records from `position` on are
    /// of the new one.
    #[error(
        "record {position} is of a database \"{database}\" created anew under that name, the records \
         before it of the one dropped then; hint: replay the earlier database with --to {earlier}, or the \
         new one into an empty database with --from {position}"
    )]
    DatabaseCreatedAnew {
        position: Position,
        database: String,
        earlier: Position,
    },

    /// The records given are not in increasing position order.
    #[error(
        "record {position} came after record {previous}: records must be replayed in log order"
    )]
    OutOfOrder {
        position: Position,
        previous: Position,
    },
}

impl ReplayError {
    pub(crate) fn target(what: &str, e: &tokio_postgres::Error) -> ReplayError {
        ReplayError::Target {
            what: what.to_owned(),
            failure: Box::new(e.into()),
        }
    }
}

/// ", logged as v1" when a call ran upcast; nothing when it ran as logged.
fn logged_as(logged: u32, version: u32) -> String {
    if logged == version {
        String::new()
    } else {
        format!(", logged as v{logged}")
    }
}
