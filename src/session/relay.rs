//! The relay: moves protocol messages between one client and its backend until either side ends.
//!
//! One task per session drives both directions with buffers and back-pressure: it reads from a side only
//! while the buffer towards the other side is below a high-water mark, and writes whenever there is
//! something to write. It therefore never blocks one direction on the other, so a pipelining client and a
//! backend streaming results cannot deadlock through waly. Bytes are forwarded unchanged; only message
//! boundaries are tracked, and only the messages the tracker and the write path ([`super::flow`]) need are
//! looked at. The write path decides where transactions end and runs the commit protocol there.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::flow::{Flow, Pumped};
use super::tracker::ProtocolTracker;
use crate::commit::Decisions;
use crate::commit::Resolver;
use crate::record::SessionInfo;
use crate::server::cancel::CancelTarget;
use crate::wire::frame::FrameScanner;
use crate::wire::socket::{PgReader, PgWriter};
use crate::wire::{FrameError, PgError, SqlState};

/// Bytes read per system call.
const READ_CHUNK: usize = 32 * 1024;
/// Stop reading a side once this much is waiting to be written to the other.
const HIGH_WATER: usize = 1024 * 1024;
/// Buffers grown past this are released once empty, so idle sessions stay small.
const KEEP_CAPACITY: usize = 256 * 1024;
/// How long a closing session may take to hand its last bytes over.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The client sent Terminate.
    ClientTerminated,
    /// The client's connection closed or failed without Terminate.
    ClientGone,
    /// The backend closed; the client was told.
    BackendGone,
    /// The client broke the protocol; it received a FATAL error.
    ProtocolViolation,
    /// waly is shutting down and the session was idle, or the shutdown timeout passed.
    Shutdown,
}

pub struct Relay<CR, CW> {
    pub client_r: CR,
    pub client_w: CW,
    pub backend_r: PgReader,
    pub backend_w: PgWriter,
    pub tracker: ProtocolTracker,
    pub cancel_target: CancelTarget,
    /// The client writer buffers internally (TLS) and must be flushed once its queue is written.
    pub client_needs_flushing: bool,
    /// The session's span, entered only for log lines (see `session::serve`).
    pub span: tracing::Span,
    pub draining: tokio_util::sync::CancellationToken,
    pub terminating: tokio_util::sync::CancellationToken,
    pub write: WriteContext,
    pub flow: Flow,
    pub client_frames: FrameScanner,
    pub backend_frames: FrameScanner,
}

/// What the commit protocol needs from the server and the session.
pub struct WriteContext {
    /// The log this database's records go to, and this process's direct commits in it.
    pub decisions: std::sync::Arc<Decisions>,
    pub session: SessionInfo,
    pub boot: String,
    pub protocol: crate::config::CommitProtocol,
    pub resolver: Resolver,
    /// Recognises domain operations at commit; `None` only while the commit protocol holds it.
    pub matcher: Option<crate::operations::Matcher>,
    /// The server, for installing waly's schema again where it went missing.
    pub server: std::sync::Arc<crate::server::ServerContext>,
    /// Whether Postgres sends the client text as UTF-8 (its client_encoding, as Postgres reports it).
    pub client_utf8: bool,
}

enum Event {
    ClientRead(std::io::Result<usize>),
    BackendRead(std::io::Result<usize>),
    BackendWrote(std::io::Result<usize>),
    ClientWrote(std::io::Result<usize>),
    ClientFlushed(std::io::Result<()>),
    Draining,
    Terminating,
}

pub(super) struct Buffers {
    pub from_client: BytesMut,
    pub to_backend: BytesMut,
    pub from_backend: BytesMut,
    pub to_client: BytesMut,
}

