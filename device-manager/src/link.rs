//! The MQTT link (rumqttc): options, the event-loop task, and reconnect backoff.
//!
//! The event loop runs on its own task and only forwards what the agent needs
//! ([`LinkEvent`]), so the agent may await a publish without ever stalling keep-alives, and
//! git work (on the runtime's threads) never blocks it. rumqttc reconnects when polled
//! again after an error; this task sleeps a jittered exponential backoff (0.5 s doubling to
//! 30 s) between attempts and resets it after a successful CONNACK.
//!
//! A CONNACK "not authorized" (3.1.1 return code 5) means the broker refuses this device's
//! certificate: it was revoked, usually because the owner removed the device. Retrying soon
//! cannot help, so such an attempt waits the longest backoff step (`max`, jittered), and it
//! gets one `error` line that says so and names the way back ([`REFUSED`]): on the first
//! refusal of a run (after start, a connection, or another kind of failure) and then every
//! [`REFUSED_LOG_EVERY`]th refusal in a row (about every 45 min at the default 30 s step), so
//! a log read later still says why; the refusals between are logged at `debug`. Any other
//! failure keeps the `warn` line and the growing backoff ([`classify`], [`Refusals`]).
//!
//! Client id = device id, clean_session = false, keep-alive 30 s, max packet
//! [`hammer_protocol::MAX_PACKET`] both ways, last will = retained QoS 1
//! `Presence::offline(epoch)` on the presence topic. Transport: `mqtts://` is mutual TLS with
//! the device certificate; `mqtt://` (plain TCP) exists for tests on loopback.

use crate::config::Identity;
use anyhow::Result;
use hammer_protocol::topics::topic;
use hammer_protocol::{Channel, Presence, MAX_PACKET};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions,
    Packet, QoS, Transport,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What the event loop tells the agent.
#[derive(Debug)]
pub enum LinkEvent {
    /// A CONNACK arrived: subscribe, announce presence, re-send the outbox.
    Connected { session_present: bool },
    /// The connection was lost (the loop is backing off and will reconnect).
    Disconnected,
    /// A publish arrived on one of our subscriptions.
    Message { topic: String, payload: Vec<u8> },
}

/// Reconnect timing.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The next delay: the current step with ±50 % jitter; the step doubles up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let mut b = [0u8; 2];
        let _ = getrandom::getrandom(&mut b);
        let frac = u16::from_le_bytes(b) as f64 / u16::MAX as f64; // 0..=1
        base.mul_f64(0.5 + frac).min(self.max)
    }

    /// The delay at the longest step (`max`, with the same jitter), for failures that retrying
    /// soon cannot fix; the steps after it stay at `max` until [`Backoff::reset`].
    pub fn longest_delay(&mut self) -> Duration {
        self.current = self.max;
        self.next_delay()
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// What a failed connection attempt says about the next ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// CONNACK "not authorized": the broker refuses this device's certificate (revoked, or the
    /// device was removed by its owner). Only a new enrollment helps.
    Refused,
    /// Anything else (network, TLS, timeout, a broker restarting): retried with the backoff.
    Other,
}

/// Sorts a connection error.
pub fn classify(e: &ConnectionError) -> Failure {
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => Failure::Refused,
        _ => Failure::Other,
    }
}

/// The error line of a refused certificate: what happened and the way back.
pub const REFUSED: &str =
    "the broker refused this device's certificate (CONNACK: not authorized): \
it was revoked, or the device was removed by its owner; retrying cannot help until this device \
is enrolled again. The owner can check with `hammer device show NAME` (not found: it was \
removed); to bring it back, register it again with `hammer device add NAME` and run the \
`hammer-manager enroll --force --url URL --token TOKEN --ca-sha256 SHA256` line it prints on \
this device.";

/// A refusal in a row gets the [`REFUSED`] line again after this many.
pub const REFUSED_LOG_EVERY: u32 = 120;

/// Counts refusals in a row and decides which of them get the [`REFUSED`] line.
#[derive(Debug, Default)]
pub struct Refusals {
    in_a_row: u32,
}

impl Refusals {
    /// Records a failed attempt; `true` when it is a refusal that gets the error line (the
    /// first of a run, then every [`REFUSED_LOG_EVERY`]th).
    pub fn failed(&mut self, f: Failure) -> bool {
        match f {
            Failure::Other => {
                self.in_a_row = 0;
                false
            }
            Failure::Refused => {
                let log = self.in_a_row.is_multiple_of(REFUSED_LOG_EVERY);
                self.in_a_row = self.in_a_row.saturating_add(1);
                log
            }
        }
    }

    /// A CONNACK arrived: the next refusal starts a new run.
    pub fn connected(&mut self) {
        self.in_a_row = 0;
    }

