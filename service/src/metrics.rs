//! Counters of the service and the Prometheus text of `/metrics`.
//!
//! `/metrics` never reads the store: [`Gauges`] is counted once on start and then kept up to
//! date by [`CountingStore`], the [`Store`] every part of the service writes through (device
//! inserts, state changes and deletes; deployment writes), and the event counters by the code
//! where things happen ([`Counters`]).

use crate::store::{
    AuditCursor, AuditRecord, BoxFuture, DeliveryBounds, DeliveryRecord, DeploymentCursor,
    DeploymentRecord, DeviceRecord, EnrollmentRecord, Fence, HistoryCursor, Inserted, Lease, Page,
    Result, Retention, Revoked, SessionCaps, SessionRecord, SessionsEnded, Store, StoredStatus,
    TokenRecord, UserRecord, WebhookRecord, PRUNE_BATCH,
};
use hammer_protocol::api::{DeploymentState, DeviceState};
use hammer_protocol::WireName;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Counters updated where things happen (MQTT ingestion, quotas).
#[derive(Default)]
pub struct Counters {
    pub status_stored: AtomicU64,
    pub status_duplicates: AtomicU64,
    /// Status events dropped because ingestion was full (the devices resend them).
    pub status_shed: AtomicU64,
    pub bad_payloads: AtomicU64,
    pub unknown_devices: AtomicU64,
    pub health_reports: AtomicU64,
    pub log_batches: AtomicU64,
    pub acks_sent: AtomicU64,
    /// Device creations refused by `--max-devices-per-user`.
    pub quota_devices_refused: AtomicU64,
    /// Event streams refused by `--max-streams-per-user`.
    pub quota_streams_refused: AtomicU64,
    /// Event streams open now.
    pub streams_open: AtomicU64,
    /// Presence messages folded into a waiting one of the same device ([`crate::mqtt::presence`]).
    pub presence_coalesced: AtomicU64,
    /// Presence messages dropped at a bound (oversized, too many devices waiting).
    pub presence_dropped: AtomicU64,
    /// Online presences handled ([`crate::mqtt::resync`]): all of them, and those that found
    /// the device in sync (nothing sent) or sent it its desired state.
    pub resyncs: AtomicU64,
    pub resyncs_in_sync: AtomicU64,
    pub resyncs_desired: AtomicU64,
    /// The service's MQTT link reconnected because the broker acknowledged nothing for
    /// [`crate::mqtt::link::STALL_AFTER`].
    pub mqtt_link_stalls: AtomicU64,
    /// Publishes the service's MQTT link still held when it dropped (in flight or queued),
    /// sent again once it was back ([`crate::mqtt::link`]).
    pub mqtt_link_replayed: AtomicU64,
    /// Webhook deliveries the receiver took (2xx) ([`crate::webhooks`]).
    pub webhooks_delivered: AtomicU64,
    /// Webhook attempts that failed (an error status, no answer, an address refused).
    pub webhook_attempts_failed: AtomicU64,
    /// Webhook deliveries given up after their last attempt.
    pub webhooks_given_up: AtomicU64,
    /// Pending webhook deliveries dropped at the per-user bound.
    pub webhooks_dropped: AtomicU64,
    /// Webhook deliveries pending in the store, as the delivery worker last counted them.
    pub webhooks_pending: AtomicU64,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}

// The states and their label values come from protocol's one list (`WireName::ALL`); a state
// this version does not know counts as the last one, `Unknown`.
const DEVICE_STATES: &[DeviceState] = <DeviceState as WireName>::ALL;
const DEPLOYMENT_STATES: &[DeploymentState] = <DeploymentState as WireName>::ALL;

fn device_index(s: DeviceState) -> usize {
    DEVICE_STATES
        .iter()
        .position(|x| *x == s)
        .unwrap_or(DEVICE_STATES.len() - 1)
}

