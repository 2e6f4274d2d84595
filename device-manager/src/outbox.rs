//! The status outbox: every [`StatusEvent`] is numbered and written here (durably) before it
//! is published, and stays until the service acks its seq.
//!
//! What goes in is a [`Report`] — the runtime's steps (the outbox is the runtime's
//! [`ReportSink`]) and the agent's own events alike; [`Outbox::append`] adds the epoch, seq and
//! time.
//!
//! On disk: `outbox.log` of the store (see [`crate::store`]), one checksummed record per
//! event holding its CBOR, in seq order. Seqs start at 1 per epoch and have no gaps.
//! Allocating a seq and storing the event is one appended, `fdatasync`ed record: a crash
//! before it is complete leaves neither the event nor its seq taken.

use crate::runtime::{Report, ReportSink};
use crate::store::{Counter, Store};
use anyhow::Result;
use hammer_protocol::{StatusEvent, PROTOCOL_VERSION};
use std::sync::Arc;
use tokio::sync::Notify;

/// The persisted outbox, plus a [`Notify`] that wakes the publisher when an event is added.
#[derive(Clone, Debug)]
pub struct Outbox {
    store: Store,
    wake: Arc<Notify>,
}

impl Outbox {
    pub fn new(store: Store) -> Outbox {
        Outbox {
            store,
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Resolves when an event was appended since the last wake-up.
    pub async fn appended(&self) {
        self.wake.notified().await
    }

    /// Turns a report into a status event (numbers it, stamps the epoch and time), stores it
    /// durably (flushed) and wakes the publisher.
    pub fn append(&self, body: Report) -> Result<StatusEvent> {
        let time = hammer_protocol::now_ms();
        let event = self.store.append_event(|epoch, seq| {
            let event = StatusEvent {
                v: PROTOCOL_VERSION,
                epoch,
                seq,
                generation: body.generation,
                deployment_id: body.deployment_id,
                phase: body.phase,
                commit: body.commit,
                time,
                detail: body.detail,
                log_tail: body.log_tail,
                commit_subject: body.commit_subject,
            };
            let bytes = encode_event(&event)?;
            Ok((event, bytes))
        })?;
        tracing::debug!(seq = event.seq, phase = ?event.phase, "status event stored");
        self.wake.notify_one();
        Ok(event)
    }

    /// Every unacked event, in seq order.
    pub fn unacked(&self) -> Result<Vec<StatusEvent>> {
        self.after(0)
    }

    /// The unacked events with a seq greater than `seq`, in order.
    pub fn after(&self, seq: u64) -> Result<Vec<StatusEvent>> {
        let mut out = Vec::new();
        for (seq, bytes) in self.store.events_after(seq)? {
            match hammer_protocol::decode::<StatusEvent>(&bytes) {
                Ok(ev) => out.push(ev),
                Err(e) => tracing::error!(seq, error = %e, "dropping an unreadable outbox entry"),
            }
        }
        Ok(out)
    }

    /// Number of unacked events.
    pub fn len(&self) -> usize {
        self.store.event_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Highest seq handed out so far (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.store.get(Counter::NextSeq).saturating_sub(1)
    }

    /// The service stored everything up to `seq`: removes those events and records the ack.
    /// Returns false (and changes nothing) if `seq` is not ahead of the recorded ack or is
    /// beyond any seq handed out (a confused or hostile ack).
    pub fn ack(&self, seq: u64) -> Result<bool> {
        self.store.ack_events(seq)
    }
}

/// The runtime's sink in the binary: its reports are durable before `report` returns.
impl ReportSink for Outbox {
    fn report(&self, report: Report) {
        if let Err(e) = self.append(report) {
            tracing::error!(error = %e, "cannot store a status event; it is lost");
        }
    }
}

fn encode_event(ev: &StatusEvent) -> Result<Vec<u8>> {
    match hammer_protocol::encode(ev) {
        Ok(b) => Ok(b),
        // An event over the payload limit can only be so because of its log lines: keep the
        // newest lines that fit rather than lose the event.
        Err(_) => {
            let mut ev = ev.clone();
            while !ev.log_tail.is_empty() {
                let drop = ev.log_tail.len().div_ceil(2);
                ev.log_tail.drain(..drop);
                if let Ok(b) = hammer_protocol::encode(&ev) {
                    return Ok(b);
                }
            }
            ev.detail = ev.detail.map(|d| d.chars().take(1000).collect());
            Ok(hammer_protocol::encode(&ev)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_db;
    use hammer_protocol::Phase;

    #[test]
    fn append_ack_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(dir.path()).unwrap();
            let ob = Outbox::new(Store::open(&db).unwrap());
            for i in 0..5 {
                let ev = ob
                    .append(Report::new(Phase::Running, format!("e{i}")))
                    .unwrap();
                assert_eq!(ev.seq, i + 1);
            }
            assert!(ob.ack(2).unwrap());
            assert!(!ob.ack(2).unwrap());
            assert!(!ob.ack(99).unwrap());
        }
        let db = open_db(dir.path()).unwrap();
        let ob = Outbox::new(Store::open(&db).unwrap());
        let seqs: Vec<u64> = ob.unacked().unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(ob.store().get(Counter::AckedSeq), 2);
        assert_eq!(ob.append(Report::new(Phase::Stopped, "x")).unwrap().seq, 6);
        assert_eq!(ob.after(4).unwrap().len(), 2);
        // A hostile ack of u64::MAX neither panics nor trims anything.
        assert!(ob.after(u64::MAX).unwrap().is_empty());
        assert!(!ob.ack(u64::MAX).unwrap());
    }

    #[test]
    fn a_runtime_report_becomes_a_numbered_status_event_with_the_same_content() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let ob = Outbox::new(Store::open(&db).unwrap());
        let report = Report {
            generation: Some(3),
            deployment_id: Some("dep3".into()),
            phase: Phase::RolledBack,
            commit: Some("abc".into()),
            detail: Some("health check failed".into()),
            log_tail: vec!["boom".into()],
            commit_subject: None,
        };
        ReportSink::report(&ob, report.clone());
        let evs = ob.unacked().unwrap();
        assert_eq!(evs.len(), 1);
        let ev = &evs[0];
        assert_eq!((ev.epoch, ev.seq), (ob.store().epoch(), 1));
        assert_eq!(ev.generation, report.generation);
        assert_eq!(ev.deployment_id, report.deployment_id);
        assert_eq!(ev.phase, report.phase);
        assert_eq!(ev.commit, report.commit);
        assert_eq!(ev.detail, report.detail);
        assert_eq!(ev.log_tail, report.log_tail);
    }

    #[test]
    fn oversized_log_tail_is_shortened_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let ob = Outbox::new(Store::open(&db).unwrap());
        let mut body = Report::new(Phase::RolledBack, "boom");
        body.log_tail = vec!["x".repeat(1000); 1000];
        ob.append(body).unwrap();
        let evs = ob.unacked().unwrap();
        assert_eq!(evs.len(), 1);
        assert!(!evs[0].log_tail.is_empty() && evs[0].log_tail.len() < 1000);
    }

    fn log_path(dir: &std::path::Path) -> std::path::PathBuf {
        dir.join(crate::store::DB_DIR).join("outbox.log")
    }

    /// A crash in the middle of an append leaves part of a record at the end of the log: the
    /// next open cuts it off, the events before it stay, and its seq is given again (it was
    /// never reported as stored).
    #[test]
    fn a_torn_last_record_is_cut_and_its_seq_given_again() {
        let dir = tempfile::tempdir().unwrap();
        let full = {
            let ob = Outbox::new(Store::open(&open_db(dir.path()).unwrap()).unwrap());
            ob.append(Report::new(Phase::Running, "one")).unwrap();
            let before = std::fs::metadata(log_path(dir.path())).unwrap().len();
            ob.append(Report::new(Phase::Running, "two")).unwrap();
            let full = std::fs::read(log_path(dir.path())).unwrap();
            (before, full)
        };
        let (before, full) = full;
        for cut in [before + 1, before + 9, full.len() as u64 - 1] {
            std::fs::write(log_path(dir.path()), &full[..cut as usize]).unwrap();
            let ob = Outbox::new(Store::open(&open_db(dir.path()).unwrap()).unwrap());
            let evs = ob.unacked().unwrap();
            assert_eq!(evs.len(), 1, "cut at {cut}");
            assert_eq!(evs[0].detail.as_deref(), Some("one"));
            assert_eq!(ob.last_seq(), 1);
            assert_eq!(
                std::fs::metadata(log_path(dir.path())).unwrap().len(),
                before,
                "the torn part is gone from the file"
            );
            let ev = ob.append(Report::new(Phase::Running, "again")).unwrap();
            assert_eq!(ev.seq, 2);
            let details: Vec<_> = ob
                .unacked()
                .unwrap()
                .into_iter()
                .map(|e| e.detail)
                .collect();
            assert_eq!(
                details,
                [Some("one".to_string()), Some("again".to_string())]
            );
        }
    }

    /// Acks empty the log (truncated) or rewrite it once the acked part is large; the seqs go
    /// on from the last one handed out either way, also after a reopen.
    #[test]
    fn acked_events_leave_the_file_and_seqs_go_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ob = Outbox::new(Store::open(&open_db(dir.path()).unwrap()).unwrap());
            for _ in 0..3 {
                ob.append(Report::new(Phase::Running, "x")).unwrap();
            }
            assert!(ob.ack(3).unwrap());
            assert!(ob.is_empty());
            assert_eq!(std::fs::metadata(log_path(dir.path())).unwrap().len(), 12);
        }
        let ob = Outbox::new(Store::open(&open_db(dir.path()).unwrap()).unwrap());
        assert_eq!(ob.append(Report::new(Phase::Running, "y")).unwrap().seq, 4);
        // Big events, each acked but the newest: the file stays near one event's size.
        let mut big = Report::new(Phase::Crashed, "big");
        big.log_tail = vec!["z".repeat(1000); 20];
        for _ in 0..20 {
            let ev = ob.append(big.clone()).unwrap();
            assert!(ob.ack(ev.seq - 1).unwrap());
        }
        let len = std::fs::metadata(log_path(dir.path())).unwrap().len();
        assert!(len < 3 * 64 * 1024, "the log is compacted: {len} bytes");
        assert_eq!(ob.len(), 1);
        let last = ob.last_seq();
        assert_eq!(last, 24);
        drop(ob);
        let ob = Outbox::new(Store::open(&open_db(dir.path()).unwrap()).unwrap());
        let evs = ob.unacked().unwrap();
        assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), [24]);
        assert_eq!(evs[0].log_tail.len(), 20);
    }

    /// A reset (forced re-enrollment) starts a new epoch with seq 1 and no events, even when
    /// the crash came between writing the new epoch and emptying the log.
    #[test]
    fn events_of_an_older_epoch_are_not_resent() {
        let dir = tempfile::tempdir().unwrap();
        let old_log = {
            let ob = Outbox::new(Store::open(&open_db(dir.path()).unwrap()).unwrap());
            ob.append(Report::new(Phase::Running, "old")).unwrap();
            let old_log = std::fs::read(log_path(dir.path())).unwrap();
            ob.store().reset().unwrap();
            assert!(ob.is_empty());
            assert_eq!(
                ob.append(Report::new(Phase::Running, "new")).unwrap().seq,
                1
            );
            old_log
        };
        // As if the reset's truncation never happened: the old epoch's record is back.
        std::fs::write(log_path(dir.path()), &old_log).unwrap();
        let ob = Outbox::new(Store::open(&open_db(dir.path()).unwrap()).unwrap());
        assert!(ob.unacked().unwrap().is_empty());
        assert_eq!(
            ob.append(Report::new(Phase::Running, "next")).unwrap().seq,
            1
        );
    }
}
