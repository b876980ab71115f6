//! The listener: accepts connections, hands each to a session, routes cancel requests, and stops
//! gracefully.
//!
//! On shutdown it stops accepting at once, lets every session finish (each closes at its first idle
//! moment outside a transaction), and after the configured timeout closes the rest. It must never read or
//! write protocol messages itself; that is the session's job.

pub mod cancel;
pub mod tls;
mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::AuthCatalog;
use crate::classify::ClassStats;
use crate::config::Config;
use cancel::CancelRegistry;

/// Everything sessions share.
pub struct ServerContext {
    pub config: Config,
    pub auth: AuthCatalog,
    pub tls: Option<tls::Tls>,
    pub cancels: Arc<CancelRegistry>,
    pub stats: Arc<ClassStats>,
    /// Cancelled when waly begins to shut down: sessions close once idle.
    pub draining: CancellationToken,
    /// Cancelled when the shutdown timeout has passed: sessions close now.
    pub terminating: CancellationToken,
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot prepare SCRAM authentication: {0}")]
    Auth(String),
    #[error("cannot start worker threads: {0}")]
    Workers(std::io::Error),
}

pub struct Server {
    ctx: Arc<ServerContext>,
    listener: TcpListener,
    workers: workers::Workers,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let tls = config.tls.as_ref().map(tls::load).transpose()?;
        let auth = AuthCatalog::new(&config, tls.as_ref().map(|t| t.cert_pem.as_slice()))
            .map_err(|e| ServerError::Auth(e.to_string()))?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    address: config.listen,
                    source,
                })?;
        let workers = workers::Workers::start(config.workers).map_err(ServerError::Workers)?;
        let ctx = Arc::new(ServerContext {
            config,
            auth,
            tls,
            cancels: Arc::default(),
            stats: Arc::default(),
            draining: CancellationToken::new(),
            terminating: CancellationToken::new(),
        });
        Ok(Self {
            ctx,
            listener,
            workers,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` resolves, then shuts down gracefully.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let Server {
            ctx,
            listener,
            workers,
        } = self;
        let sessions = TaskTracker::new();
        let ids = AtomicU64::new(1);
        tokio::pin!(stop);
        tracing::info!(
            listen = %ctx.config.listen,
            upstream = %ctx.config.upstream.address(),
            tls = ctx.tls.is_some(),
            workers = workers.len(),
            "waly is ready"
        );
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let id = ids.fetch_add(1, Ordering::Relaxed);
                        let span = tracing::info_span!("session", id, peer = %peer);
                        // The socket moves to its worker's runtime and registers there.
                        let Ok(stream) = stream.into_std() else { continue };
                        let ctx = Arc::clone(&ctx);
                        let session = sessions.track_future(async move {
                            match tokio::net::TcpStream::from_std(stream) {
                                Ok(stream) => crate::session::serve(stream, peer, ctx, span).await,
                                Err(e) => tracing::warn!(error = %e, "cannot register an accepted connection"),
                            }
                        });
                        workers.next().spawn(session);
                    }
                    Err(e) => {
                        // Usually EMFILE: out of file descriptors. Back off instead of spinning.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = &mut stop => break,
            }
        }
        drop(listener);
        sessions.close();
        tracing::info!(
            sessions = sessions.len(),
            timeout_secs = ctx.config.shutdown_timeout.as_secs(),
            "shutting down: no new connections; waiting for sessions to finish"
        );
        ctx.draining.cancel();
        if tokio::time::timeout(ctx.config.shutdown_timeout, sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = sessions.len(),
                "shutdown timeout reached: closing the remaining sessions"
            );
            ctx.terminating.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), sessions.wait()).await;
        }
        workers.stop();
        let s = ctx.stats.snapshot();
        tracing::info!(
            read = s.read,
            write = s.write,
            ddl = s.ddl,
            transaction = s.transaction,
            session = s.session,
            unknown = s.unknown,
            parses = s.parses,
            cache_hits = s.cache_hits,
            "waly stopped"
        );
    }
}
