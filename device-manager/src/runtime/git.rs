//! The git side: a bare mirror `repo.git` (init on first use, fetch after), resolving a ref or
//! pinned commit, and checking a commit out — submodules included — into a temporary folder
//! that [`super::releases::Releases::install`] renames into place.
//!
//! **What is fetched.** Only the ref being deployed (`refs/heads/X` and `refs/tags/X` for a
//! short name, the ref itself for a full name such as `refs/pull/7/head`, or a full commit
//! id), with a depth of 1 unless [`FetchRequest::full_history`] is set (`file://` repositories
//! are always fetched whole: libgit2's local transport has no shallow fetch). A pinned commit
//! that is not the ref's tip is then asked for by id, and at last with the ref's whole history.
//! A ref the server no longer advertises is deleted from the mirror, so it is never deployed
//! from a stale copy.
//!
//! **Submodules** are checked out recursively at the commits the superproject pins, each
//! from its own bare mirror under `repo.git/hammer-modules/`, with the same URL rule as the
//! repository ([`hammer_protocol::rules::parse_remote_url`]; `file://` only under a
//! repository that is itself on the device), the same credentials only for the same server
//! ([`hammer_protocol::rules::RemoteUrl::same_server`]), and relative URLs resolved against
//! the superproject's. See [`checkout`] for attributes, LFS and the files shared with the
//! previous release.
//!
//! **Transports** are the manager's own (decision 0020, [`transport`]): git2 is built without
//! OpenSSL and libssh2. `https://` and `http://` speak git's smart HTTP protocol over reqwest
//! and rustls (ring), trusting the system store plus `git_ca_file` of manager.toml
//! ([`FetchRequest::ca_file`]), with the HTTPS username + token sent as basic auth to the
//! repository's own server. `ssh://` and `user@host:path` run the system `ssh` program: an SSH
//! private key from [`GitCredentials`] and its known_hosts lines go to a private temporary
//! folder for that one connection, and ssh checks the host key strictly against those lines
//! (hashed lines and patterns work); without them the manager user's own ssh configuration
//! applies. `file://` and `git://` are libgit2's. No credentials: public and `file://`
//! repositories. Everything here blocks: call it from `spawn_blocking`. Messages never contain
//! secrets; URLs have their userinfo redacted.

pub mod checkout;
pub mod history;
pub mod packblob;
pub mod submodules;
pub mod transport;

use super::releases::{ReleaseError, Releases};
use git2::{AutotagOption, FetchOptions, Oid, Repository};
use hammer_protocol::rules::{parse_remote_url, RemoteScheme, RemoteUrl};
use hammer_protocol::GitCredentials;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Records (as a hash) which URL the mirror was fetched from.
const URL_KEY: &str = "hammer.urlsha256";
/// libgit2's depth that turns a shallow repository into a complete one.
const UNSHALLOW: i32 = i32::MAX;
/// Refspecs of a submodule whose pinned commit could not be fetched by id.
const ALL_BRANCHES_AND_TAGS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("bad repository URL {0:?}: {1}")]
    BadUrl(String, String),
    #[error("fetching {url} failed: {message}")]
    Fetch { url: String, message: String },
    #[error("ref {0:?} not found on the server (no such branch, tag or ref): push it, or deploy a ref that `git ls-remote` lists")]
    RefNotFound(String),
    #[error("commit {commit} is not on the server under {git_ref:?} (fetched by id and with the ref's whole history): push it, or deploy the ref again so that it resolves anew")]
    CommitNotFound { commit: String, git_ref: String },
    #[error("commit {0} is not the tip of a ref the server advertises, and the server does not send other commits by id: deploy the branch it is on (hammer deploy --ref BRANCH)")]
    CommitNotServed(String),
    #[error("checking out {commit} failed: {message}")]
    Checkout { commit: String, message: String },
    #[error("submodule {path} ({url}): {message}")]
    Submodule {
        path: String,
        url: String,
        message: String,
    },
    #[error("the repository uses Git LFS ({count} file(s) are LFS pointers, e.g. {example}) and the device manager does not fetch LFS objects: commit those files to git itself (`git lfs migrate export --include=PATTERN --everything`), or let the app download them at start")]
    Lfs { count: usize, example: String },
    #[error("local mirror {path}: {message}")]
    Mirror { path: String, message: String },
    #[error(transparent)]
    Release(#[from] ReleaseError),
}

