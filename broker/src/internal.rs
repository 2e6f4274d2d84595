//! The embedded rumqttd: the actual router of messages, on its own threads, listening only on
//! a loopback port with a random username and password that only the front door knows.
//!
//! rumqttd 0.20 has no shutdown (its `Broker::start` joins its server threads and never
//! returns), so it runs on a dedicated std thread for the life of the process. Config traps
//! avoided here (from its source): `max_connections` and `max_segment_size` default to 0 (no
//! client can connect / a panic on the first subscribe), `dynamic_filters` must be on,
//! `next_connection_delay_ms` must be 0 (it sleeps after every accept), and the payload limit
//! comes from the protocol's `MAX_PAYLOAD`.

use crate::config::InternalConfig;
use crate::error::BrokerError;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

/// Address and credentials of the running internal broker.
#[derive(Clone)]
pub struct Internal {
    /// Loopback address rumqttd listens on.
    pub addr: SocketAddr,
    pub(crate) username: String,
    pub(crate) password: String,
}

impl std::fmt::Debug for Internal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Internal")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn random_hex(bytes: usize) -> Result<String, BrokerError> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| BrokerError::Internal(format!("getrandom: {e}")))?;
    Ok(hex::encode(buf))
}

/// The rumqttd configuration for a loopback listener at `addr`.
pub(crate) fn rumqttd_config(
    addr: SocketAddr,
    username: &str,
    password: &str,
    max_connections: usize,
    sizing: &InternalConfig,
) -> rumqttd::Config {
    let mut auth = HashMap::new();
    auth.insert(username.to_owned(), password.to_owned());
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        // rumqttd compares this with the packet's remaining length.
        max_payload_size: hammer_protocol::MAX_PACKET,
        max_inflight_count: sizing.max_inflight_count,
        auth: Some(auth),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "hammer-internal-v4".to_owned(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let mut v4 = HashMap::new();
    v4.insert("internal".to_owned(), server);
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            // Room for reconnects overlapping with the sessions they replace.
            max_connections: max_connections.saturating_mul(2).max(64),
            max_outgoing_packet_count: sizing.max_outgoing_packet_count,
            max_segment_size: sizing.segment_size.max(1024),
            max_segment_count: sizing.segment_count.max(1),
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// Starts rumqttd on a free loopback port and waits until it accepts TCP connections.
pub(crate) fn start(
    max_connections: usize,
    sizing: &InternalConfig,
) -> Result<Internal, BrokerError> {
    // Pick a free port; rumqttd binds it itself a moment later.
    let addr = {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| BrokerError::Internal(format!("no free loopback port: {e}")))?;
        l.local_addr()
            .map_err(|e| BrokerError::Internal(e.to_string()))?
    };
    let username = format!("hammer-front-door-{}", random_hex(8)?);
    let password = random_hex(32)?;
    let config = rumqttd_config(addr, &username, &password, max_connections, sizing);
    std::thread::Builder::new()
        .name("hammer-rumqttd".to_owned())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "internal broker stopped");
            }
        })
        .map_err(|e| BrokerError::Internal(format!("cannot spawn rumqttd thread: {e}")))?;

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match probe(addr, &username, &password) {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(BrokerError::Internal(format!(
                    "internal broker on {addr} did not accept the front door's login: {e}"
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    tracing::debug!(%addr, "internal broker listening");
    Ok(Internal {
        addr,
        username,
        password,
    })
}

/// Logs into rumqttd with the internal credentials and leaves cleanly: proves it is up and
/// that the front door's login works.
fn probe(addr: SocketAddr, username: &str, password: &str) -> std::io::Result<()> {
    use rumqttc::mqttbytes::v4::{Connect, Login, Packet};
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut connect = Connect::new(format!("{username}-probe"));
    connect.keep_alive = 10;
    connect.login = Some(Login::new(username, password));
    let mut buf = bytes::BytesMut::new();
    Packet::Connect(connect)
        .write(&mut buf, usize::MAX)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    s.write_all(&buf)?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)?;
    s.write_all(&[0xe0, 0x00])?;
    if ack == [0x20, 0x02, 0x00, 0x00] {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("CONNACK {ack:?}")))
    }
}
