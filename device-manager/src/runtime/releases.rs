//! Release folders and the `current` symlink, in the app dir (see [`super::layout`]).
//!
//! `releases/<commit>/` is only ever created by renaming a finished checkout from a
//! `releases/.tmp-*` folder, so a release with its final name is always complete. `current` is
//! swapped atomically (a new symlink under a temporary name renamed over it). Pruning keeps
//! the newest few releases and never deletes the ones it is told to protect. A release is
//! made readable by everyone who can reach it (folders 0755, files 0644 or 0755) whatever the
//! manager's umask, and is never writable by the app.

use std::io;
use std::path::{Path, PathBuf};

const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{0:?} is not a commit id")]
    BadCommit(String),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ReleaseError {
    let path = path.display().to_string();
    move |source| ReleaseError::Io { what, path, source }
}

/// A full hex commit id (SHA-1 or SHA-256): the only names used as release folders.
pub fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The release folders of one app dir.
#[derive(Debug, Clone)]
pub struct Releases {
    root: PathBuf,
}

impl Releases {
    /// `root`: the app dir (holds `releases/` and `current`).
    pub fn new(root: &Path) -> Releases {
        Releases {
            root: root.to_path_buf(),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    pub fn path(&self, commit: &str) -> PathBuf {
        self.dir().join(commit)
    }

    /// Is `releases/<commit>` present (and so complete)?
    pub fn exists(&self, commit: &str) -> bool {
        is_commit_id(commit) && self.path(commit).is_dir()
    }

    /// A fresh temporary folder name to check a release out into.
    pub fn temp_path(&self, commit: &str) -> Result<PathBuf, ReleaseError> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let mut rnd = [0u8; 6];
        let _ = getrandom::getrandom(&mut rnd);
        Ok(dir.join(format!("{TMP_PREFIX}{commit}-{}", hex::encode(rnd))))
    }

    /// Renames a finished checkout into place as `releases/<commit>`.
    pub fn install(&self, temp: &Path, commit: &str) -> Result<PathBuf, ReleaseError> {
        if !is_commit_id(commit) {
            return Err(ReleaseError::BadCommit(commit.to_string()));
        }
        let dest = self.path(commit);
        if dest.is_dir() {
            // Already there (complete by construction): drop the new copy.
            let _ = std::fs::remove_dir_all(temp);
            return Ok(dest);
        }
        make_readable(temp).map_err(io_err("setting the modes of", temp))?;
        std::fs::rename(temp, &dest).map_err(io_err("installing release", &dest))?;
        sync_dir(&self.dir());
        Ok(dest)
    }

    /// The commit `current` points at, if any.
    pub fn current(&self) -> Option<String> {
        let target = std::fs::read_link(self.current_link()).ok()?;
        let name = target.file_name()?.to_str()?.to_string();
        is_commit_id(&name).then_some(name)
    }

    /// Points `current` at `releases/<commit>` atomically.
    pub fn set_current(&self, commit: &str) -> Result<(), ReleaseError> {
        if !self.exists(commit) {
            return Err(ReleaseError::BadCommit(commit.to_string()));
        }
        // Mark it as recently used, for pruning.
        if let Ok(dir) = std::fs::File::open(self.path(commit)) {
            let _ = dir.set_modified(std::time::SystemTime::now());
        }
        let link = self.current_link();
        let tmp = self.root.join(format!("{TMP_PREFIX}current"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(commit), &tmp)
            .map_err(io_err("creating symlink", &tmp))?;
        std::fs::rename(&tmp, &link).map_err(io_err("swapping", &link))?;
        sync_dir(&self.root);
        Ok(())
    }

    /// Removes `current` (only after a first deployment failed with nothing to go back to).
    pub fn clear_current(&self) {
        let _ = std::fs::remove_file(self.current_link());
        sync_dir(&self.root);
    }

    /// Deletes leftovers of interrupted checkouts.
    pub fn remove_temps(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Keeps the newest `keep` releases (by install time) plus `protect`; deletes the rest.
    pub fn prune(&self, keep: usize, protect: &[&str]) {
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return;
        };
        let mut releases: Vec<(std::time::SystemTime, String)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                if !is_commit_id(&name) {
                    return None;
                }
                let time = e.metadata().and_then(|m| m.modified()).ok()?;
                Some((time, name))
            })
            .collect();
        releases.sort_by_key(|r| std::cmp::Reverse(r.0));
        let mut kept = 0;
        for (_, name) in releases {
            let protected = protect.contains(&name.as_str());
            if protected || kept < keep {
                kept += 1;
                continue;
            }
            tracing::info!(commit = %name, "pruning old release");
            let _ = std::fs::remove_dir_all(self.path(&name));
        }
    }
}

/// Sets folders to 0755 and files to 0644, or 0755 when their owner may execute them
/// (symlinks are left as they are): the app user reads a release, only the manager writes it.
pub fn make_readable(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let set =
        |p: &Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    set(dir, 0o755)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            make_readable(&entry.path())?;
        } else if kind.is_file() {
            let mode = entry.metadata()?.permissions().mode();
            set(&entry.path(), if mode & 0o100 != 0 { 0o755 } else { 0o644 })?;
        }
    }
    Ok(())
}

/// fsync a directory so a rename in it survives a power cut (best effort).
fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}
