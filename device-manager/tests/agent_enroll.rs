//! `hammer-manager enroll` against a tiny HTTP enrollment endpoint on loopback that signs the
//! CSR with a real fleet CA: files and modes, the CA pin (match and mismatch), refusing to
//! overwrite an enrolled data dir, the service's error message, the token from the env.

use hammer_certs::Ca;
use hammer_manager::config::{DataDir, Identity};
use hammer_manager::enroll::{enroll, EnrollArgs};
use hammer_protocol::api::{EnrollRequest, EnrollResponse, ErrorBody};
use hammer_protocol::signing::SigningKeyPair;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TOKEN: &str = "enroll-token-1";

/// Serves `POST /api/v1/enroll` until the test ends. Returns the base URL.
async fn endpoint(ca: Arc<Ca>, service_key: String) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let ca = ca.clone();
            let service_key = service_key.clone();
            tokio::spawn(async move {
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
                    let cert = ca
                        .sign_device_csr(
                            &req.csr_pem,
                            "dev1",
                            "alice1",
                            Duration::from_secs(86_400),
                        )
                        .unwrap();
                    (
                        "200 OK",
                        serde_json::to_string(&EnrollResponse {
                            device_id: "dev1".into(),
                            owner: "alice1".into(),
                            cert_pem: cert.cert_pem,
                            ca_pem: ca.cert().pem().to_owned(),
                            broker_url: "mqtts://127.0.0.1:8883".into(),
                            service_public_key: service_key,
                        })
                        .unwrap(),
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

    // Wrong pin: refused, nothing written.
    let wrong = tmp.path().join("wrong");
    let err = enroll(args(&url, &wrong, Some("ab".repeat(32))))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("fingerprint") && err.contains(&fp), "{err}");
    assert!(!wrong.join("manager.toml").exists());

    // A bad token: the service's sentence reaches the user.
    let mut a = args(&url, &tmp.path().join("badtoken"), None);
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
    let mut a = args(&url, &dir, Some(fp.clone()));
    a.force = true;
    enroll(a).await.unwrap();
    assert_ne!(
        std::fs::read_to_string(dir.join("device.key")).unwrap(),
        old_key
    );

    // The binary, with the token from HAMMER_ENROLL_TOKEN (loopback http needs no pin).
    let bin_dir = tmp.path().join("bin");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hammer-manager"))
        .args(["enroll", "--url", &url, "--data-dir"])
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
async fn plain_http_to_a_remote_host_needs_a_pin() {
    let tmp = tempfile::tempdir().unwrap();
    let err = enroll(args("http://10.255.255.1:8080", tmp.path(), None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--ca-sha256"), "{err}");
}
