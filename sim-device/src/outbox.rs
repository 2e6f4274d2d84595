//! The status outbox, in memory: every status event is numbered (epoch, seq from 1, no
//! gaps), kept until a signed ack of its epoch covers it, and resent after a reconnect or
//! when it has waited `resend_after` — the rules of the manager's durable outbox. Pure:
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

    /// Applies a verified ack: the service stored everything of its epoch up to its seq.
    pub fn ack(&mut self, ack: &Ack) -> AckOutcome {
        if ack.epoch != self.epoch {
            return AckOutcome::OtherEpoch;
        }
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

    /// Payloads to send again, oldest seq first: all of them (`older_than` = None, after a
    /// reconnect), or those last sent at least `older_than` before `now`. Each one returned
    /// counts as sent at `now`, so an event is resent at most once per `older_than` (resending
    /// every tick once it is old would multiply the load on a service that is catching up).
    pub fn due(&mut self, now: Instant, older_than: Option<Duration>) -> Vec<Vec<u8>> {
        self.entries
            .values_mut()
            .filter(|(sent, _)| {
                older_than.is_none_or(|o| now.saturating_duration_since(*sent) >= o)
            })
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
    fn resend_all_after_a_reconnect_or_the_old_ones_once_per_interval() {
        let mut o = Outbox::new(1);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        o.append(ev(Phase::Received), t0).unwrap();
        o.append(ev(Phase::Fetched), t0 + s(3)).unwrap();
        assert_eq!(o.due(t0 + s(4), Some(s(5))).len(), 0);
        let due = o.due(t0 + s(5), Some(s(5)));
        assert_eq!(due.len(), 1);
        assert_eq!(decode::<StatusEvent>(&due[0]).unwrap().seq, 1);
        assert_eq!(
            o.due(t0 + s(8), Some(s(5))).len(),
            1,
            "seq 2 is due; seq 1 was resent at 5 s"
        );
        let all: Vec<u64> = o
            .due(t0 + s(8), None)
            .iter()
            .map(|b| decode::<StatusEvent>(b).unwrap().seq)
            .collect();
        assert_eq!(all, vec![1, 2], "a reconnect resends everything, in order");
        o.ack(&ack(1, 2));
        assert!(o.due(t0 + s(60), None).is_empty());
    }
}
