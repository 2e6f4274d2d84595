//! In-memory state of devices that is not worth persisting: connection state, last seen,
//! last health, recent log lines, commands waiting for the device to come online, and who
//! is watching logs. A service restart drops it (an undelivered setup command included: the
//! user runs setup again).
//!
//! # Log lines: kept only while watched, and bounded
//!
//! A device streams its app output only after someone asked for it (`GET .../logs`, which
//! `hammer logs -f` and the dashboard repeat while they show the logs) and until the watch
//! runs out (`logs_until`, one minute after the last request; the device is then told
//! `logs off`). The service keeps lines only during a watch:
//!
//! - A batch arriving for a device nobody watches (a device that ignores `logs off`, or one
//!   whose lines were in flight) is dropped and counted ([`Live::dropped_log_lines`]); the
//!   lines kept from the last watch are freed then too, and when the watch ends
//!   ([`Live::end_log_watch`]).
//! - A line longer than [`MAX_LOG_LINE`] (4 KiB, the manager's own line cap) is cut and ends
//!   with [`crate::store::CUT_MARKER`].
//! - A device's kept lines cost at most [`MAX_LOG_BYTES`] (256 KiB: a screenful of output
//!   many times over), counting [`LOG_LINE_OVERHEAD`] bytes per line so that empty lines are
//!   bounded too; the oldest lines go first ([`LogRing`]).
//!
//! So the memory for logs is at most 256 KiB per device that someone is watching, and
//! nothing for the rest of the fleet.

use hammer_protocol::api::HealthView;
use hammer_protocol::CommandKind;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Longest log line kept, in bytes; a longer one is cut (with a marker).
pub const MAX_LOG_LINE: usize = 4096;
/// Most bytes of log lines kept per watched device (line bytes + [`LOG_LINE_OVERHEAD`] each).
pub const MAX_LOG_BYTES: usize = 256 * 1024;
/// What one kept line costs beyond its text (its `String` and ring slot), for the budget.
pub const LOG_LINE_OVERHEAD: usize = 32;

/// A device's recent log lines within [`MAX_LOG_BYTES`], oldest first.
#[derive(Debug, Default)]
pub struct LogRing {
    lines: VecDeque<String>,
    bytes: usize,
}

impl LogRing {
    /// Adds `line` (cut to [`MAX_LOG_LINE`]), dropping the oldest lines beyond the budget;
    /// returns the line as kept.
    pub fn push(&mut self, line: &str) -> String {
        let line = crate::store::cut(line, MAX_LOG_LINE).into_owned();
        self.bytes += line.len() + LOG_LINE_OVERHEAD;
        self.lines.push_back(line.clone());
        while self.bytes > MAX_LOG_BYTES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len() + LOG_LINE_OVERHEAD,
                None => {
                    self.bytes = 0;
                    break;
                }
            }
        }
        line
    }

    /// What the kept lines cost against [`MAX_LOG_BYTES`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn lines(&self) -> impl Iterator<Item = &String> {
        self.lines.iter()
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Forgets every line and gives the memory back.
    pub fn clear(&mut self) {
        *self = LogRing::default();
    }
}

#[derive(Default)]
struct DeviceLive {
    /// A session of the device is connected (broker events or presence).
    connected: bool,
    /// The device announced itself online since it connected (it is subscribed): commands
    /// can be delivered now.
    ready: bool,
    last_seen: Option<u64>,
    health: Option<HealthView>,
    logs: LogRing,
    pending: Vec<CommandKind>,
    /// Logs are streamed until this time (ms since the epoch).
    logs_until: u64,
}

/// Live device state, keyed by device id.
#[derive(Default)]
pub struct Live {
    inner: Mutex<HashMap<String, DeviceLive>>,
    dropped_log_lines: AtomicU64,
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

    /// Keeps a batch of log lines if someone watches the device; returns the lines as kept
    /// (cut to [`MAX_LOG_LINE`]), or nothing when they were dropped (nobody watches).
    pub fn push_logs(&self, id: &str, lines: &[String]) -> Vec<String> {
        self.push_logs_at(id, lines, hammer_protocol::now_ms())
    }

