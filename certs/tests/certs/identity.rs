//! Issuing certificates and reading identities back: CSR round trip, what the CA refuses to
//! copy from a CSR, and every way a client certificate is refused.

use crate::common;

use std::time::SystemTime;

use common::{der, leaf_params, raw_ca, DAY};
use hammer_certs::{new_device_key_and_csr, Ca, CertError, Role};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use x509_parser::prelude::*;

#[test]
fn csr_round_trip() {
    let ca = Ca::create("Test fleet CA").unwrap();
    let (key_pem, csr_pem) = new_device_key_and_csr().unwrap();
    let issued = ca
        .sign_device_csr(&csr_pem, "dev01abc", "alice", 30 * DAY)
        .unwrap();
    assert!(issued.key_pem.is_none());
    let id = ca
        .cert()
        .identity(&der(&issued.cert_pem), SystemTime::now())
        .unwrap();
    assert_eq!(id.role, Role::Device);
    assert_eq!(id.id, "dev01abc");
    assert_eq!(id.owner.as_deref(), Some("alice"));
    assert_eq!(id.serial, issued.serial);
    assert_eq!(id.not_after, issued.not_after);
    assert!(!id.serial.contains(':') && id.serial == id.serial.to_lowercase());

    // The certificate carries the device's own public key.
    let key = KeyPair::from_pem(&key_pem).unwrap();
    let cert_der = der(&issued.cert_pem);
    let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[test]
fn csr_requests_are_ignored() {
    let ca = Ca::create("Test fleet CA").unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "evil");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "service");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "mallory");
    params.subject_alt_names = vec![SanType::DnsName("broker.example.com".try_into().unwrap())];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // basicConstraints CA:TRUE (SEQUENCE { BOOLEAN TRUE }), critical.
    let mut bc =
        CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x03, 0x01, 0x01, 0xff]);
    bc.set_criticality(true);
    params.custom_extensions = vec![bc];
    let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();

    // The CSR really asks for all of it.
    let csr_der = ::pem::parse(&csr_pem).unwrap().into_contents();
    let (_, csr) = X509CertificationRequest::from_der(&csr_der).unwrap();
    let asked: Vec<_> = csr.requested_extensions().unwrap().collect();
    assert_eq!(asked.len(), 3, "{asked:?}");

    let issued = ca
        .sign_device_csr(&csr_pem, "dev02", "alice", 30 * DAY)
        .unwrap();
    let cert_der = der(&issued.cert_pem);
    let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();

    let ous: Vec<_> = cert
        .subject()
        .iter_organizational_unit()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(ous, ["device"]);
    let cns: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cns, ["dev02"]);
    let os: Vec<_> = cert
        .subject()
        .iter_organization()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(os, ["alice"]);
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present");
    assert!(!bc.value.ca);
    assert!(
        cert.subject_alternative_name().unwrap().is_none(),
        "no SAN copied"
    );
    let eku = cert
        .extended_key_usage()
        .unwrap()
        .expect("EKU present")
        .value;
    assert!(eku.client_auth);
    assert!(!eku.server_auth && !eku.any);
    let ku = cert.key_usage().unwrap().expect("key usage present").value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    assert_eq!(
        cert.tbs_certificate.issuer.as_raw(),
        {
            let ca_der = ca.cert().der().to_vec();
            let (_, c) = X509Certificate::from_der(&ca_der).unwrap();
            c.subject().as_raw().to_vec()
        }
        .as_slice()
    );
}

#[test]
fn csr_with_bad_signature_refused() {
    let ca = Ca::create("Test fleet CA").unwrap();
    let (_, csr_pem) = new_device_key_and_csr().unwrap();
    let mut bytes = ::pem::parse(&csr_pem).unwrap().into_contents();
    // Flip a bit inside the subject name (covered by the signature).
    let pos = bytes
        .windows(b"hammer-device".len())
        .position(|w| w == b"hammer-device")
        .unwrap();
    bytes[pos] ^= 0x01;
    let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", bytes));
    let err = ca
        .sign_device_csr(&tampered, "dev03", "alice", DAY)
        .unwrap_err();
    assert!(matches!(err, CertError::Csr(_)), "{err}");
    assert!(err.to_string().contains("signature"), "{err}");
}

