//! In-memory state of devices that is not worth persisting: connection state, last seen,
//! last health, recent log lines, commands waiting for the device to come online, and who
//! is watching logs. A service restart drops it (an undelivered setup command included: the
//! user runs setup again).

use hammer_protocol::api::HealthView;
use hammer_protocol::CommandKind;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Lines of app output kept per device.
pub const LOG_LINES: usize = 500;

#[derive(Default)]
struct DeviceLive {
    /// A session of the device is connected (broker events or presence).
    connected: bool,
    /// The device announced itself online since it connected (it is subscribed): commands
    /// can be delivered now.
    ready: bool,
    last_seen: Option<u64>,
    health: Option<HealthView>,
    logs: VecDeque<String>,
    pending: Vec<CommandKind>,
    /// Logs are streamed until this time (ms since the epoch).
    logs_until: u64,
}

/// Live device state, keyed by device id.
#[derive(Default)]
pub struct Live {
    inner: Mutex<HashMap<String, DeviceLive>>,
}

impl Live {
    fn with<R>(&self, id: &str, f: impl FnOnce(&mut DeviceLive) -> R) -> R {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(id.to_owned()).or_default())
    }

    fn read<R>(&self, id: &str, f: impl FnOnce(Option<&DeviceLive>) -> R) -> R {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(map.get(id))
    }

    /// A session connected (broker event). `ready` when it was already live before this
    /// service started (it has subscribed long ago).
    pub fn connected(&self, id: &str, now: u64, ready: bool) {
        self.with(id, |d| {
            d.connected = true;
            d.ready |= ready;
            d.last_seen = Some(now);
        })
    }

    /// The device's last session ended.
    pub fn disconnected(&self, id: &str, now: u64) {
        self.with(id, |d| {
            d.connected = false;
            d.ready = false;
            d.last_seen = Some(now);
        })
    }

    /// Presence online: the device is subscribed. Returns the commands waiting for it.
    pub fn announced(&self, id: &str, now: u64) -> Vec<CommandKind> {
        self.with(id, |d| {
            d.connected = true;
            d.ready = true;
            d.last_seen = Some(now);
            std::mem::take(&mut d.pending)
        })
    }

    /// Any message from the device.
    pub fn seen(&self, id: &str, now: u64) {
        self.with(id, |d| d.last_seen = Some(now))
    }

    pub fn online(&self, id: &str) -> bool {
        self.read(id, |d| d.is_some_and(|d| d.connected || d.ready))
    }

    pub fn last_seen(&self, id: &str) -> Option<u64> {
        self.read(id, |d| d.and_then(|d| d.last_seen))
    }

    /// Queues `cmd` unless the device can take it now; returns it when it can.
    pub fn deliver_or_queue(&self, id: &str, cmd: CommandKind) -> Option<CommandKind> {
        self.with(id, |d| {
            if d.ready {
                Some(cmd)
            } else {
                // A newer setup replaces an undelivered one.
                if matches!(cmd, CommandKind::Setup { .. }) {
                    d.pending
                        .retain(|c| !matches!(c, CommandKind::Setup { .. }));
                }
                d.pending.push(cmd);
                None
            }
        })
    }

    pub fn set_health(&self, id: &str, h: HealthView) {
        self.with(id, |d| {
            d.last_seen = Some(h.time.max(d.last_seen.unwrap_or(0)));
            d.health = Some(h);
        })
    }

    pub fn health(&self, id: &str) -> Option<HealthView> {
        self.read(id, |d| d.and_then(|d| d.health.clone()))
    }

    pub fn push_logs(&self, id: &str, lines: &[String]) {
        self.with(id, |d| {
            for l in lines {
                if d.logs.len() == LOG_LINES {
                    d.logs.pop_front();
                }
                d.logs.push_back(l.clone());
            }
        })
    }

    pub fn logs(&self, id: &str) -> Vec<String> {
        self.read(id, |d| {
            d.map(|d| d.logs.iter().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Extends log streaming to `until`; returns true when it was off (send `logs on`).
    pub fn watch_logs(&self, id: &str, now: u64, until: u64) -> bool {
        self.with(id, |d| {
            let was_off = d.logs_until <= now;
            d.logs_until = d.logs_until.max(until);
            was_off
        })
    }

    /// When streaming ends, if it has not been extended past `now`.
    pub fn logs_until(&self, id: &str) -> u64 {
        self.read(id, |d| d.map_or(0, |d| d.logs_until))
    }

    /// Number of devices online.
    pub fn online_count(&self) -> usize {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|d| d.connected || d.ready).count()
    }

    pub fn forget(&self, id: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}
