//! Presence handling without unbounded work: a device's presence messages are coalesced so
//! that at most one is handled at a time per device, and a flood from one device costs one
//! map entry, not one task per message.
//!
//! The MQTT event loop only calls [`PresenceQueue::offer`] (a short lock, never an await). A
//! fixed pool of [`WORKERS`] tasks takes devices from a queue that holds each device id at
//! most once, and handles the latest presence of that device (a resync on `online`). A
//! presence that arrives while the device's previous one is being handled replaces any
//! waiting one: the newest state is what matters (online → resync once; offline → mark).
//!
//! Bounds, decided and counted (`hammer_presence_coalesced_total`,
//! `hammer_presence_dropped_total`):
//! - a presence payload larger than [`MAX_PRESENCE_BYTES`] is dropped (a real one is under
//!   100 bytes);
//! - at most [`MAX_WAITING`] devices wait at once (each device at most once, so this is only
//!   reached by more devices than that reconnecting together); beyond it the presence is
//!   dropped, and the device is resynced at its next presence or at the service's next
//!   republish.

use crate::service::Service;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// Tasks handling presence messages (store read + signed publishes each).
pub const WORKERS: usize = 8;
/// Largest presence payload handled.
pub const MAX_PRESENCE_BYTES: usize = 1024;
/// Devices whose presence may wait at once.
pub const MAX_WAITING: usize = 200_000;

/// What [`Coalescer::offer`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// New work: put the device on the ready queue.
    Enqueue,
    /// Replaced a waiting presence of the same device (or waits behind the one in flight).
    Coalesced,
    /// Refused at a bound.
    Dropped,
}

/// The pure bookkeeping: which devices wait (with their latest payload) and which are being
/// handled. No I/O, no time.
#[derive(Debug, Default)]
pub struct Coalescer {
    waiting: HashMap<String, Vec<u8>>,
    in_flight: HashSet<String>,
}

impl Coalescer {
    /// A presence arrived.
    pub fn offer(&mut self, device_id: &str, payload: &[u8]) -> Offer {
        if payload.len() > MAX_PRESENCE_BYTES {
            return Offer::Dropped;
        }
        if let Some(p) = self.waiting.get_mut(device_id) {
            p.clear();
            p.extend_from_slice(payload);
            return Offer::Coalesced;
        }
        if self.waiting.len() >= MAX_WAITING {
            return Offer::Dropped;
        }
        self.waiting.insert(device_id.to_owned(), payload.to_vec());
        if self.in_flight.contains(device_id) {
            // Re-queued by `done` when the one in flight finishes.
            Offer::Coalesced
        } else {
            Offer::Enqueue
        }
    }

    /// A worker takes the device off the queue: its latest payload, now in flight.
    pub fn take(&mut self, device_id: &str) -> Option<Vec<u8>> {
        let p = self.waiting.remove(device_id)?;
        self.in_flight.insert(device_id.to_owned());
        Some(p)
    }

    /// The worker finished; true when another presence arrived meanwhile and the device must
    /// be queued again.
    pub fn done(&mut self, device_id: &str) -> bool {
        self.in_flight.remove(device_id);
        self.waiting.contains_key(device_id)
    }

    /// Devices waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// The coalescer shared between the event loop and the workers; counts in the service's
/// [`crate::metrics::Counters`].
pub struct PresenceQueue {
    state: Mutex<Coalescer>,
    ready: mpsc::UnboundedSender<String>,
    svc: Arc<Service>,
}

impl PresenceQueue {
    /// Starts [`WORKERS`] tasks that handle presence for `svc` until `stop` turns true.
    pub fn start(svc: Arc<Service>, stop: watch::Receiver<bool>) -> Arc<PresenceQueue> {
        // Unbounded in type, bounded in fact: a device id is on it at most once at a time,
        // and at most MAX_WAITING devices wait.
        let (ready, rx) = mpsc::unbounded_channel();
        let q = Arc::new(PresenceQueue {
            state: Mutex::new(Coalescer::default()),
            ready,
            svc: svc.clone(),
        });
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..WORKERS {
            tokio::spawn(worker(svc.clone(), q.clone(), rx.clone(), stop.clone()));
        }
        q
    }

    /// Called by the MQTT event loop; never waits.
    pub fn offer(&self, device_id: &str, payload: &[u8]) {
        let decision = self.lock().offer(device_id, payload);
        match decision {
            Offer::Enqueue => {
                let _ = self.ready.send(device_id.to_owned());
            }
            Offer::Coalesced => {
                self.svc
                    .counters
                    .presence_coalesced
                    .fetch_add(1, Ordering::Relaxed);
            }
            Offer::Dropped => {
                let n = self
                    .svc
                    .counters
                    .presence_dropped
                    .fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(10_000) {
                    tracing::warn!(
                        device = device_id,
                        dropped = n + 1,
                        "presence dropped at a bound (oversized, or too many devices waiting)"
                    );
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Coalescer> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn worker(
    svc: Arc<Service>,
    q: Arc<PresenceQueue>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let next = {
            let mut rx = rx.lock().await;
            tokio::select! {
                id = rx.recv() => id,
                _ = stop.wait_for(|s| *s) => None,
            }
        };
        let Some(id) = next else {
            return;
        };
        let Some(payload) = q.lock().take(&id) else {
            continue;
        };
        super::ingest::on_presence(&svc, &id, &payload).await;
        if q.lock().done(&id) {
            let _ = q.ready.send(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_from_one_device_is_one_waiting_entry_with_the_latest_payload() {
        let mut c = Coalescer::default();
        assert_eq!(c.offer("d1", b"1"), Offer::Enqueue);
        for i in 0..10_000u32 {
            assert_eq!(c.offer("d1", i.to_string().as_bytes()), Offer::Coalesced);
        }
        assert_eq!(c.waiting(), 1);
        assert_eq!(c.take("d1").as_deref(), Some(&b"9999"[..]));
        assert_eq!(c.take("d1"), None, "taken once");
    }

    #[test]
    fn a_presence_during_handling_requeues_the_device_once_when_done() {
        let mut c = Coalescer::default();
        assert_eq!(c.offer("d1", b"a"), Offer::Enqueue);
        assert!(c.take("d1").is_some());
        // In flight: newer ones wait, and are not queued twice.
        assert_eq!(c.offer("d1", b"b"), Offer::Coalesced);
        assert_eq!(c.offer("d1", b"c"), Offer::Coalesced);
        assert!(c.done("d1"), "queued again for the latest");
        assert_eq!(c.take("d1").as_deref(), Some(&b"c"[..]));
        assert!(!c.done("d1"), "nothing more");
        assert_eq!(c.offer("d1", b"d"), Offer::Enqueue);
    }

    #[test]
    fn devices_do_not_coalesce_into_each_other_and_bounds_drop() {
        let mut c = Coalescer::default();
        assert_eq!(c.offer("d1", b"x"), Offer::Enqueue);
        assert_eq!(c.offer("d2", b"y"), Offer::Enqueue);
        assert_eq!(c.take("d2").as_deref(), Some(&b"y"[..]));
        assert_eq!(
            c.offer("d3", &vec![0u8; MAX_PRESENCE_BYTES + 1]),
            Offer::Dropped
        );
        assert_eq!(c.waiting(), 1);
    }
}
