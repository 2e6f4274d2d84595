//! [`CaCert`]: the public half of the fleet CA, all that a broker or client needs to check
//! who a peer is.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::clock::{from_unix_secs, unix_secs};
use crate::error::{CertError, Result};
use crate::identity::{subject_identity, Identity};
use crate::serial::serial_from_bytes;

/// The fleet CA certificate (no private key).
#[derive(Clone, PartialEq, Eq)]
pub struct CaCert {
    pem: String,
    der: CertificateDer<'static>,
    subject: String,
}

impl std::fmt::Debug for CaCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaCert")
            .field("subject", &self.subject)
            .field("sha256", &self.fingerprint_sha256())
            .finish()
    }
}

impl CaCert {
    /// Reads the CA certificate from PEM (the first certificate in the text).
    ///
    /// Refuses a certificate that is not a CA (basicConstraints CA:TRUE).
    pub fn from_pem(pem: &str) -> Result<CaCert> {
        let der = crate::pemfile::parse_certs_pem(pem)?
            .into_iter()
            .next()
            .ok_or(CertError::NoCertificate {
                what: "the CA certificate",
            })?;
        Self::from_der(der.as_ref())
    }

    /// Reads the CA certificate from DER.
    pub fn from_der(der: &[u8]) -> Result<CaCert> {
        let cert = parse(der, "the CA certificate")?;
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| CertError::Parse {
                what: "the CA certificate",
                detail: e.to_string(),
            })?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(CertError::NotACa);
        }
        let subject = cert.subject().to_string();
        let pem = pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()));
        Ok(CaCert {
            pem,
            der: CertificateDer::from(der.to_vec()),
            subject,
        })
    }

    /// The certificate as PEM (one block).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The certificate as DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// The CA's subject name, e.g. "CN=Hammer fleet CA".
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Lowercase hex SHA-256 of the DER, no colons: what a user compares to pin the CA.
    pub fn fingerprint_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.der.as_ref()))
    }

    /// Checks a client's leaf certificate (DER) and returns the identity it proves.
    ///
    /// Checks, in order: it parses; its issuer is this CA and the CA's signature verifies;
    /// `now` lies inside both the leaf's and the CA's validity; it is not a CA
    /// (basicConstraints CA:FALSE present); it allows TLS client authentication; its subject
    /// has one CN, one OU of "device" or "service", and for a device one O (owner), with ids
    /// that follow the naming rules. Revocation is checked separately
    /// ([`crate::RevocationList`]).
    pub fn identity(&self, leaf_der: &[u8], now: SystemTime) -> Result<Identity> {
        let ca = parse(self.der.as_ref(), "the CA certificate")?;
        let leaf = parse(leaf_der, "the client certificate")?;
        let serial = serial_from_bytes(leaf.raw_serial());

        if leaf.issuer().as_raw() != ca.subject().as_raw() {
            return Err(self.not_ours(&leaf, "the issuer name is not this CA's name".into()));
        }
        leaf.verify_signature(Some(ca.public_key()))
            .map_err(|e| self.not_ours(&leaf, format!("the CA signature does not verify ({e})")))?;

        let now_secs = unix_secs(now);
        for (cert, serial) in [
            (&leaf, serial.clone()),
            (&ca, serial_from_bytes(ca.raw_serial())),
        ] {
            let v = cert.validity();
            if now_secs < v.not_before.timestamp() {
                return Err(CertError::NotYetValid {
                    serial,
                    not_before: v.not_before.timestamp(),
                });
            }
            if now_secs > v.not_after.timestamp() {
                return Err(CertError::Expired {
                    serial,
                    not_after: v.not_after.timestamp(),
                });
            }
        }

        let bc = leaf.basic_constraints().map_err(|e| CertError::Parse {
            what: "the client certificate",
            detail: e.to_string(),
        })?;
        match bc {
            Some(bc) if !bc.value.ca => {}
            _ => return Err(CertError::LeafIsCa(serial)),
        }
        let client_auth = leaf
            .extended_key_usage()
            .map_err(|e| CertError::Parse {
                what: "the client certificate",
                detail: e.to_string(),
            })?
            .is_some_and(|eku| eku.value.client_auth);
        if !client_auth {
            return Err(CertError::NotClientAuth(serial));
        }
        let not_after = from_unix_secs(leaf.validity().not_after.timestamp());
        subject_identity(&leaf, serial, not_after)
    }

    /// Like [`CaCert::identity`], for a leaf certificate given as PEM.
    pub fn identity_pem(&self, leaf_pem: &str, now: SystemTime) -> Result<Identity> {
        let der = crate::pemfile::parse_certs_pem(leaf_pem)?
            .into_iter()
            .next()
            .ok_or(CertError::NoCertificate {
                what: "the client certificate",
            })?;
        self.identity(der.as_ref(), now)
    }

    fn not_ours(&self, leaf: &X509Certificate<'_>, detail: String) -> CertError {
        CertError::NotIssuedByCa {
            issuer: crate::error::truncate(&leaf.issuer().to_string()),
            ca: self.subject.clone(),
            detail,
        }
    }
}

/// True when the certificate in `cert_pem` carries the public key of the CSR in `csr_pem`:
/// the certificate an enrollment returned is for the key this device made.
pub fn cert_matches_csr(cert_pem: &str, csr_pem: &str) -> Result<bool> {
    let der = crate::pemfile::parse_certs_pem(cert_pem)?
        .into_iter()
        .next()
        .ok_or(CertError::NoCertificate {
            what: "the device certificate",
        })?;
    let cert = parse(der.as_ref(), "the device certificate")?;
    let block = pem::parse(csr_pem).map_err(|e| CertError::Csr(format!("not PEM: {e}")))?;
    let (_, csr) = X509CertificationRequest::from_der(block.contents())
        .map_err(|e| CertError::Csr(format!("cannot parse: {e}")))?;
    Ok(cert.public_key().raw == csr.certification_request_info.subject_pki.raw)
}

/// Parses one DER certificate, refusing trailing bytes.
pub(crate) fn parse<'a>(der: &'a [u8], what: &'static str) -> Result<X509Certificate<'a>> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| CertError::Parse {
        what,
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(CertError::Parse {
            what,
            detail: format!("{} trailing bytes after the certificate", rest.len()),
        });
    }
    Ok(cert)
}