/// What to fetch and check out.
#[derive(Debug, Clone, Default)]
pub struct FetchRequest {
    pub url: String,
    pub git_ref: String,
    /// A pinned commit: used instead of resolving `git_ref`.
    pub commit: Option<String>,
    pub credentials: Option<GitCredentials>,
    /// Fetch the ref's whole history instead of its tip (the setup's `history: full`).
    pub full_history: bool,
    /// Hard-link files unchanged since the running release instead of writing them again:
    /// only when the app runs as another user than the manager
    /// ([`super::install::may_link`]), so it cannot write into a file two releases share.
    pub share_unchanged: bool,
    /// A PEM file of extra CAs trusted for `https://` git servers, besides the system store
    /// (`git_ca_file` in manager.toml: a private git server).
    pub ca_file: Option<PathBuf>,
}

/// A remote and how to reach it.
pub(crate) struct Remote<'a> {
    pub url: &'a str,
    pub parsed: RemoteUrl,
    pub creds: Option<&'a GitCredentials>,
    pub ca_file: Option<&'a Path>,
}

impl Remote<'_> {
    /// The depth of a fetch: 1 (shallow) unless the whole history is wanted or the transport
    /// is local; [`UNSHALLOW`] when the whole history is wanted in a shallow mirror.
    fn depth(&self, repo: &Repository, full_history: bool) -> i32 {
        fetch_depth(
            self.parsed.scheme == RemoteScheme::File,
            full_history,
            repo.is_shallow(),
        )
    }
}

/// The fetch depth (0: everything) for a transport, a wish and the mirror's state.
pub fn fetch_depth(local: bool, full_history: bool, mirror_shallow: bool) -> i32 {
    match (local, full_history, mirror_shallow) {
        (true, _, _) => 0,
        (false, false, _) => 1,
        (false, true, true) => UNSHALLOW,
        (false, true, false) => 0,
    }
}

/// Fetches (unless a pinned commit is already present), resolves, and checks out into
/// `releases/<commit>` (reused when already there). Returns the commit id.
pub fn fetch_and_checkout(
    mirror: &Path,
    releases: &Releases,
    req: &FetchRequest,
) -> Result<String, GitError> {
    limit_pack_windows();
    let remote = Remote {
        url: &req.url,
        parsed: classify_url(&req.url)?,
        creds: req.credentials.as_ref(),
        ca_file: req.ca_file.as_deref(),
    };
    if let Some(warning) = remote.parsed.warning() {
        tracing::warn!(url = %redact_url(&req.url), "{warning}");
    }
    let repo = open_mirror(mirror, &req.url)?;
    let oid = fetch_commit(&repo, &remote, req)?;
    let commit = oid.to_string();
    if releases.exists(&commit) {
        return Ok(commit);
    }
    // Files unchanged since the running release are hard links to its files.
    let previous = releases
        .current()
        .filter(|_| req.share_unchanged)
        .and_then(|c| Oid::from_str(&c).ok().map(|oid| (releases.path(&c), oid)));
    let temp = releases.temp_path(&commit)?;
    let ctx = checkout::Context {
        main: &remote.parsed,
        creds: req.credentials.as_ref(),
        ca_file: req.ca_file.as_deref(),
        modules_dir: mirror.join("hammer-modules"),
        full_history: req.full_history,
    };
    let source = checkout::Source {
        repo: &repo,
        url: &req.url,
        parsed: &remote.parsed,
    };
    let prev = previous.as_ref().map(|(dir, oid)| (dir.as_path(), *oid));
    let done = checkout::checkout_commit(&source, oid, &temp, prev, &ctx, 0).and_then(|()| {
        if req.full_history {
            history::give_history(&repo, oid, &temp)
        } else {
            Ok(())
        }
    });
    if let Err(e) = done {
        let _ = std::fs::remove_dir_all(&temp);
        return Err(e);
    }
    releases.install(&temp, &commit)?;
    Ok(commit)
}