#[test]
fn issuer_validates_ids() {
    let ca = Ca::create("Test fleet CA").unwrap();
    let (_, csr) = new_device_key_and_csr().unwrap();
    for (dev, owner) in [
        ("Dev1", "alice"),
        ("dev1", "Alice"),
        ("", "alice"),
        ("dev-1", "a"),
    ] {
        let err = ca.sign_device_csr(&csr, dev, owner, DAY).unwrap_err();
        assert!(
            matches!(err, CertError::InvalidId { .. }),
            "{dev}/{owner}: {err}"
        );
    }
    assert!(ca.issue_service("Bad Service", DAY).is_err());
    assert!(ca
        .issue_device("dev1", "alice", std::time::Duration::ZERO)
        .is_err());
    assert!(ca.issue_server(&[], &[], DAY).is_err());
}

#[test]
fn service_and_offline_device_identities() {
    let ca = Ca::create("Test fleet CA").unwrap();
    let svc = ca.issue_service("hammer-service", 30 * DAY).unwrap();
    assert!(svc.key_pem.is_some());
    let id = ca
        .cert()
        .identity(&der(&svc.cert_pem), SystemTime::now())
        .unwrap();
    assert_eq!(id.role, Role::Service);
    assert_eq!(id.id, "hammer-service");
    assert_eq!(id.owner, None);

    let dev = ca.issue_device("factory7", "bob", 30 * DAY).unwrap();
    assert!(dev.key_pem.as_deref().unwrap().contains("PRIVATE KEY"));
    let id = ca
        .cert()
        .identity(&der(&dev.cert_pem), SystemTime::now())
        .unwrap();
    assert_eq!(
        (id.role, id.id.as_str(), id.owner.as_deref()),
        (Role::Device, "factory7", Some("bob"))
    );

    // Serials are random and distinct.
    assert_ne!(svc.serial, dev.serial);
}

#[test]
fn server_cert_is_not_a_client_identity() {
    let ca = Ca::create("Test fleet CA").unwrap();
    let srv = ca
        .issue_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()], DAY)
        .unwrap();
    let cert_der = der(&srv.cert_pem);
    let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let err = ca
        .cert()
        .identity(&cert_der, SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, CertError::NotClientAuth(_)), "{err}");
}

#[test]
fn other_ca_refused() {
    let ours = Ca::create("Test fleet CA").unwrap();
    // Same name, different key: the name check passes, the signature check must not.
    let theirs = Ca::create("Test fleet CA").unwrap();
    let leaf = theirs.issue_device("dev1", "alice", DAY).unwrap();
    let err = ours
        .cert()
        .identity(&der(&leaf.cert_pem), SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, CertError::NotIssuedByCa { .. }), "{err}");
    assert!(err.to_string().contains("signature"), "{err}");

    let other = Ca::create("Other CA").unwrap();
    let leaf = other.issue_device("dev1", "alice", DAY).unwrap();
    let err = ours
        .cert()
        .identity(&der(&leaf.cert_pem), SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, CertError::NotIssuedByCa { .. }), "{err}");
}

#[test]
fn validity_window_enforced() {
    let ca = Ca::create("Test fleet CA").unwrap();
    let issued = ca.issue_device("dev1", "alice", DAY).unwrap();
    let leaf = der(&issued.cert_pem);
    let err = ca
        .cert()
        .identity(&leaf, issued.not_after + DAY)
        .unwrap_err();
    assert!(matches!(err, CertError::Expired { .. }), "{err}");
    let err = ca
        .cert()
        .identity(&leaf, SystemTime::now() - DAY)
        .unwrap_err();
    assert!(matches!(err, CertError::NotYetValid { .. }), "{err}");

    // A certificate whose window lies in the past, checked now.
    let raw = raw_ca("Raw CA");
    let mut params = leaf_params("dev1", Some("device"), Some("alice"));
    params.not_before = (SystemTime::now() - 3 * DAY).into();
    params.not_after = (SystemTime::now() - 2 * DAY).into();
    let err = raw
        .ca_cert
        .identity(&raw.sign(params), SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, CertError::Expired { .. }), "{err}");
    // And one whose window lies in the future.
    let mut params = leaf_params("dev1", Some("device"), Some("alice"));
    params.not_before = (SystemTime::now() + 2 * DAY).into();
    params.not_after = (SystemTime::now() + 3 * DAY).into();
    let err = raw
        .ca_cert
        .identity(&raw.sign(params), SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, CertError::NotYetValid { .. }), "{err}");
}

