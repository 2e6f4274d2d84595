//! Debian's `mosquitto` as the external broker, configured from `examples/mosquitto/`
//! (the same config and ACL file the README documents), with the certificates and a CRL
//! taken from a service data dir. Used by `rollout-bench --mosquitto` and the tests.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The documented config, with paths under `/etc/mosquitto/hammer/`.
pub const CONF: &str = include_str!("../../mosquitto/mosquitto.conf");
/// The documented ACL file.
pub const ACL: &str = include_str!("../../mosquitto/acl");

/// The `mosquitto` binary, if installed.
pub fn binary() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// A free loopback port (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(l.local_addr()?.port())
}

/// A running mosquitto; killed on drop.
pub struct Mosquitto {
    pub child: tokio::process::Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The documented ACL plus one block per extra user (a certificate CN): `(cn, access)`
/// gives `user CN` / `topic ACCESS hammer/v1/#`, ACCESS being `read`, `write` or
/// `readwrite` (e.g. `("hammer-service-a", "readwrite")` for a replica with its own CN, or a
/// read-only observer).
pub fn acl_with_users(users: &[(&str, &str)]) -> String {
    let mut acl = ACL.to_owned();
    for (cn, access) in users {
        acl.push_str(&format!("\nuser {cn}\ntopic {access} hammer/v1/#\n"));
    }
    acl
}

/// Writes the CA, server certificate and key, a CRL and the ACL of `data_dir` (a service
/// data dir, initialised with `hammer_service::init::load_or_create`) into a fresh dir,
/// then starts mosquitto on `port` and waits until it accepts connections.
pub async fn start(data_dir: &Path, port: u16) -> anyhow::Result<Mosquitto> {
    start_with(data_dir, port, ACL, false).await
}

/// [`start`] with the ACL file `acl` (see [`acl_with_users`]); with `log`, mosquitto logs
/// into `mosquitto.log` in [`Mosquitto::dir`] (else nowhere).
pub async fn start_with(
    data_dir: &Path,
    port: u16,
    acl: &str,
    log: bool,
) -> anyhow::Result<Mosquitto> {
    let bin = binary().context("the mosquitto binary is not installed")?;
    let dir = tempfile::Builder::new()
        .prefix("hammer-mosquitto")
        .tempdir()
        .context("cannot create a temp dir")?;
    let d = dir.path();
    let copy = |from: PathBuf, to: &str| -> anyhow::Result<()> {
        std::fs::copy(&from, d.join(to))
            .with_context(|| format!("cannot copy {}", from.display()))?;
        Ok(())
    };
    copy(
        data_dir.join("ca").join(hammer_certs::CA_CERT_FILE),
        "ca.pem",
    )?;
    copy(data_dir.join("broker").join("server.pem"), "server.pem")?;
    copy(data_dir.join("broker").join("server.key"), "server.key")?;
    let ca = hammer_certs::Ca::load_or_create(&data_dir.join("ca"), "Hammer IoT fleet CA")
        .context("cannot load the fleet CA")?;
    let revoked = hammer_certs::RevocationList::open(&data_dir.join("revoked.json"))
        .context("cannot read the revocation list")?;
    let crl = ca
        .crl_pem(&revoked, Duration::from_secs(7 * 24 * 3600))
        .context("cannot sign the CRL")?;
    std::fs::write(d.join("crl.pem"), crl)?;
    std::fs::write(d.join("acl"), acl)?;
    let prefix = format!("{}/", d.display());
    let mut conf = CONF
        .replace("/etc/mosquitto/hammer/", &prefix)
        .replace("listener 8883", &format!("listener {port} 127.0.0.1"));
    // As root, mosquitto drops to the `mosquitto` user, which cannot read a private temp dir.
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        conf.push_str("user root\n");
    }
    if log {
        conf.push_str(&format!(
            "log_dest file {}\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\nconnection_messages true\n",
            d.join("mosquitto.log").display()
        ));
    } else {
        conf.push_str("log_dest none\n");
    }
    let conf_path = d.join("mosquitto.conf");
    std::fs::write(&conf_path, conf)?;
    let mut child = tokio::process::Command::new(&bin)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "mosquitto exited at start-up ({status}); config {}",
                conf_path.display()
            );
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if Instant::now() > end {
            anyhow::bail!("mosquitto did not listen on {addr} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Mosquitto { child, port, dir })
}
