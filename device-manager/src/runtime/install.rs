//! The install step of a release (decision 0009): the folder it runs in, the dependency
//! folders carried over from the running release, and making the result a release again.
//!
//! The reconciler runs the command itself (`/bin/sh -c CMD`, through [`super::app::launch`]:
//! its own process group, the app user, nice 10, the lowest best-effort I/O priority, output
//! into the app log with the prefix [`LOG_PREFIX`]). This module holds what surrounds it:
//!
//! - [`Base`]: the install runs in a temporary folder `releases/.tmp-<commit>-*` (removed on
//!   every start of the runtime). Normally that folder *is* the fresh checkout of the commit,
//!   renamed; when the commit's folder is the running or the previous release (the same commit
//!   deployed again with another install, start or env), it is a copy of that folder, which
//!   stays untouched until the new one replaces it.
//! - [`choose_reuse`]: a declared folder (`node_modules` keyed on `package-lock.json`) is
//!   copied from the running release when the key file has the same content in both; the
//!   running release keeps its own copy, so a rollback finds it intact. The install command
//!   runs either way (a code-only release then finds its dependencies in place).
//! - [`open_to`] / [`seal`]: as root, the temporary folder's directories belong to the app user
//!   during the install (it may create and replace entries; the files of the checkout and of
//!   reused folders stay the manager's, read-only to it, so hard links to the running release
//!   are safe); afterwards everything is the manager's again and readable by all (folders
//!   0755, files 0644 or 0755), walked through file descriptors that never follow a link.
//! - [`put_in_place`]: the finished folder becomes `releases/<commit>` in one rename (or an
//!   atomic exchange when that name exists).

use super::app::AppUser;
use super::releases::Releases;
use hammer_protocol::{InstallStep, ReuseDir};
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Runs of the install command of one deployment that a restart of the manager may cut short
/// before the deployment fails (the first run and one more).
pub const MAX_ATTEMPTS: u32 = 2;
/// Put before each line of the install's output in the app log.
pub const LOG_PREFIX: &str = "[install] ";
/// Deepest folder nesting [`seal`] walks (node_modules trees stay far below it).
const MAX_DEPTH: usize = 256;

// ----- decisions (pure) ------------------------------------------------------------------

/// SHA-256 of a key file's content.
pub type KeyHash = [u8; 32];

/// What the folder the install runs in starts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The commit's fresh checkout, renamed (nothing else uses it).
    FreshCheckout,
    /// A copy of the commit's folder, which is the running or the previous release and must
    /// stay as it is until the new folder replaces it. Its dependency folders already match
    /// its own key files: nothing is reused on top.
    CopyOfInUse,
}

/// Where the install of `commit` starts, given the commits of the running (`current`) and the
/// previous release.
pub fn base_for(commit: &str, current: Option<&str>, previous: Option<&str>) -> Base {
    if current == Some(commit) || previous == Some(commit) {
        Base::CopyOfInUse
    } else {
        Base::FreshCheckout
    }
}

/// What the running release has of one declared folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningSide {
    /// Its key file's hash (`None`: it has no such file).
    pub key: Option<KeyHash>,
    /// It has the folder (a real folder, not a link).
    pub has_dir: bool,
}

/// Whether a declared folder is carried over into the new release, and why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReuseChoice {
    /// Copied from the running release: the key file is the same in both.
    Reuse,
    /// Nothing runs yet (first release, or its folder is gone).
    NoRunningRelease,
    /// The running release has no such folder.
    NotInRunning,
    /// The new release has no key file (or it is a link or not a file).
    NoKeyFile,
    /// The key file differs (or the running release has none).
    KeyChanged,
}

/// Decides one declared folder: reused only when the running release has the folder and a
/// key file with the same content as the new release's.
pub fn choose_reuse(running: Option<&RunningSide>, new_key: Option<&KeyHash>) -> ReuseChoice {
    let Some(running) = running else {
        return ReuseChoice::NoRunningRelease;
    };
    let Some(new_key) = new_key else {
        return ReuseChoice::NoKeyFile;
    };
    if running.key.as_ref() != Some(new_key) {
        return ReuseChoice::KeyChanged;
    }
    if !running.has_dir {
        return ReuseChoice::NotInRunning;
    }
    ReuseChoice::Reuse
}

