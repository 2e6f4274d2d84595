//! What devices send: status events (stored exactly once, in batches, flushed, then acked
//! and handed to the rollout engine and the event stream), presence (online = resync
//! request), health (last report kept in memory), logs (ring buffer + event stream), and the
//! embedded broker's connect/disconnect events. Bad payloads are logged and counted, never
//! fatal.

use crate::metrics::Counters;
use crate::rollout::RolloutMsg;
use crate::service::Service;
use crate::store::{DeviceRecord, StoredStatus, MAX_COMMIT_SUBJECTS};
use crate::views;
use hammer_protocol::api::{DeviceState, Event};
use hammer_protocol::rules::full_commit_id;
use hammer_protocol::{
    commit_subject, decode, now_ms, Health, LogBatch, Phase, Presence, StatusEvent,
};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Most status events stored under one flush.
const BATCH: usize = 4096;
/// How many successful commits a device remembers for rollback.
const GOOD_COMMITS: usize = 5;

fn bad(svc: &Service, device: &str, what: &str, e: impl std::fmt::Display) {
    Counters::inc(&svc.counters.bad_payloads);
    tracing::warn!(device, error = %e, "refused a {what} payload");
}

/// The status worker: drains what is queued, stores it, flushes once, acks, then notifies.
pub async fn status_worker(svc: Arc<Service>, mut rx: mpsc::Receiver<(String, Vec<u8>)>) {
    let mut deployers: HashMap<String, Option<String>> = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        if let Err(e) = store_batch(&svc, &mut deployers, std::mem::take(&mut batch)).await {
            tracing::error!(error = %e, "storing status events failed; the devices will resend them");
        }
        if deployers.len() > 10_000 {
            deployers.clear();
        }
    }
}

async fn store_batch(
    svc: &Service,
    deployers: &mut HashMap<String, Option<String>>,
    batch: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let now = now_ms();
    let mut acks: HashMap<String, (u64, u64)> = HashMap::new();
    let mut fresh: Vec<(String, String, StoredStatus)> = Vec::new();
    // One read and one write of each device record per batch, not per event; of the read,
    // only the owner and name are needed here.
    let mut devices: HashMap<String, Option<(String, String)>> = HashMap::new();
    let mut changes: HashMap<String, Vec<StatusEvent>> = HashMap::new();
    for (device_id, payload) in batch {
        let ev: StatusEvent = match decode(&payload) {
            Ok(ev) => ev,
            Err(e) => {
                bad(svc, &device_id, "status", e);
                continue;
            }
        };
        let known = match devices.get(&device_id) {
            Some(d) => d.clone(),
            None => {
                let d = svc.store.device(&device_id)?.map(|d| (d.owner, d.name));
                devices.insert(device_id.clone(), d.clone());
                d
            }
        };
        let Some((owner, name)) = known else {
            Counters::inc(&svc.counters.unknown_devices);
            continue;
        };
        svc.live.seen(&device_id, now);
        let deployer = match &ev.deployment_id {
            Some(id) => match deployers.get(id) {
                Some(d) => d.clone(),
                None => {
                    let d = svc.store.deployment(id)?.map(|d| d.deployer);
                    deployers.insert(id.clone(), d.clone());
                    d
                }
            },
            None => None,
        };
        let stored = StoredStatus {
            device_id: device_id.clone(),
            received_at: now,
            deployer,
            event: ev,
        };
        let ins = svc.store.insert_status(&stored)?;
        acks.insert(device_id.clone(), (stored.event.epoch, ins.contiguous));
        if ins.new {
            Counters::inc(&svc.counters.status_stored);
            if let Some(rec) = crate::domain::audit::device_event(&owner, &name, &stored.event, now)
            {
                // Recorded once: only a new event gets here, never a resend.
                if let Err(e) = svc.store.append_audit(&rec) {
                    tracing::warn!(device = %name, error = %e, "cannot append to the audit log");
                }
            }
            crate::webhooks::status_stored(svc, &owner, &name, &stored);
            changes
                .entry(device_id.clone())
                .or_default()
                .push(stored.event.clone());
            fresh.push((owner, name, stored));
        } else {
            Counters::inc(&svc.counters.status_duplicates);
        }
    }
    for (id, events) in changes {
        svc.store.update_device(&id, &mut |d| {
            for ev in &events {
                apply_to_device(d, ev);
            }
        })?;
    }
    svc.store.flush().await?;
    for (device, (epoch, seq)) in acks {
        // Every acked device is in the batch's cache (unknown devices are never acked).
        if let (true, Some(Some((owner, _)))) = (seq > 0, devices.get(&device)) {
            crate::mqtt::publish::publish_ack(svc, &device, owner, epoch, seq).await?;
        }
    }
    if let Some(link) = &svc.cluster {
        // The other replicas stream them and the one driving deployments follows them. A
        // relay lost here is made up for by the engine reading the store (see cluster).
        if !fresh.is_empty() {
            let items = fresh
                .iter()
                .map(
                    |(owner, device_name, stored)| crate::cluster::wire::StoredItem {
                        owner: owner.clone(),
                        device_name: device_name.clone(),
                        stored: stored.clone(),
                    },
                )
                .collect();
            let body = crate::cluster::wire::Body::Stored(items);
            if let Err(e) = link.send(crate::cluster::wire::RELAY_TOPIC, body).await {
                tracing::warn!(error = %e, "cannot relay stored status events to the other replicas");
            }
        }
    }
    let listening = svc.listening();
    for (owner, device_name, stored) in fresh {
        if listening {
            svc.emit(
                &owner,
                vec![stored.device_id.clone()],
                stored.event.deployment_id.clone(),
                Event::Status {
                    device: device_name,
                    entry: views::history_entry(&stored),
                },
            );
        }
        let _ = svc
            .rollout
            .send(RolloutMsg::Status {
                device_id: stored.device_id,
                event: stored.event,
            })
            .await;
    }
    Ok(())
}

