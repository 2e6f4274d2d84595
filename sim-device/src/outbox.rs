//! The status outbox, in memory: every status event is numbered (epoch, seq from 1, no
//! gaps), kept until a signed ack of its epoch covers it, and resent when it has waited
//! `resend_after` — the rules of the manager's durable outbox. After a (re)connect nothing is
//! resent at once: the presence says what waits (`last_seq`), and only what the service's
//! answering ack does not cover goes out again ([`Outbox::connected`], [`Outbox::ack`],
//! [`Outbox::tick`]); if no ack comes within `resend_after`, everything unacked does. Pure:
//! the caller passes the clock and does the publishing.

use hammer_protocol::{encode, Ack, CodecError, StatusEvent};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Unacked status events of one epoch.
#[derive(Debug)]
pub struct Outbox {
    epoch: u64,
    /// Highest seq handed out (0 = none).
    last_seq: u64,
    /// Highest seq the service acked (0 = none).
    acked: u64,
    /// seq → (last sent, encoded event).
    entries: BTreeMap<u64, (Instant, Vec<u8>)>,
    /// When the current connection's presence went out (`None`: offline).
    connected_at: Option<Instant>,
    /// The presence said events wait and no ack answered yet: resending is held.
    awaiting_ack: bool,
}

/// What an ack did to the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// For another epoch (an earlier life of the device): ignored.
    OtherEpoch,
    /// Not ahead of the recorded ack (a repeat, or an old one arriving late): nothing to do.
    NotAhead,
    /// Beyond any seq handed out: a confused or hostile ack; ignored.
    Beyond,
    /// The recorded ack moved to the ack's seq; this many entries were removed.
    Trimmed(usize),
}

