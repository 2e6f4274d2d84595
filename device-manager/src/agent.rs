//! The agent loop: one task that reacts to the MQTT link, the outbox, the health timer and
//! live logs. Idle, it waits on all of them and costs nothing.
//!
//! After every CONNACK: subscribe `desired`, `cmd`, `ack` (QoS 1; rumqttc does not
//! resubscribe), publish `Presence` online (retained, QoS 1, with the generation, the acked
//! seq and the last seq: the service's resync cue; it answers only what differs). With
//! events waiting in the outbox, nothing is re-sent yet: the service answers such a presence
//! with its ack, and only the events that ack does not cover go out again, in seq order (if
//! no ack comes within `resend_after`, all of them do). Events appended meanwhile wait too,
//! so the outbox always goes out in seq order. Otherwise new events are published as they are
//! appended. On an `Ack` (signed by the service and addressed to this device, else refused
//! and counted, never trimming anything) for our epoch the outbox is trimmed; if events
//! already sent beyond the ack have been waiting longer than `resend_after`, the rest is
//! re-sent (the service restarted or lost them). Duplicates are harmless (the service dedups
//! by epoch and seq), loss is not.
//!
//! Status events go out at most [`EVENTS_PER_SEC`] a second after a burst of
//! [`EVENT_BURST`] ([`crate::pace`]): well under the broker's per-device limit, which
//! disconnects a device that goes over it. A long backlog (a device that was offline while
//! its app crash-looped) drains at that pace instead of getting the device cut off in a loop.

use crate::backend::Backend;
use crate::commands::{Followup, Handler};
use crate::config::Identity;
use crate::health_report::{health, MANAGER_VERSION};
use crate::link::{Backoff, LinkEvent};
use crate::logstream::{LogStream, Step};
use crate::outbox::Outbox;
use crate::pace::TokenBucket;
use crate::runtime::Input;
use crate::store::Counter;
use crate::verify::Verifier;
use anyhow::Result;
use hammer_protocol::topics::topic;
use hammer_protocol::{Channel, Phase, Presence, StatusEvent, Topic, PROTOCOL_VERSION};
use rumqttc::{AsyncClient, QoS};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Status events published per second, sustained (the broker allows a device 50 packets/s,
/// and each event also brings back an ack to PUBACK).
pub const EVENTS_PER_SEC: u64 = 20;
/// Status events published at once after a quiet time (the broker's packet burst is 1,000).
pub const EVENT_BURST: u64 = 300;
use tokio::time::Instant;

/// Tunables of the agent loop (defaults are the production values).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub data_dir: PathBuf,
    pub health_interval: Duration,
    pub keep_alive: Duration,
    /// Re-send events an ack is behind on once they have waited this long.
    pub resend_after: Duration,
    pub backoff: Backoff,
    pub logs_timeout: Duration,
    pub logs_batch: Duration,
}

impl AgentOptions {
    pub fn new(data_dir: PathBuf) -> AgentOptions {
        AgentOptions {
            data_dir,
            health_interval: Duration::from_secs(30),
            keep_alive: Duration::from_secs(30),
            resend_after: Duration::from_secs(3),
            backoff: Backoff::default(),
            logs_timeout: Duration::from_secs(600),
            logs_batch: Duration::from_millis(200),
        }
    }
}

struct Agent {
    id_device: String,
    client: AsyncClient,
    outbox: Outbox,
    handler: Handler,
    backend: Arc<dyn Backend>,
    opts: AgentOptions,
    connected: bool,
    /// Unacked events published on this connection, with when they were (last) sent.
    sent: BTreeMap<u64, Instant>,
    logs: Option<LogStream>,
    /// Acks refused since the start (bad signature, another device, unreadable).
    refused_acks: u64,
    /// Paces status events under the broker's limit.
    pace: TokenBucket,
    /// When the pace allows the next event after it ran dry.
    resume_at: Option<Instant>,
    /// A new connection's presence said events wait: publishing is held until the service's
    /// ack answers it, or until this deadline.
    ack_wait: Option<Instant>,
}

