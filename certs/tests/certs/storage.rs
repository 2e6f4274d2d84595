//! CA files on disk, revocation persistence and the signed CRL.

use crate::common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::SystemTime;

use common::{der, DAY};
use hammer_certs::{Ca, CertError, RevocationList};
use x509_parser::prelude::*;

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn save_load_modes_and_issue_from_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = Ca::load_or_create(&ca_dir, "Test fleet CA").unwrap();
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
    assert_eq!(mode(&ca_dir.join("ca.pem")), 0o644);
    assert_eq!(mode(&ca_dir), 0o700);

    let loaded = Ca::load_or_create(&ca_dir, "ignored").unwrap();
    assert_eq!(loaded.cert(), ca.cert());
    assert_eq!(
        loaded.cert().fingerprint_sha256(),
        ca.cert().fingerprint_sha256()
    );

    // A certificate issued by the reloaded CA verifies against the original CA cert.
    let (_, csr) = hammer_certs::new_device_key_and_csr().unwrap();
    let issued = loaded.sign_device_csr(&csr, "dev9", "carol", DAY).unwrap();
    let id = ca
        .cert()
        .identity(&der(&issued.cert_pem), SystemTime::now())
        .unwrap();
    assert_eq!(id.id, "dev9");
    // Leaf issuer bytes equal the CA subject bytes (needed by webpki chain building).
    let leaf_der = der(&issued.cert_pem);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let ca_der = ca.cert().der().to_vec();
    let (_, cac) = X509Certificate::from_der(&ca_der).unwrap();
    assert_eq!(leaf.issuer().as_raw(), cac.subject().as_raw());
}

#[test]
fn load_refuses_mismatched_or_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = Ca::create("A").unwrap();
    let b = Ca::create("B").unwrap();
    a.save(dir.path()).unwrap();
    let other = tempfile::tempdir().unwrap();
    b.save(other.path()).unwrap();
    fs::copy(other.path().join("ca.key"), dir.path().join("ca.key")).unwrap();
    let err = Ca::load(dir.path()).unwrap_err();
    assert!(matches!(err, CertError::CaKeyMismatch { .. }), "{err}");

    let empty = tempfile::tempdir().unwrap();
    let err = Ca::load(empty.path()).unwrap_err();
    assert!(matches!(err, CertError::Io { .. }), "{err}");
    assert!(err.to_string().contains("ca.pem"), "{err}");

    fs::write(dir.path().join("ca.key"), "garbage").unwrap();
    let err = Ca::load(dir.path()).unwrap_err();
    assert!(matches!(err, CertError::Pem { .. }), "{err}");
}

#[test]
fn revocation_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("revoked.json");
    let ca = Ca::create("Test fleet CA").unwrap();
    let issued = ca.issue_device("dev1", "alice", DAY).unwrap();

    let list = RevocationList::open(&path).unwrap();
    assert!(list.serials().is_empty(), "missing file is an empty list");
    assert!(!list.is_revoked(&issued.serial));
    // Revoke in another spelling: upper case, colons, leading zeros.
    let spelled = format!(
        "00:{}",
        issued
            .serial
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":")
    );
    assert!(list.revoke(&spelled).unwrap());
    assert!(!list.revoke(&issued.serial).unwrap(), "already revoked");
    assert!(list.is_revoked(&issued.serial));
    assert!(list.is_revoked(&spelled));
    assert!(!list.is_revoked("not hex"));
    assert!(matches!(
        list.revoke("xyz"),
        Err(CertError::InvalidSerial(_))
    ));
    drop(list);

    let reopened = RevocationList::open(&path).unwrap();
    assert!(reopened.is_revoked(&issued.serial));
    assert_eq!(reopened.serials(), vec![issued.serial.clone()]);
    let json: Vec<String> = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(json, vec![issued.serial.clone()]);

    // The identity's serial is what gets looked up.
    let id = ca
        .cert()
        .identity(&der(&issued.cert_pem), SystemTime::now())
        .unwrap();
    assert!(reopened.is_revoked(&id.serial));

    fs::write(&path, "{not json").unwrap();
    let err = RevocationList::open(&path).unwrap_err();
    assert!(matches!(err, CertError::RevocationFile { .. }), "{err}");
}

