//! The git side against real repositories made by the `git` CLI: submodules (nested, updated
//! between releases, over HTTP with credentials, hostile or missing), lean mirrors (shallow vs
//! whole history, pull refs and tags), files shared between releases, LFS pointers,
//! `.gitattributes` line endings, and the one rule for repository URLs.

use crate::runtime_support::git_http::http_git_server;
use crate::runtime_support::*;
use hammer_manager::runtime::git::{self, FetchRequest, GitError};
use hammer_manager::runtime::releases::Releases;
use hammer_protocol::GitCredentials;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A temp dir with a mirror path and an app dir.
struct Place {
    tmp: tempfile::TempDir,
}

impl Place {
    fn new() -> Place {
        Place {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
    fn mirror(&self) -> PathBuf {
        self.path("data/repo.git")
    }
    fn releases(&self) -> Releases {
        Releases::new(&self.path("apps"))
    }
    /// Fetches and checks out `git_ref` of `url` and makes it `current`.
    fn deploy(&self, url: &str, git_ref: &str) -> Result<String, GitError> {
        self.deploy_with(FetchRequest {
            url: url.into(),
            git_ref: git_ref.into(),
            share_unchanged: true,
            ..FetchRequest::default()
        })
    }
    fn deploy_with(&self, req: FetchRequest) -> Result<String, GitError> {
        std::fs::create_dir_all(self.path("data")).unwrap();
        let commit = git::fetch_and_checkout(&self.mirror(), &self.releases(), &req)?;
        self.releases().set_current(&commit).unwrap();
        Ok(commit)
    }
    fn release(&self, commit: &str) -> PathBuf {
        self.releases().path(commit)
    }
}

fn write(dir: &Path, rel: &str, content: &[u8]) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn commit_all(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `git submodule add` of a local repository (file transport allowed for the test only).
fn submodule_add(dir: &Path, url: &str, path: &str) {
    git(
        dir,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            url,
            path,
        ],
    );
}

fn bump_submodule(dir: &Path, path: &str) {
    let sub = dir.join(path);
    git(
        &sub,
        &[
            "-c",
            "protocol.file.allow=always",
            "pull",
            "-q",
            "origin",
            "main",
        ],
    );
}

#[test]
fn nested_submodules_are_checked_out_at_their_pinned_commits_and_follow_an_update() {
    let p = Place::new();
    let deep = Repo::new(p.path("deep"));
    write(&deep.dir, "deep.txt", b"deep v1\n");
    commit_all(&deep.dir, "deep v1");
    let lib = Repo::new(p.path("lib"));
    write(&lib.dir, "lib.txt", b"lib v1\n");
    commit_all(&lib.dir, "lib v1");
    submodule_add(&lib.dir, &deep.url(), "vendor/deep");
    commit_all(&lib.dir, "lib with deep");
    let app = Repo::new(p.path("app"));
    write(&app.dir, "app.txt", b"app\n");
    commit_all(&app.dir, "app");
    submodule_add(&app.dir, &lib.url(), "lib");
    let c1 = commit_all(&app.dir, "app with lib");

    assert_eq!(p.deploy(&app.url(), "main").unwrap(), c1);
    let r1 = p.release(&c1);
    assert_eq!(read(&r1.join("app.txt")), "app\n");
    assert_eq!(read(&r1.join("lib/lib.txt")), "lib v1\n");
    assert_eq!(read(&r1.join("lib/vendor/deep/deep.txt")), "deep v1\n");
    assert!(
        !r1.join("lib/.git").exists(),
        "no git metadata in a release"
    );

    // The submodule moves on; the superproject pins the new commit.
    write(&lib.dir, "lib.txt", b"lib v2\n");
    commit_all(&lib.dir, "lib v2");
    bump_submodule(&app.dir, "lib");
    let c2 = commit_all(&app.dir, "app with lib v2");
    assert_eq!(p.deploy(&app.url(), "main").unwrap(), c2);
    let r2 = p.release(&c2);
    assert_eq!(read(&r2.join("lib/lib.txt")), "lib v2\n");
    assert_eq!(read(&r2.join("lib/vendor/deep/deep.txt")), "deep v1\n");
    // The first release is intact, and the unchanged files of the second are its files.
    assert_eq!(read(&r1.join("lib/lib.txt")), "lib v1\n");
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&r1.join("app.txt")), ino(&r2.join("app.txt")));
    assert_eq!(
        ino(&r1.join("lib/vendor/deep/deep.txt")),
        ino(&r2.join("lib/vendor/deep/deep.txt"))
    );
    assert_ne!(ino(&r1.join("lib/lib.txt")), ino(&r2.join("lib/lib.txt")));
}

