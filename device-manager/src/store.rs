//! The manager's persistent state: `DATA/store/` (decision 0021), shared by the agent half
//! ([`Store`]: typed counters, see [`Counter`]; [`crate::outbox`]) and the runtime
//! ([`crate::runtime::state::StateStore`]).
//!
//! Two files and a lock (see [`files`] for the system calls):
//! - `state.json`: the counters and the runtime's state, one JSON document replaced whole
//!   (write a temporary file, `fsync`, `rename`, `fsync` the folder) on every change;
//! - `outbox.log`: the unacked status events, appended one checksummed record at a time
//!   ([`record`]) and `fdatasync`ed. The next seq is one past the highest in the log, or
//!   `next_seq` of `state.json` when the log was emptied, so numbering an event and storing it
//!   is one write: the atomic step sled's transaction over two trees was;
//! - `lock`: `flock`ed while a manager (or `hammer-manager status`) has the store open.
//!
//! Every write is durable before the call returns, a SIGKILL at any instant leaves the old
//! or the new state, and nothing runs in the background: no thread, no timer. Reads are
//! served from memory (the snapshot is a few KB; the outbox keeps 24 bytes per unacked
//! event in memory, their bodies stay on disk). The outbox is not bounded on disk: it holds
//! what the service has not acked (see decision 0021).
//!
//! A data dir of a manager before this store holds `state.sled/`: [`open_db`] refuses it
//! with the next step (re-enroll), and `enroll --force` removes it.

mod files;
pub mod record;

use anyhow::{Context, Result};
use files::OutboxLog;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Name of the store folder inside the data dir.
pub const DB_DIR: &str = "store";
/// The sled database of managers before this store (decision 0021): refused, not read.
pub const LEGACY_SLED_DIR: &str = "state.sled";
/// The version of `state.json` this manager writes and reads.
const STATE_VERSION: u32 = 1;

/// Why the store cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {}: {err}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error(
        "the state store {} is in use: another hammer-manager runs on this data dir (stop it \
         first; `hammer-manager status` shows what a running manager last reported)",
        .path.display()
    )]
    Locked { path: PathBuf },
    #[error(
        "{} is the state database of an older hammer-manager, which this version does not \
         read (decision 0021). Enroll the device again (`hammer-manager enroll --force` with a \
         new token from `hammer device add`): the service then sends its desired state again. \
         Enrolling removes {}",
        .path.display(), .path.display()
    )]
    Legacy { path: PathBuf },
    #[error(
        "{} is damaged: {detail}. Move it away and enroll the device again \
         (`hammer-manager enroll --force`)",
        .path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("a status event of {len} bytes is over the protocol's payload limit")]
    TooBig { len: usize },
    #[error("cannot encode the state: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The agent's persisted counters. Each is a `u64`.
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

/// `state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Snapshot {
    v: u32,
    epoch: u64,
    /// At least the next seq: the log may hold higher seqs (see the module doc).
    next_seq: u64,
    generation: u64,
    cmd_seq: u64,
    acked_seq: u64,
    /// [`crate::runtime::state::RuntimeState`], owned by the runtime.
    #[serde(default)]
    runtime: Option<serde_json::Value>,
}

impl Snapshot {
    fn counter(&self, c: Counter) -> u64 {
        match c {
            Counter::Epoch => self.epoch,
            Counter::NextSeq => self.next_seq,
            Counter::Generation => self.generation,
            Counter::CmdSeq => self.cmd_seq,
            Counter::AckedSeq => self.acked_seq,
        }
    }

    fn counter_mut(&mut self, c: Counter) -> &mut u64 {
        match c {
            Counter::Epoch => &mut self.epoch,
            Counter::NextSeq => &mut self.next_seq,
            Counter::Generation => &mut self.generation,
            Counter::CmdSeq => &mut self.cmd_seq,
            Counter::AckedSeq => &mut self.acked_seq,
        }
    }
}

struct Open {
    snap: Snapshot,
    log: OutboxLog,
}

struct Inner {
    dir: PathBuf,
    open: Mutex<Open>,
    /// Held until the last handle is dropped.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// The open store of one data dir. Cheap to clone; the lock is released when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// Opens (creating if needed) the manager's store under `data_dir`. Fails with
/// [`StoreError::Locked`] while another process has it open, and with
/// [`StoreError::Legacy`] on a data dir of an older manager.
pub fn open_db(data_dir: &Path) -> Result<Db, StoreError> {
    let legacy = data_dir.join(LEGACY_SLED_DIR);
    if legacy.exists() {
        return Err(StoreError::Legacy { path: legacy });
    }
    let dir = data_dir.join(DB_DIR);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|err| StoreError::Io {
            what: "cannot create",
            path: dir.clone(),
            err,
        })?;
    let lock = files::lock(&dir)?;
    files::remove_leftovers(&dir)?;
    let snap = match files::read_optional(&dir, files::STATE_FILE)? {
        None => Snapshot::default(),
        Some(bytes) => decode_snapshot(&bytes).map_err(|detail| StoreError::Corrupt {
            path: dir.join(files::STATE_FILE),
            detail,
        })?,
    };
    let (log, last) = OutboxLog::open(&dir, snap.epoch, snap.acked_seq)?;
    let mut snap = snap;
    snap.next_seq = snap.next_seq.max(last + 1).max(1);
    Ok(Db {
        inner: Arc::new(Inner {
            dir,
            open: Mutex::new(Open { snap, log }),
            _lock: lock,
        }),
    })
}