/// The subject of `commit` in the mirror, as a status event carries it
/// ([`hammer_protocol::commit_subject`]); `None` if the mirror cannot say.
pub fn commit_subject(mirror: &Path, commit: &str) -> Option<String> {
    let repo = Repository::open_bare(mirror).ok()?;
    let oid = Oid::from_str(commit).ok()?;
    let found = repo.find_commit(oid).ok()?;
    let message = String::from_utf8_lossy(found.message_bytes()).into_owned();
    hammer_protocol::commit_subject(&message)
}

/// libgit2 maps pack files in windows of 1 MiB, at most 8 MiB at a time (defaults: 1 GiB
/// windows, 8 GiB mapped on 64-bit). Mapped pack pages count in the manager's resident memory
/// while a big object is read; these limits took the peak of deploying a 100 MiB file from
/// 209 MiB to 117 MiB (BENCHMARKS.md, "Git").
pub const PACK_WINDOW: usize = 1 << 20;
/// See [`PACK_WINDOW`].
pub const PACK_MAPPED_LIMIT: usize = 8 << 20;

/// Sets [`PACK_WINDOW`] and [`PACK_MAPPED_LIMIT`] once, before the first git operation.
pub fn limit_pack_windows() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: these write libgit2 globals without a lock. They run once, before the
        // manager's first git operation (all of which run here, one deployment at a time), so
        // no other thread reads them meanwhile.
        unsafe {
            let _ = git2::opts::set_mwindow_size(PACK_WINDOW);
            let _ = git2::opts::set_mwindow_mapped_limit(PACK_MAPPED_LIMIT);
        }
    });
}

/// The local refs a ref name may be fetched into, in the order they win: a full ref name is
/// itself; a short name is a branch, then a tag.
pub fn ref_candidates(git_ref: &str) -> Vec<String> {
    if git_ref.starts_with("refs/") {
        vec![git_ref.to_string()]
    } else {
        vec![
            format!("refs/heads/{git_ref}"),
            format!("refs/tags/{git_ref}"),
        ]
    }
}

/// Fetches what `req` names into the mirror and answers its commit.
fn fetch_commit(repo: &Repository, remote: &Remote, req: &FetchRequest) -> Result<Oid, GitError> {
    let has = |oid: Oid| repo.find_commit(oid).is_ok();
    let pinned = match &req.commit {
        Some(c) => Some(
            Oid::from_str(c)
                .ok()
                .filter(|_| super::releases::is_commit_id(c))
                .ok_or_else(|| GitError::CommitNotFound {
                    commit: c.clone(),
                    git_ref: req.git_ref.clone(),
                })?,
        ),
        None => None,
    };
    // A full history is wanted, and the mirror is shallow: fetch even a pinned commit's ref.
    let deepen =
        req.full_history && repo.is_shallow() && remote.parsed.scheme != RemoteScheme::File;
    if let Some(pin) = pinned {
        if has(pin) && !deepen {
            return Ok(pin);
        }
    }
    let depth = remote.depth(repo, req.full_history);
    let candidates = ref_candidates(&req.git_ref);
    let specs: Vec<String> = candidates.iter().map(|r| format!("+{r}:{r}")).collect();
    let advertised = fetch(repo, remote, &specs, depth)?;
    // A candidate the server does not advertise (any more) must not resolve from the mirror.
    for name in candidates.iter().filter(|c| !advertised.contains(c)) {
        if let Ok(mut reference) = repo.find_reference(name) {
            let _ = reference.delete();
        }
    }
    let tip = candidates
        .iter()
        .filter(|c| advertised.contains(c))
        .find_map(|name| {
            let reference = repo.find_reference(name).ok()?;
            reference.peel_to_commit().ok().map(|c| c.id())
        });
    let Some(pin) = pinned else {
        if let Some(tip) = tip {
            return Ok(tip);
        }
        return resolve_commit_id(repo, remote, &req.git_ref, depth);
    };
    if has(pin) {
        return Ok(pin);
    }
    // Not the ref's tip (the branch moved on since the deployment was made): ask for it by id,
    // then for the ref's whole history.
    if fetch(repo, remote, &[pin.to_string()], depth).is_ok() && has(pin) {
        return Ok(pin);
    }
    if depth != 0 && tip.is_some() {
        fetch(repo, remote, &specs, UNSHALLOW)?;
        if has(pin) {
            return Ok(pin);
        }
    }
    Err(GitError::CommitNotFound {
        commit: pin.to_string(),
        git_ref: req.git_ref.clone(),
    })
}