/// Writes a gitlink at `path` pinned to `commit` and the given `.gitmodules`, and commits.
fn commit_gitlink(repo: &Repo, path: &str, commit: &str, gitmodules: &str) -> String {
    write(&repo.dir, ".gitmodules", gitmodules.as_bytes());
    git(
        &repo.dir,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{commit},{path}"),
        ],
    );
    git(&repo.dir, &["add", ".gitmodules"]);
    git(&repo.dir, &["commit", "-q", "-m", "gitlink"]);
    git(&repo.dir, &["rev-parse", "HEAD"])
}

#[test]
fn a_gitmodules_path_that_leaves_the_repository_is_refused() {
    let p = Place::new();
    let lib = Repo::new(p.path("lib"));
    let lc = lib.commit_app(GOOD_APP, true, "lib");
    let app = Repo::new(p.path("app"));
    app.commit_app(GOOD_APP, true, "app");
    let gm = format!(
        "[submodule \"evil\"]\n\tpath = ../../etc\n\turl = {}\n[submodule \"lib\"]\n\tpath = lib\n\turl = {}\n",
        lib.url(),
        lib.url()
    );
    commit_gitlink(&app, "lib", &lc, &gm);
    let e = p.deploy(&app.url(), "main").unwrap_err().to_string();
    assert!(
        e.contains("evil") && e.contains("leaves the repository"),
        "{e}"
    );
    assert!(!p.path("apps/releases").read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .len()
        == 40));
}

#[test]
fn a_submodule_that_cannot_be_fetched_is_named() {
    let p = Place::new();
    let app = Repo::new(p.path("app"));
    let lc = app.commit_app(GOOD_APP, true, "app");
    let gm = format!(
        "[submodule \"gone\"]\n\tpath = vendor/gone\n\turl = file://{}\n",
        p.path("no-such-repo").display()
    );
    commit_gitlink(&app, "vendor/gone", &lc, &gm);
    let e = p.deploy(&app.url(), "main").unwrap_err();
    assert!(matches!(e, GitError::Submodule { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.starts_with("submodule vendor/gone ("), "{e}");
}

#[test]
fn submodules_over_http_use_the_credentials_of_the_same_server_and_relative_urls() {
    let p = Place::new();
    let root = p.path("served");
    std::fs::create_dir_all(&root).unwrap();
    let lib = Repo::new(p.path("lib"));
    write(&lib.dir, "lib.txt", b"one\n");
    let old = commit_all(&lib.dir, "one");
    write(&lib.dir, "lib.txt", b"two\n");
    commit_all(&lib.dir, "two");
    let app = Repo::new(p.path("app"));
    app.commit_app(GOOD_APP, true, "app");
    // Pinned to a commit that is not the tip of any branch: fetched by id is refused by
    // this server (no allowReachableSHA1InWant), so every branch is fetched.
    let c = commit_gitlink(
        &app,
        "lib",
        &old,
        "[submodule \"lib\"]\n\tpath = lib\n\turl = ../lib.git\n",
    );
    for (src, name) in [(&app.dir, "app.git"), (&lib.dir, "lib.git")] {
        let src = src.display().to_string();
        git(&root, &["clone", "-q", "--bare", &src, name]);
    }
    let (_server, port) = http_git_server(&root, "deploy", "s3cret");
    let creds = GitCredentials::Https {
        username: "deploy".into(),
        token: "s3cret".into(),
    };
    let req = FetchRequest {
        url: format!("http://127.0.0.1:{port}/app.git"),
        git_ref: "main".into(),
        credentials: Some(creds),
        ..FetchRequest::default()
    };
    assert_eq!(p.deploy_with(req.clone()).unwrap(), c);
    assert_eq!(read(&p.release(&c).join("lib/lib.txt")), "one\n");

    // The same submodule on another server (localhost is not 127.0.0.1): no credentials.
    let p2 = Place::new();
    let app2 = Repo::new(p2.path("app"));
    app2.commit_app(GOOD_APP, true, "app");
    let gm =
        format!("[submodule \"lib\"]\n\tpath = lib\n\turl = http://localhost:{port}/lib.git\n");
    let c2 = commit_gitlink(&app2, "lib", &old, &gm);
    serve_bare(&app2.dir, &root, "app2.git");
    let e = p2
        .deploy_with(FetchRequest {
            url: format!("http://127.0.0.1:{port}/app2.git"),
            ..req.clone()
        })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("submodule lib") && e.contains("no git credentials"),
        "{e} ({c2})"
    );
    assert!(!e.contains("s3cret"), "{e}");

    // A file:// submodule under a repository fetched over the network is refused.
    let p3 = Place::new();
    let app3 = Repo::new(p3.path("app"));
    app3.commit_app(GOOD_APP, true, "app");
    let gm = format!("[submodule \"lib\"]\n\tpath = lib\n\turl = {}\n", lib.url());
    commit_gitlink(&app3, "lib", &old, &gm);
    serve_bare(&app3.dir, &root, "app3.git");
    let e = p3
        .deploy_with(FetchRequest {
            url: format!("http://127.0.0.1:{port}/app3.git"),
            ..req
        })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("file:// submodule") && e.contains("refused"),
        "{e}"
    );
}

