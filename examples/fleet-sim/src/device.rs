//! One simulated device: its own mTLS MQTT connection and certificate, the real protocol.
//!
//! On CONNACK it subscribes to its `desired|cmd|ack` topics; on SUBACK it publishes its
//! retained presence (online, generation, acked seq; the last will says offline) and resends
//! its whole unacked outbox. A lost connection is retried after a jittered exponential
//! backoff (as the real manager does), with a connect timeout long enough for a connect
//! storm. A signed desired state with a newer generation starts a simulated
//! rollout (received → fetching → fetched → starting → verifying → running, or rolled_back at
//! the configured rate) with the configured delays; every status event goes to the outbox
//! first and is trimmed when the service acks it (a signed ack addressed to this device; any
//! other counts as a bad signature and trims nothing). A setup command is answered `configured`.

use crate::fleet::FleetStats;
use anyhow::Context;
use hammer_protocol::api::{ManagerConfigFile, ProvisionResponse};
use hammer_protocol::signing::{verify, PublicKey};
use hammer_protocol::topics::topic;
use hammer_protocol::{
    encode, now_ms, AddressedAck, Channel, Command, CommandKind, DesiredState, Health, Phase,
    Presence, StatusEvent, Topic, MAX_PACKET, PROTOCOL_VERSION,
};
use rand::Rng;
use rumqttc::{
    AsyncClient, Event, Incoming, LastWill, MqttOptions, QoS, SubscribeFilter, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How simulated devices behave.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Simulated git fetch time.
    pub fetch: Duration,
    /// Simulated app start (and health window) time.
    pub start: Duration,
    /// Uniform jitter added to each of fetch and start, `0..=jitter`.
    pub jitter: Duration,
    /// Fraction (0..=1) of rollouts that end `rolled_back`.
    pub fail_rate: f64,
    /// Interval of health reports (0 = only after each rollout).
    pub health_every: Duration,
    /// Resend unacked events older than this.
    pub resend_after: Duration,
    /// MQTT connect timeout (TCP + TLS + CONNECT/CONNACK). rumqttc's default of 5 s is too
    /// short under a connect storm: a device that gives up reconnects with the same client
    /// id while the broker is still setting up its first session.
    pub connect_timeout: Duration,
    /// Reconnect backoff: first delay, doubling up to `reconnect_max`, ±50 % jitter, reset
    /// on CONNACK (the real manager's `link::Backoff`: 0.5 s to 30 s).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            fetch: Duration::from_millis(200),
            start: Duration::from_millis(300),
            jitter: Duration::from_millis(100),
            fail_rate: 0.0,
            health_every: Duration::ZERO,
            resend_after: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
        }
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

/// What a device needs to connect: its identity, key material and the service key.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub name: String,
    pub device_id: String,
    pub owner: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub service_key: String,
    pub broker_url: String,
}

impl Credentials {
    /// From an operator provisioning bundle.
    pub fn from_bundle(b: &ProvisionResponse) -> anyhow::Result<Credentials> {
        let cfg: ManagerConfigFile =
            toml::from_str(&b.config_toml).context("the bundle's manager.toml does not parse")?;
        Ok(Credentials {
            name: b.device.name.clone(),
            device_id: cfg.device_id,
            owner: cfg.owner,
            ca_pem: b.ca_pem.clone(),
            cert_pem: b.cert_pem.clone(),
            key_pem: b.key_pem.clone(),
            service_key: cfg.service_public_key,
            broker_url: cfg.broker_url,
        })
    }
}

/// Mutable per-device state, shared by its MQTT task and its rollout task.
#[derive(Debug, Default)]
struct State {
    /// The generation the device acted on last.
    generation: u64,
    seq: u64,
    acked: u64,
    /// seq → (first sent, encoded event).
    outbox: BTreeMap<u64, (Instant, Vec<u8>)>,
    /// CONNACKs seen.
    connects: u64,
    /// The connect at which the desired state was confirmed.
    confirmed_at_connect: u64,
    online: bool,
    commit: Option<String>,
    last_health: Option<Instant>,
}

