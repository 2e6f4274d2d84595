//! The status outbox: every [`StatusEvent`] is numbered and written here (durably) before it
//! is published, and stays until the service acks its seq.
//!
//! What goes in is a [`Report`] — the runtime's steps (the outbox is the runtime's
//! [`ReportSink`]) and the agent's own events alike; [`Outbox::append`] adds the epoch, seq and
//! time.
//!
//! Tree `outbox`: key = seq (u64 big-endian, so iteration is in seq order), value = the CBOR
//! of the event. Seqs start at 1 per epoch and have no gaps. Allocating a seq and storing
//! the event is one sled transaction over the `agent` and `outbox` trees.

use crate::runtime::{Report, ReportSink};
use crate::store::{decode_u64, Counter, Store};
use anyhow::{Context, Result};
use hammer_protocol::{StatusEvent, PROTOCOL_VERSION};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
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
        let event = {
            let _g = self.store.lock.lock().unwrap_or_else(|e| e.into_inner());
            let epoch = self.store.epoch();
            let time = hammer_protocol::now_ms();
            let res: Result<StatusEvent, TransactionError<String>> =
                (&self.store.agent, &self.store.outbox).transaction(|(agent, outbox)| {
                    let seq = agent
                        .get(Counter::NextSeq.key())?
                        .map(|v| decode_u64(&v))
                        .unwrap_or(1)
                        .max(1);
                    let event = StatusEvent {
                        v: PROTOCOL_VERSION,
                        epoch,
                        seq,
                        generation: body.generation,
                        deployment_id: body.deployment_id.clone(),
                        phase: body.phase,
                        commit: body.commit.clone(),
                        time,
                        detail: body.detail.clone(),
                        log_tail: body.log_tail.clone(),
                        commit_subject: body.commit_subject.clone(),
                    };
                    let bytes = encode_event(&event)
                        .map_err(|e| ConflictableTransactionError::Abort(e.to_string()))?;
                    outbox.insert(&seq.to_be_bytes(), bytes)?;
                    agent.insert(Counter::NextSeq.key(), &(seq + 1).to_be_bytes())?;
                    Ok(event)
                });
            let event = res.map_err(|e| anyhow::anyhow!("cannot store a status event: {e:?}"))?;
            self.store.flush()?;
            event
        };
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
        // An ack of u64::MAX (confused or hostile) must not overflow: nothing comes after it.
        let Some(first) = seq.checked_add(1) else {
            return Ok(out);
        };
        for item in self.store.outbox.range(first.to_be_bytes()..) {
            let (_, v) = item?;
            match hammer_protocol::decode::<StatusEvent>(&v) {
                Ok(ev) => out.push(ev),
                Err(e) => tracing::error!(error = %e, "dropping an unreadable outbox entry"),
            }
        }
        Ok(out)
    }

    /// Number of unacked events.
    pub fn len(&self) -> usize {
        self.store.outbox.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.outbox.is_empty()
    }

    /// Highest seq handed out so far (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.store.get(Counter::NextSeq).saturating_sub(1)
    }

    /// The service stored everything up to `seq`: removes those events and records the ack.
    /// Returns false (and changes nothing) if `seq` is not ahead of the recorded ack or is
    /// beyond any seq handed out (a confused or hostile ack).
    pub fn ack(&self, seq: u64) -> Result<bool> {
        let _g = self.store.lock.lock().unwrap_or_else(|e| e.into_inner());
        let acked = self.store.get(Counter::AckedSeq);
        if seq <= acked || seq > self.last_seq() {
            return Ok(false);
        }
        let mut batch = sled::Batch::default();
        for item in self.store.outbox.range(..=seq.to_be_bytes()) {
            let (k, _) = item?;
            batch.remove(k);
        }
        self.store.outbox.apply_batch(batch)?;
        self.store
            .agent
            .insert(Counter::AckedSeq.key(), &seq.to_be_bytes())
            .context("cannot record the ack")?;
        self.store.flush()?;
        Ok(true)
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
}
