//! Mutual TLS configuration for agents and the peers that dial them.
//!
//! TLS 1.3 only, ring provider. The acceptor requires a client certificate
//! chaining to the cluster CA (an unauthenticated peer fails the handshake and
//! never reaches a handler); the dialer checks the acceptor's certificate the
//! same way, against the name [`super::identity::AGENT_NAME`]. Which node a
//! verified peer is (its certificate's CN) is checked after the handshake, in
//! `stream::handshake`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::identity::{AGENT_NAME, NodeFiles};

/// Errors loading keys and certificates or building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A certificate file holds no certificate.
    #[error("{path}: holds no certificate")]
    NoCert {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Config(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store.add(c)?;
    }
    Ok(Arc::new(store))
}

/// The acceptor's (agent's) configuration: its certificate, and client
/// certificates required and verified against the CA.
pub fn server_config(files: &NodeFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider()).build()?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)?;
    Ok(Arc::new(cfg))
}

/// The dialer's configuration: trusts only the CA, presents its own certificate.
pub fn client_config(files: &NodeFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(certs(&files.cert)?, key(&files.key)?)?;
    Ok(Arc::new(cfg))
}

/// The name the dialer checks in the acceptor's certificate.
pub fn agent_server_name() -> ServerName<'static> {
    ServerName::DnsName(
        rustls::pki_types::DnsName::try_from(AGENT_NAME)
            .expect("AGENT_NAME is a valid DNS name") // constant, checked by a test
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build_from_issued_files() {
        let d = tempfile::tempdir().unwrap();
        let files = super::super::identity::init(d.path(), "hosta").unwrap();
        server_config(&files).unwrap();
        client_config(&files).unwrap();
        let _ = agent_server_name();
    }

    #[test]
    fn missing_or_bad_files_are_named_in_the_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ca.pem"), "not pem").unwrap();
        let files = NodeFiles::in_dir(d.path());
        let err = client_config(&files).unwrap_err().to_string();
        assert!(err.contains("ca.pem"), "{err}");
    }
}
