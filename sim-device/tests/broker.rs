//! Both simulated devices against the project's broker (hammer-broker in-process: mTLS front
//! door with ACLs), with a device certificate signed by a fresh fleet CA and a stand-in
//! service that signs what it sends: presence, the phases of a desired state, refusals of
//! forged messages, the outbox trimmed by a signed ack and resent after the broker drops the
//! connection, the latency probe's time to ack.

use hammer_broker::{Broker, BrokerConfig, BrokerHandle};
use hammer_certs::{Ca, RevocationList};
use hammer_protocol::signing::SigningKeyPair;
use hammer_protocol::topics::topic;
use hammer_protocol::*;
use hammer_sim_device::autonomous;
use hammer_sim_device::{
    Behavior, Credentials, FleetStats, LatencyProbe, ScriptedDevice, SessionConfig, SimConfig,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const DAY: Duration = Duration::from_secs(86_400);
const OWNER: &str = "alice1";

struct Fleet {
    ca: Ca,
    ca_pem: String,
    broker: BrokerHandle,
    addr: SocketAddr,
    key: SigningKeyPair,
}

impl Fleet {
    async fn start() -> Fleet {
        hammer_certs::tls::install_default_provider();
        let ca = Ca::create("sim-device test fleet").unwrap();
        let ca_pem = ca.cert().pem().to_owned();
        let server = ca
            .issue_server(
                &["localhost".to_owned()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                DAY,
            )
            .unwrap();
        let mut config = BrokerConfig::new(
            ca_pem.clone(),
            server.cert_pem,
            server.key_pem.unwrap(),
            Arc::new(RevocationList::in_memory()),
        );
        config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let broker = Broker::start(config).await.unwrap();
        let addr = broker.local_addr();
        Fleet {
            ca,
            ca_pem,
            broker,
            addr,
            key: SigningKeyPair::generate().unwrap(),
        }
    }

    /// A device of OWNER: key and CSR made here, certificate signed from the CSR.
    fn device(&self, id: &str) -> Credentials {
        let (key_pem, csr) = hammer_certs::new_device_key_and_csr().unwrap();
        let cert = self.ca.sign_device_csr(&csr, id, OWNER, DAY).unwrap();
        Credentials {
            name: id.into(),
            device_id: id.into(),
            owner: OWNER.into(),
            ca_pem: self.ca_pem.clone(),
            cert_pem: cert.cert_pem,
            key_pem,
            service_key: self.key.public().to_hex(),
            broker_url: format!("mqtts://127.0.0.1:{}", self.addr.port()),
        }
    }

    fn broker(&self) -> (String, u16) {
        ("127.0.0.1".into(), self.addr.port())
    }

    /// The stand-in service, over mTLS with a service certificate, subscribed to what
    /// devices send.
    async fn service(&self) -> Service {
        let cert = self.ca.issue_service("svc", DAY).unwrap();
        let tls = hammer_certs::tls::client_config(
            &self.ca_pem,
            &cert.cert_pem,
            cert.key_pem.as_ref().unwrap(),
        )
        .unwrap();
        let mut o = MqttOptions::new("svc", "127.0.0.1", self.addr.port());
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (client, mut el) = AsyncClient::new(o, 64);
        let (tx, seen) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let c2 = client.clone();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let filters = [Channel::Status, Channel::Presence].map(|c| {
                            rumqttc::SubscribeFilter::new(c.all_devices_filter(), QoS::AtLeastOnce)
                        });
                        c2.subscribe_many(filters).await.unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let t = Topic::parse(&p.topic).unwrap();
                        let s = match t.channel {
                            Channel::Status => Seen::Status(decode(&p.payload).unwrap()),
                            Channel::Presence => Seen::Presence(decode(&p.payload).unwrap()),
                            _ => continue,
                        };
                        if tx.send(s).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("service did not subscribe")
            .unwrap();
        Service {
            client,
            key: SigningKeyPair::from_seed(self.key.to_seed().as_ref()).unwrap(),
            seen,
            early: std::collections::VecDeque::new(),
        }
    }
}

#[derive(Debug)]
enum Seen {
    Status(StatusEvent),
    Presence(Presence),
}

struct Service {
    client: AsyncClient,
    key: SigningKeyPair,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Status events that arrived while [`Service::presence`] waited (a device may report
    /// before its presence is out): [`Service::statuses`] returns them first.
    early: std::collections::VecDeque<StatusEvent>,
}

impl Service {
    async fn publish(&self, device: &str, channel: Channel, retain: bool, payload: Vec<u8>) {
        self.client
            .publish(topic(device, channel), QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
    }

    async fn desired(&self, d: &DesiredState) {
        let signed = self.key.sign_to_vec(d).unwrap();
        self.publish(&d.device_id, Channel::Desired, true, signed)
            .await;
    }

    async fn ack(&self, device: &str, epoch: u64, seq: u64) {
        let signed = self
            .key
            .sign_to_vec(&AddressedAck::new(device, OWNER, epoch, seq))
            .unwrap();
        self.publish(device, Channel::Ack, false, signed).await;
    }

    async fn next(&mut self, what: &str) -> Seen {
        match tokio::time::timeout(Duration::from_secs(15), self.seen.recv()).await {
            Ok(Some(s)) => s,
            _ => panic!("timed out waiting for {what}"),
        }
    }

    async fn presence(&mut self) -> Presence {
        loop {
            match self.next("presence").await {
                Seen::Presence(p) if p.online => return p,
                Seen::Presence(_) => {}
                Seen::Status(e) => self.early.push_back(e),
            }
        }
    }

    /// The next `n` status events (presence skipped), those that came while waiting for a
    /// presence first.
    async fn statuses(&mut self, n: usize) -> Vec<StatusEvent> {
        let mut out = Vec::new();
        while out.len() < n {
            if let Some(e) = self.early.pop_front() {
                out.push(e);
                continue;
            }
            if let Seen::Status(e) = self.next("status events").await {
                out.push(e);
            }
        }
        out
    }
}

fn desired(device: &str, generation: u64) -> DesiredState {
    DesiredState {
        v: PROTOCOL_VERSION,
        device_id: device.into(),
        owner: OWNER.into(),
        generation,
        deployment_id: "dep1".into(),
        repo_url: "https://example.com/app.git".into(),
        git_ref: "main".into(),
        commit: None,
        start: "./run.sh".into(),
        env: Default::default(),
        health_window_secs: 1,
        health_cmd: None,
        run_state: RunState::Running,
        issued_at: now_ms(),
        install: None,
        full_history: false,
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..300 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autonomous_device_walks_the_phases_and_keeps_its_outbox_until_a_signed_ack() {
    let f = Fleet::start().await;
    let mut svc = f.service().await;
    let creds = f.device("dev1");
    let stats = Arc::new(FleetStats::default());
    let cfg = Arc::new(SimConfig {
        fetch: Duration::from_millis(10),
        start: Duration::from_millis(10),
        jitter: Duration::ZERO,
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(50),
        ..SimConfig::default()
    });
    let (host, port) = f.broker();
    let dev = autonomous::connect(
        0,
        &creds,
        (&host, port),
        cfg,
        stats.clone(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let p = svc.presence().await;
    assert_eq!((p.generation, p.acked_seq), (None, 0));
    assert_eq!(stats.online.load(Relaxed), 1);

    // A desired state signed by another key is refused; nothing starts.
    let forged = SigningKeyPair::generate()
        .unwrap()
        .sign_to_vec(&desired("dev1", 1))
        .unwrap();
    svc.publish("dev1", Channel::Desired, false, forged).await;
    until("the forged desired state refused", || {
        stats.bad_signatures.load(Relaxed) == 1
    })
    .await;
    assert_eq!(stats.desired_received.load(Relaxed), 0);

    svc.desired(&desired("dev1", 1)).await;
    let evs = svc.statuses(6).await;
    let phases: Vec<Phase> = evs.iter().map(|e| e.phase).collect();
    assert_eq!(
        phases,
        [
            Phase::Received,
            Phase::Fetching,
            Phase::Fetched,
            Phase::Starting,
            Phase::Verifying,
            Phase::Running
        ]
    );
    assert!(evs
        .iter()
        .all(|e| e.epoch == p.epoch && e.generation == Some(1)));
    assert_eq!(
        evs.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(evs[5].commit.as_deref(), Some(&*format!("{:040x}", 1)));
    until("the finish recorded", || stats.finishes(false).len() == 1).await;
    assert_eq!(dev.unacked(), 6);

    // An ack of another epoch trims nothing; a signed ack of this one trims up to its seq.
    svc.ack("dev1", p.epoch + 1, 6).await;
    svc.ack("dev1", p.epoch, 4).await;
    until("the ack applied", || dev.unacked() == 2).await;
    assert_eq!(stats.events_acked.load(Relaxed), 4);

    // The broker drops the device: it comes back, announces what it acted on and what was
    // acked, and resends the rest.
    assert!(f.broker.kick_device("dev1") >= 1);
    let p2 = svc.presence().await;
    assert_eq!(
        (p2.epoch, p2.generation, p2.acked_seq),
        (p.epoch, Some(1), 4)
    );
    let again = svc.statuses(2).await;
    assert_eq!(again.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 6]);
    assert!(stats.events_resent.load(Relaxed) >= 2);
    svc.ack("dev1", p.epoch, 6).await;
    until("the outbox empty", || dev.unacked() == 0).await;

    // The resync republishes the same generation: confirmed, not acted on again.
    svc.desired(&desired("dev1", 1)).await;
    until("the same generation confirmed", || {
        stats.confirmed.load(Relaxed) == 2
    })
    .await;
    assert_eq!(stats.desired_received.load(Relaxed), 1);
    f.broker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripted_device_answers_with_its_behavior_records_what_it_got_and_resends() {
    let f = Fleet::start().await;
    let mut svc = f.service().await;
    let creds = f.device("dev2");
    let mut cfg = SessionConfig::new(f.broker());
    cfg.reconnect_min = Duration::from_millis(50);
    cfg.reconnect_max = Duration::from_millis(50);
    let dev = ScriptedDevice::connect_with(&creds, cfg, Behavior::Fail)
        .await
        .unwrap();
    let p = svc.presence().await;
    assert_eq!(p.epoch, dev.epoch);

    // Addressed to another device of the same owner: refused and recorded.
    let misaddressed = f.key.sign_to_vec(&desired("dev3", 1)).unwrap();
    svc.publish("dev2", Channel::Desired, false, misaddressed)
        .await;
    until("the refusal recorded", || {
        dev.refused.lock().unwrap().len() == 1
    })
    .await;
    assert!(dev.last_desired().is_none());

    svc.desired(&desired("dev2", 1)).await;
    let evs = svc.statuses(3).await;
    let got: Vec<(u64, Phase)> = evs.iter().map(|e| (e.seq, e.phase)).collect();
    assert_eq!(
        got,
        [
            (1, Phase::Received),
            (2, Phase::Fetched),
            (3, Phase::RolledBack)
        ]
    );
    assert_eq!(evs[2].detail.as_deref(), Some("health check failed"));
    assert_eq!(
        evs[0].commit.as_deref(),
        Some(hammer_sim_device::scripted::DEFAULT_HEAD)
    );
    assert_eq!(dev.wait_desired().await.unwrap().generation, 1);

    // The test's own events take the next seqs and stay out of the outbox.
    let seq = dev.next_seq();
    assert_eq!(seq, 4);
    dev.status(seq, Phase::Crashed).await.unwrap();
    assert_eq!(svc.statuses(1).await[0].seq, 4);
    assert_eq!(dev.unacked(), 3);

    // Unacked events are resent after a reconnect, in order, with their seqs.
    assert!(f.broker.kick_device("dev2") >= 1);
    svc.presence().await;
    let again = svc.statuses(3).await;
    assert_eq!(again.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);

    svc.ack("dev2", dev.epoch, 4).await;
    assert!(dev.wait_ack(4).await);
    assert_eq!(dev.last_ack().map(|a| a.seq), Some(4));
    until("the outbox empty", || dev.unacked() == 0).await;
    f.broker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_probe_reports_every_period_and_times_each_event_to_its_ack() {
    let f = Fleet::start().await;
    let mut svc = f.service().await;
    let creds = f.device("dev4");
    let mut cfg = SessionConfig::new(f.broker());
    cfg.reconnect_min = Duration::from_millis(50);
    cfg.reconnect_max = Duration::from_millis(50);
    let t0 = Instant::now();
    let probe = LatencyProbe::connect(&creds, cfg, Duration::from_millis(100))
        .await
        .unwrap();
    let p = svc.presence().await;
    let evs = svc.statuses(3).await;
    let got: Vec<(u64, u64, Phase)> = evs.iter().map(|e| (e.epoch, e.seq, e.phase)).collect();
    assert_eq!(
        got,
        [
            (p.epoch, 1, Phase::Running),
            (p.epoch, 2, Phase::Running),
            (p.epoch, 3, Phase::Running)
        ]
    );

    // A forged ack is refused and times nothing; a signed one times every event up to it.
    let forged = SigningKeyPair::generate()
        .unwrap()
        .sign_to_vec(&AddressedAck::new("dev4", OWNER, p.epoch, 3))
        .unwrap();
    svc.publish("dev4", Channel::Ack, false, forged).await;
    until("the forged ack refused", || probe.refused() == 1).await;
    assert!(probe.window(t0, Instant::now()).latencies.is_empty());
    svc.ack("dev4", p.epoch, 2).await;
    until("two events acked", || {
        probe.window(t0, Instant::now()).latencies.len() == 2
    })
    .await;
    let w = probe.window(t0, Instant::now());
    assert!(w.missed >= 1, "seq 3 on is not acked: {w:?}");
    assert!(w.latencies.iter().all(|d| *d < Duration::from_secs(5)));

    // Cut off: counted; after the reconnect it goes on with the next seqs.
    assert!(f.broker.kick_device("dev4") >= 1);
    until("the disconnect counted", || probe.disconnects() == 1).await;
    svc.presence().await;
    let mark = Instant::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let last = probe.device().last_seq();
    svc.ack("dev4", p.epoch, last).await;
    until("everything sent before the ack acked", || {
        probe.window(t0, mark).missed == 0
    })
    .await;
    let w = probe.window(t0, mark);
    assert!(
        w.sent() >= 3 && w.sent() as u64 <= last,
        "{w:?}, last {last}"
    );
    assert_eq!(probe.refused(), 1);
    f.broker.shutdown();
}
