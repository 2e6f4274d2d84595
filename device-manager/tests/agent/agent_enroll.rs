//! `hammer-manager enroll` against a tiny HTTPS enrollment endpoint on loopback that signs the
//! CSR with a real fleet CA and presents a server certificate from it: files and modes, the
//! CA pin (match and mismatch, at the TLS handshake), refusing plain http before a byte is
//! sent, refusing to overwrite an enrolled data dir, the service's error message, the token
//! from the env, and every field of the answer checked against the pinned CA.

use hammer_certs::Ca;
use hammer_manager::config::{DataDir, Identity};
use hammer_manager::enroll::{check_answer, enroll, EnrollArgs};
use hammer_protocol::api::{
    EnrollRequest, EnrollResponse, EnrollSignatures, ErrorBody, ENROLL_FIELD_BROKER_URL,
    ENROLL_FIELD_SERVICE_KEY,
};
use hammer_protocol::signing::SigningKeyPair;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TOKEN: &str = "enroll-token-1";
const BROKER: &str = "mqtts://127.0.0.1:8883";

/// The answer a genuine service gives for `csr_pem`.
fn answer(ca: &Ca, csr_pem: &str, service_key: &str) -> EnrollResponse {
    let cert = ca
        .sign_device_csr(csr_pem, "dev1", "alice1", Duration::from_secs(86_400))
        .unwrap();
    EnrollResponse {
        device_id: "dev1".into(),
        owner: "alice1".into(),
        cert_pem: cert.cert_pem,
        ca_pem: ca.cert().pem().to_owned(),
        broker_url: BROKER.into(),
        service_public_key: service_key.to_owned(),
        ca_signatures: EnrollSignatures {
            broker_url: ca
                .sign_statement(ENROLL_FIELD_BROKER_URL, "dev1", BROKER)
                .unwrap(),
            service_public_key: ca
                .sign_statement(ENROLL_FIELD_SERVICE_KEY, "dev1", service_key)
                .unwrap(),
        },
    }
}

/// Serves `POST /api/v1/enroll` over TLS (a server certificate from `ca` for 127.0.0.1, the
/// CA in the chain) until the test ends. Returns the base URL.
async fn endpoint(ca: Arc<Ca>, service_key: String) -> String {
    let server = ca
        .issue_server(
            &[],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap();
    let cfg = hammer_certs::tls::server_config(
        &format!("{}{}", server.cert_pem, ca.cert().pem()),
        server.key_pem.as_deref().unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (ca, service_key, acceptor) = (ca.clone(), service_key.clone(), acceptor.clone());
            tokio::spawn(async move {
                // A client that refuses our certificate ends the handshake: nothing to serve.
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, len) = loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0);
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                        assert!(head.starts_with("post /api/v1/enroll "), "{head}");
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse::<usize>().unwrap())
                            .unwrap();
                        break (i + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                let req: EnrollRequest = serde_json::from_slice(&buf[head_end..]).unwrap();
                let (status, body) = if req.token != TOKEN {
                    (
                        "401 Unauthorized",
                        serde_json::to_string(&ErrorBody {
                            error: "enrollment token is unknown or expired; make a new one with `hammer device add`".into(),
                        })
                        .unwrap(),
                    )
                } else {
                    assert_eq!(req.sealing_public_key.len(), 64);
                    (
                        "200 OK",
                        serde_json::to_string(&answer(&ca, &req.csr_pem, &service_key)).unwrap(),
                    )
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
                let _ = s.shutdown().await;
            });
        }
    });
    url
}

