//! Real TLS handshakes over loopback with the configurations from `hammer_certs::tls`.

use crate::common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::DAY;
use hammer_certs::{tls, Ca, Role};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned};

/// Runs one connection: the client sends "ping", the server answers "pong". Returns the
/// server's view (peer certificates or error) and the client's result.
fn exchange(
    server: ServerConfig,
    client: ClientConfig,
) -> (
    Result<Vec<CertificateDer<'static>>, String>,
    Result<(), String>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(server);
    let server_thread =
        std::thread::spawn(move || -> Result<Vec<CertificateDer<'static>>, String> {
            let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
            sock.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let conn = ServerConnection::new(server).map_err(|e| e.to_string())?;
            let mut tls = StreamOwned::new(conn, sock);
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
            if &buf != b"ping" {
                return Err("bad request".into());
            }
            tls.write_all(b"pong").map_err(|e| e.to_string())?;
            tls.flush().map_err(|e| e.to_string())?;
            let peers = tls.conn.peer_certificates().unwrap_or_default().to_vec();
            tls.conn.send_close_notify();
            let _ = tls.flush();
            Ok(peers)
        });
    let client_result = (|| -> Result<(), String> {
        let sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(Arc::new(client), name).map_err(|e| e.to_string())?;
        let mut tls = StreamOwned::new(conn, sock);
        tls.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
        if &buf != b"pong" {
            return Err("bad reply".into());
        }
        Ok(())
    })();
    (server_thread.join().unwrap(), client_result)
}

struct Fixture {
    ca: Ca,
    server_cert: String,
    server_key: String,
}

fn fixture() -> Fixture {
    tls::install_default_provider();
    tls::install_default_provider(); // idempotent
    let ca = Ca::create("Test fleet CA").unwrap();
    let srv = ca
        .issue_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()], DAY)
        .unwrap();
    Fixture {
        server_cert: srv.cert_pem,
        server_key: srv.key_pem.unwrap(),
        ca,
    }
}

#[test]
fn mtls_handshake_with_device_cert() {
    let f = fixture();
    let (device_key, csr) = hammer_certs::new_device_key_and_csr().unwrap();
    let device = f.ca.sign_device_csr(&csr, "dev1", "alice", DAY).unwrap();

    let server = tls::server_config_mtls(f.ca.cert(), &f.server_cert, &f.server_key).unwrap();
    let client = tls::client_config(f.ca.cert().pem(), &device.cert_pem, &device_key).unwrap();
    let (server_result, client_result) = exchange(server, client);
    client_result.unwrap();
    let peers = server_result.unwrap();
    let id = f.ca.cert().identity(&peers[0], SystemTime::now()).unwrap();
    assert_eq!((id.role, id.id.as_str()), (Role::Device, "dev1"));
    assert_eq!(id.serial, device.serial);
}

#[test]
fn mtls_refuses_client_from_another_ca() {
    let f = fixture();
    let other = Ca::create("Other CA").unwrap();
    let intruder = other.issue_device("dev1", "alice", DAY).unwrap();

    let server = tls::server_config_mtls(f.ca.cert(), &f.server_cert, &f.server_key).unwrap();
    let client = tls::client_config(
        f.ca.cert().pem(),
        &intruder.cert_pem,
        intruder.key_pem.as_deref().unwrap(),
    )
    .unwrap();
    let (server_result, client_result) = exchange(server, client);
    let err = server_result.unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(client_result.is_err());
}

#[test]
fn mtls_refuses_client_without_cert() {
    let f = fixture();
    let server = tls::server_config_mtls(f.ca.cert(), &f.server_cert, &f.server_key).unwrap();
    let client = tls::client_config_no_auth(f.ca.cert().pem()).unwrap();
    let (server_result, client_result) = exchange(server, client);
    assert!(server_result.is_err());
    assert!(client_result.is_err());
}

#[test]
fn plain_server_and_untrusted_server() {
    let f = fixture();
    // HTTPS-style: no client certificate.
    let server = tls::server_config(&f.server_cert, &f.server_key).unwrap();
    let client = tls::client_config_no_auth(f.ca.cert().pem()).unwrap();
    let (server_result, client_result) = exchange(server, client);
    client_result.unwrap();
    assert!(server_result.unwrap().is_empty());

    // A client that trusts another CA refuses our server.
    let other = Ca::create("Other CA").unwrap();
    let server = tls::server_config(&f.server_cert, &f.server_key).unwrap();
    let client = tls::client_config_no_auth(other.cert().pem()).unwrap();
    let (server_result, client_result) = exchange(server, client);
    assert!(client_result.is_err());
    assert!(server_result.is_err());
}

#[test]
fn pem_parsing_errors() {
    assert!(matches!(
        tls::parse_certs_pem(""),
        Err(hammer_certs::CertError::NoCertificate { .. })
    ));
    assert!(matches!(
        tls::parse_key_pem("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"),
        Err(hammer_certs::CertError::NoPrivateKey { .. })
    ));
    let f = fixture();
    assert!(tls::server_config(&f.server_cert, "garbage").is_err());
    // Key that does not match the certificate.
    let other = f.ca.issue_device("dev2", "bob", DAY).unwrap();
    assert!(tls::server_config(&f.server_cert, other.key_pem.as_deref().unwrap()).is_err());
}
