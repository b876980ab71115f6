//! Authentication on both sides of waly.
//!
//! `client` terminates the application's authentication at waly (SCRAM-SHA-256, md5, cleartext, trust)
//! against the users in the configuration; `upstream` logs waly into Postgres as the same role with the
//! configured credentials, so Postgres' own roles and permissions still apply. Neither side ever logs or
//! forwards a password.

pub mod client;
pub mod upstream;

pub use client::{AuthCatalog, authenticate_client};
pub use upstream::{BackendLogin, LoginError, login};

use bytes::BytesMut;
use pgwire::messages::Message;

/// Encodes one pgwire message into a fresh buffer.
pub(crate) fn encode<M: Message>(message: &M) -> BytesMut {
    let mut out = BytesMut::new();
    message
        .encode(&mut out)
        .expect("startup-phase messages are far below their length limits");
    out
}

/// Compares secrets in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