/// Keeps the device record's view of the app current.
fn apply_to_device(d: &mut DeviceRecord, ev: &StatusEvent) {
    remember_subject(d, ev);
    if let Some(g) = ev.generation {
        d.reported_generation = Some(d.reported_generation.map_or(g, |r| r.max(g)));
    }
    if ev.generation.is_some_and(|g| g < d.generation) && ev.phase != Phase::Configured {
        // A late event of an older generation does not describe the app any more.
        return;
    }
    d.app_phase = Some(ev.phase);
    match ev.phase {
        Phase::Running => {
            if let Some(c) = &ev.commit {
                d.current_commit = Some(c.clone());
                if d.good_commits.last() != Some(c) {
                    d.good_commits.retain(|g| g != c);
                    d.good_commits.push(c.clone());
                    if d.good_commits.len() > GOOD_COMMITS {
                        d.good_commits.remove(0);
                    }
                }
            }
        }
        Phase::Configured => {
            if matches!(d.state, DeviceState::SetupPending | DeviceState::Enrolled) {
                d.state = DeviceState::Ready;
            }
        }
        _ => {}
    }
}

/// Keeps the subject a device reported for a commit, for the commits the record names (the
/// current one, the rollback targets) and the one just reported; at most
/// [`MAX_COMMIT_SUBJECTS`].
fn remember_subject(d: &mut DeviceRecord, ev: &StatusEvent) {
    let (Some(commit), Some(subject)) = (
        ev.commit.as_deref().and_then(|c| full_commit_id(c).ok()),
        ev.commit_subject.as_deref().and_then(commit_subject),
    ) else {
        return;
    };
    let named = |c: &String| d.current_commit.as_ref() == Some(c) || d.good_commits.contains(c);
    let stale: Vec<String> = d
        .commit_subjects
        .keys()
        .filter(|c| **c != commit && !named(c))
        .cloned()
        .collect();
    for c in stale {
        d.commit_subjects.remove(&c);
    }
    d.commit_subjects.insert(commit.clone(), subject);
    // The record names a handful of commits; this is a bound, not a policy.
    while d.commit_subjects.len() > MAX_COMMIT_SUBJECTS {
        let Some(c) = d.commit_subjects.keys().find(|c| **c != commit).cloned() else {
            break;
        };
        d.commit_subjects.remove(&c);
    }
}

/// Presence: online is the device's resync request (only what differs is sent).
pub async fn on_presence(svc: &Service, device_id: &str, payload: &[u8]) {
    let p: Presence = match decode(payload) {
        Ok(p) => p,
        Err(e) => return bad(svc, device_id, "presence", e),
    };
    let Ok(Some(dev)) = svc.store.device(device_id) else {
        Counters::inc(&svc.counters.unknown_devices);
        return;
    };
    let now = now_ms();
    if p.online {
        let queued = svc.live.announced(device_id, now);
        if let Err(e) = crate::mqtt::publish::resync_on_presence(svc, &dev, &p, queued).await {
            tracing::warn!(device = device_id, error = %e, "resync failed");
        }
    } else {
        svc.live.disconnected(device_id, now);
    }
    crate::webhooks::presence(svc, &dev.owner, &dev.name, p.online);
    svc.emit(
        &dev.owner,
        vec![dev.id.clone()],
        None,
        Event::Presence {
            device: dev.name,
            online: p.online,
            time: now,
        },
    );
}

/// Health: kept in memory as the device's last health.
pub fn on_health(svc: &Service, device_id: &str, payload: &[u8]) {
    let h: Health = match decode(payload) {
        Ok(h) => h,
        Err(e) => return bad(svc, device_id, "health", e),
    };
    let Ok(Some(dev)) = svc.store.device(device_id) else {
        Counters::inc(&svc.counters.unknown_devices);
        return;
    };
    Counters::inc(&svc.counters.health_reports);
    let view = views::health_view(&h);
    svc.live.set_health(device_id, view.clone());
    svc.emit(
        &dev.owner,
        vec![dev.id],
        None,
        Event::Health {
            device: dev.name,
            health: view,
        },
    );
}

