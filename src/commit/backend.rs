//! What the commit protocol needs from a session's backend connection: run one simple query and return
//! its rows, its error and the transaction status after it.

use bytes::{Bytes, BytesMut};

use crate::wire::messages;

/// A connection the protocol can run waly's own simple queries on.
pub trait Backend {
    /// Sends `sql` as one simple `Query` and reads everything up to its `ReadyForQuery`.
    fn query(&mut self, sql: &str) -> impl Future<Output = Result<Reply, BackendLost>>;
}

/// The backend connection closed or failed mid-query.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the connection to Postgres was lost: {0}")]
pub struct BackendLost(pub String);

/// The answer to one simple query.
#[derive(Debug, Default)]
pub struct Reply {
    /// One per statement that completed, in order.
    pub results: Vec<QueryResult>,
    /// The error that stopped the query, if any.
    pub error: Option<ServerError>,
    /// The transaction status after it: `I`, `T` or `E`.
    pub status: u8,
}

/// The rows (text format) and command tag of one completed statement.
#[derive(Debug, Default)]
pub struct QueryResult {
    pub tag: String,
    pub rows: Vec<Vec<Option<String>>>,
}

/// An `ErrorResponse` from Postgres, kept as sent so it can be relayed to the client unchanged.
#[derive(Debug, Clone)]
pub struct ServerError {
    /// The message body (fields), without type byte and length.
    pub body: Bytes,
}

impl ServerError {
    pub fn code(&self) -> &str {
        messages::error_field(&self.body, b'C').unwrap_or("XX000")
    }

    pub fn message(&self) -> &str {
        messages::error_field(&self.body, b'M').unwrap_or("")
    }

    /// The whole `ErrorResponse` message, optionally with its hint replaced.
    pub fn encode(&self, out: &mut BytesMut, hint: Option<&str>) {
        let mut body = BytesMut::with_capacity(self.body.len() + 64);
        let mut pos = 0;
        while let Some(&kind) = self.body.get(pos) {
            if kind == 0 {
                break;
            }
            let end = self.body[pos + 1..]
                .iter()
                .position(|&b| b == 0)
                .map_or(self.body.len(), |e| pos + 1 + e);
            if !(hint.is_some() && kind == b'H') {
                body.extend_from_slice(&self.body[pos..(end + 1).min(self.body.len())]);
            }
            pos = end + 1;
        }
        if let Some(hint) = hint {
            body.extend_from_slice(b"H");
            body.extend_from_slice(hint.as_bytes());
            body.extend_from_slice(b"\0");
        }
        body.extend_from_slice(b"\0");
        out.extend_from_slice(b"E");
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_hint_and_keeps_the_rest() {
        let e = ServerError {
            body: Bytes::from_static(b"SERROR\0C0A000\0Mno\0Hold\0\0"),
        };
        let mut out = BytesMut::new();
        e.encode(&mut out, Some("new"));
        assert_eq!(&out[5..], b"SERROR\0C0A000\0Mno\0Hnew\0\0");
        assert_eq!(
            u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            out.len() - 1
        );
        let mut same = BytesMut::new();
        e.encode(&mut same, None);
        assert_eq!(&same[5..], &e.body[..]);
    }
}