impl<CR, CW> Relay<CR, CW>
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
{
    pub async fn run(&mut self) -> Ending {
        let mut b = Buffers {
            from_client: BytesMut::new(),
            to_backend: BytesMut::new(),
            from_backend: BytesMut::new(),
            to_client: BytesMut::new(),
        };
        let mut client_needs_flush = false;
        let mut draining = false;
        let mut client_terminated = false;
        let (drain_token, terminate_token) = (self.draining.clone(), self.terminating.clone());
        // Created once: re-creating them per iteration would register and unregister waiters each time.
        let drain_signal = drain_token.cancelled();
        let terminate_signal = terminate_token.cancelled();
        tokio::pin!(drain_signal, terminate_signal);

        loop {
            if draining
                && self.tracker.idle()
                && self.flow.settled()
                && b.to_backend.is_empty()
                && b.to_client.is_empty()
            {
                return self.close_for_shutdown(b).await;
            }
            if client_terminated && b.to_backend.is_empty() {
                let _ = self.backend_w.shutdown().await;
                return Ending::ClientTerminated;
            }
            reserve(&mut b.from_client);
            reserve(&mut b.from_backend);

            // Biased: the order below is the polling order. Results first, then requests, then writes; the
            // shutdown signals last because they are almost never ready. Back-pressure (the high-water
            // conditions) keeps any one direction from starving the other.
            let event = tokio::select! {
                biased;
                r = self.backend_r.read_buf(&mut b.from_backend),
                    if b.to_client.len() < HIGH_WATER => Event::BackendRead(r),
                r = self.client_r.read_buf(&mut b.from_client),
                    if !client_terminated && b.to_backend.len() < HIGH_WATER
                        && b.from_client.len() < HIGH_WATER => Event::ClientRead(r),
                r = self.backend_w.write(&b.to_backend), if !b.to_backend.is_empty() => Event::BackendWrote(r),
                event = write_or_flush(&mut self.client_w, &b.to_client),
                    if !b.to_client.is_empty() || client_needs_flush => event,
                () = &mut drain_signal, if !draining => Event::Draining,
                () = &mut terminate_signal => Event::Terminating,
            };

            match event {
                Event::ClientRead(Ok(0)) | Event::ClientRead(Err(_)) => {
                    return self.client_gone().await;
                }
                Event::ClientRead(Ok(_)) => {
                    match self.pump_client(&mut b).await {
                        Ok(Pumped::Idle) => {}
                        Ok(Pumped::Terminated) => client_terminated = true,
                        Err(ending) => return self.conclude(ending, b).await,
                    }
                    if write_now(&mut self.backend_w, &mut b.to_backend).is_err() {
                        return self.backend_gone(b).await;
                    }
                    // The write path may have answered the client itself.
                    if !b.to_client.is_empty()
                        && write_now(&mut self.client_w, &mut b.to_client).is_err()
                    {
                        return self.client_gone().await;
                    }
                }
                Event::BackendRead(Ok(0)) | Event::BackendRead(Err(_)) => {
                    return self.backend_gone(b).await;
                }
                Event::BackendRead(Ok(_)) => {
                    if let Err(ending) = self.route_backend(&mut b).await {
                        return self.conclude(ending, b).await;
                    }
                    // Requests held for a transaction status may go now.
                    if !client_terminated && (!b.from_client.is_empty() || self.flow.has_pieces()) {
                        match self.pump_client(&mut b).await {
                            Ok(Pumped::Idle) => {}
                            Ok(Pumped::Terminated) => client_terminated = true,
                            Err(ending) => return self.conclude(ending, b).await,
                        }
                    }
                    if write_now(&mut self.backend_w, &mut b.to_backend).is_err() {
                        return self.backend_gone(b).await;
                    }
                    let before = b.to_client.len();
                    if write_now(&mut self.client_w, &mut b.to_client).is_err() {
                        return self.client_gone().await;
                    }
                    client_needs_flush |= self.client_needs_flushing && b.to_client.len() < before;
                }
                Event::BackendWrote(Ok(n)) => drained(&mut b.to_backend, n),
                Event::BackendWrote(Err(_)) => return self.backend_gone(b).await,
                Event::ClientWrote(Ok(n)) => {
                    drained(&mut b.to_client, n);
                    client_needs_flush = self.client_needs_flushing;
                }
                Event::ClientWrote(Err(_)) | Event::ClientFlushed(Err(_)) => {
                    return self.client_gone().await;
                }
                Event::ClientFlushed(Ok(())) => client_needs_flush = false,
                Event::Draining => draining = true,
                Event::Terminating => return self.close_for_shutdown(b).await,
            }
        }
    }

    /// Ends the session for a reason the write path gave.
    async fn conclude(&mut self, ending: Ending, b: Buffers) -> Ending {
        match ending {
            Ending::BackendGone => self.backend_gone(b).await,
            Ending::ProtocolViolation => {
                self.finish_client(&b.to_client).await;
                Ending::ProtocolViolation
            }
            other => other,
        }
    }

    /// The client left without Terminate: stop whatever Postgres is doing for it, then end the backend.
    async fn client_gone(&mut self) -> Ending {
        if self.tracker.busy() {
            self.span.in_scope(|| {
                tracing::debug!("client left mid-request; cancelling its backend's work")
            });
            if let Err(e) = self.cancel_target.cancel().await {
                self.span
                    .in_scope(|| tracing::warn!(error = %e, "could not cancel the backend's work"));
            }
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, self.backend_w.write_all(&TERMINATE)).await;
        Ending::ClientGone
    }

    /// The backend closed: the client gets what was pending, then Postgres' explanation or waly's.
    async fn backend_gone(&mut self, mut b: Buffers) -> Ending {
        if !self.tracker.backend_fatal {
            self.span
                .in_scope(|| tracing::warn!("the backend connection closed unexpectedly"));
            PgError::fatal(SqlState::CONNECTION_FAILURE, "server closed the connection unexpectedly")
                .with_detail("This probably means the server terminated abnormally before or while processing the request.")
                .encode(&mut b.to_client);
        }
        self.finish_client(&b.to_client).await;
        Ending::BackendGone
    }

    /// The client broke the protocol: Postgres is told to stop, the client gets FATAL 08P01 (queued in
    /// `to_client`; the caller closes).
    pub(super) async fn protocol_violation(&mut self, e: FrameError, b: &mut Buffers) -> Ending {
        self.span.in_scope(
            || tracing::warn!(error = %e, "client broke the protocol; closing its session"),
        );
        let _ = tokio::time::timeout(CLOSE_GRACE, self.backend_w.write_all(&b.to_backend)).await;
        if self.tracker.busy() {
            let _ = self.cancel_target.cancel().await;
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, self.backend_w.write_all(&TERMINATE)).await;
        PgError::fatal(SqlState::PROTOCOL_VIOLATION, e.to_string()).encode(&mut b.to_client);
        Ending::ProtocolViolation
    }

    async fn close_for_shutdown(&mut self, mut b: Buffers) -> Ending {
        if self.tracker.busy() {
            let _ = self.cancel_target.cancel().await;
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, self.backend_w.write_all(&TERMINATE)).await;
        PgError::fatal(
            SqlState::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        )
        .with_detail("waly is shutting down.")
        .encode(&mut b.to_client);
        self.finish_client(&b.to_client).await;
        Ending::Shutdown
    }

    /// Writes the last bytes to the client and closes its side, within a bounded time.
    async fn finish_client(&mut self, last: &[u8]) {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            self.client_w.write_all(last).await?;
            self.client_w.shutdown().await
        })
        .await;
    }
}

