//! `hammer setup --full-history`: the release gets the history as well, as a `.git` of its
//! own, so that an app can run `git describe` or `git log` in its folder.
//!
//! The repository is made in the release folder before it is installed: `.git` is a new
//! repository into which the deployed commit and its whole history are fetched from the
//! manager's mirror (libgit2's local transport, no network), `HEAD` detached at the commit and
//! the index read from its tree, so `git status` in the release is clean. It holds a copy of
//! the history (the mirror stays private to the manager, 0700), is readable by the app like
//! every release file, and goes with the release when it is pruned. Submodules' folders get no
//! `.git`. Without `--full-history` a release has no `.git` at all.

use super::GitError;
use git2::{Oid, Repository};
use std::path::Path;

/// The mirror's ref naming the commit while it is fetched into a release.
const HISTORY_REF: &str = "refs/hammer/release-history";

/// Makes `release/.git` hold `oid` and its history, fetched from `mirror`.
pub fn give_history(mirror: &Repository, oid: Oid, release: &Path) -> Result<(), GitError> {
    let err = |e: git2::Error| GitError::Checkout {
        commit: oid.to_string(),
        message: format!(
            "cannot give the release its history (--full-history): {}",
            e.message()
        ),
    };
    mirror
        .reference(HISTORY_REF, oid, true, "history for a release")
        .map_err(err)?;
    let source = mirror.path().to_str().ok_or_else(|| GitError::Checkout {
        commit: oid.to_string(),
        message: format!(
            "the mirror's path {} is not UTF-8; move the manager's data dir",
            mirror.path().display()
        ),
    })?;
    let dst = Repository::init(release).map_err(err)?;
    let mut remote = dst.remote_anonymous(source).map_err(err)?;
    remote
        .fetch(&[format!("+{HISTORY_REF}:refs/heads/deployed")], None, None)
        .map_err(err)?;
    dst.set_head_detached(oid).map_err(err)?;
    let tree = dst.find_commit(oid).and_then(|c| c.tree()).map_err(err)?;
    let mut index = dst.index().map_err(err)?;
    index.read_tree(&tree).map_err(err)?;
    index.write().map_err(err)?;
    Ok(())
}