/// Bytes of every file under `dir`.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() { du(&e.path()) } else { m.len() };
    }
    total
}

/// Incompressible bytes (xorshift), different for each seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_shallow_mirror_is_much_smaller_than_the_whole_history_and_any_advertised_ref_deploys() {
    let p = Place::new();
    let src = Repo::new(p.path("src"));
    for i in 0..30 {
        write(&src.dir, "data.bin", &noise(i, 64 * 1024));
        commit_all(&src.dir, &format!("c{i}"));
    }
    let tip = git(&src.dir, &["rev-parse", "HEAD"]);
    let first = git(&src.dir, &["rev-list", "--max-parents=0", "HEAD"]);
    git(&src.dir, &["tag", "-a", "-m", "v1", "v1", &first]);
    let root = p.path("served");
    serve_bare(&src.dir, &root, "app.git");
    let served = root.join("app.git");
    // A pull request's head, only under refs/pull/.
    write(&src.dir, "pr.txt", b"pull request 7\n");
    let pr = commit_all(&src.dir, "pr");
    git(
        &src.dir,
        &[
            "push",
            "-q",
            &served.display().to_string(),
            "HEAD:refs/pull/7/head",
        ],
    );
    git(&src.dir, &["reset", "-q", "--hard", &tip]);
    let (_server, port) = http_git_server(&root, "", "");
    let url = format!("http://127.0.0.1:{port}/app.git");

    let shallow = Place::new();
    assert_eq!(shallow.deploy(&url, "main").unwrap(), tip);
    let full = Place::new();
    let req = FetchRequest {
        url: url.clone(),
        git_ref: "main".into(),
        full_history: true,
        ..FetchRequest::default()
    };
    assert_eq!(full.deploy_with(req).unwrap(), tip);
    let (s, f) = (du(&shallow.mirror()), du(&full.mirror()));
    eprintln!("mirror bytes: shallow {s}, full {f}");
    assert!(s * 5 < f, "shallow {s} vs full {f}");
    // The app gets the history with --full-history: a `.git` in its release, at the commit,
    // with every commit, and `git status` clean. Without it, no `.git`.
    let rel = full.release(&tip);
    assert_eq!(git(&rel, &["rev-parse", "HEAD"]), tip);
    assert_eq!(
        git(&rel, &["rev-list", "--count", "HEAD"]),
        git(&src.dir, &["rev-list", "--count", &tip])
    );
    assert_eq!(git(&rel, &["status", "--porcelain"]), "");
    assert!(!shallow.release(&tip).join(".git").exists());

    // A pull ref, an annotated tag (its commit), a full commit id, each into the shallow
    // mirror.
    assert_eq!(shallow.deploy(&url, "refs/pull/7/head").unwrap(), pr);
    assert_eq!(
        read(&shallow.release(&pr).join("pr.txt")),
        "pull request 7\n"
    );
    assert_eq!(shallow.deploy(&url, "v1").unwrap(), first);
    assert_eq!(shallow.deploy(&url, "refs/tags/v1").unwrap(), first);
    let e = shallow.deploy(&url, "refs/pull/8/head").unwrap_err();
    assert!(matches!(e, GitError::RefNotFound(_)), "{e:?}");
    // A pinned commit that is no branch's tip any more: fetched by id or with the history.
    let middle = git(&src.dir, &["rev-parse", "HEAD~3"]);
    let pinned = FetchRequest {
        url: url.clone(),
        git_ref: "main".into(),
        commit: Some(middle.clone()),
        ..FetchRequest::default()
    };
    assert_eq!(shallow.deploy_with(pinned).unwrap(), middle);

    // A branch deleted on the server is not deployed from the mirror's old copy.
    git(&served, &["branch", "gone", &tip]);
    assert_eq!(shallow.deploy(&url, "gone").unwrap(), tip);
    git(&served, &["branch", "-D", "gone"]);
    let e = shallow.deploy(&url, "gone").unwrap_err();
    assert!(matches!(e, GitError::RefNotFound(_)), "{e:?}");
}