/// A connected simulated device; dropping it stops its task (without a clean disconnect, so
/// the broker publishes its last will).
pub struct SimDevice {
    pub index: usize,
    pub id: String,
    pub name: String,
    pub client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
    state: Arc<Mutex<State>>,
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SimDevice {
    /// Unacked events in the outbox.
    pub fn unacked(&self) -> usize {
        self.state.lock().map(|s| s.outbox.len()).unwrap_or(0)
    }

    /// Disconnects cleanly.
    pub async fn disconnect(&self) {
        let _ = self.client.disconnect().await;
    }
}

struct Ctx {
    index: usize,
    id: String,
    owner: String,
    key: PublicKey,
    epoch: u64,
    client: AsyncClient,
    state: Arc<Mutex<State>>,
    stats: Arc<FleetStats>,
    cfg: Arc<SimConfig>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctx {
    /// Numbers a status event, puts it in the outbox and returns its payload.
    fn record(&self, d: Option<&DesiredState>, phase: Phase, detail: Option<String>) -> Vec<u8> {
        let mut st = lock(&self.state);
        st.seq += 1;
        let ev = StatusEvent {
            v: PROTOCOL_VERSION,
            epoch: self.epoch,
            seq: st.seq,
            generation: d.map(|d| d.generation),
            deployment_id: d.map(|d| d.deployment_id.clone()),
            phase,
            commit: st.commit.clone(),
            time: now_ms(),
            detail,
            log_tail: vec![],
        };
        let bytes = encode(&ev).unwrap_or_default();
        let seq = st.seq;
        st.outbox.insert(seq, (Instant::now(), bytes.clone()));
        self.stats.events_sent.fetch_add(1, Relaxed);
        bytes
    }

    async fn emit(&self, d: Option<&DesiredState>, phase: Phase, detail: Option<String>) {
        let bytes = self.record(d, phase, detail);
        // A failed publish stays in the outbox and is resent.
        let _ = self
            .client
            .publish(
                topic(&self.id, Channel::Status),
                QoS::AtLeastOnce,
                false,
                bytes,
            )
            .await;
    }

    fn emit_now(&self, d: Option<&DesiredState>, phase: Phase) {
        let bytes = self.record(d, phase, None);
        let _ = self.client.try_publish(
            topic(&self.id, Channel::Status),
            QoS::AtLeastOnce,
            false,
            bytes,
        );
    }

    fn presence(&self) {
        let st = lock(&self.state);
        let p = Presence {
            v: PROTOCOL_VERSION,
            online: true,
            epoch: self.epoch,
            generation: (st.generation > 0).then_some(st.generation),
            acked_seq: st.acked,
            manager_version: "fleet-sim".into(),
            time: now_ms(),
        };
        drop(st);
        if let Ok(b) = encode(&p) {
            let _ = self.client.try_publish(
                topic(&self.id, Channel::Presence),
                QoS::AtLeastOnce,
                true,
                b,
            );
        }
    }

    fn health(&self) {
        let mut st = lock(&self.state);
        st.last_health = Some(Instant::now());
        let h = Health {
            v: PROTOCOL_VERSION,
            time: now_ms(),
            app_running: st.generation > 0,
            pid: Some(1000 + self.index as u32),
            restarts: 0,
            uptime_secs: 0,
            app_rss_kb: 1024,
            app_cpu_ms: 0,
            manager_version: "fleet-sim".into(),
            commit: st.commit.clone(),
            generation: (st.generation > 0).then_some(st.generation),
        };
        drop(st);
        if let Ok(b) = encode(&h) {
            let _ = self.client.try_publish(
                topic(&self.id, Channel::Health),
                QoS::AtMostOnce,
                false,
                b,
            );
        }
    }

    /// Resends unacked events (all of them, or those older than `older_than`).
    fn resend(&self, older_than: Option<Duration>) {
        // Like the manager: a resent event waits another `resend_after` before it is resent
        // again (re-sending every tick once it is old would multiply the load on a service
        // that is catching up).
        let now = Instant::now();
        let due: Vec<Vec<u8>> = lock(&self.state)
            .outbox
            .values_mut()
            .filter(|(t, _)| older_than.is_none_or(|o| t.elapsed() >= o))
            .map(|(t, b)| {
                *t = now;
                b.clone()
            })
            .collect();
        for b in due {
            self.stats.events_resent.fetch_add(1, Relaxed);
            let _ = self.client.try_publish(
                topic(&self.id, Channel::Status),
                QoS::AtLeastOnce,
                false,
                b,
            );
        }
    }

    fn on_desired(self: &Arc<Self>, payload: &[u8]) {
        if payload.is_empty() {
            return;
        }
        let d: DesiredState = match verify(payload, &self.key, &self.id, &self.owner) {
            Ok(d) => d,
            Err(e) => {
                self.stats.bad_signatures.fetch_add(1, Relaxed);
                tracing::warn!(device = %self.id, error = %e, "refused a desired state");
                return;
            }
        };
        let mut st = lock(&self.state);
        if d.generation <= st.generation {
            if d.generation == st.generation && st.confirmed_at_connect != st.connects {
                st.confirmed_at_connect = st.connects;
                self.stats.confirmed.fetch_add(1, Relaxed);
            }
            return;
        }
        st.generation = d.generation;
        st.confirmed_at_connect = st.connects;
        drop(st);
        self.stats.confirmed.fetch_add(1, Relaxed);
        self.stats.desired_received.fetch_add(1, Relaxed);
        let ctx = self.clone();
        tokio::spawn(async move { ctx.rollout(d).await });
    }

    async fn rollout(self: Arc<Self>, d: DesiredState) {
        let received = Instant::now();
        let (jf, js, fail) = {
            let mut r = rand::thread_rng();
            let j = self.cfg.jitter.as_millis() as u64;
            (
                Duration::from_millis(if j > 0 { r.gen_range(0..=j) } else { 0 }),
                Duration::from_millis(if j > 0 { r.gen_range(0..=j) } else { 0 }),
                r.gen_bool(self.cfg.fail_rate.clamp(0.0, 1.0)),
            )
        };
        self.emit(Some(&d), Phase::Received, None).await;
        self.emit(Some(&d), Phase::Fetching, None).await;
        tokio::time::sleep(self.cfg.fetch + jf).await;
        let commit = d
            .commit
            .clone()
            .unwrap_or_else(|| format!("{:040x}", d.generation));
        lock(&self.state).commit = Some(commit);
        self.emit(Some(&d), Phase::Fetched, None).await;
        self.emit(Some(&d), Phase::Starting, None).await;
        self.emit(Some(&d), Phase::Verifying, None).await;
        tokio::time::sleep(self.cfg.start + js).await;
        if lock(&self.state).generation != d.generation {
            return; // superseded by a newer desired state
        }
        let end = if fail {
            self.emit(
                Some(&d),
                Phase::RolledBack,
                Some("simulated health check failure".into()),
            )
            .await;
            Phase::RolledBack
        } else {
            self.emit(Some(&d), Phase::Running, None).await;
            Phase::Running
        };
        self.stats.finish(self.index, d.generation, end, received);
        self.health();
    }

    fn on_cmd(&self, payload: &[u8]) {
        match verify::<Command>(payload, &self.key, &self.id, &self.owner) {
            Ok(c) => {
                if matches!(c.kind, CommandKind::Setup { .. }) {
                    self.emit_now(None, Phase::Configured);
                    self.stats.configured.fetch_add(1, Relaxed);
                }
            }
            Err(e) => {
                self.stats.bad_signatures.fetch_add(1, Relaxed);
                tracing::warn!(device = %self.id, error = %e, "refused a command");
            }
        }
    }

    fn on_ack(&self, payload: &[u8]) {
        let a = match verify::<AddressedAck>(payload, &self.key, &self.id, &self.owner) {
            Ok(a) => a,
            Err(e) => {
                self.stats.bad_signatures.fetch_add(1, Relaxed);
                tracing::warn!(device = %self.id, error = %e, "refused an ack");
                return;
            }
        };
        if a.epoch != self.epoch {
            return;
        }
        let mut st = lock(&self.state);
        if a.seq > st.acked {
            st.acked = a.seq;
        }
        let before = st.outbox.len();
        st.outbox.retain(|s, _| *s > a.seq);
        let trimmed = before - st.outbox.len();
        drop(st);
        self.stats.events_acked.fetch_add(trimmed as u64, Relaxed);
    }
}

/// MQTT options for a device identity: mTLS with its bundle, client id = device id, the
/// protocol's packet size, the given keep-alive.
pub fn mqtt_options(
    creds: &Credentials,
    broker: (&str, u16),
    keep_alive: Duration,
) -> anyhow::Result<MqttOptions> {
    let tls = hammer_certs::tls::client_config(&creds.ca_pem, &creds.cert_pem, &creds.key_pem)
        .context("cannot build the device's TLS config")?;
    let mut opts = MqttOptions::new(creds.device_id.clone(), broker.0, broker.1);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    opts.set_keep_alive(keep_alive);
    Ok(opts)
}

/// Connects one device and waits (up to `timeout`) until it is subscribed and announced.
pub async fn connect(
    index: usize,
    creds: &Credentials,
    broker: (&str, u16),
    cfg: Arc<SimConfig>,
    stats: Arc<FleetStats>,
    timeout: Duration,
) -> anyhow::Result<SimDevice> {
    let key = PublicKey::from_hex(&creds.service_key).context("bad service public key")?;
    let mut opts = mqtt_options(creds, broker, Duration::from_secs(60))?;
    let mut eb = [0u8; 8];
    getrandom::getrandom(&mut eb).context("no randomness")?;
    let epoch = u64::from_le_bytes(eb) >> 1;
    opts.set_last_will(LastWill::new(
        topic(&creds.device_id, Channel::Presence),
        encode(&Presence::offline(epoch))?,
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut el) = AsyncClient::new(opts, 64);
    el.network_options
        .set_connection_timeout(cfg.connect_timeout.as_secs().max(1));
    let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
    let state = Arc::new(Mutex::new(State::default()));
    let ctx = Arc::new(Ctx {
        index,
        id: creds.device_id.clone(),
        owner: creds.owner.clone(),
        key,
        epoch,
        client: client.clone(),
        state: state.clone(),
        stats,
        cfg,
    });
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ev = tokio::select! {
                ev = el.poll() => ev,
                _ = tick.tick() => {
                    ctx.resend(Some(ctx.cfg.resend_after));
                    let he = ctx.cfg.health_every;
                    let due = !he.is_zero()
                        && lock(&ctx.state).last_health.is_none_or(|t| t.elapsed() >= he);
                    if due {
                        ctx.health();
                    }
                    continue;
                }
            };
            match ev {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    backoff.reset();
                    {
                        let mut st = lock(&ctx.state);
                        st.connects += 1;
                        if !st.online {
                            st.online = true;
                            ctx.stats.online.fetch_add(1, Relaxed);
                        }
                    }
                    ctx.stats.connects.fetch_add(1, Relaxed);
                    let filters = Channel::TO_DEVICE
                        .iter()
                        .map(|c| SubscribeFilter::new(topic(&ctx.id, *c), QoS::AtLeastOnce));
                    let _ = ctx.client.try_subscribe_many(filters);
                }
                Ok(Event::Incoming(Incoming::SubAck(s))) => {
                    if s.return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        ctx.stats.sub_refused.fetch_add(1, Relaxed);
                    }
                    ctx.presence();
                    ctx.resend(None);
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let Ok(t) = Topic::parse(&p.topic) else {
                        continue;
                    };
                    if t.device_id != ctx.id {
                        ctx.stats.foreign_messages.fetch_add(1, Relaxed);
                        continue;
                    }
                    match t.channel {
                        Channel::Desired => ctx.on_desired(&p.payload),
                        Channel::Cmd => ctx.on_cmd(&p.payload),
                        Channel::Ack => ctx.on_ack(&p.payload),
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    {
                        let mut st = lock(&ctx.state);
                        if st.online {
                            st.online = false;
                            ctx.stats.online.fetch_sub(1, Relaxed);
                        }
                    }
                    // Back off like the real manager, so a storm of reconnects spreads out.
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    });
    match tokio::time::timeout(timeout, ready_rx).await {
        Ok(Ok(())) => Ok(SimDevice {
            index,
            id: creds.device_id.clone(),
            name: creds.name.clone(),
            client,
            task,
            state,
        }),
        _ => {
            task.abort();
            anyhow::bail!(
                "device {} did not connect and subscribe within {timeout:?}",
                creds.device_id
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

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
}
