//! Enrollment as an attacker on the network path would try it (issue 12): a real service
//! (real fleet CA, its HTTPS enrollment listener), the real `hammer-manager enroll` binary run
//! with exactly the line `hammer device add` prints, and a relay on loopback between them.
//!
//! - A relay that only listens sees TLS records: no token, and replaying them enrolls nothing.
//! - A relay with a certificate of its own, or with a genuine fleet *device* certificate,
//!   cannot complete the handshake, and never receives the token.
//! - A TLS front end the device was told to trust (`--ca-file`) that rewrites any field of the
//!   answer (broker URL, service key, CA, certificate) makes enrollment fail with a message
//!   naming that field, and the data dir stays empty.

#[path = "../e2e/support.rs"]
mod support;

use crate::common::Harness;
use hammer_certs::Ca;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What `hammer device add` returns, as JSON.
async fn add_device(h: &Harness, token: &str, name: &str) -> Value {
    let (s, v) = h
        .post("/api/v1/devices", token, json!({ "name": name }))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

fn manager() -> PathBuf {
    support::build_manager(Path::new(env!("CARGO_BIN_EXE_hammer")))
}

/// Runs `hammer-manager enroll --url URL --ca-sha256 PIN [extra] --data-dir DIR` with the
/// token in the environment; returns (success, stderr).
async fn run_enroll(url: &str, created: &Value, dir: &Path, extra: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(manager())
            .args(["enroll", "--url", url, "--ca-sha256"])
            .arg(created["ca_sha256"].as_str().unwrap())
            .args(extra)
            .arg("--data-dir")
            .arg(dir)
            .env(
                "HAMMER_ENROLL_TOKEN",
                created["enrollment_token"].as_str().unwrap(),
            )
            .env("RUST_LOG", "warn")
            .output(),
    )
    .await
    .expect("hammer-manager enroll did not finish within 60 s")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A CA of the relay's own and a server certificate from it for 127.0.0.1.
fn relay_identity(name: &str) -> (Ca, hammer_certs::Issued) {
    let ca = Ca::create(name).unwrap();
    let cert = ca
        .issue_server(
            &[],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap();
    (ca, cert)
}

/// Nothing was written: the data dir does not exist or is empty.
fn assert_untouched(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        let names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        assert!(names.is_empty(), "{} holds {names:?}", dir.display());
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The port of an `https://host:port` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A TCP relay that forwards both ways and records every byte it sees.
/// Bytes a relay saw.
type Capture = Arc<Mutex<Vec<u8>>>;

async fn listening_relay(upstream: SocketAddr) -> (u16, Capture, Capture) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (up_bytes, down_bytes): (Capture, Capture) = (Arc::default(), Arc::default());
    let (u, d) = (up_bytes.clone(), down_bytes.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let Ok(server) = TcpStream::connect(upstream).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(copy_recording(cr, sw, u.clone()));
            tokio::spawn(copy_recording(sr, cw, d.clone()));
        }
    });
    (port, up_bytes, down_bytes)
}

async fn copy_recording(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    log: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                log.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Reads one HTTP/1.1 request (head and content-length body).
async fn read_request(s: &mut (impl AsyncRead + Unpin)) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < i + 4 + len {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some((head, buf[i + 4..i + 4 + len].to_vec()));
        }
    }
}

/// How the TLS-terminating relay changes the service's answer.
type Rewrite = Arc<dyn Fn(&mut Value) + Send + Sync>;