/// Removes the sled database of an older manager (`state.sled/`), if there is one: what
/// enrolling again does (decision 0021). Refuses while an older manager has it open.
pub fn remove_legacy(data_dir: &Path) -> Result<(), StoreError> {
    let legacy = data_dir.join(LEGACY_SLED_DIR);
    if !legacy.exists() {
        return Ok(());
    }
    // sled 0.34 holds an exclusive flock on its `db` file while it is open.
    if files::is_locked(&legacy.join("db"))? {
        return Err(StoreError::Locked { path: legacy });
    }
    std::fs::remove_dir_all(&legacy).map_err(|err| StoreError::Io {
        what: "cannot remove",
        path: legacy.clone(),
        err,
    })?;
    tracing::warn!(
        path = %legacy.display(),
        "removed the state database of an older hammer-manager: enrolling again starts the state over"
    );
    Ok(())
}

fn decode_snapshot(bytes: &[u8]) -> std::result::Result<Snapshot, String> {
    let snap: Snapshot = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if snap.v != STATE_VERSION {
        return Err(format!(
            "it has version {}, this manager reads version {STATE_VERSION}",
            snap.v
        ));
    }
    Ok(snap)
}

impl Db {
    fn guard(&self) -> MutexGuard<'_, Open> {
        self.inner.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `snap` as `state.json`; the in-memory copy changes only once it is durable.
    fn commit(&self, open: &mut Open, snap: Snapshot) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(&Snapshot {
            v: STATE_VERSION,
            ..snap.clone()
        })?;
        files::write_atomic(&self.inner.dir, files::STATE_FILE, &bytes)?;
        open.snap = snap;
        Ok(())
    }

    /// The runtime's state as last saved (`None` before the first save).
    pub(crate) fn runtime_state(&self) -> Option<serde_json::Value> {
        self.guard().snap.runtime.clone()
    }

    /// Saves the runtime's state durably.
    pub(crate) fn save_runtime_state(&self, value: serde_json::Value) -> Result<(), StoreError> {
        let mut open = self.guard();
        let snap = Snapshot {
            runtime: Some(value),
            ..open.snap.clone()
        };
        self.commit(&mut open, snap)
    }
}

/// Handle on the agent's half of the store. Cheap to clone; shared by the link, the report
/// sink and the command handlers.
#[derive(Clone)]
pub struct Store {
    db: Db,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// The agent's half of `db`; makes the device epoch if this install has none.
    pub fn open(db: &Db) -> Result<Store> {
        let store = Store { db: db.clone() };
        store.ensure_epoch()?;
        Ok(store)
    }

    /// Forgets everything the agent knew (epoch, counters, outbox) and starts a new epoch.
    /// Used by a forced re-enrollment: a new install must not be mistaken for a replay.
    /// The runtime's state stays.
    pub fn reset(&self) -> Result<()> {
        let mut open = self.db.guard();
        let snap = Snapshot {
            runtime: open.snap.runtime.clone(),
            ..Snapshot::default()
        };
        self.db.commit(&mut open, snap)?;
        open.log.clear()?;
        drop(open);
        self.ensure_epoch()
    }