/// Runs the agent until `shutdown` resolves. `outbox` must be the same one the backend's
/// report sink appends to.
pub async fn run(
    identity: Identity,
    opts: AgentOptions,
    outbox: Outbox,
    backend: Arc<dyn Backend>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let epoch = outbox.store().epoch();
    let mqtt = crate::link::options(&identity, epoch, opts.keep_alive)?;
    let (client, mut link) = crate::link::spawn(mqtt, opts.backoff);
    let mut agent = Agent {
        id_device: identity.device_id.clone(),
        client,
        outbox: outbox.clone(),
        handler: Handler {
            verifier: Verifier {
                service_key: identity.service_key,
                device_id: identity.device_id.clone(),
                owner: identity.owner.clone(),
            },
            sealing: identity.sealing,
            data_dir: opts.data_dir.clone(),
            outbox: outbox.clone(),
            backend: backend.clone(),
        },
        backend,
        opts,
        connected: false,
        sent: BTreeMap::new(),
        logs: None,
        refused_acks: 0,
        pace: TokenBucket::new(EVENTS_PER_SEC, EVENT_BURST, Instant::now()),
        resume_at: None,
        ack_wait: None,
    };
    tracing::info!(device = %agent.id_device, epoch, unacked = outbox.len(), "agent started");
    let mut health_tick = tokio::time::interval_at(
        Instant::now() + agent.opts.health_interval,
        agent.opts.health_interval,
    );
    health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let logs_on = agent.logs.is_some();
        let flush_at = agent.logs.as_ref().and_then(|l| l.flush_at);
        let deadline = agent.logs.as_ref().map(|l| l.deadline);
        let resume_at = agent.resume_at;
        let ack_wait = agent.ack_wait;
        tokio::select! {
            _ = &mut shutdown => break,
            ev = link.recv() => match ev {
                Some(ev) => agent.on_link(ev).await,
                None => anyhow::bail!("the MQTT event loop stopped"),
            },
            _ = outbox.appended() => {
                agent.publish_new().await;
                agent.write_status_snapshot();
            }
            _ = health_tick.tick() => agent.publish_health().await,
            step = async { agent.logs.as_mut().expect("guarded").next().await }, if logs_on => {
                match step {
                    Step::Buffered => {}
                    Step::Full => agent.flush_logs().await,
                    Step::Closed => agent.stop_logs().await,
                }
            }
            _ = sleep_until_opt(flush_at), if flush_at.is_some() => agent.flush_logs().await,
            _ = sleep_until_opt(resume_at), if resume_at.is_some() => {
                agent.resume_at = None;
                agent.publish_new().await;
            }
            _ = sleep_until_opt(ack_wait), if ack_wait.is_some() => {
                agent.ack_wait = None;
                tracing::info!(count = agent.outbox.len(), "no ack answered the presence; re-sending unacked status events");
                agent.publish_new().await;
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() => {
                tracing::info!("live logs timed out");
                agent.stop_logs().await;
            }
        }
    }
    agent.shutdown(epoch).await;
    Ok(())
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Agent {
    fn topic(&self, c: Channel) -> String {
        topic(&self.id_device, c)
    }

    async fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Connected { .. } => {
                self.connected = true;
                self.sent.clear();
                if let Err(e) = self.on_connected().await {
                    tracing::error!(error = %e, "could not resync after connecting");
                }
            }
            LinkEvent::Disconnected => {
                self.connected = false;
                self.sent.clear();
                self.ack_wait = None;
            }
            LinkEvent::Message { topic, payload } => {
                if let Err(e) = self.on_message(&topic, &payload).await {
                    tracing::error!(error = %e, topic = %topic, "could not handle a message");
                }
            }
        }
    }

    async fn on_connected(&mut self) -> Result<()> {
        for c in Channel::TO_DEVICE {
            self.client
                .subscribe(self.topic(c), QoS::AtLeastOnce)
                .await?;
        }
        let store = self.outbox.store();
        let acked_seq = store.get(Counter::AckedSeq);
        let presence = Presence {
            v: PROTOCOL_VERSION,
            online: true,
            epoch: store.epoch(),
            generation: store.generation(),
            acked_seq,
            manager_version: MANAGER_VERSION.to_owned(),
            time: hammer_protocol::now_ms(),
            last_seq: Some(self.outbox.last_seq().max(acked_seq)),
        };
        self.client
            .publish(
                self.topic(Channel::Presence),
                QoS::AtLeastOnce,
                true,
                hammer_protocol::encode(&presence)?,
            )
            .await?;
        let waiting = self.outbox.len();
        if waiting > 0 {
            tracing::info!(
                count = waiting,
                "status events wait for the service's ack before they are re-sent"
            );
            self.ack_wait = Some(Instant::now() + self.opts.resend_after);
        }
        Ok(())
    }

    async fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<()> {
        let t = match Topic::parse(topic) {
            Ok(t) if t.device_id == self.id_device => t,
            _ => {
                tracing::warn!(topic = %topic.chars().take(200).collect::<String>(), "message on an unexpected topic; ignored");
                return Ok(());
            }
        };
        match t.channel {
            Channel::Desired => self.handler.desired(payload).await?,
            Channel::Cmd => match self.handler.command(payload).await? {
                Followup::None => {}
                Followup::Logs(true) => self.start_logs().await,
                Followup::Logs(false) => self.stop_logs().await,
            },
            Channel::Ack => self.on_ack(payload).await?,
            other => {
                tracing::debug!(channel = %other, "ignoring a message on a device→service channel")
            }
        }
        Ok(())
    }

    async fn on_ack(&mut self, payload: &[u8]) -> Result<()> {
        let ack = match self.handler.verifier.ack(payload) {
            Ok(a) => a,
            Err(r) => {
                // Only the service may trim the outbox: a forged or misdirected ack would
                // drop events it never stored. Logged at warn the first time and every
                // 100th after (a flood must not flood the log too).
                self.refused_acks += 1;
                if self.refused_acks % 100 == 1 {
                    tracing::warn!(reason = %r.reason, refused_acks = self.refused_acks, "refused an ack; the outbox is kept");
                } else {
                    tracing::debug!(reason = %r.reason, refused_acks = self.refused_acks, "refused an ack; the outbox is kept");
                }
                return Ok(());
            }
        };
        if ack.epoch != self.outbox.store().epoch() {
            tracing::debug!(epoch = ack.epoch, "ack for another epoch; ignored");
            return Ok(());
        }
        if self.outbox.ack(ack.seq)? {
            tracing::debug!(seq = ack.seq, left = self.outbox.len(), "outbox trimmed");
        }
        if self.ack_wait.take().is_some() {
            // The answer to this connection's presence: what it does not cover goes out again.
            let left = self.outbox.len();
            if left > 0 {
                tracing::info!(
                    ack = ack.seq,
                    count = left,
                    "re-sending status events the service lacks"
                );
            }
            self.publish_new().await;
            return Ok(());
        }
        self.sent = self.sent.split_off(&ack.seq.saturating_add(1));
        let stale = self
            .sent
            .values()
            .any(|t| t.elapsed() >= self.opts.resend_after);
        if stale && self.connected {
            let rest = self.outbox.after(ack.seq)?;
            tracing::info!(
                ack = ack.seq,
                count = rest.len(),
                "ack is behind the outbox; re-sending"
            );
            self.publish_events(rest).await?;
        } else if self.resume_at.is_none() {
            // Events the pace held back go out as their turn comes.
            self.publish_new().await;
        }
        Ok(())
    }

    /// Publishes events appended since the last publish.
    async fn publish_new(&mut self) {
        if !self.connected || self.ack_wait.is_some() {
            return;
        }
        let after = self
            .sent
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.outbox.store().get(Counter::AckedSeq));
        let res = match self.outbox.after(after) {
            Ok(evs) => self.publish_events(evs).await,
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            tracing::error!(error = %e, "could not publish status events");
        }
    }

    async fn publish_events(&mut self, events: Vec<StatusEvent>) -> Result<()> {
        let t = self.topic(Channel::Status);
        // The app's state changed: the health report says so at once, not at the next tick
        // (the dashboard's health card would otherwise lag up to `health_interval`).
        let app_changed = events.iter().any(|e| {
            matches!(
                e.phase,
                Phase::Running
                    | Phase::RolledBack
                    | Phase::Stopped
                    | Phase::Crashed
                    | Phase::Restarted
            )
        });
        for ev in events {
            let now = Instant::now();
            if !self.pace.admit(1, now) {
                // The rest goes out when the pace allows (`resume_at`), oldest first.
                self.resume_at = Some(self.pace.ready_at(1, now));
                break;
            }
            self.client
                .publish(&t, QoS::AtLeastOnce, false, hammer_protocol::encode(&ev)?)
                .await?;
            self.sent.insert(ev.seq, Instant::now());
        }
        if app_changed {
            self.publish_health().await;
        }
        Ok(())
    }

    /// Keeps `DATA/status.json` current for `hammer-manager status` (event-driven, no timer).
    fn write_status_snapshot(&self) {
        let json = match serde_json::to_string_pretty(&self.backend.status()) {
            Ok(j) => j,
            Err(e) => {
                tracing::debug!(error = %e, "cannot encode the status snapshot");
                return;
            }
        };
        let path = self.opts.data_dir.join(crate::config::STATUS_SNAPSHOT_FILE);
        if let Err(e) = hammer_certs::files::write_public(&path, json) {
            tracing::debug!(error = %e, "cannot write the status snapshot");
        }
    }

    async fn publish_health(&mut self) {
        if !self.connected {
            return;
        }
        let h = health(&self.backend.status());
        match hammer_protocol::encode(&h) {
            Ok(bytes) => {
                if let Err(e) = self.client.try_publish(
                    self.topic(Channel::Health),
                    QoS::AtMostOnce,
                    false,
                    bytes,
                ) {
                    tracing::debug!(error = %e, "health report dropped");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode the health report"),
        }
    }

    async fn start_logs(&mut self) {
        self.backend.deliver(Input::Logs { on: true }).await;
        if let Some(l) = self.logs.as_mut() {
            // Already streaming: extend the timeout.
            l.deadline = Instant::now() + self.opts.logs_timeout;
            return;
        }
        match self.backend.subscribe_logs() {
            Some(rx) => {
                tracing::info!("streaming live logs");
                self.logs = Some(LogStream::new(
                    rx,
                    self.opts.logs_timeout,
                    self.opts.logs_batch,
                ));
            }
            None => tracing::warn!("the runtime offers no live log stream"),
        }
    }

    async fn stop_logs(&mut self) {
        if self.logs.is_some() {
            self.flush_logs().await;
            self.logs = None;
            self.backend.deliver(Input::Logs { on: false }).await;
            tracing::info!("live logs stopped");
        }
    }

    async fn flush_logs(&mut self) {
        let Some(batch) = self.logs.as_mut().and_then(|l| l.take()) else {
            return;
        };
        if !self.connected {
            return;
        }
        match hammer_protocol::encode(&batch) {
            Ok(bytes) => {
                if let Err(e) = self.client.try_publish(
                    self.topic(Channel::Logs),
                    QoS::AtMostOnce,
                    false,
                    bytes,
                ) {
                    tracing::debug!(error = %e, "log batch dropped");
                }
            }
            Err(e) => tracing::warn!(error = %e, "log batch too large; dropped"),
        }
    }

    async fn shutdown(&mut self, epoch: u64) {
        if self.connected {
            // What the last moments appended (the app's `stopped`) goes before the goodbye.
            self.publish_new().await;
            let offline = Presence {
                manager_version: MANAGER_VERSION.to_owned(),
                time: hammer_protocol::now_ms(),
                generation: self.outbox.store().generation(),
                acked_seq: self.outbox.store().get(Counter::AckedSeq),
                ..Presence::offline(epoch)
            };
            if let Ok(bytes) = hammer_protocol::encode(&offline) {
                let _ = self.client.try_publish(
                    self.topic(Channel::Presence),
                    QoS::AtLeastOnce,
                    true,
                    bytes,
                );
            }
            let _ = self.client.try_disconnect();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!("agent stopped");
    }
}
