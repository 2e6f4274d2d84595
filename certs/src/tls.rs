//! rustls configurations for the fleet, all on the ring provider: mTLS server (clients must
//! chain to the fleet CA), plain server (HTTPS), and clients with or without a certificate.
//! PEM parsing lives in `pemfile` (re-exported here).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;

use crate::cacert::CaCert;
use crate::error::{CertError, Result};
pub use crate::pemfile::{parse_certs_pem, parse_key_pem};

/// The crypto provider used everywhere in Hammer: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide default provider. Safe to call any number of times.
pub fn install_default_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
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

/// Client config for enrollment: the server must present, in its chain, the CA certificate
/// whose SHA-256 is `ca_sha256` (lowercase hex, the `--ca-sha256` pin), and its leaf must be
/// a server certificate from that CA for the host name dialled. The device has no CA file yet;
/// the pin is all it trusts.
pub fn client_config_pinned_ca(ca_sha256: &str) -> Result<ClientConfig> {
    let pin = hex::decode(ca_sha256)
        .ok()
        .filter(|p| p.len() == 32)
        .ok_or_else(|| CertError::InvalidInput {
            what: "the CA fingerprint",
            detail: "must be 64 hex digits (SHA-256)".into(),
        })?;
    let verifier = Arc::new(PinnedCaVerifier {
        pin,
        provider: provider(),
    });
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// See [`client_config_pinned_ca`]: finds the pinned CA among the certificates the server
/// sent and verifies the leaf against it alone, with webpki (chain, validity, serverAuth
/// purpose, host name).
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::{Digest, Sha256};
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.pin.as_slice())
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server did not present the fleet CA pinned by --ca-sha256 \
                     (a wrong address, or a man in the middle)"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
