//! PEM parsing of certificates and private keys (used by [`crate::cacert`] and
//! [`crate::tls`], so neither depends on the other for it).

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{CertError, Result};

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