#[test]
fn unchanged_files_are_hard_links_to_the_running_release_which_stays_intact() {
    let p = Place::new();
    let src = Repo::new(p.path("src"));
    write(&src.dir, "big.bin", &noise(1, 256 * 1024));
    write(&src.dir, "dir/same.txt", b"same\n");
    write(&src.dir, "changes.txt", b"v1\n");
    let c1 = commit_all(&src.dir, "v1");
    write(&src.dir, "changes.txt", b"v2\n");
    let c2 = commit_all(&src.dir, "v2");
    p.deploy(&src.url(), &c1).unwrap();
    p.deploy(&src.url(), "main").unwrap();
    let (r1, r2) = (p.release(&c1), p.release(&c2));
    let meta = |p: PathBuf| std::fs::metadata(p).unwrap();
    for same in ["big.bin", "dir/same.txt"] {
        assert_eq!(
            meta(r1.join(same)).ino(),
            meta(r2.join(same)).ino(),
            "{same}"
        );
        assert_eq!(meta(r2.join(same)).nlink(), 2, "{same}");
    }
    assert_ne!(
        meta(r1.join("changes.txt")).ino(),
        meta(r2.join("changes.txt")).ino()
    );
    assert_eq!(read(&r1.join("changes.txt")), "v1\n");
    assert_eq!(read(&r2.join("changes.txt")), "v2\n");

    // Not shared when the app could write into the files (it runs as the manager's user).
    let q = Place::new();
    let req = |git_ref: &str| FetchRequest {
        url: src.url(),
        git_ref: git_ref.into(),
        share_unchanged: false,
        ..FetchRequest::default()
    };
    q.deploy_with(req(&c1)).unwrap();
    q.deploy_with(req("main")).unwrap();
    assert_eq!(meta(q.release(&c2).join("big.bin")).nlink(), 1);
}