    fn ensure_epoch(&self) -> Result<()> {
        let mut open = self.db.guard();
        if open.snap.epoch != 0 {
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
        let snap = Snapshot {
            epoch,
            next_seq: 1,
            acked_seq: 0,
            ..open.snap.clone()
        };
        // Records of no epoch (a store whose state.json was lost) must not count in this one.
        open.log.clear()?;
        self.db
            .commit(&mut open, snap)
            .context("cannot store the new device epoch")?;
        tracing::info!(epoch, "new device epoch");
        Ok(())
    }

    /// The store this handle is on (the runtime gets a clone of it).
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Reads a counter (from memory); 0 when unset.
    pub fn get(&self, c: Counter) -> u64 {
        self.db.guard().snap.counter(c)
    }

    /// Writes a counter durably. Only [`Counter::Generation`] and [`Counter::CmdSeq`]: the
    /// others are the outbox's (numbering and acks) and change only through it.
    pub fn set(&self, c: Counter, value: u64) -> Result<()> {
        if !matches!(c, Counter::Generation | Counter::CmdSeq) {
            anyhow::bail!("the counter {c:?} is kept by the outbox and cannot be set");
        }
        let mut open = self.db.guard();
        let mut snap = open.snap.clone();
        *snap.counter_mut(c) = value;
        self.db
            .commit(&mut open, snap)
            .context("cannot store a counter")?;
        Ok(())
    }

    pub fn epoch(&self) -> u64 {
        self.get(Counter::Epoch)
    }

    /// The generation last handed to the runtime, if any.
    pub fn generation(&self) -> Option<u64> {
        Some(self.get(Counter::Generation)).filter(|g| *g != 0)
    }

    /// Numbers an event and stores it durably: `make(epoch, seq)` builds its body. One
    /// record appended to the log: the seq is taken if and only if the record is stored.
    pub(crate) fn append_event<T>(
        &self,
        make: impl FnOnce(u64, u64) -> Result<(T, Vec<u8>)>,
    ) -> Result<T> {
        let mut open = self.db.guard();
        let (epoch, seq) = (open.snap.epoch, open.snap.next_seq);
        let (value, body) = make(epoch, seq)?;
        open.log
            .append(epoch, seq, &body)
            .context("cannot store a status event")?;
        open.snap.next_seq = seq + 1;
        Ok(value)
    }

    /// The bodies of the unacked events with a seq above `seq`, in seq order.
    pub(crate) fn events_after(&self, seq: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(self.db.guard().log.read_after(seq)?)
    }

    /// Number of unacked events.
    pub(crate) fn event_count(&self) -> usize {
        self.db.guard().log.len()
    }

    /// Records that the service stored everything up to `seq` and drops those events.
    /// False (nothing changes) if `seq` is not ahead of the recorded ack or beyond any seq
    /// handed out.
    pub(crate) fn ack_events(&self, seq: u64) -> Result<bool> {
        let mut open = self.db.guard();
        let last = open.snap.next_seq.saturating_sub(1);
        if seq <= open.snap.acked_seq || seq > last {
            return Ok(false);
        }
        let snap = Snapshot {
            acked_seq: seq,
            ..open.snap.clone()
        };
        // The ack first: once it is durable the events up to it are gone whatever happens
        // to the log afterwards (the next open drops them).
        self.db
            .commit(&mut open, snap)
            .context("cannot record the ack")?;
        open.log.trim(seq)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_survives_reopen_and_reset_changes_it() {
        let dir = tempfile::tempdir().unwrap();
        let e1 = {
            let db = open_db(dir.path()).unwrap();
            let s = Store::open(&db).unwrap();
            s.set(Counter::Generation, 5).unwrap();
            s.epoch()
        };
        let db = open_db(dir.path()).unwrap();
        let s = Store::open(&db).unwrap();
        assert_eq!(s.epoch(), e1);
        assert_ne!(e1, 0);
        assert_eq!(s.generation(), Some(5));
        assert_eq!(s.get(Counter::NextSeq), 1);
        s.reset().unwrap();
        assert_ne!(s.epoch(), e1);
        assert_eq!(s.generation(), None);
    }

    #[test]
    fn one_open_store_per_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let again = db.clone();
        let e = open_db(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::Locked { .. }), "{e}");
        assert!(e.to_string().contains("another hammer-manager"), "{e}");
        drop(db);
        assert!(open_db(dir.path()).is_err(), "a clone still holds it");
        drop(again);
        open_db(dir.path()).unwrap();
    }

    #[test]
    fn an_older_managers_sled_database_is_refused_with_the_next_step() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(LEGACY_SLED_DIR)).unwrap();
        let e = open_db(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::Legacy { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("state.sled") && msg.contains("enroll --force"),
            "{msg}"
        );
        assert!(
            !dir.path().join(DB_DIR).exists(),
            "a refusal writes nothing"
        );
    }

    #[test]
    fn enrolling_again_removes_the_sled_database_unless_an_old_manager_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join(LEGACY_SLED_DIR);
        std::fs::create_dir(&legacy).unwrap();
        let db_file = std::fs::File::create(legacy.join("db")).unwrap();
        // What a running sled 0.34 holds.
        let held = nix::fcntl::Flock::lock(db_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .unwrap_or_else(|(_, e)| panic!("{e}"));
        let e = remove_legacy(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::Locked { .. }), "{e}");
        assert!(legacy.exists());
        drop(held);
        remove_legacy(dir.path()).unwrap();
        assert!(!legacy.exists());
        remove_legacy(dir.path()).unwrap();
        Store::open(&open_db(dir.path()).unwrap()).unwrap();
    }

    #[test]
    fn a_damaged_state_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(&open_db(dir.path()).unwrap()).unwrap());
        let state = dir.path().join(DB_DIR).join(files::STATE_FILE);
        std::fs::write(&state, b"{\"v\":1,\"epo").unwrap();
        let e = open_db(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("state.json is damaged") && e.contains("enroll"),
            "{e}"
        );
        std::fs::write(
            &state,
            br#"{"v":9,"epoch":1,"next_seq":1,"generation":0,"cmd_seq":0,"acked_seq":0}"#,
        )
        .unwrap();
        let e = open_db(dir.path()).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }

    #[test]
    fn the_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&open_db(dir.path()).unwrap()).unwrap();
        s.set(Counter::CmdSeq, 3).unwrap();
        let store = dir.path().join(DB_DIR);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store), 0o700);
        for f in [files::STATE_FILE, files::OUTBOX_FILE, files::LOCK_FILE] {
            assert_eq!(mode(&store.join(f)), 0o600, "{f}");
        }
    }
}