/// Logs: appended to the device's ring buffer and streamed.
pub fn on_logs(svc: &Service, device_id: &str, payload: &[u8]) {
    let b: LogBatch = match decode(payload) {
        Ok(b) => b,
        Err(e) => return bad(svc, device_id, "logs", e),
    };
    let Ok(Some(dev)) = svc.store.device(device_id) else {
        Counters::inc(&svc.counters.unknown_devices);
        return;
    };
    Counters::inc(&svc.counters.log_batches);
    // Kept (and streamed) only while someone watches the device, each line capped.
    let kept = svc.live.push_logs(device_id, &b.lines);
    svc.live.seen(device_id, now_ms());
    if kept.is_empty() {
        return;
    }
    svc.emit(
        &dev.owner,
        vec![dev.id],
        None,
        Event::Logs {
            device: dev.name,
            lines: kept,
        },
    );
}

/// Follows the embedded broker's connect/disconnect events for online state.
pub async fn broker_events(svc: Arc<Service>, broker: hammer_broker::BrokerHandle) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = broker.subscribe_events();
    let snapshot = |svc: &Service| {
        for s in broker.connected() {
            if s.identity.role == hammer_certs::Role::Device {
                svc.live.connected(&s.identity.id, now_ms(), true);
            }
        }
    };
    snapshot(&svc);
    loop {
        match rx.recv().await {
            Ok(ev) => {
                if ev.identity.role != hammer_certs::Role::Device {
                    continue;
                }
                let id = &ev.identity.id;
                let now = now_ms();
                if ev.connected {
                    svc.live.connected(id, now, false);
                } else if !ev.still_connected {
                    svc.live.disconnected(id, now);
                    if let Ok(Some(dev)) = svc.store.device(id) {
                        svc.emit(
                            &dev.owner,
                            vec![dev.id.clone()],
                            None,
                            Event::Presence {
                                device: dev.name,
                                online: false,
                                time: now,
                            },
                        );
                    }
                }
            }
            Err(RecvError::Lagged(_)) => snapshot(&svc),
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::PROTOCOL_VERSION;

    fn fetched(commit: &str, subject: Option<&str>) -> StatusEvent {
        StatusEvent {
            v: PROTOCOL_VERSION,
            epoch: 1,
            seq: 1,
            generation: Some(1),
            deployment_id: Some("d".into()),
            phase: Phase::Fetched,
            commit: Some(commit.into()),
            time: 1,
            detail: None,
            log_tail: vec![],
            commit_subject: subject.map(str::to_owned),
        }
    }

    fn commit(n: u8) -> String {
        format!("{n:040x}")
    }

    fn record() -> DeviceRecord {
        crate::domain::devices::new_device("u", "d", Default::default(), DeviceState::Registered)
    }

    #[test]
    fn a_reported_subject_is_kept_for_the_commit_and_shown_once_it_runs() {
        let mut d = record();
        apply_to_device(&mut d, &fetched(&commit(1), Some("Fix the pump\nbody")));
        assert_eq!(
            d.commit_subjects.get(&commit(1)).map(String::as_str),
            Some("Fix the pump")
        );
        let mut running = fetched(&commit(1), None);
        running.phase = Phase::Running;
        apply_to_device(&mut d, &running);
        let view = crate::views::device_view(&d, &crate::live::Live::default());
        assert_eq!(view.current_commit_subject.as_deref(), Some("Fix the pump"));
    }

    #[test]
    fn subjects_of_commits_the_record_no_longer_names_are_dropped_and_the_count_is_bounded() {
        let mut d = record();
        d.current_commit = Some(commit(1));
        d.good_commits = vec![commit(2)];
        for n in 1..=40u8 {
            apply_to_device(&mut d, &fetched(&commit(n), Some(&format!("subject {n}"))));
            assert!(d.commit_subjects.len() <= MAX_COMMIT_SUBJECTS);
        }
        let kept: Vec<&String> = d.commit_subjects.keys().collect();
        assert_eq!(kept, [&commit(1), &commit(2), &commit(40)]);
    }

    #[test]
    fn the_record_keeps_the_highest_generation_the_device_reported_on() {
        let mut d = record();
        assert_eq!(
            d.reported_generation,
            Some(0),
            "a new device has reported nothing"
        );
        let mut ev = fetched(&commit(1), None);
        ev.generation = Some(4);
        apply_to_device(&mut d, &ev);
        ev.generation = Some(3); // a late event of an older generation
        apply_to_device(&mut d, &ev);
        ev.generation = None; // e.g. configured
        apply_to_device(&mut d, &ev);
        assert_eq!(d.reported_generation, Some(4));
    }

    #[test]
    fn a_subject_for_something_that_is_not_a_commit_id_or_empty_is_ignored() {
        let mut d = record();
        apply_to_device(&mut d, &fetched("main", Some("x")));
        apply_to_device(&mut d, &fetched(&commit(3), Some("\u{7}  ")));
        assert!(d.commit_subjects.is_empty());
    }
}
