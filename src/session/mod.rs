//! One client session: the startup handshake (TLS, protocol version, authentication, backend login),
//! then the relay until either side ends.
//!
//! A session owns exactly one backend connection for its whole life (session mode). It must never share
//! that connection with another client, and never outlive it.

mod flow;
mod own;
mod relay;
mod stream;
mod tracker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, SecretKey,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::auth::{self, LoginError, encode};
use crate::classify::StatementCache;
use crate::server::ServerContext;
use crate::server::cancel::{CancelKey, CancelTarget};
use crate::wire::frame::{FrameScanner, Origin};
use crate::wire::startup::{StartupError, StartupPacket, read_startup_packet};
use crate::wire::{PgError, SqlState};
use relay::Relay;
pub use stream::ClientStream;
use tracker::ProtocolTracker;

/// Follows a `ParameterStatus` from Postgres: the application_name that the session's records carry is
/// the one Postgres reports (after `SET application_name`, `SET LOCAL` and their undoing), not only the
/// one given at connection. An empty name is none.
/// With `client_utf8`, it also follows whether client_encoding hands text over as UTF-8.
fn follow_parameter(
    body: &[u8],
    application_name: &mut Option<String>,
    client_utf8: Option<&mut bool>,
) {
    match (crate::wire::messages::parameter_status(body), client_utf8) {
        (Some(("application_name", value)), _) => {
            *application_name = (!value.is_empty()).then(|| value.to_owned());
        }
        (Some(("client_encoding", value)), Some(utf8)) => *utf8 = sends_utf8(value),
        _ => {}
    }
}

/// Whether text reaches a client of this `client_encoding` as UTF-8, unconverted (SQL_ASCII passes the
/// server's bytes, which waly's capture writes as UTF-8 in a UTF8 database).
fn sends_utf8(client_encoding: &str) -> bool {
    ["UTF8", "UNICODE", "SQL_ASCII"]
        .iter()
        .any(|e| client_encoding.eq_ignore_ascii_case(e))
}

/// A session past its handshake, ready to relay.
struct Established {
    client: ClientStream,
    backend: crate::wire::socket::PgStream,
    cancel_key: CancelKey,
    cancel_target: CancelTarget,
    user: String,
    database: String,
    application_name: Option<String>,
    /// Whether Postgres sends this client text as UTF-8 (its client_encoding at login).
    client_utf8: bool,
    database_oid: u32,
}

/// Serves one accepted connection to its end. The session's span is entered for the handshake and for
/// each log line, not around the relay: entering it on every wake-up adds a cost to every relayed message.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ServerContext>,
    span: tracing::Span,
) {
    let started = Instant::now();
    let _ = stream.set_nodelay(true);
    let Some(session) = handshake(stream, &ctx).instrument(span.clone()).await else {
        return;
    };
    span.in_scope(|| {
        tracing::debug!(user = %session.user, database = %session.database, tls = session.client.is_tls(), "session started")
    });

    let Established {
        client,
        backend,
        cancel_key,
        cancel_target,
        user,
        database,
        application_name,
        client_utf8,
        database_oid,
    } = session;
    let write = relay::WriteContext {
        decisions: ctx.decisions.for_database(&database),
        session: crate::record::SessionInfo {
            role: None,
            database_oid: Some(database_oid),
            user: user.clone(),
            database: database.clone(),
            application_name,
            client_addr: peer.to_string(),
        },
        boot: ctx.boot.clone(),
        protocol: ctx.config.commit_protocol,
        resolver: ctx.resolver.clone(),
        matcher: Some(crate::operations::Matcher::new(Arc::clone(&ctx.operations))),
        server: Arc::clone(&ctx),
        client_utf8,
    };
    let tracker = ProtocolTracker::new(StatementCache::new(Arc::clone(&ctx.stats)));
    let (backend_r, backend_w) = backend.into_split();
    let backend = Backend {
        read: backend_r,
        write: backend_w,
        tracker,
        cancel_target,
    };
    let (ending, tracker) = match client {
        ClientStream::Plain(tcp) => {
            let (client_r, client_w) = tcp.into_split();
            run_relay(
                client_r,
                client_w,
                false,
                backend,
                write,
                &ctx,
                span.clone(),
            )
            .await
        }
        ClientStream::Tls(tls) => {
            let (client_r, client_w) = tokio::io::split(*tls);
            run_relay(client_r, client_w, true, backend, write, &ctx, span.clone()).await
        }
    };
    drop(cancel_key);
    span.in_scope(|| {
        tracing::debug!(
            %user, %database, %peer, ending = ?ending,
            reads = tracker.reads, writes = tracker.writes,
            duration_ms = started.elapsed().as_millis() as u64,
            "session ended"
        )
    });
}

