//! TLS for client connections (rustls with the ring provider).

use std::path::Path;
use std::sync::Arc;

use thiserror::Error;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::config::TlsSettings;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read TLS file {path}: {message}")]
    File { path: String, message: String },
    #[error("invalid TLS certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The acceptor, and the certificate's PEM (SCRAM channel binding needs it).
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub cert_pem: Vec<u8>,
    pub required: bool,
}

fn file_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

pub fn load(settings: &TlsSettings) -> Result<Tls, TlsError> {
    let cert_pem = std::fs::read(&settings.cert).map_err(|e| file_error(&settings.cert, e))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&settings.cert, e))?;
    if certs.is_empty() {
        return Err(file_error(
            &settings.cert,
            "no certificate found in the file",
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| file_error(&settings.key, e))?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        cert_pem,
        required: settings.required,
    })
}