#[test]
fn an_lfs_pointer_fails_the_deployment_with_what_to_do() {
    let p = Place::new();
    let src = Repo::new(p.path("src"));
    write(
        &src.dir,
        ".gitattributes",
        b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
    );
    write(&src.dir, "start.sh", b"#!/bin/sh\n");
    // A file that merely looks like a pointer, without the attribute, is a file.
    let pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n";
    write(&src.dir, "doc/pointer-example.txt", pointer);
    let ok = commit_all(&src.dir, "no lfs file yet");
    assert_eq!(p.deploy(&src.url(), "main").unwrap(), ok);
    write(&src.dir, "assets/model.bin", pointer);
    commit_all(&src.dir, "lfs");
    let e = p.deploy(&src.url(), "main").unwrap_err();
    assert!(matches!(e, GitError::Lfs { count: 1, .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("Git LFS") && e.contains("assets/model.bin") && e.contains("git lfs migrate"),
        "{e}"
    );
}

#[test]
fn gitattributes_line_endings_are_applied_as_git_checkout_does() {
    let p = Place::new();
    let src = Repo::new(p.path("src"));
    write(
        &src.dir,
        ".gitattributes",
        b"crlf.txt text eol=crlf\nlf.txt text eol=lf\nraw.txt -text\nauto/* text=auto eol=crlf\n",
    );
    for f in ["crlf.txt", "lf.txt", "raw.txt", "plain.txt", "auto/t.txt"] {
        write(&src.dir, f, b"a\nb\n");
    }
    write(&src.dir, "auto/b.bin", b"a\n\0b\n");
    write(&src.dir, "sub/.gitattributes", b"*.bat text eol=crlf\n");
    write(&src.dir, "sub/x.bat", b"echo\n");
    let c = commit_all(&src.dir, "attributes");
    p.deploy(&src.url(), "main").unwrap();
    let r = p.release(&c);
    let bytes = |f: &str| std::fs::read(r.join(f)).unwrap();
    assert_eq!(bytes("crlf.txt"), b"a\r\nb\r\n");
    assert_eq!(bytes("lf.txt"), b"a\nb\n");
    assert_eq!(bytes("raw.txt"), b"a\nb\n");
    assert_eq!(bytes("plain.txt"), b"a\nb\n");
    assert_eq!(bytes("auto/t.txt"), b"a\r\nb\r\n");
    assert_eq!(bytes("auto/b.bin"), b"a\n\0b\n", "binary: left alone");
    assert_eq!(bytes("sub/x.bat"), b"echo\r\n");
}

#[test]
fn the_manager_accepts_exactly_the_urls_of_the_shared_table() {
    for (url, ok) in hammer_protocol::rules::REMOTE_URL_TABLE {
        assert_eq!(git::classify_url(url).is_ok(), *ok, "{url:?}");
    }
}

/// Set in a child run of this test binary (see [`run_child`]): the ignored `child_*` tests
/// do their work only then.
const CHILD_ENV: &str = "HAMMER_GIT_TEST_CHILD";

/// Peak resident memory (VmHWM, KiB) of this process.
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Runs the ignored test `runtime_git::{test}` alone in a fresh process of this test binary
/// (so its peak memory is its own), with `arg` in [`CHILD_ENV`]; returns the numbers it
/// printed as `VmHWM before after` (KiB).
fn run_child(test: &str, arg: &str) -> (u64, u64) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", &format!("runtime_git::{test}"), "--ignored"])
        .args(["--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, arg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{test}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("VmHWM ").map(|(_, n)| n))
        .unwrap_or_else(|| panic!("{test} printed no VmHWM: {stdout}"));
    let mut n = line.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (n.next().unwrap(), n.next().unwrap())
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A repository with one incompressible file `big.bin` of `len` bytes (mode 755) and a small
/// `start.sh`, served over HTTP (over `file://` libgit2 would build the pack in the fetching
/// process itself, and that memory would count too); returns the server and the URL.
fn serve_big_file(p: &Place, len: usize) -> (crate::runtime_support::git_http::Server, String) {
    let src = Repo::new(p.path("src"));
    write(&src.dir, "big.bin", &noise(7, len));
    write(&src.dir, "start.sh", b"#!/bin/sh\nexec sleep 1000\n");
    make_executable(&src.dir.join("big.bin"));
    commit_all(&src.dir, "big");
    let root = p.path("served");
    std::fs::create_dir_all(&root).unwrap();
    let served = root.join("app.git").display().to_string();
    git(&src.dir, &["clone", "-q", "--bare", ".", &served]);
    let (server, port) = http_git_server(&root, "", "");
    (server, format!("http://127.0.0.1:{port}/app.git"))
}

/// The vendored libgit2-sys patch (vendor/libgit2-sys/HAMMER-PATCH.md, decision 0015): the
/// pack indexer computes each object's CRC without mapping the whole object, so fetching a
/// 32 MiB incompressible file adds a few MiB to the peak, not 32 (libgit2 1.9.7 unpatched:
/// +33 MiB).
#[test]
fn fetching_a_big_file_does_not_map_it_whole() {
    let p = Place::new();
    let (_server, url) = serve_big_file(&p, 32 << 20);
    let (before, after) = run_child(
        "child_fetch_only",
        &format!("{url}\n{}", p.path("mirror.git").display()),
    );
    eprintln!("fetch of a 32 MiB file: VmHWM {before} KiB before, {after} KiB after");
    assert!(
        after < before + 12 * 1024,
        "fetch peak {after} KiB, {before} KiB before it"
    );
}

/// [`fetching_a_big_file_does_not_map_it_whole`]'s child: `URL\nMIRROR` in [`CHILD_ENV`].
#[test]
#[ignore = "run by fetching_a_big_file_does_not_map_it_whole in a child process"]
fn child_fetch_only() {
    let Ok(arg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (url, mirror) = arg.split_once('\n').unwrap();
    git::limit_pack_windows();
    let repo = git2::Repository::init_bare(mirror).unwrap();
    let before = vm_hwm_kib();
    repo.remote_anonymous(url)
        .unwrap()
        .fetch(&["refs/heads/main:refs/heads/main"], None, None)
        .unwrap();
    println!("VmHWM {before} {}", vm_hwm_kib());
}

/// The running release's copy of a file the way libgit2's own checkout writes it (the
/// commit's tree loaded into the mirror's index for its attributes, as the manager does).
fn libgit2_checkout(mirror: &Path, commit: &str, to: &Path) {
    let repo = git2::Repository::open_bare(mirror).unwrap();
    let tree = repo
        .find_commit(git2::Oid::from_str(commit).unwrap())
        .unwrap()
        .tree()
        .unwrap();
    let mut index = repo.index().unwrap();
    index.read_tree(&tree).unwrap();
    index.write().unwrap();
    std::fs::create_dir_all(to).unwrap();
    let mut b = git2::build::CheckoutBuilder::new();
    b.target_dir(to).force().update_index(false);
    repo.checkout_tree(tree.as_object(), Some(&mut b)).unwrap();
}

/// Is blob `path` of `commit` stored whole in a pack of the mirror (written from the pack)?
fn whole_in_pack(mirror: &Path, commit: &str, path: &str) -> bool {
    let id = git(mirror, &["rev-parse", &format!("{commit}:{path}")]);
    let id = git2::Oid::from_str(&id).unwrap();
    let found = git::packblob::locate(&mirror.join("objects"), id.as_bytes()).unwrap();
    matches!(found, git::packblob::Found::Whole(_))
}

const BIG: usize = git::checkout::STREAM_MIN + 12_345;

/// Big files: written from the pack byte for byte as libgit2 writes them (mode kept); one
/// whose attributes filter it (eol=crlf) and a small one stay with libgit2.
#[test]
fn a_big_file_is_written_from_the_pack_exactly_as_libgit2_writes_it() {
    let p = Place::new();
    let src = Repo::new(p.path("src"));
    let big = noise(11, BIG);
    write(&src.dir, "data/big.bin", &big);
    make_executable(&src.dir.join("data/big.bin"));
    write(&src.dir, "plain.bin", &noise(12, BIG));
    write(&src.dir, ".gitattributes", b"*.txt text eol=crlf\n");
    write(&src.dir, "big.txt", &b"line\n".repeat(BIG / 5 + 1));
    write(&src.dir, "small.txt", b"a\nb\n");
    let c = commit_all(&src.dir, "big files");
    p.deploy(&src.url(), "main").unwrap();
    let r = p.release(&c);
    assert!(whole_in_pack(&p.mirror(), &c, "data/big.bin"));
    assert!(whole_in_pack(&p.mirror(), &c, "big.txt"));

    let plain = p.path("libgit2");
    libgit2_checkout(&p.mirror(), &c, &plain);
    for f in ["data/big.bin", "plain.bin", "big.txt", "small.txt"] {
        let ours = std::fs::read(r.join(f)).unwrap();
        assert!(ours == std::fs::read(plain.join(f)).unwrap(), "{f}");
    }
    assert!(std::fs::read(r.join("data/big.bin")).unwrap() == big);
    assert!(std::fs::read(r.join("big.txt"))
        .unwrap()
        .starts_with(b"line\r\nline\r\n"));
    let mode = |f: &str| std::fs::metadata(r.join(f)).unwrap().mode() & 0o777;
    assert_eq!(mode("data/big.bin") & 0o111, 0o111, "executable kept");
    assert_eq!(mode("plain.bin") & 0o111, 0, "not executable");
}

/// A big blob stored as an OFS delta (here after `git repack -f` in the mirror, its base in
/// the same pack) is rebuilt in steps by the manager; a loose one is left to libgit2's
/// checkout. Both are written correctly.
#[test]
fn a_big_file_stored_as_an_ofs_delta_is_rebuilt_and_a_loose_one_is_left_to_libgit2() {
    let p = Place::new();
    let src = Repo::new(p.path("src"));
    let v1 = noise(21, BIG + 4096);
    write(&src.dir, "big.bin", &v1);
    commit_all(&src.dir, "v1");
    p.deploy(&src.url(), "main").unwrap();

    // v2: v1 a little shorter and changed at the start, so git deltas it against v1.
    let mut v2 = v1[..BIG].to_vec();
    v2[..5].copy_from_slice(b"hello");
    write(&src.dir, "big.bin", &v2);
    let c2 = commit_all(&src.dir, "v2");
    let mirror = p.mirror().display().to_string();
    let fetch = |refspec: &str| {
        git(
            &src.dir,
            &[
                "--git-dir",
                &mirror,
                "-c",
                "fetch.unpackLimit=100000",
                "fetch",
                "-q",
                &src.url(),
                refspec,
            ],
        )
    };
    fetch("+refs/heads/main:refs/hammer-test/v2");
    git(Path::new(&mirror), &["repack", "-q", "-a", "-d", "-f"]);
    let v2_id = git(&p.mirror(), &["rev-parse", &format!("{c2}:big.bin")]);
    let v2_found = git::packblob::locate(
        &p.mirror().join("objects"),
        git2::Oid::from_str(&v2_id).unwrap().as_bytes(),
    )
    .unwrap();
    assert!(
        matches!(v2_found, git::packblob::Found::Delta(ref l) if l.size == BIG as u64),
        "v2 should be a delta: {v2_found:?}"
    );
    p.deploy(&src.url(), "main").unwrap();
    assert!(std::fs::read(p.release(&c2).join("big.bin")).unwrap() == v2);

    // v3, fetched loose (fewer objects than fetch.unpackLimit).
    let v3 = noise(23, BIG);
    write(&src.dir, "big.bin", &v3);
    let c3 = commit_all(&src.dir, "v3");
    fetch("+refs/heads/main:refs/hammer-test/v3");
    assert!(!whole_in_pack(&p.mirror(), &c3, "big.bin"), "v3 is loose");
    p.deploy(&src.url(), "main").unwrap();
    assert!(std::fs::read(p.release(&c3).join("big.bin")).unwrap() == v3);
}

/// A pack entry whose data is damaged fails the deployment with what and where, and leaves
/// no release behind.
#[test]
fn a_corrupted_big_blob_in_the_pack_fails_the_deployment_clearly() {
    let p = Place::new();
    let src = Repo::new(p.path("src"));
    write(&src.dir, "start.sh", b"#!/bin/sh\n");
    commit_all(&src.dir, "small");
    p.deploy(&src.url(), "main").unwrap();

    write(&src.dir, "big.bin", &noise(31, BIG));
    let c = commit_all(&src.dir, "big");
    let mirror = p.mirror().display().to_string();
    git(
        &src.dir,
        &[
            "--git-dir",
            &mirror,
            "-c",
            "fetch.unpackLimit=1",
            "fetch",
            "-q",
            &src.url(),
            "+refs/heads/main:refs/hammer-test/big",
        ],
    );
    let id = git(Path::new(&mirror), &["rev-parse", &format!("{c}:big.bin")]);
    let id = git2::Oid::from_str(&id).unwrap();
    let git::packblob::Found::Whole(loc) =
        git::packblob::locate(&p.mirror().join("objects"), id.as_bytes()).unwrap()
    else {
        panic!("big.bin should be whole in a pack");
    };
    // Flip bytes in the middle of the blob's (stored, incompressible) data.
    let mut pack = std::fs::read(&loc.pack).unwrap();
    let mid = usize::try_from(loc.offset).unwrap() + BIG / 2;
    for b in &mut pack[mid..mid + 16] {
        *b ^= 0x5a;
    }
    let mut perms = std::fs::metadata(&loc.pack).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&loc.pack, perms).unwrap();
    std::fs::write(&loc.pack, &pack).unwrap();

    let e = p.deploy(&src.url(), "main").unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, GitError::Checkout { .. }), "{text}");
    assert!(
        text.contains("writing big.bin from the pack") && text.contains(".pack"),
        "{text}"
    );
    assert!(!p.releases().exists(&c));
}

/// Deploying a 32 MiB file, fetch and checkout, in a fresh process: the peak grows by a few
/// MiB, not by the file's size (before: +33 MiB for the fetch's indexer, +32 MiB for
/// libgit2's checkout).
#[test]
fn deploying_a_big_file_keeps_the_peak_small() {
    let p = Place::new();
    let (_server, url) = serve_big_file(&p, 32 << 20);
    let (before, after) = run_child(
        "child_deploy",
        &format!("{url}\n{}", p.path("place").display()),
    );
    eprintln!("deploy of a 32 MiB file: VmHWM {before} KiB before, {after} KiB after");
    assert!(
        after < before + 12 * 1024,
        "deploy peak {after} KiB, {before} KiB before it"
    );
}

/// A 32 MiB file deployed, then changed by 4 KiB: the server sends the new version as a delta
/// against the old one (a thin pack). The vendored libgit2's indexer resolves it by streaming
/// and injects the missing base into the pack in steps, and the checkout applies the delta in
/// steps (vendor/libgit2-sys/HAMMER-PATCH.md, decision 0019): the second deploy, in a fresh
/// process, adds a few MiB to its peak, not three times the file (before: about +100 MiB).
/// `share`: the running release's copy is the delta's base; else the base is rebuilt from the
/// mirror's pack into a temporary file.
fn deploy_a_changed_big_file(share: bool) {
    const LEN: usize = 32 << 20;
    let p = Place::new();
    let (_server, url) = serve_big_file(&p, LEN);
    p.deploy_with(FetchRequest {
        url: url.clone(),
        git_ref: "main".into(),
        share_unchanged: share,
        ..FetchRequest::default()
    })
    .unwrap();

    let src = p.path("src");
    let mut v2 = noise(7, LEN);
    v2[LEN / 2..LEN / 2 + 4096].copy_from_slice(&noise(8, 4096));
    write(&src, "big.bin", &v2);
    let c2 = commit_all(&src, "4 KiB of big.bin changed");
    let served = p.path("served/app.git").display().to_string();
    git(&src, &["push", "-q", &served, "HEAD:main"]);

    let (before, after) = run_child(
        "child_deploy_changed",
        &format!("{url}\n{}\n{share}", p.path("").display()),
    );
    eprintln!("deploy of a changed 32 MiB file (share {share}): VmHWM {before} KiB before, {after} KiB after");
    assert!(
        after < before + 12 * 1024,
        "deploy peak {after} KiB, {before} KiB before it"
    );

    // It did arrive as a delta, and the mirror is a valid repository.
    let mirror = p.mirror();
    let id = git(&mirror, &["rev-parse", &format!("{c2}:big.bin")]);
    let found = git::packblob::locate(
        &mirror.join("objects"),
        git2::Oid::from_str(&id).unwrap().as_bytes(),
    )
    .unwrap();
    assert!(
        matches!(found, git::packblob::Found::Delta(ref l) if l.size == LEN as u64),
        "{found:?}"
    );
    for entry in std::fs::read_dir(mirror.join("objects/pack")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) == Some("idx") {
            let listing = git(&mirror, &["verify-pack", "-v", &path.display().to_string()]);
            assert!(listing.ends_with(": ok"), "{listing}");
        }
    }
    git(&mirror, &["fsck", "--full", "--no-dangling"]);
    let written = std::fs::read(p.release(&c2).join("big.bin")).unwrap();
    assert!(written == v2, "big.bin differs from the commit's content");
    let mode = std::fs::metadata(p.release(&c2).join("big.bin"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "executable kept");
    if !share {
        // No temporary base left behind in the mirror.
        let stray: Vec<_> = std::fs::read_dir(mirror.join("objects"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".hammer"))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }
}

#[test]
fn a_changed_big_file_is_applied_to_the_running_releases_copy_in_bounded_memory() {
    deploy_a_changed_big_file(true);
}

#[test]
fn a_changed_big_file_is_rebuilt_from_the_pack_in_bounded_memory() {
    deploy_a_changed_big_file(false);
}

/// [`deploy_a_changed_big_file`]'s child: `URL\nPLACE\nSHARE` in [`CHILD_ENV`] (`PLACE` as
/// [`Place`] lays it out).
#[test]
#[ignore = "run by deploy_a_changed_big_file in a child process"]
fn child_deploy_changed() {
    let Ok(arg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = arg.split('\n');
    let (url, place, share) = (
        parts.next().unwrap(),
        Path::new(parts.next().unwrap()),
        parts.next().unwrap() == "true",
    );
    let releases = Releases::new(&place.join("apps"));
    let before = vm_hwm_kib();
    let req = FetchRequest {
        url: url.into(),
        git_ref: "main".into(),
        share_unchanged: share,
        ..FetchRequest::default()
    };
    let commit = git::fetch_and_checkout(&place.join("data/repo.git"), &releases, &req).unwrap();
    releases.set_current(&commit).unwrap();
    println!("VmHWM {before} {}", vm_hwm_kib());
}

/// [`deploying_a_big_file_keeps_the_peak_small`]'s child: `URL\nPLACE` in [`CHILD_ENV`].
#[test]
#[ignore = "run by deploying_a_big_file_keeps_the_peak_small in a child process"]
fn child_deploy() {
    let Ok(arg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (url, place) = arg.split_once('\n').unwrap();
    let place = Path::new(place);
    std::fs::create_dir_all(place).unwrap();
    let releases = Releases::new(&place.join("apps"));
    let before = vm_hwm_kib();
    let req = FetchRequest {
        url: url.into(),
        git_ref: "main".into(),
        ..FetchRequest::default()
    };
    let commit = git::fetch_and_checkout(&place.join("repo.git"), &releases, &req).unwrap();
    assert_eq!(
        std::fs::metadata(releases.path(&commit).join("big.bin"))
            .unwrap()
            .len(),
        32 << 20
    );
    println!("VmHWM {before} {}", vm_hwm_kib());
}