fn deployment_index(s: DeploymentState) -> usize {
    DEPLOYMENT_STATES
        .iter()
        .position(|x| *x == s)
        .unwrap_or(DEPLOYMENT_STATES.len() - 1)
}

/// What the store holds, counted: devices by state and by owner, deployments by state.
#[derive(Default)]
pub struct Gauges {
    inner: Mutex<GaugesInner>,
}

#[derive(Default)]
struct GaugesInner {
    devices_by_state: [u64; DEVICE_STATES.len()],
    devices_by_owner: HashMap<String, u64>,
    deployments_by_state: [u64; DEPLOYMENT_STATES.len()],
    /// Each deployment's last written state, to move its count when it changes.
    deployment_state: HashMap<String, Tracked>,
}

/// What the gauges remember of one deployment.
#[derive(Debug, Clone)]
struct Tracked {
    owner: String,
    state: DeploymentState,
    finished_at: Option<u64>,
}

/// A copy of the gauges at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaugesSnapshot {
    pub devices_by_state: Vec<(&'static str, u64)>,
    pub deployments_by_state: Vec<(&'static str, u64)>,
}

impl GaugesSnapshot {
    pub fn devices(&self) -> u64 {
        self.devices_by_state.iter().map(|(_, n)| n).sum()
    }
}

impl Gauges {
    /// Counts what `store` holds (one scan, on start).
    pub fn load(store: &dyn Store) -> Result<Gauges> {
        let g = Gauges::default();
        for d in store.all_devices()? {
            g.device_added(&d);
        }
        for d in store.deployments()? {
            g.deployment_written(&d);
        }
        Ok(g)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GaugesInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn device_added(&self, d: &DeviceRecord) {
        let mut g = self.lock();
        g.devices_by_state[device_index(d.state)] += 1;
        *g.devices_by_owner.entry(d.owner.clone()).or_insert(0) += 1;
    }

    pub fn device_removed(&self, d: &DeviceRecord) {
        let mut g = self.lock();
        let i = device_index(d.state);
        g.devices_by_state[i] = g.devices_by_state[i].saturating_sub(1);
        if let Some(n) = g.devices_by_owner.get_mut(&d.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.devices_by_owner.remove(&d.owner);
            }
        }
    }

    pub fn device_moved(&self, from: DeviceState, to: DeviceState) {
        if from == to {
            return;
        }
        let mut g = self.lock();
        let i = device_index(from);
        g.devices_by_state[i] = g.devices_by_state[i].saturating_sub(1);
        g.devices_by_state[device_index(to)] += 1;
    }

    /// Counts a deployment written; returns whether it is new.
    pub fn deployment_written(&self, d: &DeploymentRecord) -> bool {
        let mut g = self.lock();
        let old = g.deployment_state.insert(
            d.id.clone(),
            Tracked {
                owner: d.owner.clone(),
                state: d.state,
                finished_at: d.finished_at,
            },
        );
        let old = old.map(|t| t.state);
        if old == Some(d.state) {
            return false;
        }
        if let Some(o) = old {
            let i = deployment_index(o);
            g.deployments_by_state[i] = g.deployments_by_state[i].saturating_sub(1);
        }
        g.deployments_by_state[deployment_index(d.state)] += 1;
        old.is_none()
    }

    /// Forgets a deployment the store removed.
    pub fn deployment_removed(&self, id: &str) {
        let mut g = self.lock();
        if let Some(t) = g.deployment_state.remove(id) {
            let i = deployment_index(t.state);
            g.deployments_by_state[i] = g.deployments_by_state[i].saturating_sub(1);
        }
    }

    /// `owner`'s finished deployments that finished before `before` (the ones the store may
    /// prune), oldest first, at most `limit`.
    fn prunable(&self, owner: &str, before: u64, limit: usize) -> Vec<String> {
        let g = self.lock();
        let mut v: Vec<(u64, &String)> = g
            .deployment_state
            .iter()
            .filter(|(_, t)| t.owner == owner && t.state != DeploymentState::Running)
            .filter_map(|(id, t)| t.finished_at.filter(|f| *f < before).map(|f| (f, id)))
            .collect();
        v.sort();
        v.into_iter()
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Devices `owner` has.
    pub fn devices_of(&self, owner: &str) -> u64 {
        self.lock()
            .devices_by_owner
            .get(owner)
            .copied()
            .unwrap_or(0)
    }

    pub fn snapshot(&self) -> GaugesSnapshot {
        let g = self.lock();
        GaugesSnapshot {
            devices_by_state: DEVICE_STATES
                .iter()
                .zip(g.devices_by_state)
                .map(|(s, n)| (s.wire_name(), n))
                .collect(),
            deployments_by_state: DEPLOYMENT_STATES
                .iter()
                .zip(g.deployments_by_state)
                .map(|(s, n)| (s.wire_name(), n))
                .collect(),
        }
    }
}

/// A [`Store`] that keeps [`Gauges`] up to date as records are written through it.
pub struct CountingStore {
    inner: Arc<dyn Store>,
    gauges: Arc<Gauges>,
}

impl CountingStore {
    /// Counts what `inner` holds, then counts every change made through the wrapper.
    pub fn wrap(inner: Arc<dyn Store>) -> Result<(CountingStore, Arc<Gauges>)> {
        let gauges = Arc::new(Gauges::load(inner.as_ref())?);
        Ok((
            CountingStore {
                inner,
                gauges: gauges.clone(),
            },
            gauges,
        ))
    }

    /// Counts a deployment the inner store wrote.
    fn deployment_written(&self, d: &DeploymentRecord) -> Result<()> {
        if self.gauges.deployment_written(d) {
            // The store prunes the owner's old finished deployments when a new one is
            // written: forget those it removed (only the few old enough are looked up).
            let before =
                hammer_protocol::now_ms().saturating_sub(self.inner.retention().max_age_ms());
            for id in self.gauges.prunable(&d.owner, before, PRUNE_BATCH) {
                if self.inner.deployment(&id)?.is_none() {
                    self.gauges.deployment_removed(&id);
                }
            }
        }
        Ok(())
    }
}

impl Store for CountingStore {
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.flush()
    }
    fn insert_user(&self, user: &UserRecord) -> Result<bool> {
        self.inner.insert_user(user)
    }
    fn user(&self, id: &str) -> Result<Option<UserRecord>> {
        self.inner.user(id)
    }
    fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>> {
        self.inner.user_by_name(name)
    }
    fn users(&self) -> Result<Vec<UserRecord>> {
        self.inner.users()
    }
    fn update_user(
        &self,
        id: &str,
        f: &mut (dyn FnMut(&mut UserRecord) + Send),
    ) -> Result<Option<UserRecord>> {
        self.inner.update_user(id, f)
    }
    fn insert_token(&self, token: &TokenRecord) -> Result<()> {
        self.inner.insert_token(token)
    }
    fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        self.inner.token_by_hash(hash)
    }
    fn tokens_of(&self, user_id: &str) -> Result<Vec<TokenRecord>> {
        self.inner.tokens_of(user_id)
    }
    fn revoke_token(&self, user_id: &str, token_id: &str, now: u64) -> Result<Revoked> {
        self.inner.revoke_token(user_id, token_id, now)
    }
    fn insert_device(&self, device: &DeviceRecord) -> Result<bool> {
        let added = self.inner.insert_device(device)?;
        if added {
            self.gauges.device_added(device);
        }
        Ok(added)
    }
    fn device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        self.inner.device(id)
    }
    fn device_by_name(&self, owner: &str, name: &str) -> Result<Option<DeviceRecord>> {
        self.inner.device_by_name(owner, name)
    }
    fn devices_of(&self, owner: &str) -> Result<Vec<DeviceRecord>> {
        self.inner.devices_of(owner)
    }
    fn count_devices_of(&self, owner: &str) -> Result<u64> {
        self.inner.count_devices_of(owner)
    }
    fn all_devices(&self) -> Result<Vec<DeviceRecord>> {
        self.inner.all_devices()
    }
    fn update_device(
        &self,
        id: &str,
        f: &mut (dyn FnMut(&mut DeviceRecord) + Send),
    ) -> Result<Option<DeviceRecord>> {
        // `f` may run more than once; the last run is the one written.
        let mut change = None;
        let mut counted = |d: &mut DeviceRecord| {
            let before = d.state;
            f(d);
            change = Some((before, d.state));
        };
        let r = self.inner.update_device(id, &mut counted)?;
        if let (Some(_), Some((from, to))) = (&r, change) {
            self.gauges.device_moved(from, to);
        }
        Ok(r)
    }
    fn delete_device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        let r = self.inner.delete_device(id)?;
        if let Some(d) = &r {
            self.gauges.device_removed(d);
        }
        Ok(r)
    }
    fn insert_enrollment(&self, token_hash: &str, rec: &EnrollmentRecord) -> Result<()> {
        self.inner.insert_enrollment(token_hash, rec)
    }
    fn take_enrollment(&self, token_hash: &str) -> Result<Option<EnrollmentRecord>> {
        self.inner.take_enrollment(token_hash)
    }
    fn delete_enrollments_of(&self, device_id: &str) -> Result<()> {
        self.inner.delete_enrollments_of(device_id)
    }
    fn retention(&self) -> Retention {
        self.inner.retention()
    }
    fn put_deployment(&self, d: &DeploymentRecord) -> Result<()> {
        self.inner.put_deployment(d)?;
        self.deployment_written(d)
    }
    fn put_deployment_fenced(&self, d: &DeploymentRecord, fence: &Fence) -> Result<()> {
        // Refused (fenced): nothing was written, nothing moves.
        self.inner.put_deployment_fenced(d, fence)?;
        self.deployment_written(d)
    }
    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Option<Lease>> {
        self.inner.acquire_lease(name, holder, now_ms, ttl_ms)
    }
    fn release_lease(&self, name: &str, holder: &str, token: u64) -> Result<()> {
        self.inner.release_lease(name, holder, token)
    }
    fn lease(&self, name: &str) -> Result<Option<Lease>> {
        self.inner.lease(name)
    }
    fn insert_session(
        &self,
        s: &SessionRecord,
        now_ms: u64,
        caps: SessionCaps,
    ) -> Result<SessionsEnded> {
        self.inner.insert_session(s, now_ms, caps)
    }
    fn session(&self, id_hash: &str, now_ms: u64) -> Result<Option<SessionRecord>> {
        self.inner.session(id_hash, now_ms)
    }
    fn delete_session(&self, id_hash: &str) -> Result<bool> {
        self.inner.delete_session(id_hash)
    }
    fn count_sessions_of(&self, user_id: &str, now_ms: u64) -> Result<u64> {
        self.inner.count_sessions_of(user_id, now_ms)
    }
    fn note_failure(&self, key: &str, now_ms: u64, window_ms: u64) -> Result<u32> {
        self.inner.note_failure(key, now_ms, window_ms)
    }
    fn failures(&self, key: &str, now_ms: u64, window_ms: u64) -> Result<u32> {
        self.inner.failures(key, now_ms, window_ms)
    }
    fn deployment(&self, id: &str) -> Result<Option<DeploymentRecord>> {
        self.inner.deployment(id)
    }
    fn deployments(&self) -> Result<Vec<DeploymentRecord>> {
        self.inner.deployments()
    }
    fn deployments_of(
        &self,
        owner: &str,
        after: Option<&DeploymentCursor>,
        limit: usize,
    ) -> Result<Page<DeploymentRecord, DeploymentCursor>> {
        self.inner.deployments_of(owner, after, limit)
    }
    fn insert_status(&self, s: &StoredStatus) -> Result<Inserted> {
        self.inner.insert_status(s)
    }
    fn ack_of(&self, device_id: &str) -> Result<Option<(u64, u64)>> {
        self.inner.ack_of(device_id)
    }
    fn statuses_of(&self, device_id: &str) -> Result<Vec<StoredStatus>> {
        self.inner.statuses_of(device_id)
    }
    fn history_page(
        &self,
        device_id: &str,
        before: Option<HistoryCursor>,
        limit: usize,
    ) -> Result<Page<StoredStatus, HistoryCursor>> {
        self.inner.history_page(device_id, before, limit)
    }
    fn insert_webhook(&self, w: &WebhookRecord, max_per_owner: u64) -> Result<bool> {
        self.inner.insert_webhook(w, max_per_owner)
    }
    fn webhooks_of(&self, owner: &str) -> Result<Vec<WebhookRecord>> {
        self.inner.webhooks_of(owner)
    }
    fn webhook(&self, id: &str) -> Result<Option<WebhookRecord>> {
        self.inner.webhook(id)
    }
    fn delete_webhook(&self, owner: &str, id: &str) -> Result<bool> {
        self.inner.delete_webhook(owner, id)
    }
    fn insert_delivery(&self, d: &DeliveryRecord, bounds: DeliveryBounds) -> Result<u64> {
        self.inner.insert_delivery(d, bounds)
    }
    fn claim_deliveries(&self, now: u64, until: u64, limit: usize) -> Result<Vec<DeliveryRecord>> {
        self.inner.claim_deliveries(now, until, limit)
    }
    fn finish_delivery(&self, d: &DeliveryRecord, bounds: DeliveryBounds) -> Result<()> {
        self.inner.finish_delivery(d, bounds)
    }
    fn deliveries_of(&self, webhook_id: &str, limit: usize) -> Result<Vec<DeliveryRecord>> {
        self.inner.deliveries_of(webhook_id, limit)
    }
    fn count_pending_deliveries(&self) -> Result<u64> {
        self.inner.count_pending_deliveries()
    }
    fn append_audit(&self, r: &AuditRecord) -> Result<()> {
        self.inner.append_audit(r)
    }
    fn audit_page(
        &self,
        owner: &str,
        before: Option<AuditCursor>,
        limit: usize,
    ) -> Result<Page<AuditRecord, AuditCursor>> {
        self.inner.audit_page(owner, before, limit)
    }
    fn insert_window(&self, w: &crate::store::WindowRecord, max: usize) -> Result<bool> {
        self.inner.insert_window(w, max)
    }
    fn windows_of(&self, owner: &str) -> Result<Vec<crate::store::WindowRecord>> {
        self.inner.windows_of(owner)
    }
    fn delete_window(&self, owner: &str, id: &str) -> Result<bool> {
        self.inner.delete_window(owner, id)
    }
}

