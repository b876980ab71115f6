//! The Postgres v3 wire protocol, at the level waly needs it.
//!
//! Owns framing (splitting byte streams into messages without copying them), the startup packets that
//! precede framing, decoding of the few messages waly must understand, and encoding of the errors waly
//! itself raises. It must never perform I/O policy (what to forward, when to close): that belongs to
//! `session`.

pub mod binary;
pub mod error;
pub mod frame;
pub mod messages;
pub mod socket;
pub mod startup;

pub use error::{PgError, SqlState};
pub use frame::{FrameError, FrameScanner, Scan};