/// The backend side of a session, handed to the relay.
struct Backend {
    read: crate::wire::socket::PgReader,
    write: crate::wire::socket::PgWriter,
    tracker: ProtocolTracker,
    cancel_target: CancelTarget,
}

async fn run_relay<CR, CW>(
    client_r: CR,
    client_w: CW,
    client_needs_flushing: bool,
    backend: Backend,
    write: relay::WriteContext,
    ctx: &ServerContext,
    span: tracing::Span,
) -> (relay::Ending, ProtocolTracker)
where
    CR: tokio::io::AsyncRead + Unpin,
    CW: tokio::io::AsyncWrite + Unpin,
{
    let mut relay = Relay {
        client_r,
        client_w,
        backend_r: backend.read,
        backend_w: backend.write,
        tracker: backend.tracker,
        cancel_target: backend.cancel_target,
        client_needs_flushing,
        span,
        draining: ctx.draining.clone(),
        terminating: ctx.terminating.clone(),
        write,
        flow: flow::Flow::default(),
        client_frames: FrameScanner::new(Origin::Frontend),
        backend_frames: FrameScanner::new(Origin::Backend),
    };
    let ending = relay.run().await;
    (ending, relay.tracker)
}

/// Sends a FATAL error and closes; used while the handshake is still under way.
async fn refuse(client: &mut ClientStream, error: PgError) {
    tracing::debug!(code = error.code.0, message = %error.message, "connection refused");
    let _ = client.write_all(&error.to_bytes()).await;
    let _ = client.shutdown().await;
}

