//! The core of a simulated device: its MQTT session under its enrolled identity, and what
//! every simulated device does the same way as the real manager.
//!
//! On CONNACK it subscribes to its `desired|cmd|ack` topics; on SUBACK it publishes its
//! retained presence (online, generation, acked seq and last seq; the last will says
//! offline) and resends nothing yet: the service answers a presence with events waiting with
//! an ack, and only what that ack does not cover is resent (or everything unacked, if no ack
//! came within `resend_after`). A lost connection is retried after a jittered exponential
//! backoff. Every message from the service is verified ([`Verifier`]: service key, device
//! id, owner); a desired state is then judged against the generation acted on
//! ([`Generations`]), an ack trims the [`Outbox`]. Unacked events are resent once they have
//! waited `resend_after`; offline, nothing is resent.
//!
//! What to do with a verified message is the [`Driver`]'s: the scripted device of the tests,
//! the autonomous device of the fleet simulator and the latency probe of the abuse bench are
//! three drivers over this core.

use crate::decide::{DesiredDecision, Generations};
use crate::error::SimError;
use crate::identity::{mqtt_options, new_epoch, set_offline_will, Credentials};
use crate::outbox::{AckOutcome, Outbox};
use crate::verify::{Refused, Verifier};
use hammer_protocol::topics::topic;
use hammer_protocol::{
    encode, now_ms, Ack, Channel, Command, DesiredState, Phase, Presence, StatusEvent, Topic,
    PROTOCOL_VERSION,
};
use rand::Rng;
use rumqttc::{AsyncClient, Event, Incoming, QoS, SubscribeFilter, SubscribeReasonCode};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How a session connects and keeps its outbox.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Host and port of the broker (TLS).
    pub broker: (String, u16),
    pub keep_alive: Duration,
    /// MQTT connect timeout (TCP + TLS + CONNECT/CONNACK), whole seconds (at least 1).
    pub connect_timeout: Duration,
    /// Reconnect backoff: first delay, doubling up to `reconnect_max`, ±50 % jitter, reset
    /// on CONNACK (the manager's `link::Backoff`: 0.5 s to 30 s).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Capacity of the MQTT client's request queue.
    pub request_cap: usize,
    /// Resend unacked events once they have waited this long.
    pub resend_after: Duration,
    /// The `manager_version` in presence.
    pub manager_version: String,
    /// How long [`Session::connect`] waits for the first SUBACK.
    pub ready_timeout: Duration,
    /// How often the session resends what is due and calls [`Driver::tick`] (1 s; at
    /// least 1 ms).
    pub tick: Duration,
}

impl SessionConfig {
    /// The manager's figures: keep-alive 60 s, connect timeout 30 s, backoff 0.5 s to 30 s,
    /// resend after 5 s; ready within 30 s; a tick every second.
    pub fn new(broker: (String, u16)) -> SessionConfig {
        SessionConfig {
            broker,
            keep_alive: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            request_cap: 64,
            resend_after: Duration::from_secs(5),
            manager_version: "sim".into(),
            ready_timeout: Duration::from_secs(30),
            tick: Duration::from_secs(1),
        }
    }
}

/// What a simulated device does with what its session verified. Every method is called on
/// the session's task between two polls of the MQTT event loop: none may block or await (a
/// driver that needs time spawns a task; publishing from here uses [`Device::report_now`]).
#[allow(unused_variables)]
pub trait Driver: Send + Sync + Sized + 'static {
    /// A verified desired state addressed to this device, and what it means.
    fn desired(self: &Arc<Self>, dev: &Arc<Device>, d: DesiredState, decision: DesiredDecision);
    /// A verified command addressed to this device.
    fn command(self: &Arc<Self>, dev: &Arc<Device>, c: Command);
    /// A verified ack, and what it did to the outbox.
    fn ack(&self, dev: &Arc<Device>, ack: Ack, outcome: AckOutcome) {}
    /// A message that did not verify (nothing was done with it).
    fn refused(&self, dev: &Arc<Device>, r: Refused) {
        tracing::warn!(device = %dev.id, error = %r, "refused a message");
    }
    /// A CONNACK; `came_online` unless the device was already counted online.
    fn connected(&self, dev: &Arc<Device>, came_online: bool) {}
    /// The connection is lost (once per loss).
    fn disconnected(&self, dev: &Arc<Device>) {}
    /// The broker refused a subscription.
    fn subscribe_refused(&self, dev: &Arc<Device>) {}
    /// A message on another device's topic (the broker's ACL should make this impossible).
    fn foreign(&self, dev: &Arc<Device>) {}
    /// `n` unacked events were sent again.
    fn resent(&self, dev: &Arc<Device>, n: usize) {}
    /// Every [`SessionConfig::tick`] (once a second by default), connected or not.
    fn tick(self: &Arc<Self>, dev: &Arc<Device>) {}
}