/// A relay that terminates TLS with `cert_pem`/`key_pem`, forwards the enrollment request to
/// the real service (over TLS, pinned to the fleet CA) and rewrites its answer. Records the
/// plaintext requests it received.
async fn rewriting_relay(
    cert_pem: String,
    key_pem: String,
    service_url: String,
    pin: String,
    rewrite: Rewrite,
) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let cfg = hammer_certs::tls::server_config(&cert_pem, &key_pem).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<u8>>> = Arc::default();
    let seen2 = seen.clone();
    let upstream = reqwest::Client::builder()
        .use_preconfigured_tls(hammer_certs::tls::client_config_pinned_ca(&pin).unwrap())
        .build()
        .unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let (acceptor, seen, upstream, url, rewrite) = (
                acceptor.clone(),
                seen2.clone(),
                upstream.clone(),
                service_url.clone(),
                rewrite.clone(),
            );
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let Some((head, body)) = read_request(&mut tls).await else {
                    return;
                };
                seen.lock().unwrap().extend_from_slice(&body);
                assert!(head.starts_with("post /api/v1/enroll "), "{head}");
                let resp = upstream
                    .post(format!("{url}/api/v1/enroll"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                let mut v: Value = resp.json().await.unwrap();
                if status.is_success() {
                    rewrite(&mut v);
                }
                let out = v.to_string();
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{out}",
                    out.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_that_only_listens_sees_no_token_and_its_capture_enrolls_nothing() {
    let h = Harness::start().await;
    let alice = h.user("alice").await;
    let created = add_device(&h, &alice, "pi").await;
    let token = created["enrollment_token"].as_str().unwrap().to_owned();
    let url = created["enroll_url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("https://"), "{url}");
    let upstream: SocketAddr = format!("127.0.0.1:{}", port_of(&url)).parse().unwrap();
    let (relay_port, up, down) = listening_relay(upstream).await;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pi");
    let (ok, stderr) = run_enroll(
        &format!("https://127.0.0.1:{relay_port}"),
        &created,
        &dir,
        &[],
    )
    .await;
    assert!(ok, "enrollment through a forwarding relay works: {stderr}");
    let (_, v) = h.get("/api/v1/devices/pi", &alice).await;
    assert_eq!(v["state"], "enrolled");

    let up = up.lock().unwrap().clone();
    let down = down.lock().unwrap().clone();
    assert!(
        up.len() > 500,
        "the relay saw the request ({} bytes)",
        up.len()
    );
    for (what, bytes) in [("request", &up), ("answer", &down)] {
        assert!(
            !contains(bytes, token.as_bytes()),
            "token readable in the {what}"
        );
        assert!(
            !contains(bytes, b"BEGIN CERTIFICATE REQUEST"),
            "CSR readable in the {what}"
        );
        assert!(
            !contains(bytes, b"broker_url"),
            "answer readable in the {what}"
        );
    }

    // Replaying the captured client bytes to the service completes no handshake and
    // enrolls nothing.
    let mut s = TcpStream::connect(upstream).await.unwrap();
    let _ = s.write_all(&up).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
    assert!(
        !contains(&reply, b"HTTP/1.1"),
        "the replay got an HTTP answer"
    );
    // The token is spent by the real device; a fresh device's token was never on the wire.
    let (_, v) = h.get("/api/v1/devices/pi", &alice).await;
    assert_eq!(v["state"], "enrolled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_without_a_fleet_server_certificate_never_receives_the_token() {
    let h = Harness::start().await;
    let alice = h.user("alice").await;
    let pin = add_device(&h, &alice, "probe").await["ca_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let service_url = h.svc().enroll_url.clone();
    let tmp = tempfile::tempdir().unwrap();

    // 1. Its own CA and a server certificate for 127.0.0.1.
    let (relay_ca, own) = relay_identity("relay");
    // 2. A genuine fleet certificate: the attacker's own enrolled device (its bundle), sent
    //    with the fleet CA in the chain.
    h.user("mallory").await;
    let bundle = h.provision("mallory", "m1", json!({})).await;

    for (case, cert, key, expect) in [
        (
            "own CA",
            format!("{}{}", own.cert_pem, relay_ca.cert().pem()),
            own.key_pem.clone().unwrap(),
            "pinned by --ca-sha256",
        ),
        (
            "fleet device certificate",
            format!("{}{}", bundle.cert_pem, bundle.ca_pem),
            bundle.key_pem.clone(),
            "certificate",
        ),
    ] {
        let created = add_device(&h, &alice, &format!("d-{}", case.len())).await;
        assert_eq!(created["ca_sha256"].as_str().unwrap(), pin);
        let (port, seen) = rewriting_relay(
            cert,
            key,
            service_url.clone(),
            pin.clone(),
            Arc::new(|_: &mut Value| {}),
        )
        .await;
        let dir = tmp.path().join(case.replace(' ', "-"));
        let (ok, stderr) =
            run_enroll(&format!("https://127.0.0.1:{port}"), &created, &dir, &[]).await;
        assert!(!ok, "{case}: enrollment must fail");
        assert!(stderr.contains(expect), "{case}: {stderr}");
        assert!(
            seen.lock().unwrap().is_empty(),
            "{case}: the relay got a request"
        );
        assert_untouched(&dir);
        let (_, v) = h
            .get(
                &format!(
                    "/api/v1/devices/{}",
                    created["device"]["name"].as_str().unwrap()
                ),
                &alice,
            )
            .await;
        assert_eq!(
            v["state"], "registered",
            "{case}: the token is still unused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trusted_front_end_that_rewrites_any_field_makes_enrollment_fail_naming_it() {
    let h = Harness::start().await;
    let alice = h.user("alice").await;
    h.user("mallory").await;
    let bundle = h.provision("mallory", "m1", json!({})).await;
    let service_url = h.svc().enroll_url.clone();
    // The front end's own TLS identity, which the device is told to trust with --ca-file.
    let (relay_ca, own) = relay_identity("front end");
    let tmp = tempfile::tempdir().unwrap();
    let relay_ca_file = tmp.path().join("front-end-ca.pem");
    std::fs::write(&relay_ca_file, relay_ca.cert().pem()).unwrap();
    let other_key = hammer_protocol::signing::SigningKeyPair::generate()
        .unwrap()
        .public()
        .to_hex();
    let relay_ca_pem = relay_ca.cert().pem().to_owned();
    let genuine_other_cert = bundle.cert_pem.clone();

    // (field rewritten, how, what the error must say)
    type Case = (&'static str, Rewrite, &'static str);
    let cases: Vec<Case> = vec![
        (
            "none",
            Arc::new(|_: &mut Value| {}),
            "",
        ),
        (
            "broker_url",
            Arc::new(|v: &mut Value| v["broker_url"] = json!("mqtts://127.0.0.1:1")),
            "broker URL in the enrollment answer (mqtts://127.0.0.1:1) is not signed by the pinned fleet CA",
        ),
        (
            "plain_broker_url",
            Arc::new(|v: &mut Value| v["broker_url"] = json!("mqtt://127.0.0.1:1883")),
            "plain mqtt:// broker",
        ),
        (
            "service_public_key",
            Arc::new(move |v: &mut Value| v["service_public_key"] = json!(other_key.clone())),
            "service signing key in the enrollment answer is not signed by the pinned fleet CA",
        ),
        (
            "ca_pem",
            Arc::new(move |v: &mut Value| v["ca_pem"] = json!(relay_ca_pem.clone())),
            "not the pinned --ca-sha256",
        ),
        (
            "cert_pem",
            Arc::new(move |v: &mut Value| v["cert_pem"] = json!(genuine_other_cert.clone())),
            "not for the key this device just made",
        ),
    ];
    for (i, (field, rewrite, expect)) in cases.into_iter().enumerate() {
        let name = format!("dev{i}");
        let created = add_device(&h, &alice, &name).await;
        let pin = created["ca_sha256"].as_str().unwrap().to_owned();
        let (port, _) = rewriting_relay(
            own.cert_pem.clone(),
            own.key_pem.clone().unwrap(),
            service_url.clone(),
            pin,
            rewrite,
        )
        .await;
        let dir = tmp.path().join(&name);
        let (ok, stderr) = run_enroll(
            &format!("https://127.0.0.1:{port}"),
            &created,
            &dir,
            &["--ca-file", relay_ca_file.to_str().unwrap()],
        )
        .await;
        if field == "none" {
            assert!(ok, "an honest front end works: {stderr}");
            continue;
        }
        assert!(!ok, "{field}: enrollment must fail");
        assert!(stderr.contains(expect), "{field}: {stderr}");
        assert_untouched(&dir);
    }
}