/// Writes what is pending for the client, or flushes once all is written (TLS buffers inside).
async fn write_or_flush<W: AsyncWrite + Unpin>(w: &mut W, pending: &[u8]) -> Event {
    if pending.is_empty() {
        Event::ClientFlushed(w.flush().await)
    } else {
        Event::ClientWrote(w.write(pending).await)
    }
}

/// Terminate ('X'), sent to the backend when a session ends without the client's own.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

fn reserve(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > KEEP_CAPACITY {
        *buf = BytesMut::new();
    }
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
}

/// Moves the first `n` bytes of `from` to the end of `to`; swaps buffers instead of copying when it can.
pub(super) fn forward(from: &mut BytesMut, n: usize, to: &mut BytesMut) {
    if n == 0 {
        return;
    }
    if to.is_empty() && n == from.len() {
        std::mem::swap(from, to);
    } else {
        to.extend_from_slice(&from[..n]);
        from.advance(n);
    }
}

/// Writes as much of `buf` as the socket takes now, without waiting: the common case (a small reply to a
/// small request) then leaves in the same turn it arrived in. Whatever is left is written by the loop.
pub(super) fn write_now<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &mut BytesMut,
) -> std::io::Result<()> {
    let mut cx = Context::from_waker(Waker::noop());
    while !buf.is_empty() {
        match Pin::new(&mut *w).poll_write(&mut cx, buf) {
            Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => drained(buf, n),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    Ok(())
}

fn drained(buf: &mut BytesMut, n: usize) {
    buf.advance(n);
    if buf.is_empty() {
        buf.clear();
    }
}
