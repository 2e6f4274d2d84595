//! The real `hammer-manager` binary against the project's own broker (hammer-broker, mTLS):
//! connected, then its certificate is revoked (as `hammer device remove` does). The broker
//! closes the session and answers the reconnect with CONNACK "not authorized"; the manager's
//! log says, in one error line, that its certificate was refused and how to bring the device
//! back, instead of the generic "cannot connect", and waits the longest backoff step.

use crate::agent_support::*;
use hammer_broker::Broker;
use hammer_certs::{Ca, RevocationList};
use hammer_manager::config::DataDir;
use hammer_protocol::api::ManagerConfigFile;
use hammer_protocol::sealing::SealingKeyPair;
use hammer_protocol::signing::SigningKeyPair;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_hammer-manager");
const DAY: Duration = Duration::from_secs(86_400);

/// The manager process, killed when the test ends (also when it fails).
struct Manager(std::process::Child);

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to 20 s for a line of the log at `path` containing `what`; returns it.
fn log_line(path: &Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(l) = log.lines().find(|l| l.contains(what)) {
            return l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {what:?} in time; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_manager_says_its_certificate_was_refused() {
    hammer_certs::tls::install_default_provider();
    let ca = Ca::create("agent test fleet").unwrap();
    let ca_pem = ca.cert().pem().to_owned();
    let server = ca
        .issue_server(
            &["localhost".to_owned()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            DAY,
        )
        .unwrap();
    let mut config = hammer_broker::BrokerConfig::new(
        ca_pem.clone(),
        server.cert_pem,
        server.key_pem.unwrap(),
        Arc::new(RevocationList::in_memory()),
    );
    config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let broker = Broker::start(config).await.unwrap();
    let addr = broker.local_addr();

    let dir = TempDir::new();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let (dev_key, csr) = hammer_certs::new_device_key_and_csr().unwrap();
    let cert = ca.sign_device_csr(&csr, DEVICE, OWNER, DAY).unwrap();
    hammer_manager::enroll::write_data_dir(
        &DataDir::new(&data),
        &ManagerConfigFile {
            device_id: DEVICE.into(),
            owner: OWNER.into(),
            broker_url: format!("mqtts://127.0.0.1:{}", addr.port()),
            service_public_key: SigningKeyPair::generate().unwrap().public().to_hex(),
            insecure_plain_mqtt_for_tests: false,
            git_ca_file: None,
        },
        &ca_pem,
        &cert.cert_pem,
        &dev_key,
        &SealingKeyPair::generate().unwrap(),
        false,
    )
    .unwrap();

    let log_path = dir.path().join("manager.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _manager = Manager(
        Command::new(BIN)
            .args(["run", "--health-interval", "3600", "--data-dir"])
            .arg(&data)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    log_line(&log_path, "connected to the broker");
    assert!(broker.revoke(&cert.serial).unwrap());
    let line = log_line(&log_path, "refused this device's certificate");
    println!("{line}");

    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&format!("device_id={DEVICE}")), "{line}");
    for next in [
        "hammer device show NAME",
        "hammer device add NAME",
        "hammer-manager enroll --force",
    ] {
        assert!(line.contains(next), "{next:?} missing: {line}");
    }
    // The longest backoff step (30 s, jittered down to at most half), not the first one.
    let retry_in_ms: u64 = line
        .split("retry_in_ms=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry_in_ms: {line}"));
    assert!(retry_in_ms >= 15_000, "{line}");
    // The refusal replaces the generic line; the kick and the refused reconnect both count.
    let all = std::fs::read_to_string(&log_path).unwrap();
    assert!(!all.contains("cannot connect to the broker"), "{all}");
    assert!(
        broker
            .metrics()
            .refused(hammer_broker::RefusalReason::Revoked)
            >= 2
    );

    broker.shutdown();
}
