//! Checking a commit out into a release folder, with its submodules.
//!
//! - **Attributes.** The mirror is bare, so libgit2 would read no `.gitattributes` at all; the
//!   commit's tree is loaded into the mirror's index first, and libgit2's checkout then applies
//!   the commit's own `.gitattributes` as `git checkout` does (`eol=crlf`, `text=auto`, `-text`,
//!   `ident`; external filter drivers are not run).
//! - **LFS.** A file that `.gitattributes` gives `filter=lfs` and whose content is an LFS
//!   pointer fails the deployment with [`GitError::Lfs`], which says what to do (decision 13).
//! - **Shared files.** A regular file whose path, blob id and mode are the same as in the
//!   running release (and when every `.gitattributes` of both commits is the same, so the
//!   bytes written would be the same) is a hard link to the running release's file instead of
//!   a new copy — only when [`super::FetchRequest::share_unchanged`] says the app runs as
//!   another user: release files are the manager's, 0644/0755
//!   ([`crate::runtime::releases::make_readable`]), so that app cannot write into a file two
//!   releases share, and the previous release stays intact (decision 12).
//! - **Big files.** libgit2's checkout loads each blob whole into memory. A regular file of
//!   at least [`STREAM_MIN`] bytes that no attribute or `core.autocrlf` filters, and that is
//!   stored in a pack of the mirror, is left out of libgit2's checkout and written by the
//!   manager in 64 KiB pieces, its size and id checked ([`super::packblob`]): stored whole, it
//!   is inflated from the pack (decision 12); stored as a delta (a changed file fetched in a
//!   thin pack), the delta is applied in steps, its copies read by offset from the running
//!   release's file when that file has the base's id (checked first), else from the base
//!   rebuilt from the pack into a temporary file (decision 19). A loose object stays with
//!   libgit2.
//! - **Submodules** (gitlinks in the tree) are fetched into their own mirrors and checked out
//!   at the pinned commit, recursively, at most [`MAX_SUBMODULE_DEPTH`] levels deep.

use super::packblob::{self, Found, Location};
use super::submodules::{
    check_submodule_path, is_relative_url, parse_gitmodules, resolve_relative_url,
};
use super::{classify_url, ensure_commit, open_mirror, redact_url, url_hash, GitError, Remote};
use git2::build::CheckoutBuilder;
use git2::TreeWalkResult;
use git2::{
    AttrCheckFlags, AttrValue, FileMode, ObjectType, Odb, Oid, Repository, Tree, TreeWalkMode,
};
use hammer_protocol::rules::RemoteUrl;
use hammer_protocol::GitCredentials;
use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Submodules inside submodules, at most this deep.
pub const MAX_SUBMODULE_DEPTH: usize = 8;
/// The longest file examined as a possible LFS pointer (a pointer is about 130 bytes).
const LFS_POINTER_MAX: usize = 1024;
/// Regular files at least this big are written from the pack by [`packblob`] when they can be
/// (see the module's documentation); smaller ones cost libgit2 at most this much memory.
pub const STREAM_MIN: usize = 4 << 20;

/// What every repository of one release shares: where the credentials belong, where
/// submodule mirrors live, and whether whole histories are wanted.
pub struct Context<'a> {
    /// The deployment's repository: its credentials are used only on the same server.
    pub main: &'a RemoteUrl,
    pub creds: Option<&'a GitCredentials>,
    /// Extra CAs for https:// servers (any server: trust is not a secret).
    pub ca_file: Option<&'a Path>,
    pub modules_dir: PathBuf,
    pub full_history: bool,
}

/// One repository being checked out (the deployment's, or a submodule's).
pub struct Source<'a> {
    pub repo: &'a Repository,
    pub url: &'a str,
    pub parsed: &'a RemoteUrl,
}

