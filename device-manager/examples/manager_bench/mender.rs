//! Mender's client (Debian's `mender-client` 3.4) as a comparison row: `mender daemon` with a
//! throwaway configuration whose server is an unreachable loopback port, so it idles as a
//! real client whose server is down (it cannot be enrolled here).
//!
//! Mender 3.4 reads its artifact name from the fixed path /etc/mender/artifact_info and its
//! identity from /usr/share/mender/identity/mender-device-identity (Debian ships that folder
//! empty); without them it stops every cycle before contacting the server. So the daemon runs
//! in a private mount namespace (`unshare --mount`, root only) where a temporary folder is
//! bind-mounted over each of the two; the host's /etc/mender is untouched.

use crate::Reaped;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where Debian installs the client, and how to get it.
pub const INSTALL_HINT: &str = "apt-get install -y mender-client   (Debian 12: mender-client 3.4)";

/// A running `mender daemon` and what the report says about it.
pub struct Mender {
    pub process: Reaped,
    /// The unreachable server it polls.
    pub server: String,
    pub log: PathBuf,
}

/// Why there is no Mender row.
pub enum Skipped {
    NotInstalled,
    NotRoot,
    Failed(String),
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skipped::NotInstalled => write!(
                f,
                "Mender's client is not installed; to add its row: {INSTALL_HINT}"
            ),
            Skipped::NotRoot => write!(
                f,
                "Mender's client row needs root (its config goes over /etc/mender in a private \
                 mount namespace); re-run the bench as root"
            ),
            Skipped::Failed(why) => write!(f, "Mender's client did not stay up: {why}"),
        }
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A loopback port nothing listens on (bound, then released).
fn unused_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `mender daemon` under `root` (a fresh folder) and checks that it is still up after
/// its start-up (device key generation, first failed authorization).
pub fn start(root: &Path) -> Result<Mender, Skipped> {
    let Some(mender) = on_path("mender") else {
        return Err(Skipped::NotInstalled);
    };
    if !nix::unistd::geteuid().is_root() {
        return Err(Skipped::NotRoot);
    }
    let failed = |what: &str, e: std::io::Error| Skipped::Failed(format!("{what}: {e}"));
    let etc = root.join("etc");
    let identity = root.join("identity");
    let data = root.join("data");
    for d in [&etc, &identity, &data] {
        std::fs::create_dir_all(d).map_err(|e| failed("creating its folders", e))?;
    }
    let port = unused_port().map_err(|e| failed("finding a free port", e))?;
    let server = format!("https://127.0.0.1:{port}");
    // Mender's defaults for the poll intervals (30 min update, 8 h inventory, 5 min retry).
    let conf = format!(
        r#"{{
  "ServerURL": "{server}",
  "UpdatePollIntervalSeconds": 1800,
  "InventoryPollIntervalSeconds": 28800,
  "RetryPollIntervalSeconds": 300,
  "DeviceTypeFile": "{}",
  "DBus": {{"Enabled": false}}
}}
"#,
        data.join("device_type").display()
    );
    let identity_script = identity.join("mender-device-identity");
    let writes = [
        (etc.join("mender.conf"), conf),
        (
            etc.join("artifact_info"),
            "artifact_name=bench-1\n".to_owned(),
        ),
        (data.join("device_type"), "device_type=bench\n".to_owned()),
        (
            identity_script.clone(),
            "#!/bin/sh\necho mac=02:00:00:00:be:4c\n".to_owned(),
        ),
    ];
    for (path, text) in writes {
        std::fs::write(&path, text).map_err(|e| failed("writing its config", e))?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&identity_script, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| failed("making the identity script executable", e))?;
    let log = root.join("mender.log");
    let log_file = std::fs::File::create(&log).map_err(|e| failed("creating its log", e))?;
    let err_file = log_file
        .try_clone()
        .map_err(|e| failed("creating its log", e))?;
    // unshare and sh exec into mender: the child's pid is the daemon's.
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "mount --bind \"$1\" /etc/mender && \
             mount --bind \"$2\" /usr/share/mender/identity && \
             exec \"$3\" --no-syslog --config /etc/mender/mender.conf \
             --fallback-config \"$4\" --data \"$5\" daemon",
        )
        .arg("sh")
        .arg(&etc)
        .arg(&identity)
        .arg(&mender)
        .arg(root.join("no-fallback.conf"))
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .spawn()
        .map_err(|e| failed("starting unshare", e))?;
    let mut process = Reaped(child);
    // Start-up: key generation (RSA, about 2 s here) and the first authorization attempt.
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(Some(status)) = process.0.try_wait() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(3).collect();
            return Err(Skipped::Failed(format!(
                "it exited ({status}); last log lines: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )));
        }
        let exe = std::fs::read_link(format!("/proc/{}/exe", process.0.id())).ok();
        if exe.as_deref() == Some(mender.as_path()) {
            break;
        }
    }
    Ok(Mender {
        process,
        server,
        log,
    })
}
