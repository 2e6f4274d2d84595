//! Where the runtime keeps things on disk, and who may read them (decision 0007).
//!
//! - The **data dir** (`--data-dir`, default `/var/lib/hammer-manager`) is the manager's
//!   alone: mode 0700, set again on every start. It holds the keys (`device.key`,
//!   `sealing.key`), the git `credentials`, `manager.toml`, the store `store/`, the
//!   git mirror `repo.git/` (every fetched branch and its history, possibly private), the app's
//!   output `app.log` and `status.json`. Secret files found looser than 0600 are set to 0600.
//! - The **app dir** (`--app-dir`, default `<data dir>-apps` beside it, so
//!   `/var/lib/hammer-manager-apps`) is what the app user may see: the folder itself is owned
//!   by the manager, group of the app user, 0750 (no other local user can read the code);
//!   `releases/<commit>/` (owned by the manager; folders 0755, files 0644 or 0755: readable,
//!   not writable, by the app), the `current` link, and `data/`: the app's own writable folder
//!   (owned by the app user, 0700), its `HOME` and `HAMMER_APP_DATA`, kept across releases.
//!
//! A data dir of an earlier version kept `releases/` and `current` inside itself: [`prepare`]
//! moves them into the app dir (renamed, or copied when the app dir is on another file
//! system), so an upgraded device keeps running its release.

use super::app::AppUser;
use super::releases::{is_commit_id, Releases};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The data dir's mode, set on every start.
pub const DATA_DIR_MODE: u32 = 0o700;
/// The app dir's mode (owner: the manager, group: the app user's).
pub const APP_DIR_MODE: u32 = 0o750;
/// The name of the app's writable folder inside the app dir.
pub const APP_DATA_DIR: &str = "data";
/// The git mirror inside the data dir.
pub const MIRROR_DIR: &str = "repo.git";

/// Files of the data dir that must be 0600.
const SECRET_FILES: &[&str] = &[
    crate::config::KEY_FILE,
    crate::config::SEALING_KEY_FILE,
    crate::credentials::CREDENTIALS_FILE,
];

/// The data dir and app dir of one manager.
#[derive(Debug, Clone)]
pub struct Layout {
    pub data_dir: PathBuf,
    pub app_dir: PathBuf,
}

impl Layout {
    /// `app_dir` `None`: [`default_app_dir`].
    pub fn new(data_dir: &Path, app_dir: Option<&Path>) -> Layout {
        Layout {
            data_dir: data_dir.to_path_buf(),
            app_dir: app_dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| default_app_dir(data_dir)),
        }
    }

    pub fn releases(&self) -> Releases {
        Releases::new(&self.app_dir)
    }

    /// The app's writable folder (`HOME`, `HAMMER_APP_DATA`).
    pub fn app_data(&self) -> PathBuf {
        self.app_dir.join(APP_DATA_DIR)
    }

    pub fn mirror(&self) -> PathBuf {
        self.data_dir.join(MIRROR_DIR)
    }
}

/// The default app dir: beside the data dir, its name plus `-apps`
/// (`/var/lib/hammer-manager` → `/var/lib/hammer-manager-apps`).
pub fn default_app_dir(data_dir: &Path) -> PathBuf {
    let dir = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => {
            let mut name = name.to_os_string();
            name.push("-apps");
            parent.join(name)
        }
        _ => dir.join("apps"),
    }
}

/// Creates the data dir if missing and sets it to 0700 (whatever it was), and the secret
/// files in it to 0600. Done on every start: a `chmod -R` by hand must not leave the keys
/// open to the app.
pub fn secure_data_dir(data_dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DATA_DIR_MODE)
        .create(data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    set_mode(data_dir, DATA_DIR_MODE)?;
    for name in SECRET_FILES {
        let path = data_dir.join(name);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_file() && meta.mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{:o}", meta.mode() & 0o777), "a secret file was readable by others; setting it to 0600");
            set_mode(&path, 0o600)?;
        }
    }
    Ok(())
}