/// Checks `oid` of `source` out into `target` (created), then its submodules. `previous`:
/// the running release's folder for this repository and the commit it holds.
pub fn checkout_commit(
    source: &Source,
    oid: Oid,
    target: &Path,
    previous: Option<(&Path, Oid)>,
    ctx: &Context,
    level: usize,
) -> Result<(), GitError> {
    let repo = source.repo;
    let commit_id = oid.to_string();
    let err = |message: String| GitError::Checkout {
        commit: commit_id.clone(),
        message,
    };
    let git_err = |e: git2::Error| err(e.message().to_string());
    let tree = repo
        .find_commit(oid)
        .and_then(|c| c.tree())
        .map_err(git_err)?;
    let entries = walk(&tree).map_err(err)?;

    // The commit's attributes, for the checkout's filters and the LFS check.
    let mut index = repo.index().map_err(git_err)?;
    index.read_tree(&tree).map_err(git_err)?;
    for link in entries.iter().filter(|e| e.kind == Kind::Gitlink) {
        index.remove_path(Path::new(&link.path)).map_err(git_err)?;
    }
    index.write().map_err(git_err)?;

    let pointers = lfs_pointers(repo, &entries).map_err(git_err)?;
    if let Some(example) = pointers.first() {
        return Err(GitError::Lfs {
            count: pointers.len(),
            example: example.clone(),
        });
    }

    let prev_tree = previous.and_then(|(dir, prev)| {
        let tree = repo.find_commit(prev).and_then(|c| c.tree()).ok()?;
        Some((dir, tree))
    });
    let shareable = prev_tree.as_ref().and_then(|(dir, prev)| {
        let same_attrs = attributes_files(&entries) == attributes_files(&walk(prev).ok()?);
        same_attrs.then_some((*dir, prev))
    });
    // The tree to write: without the files that are linked from the running release, and
    // without the big files written from the pack.
    let mut shared = Vec::new();
    let mut streamed = Vec::new();
    let odb = repo.odb().map_err(git_err)?;
    let big = big_files(repo, &odb, &entries).map_err(git_err)?;
    // Trees made here live in memory only (they are dropped with the repository handle).
    let _mempack = odb.add_new_mempack_backend(1000).map_err(git_err)?;
    let prev_arg = shareable.map(|(dir, prev)| (prev, dir));
    let mut out = Stripped {
        shared: &mut shared,
        big: &big,
        streamed: &mut streamed,
    };
    let write_tree = match strip(repo, &tree, prev_arg, Path::new(""), &mut out).map_err(git_err)? {
        Some(stripped) => repo.find_tree(stripped).map_err(git_err)?,
        None => tree.clone(),
    };

    std::fs::create_dir_all(target).map_err(|e| err(e.to_string()))?;
    let mut builder = CheckoutBuilder::new();
    builder
        .target_dir(target)
        .force()
        .recreate_missing(true)
        .update_index(false);
    repo.checkout_tree(write_tree.as_object(), Some(&mut builder))
        .map_err(git_err)?;
    // Bases of big deltas that the running release holds (checked by their id before use).
    let release_files: HashMap<Oid, PathBuf> = match &prev_tree {
        Some((dir, prev)) if big.values().any(|f| f.delta) => walk(prev)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| (e.id, dir.join(&e.path)))
            .collect(),
        _ => HashMap::new(),
    };
    let known = |id: &[u8]| {
        let id = Oid::from_bytes(id).ok()?;
        release_files.get(&id).cloned()
    };
    let objects = repo.path().join("objects");
    for path in &streamed {
        if let Some(file) = big.get(path) {
            write_from_pack(file, &objects, &known, &target.join(path))
                .map_err(|e| err(format!("writing {} from the pack: {e}", path.display())))?;
        }
    }
    if !streamed.is_empty() {
        tracing::debug!(files = streamed.len(), "big files written from the pack");
    }
    if let Some((dir, _)) = shareable {
        for path in &shared {
            link_or_copy(&dir.join(path), &target.join(path))
                .map_err(|e| err(format!("sharing {}: {e}", path.display())))?;
        }
    }
    if !shared.is_empty() {
        tracing::debug!(
            files = shared.len(),
            "files shared with the running release"
        );
    }

    let gitlinks: Vec<&Entry> = entries.iter().filter(|e| e.kind == Kind::Gitlink).collect();
    if gitlinks.is_empty() {
        return Ok(());
    }
    if level >= MAX_SUBMODULE_DEPTH {
        return Err(err(format!(
            "submodules are nested more than {MAX_SUBMODULE_DEPTH} levels deep"
        )));
    }
    let modules = read_gitmodules(repo, &entries).map_err(err)?;
    for link in gitlinks {
        let prev_sub = prev_tree.as_ref().and_then(|(dir, prev)| {
            let e = prev.get_path(Path::new(&link.path)).ok()?;
            (e.filemode() == i32::from(FileMode::Commit)).then(|| (dir.join(&link.path), e.id()))
        });
        let prev_sub = prev_sub.as_ref().map(|(d, o)| (d.as_path(), *o));
        submodule(source, link, &modules, target, prev_sub, ctx, level)?;
    }
    Ok(())
}

