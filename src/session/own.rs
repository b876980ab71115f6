//! waly's own queries on a session's backend connection, used by the commit protocol between two client
//! requests. Replies are consumed here, never shown to the client, except what Postgres sends
//! unprompted (notices, notifications, parameter changes), which is passed on; a client_encoding change,
//! which only the commit protocol's own `SET LOCAL` causes, is not.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::commit::{Backend, BackendLost, QueryResult, Reply, ServerError};
use crate::wire::frame::{FrameScanner, Scan};
use crate::wire::messages::{self, encode};
use crate::wire::socket::{PgReader, PgWriter};

pub struct OwnQueries<'a> {
    pub read: &'a mut PgReader,
    pub write: &'a mut PgWriter,
    /// Bytes read from the backend and not yet scanned (shared with the relay).
    pub inbox: &'a mut BytesMut,
    pub scanner: &'a mut FrameScanner,
    /// Where messages for the client go.
    pub to_client: &'a mut BytesMut,
    /// The session's application_name, kept as Postgres reports it.
    pub application_name: &'a mut Option<String>,
}

impl Backend for OwnQueries<'_> {
    async fn query(&mut self, sql: &str) -> Result<Reply, BackendLost> {
        let mut out = BytesMut::new();
        encode::query(&mut out, sql);
        self.write
            .write_all(&out)
            .await
            .map_err(|e| BackendLost(e.to_string()))?;
        let mut reply = Reply::default();
        let mut current = QueryResult::default();
        loop {
            let (tag, len) = match self.scanner.next(self.inbox, |_| true) {
                Ok(Scan::Message { tag, len, .. }) => (tag, len),
                Ok(Scan::Pass(_)) => unreachable!("every message is inspected"),
                Ok(Scan::NeedMore) => {
                    self.inbox.reserve(8 * 1024);
                    match self.read.read_buf(self.inbox).await {
                        Ok(0) => return Err(BackendLost("Postgres closed the connection".into())),
                        Ok(_) => continue,
                        Err(e) => return Err(BackendLost(e.to_string())),
                    }
                }
                Err(e) => return Err(BackendLost(format!("invalid message from Postgres: {e}"))),
            };
            let body = &self.inbox[5..len];
            match tag {
                b'D' => current
                    .rows
                    .push(messages::data_row(body).unwrap_or_default()),
                b'C' => {
                    current.tag = messages::command_tag(body).unwrap_or("").to_owned();
                    reply.results.push(std::mem::take(&mut current));
                }
                b'E' => {
                    reply.error = Some(ServerError {
                        body: bytes::Bytes::copy_from_slice(body),
                    })
                }
                b'Z' => {
                    reply.status = messages::ready_status(body).unwrap_or(b'I');
                    self.inbox.advance(len);
                    return Ok(reply);
                }
                // A client_encoding change here is the commit protocol's own SET LOCAL (or its end):
                // the client's encoding never changed.
                b'S' if matches!(
                    messages::parameter_status(body),
                    Some(("client_encoding", _))
                ) => {}
                b'S' => {
                    super::follow_parameter(body, self.application_name, None);
                    self.to_client.extend_from_slice(&self.inbox[..len]);
                }
                b'N' | b'A' => self.to_client.extend_from_slice(&self.inbox[..len]),
                _ => {}
            }
            self.inbox.advance(len);
        }
    }
}