    /// [`Live::push_logs`] at time `now` (ms since the epoch).
    pub fn push_logs_at(&self, id: &str, lines: &[String], now: u64) -> Vec<String> {
        let kept = self.with(id, |d| {
            if d.logs_until <= now {
                d.logs.clear();
                return None;
            }
            Some(lines.iter().map(|l| d.logs.push(l)).collect::<Vec<_>>())
        });
        match kept {
            Some(kept) => kept,
            None => {
                let n = lines.len() as u64;
                let total = self.dropped_log_lines.fetch_add(n, Ordering::Relaxed) + n;
                tracing::debug!(
                    device = id,
                    lines = n,
                    total,
                    "log lines dropped: nobody watches this device"
                );
                Vec::new()
            }
        }
    }

    pub fn logs(&self, id: &str) -> Vec<String> {
        self.read(id, |d| {
            d.map(|d| d.logs.lines().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// Frees a device's kept lines when its watch has run out by `now`; returns whether
    /// it had (a later request may have extended it).
    pub fn end_log_watch(&self, id: &str, now: u64) -> bool {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(id) {
            Some(d) if d.logs_until <= now => {
                d.logs.clear();
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Log lines dropped since start because nobody watched their device.
    pub fn dropped_log_lines(&self) -> u64 {
        self.dropped_log_lines.load(Ordering::Relaxed)
    }

    /// What every device's kept log lines cost against [`MAX_LOG_BYTES`], summed.
    pub fn kept_log_bytes(&self) -> usize {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(|d| d.logs.bytes()).sum()
    }

    /// One device's kept log bytes (see [`Live::kept_log_bytes`]).
    pub fn log_bytes(&self, id: &str) -> usize {
        self.read(id, |d| d.map_or(0, |d| d.logs.bytes()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CUT_MARKER;

    #[test]
    fn log_ring_cuts_long_lines_and_stays_within_its_byte_budget() {
        let mut r = LogRing::default();
        let kept = r.push(&"x".repeat(100_000));
        assert!(kept.len() <= MAX_LOG_LINE && kept.ends_with(CUT_MARKER));
        for i in 0..10_000 {
            r.push(&format!("{i} {}", "y".repeat(500)));
            assert!(r.bytes() <= MAX_LOG_BYTES);
        }
        assert!(
            r.lines().last().unwrap().starts_with("9999 "),
            "the newest stays"
        );
        assert!(
            !r.lines().any(|l| l.ends_with(CUT_MARKER)),
            "the oldest went"
        );
        // Empty lines are bounded too.
        for _ in 0..100_000 {
            r.push("");
        }
        assert!(r.len() <= MAX_LOG_BYTES / LOG_LINE_OVERHEAD);
        r.clear();
        assert_eq!((r.len(), r.bytes()), (0, 0));
    }

    #[test]
    fn lines_for_an_unwatched_device_are_dropped_and_counted() {
        let live = Live::default();
        let batch = vec!["a".repeat(10_000); 10];
        for _ in 0..100 {
            assert!(live.push_logs_at("d", &batch, 1_000).is_empty());
        }
        assert_eq!(live.kept_log_bytes(), 0);
        assert_eq!(live.dropped_log_lines(), 1_000);
        assert!(live.logs("d").is_empty());
    }

    #[test]
    fn lines_are_kept_capped_while_watched_and_freed_when_the_watch_ends() {
        let live = Live::default();
        assert!(live.watch_logs("d", 1_000, 61_000), "was off: send logs on");
        assert!(!live.watch_logs("d", 2_000, 62_000), "already on");
        let kept = live.push_logs_at("d", &["x".repeat(10_000), "short".into()], 3_000);
        assert_eq!(kept.len(), 2);
        assert!(kept[0].len() <= MAX_LOG_LINE);
        assert_eq!(live.logs("d"), kept);
        for _ in 0..1_000 {
            live.push_logs_at("d", &["z".repeat(4_000)], 4_000);
        }
        assert!(live.log_bytes("d") <= MAX_LOG_BYTES);
        assert!(!live.end_log_watch("d", 10_000), "still watched");
        assert!(live.log_bytes("d") > 0);
        assert!(live.end_log_watch("d", 62_000));
        assert_eq!(live.log_bytes("d"), 0);
        assert!(live.push_logs_at("d", &["late".into()], 63_000).is_empty());
        assert_eq!(live.dropped_log_lines(), 1);
    }
}