/// Fetches and checks out one submodule.
fn submodule(
    source: &Source,
    link: &Entry,
    modules: &[super::submodules::ModuleEntry],
    target: &Path,
    previous: Option<(&Path, Oid)>,
    ctx: &Context,
    level: usize,
) -> Result<(), GitError> {
    let fail = |url: &str, message: String| GitError::Submodule {
        path: link.path.clone(),
        url: redact_url(url),
        message,
    };
    let entry = modules
        .iter()
        .find(|m| m.path.as_deref() == Some(link.path.as_str()))
        .ok_or_else(|| {
            fail(
                "-",
                "it has no entry in .gitmodules: add one (git submodule add URL PATH)".into(),
            )
        })?;
    let url = entry
        .url
        .as_deref()
        .ok_or_else(|| fail("-", "its .gitmodules entry has no url".into()))?;
    let url = if is_relative_url(url) {
        resolve_relative_url(source.url, url).map_err(|m| fail(url, m))?
    } else {
        url.to_string()
    };
    let parsed = classify_url(&url).map_err(|e| fail(&url, e.to_string()))?;
    if !source.parsed.allows_submodule(&parsed) {
        return Err(fail(
            &url,
            "a file:// submodule of a repository fetched over the network is refused (it would read the device's own files): give it a network URL".into(),
        ));
    }
    if let Some(warning) = parsed.warning() {
        tracing::warn!(submodule = %link.path, url = %redact_url(&url), "{warning}");
    }
    let creds = ctx.main.same_server(&parsed).then_some(ctx.creds).flatten();
    let mirror = ctx
        .modules_dir
        .join(format!("{}.git", &url_hash(&url)[..32]));
    std::fs::create_dir_all(&ctx.modules_dir).map_err(|e| fail(&url, e.to_string()))?;
    let repo = open_mirror(&mirror, &url).map_err(|e| fail(&url, e.to_string()))?;
    let remote = Remote {
        url: &url,
        parsed: parsed.clone(),
        creds,
        ca_file: ctx.ca_file,
    };
    ensure_commit(&repo, &remote, link.id, ctx.full_history).map_err(|m| fail(&url, m))?;
    let sub_source = Source {
        repo: &repo,
        url: &url,
        parsed: &parsed,
    };
    let dir = target.join(&link.path);
    checkout_commit(&sub_source, link.id, &dir, previous, ctx, level + 1).map_err(|e| match e {
        GitError::Submodule { .. } => e,
        other => fail(&url, other.to_string()),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Gitlink,
    Other,
}

/// One entry of a tree, by its full path.
#[derive(Debug)]
struct Entry {
    path: String,
    id: Oid,
    kind: Kind,
    executable: bool,
}

/// Every blob and gitlink of a tree. Names that could leave the folder are refused (libgit2's
/// checkout refuses them too; this walk's paths are also used for links and submodules).
fn walk(tree: &Tree) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut bad = None;
    let result = tree.walk(TreeWalkMode::PreOrder, |root, e| {
        let Some(name) = e.name().filter(|n| safe_name(n)) else {
            bad = Some(format!("{root}{}", String::from_utf8_lossy(e.name_bytes())));
            return TreeWalkResult::Abort;
        };
        let kind = match (e.kind(), e.filemode()) {
            (Some(ObjectType::Commit), _) => Kind::Gitlink,
            (Some(ObjectType::Blob), m) if m == 0o100644 || m == 0o100755 => Kind::File,
            _ => Kind::Other,
        };
        if kind != Kind::Other || e.kind() == Some(ObjectType::Blob) {
            out.push(Entry {
                path: format!("{root}{name}"),
                id: e.id(),
                kind,
                executable: e.filemode() == 0o100755,
            });
        }
        TreeWalkResult::Ok
    });
    if let Some(name) = bad {
        return Err(format!(
            "the tree holds a path that is not allowed in a checkout: {name:?}"
        ));
    }
    result.map_err(|e| e.message().to_string())?;
    Ok(out)
}

/// A tree entry name that is safe to write: not empty, `.`, `..` or `.git`, no `/` or NUL.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.eq_ignore_ascii_case(".git")
        && !name.contains(['/', '\0', '\\'])
}

