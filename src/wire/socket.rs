//! The byte stream to Postgres: a TCP connection or a Unix-domain socket (libpq's convention: a host
//! that starts with `/` is the directory of the socket `.s.PGSQL.<port>`), and its owned read and write
//! halves, which the relay drives at once without a lock between them.
//!
//! Owns connecting and the dispatch between the two transports. It never reads or interprets the bytes
//! it carries: framing is `frame`'s, what to send is `session`'s.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream, tcp, unix};

/// Where a Postgres server listens, as libpq names it.
pub fn is_socket_directory(host: &str) -> bool {
    host.starts_with('/')
}

/// The address `host` and `port` stand for: `host:port`, or the socket file in the directory `host`.
pub fn display_address(host: &str, port: u16) -> String {
    if is_socket_directory(host) {
        format!("{}/.s.PGSQL.{port}", host.trim_end_matches('/'))
    } else {
        format!("{host}:{port}")
    }
}

/// A connection to Postgres, before it is split.
pub enum PgStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl PgStream {
    /// Connects to `host` (a name, an address, or a socket directory) and `port`.
    pub async fn connect(host: &str, port: u16) -> io::Result<PgStream> {
        if is_socket_directory(host) {
            Ok(PgStream::Unix(
                UnixStream::connect(display_address(host, port)).await?,
            ))
        } else {
            let stream = TcpStream::connect((host, port)).await?;
            // Protocol messages are small and each one waits for its answer.
            stream.set_nodelay(true)?;
            Ok(PgStream::Tcp(stream))
        }
    }

    pub fn into_split(self) -> (PgReader, PgWriter) {
        match self {
            PgStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (PgReader::Tcp(r), PgWriter::Tcp(w))
            }
            PgStream::Unix(s) => {
                let (r, w) = s.into_split();
                (PgReader::Unix(r), PgWriter::Unix(w))
            }
        }
    }
}

/// The read half of a [`PgStream`].
pub enum PgReader {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
}

/// The write half of a [`PgStream`].
pub enum PgWriter {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
}

/// Forwards a poll call to whichever transport the enum holds.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self.get_mut() {
            Self::Tcp($s) => $call,
            Self::Unix($s) => $call,
        }
    };
}

/// Implements `AsyncRead` for an enum of transports by forwarding the call.
macro_rules! forward_read {
    ($ty:ty) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                dispatch!(self, s => Pin::new(s).poll_read(cx, buf))
            }
        }
    };
}

forward_read!(PgStream);
forward_read!(PgReader);

/// Implements `AsyncWrite` for an enum of transports by forwarding every call.
macro_rules! forward_write {
    ($ty:ty) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                dispatch!(self, s => Pin::new(s).poll_write(cx, buf))
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                dispatch!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    Self::Tcp(s) => s.is_write_vectored(),
                    Self::Unix(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                dispatch!(self, s => Pin::new(s).poll_flush(cx))
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                dispatch!(self, s => Pin::new(s).poll_shutdown(cx))
            }
        }
    };
}

forward_write!(PgStream);
forward_write!(PgWriter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_directories_name_their_socket_file() {
        assert_eq!(
            display_address("/var/run/postgresql", 5432),
            "/var/run/postgresql/.s.PGSQL.5432"
        );
        assert_eq!(display_address("/tmp/", 5433), "/tmp/.s.PGSQL.5433");
        assert_eq!(display_address("db.local", 5433), "db.local:5433");
        assert!(!is_socket_directory("127.0.0.1"));
    }
}