/// A ref no server ref matched: a full commit id is fetched by id; an abbreviated one is
/// looked up in the mirror (what earlier deployments fetched).
fn resolve_commit_id(
    repo: &Repository,
    remote: &Remote,
    git_ref: &str,
    depth: i32,
) -> Result<Oid, GitError> {
    let not_found = || GitError::RefNotFound(git_ref.to_string());
    if super::releases::is_commit_id(git_ref) {
        let oid = Oid::from_str(git_ref).map_err(|_| not_found())?;
        if repo.find_commit(oid).is_err() {
            let _ = fetch(repo, remote, &[oid.to_string()], depth);
        }
        return repo
            .find_commit(oid)
            .map(|c| c.id())
            .map_err(|_| GitError::CommitNotServed(oid.to_string()));
    }
    let hex = git_ref.len() >= 7 && git_ref.bytes().all(|b| b.is_ascii_hexdigit());
    if hex {
        if let Ok(obj) = repo.revparse_single(git_ref) {
            if let Ok(c) = obj.peel_to_commit() {
                return Ok(c.id());
            }
        }
    }
    Err(not_found())
}

/// Makes sure `oid` is in `repo` (a submodule's mirror): fetched by id, else with every
/// branch and tag. The message of the last failure when it is not found.
pub(crate) fn ensure_commit(
    repo: &Repository,
    remote: &Remote,
    oid: Oid,
    full_history: bool,
) -> Result<(), String> {
    let has = |oid: Oid| repo.find_commit(oid).is_ok();
    if has(oid) {
        return Ok(());
    }
    let depth = remote.depth(repo, full_history);
    let mut last = match fetch(repo, remote, &[oid.to_string()], depth) {
        Ok(_) if has(oid) => return Ok(()),
        Ok(_) => None,
        Err(e) => Some(e),
    };
    let specs: Vec<String> = ALL_BRANCHES_AND_TAGS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let whole = if remote.parsed.scheme == RemoteScheme::File || !repo.is_shallow() {
        0
    } else {
        UNSHALLOW
    };
    match fetch(repo, remote, &specs, whole) {
        Ok(_) if has(oid) => return Ok(()),
        Ok(_) => {}
        Err(e) => last = Some(e),
    }
    Err(match last {
        Some(GitError::Fetch { message, .. }) => {
            format!("fetching commit {oid} failed: {message}")
        }
        _ => format!(
            "commit {oid} is not on its server (asked for by id and in every branch and tag): push it to the submodule's repository"
        ),
    })
}

/// Checks the URL by the one rule for remotes ([`parse_remote_url`], also the service's).
pub fn classify_url(url: &str) -> Result<RemoteUrl, GitError> {
    parse_remote_url(url).map_err(|e| GitError::BadUrl(redact_url(url), e.to_string()))
}

/// Replaces the userinfo of every `scheme://user:pass@host` in `text` with `***`.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Redacts URLs and any secret of `creds` that shows up in `text`.
pub fn redact(text: &str, creds: Option<&GitCredentials>) -> String {
    let mut out = redact_url(text);
    match creds {
        Some(GitCredentials::Https { token, .. }) if !token.is_empty() => {
            out = out.replace(token.as_str(), "***");
        }
        Some(GitCredentials::Ssh { private_key, .. }) if !private_key.is_empty() => {
            out = out.replace(private_key.as_str(), "***");
        }
        _ => {}
    }
    out
}

pub(crate) fn url_hash(url: &str) -> String {
    hex::encode(Sha256::digest(url.as_bytes()))
}