/// One status event to report, before the outbox numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub generation: Option<u64>,
    pub deployment_id: Option<String>,
    pub phase: Phase,
    pub commit: Option<String>,
    pub detail: Option<String>,
}

impl Report {
    /// A phase outside any deployment (configured, crashed…).
    pub fn plain(phase: Phase) -> Report {
        Report {
            generation: None,
            deployment_id: None,
            phase,
            commit: None,
            detail: None,
        }
    }

    /// A phase of the deployment of `d` (or of none).
    pub fn of(d: Option<&DesiredState>, phase: Phase, commit: Option<String>) -> Report {
        Report {
            generation: d.map(|d| d.generation),
            deployment_id: d.map(|d| d.deployment_id.clone()),
            commit,
            ..Report::plain(phase)
        }
    }

    pub fn with_detail(mut self, detail: Option<String>) -> Report {
        self.detail = detail;
        self
    }

    /// The event, not numbered yet (epoch and seq 0).
    fn event(self) -> StatusEvent {
        StatusEvent {
            v: PROTOCOL_VERSION,
            epoch: 0,
            seq: 0,
            generation: self.generation,
            deployment_id: self.deployment_id,
            phase: self.phase,
            commit: self.commit,
            time: now_ms(),
            detail: self.detail,
            log_tail: vec![],
            commit_subject: None,
        }
    }
}

/// A connected device: its identity, MQTT client, outbox and generation. Shared by its
/// session task and its driver.
#[derive(Debug)]
pub struct Device {
    pub id: String,
    pub owner: String,
    pub epoch: u64,
    pub client: AsyncClient,
    verifier: Verifier,
    manager_version: String,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    outbox: Outbox,
    generations: Generations,
    /// CONNACKs seen.
    connects: u64,
    online: bool,
    /// This connection's presence is not out yet (the request queue was full).
    presence_due: bool,
}

impl Device {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation acted on last (0 = none).
    pub fn generation(&self) -> u64 {
        self.lock().generations.acted()
    }

    /// Unacked events in the outbox.
    pub fn unacked(&self) -> usize {
        self.lock().outbox.len()
    }

    /// Highest seq handed out (0 = none).
    pub fn last_seq(&self) -> u64 {
        self.lock().outbox.last_seq()
    }

    /// Highest seq acked (0 = none).
    pub fn acked_seq(&self) -> u64 {
        self.lock().outbox.acked()
    }

    /// Hands out the next seq for an event the caller publishes itself (not kept in the
    /// outbox).
    pub fn reserve_seq(&self) -> u64 {
        self.lock().outbox.reserve()
    }

    /// CONNACKs seen so far.
    pub fn connects(&self) -> u64 {
        self.lock().connects
    }

    fn record(&self, r: Report) -> Result<Vec<u8>, SimError> {
        Ok(self.lock().outbox.append(r.event(), Instant::now())?)
    }

    /// Numbers a status event, keeps it in the outbox and publishes it. A publish that
    /// fails leaves it in the outbox, to be resent; only an event that does not encode is an
    /// error.
    pub async fn report(&self, r: Report) -> Result<(), SimError> {
        let bytes = self.record(r)?;
        let _ = self
            .client
            .publish(
                topic(&self.id, Channel::Status),
                QoS::AtLeastOnce,
                false,
                bytes,
            )
            .await;
        Ok(())
    }

    /// [`Device::report`] without waiting: for drivers, on the session's task. A full
    /// request queue leaves the event in the outbox, to be resent.
    pub fn report_now(&self, r: Report) -> Result<(), SimError> {
        let bytes = self.record(r)?;
        let _ = self.client.try_publish(
            topic(&self.id, Channel::Status),
            QoS::AtLeastOnce,
            false,
            bytes,
        );
        Ok(())
    }

    /// Publishes `payload` on one of this device's channels, as it is (no outbox).
    pub async fn publish(
        &self,
        channel: Channel,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), SimError> {
        Ok(self
            .client
            .publish(topic(&self.id, channel), qos, retain, payload)
            .await?)
    }

