//! Helpers shared by the integration tests: a CA built by hand with rcgen (to sign
//! certificates that our own `Ca` would refuse to make) and leaf parameters.

#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use hammer_certs::CaCert;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// A CA made directly with rcgen.
pub struct RawCa {
    pub cert: Certificate,
    pub key: KeyPair,
    pub ca_cert: CaCert,
}

pub fn raw_ca(name: &str) -> RawCa {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    let ca_cert = CaCert::from_pem(&cert.pem()).unwrap();
    RawCa { cert, key, ca_cert }
}

/// Leaf parameters as a well-behaved CA makes them; tests then break one thing.
pub fn leaf_params(cn: &str, ou: Option<&str>, o: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    if let Some(ou) = ou {
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, ou);
    }
    if let Some(o) = o {
        params.distinguished_name.push(DnType::OrganizationName, o);
    }
    let now = SystemTime::now();
    params.not_before = (now - DAY).into();
    params.not_after = (now + DAY).into();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

impl RawCa {
    /// Signs `params` with this CA; returns the leaf DER.
    pub fn sign(&self, params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        params
            .signed_by(&key, &self.cert, &self.key)
            .unwrap()
            .der()
            .to_vec()
    }
}

/// DER of the first certificate in a PEM text.
pub fn der(pem: &str) -> Vec<u8> {
    hammer_certs::tls::parse_certs_pem(pem).unwrap()[0].to_vec()
}