/// The `.gitattributes` files of a tree (path and blob id), sorted.
fn attributes_files(entries: &[Entry]) -> Vec<(String, Oid)> {
    let mut files: Vec<(String, Oid)> = entries
        .iter()
        .filter(|e| e.path == ".gitattributes" || e.path.ends_with("/.gitattributes"))
        .map(|e| (e.path.clone(), e.id))
        .collect();
    files.sort();
    files
}

/// A big file that can be written from its pack.
#[derive(Debug)]
struct BigFile {
    id: Oid,
    executable: bool,
    location: Location,
    /// Stored as a delta: rebuilt by streaming ([`packblob::write_delta_blob`]).
    delta: bool,
}

/// The regular files of at least [`STREAM_MIN`] bytes, stored in a pack (whole or as a
/// delta), whose bytes
/// libgit2 would write unchanged: no `filter`, `ident`, `eol`, `text` (other than `-text`)
/// or `crlf` (other than `-crlf`) attribute, and no `core.autocrlf = true` when neither
/// `text` nor `crlf` is given. A pack or index this cannot read leaves the file to libgit2.
fn big_files(
    repo: &Repository,
    odb: &Odb,
    entries: &[Entry],
) -> Result<HashMap<PathBuf, BigFile>, git2::Error> {
    let mut found = HashMap::new();
    let mut autocrlf = None;
    let objects = repo.path().join("objects");
    for e in entries.iter().filter(|e| e.kind == Kind::File) {
        let (size, _) = odb.read_header(e.id)?;
        if size < STREAM_MIN {
            continue;
        }
        let path = Path::new(&e.path);
        // Unspecified, false (`-attr`), or anything else.
        let attr = |name: &str| -> Result<Option<bool>, git2::Error> {
            let value = repo.get_attr_bytes(path, name, AttrCheckFlags::INDEX_ONLY)?;
            Ok(match AttrValue::from_bytes(value) {
                AttrValue::Unspecified => None,
                AttrValue::False => Some(false),
                _ => Some(true),
            })
        };
        let text = attr("text")?;
        let crlf = attr("crlf")?;
        let unfiltered = attr("filter")?.is_none()
            && attr("ident")? != Some(true)
            && attr("eol")?.is_none()
            && text != Some(true)
            && crlf != Some(true);
        if !unfiltered {
            continue;
        }
        if text.is_none() && crlf.is_none() {
            let converts = *autocrlf.get_or_insert_with(|| {
                repo.config()
                    .and_then(|c| c.get_bool("core.autocrlf"))
                    .unwrap_or(false)
            });
            if converts {
                continue;
            }
        }
        match packblob::locate(&objects, e.id.as_bytes()) {
            Ok(Found::Whole(location)) if location.size == size as u64 => {
                found.insert(
                    PathBuf::from(&e.path),
                    BigFile {
                        id: e.id,
                        executable: e.executable,
                        location,
                        delta: false,
                    },
                );
            }
            Ok(Found::Delta(location)) if location.size == size as u64 => {
                found.insert(
                    PathBuf::from(&e.path),
                    BigFile {
                        id: e.id,
                        executable: e.executable,
                        location,
                        delta: true,
                    },
                );
            }
            Ok(_) => {}
            Err(why) => tracing::debug!(path = %e.path, %why, "left to libgit2"),
        }
    }
    Ok(found)
}

