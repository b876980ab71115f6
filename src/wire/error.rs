//! Errors in Postgres' own form: severity, SQLSTATE, message, detail, hint.
//!
//! Every error waly raises towards a client is a [`PgError`], encoded as an `ErrorResponse` exactly as
//! Postgres would send it, so drivers surface it the usual way (`err.code`, `diag.sqlstate`). This module
//! must never decide *when* to send an error; it only shapes it.

use bytes::BytesMut;
use pgwire::error::ErrorInfo;
use pgwire::messages::Message;
use pgwire::messages::response::{ErrorResponse, NoticeResponse};

/// A five-character SQLSTATE code (see Postgres' errcodes appendix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(pub &'static str);

impl SqlState {
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    pub const CONNECTION_EXCEPTION: SqlState = SqlState("08000");
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    pub const INTERNAL_ERROR: SqlState = SqlState("XX000");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error to report to a client as an `ErrorResponse`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {}: {message}", severity.as_str(), code.0)]
pub struct PgError {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn error(code: SqlState, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            ..Self::error(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends the encoded `ErrorResponse` to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        ErrorResponse::from(self.info(self.severity.as_str()))
            .encode(out)
            .expect("an ErrorResponse has no length limit that waly's messages reach");
    }

    /// The same fields as a NoticeResponse with severity WARNING: for a failure that must not fail the
    /// statement it follows (the statement already took effect).
    pub fn encode_as_warning(&self, out: &mut BytesMut) {
        NoticeResponse::from(self.info("WARNING"))
            .encode(out)
            .expect("a NoticeResponse has no length limit that waly's messages reach");
    }

    fn info(&self, severity: &str) -> ErrorInfo {
        let mut info = ErrorInfo::new(
            severity.to_owned(),
            self.code.0.to_owned(),
            self.message.clone(),
        );
        info.severity_nonlocalized = Some(severity.to_owned());
        info.detail = self.detail.clone();
        info.hint = self.hint.clone();
        info
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fields_in_postgres_order() {
        let e = PgError::fatal(SqlState::PROTOCOL_VIOLATION, "invalid message").with_hint("h");
        let b = e.to_bytes();
        assert_eq!(b[0], b'E');
        let body = &b[5..];
        assert!(body.starts_with(b"SFATAL\0VFATAL\0C08P01\0Minvalid message\0Hh\0\0"));
    }
}