    /// [`Device::publish`] without waiting; false if the request queue is full or closed.
    pub fn try_publish(&self, channel: Channel, qos: QoS, retain: bool, payload: Vec<u8>) -> bool {
        self.client
            .try_publish(topic(&self.id, channel), qos, retain, payload)
            .is_ok()
    }

    /// Publishes the online presence of a new connection; resending waits for the ack that
    /// answers it ([`Outbox::connected`]). A presence the full request queue refused is
    /// retried at the next tick ([`Device::retry_presence`]): like the manager, which awaits
    /// its publish, a device never stays connected without having said so.
    fn presence(&self) {
        let (generation, acked_seq, last_seq) = {
            let mut st = self.lock();
            st.outbox.connected(Instant::now());
            (
                st.generations.acted(),
                st.outbox.acked(),
                st.outbox.last_seq(),
            )
        };
        let p = Presence {
            v: PROTOCOL_VERSION,
            online: true,
            epoch: self.epoch,
            generation: (generation > 0).then_some(generation),
            acked_seq,
            manager_version: self.manager_version.clone(),
            time: now_ms(),
            last_seq: Some(last_seq),
        };
        let sent = match encode(&p) {
            Ok(b) => self.try_publish(Channel::Presence, QoS::AtLeastOnce, true, b),
            Err(_) => false,
        };
        self.lock().presence_due = !sent;
    }

    /// Sends the presence again if the last attempt found the request queue full.
    fn retry_presence(&self) {
        let due = {
            let st = self.lock();
            st.online && st.presence_due
        };
        if due {
            self.presence();
        }
    }

    /// Sends unacked events again: those due at this tick ([`Outbox::tick`]); how many.
    fn resend_due(&self, resend_after: Duration) -> usize {
        let due = self.lock().outbox.tick(Instant::now(), resend_after);
        self.publish_all(due)
    }

    fn publish_all(&self, payloads: Vec<Vec<u8>>) -> usize {
        let n = payloads.len();
        for b in payloads {
            self.try_publish(Channel::Status, QoS::AtLeastOnce, false, b);
        }
        n
    }

    fn set_online(&self, online: bool) -> bool {
        let mut st = self.lock();
        if online {
            st.connects += 1;
        } else {
            st.outbox.disconnected();
        }
        let changed = st.online != online;
        st.online = online;
        changed
    }

    fn on_publish<D: Driver>(self: &Arc<Self>, driver: &Arc<D>, topic: &str, payload: &[u8]) {
        let Ok(t) = Topic::parse(topic) else {
            return;
        };
        if t.device_id != self.id {
            driver.foreign(self);
            return;
        }
        match t.channel {
            // An empty retained payload clears the desired state: nothing to act on.
            Channel::Desired if payload.is_empty() => {}
            Channel::Desired => match self.verifier.desired(payload) {
                Ok(d) => {
                    let decision = {
                        let mut st = self.lock();
                        let connection = st.connects;
                        st.generations.on_desired(d.generation, connection)
                    };
                    driver.desired(self, d, decision);
                }
                Err(r) => driver.refused(self, r),
            },
            Channel::Cmd => match self.verifier.command(payload) {
                Ok(c) => driver.command(self, c),
                Err(r) => driver.refused(self, r),
            },
            Channel::Ack => match self.verifier.ack(payload) {
                Ok(a) => {
                    let (outcome, again) = {
                        let mut st = self.lock();
                        let outcome = st.outbox.ack(&a);
                        let again = if outcome == AckOutcome::OtherEpoch {
                            Vec::new()
                        } else {
                            st.outbox.resend_after_ack(Instant::now())
                        };
                        (outcome, again)
                    };
                    driver.ack(self, a, outcome);
                    let n = self.publish_all(again);
                    if n > 0 {
                        driver.resent(self, n);
                    }
                }
                Err(r) => driver.refused(self, r),
            },
            _ => {}
        }
    }
}