/// Makes the layout ready for `user` (the app's user; `None`: the manager's own): secures the
/// data dir, creates the app dir, its `releases/` and the app's writable folder with their
/// owners and modes, moves releases left in the data dir by an earlier version, and checks
/// that the app user can reach its folders.
pub fn prepare(layout: &Layout, user: Option<&AppUser>) -> Result<()> {
    secure_data_dir(&layout.data_dir)?;
    let app_dir = &layout.app_dir;
    if app_dir.starts_with(&layout.data_dir) {
        bail!(
            "the app dir {} is inside the data dir {}, which only the manager may read; choose an --app-dir outside it",
            app_dir.display(),
            layout.data_dir.display()
        );
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(APP_DIR_MODE)
        .create(app_dir)
        .with_context(|| format!("cannot create the app dir {}", app_dir.display()))?;
    set_mode(app_dir, APP_DIR_MODE)?;
    let root = nix::unistd::geteuid().is_root();
    let switch = user.filter(|_| root);
    if let Some(user) = switch {
        chown(app_dir, None, Some(user.gid))?;
    }
    let releases = layout.releases().dir();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&releases)
        .with_context(|| format!("cannot create {}", releases.display()))?;
    set_mode(&releases, 0o755)?;
    let app_data = layout.app_data();
    match fs::DirBuilder::new().mode(0o700).create(&app_data) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot create {}", app_data.display()));
        }
    }
    let meta = fs::symlink_metadata(&app_data)
        .with_context(|| format!("cannot read {}", app_data.display()))?;
    if !meta.is_dir() {
        bail!(
            "{} should be the app's folder but is not a folder; move it away and start again",
            app_data.display()
        );
    }
    if let Some(user) = switch {
        if meta.uid() != user.uid || meta.gid() != user.gid {
            tracing::info!(folder = %app_data.display(), user = %user.name, "giving the app's folder to the app user");
            chown(&app_data, Some(user.uid), Some(user.gid))?;
        }
    }
    migrate_old_releases(layout);
    if let Some(user) = switch.filter(|u| u.uid != 0) {
        for dir in [releases.as_path(), app_data.as_path()] {
            check_reachable(dir, user)?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {} to {mode:o}", path.display()))
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    std::os::unix::fs::lchown(path, uid, gid)
        .with_context(|| format!("cannot change the owner of {}", path.display()))
}

/// Fails with what to do when `user` cannot enter `dir` (every folder above it needs the
/// search permission for the user).
fn check_reachable(dir: &Path, user: &AppUser) -> Result<()> {
    let dir = fs::canonicalize(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    for p in dir.ancestors() {
        let meta = fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        let bit = if meta.uid() == user.uid {
            0o100
        } else if meta.gid() == user.gid || user.groups.contains(&meta.gid()) {
            0o010
        } else {
            0o001
        };
        if meta.mode() & bit == 0 {
            bail!(
                "the app user {} cannot reach {}: {} is mode {:o} (owner uid {}, group {}); choose an --app-dir (HAMMER_MANAGER_APP_DIR) outside it, or let others pass through it with `chmod o+x {}`",
                user.name,
                dir.display(),
                p.display(),
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid(),
                p.display()
            );
        }
    }
    Ok(())
}

/// Moves `releases/` and `current` of an earlier version's data dir into the app dir. Best
/// effort: what cannot be moved is logged and left (the next deployment checks it out again).
fn migrate_old_releases(layout: &Layout) {
    let old_dir = layout.data_dir.join("releases");
    let old_current = layout.data_dir.join("current");
    let current = fs::read_link(&old_current)
        .ok()
        .and_then(|t| t.file_name().and_then(|n| n.to_str()).map(str::to_owned))
        .filter(|c| is_commit_id(c));
    let _ = fs::remove_file(layout.data_dir.join(".tmp-current"));
    if !old_dir.is_dir() {
        let _ = fs::remove_file(&old_current);
        return;
    }
    let releases = layout.releases();
    let mut moved = 0;
    let mut left = 0;
    for entry in fs::read_dir(&old_dir).into_iter().flatten().flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_commit_id(&name) || releases.exists(&name) {
            continue;
        }
        let to = releases.path(&name);
        let result = match fs::rename(entry.path(), &to) {
            Ok(()) => Ok(()),
            // Another file system: copy under a temporary name, then rename into place.
            Err(_) => releases
                .temp_path(&name)
                .map_err(|e| e.to_string())
                .and_then(|tmp| {
                    copy_tree(&entry.path(), &tmp)
                        .map_err(|e| e.to_string())
                        .and_then(|()| fs::rename(&tmp, &to).map_err(|e| e.to_string()))
                        .inspect_err(|_| {
                            let _ = fs::remove_dir_all(&tmp);
                        })
                }),
        };
        match result.and_then(|()| super::releases::make_readable(&to).map_err(|e| e.to_string())) {
            Ok(()) => moved += 1,
            Err(e) => {
                left += 1;
                tracing::error!(commit = %name, error = %e, "cannot move a release of the earlier layout into the app dir");
            }
        }
    }
    if let Some(c) = current.filter(|c| releases.exists(c) && releases.current().is_none()) {
        if let Err(e) = releases.set_current(&c) {
            tracing::error!(error = %e, "cannot point the app dir's current link at {c}");
        }
    }
    tracing::info!(
        moved,
        from = %old_dir.display(),
        to = %releases.dir().display(),
        "moved the releases of the earlier layout out of the data dir"
    );
    if left == 0 {
        let _ = fs::remove_dir_all(&old_dir);
        let _ = fs::remove_file(&old_current);
    }
}

/// Copies a release folder (folders, files with their mode, symlinks as they are).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if kind.is_file() {
            fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_app_dir_is_beside_the_data_dir() {
        assert_eq!(
            default_app_dir(Path::new("/nonexistent/var/lib/hammer-manager")),
            Path::new("/nonexistent/var/lib/hammer-manager-apps")
        );
    }

    #[test]
    fn an_app_dir_inside_the_data_dir_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let layout = Layout::new(&data, Some(&data.join("apps")));
        let err = prepare(&layout, None).unwrap_err().to_string();
        assert!(err.contains("inside the data dir"), "{err}");
    }

    #[test]
    fn prepare_sets_the_modes_and_tightens_secret_files() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(data.join(crate::config::KEY_FILE), "k").unwrap();
        fs::set_permissions(
            data.join(crate::config::KEY_FILE),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let layout = Layout::new(&data, None);
        prepare(&layout, None).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join(crate::config::KEY_FILE)), 0o600);
        assert_eq!(mode(&layout.app_dir), 0o750);
        assert_eq!(mode(&layout.releases().dir()), 0o755);
        assert_eq!(mode(&layout.app_data()), 0o700);
    }
}