impl ReuseChoice {
    /// A line for the app log and the `installing` report.
    pub fn describe(self, r: &ReuseDir, from: &str) -> String {
        let (dir, key) = (&r.dir, &r.key);
        match self {
            ReuseChoice::Reuse => format!("{dir}: reused from {from} ({key} unchanged)"),
            ReuseChoice::NoRunningRelease => format!("{dir}: not reused (no running release)"),
            ReuseChoice::NotInRunning => {
                format!("{dir}: not reused (the running release has no {dir})")
            }
            ReuseChoice::NoKeyFile => format!("{dir}: not reused (the release has no file {key})"),
            ReuseChoice::KeyChanged => format!("{dir}: not reused ({key} changed)"),
        }
    }
}

/// What recovery does with an install that a restart of the manager cut short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterCrash {
    /// Run it again from a fresh checkout, as run number `attempt`.
    Redo { attempt: u32 },
    /// Fail the deployment with this reason (the old release keeps running).
    Fail(String),
}

/// An install cut short is run again from scratch (its folder is gone: it was temporary),
/// unless it already was cut short [`MAX_ATTEMPTS`] times: an install that brings the device
/// down (memory, power) must not do so forever.
pub fn after_crash(attempt: u32, commit: &str) -> AfterCrash {
    if attempt < MAX_ATTEMPTS {
        AfterCrash::Redo {
            attempt: attempt + 1,
        }
    } else {
        AfterCrash::Fail(format!(
            "the install of {} was cut short {attempt} times by a restart of the manager and is \
             not run again; check the device's memory and power (the install output is in \
             app.log), then deploy again",
            &commit[..commit.len().min(12)]
        ))
    }
}

/// Copy files by hard link: only when the app runs as another user than the manager, so it
/// cannot write into a file it shares with another release (it may still replace it).
pub fn may_link(user: Option<&AppUser>) -> bool {
    user.is_some_and(|u| u.uid != nix::unistd::geteuid().as_raw())
}

// ----- the folder ------------------------------------------------------------------------

/// `root/rel` when every part of `rel` below `root` is a real entry (no symbolic link on the
/// way: a link in the repository must not lead the manager outside the release). The last
/// part may be missing. `rel` passed the protocol's path rule.
pub fn inside(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    let parts: Vec<Component> = Path::new(rel).components().collect();
    for (i, part) in parts.iter().enumerate() {
        let Component::Normal(name) = part else {
            return None;
        };
        path.push(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => return None,
            Ok(m) if i + 1 < parts.len() && !m.is_dir() => return None,
            Ok(_) => {}
            Err(_) if i + 1 == parts.len() => {}
            Err(_) => return None,
        }
    }
    Some(path)
}

/// The hash of the key file `rel` in `root` (a regular file reached without links).
pub fn key_hash(root: &Path, rel: &str) -> Option<KeyHash> {
    let path = inside(root, rel)?;
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mut file = std::fs::File::open(&path).ok()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(hasher.finalize().into())
}

/// What the running release has of `r`.
pub fn running_side(running: &Path, r: &ReuseDir) -> RunningSide {
    RunningSide {
        key: key_hash(running, &r.key),
        has_dir: inside(running, &r.dir)
            .and_then(|p| std::fs::symlink_metadata(p).ok())
            .is_some_and(|m| m.is_dir()),
    }
}

/// Copies the tree `src` to `dst` (which must not exist): folders made anew (0755), links
/// copied as links, files hard-linked when `link` (copied when that fails), else copied.
/// Other kinds of entries are left out. Returns the number of files.
pub fn copy_tree(src: &Path, dst: &Path, link: bool) -> io::Result<u64> {
    let mode = |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
    std::fs::create_dir(dst)?;
    mode(dst)?;
    let mut files = 0;
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((from_dir, to_dir)) = stack.pop() {
        for entry in std::fs::read_dir(&from_dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let (from, to) = (entry.path(), to_dir.join(entry.file_name()));
            if kind.is_dir() {
                std::fs::create_dir(&to)?;
                mode(&to)?;
                stack.push((from, to));
            } else if kind.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            } else if kind.is_file() {
                if !link || std::fs::hard_link(&from, &to).is_err() {
                    std::fs::copy(&from, &to)?;
                }
                files += 1;
            }
        }
    }
    Ok(files)
}

