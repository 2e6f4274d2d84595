//! Test fixtures: a fleet CA, a broker on a loopback port, and rumqttc clients over real TLS.
#![allow(dead_code)]

use hammer_broker::{Broker, BrokerConfig, BrokerHandle};
use hammer_certs::{Ca, Issued, RevocationList};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS,
    TlsConfiguration, Transport,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

pub const DAY: Duration = Duration::from_secs(86_400);
pub const OWNER: &str = "owner1";

pub struct Fleet {
    pub ca: Ca,
    pub ca_pem: String,
    pub revocations: Arc<RevocationList>,
}

impl Fleet {
    pub fn new() -> Fleet {
        let ca = Ca::create("hammer test fleet").expect("create CA");
        let ca_pem = ca.cert().pem().to_owned();
        Fleet {
            ca,
            ca_pem,
            revocations: Arc::new(RevocationList::in_memory()),
        }
    }

    pub fn device(&self, id: &str) -> Issued {
        self.ca.issue_device(id, OWNER, DAY).expect("issue device")
    }

    pub fn service(&self) -> Issued {
        self.ca.issue_service("svc", DAY).expect("issue service")
    }

    pub fn config(&self) -> BrokerConfig {
        let server = self
            .ca
            .issue_server(
                &["localhost".to_owned()],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                DAY,
            )
            .expect("issue server");
        let mut config = BrokerConfig::new(
            self.ca_pem.clone(),
            server.cert_pem,
            server.key_pem.expect("server key"),
            self.revocations.clone(),
        );
        config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        config
    }
}

pub fn init() {
    hammer_certs::tls::install_default_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "hammer_broker=info,rumqttd=off".into()),
        )
        .with_test_writer()
        .try_init();
}

pub async fn start(tweak: impl FnOnce(&mut BrokerConfig)) -> (BrokerHandle, Fleet) {
    init();
    let fleet = Fleet::new();
    let mut config = fleet.config();
    tweak(&mut config);
    let handle = Broker::start(config).await.expect("start broker");
    (handle, fleet)
}

/// A rumqttc client whose event loop runs in a task; stops at the first error.
pub struct Client {
    pub client: AsyncClient,
    pub events: mpsc::UnboundedReceiver<Result<Event, String>>,
    /// Incoming packets skipped by `wait_for`, kept for later waits.
    backlog: Vec<Packet>,
}

pub fn tls_options(
    addr: SocketAddr,
    ca_pem: &str,
    cert: Option<&Issued>,
    client_id: &str,
) -> MqttOptions {
    let tls = match cert {
        Some(c) => hammer_certs::tls::client_config(
            ca_pem,
            &c.cert_pem,
            c.key_pem.as_deref().expect("key"),
        )
        .expect("client config"),
        None => hammer_certs::tls::client_config_no_auth(ca_pem).expect("client config"),
    };
    let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
    opts.set_max_packet_size(hammer_protocol::MAX_PACKET, hammer_protocol::MAX_PACKET);
    opts.set_keep_alive(Duration::from_secs(30));
    opts
}

pub fn spawn(opts: MqttOptions) -> Client {
    let (client, eventloop) = AsyncClient::new(opts, 64);
    Client::drive(client, eventloop)
}

impl Client {
    fn drive(client: AsyncClient, mut eventloop: EventLoop) -> Client {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        break;
                    }
                }
            }
        });
        Client {
            client,
            events: rx,
            backlog: Vec::new(),
        }
    }

    pub async fn device(handle: &BrokerHandle, fleet: &Fleet, cert: &Issued, id: &str) -> Client {
        Self::connected(tls_options(
            handle.local_addr(),
            &fleet.ca_pem,
            Some(cert),
            id,
        ))
        .await
    }

    pub async fn connected(opts: MqttOptions) -> Client {
        let mut c = spawn(opts);
        c.expect_connack().await.expect("connack");
        c
    }

    /// Waits for a successful CONNACK (Err: the error or refusal).
    pub async fn expect_connack(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ev = timeout(deadline - Instant::now(), self.events.recv())
                .await
                .map_err(|_| "timeout waiting for CONNACK".to_owned())?
                .ok_or("event loop ended")?;
            match ev? {
                Event::Incoming(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                    return Ok(())
                }
                Event::Incoming(Packet::ConnAck(ack)) => return Err(format!("{:?}", ack.code)),
                _ => {}
            }
        }
    }

    /// Waits for the next incoming packet matching `f`, skipping others.
    pub async fn wait_for<T>(
        &mut self,
        within: Duration,
        mut f: impl FnMut(&Packet) -> Option<T>,
    ) -> Result<T, String> {
        if let Some(i) = self.backlog.iter().position(|p| f(p).is_some()) {
            let p = self.backlog.remove(i);
            return f(&p).ok_or_else(|| "unreachable".to_owned());
        }
        let deadline = Instant::now() + within;
        loop {
            let ev = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.events.recv(),
            )
            .await
            .map_err(|_| "timeout".to_owned())?
            .ok_or("event loop ended")?;
            if let Event::Incoming(p) = ev? {
                if let Some(t) = f(&p) {
                    return Ok(t);
                }
                self.backlog.push(p);
            }
        }
    }

    pub async fn suback(&mut self) -> Result<(), String> {
        self.wait_for(Duration::from_secs(5), |p| {
            matches!(p, Packet::SubAck(_)).then_some(())
        })
        .await
    }

    pub async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queue subscribe");
        self.suback().await.expect("suback");
    }

    pub async fn publish_on(&mut self, within: Duration, topic: &str) -> Result<Publish, String> {
        let topic = topic.to_owned();
        self.wait_for(within, |p| match p {
            Packet::Publish(p) if p.topic == topic => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// True when the connection ends (event loop error) within `within`.
    pub async fn disconnected_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            match timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.events.recv(),
            )
            .await
            {
                Err(_) => return false,
                Ok(None) => return true,
                Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

pub fn will(topic: &str) -> LastWill {
    LastWill::new(topic, b"offline".to_vec(), QoS::AtLeastOnce, true)
}

/// Polls `cond` until true or 5 s pass.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "not in time: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw TLS connection with a device certificate, for sending arbitrary bytes.
pub async fn raw_tls(
    addr: SocketAddr,
    fleet: &Fleet,
    cert: &hammer_certs::Issued,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cfg = hammer_certs::tls::client_config(
        &fleet.ca_pem,
        &cert.cert_pem,
        cert.key_pem.as_deref().unwrap(),
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// True when the peer closes `s` within `within`.
pub async fn closed_within(
    s: &mut tokio_rustls::client::TlsStream<TcpStream>,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            s.read(&mut buf),
        )
        .await
        {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Waits for device `id`'s will ("offline") on a client subscribed to its presence.
pub async fn expect_offline(svc: &mut Client, id: &str) {
    let p = svc
        .publish_on(
            Duration::from_secs(3),
            &hammer_protocol::topics::topic(id, hammer_protocol::topics::Channel::Presence),
        )
        .await
        .expect("will delivered");
    assert_eq!(&p.payload[..], b"offline");
}

/// Whether the broker at `addr` accepts a client with `cert` (CONNACK success).
pub async fn accepted(addr: SocketAddr, fleet: &Fleet, cert: Option<&Issued>, id: &str) -> bool {
    spawn(tls_options(addr, &fleet.ca_pem, cert, id))
        .expect_connack()
        .await
        .is_ok()
}
