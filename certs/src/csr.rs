//! Certificate signing requests: the device makes its key and a CSR locally
//! ([`new_device_key_and_csr`]); the CA checks the CSR's self-signature and takes only its
//! public key ([`csr_public_key`]), which must be ECDSA P-256 ([`check_key_type`]): any
//! other key is refused with a [`CertError::CsrKeyType`] that names it. Nothing else the
//! CSR asks for is ever used.

use rcgen::{CertificateParams, DnType, KeyPair, SubjectPublicKeyInfo, PKCS_ECDSA_P256_SHA256};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo as Spki;

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

/// Parses a PEM CSR, checks that its key is ECDSA P-256 and its self-signature (proof the
/// requester holds the key), and returns its public key alone.
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
    // The key type first: a CSR with another key gets the error that says what to do,
    // not a signature error (x509-parser cannot verify every algorithm, e.g. Ed448).
    check_key_type(&csr.certification_request_info.subject_pki)?;
    csr.verify_signature().map_err(|e| {
        CertError::Csr(format!(
            "its signature does not verify with its own public key ({e}); make a new key and CSR"
        ))
    })?;
    SubjectPublicKeyInfo::from_der(csr.certification_request_info.subject_pki.raw)
        .map_err(|e| CertError::Csr(format!("unsupported public key: {e}")))
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";

/// The name of a public key's type for an error message: "RSA-2048", "ECDSA P-384",
/// "Ed25519", or the algorithm's OID when it is none of the known ones.
fn key_type_name(spki: &Spki<'_>) -> String {
    let alg = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    match alg.as_str() {
        "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => {
            let bits = match spki.parsed() {
                Ok(PublicKey::RSA(k)) => rsa_bits(k.modulus),
                _ => 0,
            };
            let pss = if alg.ends_with(".10") { "-PSS" } else { "" };
            if bits == 0 {
                format!("RSA{pss}")
            } else {
                format!("RSA{pss}-{bits}")
            }
        }
        OID_EC_PUBLIC_KEY => match curve.as_deref() {
            Some(OID_P256) => "ECDSA P-256".into(),
            Some("1.3.132.0.34") => "ECDSA P-384".into(),
            Some("1.3.132.0.35") => "ECDSA P-521".into(),
            Some("1.3.132.0.10") => "ECDSA secp256k1".into(),
            Some(c) => format!("ECDSA on the curve {}", crate::error::truncate(c)),
            None => "ECDSA without a named curve".into(),
        },
        "1.3.101.112" => "Ed25519".into(),
        "1.3.101.113" => "Ed448".into(),
        "1.3.101.110" => "X25519".into(),
        "1.2.840.10040.4.1" => "DSA".into(),
        other => format!("of the algorithm {}", crate::error::truncate(other)),
    }
}

/// Bits of an RSA modulus (big-endian, leading zero bytes allowed).
fn rsa_bits(modulus: &[u8]) -> usize {
    let m: &[u8] = match modulus.iter().position(|b| *b != 0) {
        Some(i) => &modulus[i..],
        None => return 0,
    };
    m.len() * 8 - m[0].leading_zeros() as usize
}

/// Accepts only an ECDSA P-256 key given as an uncompressed point (what rustls and ring
/// verify, and what `hammer-manager` makes); anything else is a [`CertError::CsrKeyType`].
pub fn check_key_type(spki: &Spki<'_>) -> Result<()> {
    let name = key_type_name(spki);
    if name != "ECDSA P-256" {
        return Err(CertError::CsrKeyType { found: name });
    }
    let point = &spki.subject_public_key.data;
    if point.len() != 65 || point[0] != 0x04 {
        return Err(CertError::CsrKeyType {
            found: "ECDSA P-256 given as a compressed or malformed point".into(),
        });
    }
    Ok(())
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
    fn rsa_bits_count_the_modulus() {
        assert_eq!(rsa_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(rsa_bits(&[0x01, 0xff]), 9);
        assert_eq!(rsa_bits(&[0x00]), 0);
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