fn args(url: &str, dir: &Path, pin: Option<String>) -> EnrollArgs {
    EnrollArgs {
        url: url.to_owned(),
        token: TOKEN.into(),
        ca_sha256: pin,
        ca_file: None,
        data_dir: DataDir::new(dir),
        force: false,
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn enroll_writes_the_data_dir_and_checks_the_ca_pin() {
    hammer_certs::tls::install_default_provider();
    let ca = Arc::new(Ca::create("enroll test fleet").unwrap());
    let fp = ca.cert().fingerprint_sha256();
    let service = SigningKeyPair::generate().unwrap();
    let url = endpoint(ca.clone(), service.public().to_hex()).await;
    let tmp = tempfile::tempdir().unwrap();

    // Wrong pin: the TLS handshake already fails, nothing written.
    let wrong = tmp.path().join("wrong");
    let err = enroll(args(&url, &wrong, Some("ab".repeat(32))))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("pinned by --ca-sha256"), "{err}");
    assert!(!wrong.exists());

    // No pin and no CA file: refused before connecting.
    let err = enroll(args(&url, &tmp.path().join("nopin"), None))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--ca-sha256"), "{err}");

    // A bad token: the service's sentence reaches the user.
    let mut a = args(&url, &tmp.path().join("badtoken"), Some(fp.clone()));
    a.token = "nope".into();
    let err = format!("{:#}", enroll(a).await.unwrap_err());
    assert!(
        err.contains("401") && err.contains("hammer device add"),
        "{err}"
    );

    // Good pin (in colon form): enrolled.
    let dir = tmp.path().join("ok");
    let colons = fp
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(
        enroll(args(&url, &dir, Some(colons))).await.unwrap(),
        "dev1"
    );
    assert_eq!(mode(&dir.join("device.key")), 0o600);
    assert_eq!(mode(&dir.join("sealing.key")), 0o600);
    assert_eq!(mode(&dir.join("device.pem")), 0o644);
    let id = Identity::load(&DataDir::new(&dir), None).unwrap();
    assert_eq!(
        (id.device_id.as_str(), id.owner.as_str()),
        ("dev1", "alice1")
    );
    assert_eq!(id.service_key, service.public());
    assert!(id.broker.tls);
    // The certificate really is for the key on disk.
    hammer_certs::tls::client_config(&id.ca_pem, &id.cert_pem, &id.key_pem).unwrap();

    // Enrolled already: refused without --force; --force makes new keys.
    let err = enroll(args(&url, &dir, Some(fp.clone())))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    let old_key = std::fs::read_to_string(dir.join("device.key")).unwrap();
    // As in the data dir of a manager that kept its state in sled (decision 0021): enrolling
    // again removes that database and starts the store over.
    let legacy = dir.join("state.sled");
    std::fs::create_dir(&legacy).unwrap();
    std::fs::write(legacy.join("db"), b"sled").unwrap();
    let mut a = args(&url, &dir, Some(fp.clone()));
    a.force = true;
    enroll(a).await.unwrap();
    assert!(!legacy.exists(), "the older manager's database is removed");
    assert!(dir.join("store").join("state.json").is_file());
    assert_ne!(
        std::fs::read_to_string(dir.join("device.key")).unwrap(),
        old_key
    );

    // The binary, with the token from HAMMER_ENROLL_TOKEN.
    let bin_dir = tmp.path().join("bin");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hammer-manager"))
        .args(["enroll", "--url", &url, "--ca-sha256", &fp, "--data-dir"])
        .arg(&bin_dir)
        .env("HAMMER_ENROLL_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("enrolled as device dev1"));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(TOKEN),
        "token not logged"
    );
}

#[tokio::test]
async fn plain_http_is_refused_before_the_token_is_sent() {
    // A listener that records whether anyone connected at all.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let err = enroll(args(&url, &tmp.path().join("d"), Some("ab".repeat(32))))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("in clear") && err.contains("https://"),
        "{err}"
    );
    let accepted = tokio::time::timeout(Duration::from_millis(300), l.accept()).await;
    assert!(
        accepted.is_err(),
        "the manager connected to a plain-http URL"
    );
    assert!(!tmp.path().join("d").exists());
}

/// Each rewritten field of an otherwise genuine answer is refused, naming the field.
#[test]
fn every_field_the_device_trusts_is_checked_against_the_pinned_ca() {
    hammer_certs::tls::install_default_provider();
    let ca = Ca::create("fleet").unwrap();
    let evil = Ca::create("relay").unwrap();
    let pin = ca.cert().fingerprint_sha256();
    let service = SigningKeyPair::generate().unwrap().public().to_hex();
    let (_, csr) = hammer_certs::new_device_key_and_csr().unwrap();
    let now = SystemTime::now();
    let good = answer(&ca, &csr, &service);
    check_answer(&good, &pin, &csr, now).unwrap();

    let refused =
        |a: &EnrollResponse| format!("{:#}", check_answer(a, &pin, &csr, now).unwrap_err());

    let mut a = good.clone();
    a.broker_url = "mqtts://relay.example:8883".into();
    let e = refused(&a);
    assert!(e.contains("broker URL") && e.contains("not signed"), "{e}");

    let mut a = good.clone();
    a.broker_url = "mqtt://127.0.0.1:1883".into();
    assert!(refused(&a).contains("plain mqtt://"));

    let mut a = good.clone();
    a.service_public_key = SigningKeyPair::generate().unwrap().public().to_hex();
    let e = refused(&a);
    assert!(
        e.contains("service signing key") && e.contains("not signed"),
        "{e}"
    );

    // The relay's own CA (with the fields signed by it): the pin catches it.
    let a = answer(&evil, &csr, &service);
    let e = refused(&a);
    assert!(e.contains("fingerprint") && e.contains(&pin), "{e}");

    // A certificate from the relay's CA next to the genuine CA.
    let mut a = good.clone();
    a.cert_pem = answer(&evil, &csr, &service).cert_pem;
    let e = refused(&a);
    assert!(
        e.contains("device certificate") && e.contains("pinned fleet CA"),
        "{e}"
    );

    // A genuine fleet certificate, but for another key (another enrollment's).
    let (_, other_csr) = hammer_certs::new_device_key_and_csr().unwrap();
    let mut a = good.clone();
    a.cert_pem = answer(&ca, &other_csr, &service).cert_pem;
    let e = refused(&a);
    assert!(e.contains("not for the key this device just made"), "{e}");

    // Another device id than the certificate's.
    let mut a = good.clone();
    a.device_id = "dev2".into();
    assert!(refused(&a).contains("not for device"));
}
