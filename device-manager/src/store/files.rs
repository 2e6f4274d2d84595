//! The store's files and the system calls that make them crash-safe.
//!
//! - `lock`: held with `flock` (exclusive, non-blocking) while the store is open: one manager
//!   per data dir; released by the kernel when the process ends, however it ends.
//! - `state.json`: replaced whole by [`write_atomic`]: write `.state.json.tmp`, `fsync`,
//!   `rename` over the old file, `fsync` the folder. A crash at any instant leaves the old or
//!   the new file, never a mix; the write is durable when the call returns.
//! - `outbox.log`: [`OutboxLog`], records in the format of [`super::record`], each written
//!   with one `pwrite` at the end of the good part and `fdatasync`ed before the append
//!   returns. A crash can only tear the last record, which the next open cuts off (it was
//!   never reported as stored). Trimming acked records truncates the file (all acked) or
//!   rewrites the live ones through [`write_atomic`].

use super::record::{self, Frame, Tail};
use super::StoreError;
use nix::fcntl::{Flock, FlockArg};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Name of the lock file inside the store folder.
pub const LOCK_FILE: &str = "lock";
/// Name of the state snapshot inside the store folder.
pub const STATE_FILE: &str = "state.json";
/// Name of the outbox log inside the store folder.
pub const OUTBOX_FILE: &str = "outbox.log";

/// Dead (acked or foreign-epoch) bytes the log may carry before the live records are
/// rewritten to a new file; below it trimming costs nothing.
const COMPACT_AFTER_BYTES: u64 = 64 * 1024;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |err| StoreError::Io {
        what,
        path: path.to_path_buf(),
        err,
    }
}

fn open_private(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .mode(0o600)
        .open(path)
}

/// Takes the store's lock; `Locked` if another process holds it.
pub fn lock(dir: &Path) -> Result<Flock<File>, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = open_private(&path, true).map_err(io("cannot open the lock file", &path))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            StoreError::Locked { path: dir.into() }
        } else {
            StoreError::Io {
                what: "cannot lock",
                path,
                err: errno.into(),
            }
        }
    })
}

/// Whether another process holds a `flock` on `path` (false if it does not exist).
pub fn is_locked(path: &Path) -> Result<bool, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io("cannot open", path)(e)),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_unlocked_on_drop) => Ok(false),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, errno)) => Err(io("cannot lock", path)(errno.into())),
    }
}

fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.tmp"))
}

/// Removes what an interrupted [`write_atomic`] may have left.
pub fn remove_leftovers(dir: &Path) -> Result<(), StoreError> {
    for name in [STATE_FILE, OUTBOX_FILE] {
        let tmp = tmp_path(dir, name);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove", &tmp)(e)),
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync the folder", dir))
}

/// Replaces `dir/name` with `bytes`, durably and atomically (see the module doc).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = tmp_path(dir, name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("cannot create", &tmp))?;
    f.write_all(bytes).map_err(io("cannot write", &tmp))?;
    f.sync_all().map_err(io("cannot sync", &tmp))?;
    drop(f);
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(io("cannot replace", &path))?;
    sync_dir(dir)
}

/// Reads `dir/name`; `None` if it does not exist.
pub fn read_optional(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("cannot read", &path)(e)),
    }
}

/// A live record of the log: its seq and where its frame is.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    offset: u64,
    len: u64,
}

/// The outbox log, open. Memory: 24 bytes per unacked event (their bodies stay on disk).
#[derive(Debug)]
pub struct OutboxLog {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// End of the good part: the next record is written here.
    end: u64,
    /// Unacked records of the current epoch, in seq order.
    live: VecDeque<Entry>,
}

