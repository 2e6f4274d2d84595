//! The agent against the project's own broker (hammer-broker: mTLS front door with ACLs in
//! front of rumqttd), with a device certificate signed from the device's CSR exactly as
//! enrollment does: connects over mutual TLS, announces presence (its will is allowed by the
//! ACL), receives a signed desired state, reports, is acked, and re-sends after the broker
//! drops its connection.

use crate::agent_support::*;
use hammer_broker::Broker;
use hammer_certs::{Ca, RevocationList};
use hammer_manager::config::DataDir;
use hammer_manager::runtime::Report;
use hammer_protocol::api::ManagerConfigFile;
use hammer_protocol::sealing::SealingKeyPair;
use hammer_protocol::signing::SigningKeyPair;
use hammer_protocol::*;
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_over_mtls_through_hammer_broker() {
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

    // The service, over mTLS with a service certificate.
    let svc_cert = ca.issue_service("svc", DAY).unwrap();
    let key = SigningKeyPair::generate().unwrap();
    let mut o = MqttOptions::new("svc", "127.0.0.1", addr.port());
    o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(
            hammer_certs::tls::client_config(
                &ca_pem,
                &svc_cert.cert_pem,
                svc_cert.key_pem.as_ref().unwrap(),
            )
            .unwrap(),
        ),
    )));
    let mut svc = Service::connect_with(
        o,
        SigningKeyPair::from_seed(key.to_seed().as_ref()).unwrap(),
    )
    .await;

    // The device: key and CSR made locally, certificate signed from the CSR.
    let dir = TempDir::new();
    let (dev_key, csr) = hammer_certs::new_device_key_and_csr().unwrap();
    let cert = ca.sign_device_csr(&csr, DEVICE, OWNER, DAY).unwrap();
    let sealing = SealingKeyPair::generate().unwrap();
    hammer_manager::enroll::write_data_dir(
        &DataDir::new(dir.path()),
        &ManagerConfigFile {
            device_id: DEVICE.into(),
            owner: OWNER.into(),
            broker_url: format!("mqtts://127.0.0.1:{}", addr.port()),
            service_public_key: key.public().to_hex(),
            insecure_plain_mqtt_for_tests: false,
            git_ca_file: None,
        },
        &ca_pem,
        &cert.cert_pem,
        &dev_key,
        &sealing,
        false,
    )
    .unwrap();

    let outbox = open_outbox(&dir.path());
    let epoch = outbox.store().epoch();
    let backend = Arc::new(Recorder::default());
    let agent = start_agent(
        &dir.path(),
        fast_options(&dir.path()),
        outbox.clone(),
        backend.clone(),
    );

    let p = svc
        .wait_for("presence online over mTLS", |s| match s {
            Seen::Presence(p) if p.online => Some(p.clone()),
            _ => None,
        })
        .await;
    assert_eq!(p.epoch, epoch);

    svc.desired(&desired(1)).await;
    wait_until("desired delivered", || backend.desired_generations() == [1]).await;

    outbox
        .append(Report::new(Phase::Received, "received generation 1"))
        .unwrap();
    svc.wait_status(&[1]).await;

    // The broker drops the device; it reconnects and re-sends what is unacked.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(broker.kick_device(DEVICE) >= 1);
    outbox
        .append(Report::new(Phase::Fetching, "fetching"))
        .unwrap();
    svc.wait_for("presence online again", |s| {
        matches!(s, Seen::Presence(p) if p.online).then_some(())
    })
    .await;
    svc.wait_status(&[1, 2]).await;

    svc.ack(epoch, 2).await;
    wait_until("outbox empty", || outbox.is_empty()).await;
    agent.stop();
    broker.shutdown();
}
