//! Errors of the log, in backend-neutral terms, and the SQLSTATE a client sees for each.

use std::fmt::Display;
use std::io;

use crate::wire::SqlState;

/// Why a log operation failed. Cloneable: one failed group commit fails every record in it with the same
/// error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// No space left for the log (ENOSPC, EDQUOT). The record is not in the log; appends work again once
    /// space is freed, reads keep working.
    #[error("the log is full: {detail}")]
    Full { detail: String },
    /// The log cannot be written or read right now (an I/O error, a lock held by another process). The
    /// record is not in the log.
    #[error("the log is unavailable: {detail}")]
    Unavailable { detail: String },
    /// The append failed in a way that leaves its outcome unknown: the record may or may not be in the log
    /// after a restart. The caller must not assume either; recovery decides by reading the log.
    #[error("the log may or may not hold the record: {detail}")]
    InDoubt { detail: String },
    /// An earlier failure could not be cleaned up, so the log refuses every append until it is reopened
    /// (after a restart). Records refused this way are not in the log.
    #[error("the log refuses appends until restart: {detail}")]
    Poisoned { detail: String },
    /// Stored data fails its checks. `location` names the file (or partition), `offset` the byte offset.
    #[error("the log is corrupt at {location}, offset {offset}: {reason}")]
    Corrupt {
        location: String,
        offset: u64,
        reason: String,
    },
    /// The payload exceeds the log's record size limit. Nothing was written.
    #[error("a record of {size} bytes exceeds the log's limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    /// The log was shut down. Nothing was written.
    #[error("the log is closed")]
    Closed,
}

impl LogError {
    /// Maps an I/O error: ENOSPC and EDQUOT become [`LogError::Full`], anything else
    /// [`LogError::Unavailable`]. `context` says what was being done, for the detail.
    pub fn from_io(context: impl Display, error: &io::Error) -> LogError {
        let detail = format!("{context}: {error}");
        match error.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => LogError::Full { detail },
            _ => LogError::Unavailable { detail },
        }
    }

    /// The SQLSTATE a client gets when its transaction fails because of this error:
    ///
    /// | error | SQLSTATE |
    /// | --- | --- |
    /// | `Full` | `53100` disk_full |
    /// | `Unavailable`, `Poisoned`, `Closed` | `58030` io_error |
    /// | `InDoubt` | `40003` statement_completion_unknown |
    /// | `Corrupt` | `XX001` data_corrupted |
    /// | `TooLarge` | `54000` program_limit_exceeded |
    pub fn sqlstate(&self) -> SqlState {
        match self {
            LogError::Full { .. } => SqlState("53100"),
            LogError::Unavailable { .. } | LogError::Poisoned { .. } | LogError::Closed => {
                SqlState("58030")
            }
            LogError::InDoubt { .. } => SqlState("40003"),
            LogError::Corrupt { .. } => SqlState("XX001"),
            LogError::TooLarge { .. } => SqlState("54000"),
        }
    }

    /// Whether an append that failed with this error may nevertheless have logged its record.
    pub fn is_in_doubt(&self) -> bool {
        matches!(self, LogError::InDoubt { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_error_maps_full_disk_and_quota_to_disk_full() {
        for errno in [28 /* ENOSPC */, 122 /* EDQUOT */] {
            let e = LogError::from_io("writing", &io::Error::from_raw_os_error(errno));
            assert!(matches!(e, LogError::Full { .. }), "errno {errno}: {e:?}");
            assert_eq!(e.sqlstate().0, "53100");
        }
    }

    #[test]
    fn log_error_maps_other_io_errors_to_io_error() {
        let e = LogError::from_io("fsync", &io::Error::from_raw_os_error(5 /* EIO */));
        assert!(matches!(e, LogError::Unavailable { .. }), "{e:?}");
        assert_eq!(e.sqlstate().0, "58030");
        assert!(e.to_string().contains("fsync"), "{e}");
        assert!(!e.is_in_doubt());
        assert_eq!(
            LogError::InDoubt {
                detail: String::new()
            }
            .sqlstate()
            .0,
            "40003"
        );
        assert!(
            LogError::InDoubt {
                detail: String::new()
            }
            .is_in_doubt()
        );
    }
}