    /// Refusals in a row so far.
    pub fn in_a_row(&self) -> u32 {
        self.in_a_row
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

/// Builds the rumqttc options for this device.
pub fn options(id: &Identity, epoch: u64, keep_alive: Duration) -> Result<MqttOptions> {
    let mut o = MqttOptions::new(id.device_id.clone(), id.broker.host.clone(), id.broker.port);
    o.set_clean_session(false)
        .set_keep_alive(keep_alive)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_last_will(LastWill::new(
            topic(&id.device_id, Channel::Presence),
            hammer_protocol::encode(&Presence::offline(epoch))?,
            QoS::AtLeastOnce,
            true,
        ));
    if id.broker.tls {
        let cfg = hammer_certs::tls::client_config(&id.ca_pem, &id.cert_pem, &id.key_pem)?;
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(cfg)),
        ));
    } else {
        tracing::warn!(
            host = %id.broker.host,
            "plain mqtt:// transport: no TLS, no authentication; only for local tests"
        );
    }
    Ok(o)
}

/// Capacity of the request channel between the agent and the event loop.
const REQUEST_CAP: usize = 64;

/// Seconds allowed for one connection attempt (TCP, TLS and CONNACK).
const CONNECT_TIMEOUT_SECS: u64 = 30;

/// Creates the client and spawns the event-loop task. The task ends when the receiver is
/// dropped or after a requested disconnect.
pub fn spawn(
    opts: MqttOptions,
    backoff: Backoff,
) -> (AsyncClient, mpsc::UnboundedReceiver<LinkEvent>) {
    let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_CAP);
    // TCP + TLS + CONNACK within 30 s (rumqttc's default is 5 s): in a reconnect storm the
    // broker queues a handshake for up to 10 s, and giving up earlier only adds a backoff.
    eventloop
        .network_options
        .set_connection_timeout(CONNECT_TIMEOUT_SECS);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run_loop(eventloop, tx, backoff));
    (client, rx)
}

async fn run_loop(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<LinkEvent>,
    mut backoff: Backoff,
) {
    let mut connected = false;
    let mut refusals = Refusals::default();
    let device_id = eventloop.mqtt_options.client_id();
    loop {
        let ev = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the broker"
                );
                backoff.reset();
                refusals.connected();
                connected = true;
                Some(LinkEvent::Connected {
                    session_present: ack.session_present,
                })
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Some(LinkEvent::Message {
                topic: p.topic,
                payload: p.payload.to_vec(),
            }),
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                tracing::debug!("disconnect sent; link closed");
                return;
            }
            Ok(_) => None,
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(e) => {
                let failure = classify(&e);
                let log_refusal = refusals.failed(failure);
                let delay = match failure {
                    Failure::Refused => backoff.longest_delay(),
                    Failure::Other => backoff.next_delay(),
                };
                let retry_in_ms = delay.as_millis() as u64;
                if failure == Failure::Refused {
                    let refusals = refusals.in_a_row();
                    if log_refusal {
                        tracing::error!(device_id = %device_id, refusals, retry_in_ms, "{REFUSED}");
                    } else {
                        tracing::debug!(device_id = %device_id, refusals, retry_in_ms, "the broker refused this device's certificate again");
                    }
                } else if connected {
                    tracing::warn!(error = %e, "lost the broker connection; reconnecting");
                } else {
                    tracing::warn!(error = %e, retry_in_ms, "cannot connect to the broker");
                }
                if connected && tx.send(LinkEvent::Disconnected).is_err() {
                    return;
                }
                connected = false;
                tokio::time::sleep(delay).await;
                None
            }
        };
        if let Some(ev) = ev {
            if tx.send(ev).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let d1 = b.next_delay();
        assert!(d1 >= Duration::from_millis(250) && d1 <= Duration::from_millis(750));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        assert_eq!(b.current, Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(750));
    }

    #[test]
    fn only_connack_not_authorized_is_a_refusal() {
        let refused = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        assert_eq!(classify(&refused), Failure::Refused);
        for other in [
            ConnectionError::ConnectionRefused(ConnectReturnCode::ServiceUnavailable),
            ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
            ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            ConnectionError::NetworkTimeout,
        ] {
            assert_eq!(classify(&other), Failure::Other, "{other:?}");
        }
    }

    #[test]
    fn a_refusal_is_logged_once_per_run_and_again_after_many() {
        let mut r = Refusals::default();
        assert!(r.failed(Failure::Refused), "the first refusal is logged");
        for _ in 1..REFUSED_LOG_EVERY {
            assert!(!r.failed(Failure::Refused), "not every retry");
        }
        assert!(r.failed(Failure::Refused), "a reminder after many");
        assert!(!r.failed(Failure::Refused));
        // Another kind of failure or a connection starts a new run.
        assert!(!r.failed(Failure::Other));
        assert!(r.failed(Failure::Refused));
        r.connected();
        assert!(r.failed(Failure::Refused));
        assert!(!r.failed(Failure::Refused));
    }

    #[test]
    fn a_refusal_waits_the_longest_step() {
        let mut b = Backoff::default();
        let d = b.longest_delay();
        assert!(
            d >= Duration::from_secs(15) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(b.current, Duration::from_secs(30));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(750));
    }

    #[test]
    fn the_refusal_line_names_the_real_commands() {
        for cmd in [
            "hammer device show NAME",
            "hammer device add NAME",
            "hammer-manager enroll --force",
        ] {
            assert!(REFUSED.contains(cmd), "{cmd}");
        }
    }
}