impl OutboxLog {
    /// Opens (creating if needed) the log in `dir`, cuts a torn or corrupt tail, and keeps the
    /// records of `epoch` with a seq above `acked`; drops the others from the file when there
    /// are any. Returns the log and the highest seq of `epoch` in it (0 if none).
    pub fn open(dir: &Path, epoch: u64, acked: u64) -> Result<(OutboxLog, u64), StoreError> {
        let path = dir.join(OUTBOX_FILE);
        if !path.exists() {
            write_atomic(dir, OUTBOX_FILE, &record::header())?;
        }
        let file = open_private(&path, false).map_err(io("cannot open", &path))?;
        let bytes = std::fs::read(&path).map_err(io("cannot read", &path))?;
        let (records, tail) = record::decode_log(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let mut log = OutboxLog {
            dir: dir.to_path_buf(),
            path,
            file,
            end: tail.cut_at(bytes.len()) as u64,
            live: VecDeque::new(),
        };
        if tail != Tail::Clean {
            let lost = bytes.len() as u64 - log.end;
            match &tail {
                Tail::Corrupt { why, .. } => tracing::error!(
                    file = %log.path.display(), at = log.end, bytes = lost, why,
                    "the outbox log does not check from here on; keeping the records before it"
                ),
                _ => tracing::warn!(
                    file = %log.path.display(), at = log.end, bytes = lost,
                    "the outbox log ends in a torn record (a crash while it was written); cutting it off"
                ),
            }
        }
        let mut last = 0;
        let mut dead = false;
        for r in &records {
            if r.epoch != epoch {
                dead = true;
                continue;
            }
            if r.seq <= last {
                // Seqs only grow within an epoch: anything else is not a record we wrote.
                log.end = r.offset as u64;
                tracing::error!(file = %log.path.display(), at = r.offset, seq = r.seq,
                    "the outbox log repeats a seq; keeping the records before it");
                break;
            }
            last = r.seq;
            if r.seq <= acked {
                dead = true;
                continue;
            }
            log.live.push_back(Entry {
                seq: r.seq,
                offset: r.offset as u64,
                len: r.len as u64,
            });
        }
        if log.end < HEADER_END {
            // A crash while the log was first created: start it again.
            write_atomic(dir, OUTBOX_FILE, &record::header())?;
            log.reopen()?;
            log.end = HEADER_END;
        } else if log.end != bytes.len() as u64 {
            log.cut(log.end)?;
        }
        if dead {
            log.rewrite()?;
        }
        Ok((log, last))
    }

    fn reopen(&mut self) -> Result<(), StoreError> {
        self.file = open_private(&self.path, false).map_err(io("cannot open", &self.path))?;
        Ok(())
    }

    fn cut(&mut self, len: u64) -> Result<(), StoreError> {
        self.file
            .set_len(len)
            .and_then(|()| self.file.sync_all())
            .map_err(io("cannot truncate", &self.path))
    }

    /// Number of unacked records.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Appends one record and makes it durable. On failure the log is as before (whatever
    /// part of the record reached the file is cut off, or overwritten by the next append).
    pub fn append(&mut self, epoch: u64, seq: u64, body: &[u8]) -> Result<(), StoreError> {
        if body.len() > hammer_protocol::MAX_PAYLOAD {
            return Err(StoreError::TooBig { len: body.len() });
        }
        let frame = record::encode_record(epoch, seq, body);
        let res = self
            .file
            .write_all_at(&frame, self.end)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = res {
            let _ = self.file.set_len(self.end);
            return Err(io("cannot append to", &self.path)(e));
        }
        self.live.push_back(Entry {
            seq,
            offset: self.end,
            len: frame.len() as u64,
        });
        self.end += frame.len() as u64;
        Ok(())
    }

    /// The bodies of the unacked records with a seq above `seq`, in order.
    pub fn read_after(&self, seq: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let first = self.live.partition_point(|e| e.seq <= seq);
        let Some(start) = self.live.get(first).map(|e| e.offset) else {
            return Ok(Vec::new());
        };
        let mut buf = vec![0u8; (self.end - start) as usize];
        self.file
            .read_exact_at(&mut buf, start)
            .map_err(io("cannot read", &self.path))?;
        let mut out = Vec::with_capacity(self.live.len() - first);
        for e in self.live.range(first..) {
            match record::decode_frame(&buf, (e.offset - start) as usize) {
                Frame::Record(r) if r.seq == e.seq => out.push((r.seq, r.body.to_vec())),
                _ => {
                    return Err(StoreError::Corrupt {
                        path: self.path.clone(),
                        detail: format!("the record of seq {} changed on disk", e.seq),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Forgets the records up to `acked` (already recorded as acked by the caller): the file
    /// is truncated when none is left, rewritten when the acked part grew large.
    pub fn trim(&mut self, acked: u64) -> Result<(), StoreError> {
        while self.live.front().is_some_and(|e| e.seq <= acked) {
            self.live.pop_front();
        }
        let live_start = self.live.front().map_or(self.end, |e| e.offset);
        if self.live.is_empty() {
            self.cut(HEADER_END)?;
            self.end = HEADER_END;
        } else if live_start - HEADER_END > COMPACT_AFTER_BYTES.max(self.end - live_start) {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Drops every record (a new epoch).
    pub fn clear(&mut self) -> Result<(), StoreError> {
        self.live.clear();
        self.cut(HEADER_END)?;
        self.end = HEADER_END;
        Ok(())
    }

    /// Writes the live records to a new file that replaces the log.
    fn rewrite(&mut self) -> Result<(), StoreError> {
        let mut bytes = record::header().to_vec();
        let mut live = VecDeque::with_capacity(self.live.len());
        for e in &self.live {
            let mut frame = vec![0u8; e.len as usize];
            self.file
                .read_exact_at(&mut frame, e.offset)
                .map_err(io("cannot read", &self.path))?;
            live.push_back(Entry {
                offset: bytes.len() as u64,
                ..*e
            });
            bytes.extend_from_slice(&frame);
        }
        write_atomic(&self.dir, OUTBOX_FILE, &bytes)?;
        self.reopen()?;
        self.live = live;
        self.end = bytes.len() as u64;
        Ok(())
    }
}

const HEADER_END: u64 = record::HEADER_LEN as u64;
