//! [`RevocationList`]: the set of revoked certificate serials, shared between threads, and
//! persisted as a JSON array of hex serials when opened from a file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use crate::error::{CertError, Result};
use crate::files;
use crate::serial::normalize_serial;

/// Revoked serials (canonical hex). Cheap to query from many threads.
#[derive(Debug)]
pub struct RevocationList {
    path: Option<PathBuf>,
    serials: RwLock<BTreeSet<String>>,
    /// Serialises revocations, so the file is written without holding `serials` for
    /// writing: readers (the broker's connection checks) never wait for a disk sync.
    writer: Mutex<()>,
    /// Modification time and size of the file when last read or written, so [`Self::reload`]
    /// re-reads it only after another process changed it.
    stamp: Mutex<Stamp>,
}

type Stamp = Option<(std::time::SystemTime, u64)>;

fn file_stamp(path: &Path) -> Result<Stamp> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some((
            m.modified()
                .map_err(|e| CertError::io("cannot stat", path, e))?,
            m.len(),
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CertError::io("cannot stat", path, e)),
    }
}

/// Reads a list file: a JSON array of hex serials; a missing file is an empty list.
fn read_file(path: &Path) -> Result<(BTreeSet<String>, Stamp)> {
    let stamp = file_stamp(path)?;
    let serials = match std::fs::read(path) {
        Ok(bytes) => {
            let raw: Vec<String> =
                serde_json::from_slice(&bytes).map_err(|e| CertError::RevocationFile {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })?;
            raw.iter()
                .map(|s| normalize_serial(s))
                .collect::<Result<BTreeSet<_>>>()
                .map_err(|e| CertError::RevocationFile {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => return Err(CertError::io("cannot read", path, e)),
    };
    Ok((serials, stamp))
}

impl RevocationList {
    /// An empty list kept only in memory.
    pub fn in_memory() -> Self {
        RevocationList {
            path: None,
            serials: RwLock::new(BTreeSet::new()),
            writer: Mutex::new(()),
            stamp: Mutex::new(None),
        }
    }

    /// Opens the list stored at `path` (a JSON array of hex serials); a missing file is an
    /// empty list. Later revocations are written back to `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let (serials, stamp) = read_file(path)?;
        Ok(RevocationList {
            path: Some(path.to_path_buf()),
            serials: RwLock::new(serials),
            writer: Mutex::new(()),
            stamp: Mutex::new(stamp),
        })
    }

    /// Picks up serials that another process (the service, when the broker runs on its own)
    /// added to this list's file since it was last read. Revocation only ever adds: what is
    /// revoked here stays revoked. Returns whether any serial was added. Cheap when the file
    /// has not changed (one `stat`).
    pub fn reload(&self) -> Result<bool> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = file_stamp(path)?;
        {
            let mut stamp = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *stamp == current {
                return Ok(false);
            }
            *stamp = current;
        }
        let (from_file, _) = read_file(path)?;
        let mut set = self.serials.write().unwrap_or_else(|p| p.into_inner());
        let before = set.len();
        set.extend(from_file);
        Ok(set.len() != before)
    }

    /// The file this list is stored in, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Revokes `serial` (hex, any case, colons allowed). Returns whether it was newly added.
    /// When the list has a file, the file is rewritten atomically before this returns; if
    /// that fails the serial is not revoked and the error is returned.
    pub fn revoke(&self, serial: &str) -> Result<bool> {
        let serial = normalize_serial(serial)?;
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = {
            let set = self.serials.read().unwrap_or_else(|p| p.into_inner());
            if set.contains(&serial) {
                return Ok(false);
            }
            set.clone()
        };
        next.insert(serial);
        if let Some(path) = &self.path {
            // Keep what another process added to the file meanwhile.
            next.extend(read_file(path)?.0);
            let list: Vec<&String> = next.iter().collect();
            let json = serde_json::to_vec_pretty(&list).map_err(|e| CertError::RevocationFile {
                path: path.clone(),
                detail: e.to_string(),
            })?;
            files::write_private(path, json)?;
            *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = file_stamp(path)?;
        }
        *self.serials.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(true)
    }

    /// Whether `serial` (hex, any form) is revoked. A malformed serial is never revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        match normalize_serial(serial) {
            Ok(s) => self
                .serials
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&s),
            Err(_) => false,
        }
    }

    /// How many serials are revoked. It only ever grows, so a change means new revocations.
    pub fn len(&self) -> usize {
        self.serials.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All revoked serials, sorted, canonical.
    pub fn serials(&self) -> Vec<String> {
        self.serials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl Default for RevocationList {
    fn default() -> Self {
        Self::in_memory()
    }
}