/// Writes a big file from its pack (mode 0755 or 0644, like libgit2; created, never
/// overwritten), or removes what was written on an error. A delta's base is looked up in
/// `known` (the running release's files by blob id), else rebuilt in `objects`.
fn write_from_pack(
    file: &BigFile,
    objects: &Path,
    known: &dyn Fn(&[u8]) -> Option<PathBuf>,
    to: &Path,
) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| e.to_string())?;
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if file.executable { 0o755 } else { 0o644 })
        .open(to)
        .map_err(|e| e.to_string())?;
    let written = if file.delta {
        let mut buffered = std::io::BufWriter::with_capacity(64 * 1024, &mut out);
        packblob::write_delta_blob(
            objects,
            &file.location,
            file.id.as_bytes(),
            known,
            &mut buffered,
        )
        .and_then(|()| {
            std::io::Write::flush(&mut buffered).map_err(|source| packblob::PackBlobError::Io {
                path: to.to_path_buf(),
                source,
            })
        })
    } else {
        packblob::write_blob(&file.location, file.id.as_bytes(), &mut out)
    };
    drop(out);
    written.map_err(|e| {
        let _ = std::fs::remove_file(to);
        e.to_string()
    })
}

/// What [`strip`] takes out of a tree.
struct Stripped<'a> {
    /// Out: files hard-linked from the running release.
    shared: &'a mut Vec<PathBuf>,
    /// In: the big files that can be written from their pack ([`big_files`]).
    big: &'a HashMap<PathBuf, BigFile>,
    /// Out: those of `big` that are not shared.
    streamed: &'a mut Vec<PathBuf>,
}

/// A copy of `tree` for libgit2 to write: without gitlinks (submodules are checked out
/// here, and libgit2 refuses them in a bare repository), without the regular files that
/// `prev` (the running release's tree and folder) has at the same path with the same blob id
/// and mode, as a regular file on disk (their paths go to `out.shared`), and without the
/// other files of `out.big` (to `out.streamed`). `None`: nothing removed.
fn strip(
    repo: &Repository,
    tree: &Tree,
    prev: Option<(&Tree, &Path)>,
    prefix: &Path,
    out: &mut Stripped,
) -> Result<Option<Oid>, git2::Error> {
    let mut builder = None;
    for entry in tree.iter() {
        let Some(name) = entry.name().filter(|n| safe_name(n)) else {
            continue;
        };
        let path = prefix.join(name);
        let old = prev.and_then(|(t, _)| t.get_name(name));
        let mode = entry.filemode();
        let replacement = match entry.kind() {
            Some(ObjectType::Commit) => None,
            Some(ObjectType::Blob) if mode == 0o100644 || mode == 0o100755 => {
                let share = match (&old, prev) {
                    (Some(old), Some((_, dir))) => {
                        old.id() == entry.id()
                            && old.filemode() == mode
                            && std::fs::symlink_metadata(dir.join(&path))
                                .is_ok_and(|m| m.file_type().is_file())
                    }
                    _ => false,
                };
                if share {
                    out.shared.push(path);
                } else if out.big.contains_key(&path) {
                    out.streamed.push(path);
                } else {
                    continue;
                }
                None
            }
            Some(ObjectType::Tree) => {
                let sub = repo.find_tree(entry.id())?;
                let old_sub = old
                    .filter(|o| o.kind() == Some(ObjectType::Tree))
                    .and_then(|o| repo.find_tree(o.id()).ok());
                let sub_prev = match (&old_sub, prev) {
                    (Some(t), Some((_, dir))) => Some((t, dir)),
                    _ => None,
                };
                match strip(repo, &sub, sub_prev, &path, out)? {
                    Some(stripped) => Some(stripped),
                    None => continue,
                }
            }
            _ => continue,
        };
        let b = match &mut builder {
            Some(b) => b,
            None => builder.insert(repo.treebuilder(Some(tree))?),
        };
        match replacement {
            None => b.remove(name)?,
            Some(oid) => {
                b.insert(name, oid, 0o040000)?;
            }
        }
    }
    builder.map(|b| b.write()).transpose()
}

