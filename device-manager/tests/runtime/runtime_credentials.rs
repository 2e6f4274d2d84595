//! Git credentials against real servers: HTTP basic auth in front of `git http-backend` (a
//! small Python server, over plain HTTP and over HTTPS with a certificate from a throwaway CA),
//! and SSH keys against a real `sshd` on a loopback port with a known-hosts check (plain and
//! hashed lines), through the system `ssh`. The SSH test is skipped (with a message) when
//! `/usr/sbin/sshd` is absent.

use crate::runtime_support::git_http::{http_git_server, https_git_server, Server, TestTls};
use crate::runtime_support::*;
use hammer_manager::runtime::git::{self, FetchRequest};
use hammer_manager::runtime::releases::Releases;
use hammer_manager::runtime::{self, RuntimeOptions};
use hammer_protocol::{GitCredentials, Phase};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn https_credentials_right_and_wrong() {
    let w = World::new();
    let v1 = w.repo.commit_app(GOOD_APP, true, "v1");
    let root = serve_world_repo(&w);
    let (_server, port) = http_git_server(&root, "deploy", "s3cret-token");
    let url = format!("http://127.0.0.1:{port}/app.git");
    let rt = w.spawn();

    // Wrong token: a clear failure that never shows the token.
    a_wrong_token_fails_without_showing_it(&w, &rt, &url).await;

    // No credentials at all.
    let mut d2 = w.desired(2, "main");
    d2.repo_url = url.clone();
    send_with(&rt, d2, None).await;
    let r = w
        .sink
        .wait_any(2, &[Phase::Failed, Phase::Running], 0)
        .await;
    assert_eq!(r.phase, Phase::Failed);
    assert!(r.detail.unwrap().contains("no git credentials"));

    // The right ones.
    the_right_token_runs(&w, &rt, 3, &url, &v1).await;
    rt.shutdown(true).await;
}

/// Serves a bare clone of the world's repository as `app.git` under `served/`.
fn serve_world_repo(w: &World) -> std::path::PathBuf {
    let root = w.tmp.path().join("served");
    serve_bare(&w.repo.dir, &root, "app.git");
    root
}

#[tokio::test]
async fn https_with_a_private_ca_takes_the_right_token_and_refuses_a_wrong_one_and_an_untrusted_certificate(
) {
    let w = World::new();
    let v1 = w.repo.commit_app(GOOD_APP, true, "v1");
    let root = serve_world_repo(&w);
    let tls = TestTls::new();
    let (_server, port) = https_git_server(&root, "deploy", "s3cret-token", &tls);
    let url = format!("https://127.0.0.1:{port}/app.git");
    let right = GitCredentials::Https {
        username: "deploy".into(),
        token: "s3cret-token".into(),
    };

    // Without the test CA (only the system store), the server's certificate is not trusted.
    let place = w.tmp.path().join("untrusted");
    let req = FetchRequest {
        url: url.clone(),
        git_ref: "main".into(),
        credentials: Some(right),
        ..FetchRequest::default()
    };
    let err = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&place).unwrap();
        let releases = Releases::new(&place.join("apps"));
        git::fetch_and_checkout(&place.join("repo.git"), &releases, &req)
    })
    .await
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("TLS: the git server's certificate is not trusted")
            && err.contains("git_ca_file"),
        "{err}"
    );
    assert!(!err.contains("s3cret-token"), "{err}");

    // The operator's git_ca_file names the test CA.
    let ca_file = w.tmp.path().join("git-ca.pem");
    std::fs::write(&ca_file, &tls.ca_pem).unwrap();
    let rt = runtime::spawn(
        RuntimeOptions {
            git_ca_file: Some(ca_file),
            ..w.options()
        },
        w.db.clone(),
        w.sink.clone(),
    )
    .unwrap();

    a_wrong_token_fails_without_showing_it(&w, &rt, &url).await;

    the_right_token_runs(&w, &rt, 2, &url, &v1).await;
    rt.shutdown(true).await;
}

