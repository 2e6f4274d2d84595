//! Certificate signing requests: the device makes its key and a CSR locally
//! ([`new_device_key_and_csr`]); the CA checks the CSR's self-signature and takes only its
//! public key ([`csr_public_key`]). Nothing else the CSR asks for is ever used.

use rcgen::{CertificateParams, DnType, KeyPair, SubjectPublicKeyInfo, PKCS_ECDSA_P256_SHA256};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::error::{CertError, Result};

/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_PEM: usize = 16 * 1024;

/// Makes a fresh ECDSA P-256 key and a CSR for it. Returns `(key_pem, csr_pem)`.
///
/// The key stays on the device; only the CSR is sent to the service. The CSR's subject is a
/// placeholder: the CA sets every field of the certificate itself.
pub fn new_device_key_and_csr() -> Result<(String, String)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "hammer-device");
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Parses a PEM CSR, checks its self-signature (proof the requester holds the key) and
/// returns its public key alone.
pub fn csr_public_key(csr_pem: &str) -> Result<SubjectPublicKeyInfo> {
    if csr_pem.len() > MAX_CSR_PEM {
        return Err(CertError::Csr(format!(
            "{} bytes is larger than the limit of {MAX_CSR_PEM}",
            csr_pem.len()
        )));
    }
    let block = pem::parse(csr_pem).map_err(|e| CertError::Csr(format!("not PEM: {e}")))?;
    if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
        return Err(CertError::Csr(format!(
            "expected a PEM block \"CERTIFICATE REQUEST\", found \"{}\"",
            crate::error::truncate(block.tag())
        )));
    }
    let (rest, csr) = X509CertificationRequest::from_der(block.contents())
        .map_err(|e| CertError::Csr(format!("cannot parse: {e}")))?;
    if !rest.is_empty() {
        return Err(CertError::Csr("trailing bytes after the request".into()));
    }
    csr.verify_signature().map_err(|e| {
        CertError::Csr(format!(
            "its signature does not verify with its own public key ({e}); make a new key and CSR"
        ))
    })?;
    SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| CertError::Csr(format!("unsupported public key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_csr_verifies() {
        let (key, csr) = new_device_key_and_csr().unwrap();
        assert!(key.contains("PRIVATE KEY"));
        csr_public_key(&csr).unwrap();
    }

    #[test]
    fn garbage_refused() {
        assert!(csr_public_key("hello").is_err());
        assert!(csr_public_key(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )
        .is_err());
    }
}