/// Hard-links `from` (the running release's file) to `to`, or copies it when a link cannot be
/// made (another file system).
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(_) => std::fs::copy(from, to).map(|_| ()),
    }
}

/// Paths whose attributes say `filter=lfs` and whose content is an LFS pointer.
fn lfs_pointers(repo: &Repository, entries: &[Entry]) -> Result<Vec<String>, git2::Error> {
    // Only a repository whose .gitattributes mention lfs at all is looked at more closely.
    let mentions = attributes_files(entries).iter().any(|(_, id)| {
        repo.find_blob(*id)
            .is_ok_and(|b| b.content().windows(10).any(|w| w == b"filter=lfs"))
    });
    if !mentions {
        return Ok(Vec::new());
    }
    let odb = repo.odb()?;
    let mut found = Vec::new();
    for e in entries.iter().filter(|e| e.kind == Kind::File) {
        let lfs = repo
            .get_attr(Path::new(&e.path), "filter", AttrCheckFlags::INDEX_ONLY)?
            .is_some_and(|v| v == "lfs");
        if !lfs {
            continue;
        }
        let (size, _) = odb.read_header(e.id)?;
        if size > LFS_POINTER_MAX {
            continue;
        }
        if is_lfs_pointer(repo.find_blob(e.id)?.content()) {
            found.push(e.path.clone());
        }
    }
    Ok(found)
}

/// Is this the content of a Git LFS pointer file (spec v1)?
pub fn is_lfs_pointer(content: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(content) else {
        return false;
    };
    content.len() <= LFS_POINTER_MAX
        && (text.starts_with("version https://git-lfs.github.com/spec/v1\n")
            || text.starts_with("version https://hawser.github.com/spec/v1\n"))
        && text.lines().any(|l| l.starts_with("oid sha256:"))
        && text.lines().any(|l| l.starts_with("size "))
}

/// The `.gitmodules` of the tree, its paths checked.
fn read_gitmodules(
    repo: &Repository,
    entries: &[Entry],
) -> Result<Vec<super::submodules::ModuleEntry>, String> {
    let Some(file) = entries.iter().find(|e| e.path == ".gitmodules") else {
        return Err(
            "the tree has submodules but no .gitmodules: add the submodules with git submodule add"
                .into(),
        );
    };
    let blob = repo
        .find_blob(file.id)
        .map_err(|e| e.message().to_string())?;
    let text = String::from_utf8_lossy(blob.content());
    let modules = parse_gitmodules(&text)?;
    for m in &modules {
        if let Some(path) = &m.path {
            check_submodule_path(path).map_err(|why| format!("submodule {:?}: {why}", m.name))?;
        }
    }
    Ok(modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lfs_pointers_are_recognised_and_other_content_is_not() {
        let pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n";
        assert!(is_lfs_pointer(pointer));
        assert!(!is_lfs_pointer(
            b"version https://git-lfs.github.com/spec/v1\n"
        ));
        assert!(!is_lfs_pointer(b"hello\n"));
        assert!(!is_lfs_pointer(&[0xff, 0xfe, 0x00]));
        let mut long = pointer.to_vec();
        long.extend(std::iter::repeat_n(b'x', 2000));
        assert!(!is_lfs_pointer(&long));
    }

    #[test]
    fn names_that_would_leave_the_folder_are_not_safe() {
        for ok in ["a", ".gitattributes", "a.git", "..a"] {
            assert!(safe_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".git", ".GIT", "a/b", "a\\b", "a\0"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
    }
}