/// Runs the startup phase. `None` when the connection ended there (a cancel request, a refusal, a client
/// that left); every refusal has already been sent.
async fn handshake(stream: TcpStream, ctx: &ServerContext) -> Option<Established> {
    let mut client = ClientStream::Plain(stream);
    let (minor, mut params) = loop {
        let packet = match read_startup_packet(&mut client).await {
            Ok(p) => p,
            Err(StartupError::Eof | StartupError::Io(_)) => return None,
            Err(e @ StartupError::UnsupportedProtocol { .. }) => {
                refuse(
                    &mut client,
                    PgError::fatal(SqlState::FEATURE_NOT_SUPPORTED, e.to_string()),
                )
                .await;
                return None;
            }
            Err(e) => {
                refuse(
                    &mut client,
                    PgError::fatal(SqlState::PROTOCOL_VIOLATION, e.to_string()),
                )
                .await;
                return None;
            }
        };
        match packet {
            StartupPacket::SslRequest if !client.is_tls() => match (&ctx.tls, client) {
                (Some(tls), ClientStream::Plain(mut tcp)) => {
                    tcp.write_all(b"S").await.ok()?;
                    match tls.acceptor.accept(tcp).await {
                        Ok(s) => client = ClientStream::Tls(Box::new(s)),
                        Err(e) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return None;
                        }
                    }
                }
                (_, mut other) => {
                    other.write_all(b"N").await.ok()?;
                    client = other;
                }
            },
            StartupPacket::GssEncRequest if !client.is_tls() => {
                client.write_all(b"N").await.ok()?
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                refuse(
                    &mut client,
                    PgError::fatal(
                        SqlState::PROTOCOL_VIOLATION,
                        "SSL/GSS request received over an encrypted connection",
                    ),
                )
                .await;
                return None;
            }
            StartupPacket::Cancel { pid, secret } => {
                match ctx.cancels.lookup(pid, &secret) {
                    Some(target) => {
                        if let Err(e) = target.cancel().await {
                            tracing::warn!(error = %e, "could not forward a cancel request to Postgres");
                        }
                    }
                    None => tracing::debug!(pid, "cancel request with an unknown key ignored"),
                }
                return None;
            }
            StartupPacket::Startup { minor, params, .. } => break (minor, params),
        }
    };

    // waly speaks protocol 3.0 with the client and with Postgres; newer minor versions and protocol
    // options are declined the standard way, as PgBouncer and older servers do.
    let options: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if minor > 0 || !options.is_empty() {
        client
            .write_all(&encode(&NegotiateProtocolVersion::new(0, options)))
            .await
            .ok()?;
        params.retain(|(k, _)| !k.starts_with("_pq_."));
    }

    let Some(user) = StartupPacket::param(&params, "user").map(str::to_owned) else {
        refuse(
            &mut client,
            PgError::fatal(
                SqlState::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            ),
        )
        .await;
        return None;
    };
    let database = StartupPacket::param(&params, "database")
        .unwrap_or(&user)
        .to_owned();
    if StartupPacket::param(&params, "replication")
        .is_some_and(|v| !matches!(v, "false" | "off" | "no" | "0"))
    {
        let e = PgError::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            "waly does not proxy replication connections",
        )
        .with_hint("Connect replication clients to Postgres directly.");
        refuse(&mut client, e).await;
        return None;
    }
    if ctx.tls.as_ref().is_some_and(|t| t.required) && !client.is_tls() {
        let e = PgError::fatal(
            SqlState::INVALID_AUTHORIZATION,
            format!("waly requires TLS: connection for user \"{user}\" refused, no encryption"),
        )
        .with_hint("Connect with sslmode=require.");
        refuse(&mut client, e).await;
        return None;
    }
    if ctx.draining.is_cancelled() {
        refuse(
            &mut client,
            PgError::fatal(SqlState::CANNOT_CONNECT_NOW, "waly is shutting down"),
        )
        .await;
        return None;
    }

    let configured = ctx.config.user(&user);
    let tls = client.is_tls();
    if let Err(e) = auth::authenticate_client(&mut client, &user, configured, tls, &ctx.auth).await
    {
        refuse(&mut client, e).await;
        return None;
    }

    let password = configured.and_then(|u| u.password.as_ref());
    let login = match auth::login(&ctx.config.upstream, &params, password).await {
        Ok(login) => login,
        Err(LoginError::Refused(raw)) => {
            tracing::debug!(%user, %database, "Postgres refused the login");
            let _ = client.write_all(&raw).await;
            let _ = client.shutdown().await;
            return None;
        }
        Err(e) => {
            tracing::warn!(%user, %database, error = %e, "could not log into Postgres");
            refuse(&mut client, e.to_pg_error(&ctx.config.upstream)).await;
            return None;
        }
    };

    // Every database waly serves carries its capture schema before the first statement is relayed
    // (checked after Postgres accepted the login, so its own refusals come first).
    let database_oid = match ctx.databases.ensure_migrated(&ctx.config, &database).await {
        Ok(oid) => oid,
        Err(e) => {
            tracing::warn!(%database, error = %e, "cannot serve the database without waly's schema");
            refuse(&mut client, e).await;
            return None;
        }
    };

    let cancel_target = CancelTarget {
        host: ctx.config.upstream.host.clone(),
        port: ctx.config.upstream.port,
        backend_pid: login.pid,
        backend_secret: login.secret,
    };
    let cancel_key = ctx.cancels.register(cancel_target.clone());
    let mut out = BytesMut::new();
    out.extend_from_slice(&encode(&Authentication::Ok));
    out.extend_from_slice(&login.startup_messages);
    out.extend_from_slice(&encode(&BackendKeyData::new(
        cancel_key.pid,
        SecretKey::I32(cancel_key.secret),
    )));
    out.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
    client.write_all(&out).await.ok()?;
    let client_utf8 = login.client_encoding.as_deref().is_none_or(sends_utf8);
    Some(Established {
        client_utf8,
        database_oid,
        client,
        backend: login.stream,
        cancel_key,
        cancel_target,
        application_name: StartupPacket::param(&params, "application_name")
            .filter(|name| !name.is_empty())
            .map(str::to_owned),
        user,
        database,
    })
}
