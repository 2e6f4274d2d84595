//! Git credentials against real servers: HTTP basic auth in front of `git http-backend` (a
//! small Python server), and SSH keys against a real `sshd` on a loopback port with a
//! known-hosts check. The SSH test is skipped (with a message) when `/usr/sbin/sshd` is absent.

use crate::runtime_support::git_http::{http_git_server, Server};
use crate::runtime_support::*;
use hammer_protocol::{GitCredentials, Phase};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn https_credentials_right_and_wrong() {
    let w = World::new();
    let v1 = w.repo.commit_app(GOOD_APP, true, "v1");
    let root = w.tmp.path().join("served");
    std::fs::create_dir_all(&root).unwrap();
    git(
        &root,
        &[
            "clone",
            "-q",
            "--bare",
            &w.repo.dir.display().to_string(),
            "app.git",
        ],
    );
    let (_server, port) = http_git_server(&root, "deploy", "s3cret-token");
    let url = format!("http://127.0.0.1:{port}/app.git");
    let rt = w.spawn();

    // Wrong token: a clear failure that never shows the token.
    let mut d1 = w.desired(1, "main");
    d1.repo_url = url.clone();
    let wrong = GitCredentials::Https {
        username: "deploy".into(),
        token: "wrong-token".into(),
    };
    send_with(&rt, d1, Some(wrong)).await;
    let r = w
        .sink
        .wait_any(1, &[Phase::Failed, Phase::Running], 0)
        .await;
    assert_eq!(r.phase, Phase::Failed);
    let detail = r.detail.unwrap();
    assert!(detail.contains("authentication failed"), "{detail}");
    assert!(!detail.contains("wrong-token"), "{detail}");

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
    let mut d3 = w.desired(3, "main");
    d3.repo_url = url;
    let right = GitCredentials::Https {
        username: "deploy".into(),
        token: "s3cret-token".into(),
    };
    send_with(&rt, d3, Some(right)).await;
    let r = w
        .sink
        .wait_any(3, &[Phase::Failed, Phase::Running], 0)
        .await;
    assert_eq!(r.phase, Phase::Running, "{r:?}");
    w.one_app(&v1).await;
    for r in w.sink.all() {
        let text = format!("{r:?}");
        assert!(!text.contains("s3cret-token") && !text.contains("wrong-token"));
    }
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
    send_with(&rt, d1, Some(creds)).await;
    let r = w
        .sink
        .wait_any(1, &[Phase::Failed, Phase::Running], 0)
        .await;
    assert_eq!(r.phase, Phase::Failed);
    let detail = r.detail.unwrap();
    assert!(detail.contains("host key verification failed"), "{detail}");
    assert!(!detail.contains("PRIVATE KEY"), "{detail}");

    // The right host key and client key.
    let mut d2 = w.desired(2, "main");
    d2.repo_url = url;
    let creds = GitCredentials::Ssh {
        private_key: client_key,
        known_hosts: known(&host_pub),
    };
    send_with(&rt, d2, Some(creds)).await;
    let r = w
        .sink
        .wait_any(2, &[Phase::Failed, Phase::Running], 0)
        .await;
    assert_eq!(r.phase, Phase::Running, "{r:?}");
    w.one_app(&v1).await;
    rt.shutdown(true).await;
}
