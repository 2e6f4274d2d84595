//! The git side: a bare mirror `repo.git` (init on first use, fetch after), resolving a ref or
//! pinned commit, and checking a commit out into a temporary folder that
//! [`super::releases::Releases::install`] renames into place.
//!
//! Credentials come from [`GitCredentials`] through git2 callbacks: HTTPS user + token
//! (`userpass_plaintext`), or an SSH private key from memory with the server's host key
//! checked against the given known_hosts lines (plain `host` / `[host]:port` patterns; hashed
//! entries and wildcards are not supported, and an unknown or mismatching host is refused).
//! No credentials: public and `file://` repositories. Everything here blocks: call it from
//! `spawn_blocking`. Messages never contain secrets; URLs have their userinfo redacted.

use super::releases::{ReleaseError, Releases};
use git2::build::CheckoutBuilder;
use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, FetchOptions, FetchPrune, Oid,
    RemoteCallbacks, Repository,
};
use hammer_protocol::GitCredentials;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const REFSPECS: &[&str] = &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];
/// Records (as a hash) which URL the mirror was fetched from.
const URL_KEY: &str = "hammer.urlsha256";

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("bad repository URL {0:?}: {1}")]
    BadUrl(String, &'static str),
    #[error("fetching {url} failed: {message}")]
    Fetch { url: String, message: String },
    #[error("ref {0:?} not found in the repository (no such branch, tag or commit)")]
    RefNotFound(String),
    #[error("commit {0} not found in the repository")]
    CommitNotFound(String),
    #[error("checking out {commit} failed: {message}")]
    Checkout { commit: String, message: String },
    #[error("local mirror {path}: {message}")]
    Mirror { path: String, message: String },
    #[error(transparent)]
    Release(#[from] ReleaseError),
}

/// What to fetch and check out.
pub struct FetchRequest {
    pub url: String,
    pub git_ref: String,
    /// A pinned commit: used instead of resolving `git_ref`.
    pub commit: Option<String>,
    pub credentials: Option<GitCredentials>,
}

/// Fetches (unless a pinned commit is already present), resolves, and checks out into
/// `releases/<commit>` (reused when already there). Returns the commit id.
pub fn fetch_and_checkout(
    mirror: &Path,
    releases: &Releases,
    req: &FetchRequest,
) -> Result<String, GitError> {
    let kind = classify_url(&req.url)?;
    let repo = open_mirror(mirror, &req.url)?;
    let pinned = match &req.commit {
        Some(c) => Some(
            Oid::from_str(c)
                .ok()
                .filter(|_| super::releases::is_commit_id(c))
                .ok_or_else(|| GitError::CommitNotFound(c.clone()))?,
        ),
        None => None,
    };
    let have_pinned = pinned.is_some_and(|oid| repo.find_commit(oid).is_ok());
    if !have_pinned {
        fetch(&repo, &req.url, kind, req.credentials.as_ref())?;
    }
    let oid = match pinned {
        Some(oid) => {
            repo.find_commit(oid)
                .map_err(|_| GitError::CommitNotFound(oid.to_string()))?;
            oid
        }
        None => resolve(&repo, &req.git_ref)?,
    };
    let commit = oid.to_string();
    if releases.exists(&commit) {
        return Ok(commit);
    }
    let temp = releases.temp_path(&commit)?;
    if let Err(e) = checkout(&repo, oid, &temp) {
        let _ = std::fs::remove_dir_all(&temp);
        return Err(e);
    }
    releases.install(&temp, &commit)?;
    Ok(commit)
}

/// The kinds of repository URL accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlKind {
    Http,
    Ssh { port: u16 },
    Git,
    File,
}