/// Applies the reuse decisions to the install folder `stage`: each declared folder is
/// decided by [`choose_reuse`] against `running` (the running release's folder) and, when
/// reused, copied over whatever the checkout had there. A copy that fails is removed and the
/// folder counts as not reused (the install makes it). Returns one line per folder.
pub fn reuse(
    stage: &Path,
    running: Option<(&Path, &str)>,
    step: &InstallStep,
    link: bool,
) -> Vec<String> {
    let mut lines = Vec::new();
    for r in &step.reuse {
        let side = running.map(|(dir, _)| running_side(dir, r));
        let choice = choose_reuse(side.as_ref(), key_hash(stage, &r.key).as_ref());
        let from = running.map(|(_, commit)| commit).unwrap_or("-");
        if choice != ReuseChoice::Reuse {
            lines.push(choice.describe(r, from));
            continue;
        }
        let (Some((running_dir, _)), Some(dest)) = (running, inside(stage, &r.dir)) else {
            lines.push(format!("{}: not reused (its path holds a link)", r.dir));
            continue;
        };
        let copied = (|| -> io::Result<u64> {
            match std::fs::symlink_metadata(&dest) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&dest)?,
                Ok(_) => std::fs::remove_file(&dest)?,
                Err(_) => {}
            }
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            copy_tree(&running_dir.join(&r.dir), &dest, link)
        })();
        match copied {
            Ok(files) => lines.push(format!("{} ({files} files)", choice.describe(r, from))),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dest);
                lines.push(format!("{}: not reused (copying it failed: {e})", r.dir));
            }
        }
    }
    lines
}

