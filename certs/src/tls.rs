//! rustls configurations for the fleet, all on the ring provider: mTLS server (clients must
//! chain to the fleet CA), plain server (HTTPS), and clients with or without a certificate.
//! Also PEM parsing of certificates and keys.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::cacert::CaCert;
use crate::error::{CertError, Result};

/// The crypto provider used everywhere in Hammer: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide default provider. Safe to call any number of times.
pub fn install_default_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// All certificates in a PEM text, in order. Errors if there is none.
pub fn parse_certs_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            what: "certificate PEM",
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            what: "certificate PEM",
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in a PEM text.
pub fn parse_key_pem(pem: &str) -> Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| CertError::Pem {
            what: "private key PEM",
            detail: e.to_string(),
        })?
        .ok_or(CertError::NoPrivateKey {
            what: "private key PEM",
        })
}

fn roots(ca_ders: Vec<CertificateDer<'static>>) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for der in ca_ders {
        roots.add(der)?;
    }
    Ok(Arc::new(roots))
}

/// Server config that requires a client certificate chained to `ca` (the MQTT front door).
/// Identity and revocation are checked afterwards with [`CaCert::identity`] and
/// [`crate::RevocationList`].
pub fn server_config_mtls(ca: &CaCert, cert_pem: &str, key_pem: &str) -> Result<ServerConfig> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(vec![ca.der().clone()])?, provider())
            .build()
            .map_err(|e| CertError::Verifier(e.to_string()))?;
    Ok(ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(parse_certs_pem(cert_pem)?, parse_key_pem(key_pem)?)?)
}

/// Server config without client authentication (HTTPS).
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<ServerConfig> {
    Ok(ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(parse_certs_pem(cert_pem)?, parse_key_pem(key_pem)?)?)
}

/// Client config that trusts only the CA(s) in `ca_pem` and authenticates with our
/// certificate and key.
pub fn client_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<ClientConfig> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(parse_certs_pem(ca_pem)?)?)
        .with_client_auth_cert(parse_certs_pem(cert_pem)?, parse_key_pem(key_pem)?)?)
}

/// Client config that trusts only the CA(s) in `ca_pem`, without a client certificate.
pub fn client_config_no_auth(ca_pem: &str) -> Result<ClientConfig> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(parse_certs_pem(ca_pem)?)?)
        .with_no_client_auth())
}
