//! The latency probe: a well-behaved device that reports `running` every period and measures,
//! per seq, the time from the event's first send to the signed ack that covers it — the
//! victim of the abuse bench (another tenant's device whose acks must stay prompt while
//! someone floods the service).
//!
//! The period is the session's tick ([`SessionConfig::tick`]), so resends are checked as
//! often too. The probe reports only while connected (cut off, it has nothing to measure;
//! its lost connections are counted). Its events go through the outbox like any device's
//! (resent after a reconnect and once they have waited `resend_after`), and an event's time
//! to ack runs from its first send, resends included. Desired states and commands are
//! verified and otherwise ignored.
//!
//! What is measured is kept by [`AckTimes`] (pure: the caller passes the clock).

use crate::decide::DesiredDecision;
use crate::error::SimError;
use crate::identity::Credentials;
use crate::outbox::AckOutcome;
use crate::session::{Device, Driver, Report, Session, SessionConfig};
use crate::verify::Refused;
use hammer_protocol::{Ack, Command, DesiredState, Phase};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// First send and time to ack of each event, by seq.
#[derive(Debug, Default)]
pub struct AckTimes {
    /// Not acked yet: seq → first sent.
    pending: BTreeMap<u64, Instant>,
    /// Acked: (first sent, time to ack), in the order the acks came.
    done: Vec<(Instant, Duration)>,
}

/// The events first sent in one window of time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckWindow {
    /// Time to ack of each one acked, shortest first.
    pub latencies: Vec<Duration>,
    /// How many are not acked (yet).
    pub missed: usize,
}

impl AckWindow {
    /// Events first sent in the window.
    pub fn sent(&self) -> usize {
        self.latencies.len() + self.missed
    }
}

impl AckTimes {
    /// Event `seq` was first sent at `at`.
    pub fn sent(&mut self, seq: u64, at: Instant) {
        self.pending.entry(seq).or_insert(at);
    }

    /// An ack covering every seq up to `upto` arrived at `at`; how many events it acked.
    pub fn acked(&mut self, upto: u64, at: Instant) -> usize {
        let rest = self.pending.split_off(&(upto.saturating_add(1)));
        let acked = std::mem::replace(&mut self.pending, rest);
        for first in acked.values() {
            self.done
                .push((*first, at.saturating_duration_since(*first)));
        }
        acked.len()
    }

    /// Events not acked yet.
    pub fn unacked(&self) -> usize {
        self.pending.len()
    }