#[test]
fn bad_fields_refused() {
    let raw = raw_ca("Raw CA");
    let now = SystemTime::now();
    let check = |params: CertificateParams| raw.ca_cert.identity(&raw.sign(params), now);

    // Baseline: the raw CA's well-formed leaf is accepted.
    let id = check(leaf_params("dev1", Some("device"), Some("alice"))).unwrap();
    assert_eq!(id.id, "dev1");

    let err = check(leaf_params("dev1", Some("admin"), Some("alice"))).unwrap_err();
    assert!(
        matches!(err, CertError::UnknownRole(ref r) if r == "admin"),
        "{err}"
    );
    let err = check(leaf_params("dev1", None, Some("alice"))).unwrap_err();
    assert!(matches!(err, CertError::SubjectField { .. }), "{err}");
    let err = check(leaf_params("Dev/1", Some("device"), Some("alice"))).unwrap_err();
    assert!(
        matches!(
            err,
            CertError::InvalidId {
                what: "device id",
                ..
            }
        ),
        "{err}"
    );
    let err = check(leaf_params("dev1", Some("device"), None)).unwrap_err();
    assert!(
        matches!(
            err,
            CertError::SubjectField {
                field: "O (owner)",
                ..
            }
        ),
        "{err}"
    );
    let err = check(leaf_params("dev1", Some("device"), Some("Alice Smith"))).unwrap_err();
    assert!(matches!(err, CertError::InvalidId { .. }), "{err}");
    let err = check(leaf_params("svc", Some("service"), Some("alice"))).unwrap_err();
    assert!(matches!(err, CertError::UnexpectedOwner(_)), "{err}");

    let mut two_cn = leaf_params("dev1", Some("device"), Some("alice"));
    // rcgen's DistinguishedName keeps one value per type, so add the second CN by OID.
    two_cn
        .distinguished_name
        .push(DnType::CustomDnType(vec![2, 5, 4, 3]), "dev2");
    let err = check(two_cn).unwrap_err();
    assert!(matches!(err, CertError::SubjectField { .. }), "{err}");

    let mut ca_leaf = leaf_params("dev1", Some("device"), Some("alice"));
    ca_leaf.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let err = check(ca_leaf).unwrap_err();
    assert!(matches!(err, CertError::LeafIsCa(_)), "{err}");

    let mut no_bc = leaf_params("dev1", Some("device"), Some("alice"));
    no_bc.is_ca = IsCa::NoCa;
    let err = check(no_bc).unwrap_err();
    assert!(matches!(err, CertError::LeafIsCa(_)), "{err}");

    let mut no_eku = leaf_params("dev1", Some("device"), Some("alice"));
    no_eku.extended_key_usages = vec![];
    let err = check(no_eku).unwrap_err();
    assert!(matches!(err, CertError::NotClientAuth(_)), "{err}");

    // Garbage and trailing bytes.
    assert!(matches!(
        raw.ca_cert.identity(b"not a certificate", now),
        Err(CertError::Parse { .. })
    ));
    let mut der = raw.sign(leaf_params("dev1", Some("device"), Some("alice")));
    der.push(0);
    assert!(matches!(
        raw.ca_cert.identity(&der, now),
        Err(CertError::Parse { .. })
    ));
}

#[test]
fn ca_cert_checks() {
    let ca = Ca::create("Test fleet CA").unwrap();
    let cert = ca.cert();
    let again = hammer_certs::CaCert::from_pem(cert.pem()).unwrap();
    assert_eq!(&again, cert);
    let fp = cert.fingerprint_sha256();
    assert_eq!(fp.len(), 64);
    assert!(fp
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    // A leaf is not a CA.
    let leaf = ca.issue_device("dev1", "alice", DAY).unwrap();
    assert!(matches!(
        hammer_certs::CaCert::from_pem(&leaf.cert_pem),
        Err(CertError::NotACa)
    ));
    assert!(matches!(
        hammer_certs::CaCert::from_pem("nothing here"),
        Err(CertError::NoCertificate { .. })
    ));
    assert!(Ca::create("").is_err());
}

#[test]
fn error_messages_name_the_problem() {
    let ca = Ca::create("Test fleet CA").unwrap();
    let issued = ca.issue_device("dev1", "alice", DAY).unwrap();
    let err = ca
        .cert()
        .identity(&der(&issued.cert_pem), issued.not_after + DAY)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&issued.serial) && msg.contains("expired"),
        "{msg}"
    );
    let err = ca
        .issue_device("Dev 1", "alice", DAY)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("device id") && err.contains("lowercase"),
        "{err}"
    );
}
