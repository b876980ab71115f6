//! Logging waly into Postgres on behalf of a client.

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use thiserror::Error;
use tokio::io::AsyncWriteExt;

use crate::config::{Secret, Upstream};
use crate::wire::frame::{Origin, ReadError, read_message};
use crate::wire::socket::PgStream;
use crate::wire::{PgError, SqlState};

/// A backend connection that finished its startup: ready for queries.
pub struct BackendLogin {
    pub stream: PgStream,
    pub pid: i32,
    pub secret: i32,
    /// `ParameterStatus` and `NoticeResponse` messages Postgres sent during startup, as raw bytes in order,
    /// for the client.
    pub startup_messages: BytesMut,
    /// The client_encoding among those parameters.
    pub client_encoding: Option<String>,
}

#[derive(Debug, Error)]
pub enum LoginError {
    #[error("could not connect to Postgres at {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    /// Postgres refused the login; the raw `ErrorResponse` goes to the client unchanged.
    #[error("Postgres refused the login")]
    Refused(BytesMut),
    #[error("Postgres asked for a password for role \"{0}\" and waly has none")]
    NoPassword(String),
    #[error("Postgres asked for an authentication method waly does not support (code {0})")]
    UnsupportedMethod(i32),
    #[error("protocol error during login to Postgres: {0}")]
    Protocol(String),
    #[error("connection to Postgres lost during login: {0}")]
    Io(#[from] std::io::Error),
}

impl LoginError {
    /// The error the client receives, unless Postgres' own `ErrorResponse` is relayed instead.
    pub fn to_pg_error(&self, upstream: &Upstream) -> PgError {
        match self {
            LoginError::Connect { .. } | LoginError::Io(_) => PgError::fatal(
                SqlState::CONNECTION_FAILURE,
                "waly could not connect to Postgres",
            )
            .with_detail(self.to_string())
            .with_hint(format!(
                "Check that Postgres is running and accepts connections at {}.",
                upstream.address()
            )),
            LoginError::NoPassword(_) => {
                PgError::fatal(SqlState::INVALID_PASSWORD, self.to_string())
                    .with_hint("Set password_env for this user in waly.yaml.")
            }
            LoginError::UnsupportedMethod(_) | LoginError::Protocol(_) | LoginError::Refused(_) => {
                PgError::fatal(SqlState::CONNECTION_EXCEPTION, self.to_string())
            }
        }
    }
}

impl From<ReadError> for LoginError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(io) => LoginError::Io(io),
            ReadError::Eof => LoginError::Io(std::io::ErrorKind::UnexpectedEof.into()),
            ReadError::Frame(f) => LoginError::Protocol(f.to_string()),
        }
    }
}

/// Opens a backend connection and logs in as the startup message's user. `params` are the client's
/// startup parameters (user, database, application_name, options, ...), passed on unchanged.
pub async fn login(
    upstream: &Upstream,
    params: &[(String, String)],
    password: Option<&Secret>,
) -> Result<BackendLogin, LoginError> {
    let address = upstream.address();
    let mut stream = PgStream::connect(&upstream.host, upstream.port)
        .await
        .map_err(|source| LoginError::Connect {
            address: address.clone(),
            source,
        })?;

    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let mut out = BytesMut::new();
    frontend::startup_message(
        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &mut out,
    )?;
    stream.write_all(&out).await?;

    let mut scram: Option<ScramSha256> = None;
    let mut key = None;
    let mut startup_messages = BytesMut::new();
    let mut client_encoding = None;
    loop {
        let (tag, mut body) = read_message(&mut stream, Origin::Backend).await?;
        match tag {
            b'R' => {
                if body.len() < 4 {
                    return Err(LoginError::Protocol("short authentication request".into()));
                }
                let code = body.get_i32();
                let mut reply = BytesMut::new();
                let need_password = || {
                    password
                        .map(|p| p.expose().as_bytes())
                        .ok_or_else(|| LoginError::NoPassword(user.to_owned()))
                };
                match code {
                    0 => continue,
                    3 => frontend::password_message(need_password()?, &mut reply)?,
                    5 => {
                        let salt: [u8; 4] = body
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| LoginError::Protocol("short md5 salt".into()))?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            user.as_bytes(),
                            need_password()?,
                            salt,
                        );
                        frontend::password_message(hash.as_bytes(), &mut reply)?;
                    }
                    10 => {
                        let offered = body[..].split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                        if !offered {
                            return Err(LoginError::UnsupportedMethod(code));
                        }
                        let s = ScramSha256::new(need_password()?, ChannelBinding::unsupported());
                        frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut reply)?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().ok_or_else(|| {
                            LoginError::Protocol("SASL continue without SASL".into())
                        })?;
                        s.update(&body)
                            .map_err(|e| LoginError::Protocol(e.to_string()))?;
                        frontend::sasl_response(s.message(), &mut reply)?;
                    }
                    12 => {
                        let s = scram.as_mut().ok_or_else(|| {
                            LoginError::Protocol("SASL final without SASL".into())
                        })?;
                        s.finish(&body).map_err(|e| {
                            LoginError::Protocol(format!(
                                "Postgres' SCRAM signature is invalid: {e}"
                            ))
                        })?;
                        continue;
                    }
                    other => return Err(LoginError::UnsupportedMethod(other)),
                }
                stream.write_all(&reply).await?;
            }
            b'E' => return Err(LoginError::Refused(reframe(tag, &body))),
            b'S' | b'N' => {
                if let (b'S', Some(("client_encoding", value))) =
                    (tag, crate::wire::messages::parameter_status(&body))
                {
                    client_encoding = Some(value.to_owned());
                }
                startup_messages.extend_from_slice(&reframe(tag, &body));
            }
            b'K' => {
                if body.len() < 8 {
                    return Err(LoginError::Protocol("short BackendKeyData".into()));
                }
                key = Some((body.get_i32(), body.get_i32()));
            }
            b'v' => {} // NegotiateProtocolVersion: waly asks for 3.0, which every server speaks.
            b'Z' => {
                let (pid, secret) = key.ok_or_else(|| {
                    LoginError::Protocol("no BackendKeyData before ReadyForQuery".into())
                })?;
                return Ok(BackendLogin {
                    stream,
                    pid,
                    secret,
                    startup_messages,
                    client_encoding,
                });
            }
            other => {
                return Err(LoginError::Protocol(format!(
                    "unexpected message type {other} during login"
                )));
            }
        }
    }
}

/// Rebuilds the raw bytes of a message from its tag and body.
fn reframe(tag: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}