#[test]
fn failed_persist_does_not_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    let list = RevocationList::open(&sub.join("revoked.json")).unwrap();
    fs::remove_dir(&sub).unwrap();
    let err = list.revoke("abcd").unwrap_err();
    assert!(matches!(err, CertError::Io { .. }), "{err}");
    assert!(!list.is_revoked("abcd"));
    assert!(list.serials().is_empty());
}

#[test]
fn revocation_is_shared_between_threads() {
    let list = std::sync::Arc::new(RevocationList::in_memory());
    let handles: Vec<_> = (0..4u32)
        .map(|i| {
            let list = list.clone();
            std::thread::spawn(move || list.revoke(&format!("{:x}", i + 10)).unwrap())
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap());
    }
    assert_eq!(list.serials(), vec!["a", "b", "c", "d"]);
}

#[test]
fn crl_lists_revoked_serials() {
    let ca = Ca::create("Test fleet CA").unwrap();
    let list = RevocationList::in_memory();
    let a = ca.issue_device("dev1", "alice", DAY).unwrap();
    let b = ca.issue_service("hammer-service", DAY).unwrap();
    list.revoke(&a.serial).unwrap();
    list.revoke(&b.serial).unwrap();
    list.revoke("80ff").unwrap(); // high bit set: must still read back as positive

    let crl_pem = ca.crl_pem(&list, 7 * DAY).unwrap();
    assert!(crl_pem.contains("BEGIN X509 CRL"), "{crl_pem}");
    let (_, block) = parse_x509_pem(crl_pem.as_bytes()).unwrap();
    let (_, crl) = parse_x509_crl(&block.contents).unwrap();

    let ca_der = ca.cert().der().to_vec();
    let (_, ca_x509) = X509Certificate::from_der(&ca_der).unwrap();
    crl.verify_signature(ca_x509.public_key()).unwrap();
    assert_eq!(crl.issuer().as_raw(), ca_x509.subject().as_raw());
    assert!(crl.next_update().is_some());

    let mut listed: Vec<String> = crl
        .iter_revoked_certificates()
        .map(|r| hammer_certs::serial_from_bytes(r.raw_serial()))
        .collect();
    listed.sort();
    let mut expected = list.serials();
    expected.sort();
    assert_eq!(listed, expected);

    // Empty list still makes a valid CRL.
    let empty = ca.crl_pem(&RevocationList::in_memory(), DAY).unwrap();
    let (_, block) = parse_x509_pem(empty.as_bytes()).unwrap();
    let (_, crl) = parse_x509_crl(&block.contents).unwrap();
    assert_eq!(crl.iter_revoked_certificates().count(), 0);
}

#[test]
fn reload_picks_up_serials_another_process_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("revoked.json");
    let broker_side = hammer_certs::RevocationList::open(&path).unwrap();
    let service_side = hammer_certs::RevocationList::open(&path).unwrap();
    assert!(!broker_side.reload().unwrap(), "nothing changed yet");
    broker_side.revoke("aa").unwrap();
    service_side.revoke("0b:cd").unwrap();
    // The service's write kept the broker's serial.
    assert!(hammer_certs::RevocationList::open(&path)
        .unwrap()
        .is_revoked("aa"));
    assert!(!broker_side.is_revoked("bcd"));
    assert!(broker_side.reload().unwrap());
    assert!(broker_side.is_revoked("bcd") && broker_side.is_revoked("aa"));
    assert!(
        !broker_side.reload().unwrap(),
        "unchanged file is not re-read"
    );
}
