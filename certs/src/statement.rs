//! Statements signed by the fleet CA key: short texts that bind a value the device will trust
//! later (the broker URL, the service's signing key) to the CA it pins, whatever path the
//! enrollment answer took. ECDSA P-256 with SHA-256, signatures as ASN.1 DER.
//!
//! The signed message is [`message`]: a domain tag, the field's name, the device id and the
//! value, separated by NUL bytes (none of them can contain one), so a signature for one field
//! or one device is never valid for another.

use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING,
};

use crate::cacert::{parse, CaCert};
use crate::error::{CertError, Result};

/// Domain tag of enrollment statements; a new meaning gets a new tag.
pub const ENROLL_DOMAIN: &str = "hammer-enroll-v1";

/// The exact bytes signed for `field` of `device_id`'s enrollment answer.
pub fn message(field: &str, device_id: &str, value: &str) -> Vec<u8> {
    [ENROLL_DOMAIN, field, device_id, value]
        .join("\0")
        .into_bytes()
}

/// The CA's signing half, made from its PKCS#8 key.
pub(crate) struct StatementSigner {
    key: EcdsaKeyPair,
}

impl StatementSigner {
    pub(crate) fn from_pkcs8(der: &[u8]) -> Result<StatementSigner> {
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der, &SystemRandom::new())
                .map_err(|e| CertError::InvalidInput {
                    what: "the CA key",
                    detail: format!("not a P-256 PKCS#8 key: {e}"),
                })?;
        Ok(StatementSigner { key })
    }

    /// Signs `message(field, device_id, value)`; lowercase hex DER.
    pub(crate) fn sign(&self, field: &str, device_id: &str, value: &str) -> Result<String> {
        let sig = self
            .key
            .sign(&SystemRandom::new(), &message(field, device_id, value))
            .map_err(|_| CertError::InvalidInput {
                what: "a CA statement",
                detail: "signing failed".into(),
            })?;
        Ok(hex::encode(sig.as_ref()))
    }
}

impl CaCert {
    /// True when `signature_hex` is this CA's signature of `message(field, device_id, value)`.
    pub fn verify_statement(
        &self,
        field: &str,
        device_id: &str,
        value: &str,
        signature_hex: &str,
    ) -> bool {
        let Ok(sig) = hex::decode(signature_hex.trim()) else {
            return false;
        };
        let Ok(cert) = parse(self.der().as_ref(), "the CA certificate") else {
            return false;
        };
        let point = cert.public_key().subject_public_key.data.as_ref();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
            .verify(&message(field, device_id, value), &sig)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use crate::Ca;

    #[test]
    fn a_statement_verifies_only_for_its_field_device_value_and_ca() {
        let ca = Ca::create("statement test").unwrap();
        let other = Ca::create("other").unwrap();
        let sig = ca
            .sign_statement("broker_url", "dev1", "mqtts://h:8883")
            .unwrap();
        let c = ca.cert();
        assert!(c.verify_statement("broker_url", "dev1", "mqtts://h:8883", &sig));
        assert!(!c.verify_statement("broker_url", "dev1", "mqtt://h:8883", &sig));
        assert!(!c.verify_statement("broker_url", "dev2", "mqtts://h:8883", &sig));
        assert!(!c.verify_statement("service_public_key", "dev1", "mqtts://h:8883", &sig));
        assert!(!other
            .cert()
            .verify_statement("broker_url", "dev1", "mqtts://h:8883", &sig));
        assert!(!c.verify_statement("broker_url", "dev1", "mqtts://h:8883", "zz"));
        assert!(!c.verify_statement("broker_url", "dev1", "mqtts://h:8883", ""));
    }

    #[test]
    fn a_loaded_ca_signs_like_the_created_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create("statement test").unwrap();
        ca.save(dir.path()).unwrap();
        let loaded = Ca::load(dir.path()).unwrap();
        let sig = loaded.sign_statement("f", "d", "v").unwrap();
        assert!(ca.cert().verify_statement("f", "d", "v", &sig));
    }
}