/// Checks the URL's form (no network).
pub fn classify_url(url: &str) -> Result<UrlKind, GitError> {
    let bad = |why| GitError::BadUrl(redact_url(url), why);
    if url.trim().is_empty() {
        return Err(bad("it is empty"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains whitespace"));
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority = rest.split('/').next().unwrap_or("");
        let host_port = authority.rsplit('@').next().unwrap_or("");
        return match scheme {
            "https" | "http" | "git" if host_port.is_empty() => Err(bad("it has no host")),
            "https" | "http" => Ok(UrlKind::Http),
            "git" => Ok(UrlKind::Git),
            "ssh" | "git+ssh" | "ssh+git" => {
                let port = match host_port.rsplit_once(':') {
                    Some((_, p)) if !host_port.ends_with(']') => {
                        p.parse().map_err(|_| bad("its port is not a number"))?
                    }
                    _ => 22,
                };
                if host_port.is_empty() {
                    return Err(bad("it has no host"));
                }
                Ok(UrlKind::Ssh { port })
            }
            "file" => Ok(UrlKind::File),
            _ => Err(bad("the scheme is not one of https, http, ssh, git, file")),
        };
    }
    if url.starts_with('/') {
        return Ok(UrlKind::File);
    }
    // scp-style: [user@]host:path
    match url.split_once(':') {
        Some((host, path)) if !host.is_empty() && !host.contains('/') && !path.is_empty() => {
            Ok(UrlKind::Ssh { port: 22 })
        }
        _ => Err(bad("not a URL, scp-style address or absolute path")),
    }
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

fn url_hash(url: &str) -> String {
    hex::encode(Sha256::digest(url.as_bytes()))
}

/// Opens the mirror, or (re)creates it when missing, broken or fetched from another URL.
fn open_mirror(path: &Path, url: &str) -> Result<Repository, GitError> {
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

fn fetch(
    repo: &Repository,
    url: &str,
    kind: UrlKind,
    creds: Option<&GitCredentials>,
) -> Result<(), GitError> {
    let problem: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let mut callbacks = RemoteCallbacks::new();
    install_credentials(&mut callbacks, creds, problem.clone());
    install_host_check(&mut callbacks, creds, kind, problem.clone());
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks)
        .prune(FetchPrune::On)
        .download_tags(AutotagOption::All);
    let result = repo
        .remote_anonymous(url)
        .and_then(|mut remote| remote.fetch(REFSPECS, Some(&mut opts), None));
    result.map_err(|e| {
        let ours = problem.lock().ok().and_then(|p| p.clone());
        let message = match ours {
            Some(p) => p,
            None => e.message().to_string(),
        };
        GitError::Fetch {
            url: redact_url(url),
            message: redact(&message, creds),
        }
    })
}

fn set_problem(problem: &Mutex<Option<String>>, message: &str) -> git2::Error {
    if let Ok(mut p) = problem.lock() {
        p.get_or_insert_with(|| message.to_string());
    }
    git2::Error::from_str(message)
}

fn install_credentials<'a>(
    callbacks: &mut RemoteCallbacks<'a>,
    creds: Option<&'a GitCredentials>,
    problem: Arc<Mutex<Option<String>>>,
) {
    let mut plaintext_tries = 0;
    let mut key_tries = 0;
    callbacks.credentials(move |_url, user_from_url, allowed| match creds {
        Some(GitCredentials::Https { username, token }) => {
            if !allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
                return Err(set_problem(
                    &problem,
                    "the server does not accept username/token credentials",
                ));
            }
            plaintext_tries += 1;
            if plaintext_tries > 1 {
                return Err(set_problem(
                    &problem,
                    "authentication failed: the server rejected the username/token",
                ));
            }
            Cred::userpass_plaintext(username, token)
        }
        Some(GitCredentials::Ssh { private_key, .. }) => {
            let user = user_from_url.unwrap_or("git");
            if allowed.contains(CredentialType::USERNAME) {
                return Cred::username(user);
            }
            if !allowed.contains(CredentialType::SSH_KEY) {
                return Err(set_problem(
                    &problem,
                    "the server does not accept SSH key authentication",
                ));
            }
            key_tries += 1;
            if key_tries > 1 {
                return Err(set_problem(
                    &problem,
                    "authentication failed: the server rejected the SSH key",
                ));
            }
            Cred::ssh_key_from_memory(user, None, private_key, None)
                .map_err(|_| set_problem(&problem, "the SSH private key could not be loaded"))
        }
        None => Err(set_problem(
            &problem,
            "authentication required but no git credentials are configured",
        )),
    });
}

fn install_host_check<'a>(
    callbacks: &mut RemoteCallbacks<'a>,
    creds: Option<&'a GitCredentials>,
    kind: UrlKind,
    problem: Arc<Mutex<Option<String>>>,
) {
    callbacks.certificate_check(move |cert, host| {
        let Some(hostkey) = cert.as_hostkey() else {
            // TLS: the default certificate verification decides.
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        };
        let Some(GitCredentials::Ssh { known_hosts, .. }) = creds else {
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        };
        let port = match kind {
            UrlKind::Ssh { port } => port,
            _ => 22,
        };
        let Some(raw) = hostkey.hostkey() else {
            return Err(set_problem(
                &problem,
                "the SSH server's host key could not be read",
            ));
        };
        let key = base64(raw);
        if known_hosts_match(known_hosts, host, port, &key) {
            Ok(CertificateCheckStatus::CertificateOk)
        } else {
            let shown = if port == 22 {
                host.to_string()
            } else {
                format!("[{host}]:{port}")
            };
            Err(set_problem(
                &problem,
                &format!(
                    "host key verification failed: the host key of {shown} is not in the configured known_hosts (unknown host or changed key); refusing to connect"
                ),
            ))
        }
    });
}

