//! Client authentication, terminated at waly.

use std::collections::HashMap;

use pgwire::api::auth::sasl::scram::{ScramSecret, ScramServerAuth, gen_salted_password};
use pgwire::messages::startup::{Authentication, PasswordMessageFamily};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{constant_time_eq, encode};
use crate::config::{AuthMethod, Config, User};
use crate::wire::frame::{Origin, ReadError, read_message};
use crate::wire::{PgError, SqlState};

const SCRAM_ITERATIONS: usize = 4096;
const SCRAM: &str = "SCRAM-SHA-256";
const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// What waly needs to check clients, prepared once at start (SCRAM keys are derived here, not per login).
pub struct AuthCatalog {
    scram_keys: HashMap<String, (Vec<u8>, Vec<u8>)>,
    scram_plain: ScramServerAuth,
    /// Channel binding (`SCRAM-SHA-256-PLUS`) for TLS clients, when a certificate is configured.
    scram_tls: Option<ScramServerAuth>,
}

impl AuthCatalog {
    pub fn new(
        config: &Config,
        tls_cert_pem: Option<&[u8]>,
    ) -> Result<Self, pgwire::error::PgWireError> {
        let mut scram_keys = HashMap::new();
        for user in &config.users {
            if let (AuthMethod::ScramSha256, Some(pw)) = (user.method, &user.password) {
                let salt = random_bytes(16);
                let salted = gen_salted_password(pw.expose(), &salt, SCRAM_ITERATIONS);
                scram_keys.insert(user.name.clone(), (salt, salted));
            }
        }
        let scram_tls = match tls_cert_pem {
            Some(pem) => {
                let mut s = ScramServerAuth::new();
                s.configure_certificate(pem)?;
                Some(s)
            }
            None => None,
        };
        Ok(Self {
            scram_keys,
            scram_plain: ScramServerAuth::new(),
            scram_tls,
        })
    }
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

fn auth_failed(user: &str) -> PgError {
    PgError::fatal(
        SqlState::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

fn protocol_error(what: impl Into<String>) -> PgError {
    PgError::fatal(SqlState::PROTOCOL_VIOLATION, what)
}

/// Runs the authentication exchange for `username`. On success nothing has been sent that ends the
/// exchange: the caller sends `AuthenticationOk` once Postgres has accepted waly's login. On failure the
/// returned error is what the client must receive (FATAL), and the reason is logged here.
pub async fn authenticate_client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    username: &str,
    user: Option<&User>,
    tls: bool,
    catalog: &AuthCatalog,
) -> Result<(), PgError> {
    let Some(user) = user else {
        tracing::warn!(
            user = username,
            "authentication refused: no such user in waly's configuration"
        );
        // Run a SCRAM exchange that cannot succeed, so a client cannot tell unknown users from bad passwords.
        let decoy = (random_bytes(16), random_bytes(32));
        return scram(stream, username, &decoy, tls, catalog).await;
    };
    let result = match user.method {
        AuthMethod::Trust => Ok(()),
        AuthMethod::Password => cleartext(stream, user).await,
        AuthMethod::Md5 => md5(stream, user).await,
        AuthMethod::ScramSha256 => {
            let keys = catalog
                .scram_keys
                .get(&user.name)
                .expect("every scram user has keys");
            scram(stream, username, keys, tls, catalog).await
        }
    };
    if let Err(e) = &result {
        tracing::warn!(user = username, method = %user.method, error = %e.message, "authentication failed");
    }
    result
}

async fn read_password<S: AsyncRead + Unpin>(
    stream: &mut S,
    user: &str,
) -> Result<PasswordMessageFamily, PgError> {
    match read_message(stream, Origin::Frontend).await {
        Ok((b'p', body)) => Ok(PasswordMessageFamily::Raw(body)),
        Ok((tag, _)) => Err(protocol_error(format!(
            "expected password response, got message type {tag}"
        ))),
        Err(ReadError::Eof) => Err(auth_failed(user)
            .with_detail("The client closed the connection during authentication.")),
        Err(e) => Err(protocol_error(e.to_string())),
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, auth: Authentication) -> Result<(), PgError> {
    stream.write_all(&encode(&auth)).await.map_err(|e| {
        PgError::fatal(
            SqlState::CONNECTION_FAILURE,
            format!("could not send data to client: {e}"),
        )
    })
}

fn expected_password(user: &User) -> &str {
    user.password
        .as_ref()
        .map(|p| p.expose())
        .expect("config guarantees a password for non-trust users")
}

async fn cleartext<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    user: &User,
) -> Result<(), PgError> {
    send(stream, Authentication::CleartextPassword).await?;
    let given = read_password(stream, &user.name)
        .await?
        .into_password()
        .map_err(|e| protocol_error(e.to_string()))?;
    if constant_time_eq(
        given.password.as_bytes(),
        expected_password(user).as_bytes(),
    ) {
        Ok(())
    } else {
        Err(auth_failed(&user.name))
    }
}

async fn md5<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    user: &User,
) -> Result<(), PgError> {
    let salt: [u8; 4] = random_bytes(4).try_into().expect("four bytes");
    send(stream, Authentication::MD5Password(salt.to_vec())).await?;
    let given = read_password(stream, &user.name)
        .await?
        .into_password()
        .map_err(|e| protocol_error(e.to_string()))?;
    let expected = postgres_protocol::authentication::md5_hash(
        user.name.as_bytes(),
        expected_password(user).as_bytes(),
        salt,
    );
    if constant_time_eq(given.password.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(auth_failed(&user.name))
    }
}

async fn scram<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    username: &str,
    (salt, salted_password): &(Vec<u8>, Vec<u8>),
    tls: bool,
    catalog: &AuthCatalog,
) -> Result<(), PgError> {
    let (server, mechanisms) = match (&catalog.scram_tls, tls) {
        (Some(bound), true) => (bound, vec![SCRAM_PLUS.to_owned(), SCRAM.to_owned()]),
        _ => (&catalog.scram_plain, vec![SCRAM.to_owned()]),
    };
    send(stream, Authentication::SASL(mechanisms.clone())).await?;

    let initial = read_password(stream, username)
        .await?
        .into_sasl_initial_response()
        .map_err(|e| protocol_error(format!("malformed SASL initial response: {e}")))?;
    if !mechanisms.contains(&initial.auth_method) {
        return Err(protocol_error(format!(
            "client selected an invalid SASL authentication mechanism: {}",
            initial.auth_method
        )));
    }
    let secret = ScramSecret::SaltedPassword {
        salt: salt.clone(),
        salted_password: salted_password.clone(),
    };
    let client_first = initial.data.unwrap_or_default();
    let (server_first, waiting) = server
        .on_client_first_message_with_secret(&client_first, secret)
        .map_err(|e| protocol_error(format!("malformed SCRAM message: {e}")))?;
    send(
        stream,
        Authentication::SASLContinue(server_first.into_bytes().into()),
    )
    .await?;

    let response = read_password(stream, username)
        .await?
        .into_sasl_response()
        .map_err(|e| protocol_error(format!("malformed SASL response: {e}")))?;
    let server_final = waiting
        .on_client_final_message(&response.data)
        .map_err(|_| auth_failed(username))?;
    send(
        stream,
        Authentication::SASLFinal(server_final.into_bytes().into()),
    )
    .await
}