/// Gives the folders of `stage` to the app user (when it is another user than the manager),
/// so the install can create and replace entries; files stay the manager's.
pub fn open_to(stage: &Path, user: Option<&AppUser>) -> io::Result<()> {
    let Some(user) = user.filter(|_| may_link(user)) else {
        return Ok(());
    };
    let mut stack = vec![stage.to_path_buf()];
    while let Some(dir) = stack.pop() {
        std::os::unix::fs::lchown(&dir, Some(user.uid), Some(user.gid))?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Makes `stage` a release again after the install: every folder the manager's and 0755;
/// files the app user made become the manager's (a file it hard-linked from elsewhere is
/// replaced by a copy), 0644 or 0755; links the app user made become the manager's; other
/// entries it made (pipes, sockets) are removed. Files that were not the app user's (the
/// checkout, reused folders) are left as they are. `app_uid`: the app user when it is another
/// user than the manager (`None`: only the modes are set). Everything is reached through
/// file descriptors opened without following links.
pub fn seal(stage: &Path, app_uid: Option<u32>) -> Result<(), String> {
    sealing::seal(stage, app_uid).map_err(|e| {
        format!("could not make the installed folder read-only for the app ({e}); deploy again")
    })
}

mod sealing {
    use super::MAX_DEPTH;
    use nix::dir::Dir;
    use nix::errno::Errno;
    use nix::fcntl::{openat, renameat, AtFlags, OFlag};
    use nix::sys::stat::{fchmod, fchmodat, fstat, fstatat, FchmodatFlags, FileStat, Mode, SFlag};
    use nix::unistd::{fchown, fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
    use std::ffi::{CStr, CString};
    use std::fs::File;
    use std::os::fd::{AsRawFd, FromRawFd, RawFd};
    use std::path::Path;

    const DIR_FLAGS: OFlag = OFlag::O_RDONLY
        .union(OFlag::O_DIRECTORY)
        .union(OFlag::O_NOFOLLOW)
        .union(OFlag::O_CLOEXEC);

    struct Sealer {
        app_uid: Option<u32>,
        owner: (Uid, Gid),
    }

    pub(super) fn seal(stage: &Path, app_uid: Option<u32>) -> nix::Result<()> {
        let mut root = Dir::open(stage, DIR_FLAGS, Mode::empty())?;
        let sealer = Sealer {
            app_uid,
            owner: (nix::unistd::geteuid(), nix::unistd::getegid()),
        };
        sealer.dir(&mut root, 0)
    }

    /// Opens `name` in `dir` as a [`File`].
    fn open_file(dir: RawFd, name: &CStr, flags: OFlag, mode: Mode) -> nix::Result<File> {
        let fd = openat(Some(dir), name, flags | OFlag::O_CLOEXEC, mode)?;
        // SAFETY: `openat` just returned this descriptor; nothing else owns or closes it.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    fn kind(st: &FileStat) -> SFlag {
        SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
    }

    fn file_mode(st: &FileStat) -> Mode {
        Mode::from_bits_truncate(if st.st_mode & 0o100 != 0 {
            0o755
        } else {
            0o644
        })
    }

    impl Sealer {
        fn apps(&self, st: &FileStat) -> bool {
            self.app_uid.is_some_and(|uid| st.st_uid == uid)
        }

        fn dir(&self, dir: &mut Dir, depth: usize) -> nix::Result<()> {
            if depth > MAX_DEPTH {
                return Err(Errno::ELOOP);
            }
            let fd = dir.as_raw_fd();
            if self.app_uid.is_some() {
                fchown(fd, Some(self.owner.0), Some(self.owner.1))?;
            }
            fchmod(fd, Mode::from_bits_truncate(0o755))?;
            let names: Vec<CString> = dir
                .iter()
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_owned())
                .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
                .collect();
            for name in names {
                let st = match fstatat(Some(fd), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(e),
                };
                match kind(&st) {
                    SFlag::S_IFDIR => {
                        let mut sub =
                            Dir::openat(Some(fd), name.as_c_str(), DIR_FLAGS, Mode::empty())?;
                        self.dir(&mut sub, depth + 1)?;
                    }
                    SFlag::S_IFREG => self.file(fd, &name, &st)?,
                    SFlag::S_IFLNK if self.apps(&st) => fchownat(
                        Some(fd),
                        name.as_c_str(),
                        Some(self.owner.0),
                        Some(self.owner.1),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )?,
                    SFlag::S_IFLNK => {}
                    _ if self.apps(&st) => {
                        unlinkat(Some(fd), name.as_c_str(), UnlinkatFlags::NoRemoveDir)?
                    }
                    _ => {}
                }
            }
            Ok(())
        }

        fn file(&self, dir: RawFd, name: &CStr, st: &FileStat) -> nix::Result<()> {
            if self.app_uid.is_none() {
                // The app is the manager's own user: no one to take the file from.
                return fchmodat(Some(dir), name, file_mode(st), FchmodatFlags::FollowSymlink);
            }
            if !self.apps(st) {
                // The checkout's or a reused folder's: the manager's already.
                return Ok(());
            }
            let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
            let file = open_file(dir, name, flags, Mode::empty())?;
            let now = fstat(file.as_raw_fd())?;
            if now.st_ino != st.st_ino || now.st_dev != st.st_dev {
                return Err(Errno::EAGAIN);
            }
            if now.st_nlink > 1 {
                // Linked from elsewhere (a package store in the app's folder): taking it over
                // would take the other name too. The release gets its own copy.
                return self.replace_with_copy(dir, name, file, &now);
            }
            fchown(file.as_raw_fd(), Some(self.owner.0), Some(self.owner.1))?;
            fchmod(file.as_raw_fd(), file_mode(&now))
        }

        fn replace_with_copy(
            &self,
            dir: RawFd,
            name: &CStr,
            mut from: File,
            st: &FileStat,
        ) -> nix::Result<()> {
            let mut rnd = [0u8; 6];
            let _ = getrandom::getrandom(&mut rnd);
            let tmp = CString::new(format!(".hammer-copy-{}", hex::encode(rnd)))
                .map_err(|_| Errno::EINVAL)?;
            let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
            let mut to = open_file(dir, &tmp, flags, Mode::from_bits_truncate(0o600))?;
            let copied = std::io::copy(&mut from, &mut to)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
                .and_then(|_| fchmod(to.as_raw_fd(), file_mode(st)))
                .and_then(|_| renameat(Some(dir), tmp.as_c_str(), Some(dir), name));
            if copied.is_err() {
                let _ = unlinkat(Some(dir), tmp.as_c_str(), UnlinkatFlags::NoRemoveDir);
            }
            copied
        }
    }
}

/// Makes the finished folder `stage` the release `releases/<commit>`: one rename, or, when
/// that name exists (the commit's folder is in use), an atomic exchange of the two names (two
/// renames where the file system cannot exchange). Returns the folder it replaced, now under
/// a temporary name, for the caller to remove once nothing runs from it.
pub fn put_in_place(
    releases: &Releases,
    stage: &Path,
    commit: &str,
) -> Result<Option<PathBuf>, String> {
    let dest = releases.path(commit);
    let fail = |e: io::Error| format!("could not put the installed release in place: {e}");
    let replaced = if std::fs::symlink_metadata(&dest).is_err() {
        std::fs::rename(stage, &dest).map_err(fail)?;
        None
    } else {
        match exchange(stage, &dest) {
            Ok(()) => Some(stage.to_path_buf()),
            Err(_) => {
                let aside = releases.temp_path(commit).map_err(|e| e.to_string())?;
                std::fs::rename(&dest, &aside).map_err(fail)?;
                if let Err(e) = std::fs::rename(stage, &dest) {
                    let _ = std::fs::rename(&aside, &dest);
                    return Err(fail(e));
                }
                Some(aside)
            }
        }
    };
    if let Ok(dir) = std::fs::File::open(releases.dir()) {
        let _ = dir.sync_all();
    }
    Ok(replaced)
}

/// Swaps two paths atomically (`renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The commits that have a release folder now.
pub fn release_names(releases: &Releases) -> std::collections::BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(releases.dir()) else {
        return Default::default();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| super::releases::is_commit_id(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: KeyHash = [1; 32];
    const B: KeyHash = [2; 32];

    fn side(key: Option<KeyHash>, has_dir: bool) -> RunningSide {
        RunningSide { key, has_dir }
    }

    #[test]
    fn a_folder_is_reused_only_when_its_key_file_is_unchanged_and_the_running_release_has_it() {
        assert_eq!(
            choose_reuse(Some(&side(Some(A), true)), Some(&A)),
            ReuseChoice::Reuse
        );
        assert_eq!(
            choose_reuse(Some(&side(Some(A), true)), Some(&B)),
            ReuseChoice::KeyChanged
        );
        assert_eq!(
            choose_reuse(Some(&side(None, true)), Some(&A)),
            ReuseChoice::KeyChanged
        );
        assert_eq!(
            choose_reuse(Some(&side(Some(A), false)), Some(&A)),
            ReuseChoice::NotInRunning
        );
        assert_eq!(
            choose_reuse(Some(&side(Some(A), true)), None),
            ReuseChoice::NoKeyFile
        );
        assert_eq!(choose_reuse(None, Some(&A)), ReuseChoice::NoRunningRelease);
    }

    #[test]
    fn the_install_starts_from_a_copy_only_when_the_commit_is_in_use() {
        assert_eq!(base_for("c", Some("a"), Some("b")), Base::FreshCheckout);
        assert_eq!(base_for("c", None, None), Base::FreshCheckout);
        assert_eq!(base_for("a", Some("a"), Some("b")), Base::CopyOfInUse);
        assert_eq!(base_for("b", Some("a"), Some("b")), Base::CopyOfInUse);
    }

    #[test]
    fn an_install_cut_short_runs_once_more_then_fails_the_deployment() {
        assert_eq!(after_crash(1, "abc"), AfterCrash::Redo { attempt: 2 });
        let AfterCrash::Fail(reason) = after_crash(MAX_ATTEMPTS, "0123456789abcdef") else {
            panic!("a second cut-short install must fail");
        };
        assert!(reason.contains("0123456789ab "), "{reason}");
        assert!(reason.contains("deploy again"), "{reason}");
    }

    #[test]
    fn a_path_through_a_link_is_not_inside_the_release() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir(root.join("web")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("up")).unwrap();
        std::fs::write(root.join("web/lock"), "x").unwrap();
        assert_eq!(inside(root, "web/lock"), Some(root.join("web/lock")));
        assert_eq!(
            inside(root, "web/node_modules"),
            Some(root.join("web/node_modules"))
        );
        assert_eq!(inside(root, "up/passwd"), None);
        assert_eq!(inside(root, "up"), None);
        assert_eq!(inside(root, "missing/x"), None);
        assert_eq!(inside(root, "web/lock/x"), None);
        assert!(key_hash(root, "web/lock").is_some());
        assert_eq!(key_hash(root, "up/passwd"), None);
        assert_eq!(key_hash(root, "web"), None);
    }

    #[test]
    fn reuse_copies_the_running_folder_and_leaves_it_intact() {
        let tmp = tempfile::tempdir().unwrap();
        let (running, stage) = (tmp.path().join("running"), tmp.path().join("stage"));
        for dir in [&running, &stage] {
            std::fs::create_dir_all(dir.join("node_modules/left-pad")).unwrap();
            std::fs::write(dir.join("package-lock.json"), "v1").unwrap();
        }
        std::fs::write(running.join("node_modules/left-pad/index.js"), "pad").unwrap();
        std::os::unix::fs::symlink("left-pad", running.join("node_modules/alias")).unwrap();
        std::fs::write(stage.join("node_modules/stale"), "old").unwrap();
        let step = InstallStep {
            command: "true".into(),
            timeout_secs: 5,
            reuse: vec![
                hammer_protocol::parse_reuse("node_modules:package-lock.json").unwrap(),
                hammer_protocol::parse_reuse("vendor:composer.lock").unwrap(),
            ],
        };
        let lines = reuse(&stage, Some((&running, "abc")), &step, false);
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("node_modules: reused from abc"),
            "{lines:?}"
        );
        assert!(lines[1].contains("vendor: not reused"), "{lines:?}");
        let copied = stage.join("node_modules/left-pad/index.js");
        assert_eq!(std::fs::read_to_string(&copied).unwrap(), "pad");
        assert!(!stage.join("node_modules/stale").exists());
        assert_eq!(
            std::fs::read_link(stage.join("node_modules/alias")).unwrap(),
            Path::new("left-pad")
        );
        // A copy: writing it leaves the running release's file as it was.
        std::fs::write(&copied, "changed").unwrap();
        let original = running.join("node_modules/left-pad/index.js");
        assert_eq!(std::fs::read_to_string(original).unwrap(), "pad");

        // The key file changed: the checkout's folder stays, nothing is copied.
        std::fs::write(stage.join("package-lock.json"), "v2").unwrap();
        std::fs::remove_dir_all(stage.join("node_modules")).unwrap();
        let lines = reuse(&stage, Some((&running, "abc")), &step, false);
        assert_eq!(
            lines[0],
            "node_modules: not reused (package-lock.json changed)"
        );
        assert!(!stage.join("node_modules").exists());
    }

    #[test]
    fn copy_tree_links_files_when_asked() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::write(src.join("a/b/f"), "x").unwrap();
        assert_eq!(
            copy_tree(&src, &tmp.path().join("linked"), true).unwrap(),
            1
        );
        assert_eq!(std::fs::metadata(src.join("a/b/f")).unwrap().nlink(), 2);
        assert_eq!(
            copy_tree(&src, &tmp.path().join("copied"), false).unwrap(),
            1
        );
        assert_eq!(std::fs::metadata(src.join("a/b/f")).unwrap().nlink(), 2);
    }

    #[test]
    fn seal_sets_the_modes_of_a_release_without_following_links() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let stage = tmp.path().join("stage");
        std::fs::create_dir_all(stage.join("bin")).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "secret").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&outside, stage.join("bin/link")).unwrap();
        std::fs::write(stage.join("bin/tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            stage.join("bin/tool"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::write(stage.join("data"), "x").unwrap();
        std::fs::set_permissions(stage.join("data"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::set_permissions(stage.join("bin"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        seal(&stage, None).unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&stage.join("bin")), 0o755);
        assert_eq!(mode(&stage.join("bin/tool")), 0o755);
        assert_eq!(mode(&stage.join("data")), 0o644);
        assert_eq!(mode(&outside), 0o600, "a link is not followed");
    }

    #[test]
    fn put_in_place_renames_or_exchanges() {
        let tmp = tempfile::tempdir().unwrap();
        let releases = Releases::new(tmp.path());
        let commit = "a".repeat(40);
        let stage = releases.temp_path(&commit).unwrap();
        std::fs::create_dir(&stage).unwrap();
        std::fs::write(stage.join("v"), "1").unwrap();
        assert_eq!(put_in_place(&releases, &stage, &commit).unwrap(), None);
        assert!(!stage.exists());
        let stage = releases.temp_path(&commit).unwrap();
        std::fs::create_dir(&stage).unwrap();
        std::fs::write(stage.join("v"), "2").unwrap();
        let old = put_in_place(&releases, &stage, &commit).unwrap().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p.join("v")).unwrap();
        assert_eq!(read(&releases.path(&commit)), "2");
        assert_eq!(read(&old), "1");
        releases.remove_temps();
        assert!(!old.exists());
    }
}
