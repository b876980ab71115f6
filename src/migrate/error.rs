//! Why a migration run stopped: each error names the migration file involved, carries the SQLSTATE when
//! Postgres gave one, and says what to do about it.

use std::fmt;

use thiserror::Error;

/// `insufficient_privilege`, as Postgres itself raises it.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// What Postgres answered when it refused a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgFailure {
    pub sqlstate: Option<String>,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl From<&tokio_postgres::Error> for PgFailure {
    fn from(e: &tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => PgFailure {
                sqlstate: Some(db.code().code().to_owned()),
                message: db.message().to_owned(),
                detail: db.detail().map(str::to_owned),
                hint: db.hint().map(str::to_owned),
            },
            // Not an answer from Postgres (connection lost, protocol error): no SQLSTATE.
            None => PgFailure {
                sqlstate: e.code().map(|c| c.code().to_owned()),
                message: e.to_string(),
                detail: None,
                hint: None,
            },
        }
    }
}

impl fmt::Display for PgFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(code) = &self.sqlstate {
            write!(f, " (SQLSTATE {code})")?;
        }
        if let Some(detail) = &self.detail {
            write!(f, "; detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum MigrateError {
    /// Checked before anything is applied, so a refused run leaves the database as it was.
    #[error(
        "role \"{role}\" cannot apply waly migration {file}: it creates event triggers, which only a superuser \
         may create (SQLSTATE 42501); hint: run `waly migrate` once as a superuser (for example `postgres`); \
         waly then works with the application's own, unprivileged roles"
    )]
    NotSuperuser { role: String, file: String },

    /// A migration's SQL failed; the transaction was rolled back and nothing of it remains.
    #[error("waly migration {file} failed: {failure}")]
    Failed { file: String, failure: PgFailure },

    #[error(
        "waly migration {file} was changed after it was applied to this database (SHA-256 recorded in \
         waly.migrations: {recorded}; in this waly: {embedded}); hint: an applied migration must never change: \
         run the waly release that applied it, or restore the file and put the change in a new migration"
    )]
    Changed {
        file: String,
        recorded: String,
        embedded: String,
    },

    #[error(
        "this database has waly migration {file} applied, which this waly does not know; hint: a newer waly \
         migrated this database: run that version or a later one"
    )]
    UnknownApplied { file: String },

    /// A bookkeeping statement failed (lock, ledger, transaction control), not a migration's own SQL.
    #[error("{action}: {failure}")]
    Postgres {
        action: &'static str,
        failure: PgFailure,
    },
}

impl MigrateError {
    pub(super) fn postgres(action: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |e| MigrateError::Postgres {
            action,
            failure: PgFailure::from(&e),
        }
    }

    /// The SQLSTATE, when Postgres gave one or the error stands for one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            MigrateError::NotSuperuser { .. } => Some(INSUFFICIENT_PRIVILEGE),
            MigrateError::Failed { failure, .. } | MigrateError::Postgres { failure, .. } => {
                failure.sqlstate.as_deref()
            }
            MigrateError::Changed { .. } | MigrateError::UnknownApplied { .. } => None,
        }
    }
}