/// Opens the mirror, or (re)creates it when missing, broken or fetched from another URL.
pub(crate) fn open_mirror(path: &Path, url: &str) -> Result<Repository, GitError> {
    let want = url_hash(url);
    if let Ok(repo) = Repository::open_bare(path) {
        let same = repo
            .config()
            .and_then(|c| c.get_string(URL_KEY))
            .is_ok_and(|h| h == want);
        if same {
            return Ok(repo);
        }
        drop(repo);
        tracing::info!("repository URL changed: starting a new mirror");
    }
    let mirror_err = |e: &dyn std::fmt::Display| GitError::Mirror {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(|e| mirror_err(&e))?;
    }
    // Initialise under a temporary name so a crash never leaves a half-made `repo.git`.
    let temp = temp_sibling(path);
    let _ = std::fs::remove_dir_all(&temp);
    let repo = Repository::init_bare(&temp).map_err(|e| mirror_err(&e))?;
    repo.config()
        .and_then(|mut c| c.set_str(URL_KEY, &want))
        .map_err(|e| mirror_err(&e))?;
    drop(repo);
    std::fs::rename(&temp, path).map_err(|e| mirror_err(&e))?;
    Repository::open_bare(path).map_err(|e| mirror_err(&e))
}

fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Fetches `refspecs` at `depth` (0: everything; tags are not followed). Answers the names of
/// the refs the server advertised.
fn fetch(
    repo: &Repository,
    remote: &Remote,
    refspecs: &[String],
    depth: i32,
) -> Result<Vec<String>, GitError> {
    let failed = |message: &str| GitError::Fetch {
        url: redact_url(remote.url),
        message: redact(message, remote.creds),
    };
    transport::register().map_err(|e| failed(&e))?;
    // What the transport needs, for the git calls on this thread until `scope` drops.
    let scope = transport::enter(transport::FetchContext {
        creds: remote.creds.cloned(),
        ca_file: remote.ca_file.map(Path::to_path_buf),
    });
    let mut opts = FetchOptions::new();
    opts.download_tags(AutotagOption::None).depth(depth);
    let result = repo.remote_anonymous(remote.url).and_then(|mut r| {
        r.fetch(refspecs, Some(&mut opts), None)?;
        let names = r.list()?.iter().map(|h| h.name().to_string()).collect();
        Ok(names)
    });
    result.map_err(|e| match scope.problem() {
        Some(p) => failed(&p),
        None => failed(e.message()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo() {
        assert_eq!(
            redact_url("fetch https://bob:s3cret@example.com/x.git: 401"),
            "fetch https://***@example.com/x.git: 401"
        );
        assert_eq!(redact_url("ssh://git@h:22/r"), "ssh://***@h:22/r");
        assert_eq!(redact_url("no url here"), "no url here");
    }

    #[test]
    fn classifies_urls() {
        let kind = |u: &str| classify_url(u).ok().map(|p| (p.scheme, p.port));
        assert_eq!(
            kind("https://h/r.git"),
            Some((RemoteScheme::Https, Some(443)))
        );
        assert_eq!(
            kind("ssh://git@h:2222/r"),
            Some((RemoteScheme::Ssh, Some(2222)))
        );
        assert_eq!(
            kind("git@github.com:o/r.git"),
            Some((RemoteScheme::Ssh, Some(22)))
        );
        assert_eq!(kind("file:///tmp/r"), Some((RemoteScheme::File, None)));
        assert!(classify_url("").is_err());
        assert!(classify_url("ftp://h/r").is_err());
        assert!(classify_url("not a url").is_err());
    }

    #[test]
    fn a_short_ref_is_a_branch_then_a_tag_and_a_full_ref_itself() {
        assert_eq!(
            ref_candidates("main"),
            ["refs/heads/main", "refs/tags/main"]
        );
        assert_eq!(ref_candidates("refs/pull/7/head"), ["refs/pull/7/head"]);
        assert_eq!(ref_candidates("refs/tags/v1"), ["refs/tags/v1"]);
    }

    #[test]
    fn shallow_unless_local_or_full_history_is_wanted() {
        assert_eq!(fetch_depth(false, false, false), 1);
        assert_eq!(fetch_depth(false, false, true), 1);
        assert_eq!(fetch_depth(false, true, false), 0);
        assert_eq!(fetch_depth(false, true, true), UNSHALLOW);
        assert_eq!(fetch_depth(true, false, false), 0);
        assert_eq!(fetch_depth(true, true, true), 0);
    }
}