impl Outbox {
    pub fn new(epoch: u64) -> Outbox {
        Outbox {
            epoch,
            last_seq: 0,
            acked: 0,
            entries: BTreeMap::new(),
            connected_at: None,
            awaiting_ack: false,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Highest seq handed out so far (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Highest seq acked so far (0 if none).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Unacked events.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Hands out the next seq without storing anything under it (a scripted device that
    /// publishes its own events).
    pub fn reserve(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Numbers `ev` (this epoch, the next seq), stores it as sent at `now` and returns its
    /// payload. An event that does not encode takes no seq.
    pub fn append(&mut self, mut ev: StatusEvent, now: Instant) -> Result<Vec<u8>, CodecError> {
        ev.epoch = self.epoch;
        ev.seq = self.last_seq + 1;
        let bytes = encode(&ev)?;
        self.last_seq = ev.seq;
        self.entries.insert(ev.seq, (now, bytes.clone()));
        Ok(bytes)
    }

    /// The presence of a new connection goes out at `now`: resending waits for the service's
    /// ack when events wait (the presence's `last_seq` is beyond its `acked_seq`).
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
        self.awaiting_ack = !self.entries.is_empty();
    }

    /// The connection is lost: nothing is resent until the next one.
    pub fn disconnected(&mut self) {
        self.connected_at = None;
        self.awaiting_ack = false;
    }

    /// Resending waits for the ack that answers the presence.
    pub fn awaiting_ack(&self) -> bool {
        self.awaiting_ack
    }

    /// Applies a verified ack: the service stored everything of its epoch up to its seq. An
    /// ack of this epoch also ends the wait after a connect: then call [`Outbox::resend_after_ack`].
    pub fn ack(&mut self, ack: &Ack) -> AckOutcome {
        if ack.epoch != self.epoch {
            return AckOutcome::OtherEpoch;
        }
        self.trim(ack)
    }

    /// After an ack of this epoch ended the wait of a new connection: the unacked events not
    /// sent on this connection, oldest first (each counts as sent at `now`). Empty when no wait
    /// was on.
    pub fn resend_after_ack(&mut self, now: Instant) -> Vec<Vec<u8>> {
        if !std::mem::take(&mut self.awaiting_ack) {
            return Vec::new();
        }
        self.not_sent_since_connect(now)
    }

    /// Once a second or so: while connected, the unacked events that waited `resend_after`
    /// since they were last sent; while a new connection waits for its ack, everything not
    /// sent on it once the wait reached `resend_after` (no ack came: the service lost the
    /// presence or predates the answer); offline, nothing.
    pub fn tick(&mut self, now: Instant, resend_after: Duration) -> Vec<Vec<u8>> {
        let Some(since) = self.connected_at else {
            return Vec::new();
        };
        if self.awaiting_ack {
            if now.saturating_duration_since(since) < resend_after {
                return Vec::new();
            }
            self.awaiting_ack = false;
            return self.not_sent_since_connect(now);
        }
        self.due(now, resend_after)
    }

    fn not_sent_since_connect(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let since = self.connected_at.unwrap_or(now);
        self.entries
            .values_mut()
            .filter(|(sent, _)| *sent < since)
            .map(|(sent, bytes)| {
                *sent = now;
                bytes.clone()
            })
            .collect()
    }

    fn trim(&mut self, ack: &Ack) -> AckOutcome {
        if ack.seq > self.last_seq {
            return AckOutcome::Beyond;
        }
        if ack.seq <= self.acked {
            return AckOutcome::NotAhead;
        }
        self.acked = ack.seq;
        let before = self.entries.len();
        self.entries = self.entries.split_off(&(ack.seq + 1));
        AckOutcome::Trimmed(before - self.entries.len())
    }

    /// Payloads last sent at least `older_than` before `now`, oldest seq first. Each one
    /// returned counts as sent at `now`, so an event is resent at most once per `older_than`
    /// (resending every tick once it is old would multiply the load on a service that is
    /// catching up).
    fn due(&mut self, now: Instant, older_than: Duration) -> Vec<Vec<u8>> {
        self.entries
            .values_mut()
            .filter(|(sent, _)| now.saturating_duration_since(*sent) >= older_than)
            .map(|(sent, bytes)| {
                *sent = now;
                bytes.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::{decode, Phase, PROTOCOL_VERSION};

    fn ev(phase: Phase) -> StatusEvent {
        StatusEvent {
            v: PROTOCOL_VERSION,
            epoch: 0,
            seq: 0,
            generation: None,
            deployment_id: None,
            phase,
            commit: None,
            time: 1,
            detail: None,
            log_tail: vec![],
            commit_subject: None,
        }
    }

    fn ack(epoch: u64, seq: u64) -> Ack {
        Ack {
            v: PROTOCOL_VERSION,
            epoch,
            seq,
        }
    }

    #[test]
    fn events_are_numbered_from_one_in_this_epoch() {
        let mut o = Outbox::new(9);
        let now = Instant::now();
        let b = o.append(ev(Phase::Received), now).unwrap();
        let e: StatusEvent = decode(&b).unwrap();
        assert_eq!((e.epoch, e.seq, e.phase), (9, 1, Phase::Received));
        assert_eq!(o.reserve(), 2, "a reserved seq is taken");
        o.append(ev(Phase::Fetched), now).unwrap();
        assert_eq!((o.last_seq(), o.len()), (3, 2));
    }

    #[test]
    fn an_event_too_large_takes_no_seq() {
        let mut o = Outbox::new(1);
        let mut big = ev(Phase::Crashed);
        big.detail = Some("x".repeat(hammer_protocol::MAX_PAYLOAD + 1));
        assert!(o.append(big, Instant::now()).is_err());
        assert_eq!((o.last_seq(), o.len()), (0, 0));
    }

    #[test]
    fn an_ack_trims_up_to_its_seq_and_only_moves_forward() {
        let mut o = Outbox::new(5);
        let now = Instant::now();
        for p in [
            Phase::Received,
            Phase::Fetched,
            Phase::Starting,
            Phase::Running,
        ] {
            o.append(ev(p), now).unwrap();
        }
        assert_eq!(o.ack(&ack(5, 2)), AckOutcome::Trimmed(2));
        assert_eq!((o.acked(), o.len()), (2, 2));
        assert_eq!(o.ack(&ack(5, 2)), AckOutcome::NotAhead, "a repeat");
        assert_eq!(o.ack(&ack(5, 1)), AckOutcome::NotAhead, "late, older");
        assert_eq!(o.acked(), 2, "an older ack does not move it back");
        assert_eq!(o.ack(&ack(4, 4)), AckOutcome::OtherEpoch);
        assert_eq!(o.ack(&ack(5, 5)), AckOutcome::Beyond, "never handed out");
        assert_eq!(o.len(), 2, "ignored acks trim nothing");
        assert_eq!(o.ack(&ack(5, 4)), AckOutcome::Trimmed(2));
        assert!(o.is_empty());
    }

    #[test]
    fn an_ack_of_a_reserved_seq_trims_what_is_below_it() {
        let mut o = Outbox::new(5);
        let now = Instant::now();
        o.append(ev(Phase::Configured), now).unwrap();
        let raw = o.reserve();
        o.append(ev(Phase::Received), now).unwrap();
        assert_eq!(o.ack(&ack(5, raw)), AckOutcome::Trimmed(1));
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn while_connected_each_unacked_event_is_resent_once_per_interval() {
        let mut o = Outbox::new(1);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        o.connected(t0);
        o.append(ev(Phase::Received), t0).unwrap();
        o.append(ev(Phase::Fetched), t0 + s(3)).unwrap();
        assert_eq!(o.tick(t0 + s(4), s(5)).len(), 0);
        let due = o.tick(t0 + s(5), s(5));
        assert_eq!(due.len(), 1);
        assert_eq!(decode::<StatusEvent>(&due[0]).unwrap().seq, 1);
        assert_eq!(
            o.tick(t0 + s(8), s(5)).len(),
            1,
            "seq 2 is due; seq 1 was resent at 5 s"
        );
        o.disconnected();
        assert!(o.tick(t0 + s(30), s(5)).is_empty(), "offline: nothing");
        o.connected(t0 + s(31));
        o.ack(&ack(1, 2));
        assert!(o.tick(t0 + s(60), s(5)).is_empty(), "acked: nothing left");
    }

    #[test]
    fn after_a_reconnect_only_what_the_ack_does_not_cover_goes_out_again() {
        let mut o = Outbox::new(1);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        for p in [Phase::Received, Phase::Fetched, Phase::Running] {
            o.append(ev(p), t0).unwrap();
        }
        let t1 = t0 + s(20);
        o.connected(t1);
        assert!(o.awaiting_ack());
        assert!(o.tick(t1 + s(1), s(5)).is_empty(), "nothing before the ack");
        // The service stored 1 and 2 (their acks were lost with the old connection).
        assert_eq!(o.ack(&ack(1, 2)), AckOutcome::Trimmed(2));
        let again: Vec<u64> = o
            .resend_after_ack(t1 + s(1))
            .iter()
            .map(|b| decode::<StatusEvent>(b).unwrap().seq)
            .collect();
        assert_eq!(again, vec![3]);
        assert!(!o.awaiting_ack());
        assert!(
            o.resend_after_ack(t1 + s(2)).is_empty(),
            "once per connection"
        );
    }

    #[test]
    fn an_ack_covering_everything_resends_nothing_and_a_new_event_is_not_resent() {
        let mut o = Outbox::new(1);
        let t0 = Instant::now();
        o.append(ev(Phase::Received), t0).unwrap();
        let t1 = t0 + Duration::from_secs(20);
        o.connected(t1);
        // An event of this connection, published at once.
        o.append(ev(Phase::Fetched), t1).unwrap();
        assert_eq!(o.ack(&ack(1, 1)), AckOutcome::Trimmed(1));
        assert!(o.resend_after_ack(t1).is_empty());
    }

    #[test]
    fn without_an_ack_everything_unacked_goes_out_after_the_wait() {
        let mut o = Outbox::new(1);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        o.append(ev(Phase::Received), t0).unwrap();
        o.append(ev(Phase::Fetched), t0).unwrap();
        o.connected(t0 + s(10));
        assert!(o.tick(t0 + s(14), s(5)).is_empty());
        assert_eq!(o.tick(t0 + s(15), s(5)).len(), 2);
        assert!(
            o.tick(t0 + s(16), s(5)).is_empty(),
            "then the normal interval"
        );
        assert_eq!(o.tick(t0 + s(20), s(5)).len(), 2);
    }

    #[test]
    fn offline_nothing_is_resent_and_a_connect_with_nothing_waiting_does_not_wait() {
        let mut o = Outbox::new(1);
        let t0 = Instant::now();
        o.append(ev(Phase::Received), t0).unwrap();
        assert!(o
            .tick(t0 + Duration::from_secs(60), Duration::from_secs(5))
            .is_empty());
        o.ack(&ack(1, 1));
        o.connected(t0 + Duration::from_secs(61));
        assert!(!o.awaiting_ack());
        o.disconnected();
        o.append(ev(Phase::Fetched), t0).unwrap();
        assert!(o
            .tick(t0 + Duration::from_secs(90), Duration::from_secs(5))
            .is_empty());
    }
}