/// Renders the service's metrics from counters only; `broker` is the embedded broker's own
/// text (if any), `http` the listeners' (see [`crate::http::render_listeners`]).
pub fn render(
    c: &Counters,
    gauges: &GaugesSnapshot,
    online: usize,
    log_lines_dropped: u64,
    broker: Option<String>,
    http: &str,
) -> String {
    let mut s = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    gauge(
        "hammer_devices",
        "Registered devices.",
        "gauge",
        gauges.devices(),
    );
    gauge(
        "hammer_devices_online",
        "Devices connected now.",
        "gauge",
        online as u64,
    );
    gauge(
        "hammer_status_events_ingested_total",
        "Status events stored (first delivery).",
        "counter",
        c.status_stored.load(Relaxed),
    );
    gauge(
        "hammer_status_events_duplicate_total",
        "Status events received again and deduplicated.",
        "counter",
        c.status_duplicates.load(Relaxed),
    );
    gauge(
        "hammer_status_events_shed_total",
        "Status events dropped while ingestion was full; the devices resend them.",
        "counter",
        c.status_shed.load(Relaxed),
    );
    gauge(
        "hammer_bad_payloads_total",
        "MQTT payloads that failed to decode.",
        "counter",
        c.bad_payloads.load(Relaxed),
    );
    gauge(
        "hammer_unknown_device_messages_total",
        "Messages from device ids that are not registered.",
        "counter",
        c.unknown_devices.load(Relaxed),
    );
    gauge(
        "hammer_health_reports_total",
        "Health reports received.",
        "counter",
        c.health_reports.load(Relaxed),
    );
    gauge(
        "hammer_log_batches_total",
        "Log batches received.",
        "counter",
        c.log_batches.load(Relaxed),
    );
    gauge(
        "hammer_log_lines_dropped_total",
        "Log lines dropped because nobody watched their device.",
        "counter",
        log_lines_dropped,
    );
    gauge(
        "hammer_presence_coalesced_total",
        "Presence messages folded into a waiting one of the same device.",
        "counter",
        c.presence_coalesced.load(Relaxed),
    );
    gauge(
        "hammer_presence_dropped_total",
        "Presence messages dropped at a bound (oversized, or too many devices waiting).",
        "counter",
        c.presence_dropped.load(Relaxed),
    );
    gauge(
        "hammer_resyncs_total",
        "Online presences handled (each a resync of one device).",
        "counter",
        c.resyncs.load(Relaxed),
    );
    gauge(
        "hammer_resyncs_in_sync_total",
        "Online presences of devices already in sync: nothing was sent.",
        "counter",
        c.resyncs_in_sync.load(Relaxed),
    );
    gauge(
        "hammer_resyncs_desired_total",
        "Online presences answered with the device's desired state (its generation differed).",
        "counter",
        c.resyncs_desired.load(Relaxed),
    );
    gauge(
        "hammer_mqtt_link_stalls_total",
        "The service's MQTT link was remade because the broker acknowledged none of its waiting publishes for 20 s.",
        "counter",
        c.mqtt_link_stalls.load(Relaxed),
    );
    gauge(
        "hammer_mqtt_link_replayed_total",
        "Publishes the service's MQTT link held (in flight or queued) when it dropped, sent again once it was back.",
        "counter",
        c.mqtt_link_replayed.load(Relaxed),
    );
    gauge(
        "hammer_acks_sent_total",
        "Acks published.",
        "counter",
        c.acks_sent.load(Relaxed),
    );
    gauge(
        "hammer_event_streams_open",
        "Event streams (GET /api/v1/events) open now.",
        "gauge",
        c.streams_open.load(Relaxed),
    );
    for (name, help, kind, v) in [
        (
            "hammer_webhooks_delivered_total",
            "Webhook deliveries the receiver took (2xx).",
            "counter",
            &c.webhooks_delivered,
        ),
        (
            "hammer_webhook_attempts_failed_total",
            "Webhook attempts that failed (an error status, no answer, an address refused).",
            "counter",
            &c.webhook_attempts_failed,
        ),
        (
            "hammer_webhooks_given_up_total",
            "Webhook deliveries given up after their last attempt.",
            "counter",
            &c.webhooks_given_up,
        ),
        (
            "hammer_webhooks_dropped_total",
            "Pending webhook deliveries dropped at the per-user bound.",
            "counter",
            &c.webhooks_dropped,
        ),
        (
            "hammer_webhooks_pending",
            "Webhook deliveries pending, as the delivery worker last counted them.",
            "gauge",
            &c.webhooks_pending,
        ),
    ] {
        gauge(name, help, kind, v.load(Relaxed));
    }
    let _ = writeln!(
        s,
        "# HELP hammer_quota_refusals_total Requests refused at a per-user quota, by quota.\n# TYPE hammer_quota_refusals_total counter"
    );
    for (quota, v) in [
        ("devices_per_user", &c.quota_devices_refused),
        ("streams_per_user", &c.quota_streams_refused),
    ] {
        let _ = writeln!(
            s,
            "hammer_quota_refusals_total{{quota=\"{quota}\"}} {}",
            v.load(Relaxed)
        );
    }
    let _ = writeln!(
        s,
        "# HELP hammer_devices_by_state Registered devices by state.\n# TYPE hammer_devices_by_state gauge"
    );
    for (state, n) in &gauges.devices_by_state {
        let _ = writeln!(s, "hammer_devices_by_state{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(
        s,
        "# HELP hammer_deployments Deployments by state.\n# TYPE hammer_deployments gauge"
    );
    for (state, n) in &gauges.deployments_by_state {
        let _ = writeln!(s, "hammer_deployments{{state=\"{state}\"}} {n}");
    }
    crate::store::pg::render_metrics(&mut s);
    s.push_str(http);
    if let Some(b) = broker {
        s.push_str(&b);
        if !s.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled::SledStore;
    use hammer_protocol::api::Strategy;

    fn device(owner: &str, name: &str) -> DeviceRecord {
        crate::domain::devices::new_device(owner, name, Default::default(), DeviceState::Registered)
    }

    fn deployment(id: &str, state: DeploymentState) -> DeploymentRecord {
        DeploymentRecord {
            phasing: None,
            id: id.into(),
            owner: "u".into(),
            deployer: "u".into(),
            created_at: 0,
            finished_at: None,
            git_ref: None,
            commit: None,
            strategy: Strategy::default(),
            state,
            reason: None,
            paused: false,
            targets: vec![],
        }
    }

    fn count(s: &GaugesSnapshot, state: &str) -> u64 {
        s.devices_by_state
            .iter()
            .find(|(n, _)| *n == state)
            .map(|(_, v)| *v)
            .unwrap_or(u64::MAX)
    }

    fn deployments(s: &GaugesSnapshot, state: &str) -> u64 {
        s.deployments_by_state
            .iter()
            .find(|(n, _)| *n == state)
            .map(|(_, v)| *v)
            .unwrap_or(u64::MAX)
    }

    #[test]
    fn writes_through_the_store_move_the_gauges() {
        let dir = tempfile::tempdir().unwrap();
        let sled: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let (store, gauges) = CountingStore::wrap(sled).unwrap();

        let a = device("alice", "a1");
        assert!(store.insert_device(&a).unwrap());
        assert!(store.insert_device(&device("alice", "a2")).unwrap());
        // A name taken is not a new device.
        assert!(!store.insert_device(&device("alice", "a2")).unwrap());
        assert!(store.insert_device(&device("bob", "b1")).unwrap());
        assert_eq!(gauges.devices_of("alice"), 2);
        assert_eq!(gauges.devices_of("bob"), 1);
        assert_eq!(count(&gauges.snapshot(), "registered"), 3);

        store
            .update_device(&a.id, &mut |d| d.state = DeviceState::Enrolled)
            .unwrap()
            .unwrap();
        // An update that does not change the state moves nothing.
        store
            .update_device(&a.id, &mut |d| d.generation += 1)
            .unwrap()
            .unwrap();
        // An update of a missing device moves nothing.
        assert!(store
            .update_device("missing", &mut |d| d.state = DeviceState::Ready)
            .unwrap()
            .is_none());
        let s = gauges.snapshot();
        assert_eq!((count(&s, "registered"), count(&s, "enrolled")), (2, 1));
        assert_eq!(count(&s, "ready"), 0);

        store.delete_device(&a.id).unwrap().unwrap();
        assert!(store.delete_device(&a.id).unwrap().is_none());
        let s = gauges.snapshot();
        assert_eq!((s.devices(), count(&s, "enrolled")), (2, 0));
        assert_eq!(gauges.devices_of("alice"), 1);

        store
            .put_deployment(&deployment("d1", DeploymentState::Running))
            .unwrap();
        store
            .put_deployment(&deployment("d1", DeploymentState::Running))
            .unwrap();
        store
            .put_deployment(&deployment("d2", DeploymentState::Running))
            .unwrap();
        store
            .put_deployment(&deployment("d1", DeploymentState::Succeeded))
            .unwrap();
        let s = gauges.snapshot();
        assert_eq!(
            (deployments(&s, "running"), deployments(&s, "succeeded")),
            (1, 1)
        );

        // Counting again from the store (a restart) finds the same numbers.
        drop(store);
        let again = Gauges::load(gauges_source(&dir).as_ref()).unwrap();
        assert_eq!(again.snapshot(), gauges.snapshot());
        assert_eq!(again.devices_of("bob"), 1);
    }

    fn gauges_source(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        // The wrapper was dropped; the sled instance with it.
        let mut last = None;
        for _ in 0..50 {
            match SledStore::open(dir.path()) {
                Ok(s) => return Arc::new(s),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("cannot reopen the store: {last:?}");
    }

    #[test]
    fn deployments_the_store_prunes_leave_the_gauges() {
        let dir = tempfile::tempdir().unwrap();
        let sled: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let (store, gauges) = CountingStore::wrap(sled).unwrap();
        // Started and finished at the epoch's start: far older than any retention age.
        let mut old = deployment("old", DeploymentState::Running);
        old.created_at = 1;
        store.put_deployment(&old).unwrap();
        (old.state, old.finished_at) = (DeploymentState::Succeeded, Some(2));
        store.put_deployment(&old).unwrap();
        assert!(store.deployment("old").unwrap().is_some());
        assert_eq!(deployments(&gauges.snapshot(), "succeeded"), 1);
        // A new deployment of the same owner makes the store prune the old one.
        let mut new = deployment("new", DeploymentState::Running);
        new.created_at = hammer_protocol::now_ms();
        store.put_deployment(&new).unwrap();
        assert!(
            store.deployment("old").unwrap().is_none(),
            "the store kept it"
        );
        let s = gauges.snapshot();
        assert_eq!(
            (deployments(&s, "succeeded"), deployments(&s, "running")),
            (0, 1)
        );
    }

    #[test]
    fn a_fenced_write_moves_the_gauges_and_a_refused_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let sled: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let (store, gauges) = CountingStore::wrap(sled).unwrap();
        let a = store.acquire_lease("rollout", "a", 1, 10).unwrap().unwrap();
        store
            .put_deployment_fenced(&deployment("d1", DeploymentState::Running), &a.fence())
            .unwrap();
        assert_eq!(deployments(&gauges.snapshot(), "running"), 1);
        let b = store
            .acquire_lease("rollout", "b", 20, 10)
            .unwrap()
            .unwrap();
        assert!(store
            .put_deployment_fenced(&deployment("d1", DeploymentState::Failed), &a.fence())
            .is_err());
        let s = gauges.snapshot();
        assert_eq!(
            (deployments(&s, "running"), deployments(&s, "failed")),
            (1, 0)
        );
        store
            .put_deployment_fenced(&deployment("d1", DeploymentState::Failed), &b.fence())
            .unwrap();
        let s = gauges.snapshot();
        assert_eq!(
            (deployments(&s, "running"), deployments(&s, "failed")),
            (0, 1)
        );
    }

    #[test]
    fn render_keeps_the_existing_metric_names() {
        let g = Gauges::default();
        g.device_added(&device("u", "x"));
        assert!(g.deployment_written(&deployment("d", DeploymentState::Failed)));
        let c = Counters::default();
        Counters::inc(&c.quota_streams_refused);
        let text = render(&c, &g.snapshot(), 0, 0, None, "");
        for want in [
            "hammer_devices 1\n",
            "hammer_devices_online 0\n",
            "hammer_deployments{state=\"failed\"} 1\n",
            "hammer_devices_by_state{state=\"registered\"} 1\n",
            "hammer_quota_refusals_total{quota=\"streams_per_user\"} 1\n",
            "hammer_status_events_ingested_total 0\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from {text}");
        }
    }
}
