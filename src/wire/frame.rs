//! Framing: turns a byte stream into protocol messages (`tag`, `i32` length, body).
//!
//! The scanner never copies. A message the caller wants to inspect is returned whole once it is entirely in
//! the buffer; every other message is reported as a run of bytes to pass through, possibly in pieces, so a
//! 100 MB `DataRow` streams without being buffered. The scanner enforces the length rules Postgres itself
//! enforces on frontend messages. It must never allocate in proportion to a length it has not yet received.

use thiserror::Error;

/// Tag byte plus the `i32` length.
pub const HEADER_LEN: usize = 5;

/// Postgres' `PQ_LARGE_MESSAGE_LIMIT`: no message may be larger than 1 GB - 1.
pub const MAX_MESSAGE_LEN: usize = 0x3fff_ffff;

/// Postgres' `PQ_SMALL_MESSAGE_LIMIT`, the limit for messages that carry no user data.
pub const SMALL_MESSAGE_LEN: usize = 10_000;

/// A framing violation. Postgres answers each with FATAL 08P01 and closes the connection.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {len} for message type \"{}\"", char::from(*tag))]
    InvalidLength { tag: u8, len: i64 },
    #[error("invalid frontend message type {tag}")]
    UnknownFrontendType { tag: u8 },
}

/// What the next bytes of a buffer are.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan<'a> {
    /// This many bytes (a whole message or a piece of one) may be forwarded without looking at them.
    Pass(usize),
    /// A whole message the caller asked to inspect. `len` is its full size including the header.
    Message { tag: u8, body: &'a [u8], len: usize },
    /// Nothing complete yet; read more.
    NeedMore,
}

/// Which side of the connection produced the stream; decides the length rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Messages from the application (frontend): validated as Postgres validates them.
    Frontend,
    /// Messages from Postgres (backend): trusted for type, still bounded in length.
    Backend,
}

/// Splits a stream into messages, remembering a message only partly passed through.
#[derive(Debug)]
pub struct FrameScanner {
    origin: Origin,
    /// Bytes of a passed-through message still to come.
    pass_remaining: usize,
}

impl FrameScanner {
    pub fn new(origin: Origin) -> Self {
        Self {
            origin,
            pass_remaining: 0,
        }
    }

    /// True when the scanner sits between two messages.
    pub fn at_boundary(&self) -> bool {
        self.pass_remaining == 0
    }

    /// Looks at the start of `buf`. `inspect(tag)` says whether the caller needs that message whole.
    /// The caller must consume exactly the bytes reported (`Pass(n)` or `Message { len }`) before the next call.
    pub fn next<'a>(
        &mut self,
        buf: &'a [u8],
        inspect: impl FnOnce(u8) -> bool,
    ) -> Result<Scan<'a>, FrameError> {
        if self.pass_remaining > 0 {
            if buf.is_empty() {
                return Ok(Scan::NeedMore);
            }
            let n = self.pass_remaining.min(buf.len());
            self.pass_remaining -= n;
            return Ok(Scan::Pass(n));
        }
        if buf.len() < HEADER_LEN {
            return Ok(Scan::NeedMore);
        }
        let tag = buf[0];
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        self.check(tag, len)?;
        let total = 1 + len as usize;
        if inspect(tag) {
            if buf.len() < total {
                return Ok(Scan::NeedMore);
            }
            return Ok(Scan::Message {
                tag,
                body: &buf[HEADER_LEN..total],
                len: total,
            });
        }
        let n = total.min(buf.len());
        self.pass_remaining = total - n;
        Ok(Scan::Pass(n))
    }

    fn check(&self, tag: u8, len: i32) -> Result<(), FrameError> {
        let invalid = || FrameError::InvalidLength {
            tag,
            len: len.into(),
        };
        if len < 4 || len as usize > MAX_MESSAGE_LEN {
            return Err(invalid());
        }
        if self.origin == Origin::Frontend {
            let limit = frontend_limit(tag).ok_or(FrameError::UnknownFrontendType { tag })?;
            if len as usize > limit {
                return Err(invalid());
            }
        }
        Ok(())
    }
}

/// The largest length Postgres accepts for a frontend message type, or `None` for a type it does not know.
/// Mirrors `SocketBackend()` in Postgres' `postgres.c`.
pub fn frontend_limit(tag: u8) -> Option<usize> {
    match tag {
        // Query, Parse, Bind, FunctionCall, CopyData, CopyFail, password family: carry user data.
        b'Q' | b'P' | b'B' | b'F' | b'd' | b'f' | b'p' => Some(MAX_MESSAGE_LEN),
        // Execute, Describe, Close, Sync, Flush, Terminate, CopyDone.
        b'E' | b'D' | b'C' | b'S' | b'H' | b'X' | b'c' => Some(SMALL_MESSAGE_LEN),
        _ => None,
    }
}

/// Why a whole message could not be read during the startup phase.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("connection closed")]
    Eof,
    #[error(transparent)]
    Io(std::io::Error),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ReadError::Eof
        } else {
            ReadError::Io(e)
        }
    }
}

/// Reads one whole message. For the startup phase only, where messages are few and small; the relay
/// uses [`FrameScanner`] on its buffers instead.
pub async fn read_message<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    origin: Origin,
) -> Result<(u8, bytes::BytesMut), ReadError> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).await?;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    FrameScanner::new(origin).check(header[0], len)?;
    // Authentication-phase messages are small; refuse to buffer more than Postgres would for them.
    if origin == Origin::Frontend && len as usize > SMALL_MESSAGE_LEN {
        return Err(FrameError::InvalidLength {
            tag: header[0],
            len: len.into(),
        }
        .into());
    }
    let mut body = bytes::BytesMut::zeroed(len as usize - 4);
    stream.read_exact(&mut body).await?;
    Ok((header[0], body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn inspected_message_waits_until_whole() {
        let m = msg(b'Q', b"select 1\0");
        let mut s = FrameScanner::new(Origin::Frontend);
        assert_eq!(s.next(&m[..7], |_| true).unwrap(), Scan::NeedMore);
        assert_eq!(
            s.next(&m, |_| true).unwrap(),
            Scan::Message {
                tag: b'Q',
                body: b"select 1\0",
                len: m.len()
            }
        );
    }

    #[test]
    fn passed_message_streams_in_pieces() {
        let m = msg(b'D', &[7u8; 100]);
        let mut s = FrameScanner::new(Origin::Backend);
        assert_eq!(s.next(&m[..30], |_| false).unwrap(), Scan::Pass(30));
        assert!(!s.at_boundary());
        assert_eq!(
            s.next(&m[30..], |_| false).unwrap(),
            Scan::Pass(m.len() - 30)
        );
        assert!(s.at_boundary());
    }

    #[test]
    fn bad_lengths_and_types_are_refused() {
        let mut s = FrameScanner::new(Origin::Frontend);
        let short = [b'Q', 0, 0, 0, 3];
        assert!(matches!(
            s.next(&short, |_| true),
            Err(FrameError::InvalidLength { .. })
        ));
        let sync_too_big = [b'S', 0, 1, 0, 0];
        assert!(matches!(
            s.next(&sync_too_big, |_| true),
            Err(FrameError::InvalidLength { .. })
        ));
        let negative = [b'Q', 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            s.next(&negative, |_| true),
            Err(FrameError::InvalidLength { .. })
        ));
        let unknown = [b'z', 0, 0, 0, 4];
        assert_eq!(
            s.next(&unknown, |_| true),
            Err(FrameError::UnknownFrontendType { tag: b'z' })
        );
    }
}