/// A running session: dropping it stops its task without a clean disconnect, so the broker
/// publishes the device's last will.
#[derive(Debug)]
pub struct Session {
    pub device: Arc<Device>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session {
    /// Connects `creds` and runs the session with `driver`; returns once the device is
    /// subscribed and announced (or fails after `cfg.ready_timeout`).
    pub async fn connect<D: Driver>(
        creds: &Credentials,
        cfg: SessionConfig,
        driver: Arc<D>,
    ) -> Result<Session, SimError> {
        let verifier = creds.verifier()?;
        let epoch = new_epoch()?;
        let mut opts = mqtt_options(creds, (&cfg.broker.0, cfg.broker.1), cfg.keep_alive)?;
        set_offline_will(&mut opts, &creds.device_id, epoch)?;
        let (client, mut el) = AsyncClient::new(opts, cfg.request_cap);
        el.network_options
            .set_connection_timeout(cfg.connect_timeout.as_secs().max(1));
        let device = Arc::new(Device {
            id: creds.device_id.clone(),
            owner: creds.owner.clone(),
            epoch,
            client,
            verifier,
            manager_version: cfg.manager_version.clone(),
            state: Mutex::new(State {
                outbox: Outbox::new(epoch),
                generations: Generations::default(),
                connects: 0,
                online: false,
                presence_due: false,
            }),
        });
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let dev = device.clone();
        let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
        let resend_after = cfg.resend_after;
        let tick_every = cfg.tick.max(Duration::from_millis(1));
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut tick = tokio::time::interval(tick_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // The tick runs while a poll is pending; the poll itself is never dropped
                // half-way (rumqttc's poll is not cancel-safe: a connect in progress would
                // start over, a packet taken from the request queue might wait unflushed).
                let ev = {
                    let poll = el.poll();
                    tokio::pin!(poll);
                    loop {
                        tokio::select! {
                            ev = &mut poll => break ev,
                            _ = tick.tick() => {
                                dev.retry_presence();
                                let n = dev.resend_due(resend_after);
                                if n > 0 {
                                    driver.resent(&dev, n);
                                }
                                driver.tick(&dev);
                            }
                        }
                    }
                };
                match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        backoff.reset();
                        let came_online = dev.set_online(true);
                        driver.connected(&dev, came_online);
                        let filters = Channel::TO_DEVICE
                            .iter()
                            .map(|c| SubscribeFilter::new(topic(&dev.id, *c), QoS::AtLeastOnce));
                        let _ = dev.client.try_subscribe_many(filters);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(s))) => {
                        if s.return_codes
                            .iter()
                            .any(|c| matches!(c, SubscribeReasonCode::Failure))
                        {
                            driver.subscribe_refused(&dev);
                        }
                        dev.presence();
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        dev.on_publish(&driver, &p.topic, &p.payload);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if dev.set_online(false) {
                            driver.disconnected(&dev);
                        }
                        // Back off like the real manager, so a storm of reconnects spreads out.
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        });
        match tokio::time::timeout(cfg.ready_timeout, ready_rx).await {
            Ok(Ok(())) => Ok(Session { device, task }),
            _ => {
                task.abort();
                Err(SimError::ConnectTimeout {
                    device_id: creds.device_id.clone(),
                    after: cfg.ready_timeout,
                })
            }
        }
    }

    /// Disconnects cleanly (no last will).
    pub async fn disconnect(&self) {
        let _ = self.device.client.disconnect().await;
    }
}

/// Jittered exponential reconnect backoff, as in the device manager's `link::Backoff`: the
/// current step with ±50 % jitter; the step doubles up to `max` and resets on CONNACK.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            current: min,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        base.mul_f64(rand::thread_rng().gen_range(0.5..=1.5))
            .min(self.max)
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(500), Duration::from_secs(30));
        let d1 = b.next_delay();
        assert!(d1 >= ms(250) && d1 <= ms(750), "{d1:?}");
        let d2 = b.next_delay();
        assert!(d2 >= ms(500) && d2 <= ms(1500), "{d2:?}");
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        b.reset();
        assert!(b.next_delay() <= ms(750));
    }

    #[test]
    fn a_report_is_a_status_event_of_its_deployment() {
        let d = DesiredState {
            generation: 4,
            ..crate::test_desired("d", "o")
        };
        let ev = Report::of(Some(&d), Phase::RolledBack, Some("c".into()))
            .with_detail(Some("why".into()))
            .event();
        assert_eq!(ev.generation, Some(4));
        assert_eq!(ev.deployment_id.as_deref(), Some("dep"));
        assert_eq!(
            (ev.commit.as_deref(), ev.detail.as_deref()),
            (Some("c"), Some("why"))
        );
        let plain = Report::plain(Phase::Configured).event();
        assert_eq!((plain.generation, plain.commit), (None, None));
    }
}