    /// The events first sent in `[from, to)`.
    pub fn window(&self, from: Instant, to: Instant) -> AckWindow {
        let within = |t: &Instant| *t >= from && *t < to;
        let mut latencies: Vec<Duration> = self
            .done
            .iter()
            .filter(|(t, _)| within(t))
            .map(|(_, d)| *d)
            .collect();
        latencies.sort();
        AckWindow {
            latencies,
            missed: self.pending.values().filter(|t| within(t)).count(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Default)]
struct Probe {
    times: Mutex<AckTimes>,
    online: AtomicBool,
    disconnects: AtomicU64,
    refused: AtomicU64,
}

impl Driver for Probe {
    fn desired(self: &Arc<Self>, _dev: &Arc<Device>, _d: DesiredState, _: DesiredDecision) {}

    fn command(self: &Arc<Self>, _dev: &Arc<Device>, _c: Command) {}

    fn ack(&self, _dev: &Arc<Device>, ack: Ack, outcome: AckOutcome) {
        // The outbox judged it: of this epoch, ahead of the last one, not beyond what was sent.
        if let AckOutcome::Trimmed(_) = outcome {
            lock(&self.times).acked(ack.seq, Instant::now());
        }
    }

    fn refused(&self, dev: &Arc<Device>, r: Refused) {
        self.refused.fetch_add(1, Relaxed);
        tracing::warn!(device = %dev.id, error = %r, "refused a message");
    }

    fn connected(&self, _dev: &Arc<Device>, _came_online: bool) {
        self.online.store(true, Relaxed);
    }

    fn disconnected(&self, _dev: &Arc<Device>) {
        self.online.store(false, Relaxed);
        self.disconnects.fetch_add(1, Relaxed);
    }

    fn tick(self: &Arc<Self>, dev: &Arc<Device>) {
        if !self.online.load(Relaxed) {
            return;
        }
        let now = Instant::now();
        match dev.report_now(Report::plain(Phase::Running)) {
            // The probe is the device's only reporter, and acks are handled on this same
            // task: the last seq is this event's, and no ack of it can come before this.
            Ok(()) => lock(&self.times).sent(dev.last_seq(), now),
            Err(e) => tracing::warn!(device = %dev.id, error = %e, "cannot report"),
        }
    }
}

/// A connected latency probe; dropping it stops its session (without a clean disconnect).
#[derive(Debug)]
pub struct LatencyProbe {
    session: Session,
    probe: Arc<Probe>,
}

impl LatencyProbe {
    /// Connects `creds` with `cfg` and waits (up to `cfg.ready_timeout`) until it is
    /// subscribed and announced; from then on it reports `running` every `period` (which
    /// replaces `cfg.tick`).
    pub async fn connect(
        creds: &Credentials,
        cfg: SessionConfig,
        period: Duration,
    ) -> Result<LatencyProbe, SimError> {
        let probe = Arc::new(Probe::default());
        let cfg = SessionConfig {
            tick: period,
            ..cfg
        };
        let session = Session::connect(creds, cfg, probe.clone()).await?;
        Ok(LatencyProbe { session, probe })
    }

    /// Time to ack of the events first sent in `[from, to)`, and how many are not acked.
    pub fn window(&self, from: Instant, to: Instant) -> AckWindow {
        lock(&self.probe.times).window(from, to)
    }

    /// Connections lost so far.
    pub fn disconnects(&self) -> u64 {
        self.probe.disconnects.load(Relaxed)
    }

    /// Messages from the service that did not verify so far.
    pub fn refused(&self) -> u64 {
        self.probe.refused.load(Relaxed)
    }

    /// The session's device (outbox, seqs).
    pub fn device(&self) -> &Arc<Device> {
        &self.session.device
    }

    /// Disconnects cleanly (no last will).
    pub async fn disconnect(&self) {
        self.session.disconnect().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_times_every_event_up_to_its_seq_from_the_first_send() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut a = AckTimes::default();
        a.sent(1, t0);
        a.sent(2, t0 + ms(200));
        a.sent(3, t0 + ms(400));
        a.sent(1, t0 + ms(500)); // a resend keeps the first send
        assert_eq!(a.acked(2, t0 + ms(600)), 2);
        assert_eq!(a.acked(2, t0 + ms(700)), 0, "nothing left to ack");
        assert_eq!(a.unacked(), 1);
        let w = a.window(t0, t0 + ms(1000));
        assert_eq!(
            w,
            AckWindow {
                latencies: vec![ms(400), ms(600)],
                missed: 1
            }
        );
        assert_eq!(w.sent(), 3);
    }

    #[test]
    fn a_window_holds_the_events_first_sent_in_it() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut a = AckTimes::default();
        for seq in 1..=5 {
            a.sent(seq, t0 + ms(100 * seq));
        }
        a.acked(3, t0 + ms(350));
        // [200, 500): seqs 2, 3 acked, 4 not.
        let w = a.window(t0 + ms(200), t0 + ms(500));
        assert_eq!(
            (w.latencies, w.missed),
            (vec![ms(50), ms(150)], 1),
            "latencies sorted, the end excluded"
        );
        assert_eq!(a.window(t0 + ms(600), t0 + ms(900)), AckWindow::default());
        assert_eq!(a.acked(u64::MAX, t0 + ms(1000)), 2);
        assert_eq!(a.window(t0, t0 + ms(600)).missed, 0);
    }
}
