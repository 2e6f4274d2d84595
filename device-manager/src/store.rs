//! The agent's persistent state in the shared sled database (`DATA/state.sled`).
//!
//! Two trees belong to the agent half: `agent` (typed counters, see [`Counter`]) and
//! `outbox` (see [`crate::outbox`]). The database is opened without sled's periodic flusher
//! (`flush_every_ms(None)`), so no flusher timer runs; every write here is flushed before
//! the call returns, so "persisted" means durable. Known cost: sled 0.34 still keeps its own
//! pool of `sled-io` threads that wake about once a second while idle (measured in
//! BENCHMARKS.md); replacing sled on the device is the way to remove them.

use anyhow::{Context, Result};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Name of the sled database folder inside the data dir.
pub const DB_DIR: &str = "state.sled";
const AGENT_TREE: &str = "agent";
const OUTBOX_TREE: &str = "outbox";

/// Opens (creating if needed) the manager's sled database under `data_dir`.
pub fn open_db(data_dir: &Path) -> Result<sled::Db> {
    let path = data_dir.join(DB_DIR);
    sled::Config::new()
        .path(&path)
        .flush_every_ms(None)
        .open()
        .with_context(|| {
            format!(
                "cannot open the state database {} (is another hammer-manager running on this data dir?)",
                path.display()
            )
        })
}

/// The agent's persisted counters. Each is a `u64`, stored big-endian under its own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Random per install of the data dir; status seqs count within it.
    Epoch,
    /// The seq the next status event gets (starts at 1).
    NextSeq,
    /// The generation of the last desired state handed to the runtime (0 = none yet).
    Generation,
    /// The cmd_seq of the last command accepted (0 = none yet).
    CmdSeq,
    /// The highest status seq the service acknowledged storing (0 = none).
    AckedSeq,
}

impl Counter {
    pub(crate) fn key(self) -> &'static [u8] {
        match self {
            Counter::Epoch => b"epoch",
            Counter::NextSeq => b"next_seq",
            Counter::Generation => b"generation",
            Counter::CmdSeq => b"cmd_seq",
            Counter::AckedSeq => b"acked_seq",
        }
    }
}

/// Handle on the agent's trees. Cheap to clone; shared by the link, the report sink and the
/// command handlers.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    pub(crate) agent: sled::Tree,
    pub(crate) outbox: sled::Tree,
    /// Serialises read-modify-write sequences (seq allocation, trims) across threads.
    pub(crate) lock: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

pub(crate) fn decode_u64(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or_default()
}

impl Store {
    /// Opens the agent's trees in `db` and makes the device epoch if this install has none.
    pub fn open(db: &sled::Db) -> Result<Store> {
        let store = Store {
            db: db.clone(),
            agent: db.open_tree(AGENT_TREE)?,
            outbox: db.open_tree(OUTBOX_TREE)?,
            lock: Arc::new(Mutex::new(())),
        };
        store.ensure_epoch()?;
        Ok(store)
    }

    /// Forgets everything the agent knew (epoch, counters, outbox) and starts a new epoch.
    /// Used by a forced re-enrollment: a new install must not be mistaken for a replay.
    pub fn reset(&self) -> Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.agent.clear()?;
        self.outbox.clear()?;
        self.flush()?;
        drop(_g);
        self.ensure_epoch()
    }

    fn ensure_epoch(&self) -> Result<()> {
        if self.get(Counter::Epoch) != 0 {
            return Ok(());
        }
        let epoch = loop {
            let mut b = [0u8; 8];
            getrandom::getrandom(&mut b)
                .map_err(|e| anyhow::anyhow!("no randomness for the device epoch: {e}"))?;
            let e = u64::from_be_bytes(b);
            if e != 0 {
                break e;
            }
        };
        self.agent
            .insert(Counter::Epoch.key(), &epoch.to_be_bytes())?;
        self.agent
            .insert(Counter::NextSeq.key(), &1u64.to_be_bytes())?;
        self.flush()?;
        tracing::info!(epoch, "new device epoch");
        Ok(())
    }

    /// The shared database (the runtime gets a clone of it).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Reads a counter; 0 when unset.
    pub fn get(&self, c: Counter) -> u64 {
        match self.agent.get(c.key()) {
            Ok(Some(v)) => decode_u64(&v),
            Ok(None) => 0,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the agent state");
                0
            }
        }
    }

    /// Writes a counter and flushes it to disk.
    pub fn set(&self, c: Counter, value: u64) -> Result<()> {
        self.agent.insert(c.key(), &value.to_be_bytes())?;
        self.flush()
    }

    pub fn epoch(&self) -> u64 {
        self.get(Counter::Epoch)
    }

    /// The generation last handed to the runtime, if any.
    pub fn generation(&self) -> Option<u64> {
        Some(self.get(Counter::Generation)).filter(|g| *g != 0)
    }

    pub(crate) fn flush(&self) -> Result<()> {
        self.db.flush().context("cannot flush the state database")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the database again once the previous handle's lock is gone: sled's flusher
    /// thread can hold the file lock for a moment after the handle is dropped (seen under
    /// load in CI).
    fn reopen(dir: &std::path::Path) -> sled::Db {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match open_db(dir) {
                Ok(db) => return db,
                Err(_) if std::time::Instant::now() < end => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("{e:#}"),
            }
        }
    }

    #[test]
    fn epoch_survives_reopen_and_reset_changes_it() {
        let dir = tempfile::tempdir().unwrap();
        let e1 = {
            let db = open_db(dir.path()).unwrap();
            let s = Store::open(&db).unwrap();
            s.set(Counter::Generation, 5).unwrap();
            s.epoch()
        };
        let db = reopen(dir.path());
        let s = Store::open(&db).unwrap();
        assert_eq!(s.epoch(), e1);
        assert_ne!(e1, 0);
        assert_eq!(s.generation(), Some(5));
        assert_eq!(s.get(Counter::NextSeq), 1);
        s.reset().unwrap();
        assert_ne!(s.epoch(), e1);
        assert_eq!(s.generation(), None);
    }
}