/// Does a known_hosts line list `host` (on `port`) with this base64 key blob?
pub fn known_hosts_match(known_hosts: &str, host: &str, port: u16, key_b64: &str) -> bool {
    known_hosts.lines().any(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
            return false;
        }
        let mut fields = line.split_whitespace();
        let (Some(hosts), Some(_kind), Some(key)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        key == key_b64
            && hosts
                .split(',')
                .any(|p| host_pattern_matches(p, host, port))
    })
}

fn host_pattern_matches(pattern: &str, host: &str, port: u16) -> bool {
    if let Some(rest) = pattern.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once("]:") {
            return h.eq_ignore_ascii_case(host) && p.parse::<u16>().ok() == Some(port);
        }
        return false;
    }
    port == 22 && pattern.eq_ignore_ascii_case(host)
}

fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Resolves a branch, tag, full ref name or (abbreviated) commit id to a commit.
fn resolve(repo: &Repository, git_ref: &str) -> Result<Oid, GitError> {
    let not_found = || GitError::RefNotFound(git_ref.to_string());
    let candidates: Vec<String> = if git_ref.starts_with("refs/") {
        vec![git_ref.to_string()]
    } else {
        vec![
            format!("refs/heads/{git_ref}"),
            format!("refs/tags/{git_ref}"),
        ]
    };
    for name in &candidates {
        if let Ok(reference) = repo.find_reference(name) {
            return reference
                .peel_to_commit()
                .map(|c| c.id())
                .map_err(|_| not_found());
        }
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

fn checkout(repo: &Repository, oid: Oid, target: &Path) -> Result<(), GitError> {
    let err = |e: git2::Error| GitError::Checkout {
        commit: oid.to_string(),
        message: e.message().to_string(),
    };
    let commit = repo.find_commit(oid).map_err(err)?;
    let tree = commit.tree().map_err(err)?;
    std::fs::create_dir_all(target).map_err(|e| GitError::Checkout {
        commit: oid.to_string(),
        message: e.to_string(),
    })?;
    let mut builder = CheckoutBuilder::new();
    builder
        .target_dir(target)
        .force()
        .recreate_missing(true)
        .update_index(false);
    repo.checkout_tree(tree.as_object(), Some(&mut builder))
        .map_err(err)
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
        assert_eq!(classify_url("https://h/r.git").ok(), Some(UrlKind::Http));
        assert_eq!(
            classify_url("ssh://git@h:2222/r").ok(),
            Some(UrlKind::Ssh { port: 2222 })
        );
        assert_eq!(
            classify_url("git@github.com:o/r.git").ok(),
            Some(UrlKind::Ssh { port: 22 })
        );
        assert_eq!(classify_url("file:///tmp/r").ok(), Some(UrlKind::File));
        assert!(classify_url("").is_err());
        assert!(classify_url("ftp://h/r").is_err());
        assert!(classify_url("not a url").is_err());
    }

    #[test]
    fn base64_matches_known_values() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn matches_known_hosts_lines() {
        let kh =
            "# comment\n[127.0.0.1]:2222 ssh-ed25519 AAAAkey\nexample.com,10.0.0.1 ssh-rsa BBBB\n";
        assert!(known_hosts_match(kh, "127.0.0.1", 2222, "AAAAkey"));
        assert!(!known_hosts_match(kh, "127.0.0.1", 22, "AAAAkey"));
        assert!(!known_hosts_match(kh, "127.0.0.1", 2222, "BBBB"));
        assert!(known_hosts_match(kh, "10.0.0.1", 22, "BBBB"));
    }
}