fn ssh_keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(path.with_extension("pub")).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn ssh_key_with_known_hosts_check() {
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() {
        // CI installs it: there, a skip is a failure.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "/usr/sbin/sshd is not installed (CI=true: a skipped test fails CI)"
        );
        eprintln!("SKIPPED: /usr/sbin/sshd is not installed (apt-get install openssh-server)");
        return;
    }
    let w = World::new();
    let v1 = w.repo.commit_app(GOOD_APP, true, "v1");
    let dir = w.tmp.path().join("ssh");
    std::fs::create_dir_all(&dir).unwrap();
    let host_pub = ssh_keygen(&dir.join("host_key"));
    let other_host_pub = ssh_keygen(&dir.join("other_host_key"));
    let client_pub = ssh_keygen(&dir.join("client_key"));
    let client_key = std::fs::read_to_string(dir.join("client_key")).unwrap();
    std::fs::write(dir.join("authorized_keys"), &client_pub).unwrap();
    let port = free_port();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
         PidFile {pid}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin yes\n\
         AllowUsers {user}\n",
        hk = dir.join("host_key").display(),
        ak = dir.join("authorized_keys").display(),
        pid = dir.join("sshd.pid").display(),
    );
    std::fs::write(dir.join("sshd_config"), config).unwrap();
    if nix::unistd::getuid().is_root() {
        let _ = std::fs::create_dir_all("/run/sshd");
    }
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stderr(Stdio::null())
        .spawn()
        .expect("sshd starts");
    let _server = Server(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "sshd did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let url = format!("ssh://{user}@127.0.0.1:{port}{}", w.repo.dir.display());
    let known = |key: &str| {
        let mut parts = key.split_whitespace();
        format!(
            "# test\n[127.0.0.1]:{port} {} {}\n",
            parts.next().unwrap(),
            parts.next().unwrap()
        )
    };
    let rt = w.spawn();

    // A host key that does not match known_hosts is refused.
    let mut d1 = w.desired(1, "main");
    d1.repo_url = url.clone();
    let creds = GitCredentials::Ssh {
        private_key: client_key.clone(),
        known_hosts: known(&other_host_pub),
    };
    fails_without_showing(
        &w,
        &rt,
        d1,
        creds,
        "host key verification failed",
        "PRIVATE KEY",
    )
    .await;

    // The right host key and client key.
    let mut d2 = w.desired(2, "main");
    d2.repo_url = url.clone();
    let creds = GitCredentials::Ssh {
        private_key: client_key.clone(),
        known_hosts: known(&host_pub),
    };
    let r = deploy_with(&w, &rt, d2, creds).await;
    assert_eq!(r.phase, Phase::Running, "{r:?}");
    w.one_app(&v1).await;

    // The same host key as a hashed line (`ssh-keygen -H`, as ssh writes them by default).
    let hashed_file = dir.join("known_hosts_hashed");
    std::fs::write(&hashed_file, known(&host_pub)).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&hashed_file)
        .output()
        .expect("ssh-keygen runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hashed = std::fs::read_to_string(&hashed_file).unwrap();
    assert!(
        hashed.contains("|1|") && !hashed.contains("127.0.0.1"),
        "{hashed}"
    );
    let v2 = w.repo.commit_app(GOOD_APP, true, "v2");
    let mut d3 = w.desired(3, "main");
    d3.repo_url = url.clone();
    let creds = GitCredentials::Ssh {
        private_key: client_key.clone(),
        known_hosts: hashed,
    };
    let r = deploy_with(&w, &rt, d3, creds).await;
    assert_eq!(r.phase, Phase::Running, "{r:?}");
    assert_eq!(r.commit.as_deref(), Some(v2.as_str()), "{r:?}");

    // A client key the server does not know: authentication failed, the key never shown.
    let stranger_pub = ssh_keygen(&dir.join("stranger_key"));
    assert!(!stranger_pub.is_empty());
    let stranger = std::fs::read_to_string(dir.join("stranger_key")).unwrap();
    let mut d4 = w.desired(4, "main");
    d4.repo_url = url;
    let creds = GitCredentials::Ssh {
        private_key: stranger,
        known_hosts: known(&host_pub),
    };
    fails_without_showing(&w, &rt, d4, creds, "authentication failed", "PRIVATE KEY").await;
    rt.shutdown(true).await;
}

/// Deploys generation 1 from `url` with a wrong HTTPS token: it fails, says authentication
/// failed and never shows the token.
async fn a_wrong_token_fails_without_showing_it(w: &World, rt: &runtime::RuntimeHandle, url: &str) {
    let mut d1 = w.desired(1, "main");
    d1.repo_url = url.to_owned();
    let wrong = GitCredentials::Https {
        username: "deploy".into(),
        token: "wrong-token".into(),
    };
    fails_without_showing(w, rt, d1, wrong, "authentication failed", "wrong-token").await;
}

/// Deploys `d` with `creds`: it fails, and its detail says `says` and never contains
/// `secret`.
async fn fails_without_showing(
    w: &World,
    rt: &runtime::RuntimeHandle,
    d: hammer_protocol::DesiredState,
    creds: GitCredentials,
    says: &str,
    secret: &str,
) {
    let r = deploy_with(w, rt, d, creds).await;
    assert_eq!(r.phase, Phase::Failed);
    let detail = r.detail.unwrap();
    assert!(detail.contains(says), "{detail}");
    assert!(!detail.contains(secret), "{detail}");
}

/// Sends `d` with `creds` and returns the report that ends its generation (failed or running).
async fn deploy_with(
    w: &World,
    rt: &runtime::RuntimeHandle,
    d: hammer_protocol::DesiredState,
    creds: GitCredentials,
) -> hammer_manager::runtime::Report {
    let generation = d.generation;
    send_with(rt, d, Some(creds)).await;
    w.sink
        .wait_any(generation, &[Phase::Failed, Phase::Running], 0)
        .await
}

/// Deploys `generation` from `url` with the right HTTPS token ("deploy", "s3cret-token"): it
/// runs `commit`, and no report of the world ever showed the right or the wrong token.
async fn the_right_token_runs(
    w: &World,
    rt: &runtime::RuntimeHandle,
    generation: u64,
    url: &str,
    commit: &str,
) {
    let mut d = w.desired(generation, "main");
    d.repo_url = url.to_owned();
    let right = GitCredentials::Https {
        username: "deploy".into(),
        token: "s3cret-token".into(),
    };
    let r = deploy_with(w, rt, d, right).await;
    assert_eq!(r.phase, Phase::Running, "{r:?}");
    w.one_app(commit).await;
    for r in w.sink.all() {
        let text = format!("{r:?}");
        assert!(!text.contains("s3cret-token") && !text.contains("wrong-token"));
    }
}
